"""Data-parallel training under torchrun (gloo, 2 processes on CPU) equals the 1-process run; exact resume after a
SIGKILL of any rank; resume on another world size; the distributed bad inputs.

Each torchrun launch costs ~5-10 s of start-up on 2 cores, so the launches are few and shared by fixtures.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from ppl_diffusion.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from ppl_diffusion.distributed import World
from ppl_diffusion.train import TrainConfig, train
from ppl_diffusion.train.run_dir import check_world_size_change

from .common import assert_same_state

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# The digits MLP: T = 100, importance-sampled t (its history is gathered from both ranks), 50 steps.
MLP = dict(data="digits", net="mlp", T=100, estimator="stochastic-kl-is", batch_size=16, lr=1e-3, warmup_steps=5,
           steps=50, checkpoint_every=10, log_every=5, seed=3)
TOLERANCE = 1e-5  # the bar for float32 reduction-order rounding; measured: 2.4e-7 (MLP), 4.3e-7 (U-Net)


def flags(cfg: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in cfg.items()]


def torchrun_train(run: Path, cfg: dict, *extra: str) -> subprocess.CompletedProcess:
    cmd = [*TORCHRUN, "-m", "ppl_diffusion", "train", *flags(cfg), f"--run-dir={run}", "--no-progress", *extra]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def weights(run: Path) -> dict:
    state = load_checkpoint(latest_checkpoint(run))
    return {"model": state["model"], "ema": state["ema"]}


def max_diff(a: dict, b: dict) -> float:
    return max((a[k][n].double() - b[k][n].double()).abs().max().item() for k in a for n in a[k])


def one_process(tmp_path_factory, cfg: dict, name: str) -> Path:
    run = tmp_path_factory.mktemp(name) / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(**cfg), run, progress=False)
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture(scope="module")
def mlp_runs(tmp_path_factory):
    """The same digits-MLP run on 1 process and, uninterrupted, on 2 (torchrun, gloo)."""
    two = tmp_path_factory.mktemp("two") / "run"
    done = torchrun_train(two, MLP)
    assert done.returncode == 0, done.stderr[-3000:]
    return one_process(tmp_path_factory, MLP, "one"), two


# ---------------------------------------------------------------------------------------- equivalence
def test_two_processes_train_the_digits_mlp_as_one(mlp_runs):
    one, two = mlp_runs
    diff = max_diff(weights(one), weights(two))
    assert diff < TOLERANCE, diff
    state = load_checkpoint(latest_checkpoint(two))
    assert state["world_size"] == 2 and state["config"]["world_size"] == 2
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    assert json.loads((one / "config.json").read_text())["world_size"] == 1
    # The importance sampler saw the global batch on every rank: the same history as one process.
    s1, s2 = load_checkpoint(latest_checkpoint(one))["sampler"], state["sampler"]
    assert torch.equal(s1["loss_counts"], s2["loss_counts"])
    torch.testing.assert_close(s1["loss_history"], s2["loss_history"], rtol=1e-4, atol=1e-6)
    # Metrics from rank 0 only: one line per logged step, the global mean loss.
    rows = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(5, 51, 5))
    ref = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


UNET_SCRIPT = """
import sys, torch
from ppl_diffusion import distributed
from ppl_diffusion.train import TrainConfig, train
world = distributed.init()
cfg = TrainConfig(data="digits", net="digits", T=100, estimator="stochastic-kl", batch_size=8, lr=1e-3,
                  warmup_steps=2, steps=10, checkpoint_every=100, seed=5)
result = train(cfg, sys.argv[1], progress=False)
torch.save(result.diffusion.denoiser.state_dict(), f"{sys.argv[1]}/rank{world.rank}.pt")
distributed.shutdown()
"""


@pytest.mark.slow  # 20-60 s; out of the default run to keep it under 12 minutes
def test_two_processes_train_the_digits_unet_as_one_with_dropout(tmp_path):
    """The digits U-Net preset (dropout 0.1: its masks are drawn for the global batch too), 10 steps."""
    script = tmp_path / "unet.py"
    script.write_text(UNET_SCRIPT)
    two = tmp_path / "two"
    done = subprocess.run([*TORCHRUN, str(script), str(two)], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = torch.load(two / "rank0.pt"), torch.load(two / "rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # every rank holds the same weights, bit for bit
    one = tmp_path / "one"
    done = subprocess.run([sys.executable, str(script), str(one)], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ref = torch.load(one / "rank0.pt")
    diff = max((ref[k].double() - rank0[k].double()).abs().max().item() for k in ref)
    assert diff < TOLERANCE, diff


# ---------------------------------------------------------------------------------------- exact resume
@pytest.mark.slow  # 20-60 s; out of the default run to keep it under 12 minutes
def test_sigkill_a_rank_at_random_then_resume_ends_as_the_uninterrupted_run(mlp_runs, tmp_path):
    _, uninterrupted = mlp_runs
    cfg = dict(MLP, checkpoint_every=2, keep_checkpoints=2)  # frequent writes: a kill often lands in one
    run = tmp_path / "killed"
    cmd = [*TORCHRUN, "-m", "ppl_diffusion", "train", *flags(cfg), f"--run-dir={run}", "--no-progress"]
    rng = random.Random(2026)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and latest_checkpoint(run) is None and time.monotonic() < deadline:
        time.sleep(0.01)  # training has started once the first checkpoint exists; then kill at random
    time.sleep(rng.uniform(0.0, 0.5))
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "python" in p.name().lower()]
    assert proc.poll() is None and workers, "the job ended before the kill; make it longer"
    victim = rng.choice(workers)
    victim.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0  # torchrun ended the job
    killed_at = latest_checkpoint(run)
    assert killed_at is not None and load_checkpoint(killed_at)["step"] < cfg["steps"]

    done = subprocess.run([*cmd, "--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # bit for bit at the same world size: every tensor of the state (weights, EMA, Adam, sampler, each rank's RNG);
    # the configs differ in checkpoint_every and keep_checkpoints only
    assert_same_state(load_checkpoint(latest_checkpoint(uninterrupted)), load_checkpoint(latest_checkpoint(run)),
                      skip=("elapsed", "config"))
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]
    rows = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(5, 51, 5))  # cut back to the restored step, then continued


def test_resume_on_another_world_size_continues_the_run(mlp_runs, tmp_path):
    """Written on 2 processes, resumed on 1 with the same global batch: the uninterrupted run, to rounding."""
    one, two = mlp_runs
    run = tmp_path / "moved"
    run.mkdir()
    for path in list_checkpoints(two)[:1]:  # the oldest kept checkpoint of the 2-process run
        (run / path.name).write_bytes(path.read_bytes())
    (run / "config.json").write_text((two / "config.json").read_text())
    start = load_checkpoint(latest_checkpoint(run))["step"]
    assert start < MLP["steps"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(**MLP), run, resume=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert max_diff(weights(one), weights(run)) < TOLERANCE
    assert load_checkpoint(latest_checkpoint(run))["world_size"] == 1


# ---------------------------------------------------------------------------------------- bad input
def test_a_global_batch_that_does_not_split_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"global batch size 5 is not divisible by the world size 2; pass "
                                         r"--batch-size 4 or 6"):
        World(rank=0, world_size=2).local_batch(5)
    done = torchrun_train(tmp_path / "run", dict(MLP, batch_size=5, steps=1))
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("ppl-diffusion: error:")]
    assert lines == ["ppl-diffusion: error: global batch size 5 is not divisible by the world size 2; pass "
                     "--batch-size 4 or 6 (a multiple of 2)"]  # once (rank 0), one line
    assert not list_checkpoints(tmp_path / "run")


def test_an_inexact_world_size_change_is_refused_unless_allowed():
    cfg = TrainConfig(estimator="hybrid", variance="learned", prior="student-t", steps=1)
    with pytest.raises(ValueError, match=r"resuming on 1 process\(es\) a run written on 2: the hybrid loss scores "
                                         r"prior 'student-t' by a Monte-Carlo draw.*--allow-inexact-resume"):
        check_world_size_change(cfg, 2, 1, allow_inexact=False)
    with pytest.warns(UserWarning, match="continuing"):
        check_world_size_change(cfg, 2, 1, allow_inexact=True)
    check_world_size_change(TrainConfig(steps=1), 2, 1, allow_inexact=False)  # exact: nothing to say


def test_nccl_without_a_gpu_and_a_run_dir_that_is_a_file_are_one_line(tmp_path, capsys):
    from ppl_diffusion.cli import main

    if not torch.cuda.is_available():
        assert main(["train", "--run-dir", str(tmp_path / "r"), "--steps", "1", "--dist-backend", "nccl"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "distributed backend 'nccl' needs CUDA GPUs" in err[0] and "gloo" in err[0]
    target = tmp_path / "file"
    target.write_text("not a folder")
    assert main(["train", "--run-dir", str(target), "--steps", "1", "--data", "gaussian", "--net", "mlp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"run folder {target} is an existing file" in err[0]
    assert target.read_text() == "not a folder"  # nothing lost


def test_auto_resume_starts_then_continues(tmp_path):
    from ppl_diffusion.cli import main

    args = ["train", "--data", "gaussian", "--net", "mlp", "--T", "10", "--batch-size", "8", "--warmup-steps", "0",
            "--checkpoint-every", "2", "--run-dir", str(tmp_path / "r"), "--no-progress", "--auto-resume"]
    assert main([*args, "--steps", "2"]) == 0  # nothing there: starts
    assert main([*args, "--steps", "4"]) == 0  # continues from step 2
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(tmp_path / "r")] == [2, 4]
    assert main([*args, "--steps", "4", "--resume"]) == 2
