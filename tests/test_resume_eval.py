"""Resumable evaluation (ppl_diffusion.resume): an evaluation interrupted at any moment (SIGKILL in new processes, or
an exception after k chunks) continues from its saved chunks and ends with exactly the uninterrupted result; progress
of another configuration is refused in one line and kept; a run with one set of weights is scored once."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_diffusion.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ppl_diffusion.evaluate import evaluate_run, summary
from ppl_diffusion.likelihood import evaluate_ode_run
from ppl_diffusion.resume import Progress, in_chunks
from ppl_diffusion.sampling import sample_run
from ppl_diffusion.train import TrainConfig, train

from .common import kill_at_random_moments

TOY = dict(data="eight_gaussians", net="mlp", batch_size=32, lr=1e-3, warmup_steps=3, log_every=1, ema_decay=0.5)
# Small batches and calls, so that an evaluation has several chunks per weight set.
EVAL = dict(max_examples=12, batch_size=3, timesteps_per_batch=5, fd_samples=0, seed=5, progress=False)
KINDS = {"full": {}, "estimate": dict(bound="estimate", full_steps=5, strata=5, draws=2),
         "fitted": dict(fit_variance=8), "continuous": dict(strata=3, draws=2),
         "ode": dict(likelihood="ode", rtol=1e-3, atol=1e-3)}  # evaluate --likelihood ode (and its ELBO beside)
VARYING = ("seconds", "resumed_chunks", "checkpoint", "json", "figure", "ode_seconds", "elbo_seconds")  # not numbers
JSON = {"estimate": "eval-estimate.json", "fitted": "eval-fitted.json", "ode": "eval-ode.json"}


def evaluate(run, *, likelihood="elbo", **kw) -> dict:
    """``evaluate_run``, or with ``likelihood="ode"`` ``evaluate_ode_run`` (the options they share)."""
    if likelihood == "elbo":
        return evaluate_run(run, **kw)
    kw.pop("fd_samples")
    return evaluate_ode_run(run, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A chain (T = 20) and a continuous-time run (T = 0), a few steps each: raw and EMA weights differ."""
    root = tmp_path_factory.mktemp("resume")
    train(TrainConfig(**TOY, T=20, steps=6, checkpoint_every=6), root / "chain", progress=False)
    train(TrainConfig(**TOY, T=0, schedule="learned-net", estimator="continuous-is", steps=3, checkpoint_every=3),
          root / "continuous", progress=False)
    return {"chain": root / "chain", "continuous": root / "continuous"}


def copy_run(runs, kind: str, dest: Path) -> Path:
    shutil.copytree(runs["continuous" if kind == "continuous" else "chain"], dest)
    return dest


def numbers(result: dict) -> dict:
    out = {k: v for k, v in result.items() if k not in VARYING}
    for fit in out.get("fitted_variance", {}).values():
        fit.pop("seconds")  # the fit's wall time
    return out


def progress_folders(run: Path) -> list:
    return sorted(p.name for p in run.glob("*.progress"))


class Interrupted(Exception):
    pass


def interrupt_after(monkeypatch, saves: int) -> None:
    """Make the evaluation stop (an exception, as a kill would) once ``saves`` chunks have been computed and saved."""
    chunk, done = Progress.chunk, []

    def counted(self, key, compute):
        if len(done) == saves:
            raise Interrupted(key)
        out = chunk(self, key, compute)
        if self.saved > len(done):
            done.append(key)
        return out

    monkeypatch.setattr(Progress, "chunk", counted)


def stopped_after(saves: int, monkeypatch, call, *args, **kw) -> None:
    """``call(*args, **kw)`` stopped by :func:`interrupt_after` once ``saves`` chunks are saved."""
    with monkeypatch.context() as m:
        interrupt_after(m, saves)
        with pytest.raises(Interrupted):
            call(*args, **kw)


# ---------------------------------------------------------------------------------------- the chunks
def test_in_chunks_reads_saved_chunks_back_instead_of_computing(tmp_path):
    progress = Progress(tmp_path / "p", {"a": 1}).open()
    calls = []

    def unit(u):
        calls.append(u)
        return {"x": np.full(2, u, dtype=np.float64) / 3}

    first = list(in_chunks(progress.scoped("s"), "k", range(5), 2, unit))
    assert calls == [0, 1, 2, 3, 4] and progress.chunks() == ["s-k-0", "s-k-1", "s-k-2"]
    calls.clear()
    again = list(in_chunks(Progress(tmp_path / "p", {"a": 1}).open().scoped("s"), "k", range(5), 2, unit))
    assert calls == []  # every unit read back
    assert [u for u, _ in again] == list(range(5))
    for (_, a), (_, b) in zip(first, again):
        assert a.keys() == b.keys() == {"x"} and np.array_equal(a["x"], b["x"])


def test_progress_is_written_with_its_first_chunk_and_an_empty_one_is_taken_over(tmp_path):
    """A command that fails before its first chunk leaves no folder; a folder of another configuration without
    chunks (killed between the fingerprint and the first chunk) is taken over; one with chunks is refused."""
    Progress(tmp_path / "p", {"a": 1}).open()
    assert not (tmp_path / "p").exists()
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "fingerprint.json").write_text('{"a": 0}')
    taken = Progress(tmp_path / "p", {"a": 1}).open()
    taken.chunk("k", lambda: {"x": np.ones(2)})
    assert json.loads((tmp_path / "p" / "fingerprint.json").read_text()) == {"a": 1} and taken.chunks() == ["k"]
    with pytest.raises(ValueError, match=r"holds the progress of another configuration \(a: saved 1, now 2\)"):
        Progress(tmp_path / "p", {"a": 2}).open()
    assert (tmp_path / "p" / "k.npz").is_file()  # refused, nothing deleted


# ---------------------------------------------------------------------------------------- interrupted, continued
@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k == "fitted" else k for k in KINDS])
def test_interrupted_evaluation_continues_to_the_same_bits(runs, tmp_path, monkeypatch, kind):
    """Stopped after 3 saved chunks (the pilot or fit among them where there is one), then the same call: the same
    dict, every number bit for bit, as an uninterrupted evaluation; the progress folder is gone at the end."""
    kw = {**EVAL, **KINDS[kind]}
    reference = evaluate(copy_run(runs, kind, tmp_path / "reference"), **kw)
    run = copy_run(runs, kind, tmp_path / "interrupted")
    stopped_after(3, monkeypatch, evaluate, run, **kw)
    (folder,) = run.glob("*.progress")
    assert len(list(folder.glob("*.npz"))) == 3
    resumed = evaluate(run, **kw)
    assert resumed["resumed_chunks"] == 3 and reference["resumed_chunks"] == 0
    if kind != "ode":
        assert "3 saved chunks read back" in summary(resumed) and "read back" not in summary(reference)
    assert numbers(resumed) == numbers(reference)
    assert json.loads(Path(resumed["json"]).read_text())["bpd"] == reference["bpd"]
    assert progress_folders(run) == [] and not [p for p in run.iterdir() if ".tmp-" in p.name]


EVAL_SCRIPT = """
import json, sys
kw = json.loads(sys.argv[1])
if kw.pop("likelihood", "elbo") == "ode":
    from ppl_diffusion.likelihood import evaluate_ode_run as evaluate
    kw.pop("fd_samples")
else:
    from ppl_diffusion.evaluate import evaluate_run as evaluate
evaluate(sys.argv[2], **kw)
"""
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # the reference and the killed runs share the cores


@pytest.mark.slow  # a reference and 4 killed or finished processes: 25 s of CPU (ode: 50 s); in-process above
@pytest.mark.parametrize("kind", ["full", "estimate", "continuous", "ode"])
def test_sigkill_at_random_moments_then_the_same_command_is_exact(runs, tmp_path, kind):
    """The evaluation in new processes SIGKILLed at random moments (after a chunk was saved), then run to the end,
    writes the eval JSON of an uninterrupted run in another new process, every number bit for bit."""
    # More examples, in smaller chunks: the evaluation runs well beyond the longest pause.
    kw = {**EVAL, **KINDS[kind], "max_examples": 40, "batch_size": 2, "timesteps_per_batch": 1}
    cmd = [sys.executable, "-c", EVAL_SCRIPT, json.dumps(kw)]
    reference, run = (copy_run(runs, kind, tmp_path / name) for name in ("reference", "killed"))
    ref = subprocess.Popen([*cmd, str(reference)], env=ONE_THREAD, stderr=subprocess.PIPE, text=True)
    saved = lambda: sorted(p.name for p in run.glob("*.progress/*.npz"))  # noqa: E731
    kills = kill_at_random_moments([*cmd, str(run)], saved=saved, rng=random.Random(hash(kind) % 1000), tries=3,
                                   pause=0.3, env=ONE_THREAD)
    assert kills >= 1
    done = subprocess.run([*cmd, str(run)], env=ONE_THREAD, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-2000:]
    name = JSON.get(kind, "eval.json")
    got, want = (json.loads((r / name).read_text()) for r in (run, reference))
    assert got["resumed_chunks"] > 0 and want["resumed_chunks"] == 0
    assert numbers(got) == numbers(want)
    assert progress_folders(run) == []


# ---------------------------------------------------------------------------------------- another configuration
def test_progress_of_another_configuration_is_refused_and_kept(runs, tmp_path, monkeypatch):
    run = copy_run(runs, "full", tmp_path / "run")
    stopped_after(2, monkeypatch, evaluate_run, run, **EVAL)
    folder = run / "eval.progress"
    before = sorted(p.name for p in folder.iterdir())
    for change, named in [(dict(seed=6), "seed: saved 5, now 6"), (dict(max_examples=11), "test_examples"),
                          (dict(batch_size=4), "batch_size: saved 3, now 4")]:
        with pytest.raises(ValueError, match=rf"^{folder} holds the progress of another configuration \(.*{named}.*\); "
                                             r"pass --restart to discard it"):
            evaluate_run(run, **{**EVAL, **change})
        assert sorted(p.name for p in folder.iterdir()) == before  # nothing lost
    threads = torch.get_num_threads()
    try:  # float rounding may depend on the thread count: another one is refused too, never mixed in
        torch.set_num_threads(threads + 1)
        with pytest.raises(ValueError, match=rf"threads: saved {threads}, now {threads + 1}"):
            evaluate_run(run, **EVAL)
    finally:
        torch.set_num_threads(threads)
    # Other weights under the same name: the checkpoint's hash differs.
    ckpt = latest_checkpoint(run)
    state = load_checkpoint(ckpt)
    state["ema"] = {k: v + 1e-3 for k, v in state["ema"].items()}
    save_checkpoint(ckpt, state)
    with pytest.raises(ValueError, match="checkpoint_sha256"):
        evaluate_run(run, **EVAL)
    fresh = evaluate_run(run, **EVAL, restart=True)  # discards the old progress, starts afresh
    assert fresh["resumed_chunks"] == 0 and not folder.exists()


def test_cli_refuses_mismatched_progress_in_one_line(runs, tmp_path, monkeypatch, capsys):
    from ppl_diffusion.cli import main

    run = copy_run(runs, "full", tmp_path / "run")
    stopped_after(1, monkeypatch, evaluate_run, run, **EVAL)
    argv = ["evaluate", str(run), "--max-examples", "12", "--batch-size", "3", "--timesteps-per-batch", "5",
            "--fd-samples", "0", "--no-progress", "--seed", "6"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"ppl-diffusion: error: {run / 'eval.progress'} holds the "
                                                         "progress of another configuration (") and "--restart" in err
    assert (run / "eval.progress").is_dir()
    assert main([*argv, "--restart"]) == 0
    assert not (run / "eval.progress").exists() and json.loads((run / "eval.json").read_text())["seed"] == 6


# ---------------------------------------------------------------------------------------- one set of weights
@pytest.mark.parametrize("kind", ["full", "estimate", pytest.param("continuous", marks=pytest.mark.slow)])
def test_a_run_with_one_set_of_weights_is_scored_once(runs, tmp_path, kind, monkeypatch):
    """An imported run (raw = EMA weights, state["imported"]) is scored once: half the denoiser inputs, the EMA keys
    the raw figures (readers of eval.json find them all), and they equal the EMA weights scored as a trained run."""
    kw = {**EVAL, **KINDS[kind]}
    trained = evaluate_run(copy_run(runs, kind, tmp_path / "trained"), **kw)
    run = copy_run(runs, kind, tmp_path / "imported")
    ckpt = latest_checkpoint(run)
    state = load_checkpoint(ckpt)
    for raw, ema in (("model", "ema"), ("prior", "prior_ema"), ("schedule", "schedule_ema")):
        if state.get(ema) is not None:
            state[raw] = state[ema]
    save_checkpoint(ckpt, {**state, "imported": True})
    inputs = []
    from ppl_diffusion.nets.mlp import MLPDenoiser

    hook = MLPDenoiser.forward

    def counted(self, x, *a, **k):
        inputs.append(len(x))
        return hook(self, x, *a, **k)

    monkeypatch.setattr(MLPDenoiser, "forward", counted)
    once = evaluate_run(run, **kw)
    assert once["scored_once"] is True and trained["scored_once"] is False
    for key in ("bpd", "bpd_stderr", "terms"):  # the EMA weights' numbers, under both names
        ema_key = key.replace("bpd", "bpd_ema") if key != "terms" else key
        want = trained[ema_key] if key != "terms" else trained["terms"]["ema"]
        assert (once[key] if key != "terms" else once["terms"]["raw"]) == want
    assert once["bpd_ema"] == once["bpd"] and once["terms"]["ema"] == once["terms"]["raw"]
    assert once["calls"]["ema"] == 0 and once["calls"]["raw"] == trained["calls"]["ema"]
    monkeypatch.undo()
    inputs_once = sum(inputs)
    inputs.clear()
    monkeypatch.setattr(MLPDenoiser, "forward", counted)
    evaluate_run(copy_run(runs, kind, tmp_path / "trained-again"), **kw)
    assert inputs_once == once["calls"]["raw"] and sum(inputs) == sum(trained["calls"].values())  # pilots included
    assert "scored once" in summary(once)


def test_one_weight_set_means_equal_tensors_or_imported():
    a = {"model": {"w": torch.ones(2)}, "ema": {"w": torch.ones(2)}}
    from ppl_diffusion.evaluate import one_weight_set

    assert one_weight_set(a)
    assert not one_weight_set({**a, "ema": {"w": torch.tensor([1.0, 1.0 + 1e-7])}})
    assert not one_weight_set({**a, "prior": {"m": torch.zeros(1)}})
    assert one_weight_set({"model": {}, "ema": {"w": torch.zeros(1)}, "imported": True})


# ---------------------------------------------------------------------------------------- sample
@pytest.mark.parametrize("ode", [False, True], ids=["ancestral", "ode"])
def test_interrupted_sampling_continues_to_the_same_samples(runs, tmp_path, monkeypatch, ode):
    """``sample_run`` with a batch size, stopped after 2 of its 4 calls, then called again: the samples of an
    uninterrupted call, bit for bit (and without a batch size, one call: the samples of before this change)."""
    kw = dict(n=10, seed=3, batch_size=3, ode=ode, rtol=1e-3, atol=1e-3)
    run = copy_run(runs, "full", tmp_path / "run")
    reference = sample_run(run, out=tmp_path / "reference.png", **kw).samples
    stopped_after(2, monkeypatch, sample_run, run, out=tmp_path / "resumed.png", **kw)
    assert len(list((tmp_path / "resumed.progress").glob("*.npz"))) == 2
    result = sample_run(run, out=tmp_path / "resumed.png", **kw)
    resumed = result.samples
    assert torch.equal(resumed, reference) and not (tmp_path / "resumed.progress").exists()
    assert result.resumed_calls == 2
    assert np.array_equal(np.load(tmp_path / "resumed.npz")["samples"], reference.numpy())
    if not ode:  # one call of all n samples, as before: equal to float rounding only to the batches' samples
        whole = sample_run(run, out=tmp_path / "whole.png", **{**kw, "batch_size": None}).samples
        torch.testing.assert_close(whole, reference, rtol=1e-5, atol=1e-5)
        from ppl_diffusion.sampling import draw_samples, load_run

        torch.testing.assert_close(whole, draw_samples(load_run(run).diffusion, 10, seed=3), rtol=0, atol=0)
    stopped_after(1, monkeypatch, sample_run, run, out=tmp_path / "resumed.png", **kw)
    with pytest.raises(ValueError, match=r"resumed.progress holds the progress of another configuration \(seed"):
        sample_run(run, out=tmp_path / "resumed.png", **{**kw, "seed": 4})


# ---------------------------------------------------------------------------------------- compare's fixed θ
def test_interrupted_fixed_theta_replicates_continue_to_the_same_draws(tmp_path, monkeypatch):
    """measure in chunks of 3 replicates, stopped after its ELBO chunks and one gradient chunk, then called again:
    the same draws, gradient norms, projections and gradient moments, bit for bit, as without saving."""
    from ppl_diffusion.study import make_study_estimator, measure

    from .test_study import linear_gaussian

    d, x0, _, _ = linear_gaussian()
    est = make_study_estimator("stochastic-kl", d)
    row, idata = measure(est, x0, 8, seed=3)  # nothing saved: as before this change
    progress = Progress(tmp_path / "p", {"study": 1}).open()
    # Stopped after its 3 ELBO chunks and 1 of its 3 gradient chunks.
    stopped_after(4, monkeypatch, measure, est, x0, 8, seed=3, chunk=progress.scoped("kl"), per_chunk=3)
    assert len(progress.chunks()) == 4
    again = Progress(tmp_path / "p", {"study": 1}).open()
    row2, idata2 = measure(est, x0, 8, seed=3, chunk=again.scoped("kl"), per_chunk=3)
    assert again.reused == 4 and again.saved == 2
    for var in ("elbo", "grad_norm", "grad_proj"):
        assert np.array_equal(idata.posterior[var].values, idata2.posterior[var].values), var
    for key in ("elbo_mean", "elbo_sd", "grad_total_variance", "grad_mean_norm_sq", "grad_snr"):
        assert getattr(row, key) == getattr(row2, key), key


def test_compare_refuses_the_progress_of_another_study(tmp_path, monkeypatch):
    from ppl_diffusion.study import StudyConfig, run_study

    config = StudyConfig(data="eight_gaussians", T=8, batch_size=4, estimators=("stochastic-kl",), replicates=8,
                         per_t_repeats=2, device="cpu")
    stopped_after(1, monkeypatch, run_study, config, tmp_path, progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match=r"fixed-theta.progress holds the progress of another configuration "
                                         r"\(seed: saved 0, now 1\); pass --restart"):
        run_study(StudyConfig(**{**config.__dict__, "seed": 1}), tmp_path, progress=False, log=lambda *a: None)
    study = run_study(config, tmp_path, progress=False, log=lambda *a: None)
    assert study["fixed_theta"]["rows"][0]["replicates"] == 8 and not (tmp_path / "fixed-theta.progress").exists()


# ---------------------------------------------------------------------------------------- torchrun
@pytest.mark.slow  # three 2-process launches (~40 s on 2 shared cores)
@pytest.mark.parametrize("kind", ["full", "estimate"])
def test_sigkill_a_rank_under_torchrun_then_the_same_command_is_exact(runs, tmp_path, kind):
    """`evaluate` on 2 processes (gloo), one rank SIGKILLed at a random moment after a chunk was saved (torchrun then
    ends the job), run again: the eval JSON of an uninterrupted 2-process run, every number bit for bit."""
    import psutil

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    flags = ["--max-examples", "40", "--batch-size", "2", "--timesteps-per-batch", "1", "--fd-samples", "0",
             "--seed", "5", "--no-progress", "--dist-backend", "gloo"]
    if kind == "estimate":
        flags += ["--bound", "estimate", "--full-steps", "5", "--strata", "5", "--draws", "2"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "ppl_diffusion", "evaluate"]
    reference, run = (copy_run(runs, "full", tmp_path / name) for name in ("reference", "killed"))
    ref = subprocess.run([*torchrun, str(reference), *flags], env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    rng = random.Random(21)
    proc = subprocess.Popen([*torchrun, str(run), *flags], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not list(run.glob("*.progress/*.npz")) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.3))
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "python" in p.name().lower()]
    assert proc.poll() is None and workers, "the job ended before the kill; make it longer"
    rng.choice(workers).send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0 and list(run.glob("*.progress/*.npz"))
    done = subprocess.run([*torchrun, str(run), *flags], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    name = JSON.get(kind, "eval.json")
    got, want = (json.loads((r / name).read_text()) for r in (run, reference))
    assert got["world_size"] == want["world_size"] == 2
    assert got["resumed_chunks"] > 0 and numbers(got) == numbers(want)
    assert progress_folders(run) == []
