"""Training loop and checkpoints: exact resume (also after SIGKILL), atomic files, clear errors."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

import ppl_diffusion.train.loop as loop_mod
import ppl_diffusion.train.pyro_trainer as train_mod
from ppl_diffusion.checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                                      remove_stale_temporaries, rng_state, save_checkpoint, set_rng_state)
from ppl_diffusion.data import load_dataset
from ppl_diffusion.evaluate import evaluate_run
from ppl_diffusion.infer import ESTIMATORS
from ppl_diffusion.infer.estimate import estimate_bound, plan_uniform
from ppl_diffusion.sampling import sample_run
from ppl_diffusion.train import BatchStream, TrainConfig, TrainingDiverged, load_trained, lr_at, train
from ppl_diffusion.train.validation import VALIDATION_PLAN, Validation, holdout_split

from .common import assert_same_state, nan_after

TOY = dict(data="eight_gaussians", net="mlp", T=20, batch_size=32, lr=1e-3, warmup_steps=3, log_every=1)


def toy(**kw) -> TrainConfig:
    return TrainConfig(**{**TOY, **kw})


def final_state(run_dir) -> dict:
    return load_checkpoint(latest_checkpoint(run_dir))


def assert_same_training_state(a: dict, b: dict) -> None:
    """Every entry of two checkpoints equal, every tensor bit for bit (weights, EMA, Adam, sampler, batch order,
    every generator, the running loss, the config), the wall clock aside."""
    assert a["step"] == b["step"]
    assert_same_state(a, b)


def metric_rows(run_dir, name="metrics.jsonl"):
    return [(r["step"], r["loss"], r.get("val_bpd"))
            for r in map(json.loads, (Path(run_dir) / name).read_text().splitlines())]


def assert_same_best(a: Path, b: Path) -> None:
    """Two run folders hold the same validation history, best step and best.pt weights."""
    va, vb = final_state(a)["validation"], final_state(b)["validation"]
    assert va["history"] == vb["history"] and va["best"]["step"] == vb["best"]["step"]
    best_a, best_b = load_checkpoint(a / "best.pt"), load_checkpoint(b / "best.pt")
    assert best_a["step"] == best_b["step"] == va["best"]["step"] and best_a["val_bpd"] == best_b["val_bpd"]
    for part in ("model", "ema"):
        for k in best_a[part]:
            assert torch.equal(best_a[part][k], best_b[part][k]), f"best.pt {part}.{k} differs"


# ---------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("estimator", ["stochastic-kl-is", "trace"])
def test_resume_is_exact(tmp_path, estimator):
    full = train(toy(estimator=estimator, steps=10, checkpoint_every=2), tmp_path / "full", progress=False)
    # An interrupted run: stops after 5 steps (final checkpoint at 5), then resumed to 10.
    part = tmp_path / "part"
    train(toy(estimator=estimator, steps=5, checkpoint_every=2), part, progress=False)
    resumed = train(toy(estimator=estimator, steps=10, checkpoint_every=2), part, resume=True, progress=False)
    assert full.step == resumed.step == 10
    assert_same_training_state(final_state(tmp_path / "full"), final_state(part))
    for k, v in full.diffusion.denoiser.state_dict().items():
        assert torch.equal(v, resumed.diffusion.denoiser.state_dict()[k])
    assert metric_rows(tmp_path / "full") == metric_rows(part)
    if estimator == "stochastic-kl-is":  # the importance sampler's history took part
        assert final_state(part)["sampler"]["loss_counts"].sum() > 0


SCRIPT = """
import json, sys
from ppl_diffusion.checkpoint import latest_checkpoint
from ppl_diffusion.train import TrainConfig, train
config, run = TrainConfig(**json.loads(sys.argv[1])), sys.argv[2]
train(config, run, resume=latest_checkpoint(run) is not None, progress=False)
"""
# Every process of the test on 2 threads, where a kernel whose first call races between threads would give other
# bits (ppl_diffusion.determinism); waiting threads sleep, so that processes sharing the cores do not spin.
TWO_THREADS = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}


def killed_and_resumed(config: TrainConfig, tmp_path: Path, *, seed: int, tries: int, pause: float,
                       wait: float = 60, timeout: float = 600) -> Path:
    """Train ``config`` uninterrupted in a new process (``tmp_path/reference``) while, beside it, new processes on
    ``tmp_path/killed`` are SIGKILLed ``tries`` times at a random moment (up to ``pause`` s) after their first
    checkpoint and a last one finishes the run; assert both end bit for bit the same (every tensor of the state, the
    metrics, the best weights). Returns the killed run's folder."""
    run = tmp_path / "killed"
    rng = random.Random(seed)
    cmd = [sys.executable, "-c", SCRIPT, json.dumps(config.to_dict())]
    reference = subprocess.Popen([*cmd, str(tmp_path / "reference")], env=TWO_THREADS, stderr=subprocess.PIPE,
                                 text=True)
    kills = 0
    for _ in range(tries):
        before = latest_checkpoint(run)
        proc = subprocess.Popen([*cmd, str(run)], env=TWO_THREADS, stderr=subprocess.PIPE)
        deadline = time.monotonic() + wait
        while proc.poll() is None and latest_checkpoint(run) == before and time.monotonic() < deadline:
            time.sleep(0.005)  # wait until training runs (imports take a while), then kill at random
        time.sleep(rng.uniform(0.0, pause))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1
    done = subprocess.run([*cmd, str(run)], env=TWO_THREADS, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    _, err = reference.communicate(timeout=timeout)
    assert reference.returncode == 0, err[-2000:]
    assert_same_training_state(final_state(tmp_path / "reference"), final_state(run))
    assert metric_rows(tmp_path / "reference") == metric_rows(run)
    if config.val_examples:
        assert_same_best(tmp_path / "reference", run)
    return run


def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path):
    """The 8-Gaussians toy killed at random moments, each part a new process, ends bit for bit as the
    uninterrupted run in yet another process: every tensor of the state, the best weights, and the metrics."""
    config = toy(steps=40, checkpoint_every=1, keep_checkpoints=2, val_examples=16)  # the best weights too
    run = killed_and_resumed(config, tmp_path, seed=1234, tries=3, pause=0.15)
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]
    assert len(list_checkpoints(run)) == 2


# ---------------------------------------------------------------------------------------- bad files
def test_truncated_checkpoint_names_the_file_and_resume_falls_back(tmp_path):
    train(toy(steps=6, checkpoint_every=2), tmp_path / "full", progress=False)
    run = tmp_path / "run"
    train(toy(steps=6, checkpoint_every=2), run, progress=False)
    newest = latest_checkpoint(run)
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match=str(newest)):
        load_checkpoint(newest)
    with pytest.warns(UserWarning, match="corrupt or truncated"):
        train(toy(steps=6, checkpoint_every=2), run, resume=True, progress=False)  # from ckpt 4, redoes 5..6
    assert_same_training_state(final_state(tmp_path / "full"), final_state(run))
    assert metric_rows(tmp_path / "full") == metric_rows(run)


def test_no_readable_checkpoint_is_an_error(tmp_path):
    train(toy(steps=2, checkpoint_every=1), tmp_path, progress=False)
    for p in list_checkpoints(tmp_path):
        p.write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="no readable checkpoint"):
            train(toy(steps=4, checkpoint_every=1), tmp_path, resume=True, progress=False)


def test_checkpoint_from_a_different_configuration(tmp_path):
    train(toy(steps=2), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"T: saved 20, now 30.*lr: saved 0.001, now 0.002"):
        train(toy(steps=4, T=30, lr=2e-3), tmp_path, resume=True, progress=False)
    (tmp_path / "config.json").unlink()  # only the checkpoint left: it is checked too
    with pytest.raises(CheckpointError, match=r"different configuration \(lr: saved 0.001, now 0.002\)"):
        train(toy(steps=4, lr=2e-3), tmp_path, resume=True, progress=False)


def test_resume_with_nothing_to_resume(tmp_path):
    with pytest.raises(ValueError, match="nothing to resume in .*start without --resume"):
        train(toy(steps=2), tmp_path / "empty", resume=True, progress=False)


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path):
    train(toy(steps=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="already holds checkpoints; pass --resume"):
        train(toy(steps=1), tmp_path, progress=False)


# ---------------------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("validation", [False, True], ids=["nan-loss", "pyro-validation"])
def test_nan_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, validation):
    monkeypatch.setattr(train_mod, "build_diffusion", nan_after(train_mod.build_diffusion, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pyro's warn_if_nan
        what = "the denoiser produced non-finite values" if validation else "loss is nan"
        with pyro.validation_enabled(validation), \
                pytest.raises(TrainingDiverged, match=what + r" at step 6 .*last good one is .*ckpt-00000004\.pt"):
            train(toy(steps=10, checkpoint_every=2), tmp_path, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "ckpt-00000004.pt"
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())


# ---------------------------------------------------------------------------------------- no litter
def fail_at_step(monkeypatch, step: int, error: BaseException) -> None:
    """Make the ``step``-th optimizer step of every PyroTrainer raise ``error`` (after the earlier ones ran)."""
    real = train_mod.PyroTrainer.step
    calls = []

    def step_then_fail(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(train_mod.PyroTrainer, "step", step_then_fail)


def snapshot(root: Path) -> dict:
    """Every file (its bytes) and folder (None) under ``root``, by relative path."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("how", ["data-root", "net-found-late", "first-step", "interrupt", "diverged"])
def test_a_start_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path, monkeypatch, how):
    """A bad data folder, a net that does not fit the data (found after the folder is made), an exception in the
    first step, Ctrl-C or a divergence after a metrics line was written: neither folder it made stays, nor a file."""
    config, error = toy(steps=6, checkpoint_every=4), RuntimeError
    if how == "data-root":
        config, error = toy(steps=6, data="mnist", data_root=str(tmp_path / "no-such-folder")), FileNotFoundError
    elif how == "net-found-late":
        config, error = toy(steps=6, data="digits", net="mnist"), ValueError
    elif how == "first-step":
        fail_at_step(monkeypatch, 1, RuntimeError("boom"))
    elif how == "interrupt":
        fail_at_step(monkeypatch, 3, KeyboardInterrupt())
        error = KeyboardInterrupt
    else:
        monkeypatch.setattr(train_mod, "build_diffusion", nan_after(train_mod.build_diffusion, 2))
        error = TrainingDiverged
    before = snapshot(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pyro's warn_if_nan
        with pytest.raises(error):
            train(config, tmp_path / "runs" / "new", progress=False)
    assert snapshot(tmp_path) == before  # neither runs/ nor runs/new, no config.json, no metrics


def test_a_failed_start_leaves_a_folder_that_existed_as_it_was(tmp_path, monkeypatch):
    """The folder stays with what it held: another file, and the config.json and metrics of an earlier start
    (killed before its first checkpoint), put back byte for byte after this start overwrote them."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine\n")
    (run_dir / "config.json").write_text('{"an": "earlier start"}\n')
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    before = snapshot(tmp_path)
    fail_at_step(monkeypatch, 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train(toy(steps=6, checkpoint_every=4), run_dir, progress=False)
    assert snapshot(tmp_path) == before


def test_a_failure_after_the_first_checkpoint_keeps_the_run_and_it_resumes(tmp_path, monkeypatch):
    """Past its first checkpoint a run is a run: config, metrics and checkpoint stay, and resume continues it."""
    fail_at_step(monkeypatch, 5, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train(toy(steps=6, checkpoint_every=4), tmp_path / "run", progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["ckpt-00000004.pt"]
    assert (tmp_path / "run" / "config.json").is_file() and len(metric_rows(tmp_path / "run")) == 4
    monkeypatch.undo()
    assert train(toy(steps=6, checkpoint_every=4), tmp_path / "run", resume=True, progress=False).step == 6


def test_a_failed_resume_leaves_the_run_as_it_was(tmp_path, monkeypatch):
    """Checkpoints and metrics as they were; config.json holds the new budget (as any resume writes it)."""
    train(toy(steps=4, checkpoint_every=2), tmp_path / "run", progress=False)
    before = snapshot(tmp_path)
    fail_at_step(monkeypatch, 1, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        train(toy(steps=6, checkpoint_every=4), tmp_path / "run", resume=True, progress=False)
    after = snapshot(tmp_path)
    config, config_before = (json.loads(d.pop("run/config.json")) for d in (after, before))
    assert after == before and config == {**config_before, "steps": 6, "checkpoint_every": 4}


def test_data_root_is_stored_absolute_and_may_change_on_resume(tmp_path, monkeypatch):
    """A relative data folder is stored absolute (from the current folder at the start); a run whose data moved
    resumes with the folder where it is now; the thread count of the writing process is in each checkpoint."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "pngs").mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(tmp_path / "pngs" / f"{i:02d}.png")
    monkeypatch.chdir(tmp_path)
    config = toy(data="image_folder", data_root="pngs", batch_size=4, steps=2, checkpoint_every=2)
    train(config, "run", progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["data_root"]
    assert saved == str(tmp_path / "pngs") and final_state("run")["config"]["data_root"] == saved
    assert final_state("run")["threads"] == torch.get_num_threads()
    (tmp_path / "pngs").rename(tmp_path / "moved")
    train(toy(**{**config.to_dict(), "data_root": "moved", "steps": 4}), "run", resume=True, progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_root"] == str(tmp_path / "moved")


# ---------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("kw, match", [
    (dict(steps=0), r"steps = 0; pass a positive integer \(--steps\)"),
    (dict(steps=5, batch_size=-3), r"batch_size = -3; pass a positive integer \(--batch-size\)"),
    (dict(steps=None), "no training budget"),
    (dict(steps=5, minutes=0), "minutes = 0"),
    (dict(steps=5, estimator="elbo"), "unknown estimator 'elbo'; choose one of .*" + "stochastic-kl-is"),
    (dict(steps=5, device="tpu"), "unknown device 'tpu'"),
    (dict(steps=5, lr=-1.0), "lr = -1.0"),
    (dict(steps=5, ema_decay=1.0), "ema_decay = 1.0"),
    (dict(steps=5, net="resnet"), "unknown net 'resnet'"),
], ids=["steps", "batch", "budget", "minutes", "estimator", "device", "lr", "ema", "net"])
def test_bad_config_values(kw, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        train(toy(**kw), tmp_path, progress=False)
    assert not list_checkpoints(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_but_unavailable():
    with pytest.raises(ValueError, match="CUDA is not available here; use --device cpu"):
        toy(steps=1, device="cuda").validate()


def test_net_preset_must_fit_the_data(tmp_path):
    with pytest.raises(ValueError, match=r"net preset 'digits' expects .*\[1, 8, 8\].*use --net mlp"):
        train(toy(steps=1, net="digits"), tmp_path, progress=False)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_every_estimator_trains(estimator, tmp_path):
    variance = "learned" if estimator == "hybrid" else "beta"  # the hybrid loss trains a learned σ²
    # A continuous-time estimator scores a γ schedule in continuous time (T = 0); the others a chain of steps.
    process = dict(T=5) if ESTIMATORS[estimator].needs_steps else dict(T=0, schedule="learned-net")
    result = train(toy(estimator=estimator, steps=2, variance=variance, **process), tmp_path, progress=False)
    assert result.step == 2 and np.isfinite(result.loss)


# ---------------------------------------------------------------------------------------- files
def test_run_folder_contents_csv_metrics_and_budget_in_minutes(tmp_path):
    config = toy(steps=None, minutes=0.002, metrics_format="csv", keep_checkpoints=2, checkpoint_every=1)
    result = train(config, tmp_path, progress=False)
    assert result.stopped_by == "minutes" and result.step >= 1
    assert json.loads((tmp_path / "config.json").read_text()) == config.to_dict()
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,loss,bpd,running_bpd,lr,grad_norm,elapsed" and len(lines) == result.step + 1
    assert len(list_checkpoints(tmp_path)) == min(2, result.step)
    state = final_state(tmp_path)
    assert state["step"] == result.step and state["config"] == config.to_dict()


def test_metrics_beyond_the_checkpoint_are_cut_on_resume(tmp_path):
    train(toy(steps=4, checkpoint_every=2), tmp_path, progress=False)
    with open(tmp_path / "metrics.jsonl", "a") as f:  # as if killed after logging steps 5..6 and half a line
        f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n" + '{"step": 6, "lo')
    train(toy(steps=4, checkpoint_every=2), tmp_path, resume=True, progress=False)
    assert [row[0] for row in metric_rows(tmp_path)] == [1, 2, 3, 4]


def test_save_is_atomic_and_stale_temporaries_are_removed(tmp_path):
    path = tmp_path / "ckpt-00000001.pt"
    save_checkpoint(path, {"w": torch.arange(3.0), "n": 1, "s": "x", "l": [1, 2.5, None]})
    (tmp_path / "ckpt-00000002.pt.tmp-12345").write_bytes(b"torn write")  # a killed writer's leftover
    assert latest_checkpoint(tmp_path) == path  # temporaries are never taken for checkpoints
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == ["ckpt-00000002.pt.tmp-12345"]
    state = load_checkpoint(path)
    assert torch.equal(state["w"], torch.arange(3.0)) and state["l"] == [1, 2.5, None]


def test_checkpoints_refuse_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": Path("x")}, path)  # any non-allow-listed class
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_rng_state_round_trip():
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_roundtrip(state))
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def load_roundtrip(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_load_trained_gives_the_ema_weights(tmp_path):
    result = train(toy(steps=3), tmp_path, progress=False)
    diffusion = load_trained(tmp_path)
    for k, v in diffusion.denoiser.state_dict().items():
        assert torch.equal(v, result.ema[k])
    assert diffusion.sample(4).shape == (4, 2)


# ---------------------------------------------------------------------------------------- validation, best weights
VAL = dict(data="digits", net="mlp", T=100, batch_size=32, lr=3e-3, warmup_steps=2, log_every=5, val_examples=40)


def test_holdout_split_is_a_partition_of_the_training_split_chosen_by_the_seed():
    kept, held = holdout_split(100, 10, seed=3)
    assert len(held) == 10 and np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(100))
    assert np.array_equal(held, holdout_split(100, 10, seed=3)[1])  # a function of the seed ...
    assert not np.array_equal(held, holdout_split(100, 10, seed=4)[1])  # ... that depends on it
    assert set(holdout_split(100, 4, seed=3)[1]) < set(held)  # fewer held out: a subset (the lowest ranks)
    for bad in (-1, 100, 250, 2.5, True):
        with pytest.raises(ValueError, match=f"val_examples = {bad!r}, but the training split has 100"):
            holdout_split(100, bad, seed=0)


def test_the_best_is_the_lowest_figure_the_earliest_on_a_tie_never_nan():
    v = Validation.__new__(Validation)  # record() alone: no data or model needed
    v.history, v.best = [], None
    weights = lambda step: {"model": {"w": torch.tensor([float(step)])}, "ema": {"w": torch.tensor([-float(step)])}}
    kept = [v.record(step, bpd, weights(step)) for step, bpd in [(1, float("nan")), (2, 5.0), (3, 4.0), (4, 4.0),
                                                                 (5, float("nan")), (6, 4.5)]]
    assert kept == [False, True, True, False, False, False]
    assert v.best["step"] == 3 and v.best["val_bpd"] == 4.0 and v.best["ema"]["w"].item() == -3.0
    assert [h["step"] for h in v.history] == [1, 2, 3, 4, 5, 6]


def test_validation_figures_are_the_estimate_and_the_test_split_is_never_read(tmp_path, monkeypatch):
    real = loop_mod.load_dataset

    def nan_test_split(*args, **kw):  # training and validation stay finite only if they never read the test split
        data = real(*args, **kw)
        return dataclasses.replace(data, test=torch.full_like(data.test, float("nan")))

    monkeypatch.setattr(loop_mod, "load_dataset", nan_test_split)
    result = train(TrainConfig(**VAL, steps=9, checkpoint_every=3, keep_checkpoints=10), tmp_path, progress=False)
    state = final_state(tmp_path)
    history = state["validation"]["history"]
    assert [h["step"] for h in history] == [3, 6, 9] and all(math.isfinite(h["val_bpd"]) for h in history)
    assert state["batches"]["n"] == 1437 - 40  # the trainer drew its batches from the other training digits
    # Each figure, recomputed independently: the estimate of the bound (a fixed plan, the run's seed) of that
    # checkpoint's EMA weights on the held-out training digits.
    data, (_, held) = load_dataset("digits"), holdout_split(1437, 40, seed=0)
    plan = plan_uniform(100, **VALIDATION_PLAN)
    assert len(plan.strata) == 20 and all(len(s) == 4 for s in plan.strata)  # t > 20 is sampled, not summed
    for h in history:
        ema = load_trained(tmp_path / f"ckpt-{h['step']:08d}.pt")
        bpd = estimate_bound(ema, data.train[held], plan, seed=0, indices=held).bits_per_dim().mean().item()
        assert bpd == pytest.approx(h["val_bpd"], rel=1e-6, abs=0)
    best = min(history, key=lambda h: h["val_bpd"])
    assert (result.best_step, result.best_val_bpd) == (best["step"], best["val_bpd"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["val_bpd"]) for r in rows if "val_bpd" in r] == [(h["step"], h["val_bpd"]) for h in history]


def test_best_weights_are_kept_and_used_by_evaluate_and_sample(tmp_path, monkeypatch):
    figures = iter([5.0, 3.0, 4.0, 3.5])  # validations at steps 2, 4, 6, 8: the best is step 4
    monkeypatch.setattr(Validation, "estimate", lambda self, state: next(figures))
    result = train(TrainConfig(**VAL, steps=8, checkpoint_every=2, keep_checkpoints=1), tmp_path, progress=False)
    assert (result.best_step, result.best_val_bpd, result.best) == (4, 3.0, tmp_path / "best.pt")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000008.pt"]  # best.pt outlives pruning
    best, last = load_checkpoint(tmp_path / "best.pt"), final_state(tmp_path)
    assert best["step"] == 4 and best["val_bpd"] == 3.0 and "optimizer" not in best
    for part in ("model", "ema"):
        assert any(not torch.equal(v, last[part][k]) for k, v in best[part].items())  # step 4's, not step 8's
        assert all(torch.equal(v, last["validation"]["best"][part][k]) for k, v in best[part].items())
    for k, v in load_trained(tmp_path).denoiser.state_dict().items():
        assert torch.equal(v, best["ema"][k])
    kw = dict(max_examples=4, fd_samples=0, progress=False)
    chosen = evaluate_run(tmp_path, **kw)
    assert (chosen["weights_from"], chosen["step"], chosen["val_bpd"]) == ("best", 4, 3.0)
    assert json.loads((tmp_path / "eval.json").read_text())["weights_from"] == "best"
    newest = evaluate_run(tmp_path, last=True, **kw)
    assert (newest["weights_from"], newest["step"], newest["val_bpd"]) == ("checkpoint", 8, None)
    assert newest["bpd_ema"] != chosen["bpd_ema"]
    assert sample_run(tmp_path, n=2).run.step == 4 and sample_run(tmp_path, n=2, last=True).run.step == 8


def test_resume_keeps_the_best_and_rewrites_a_stale_best_pt(tmp_path):
    config = lambda steps: TrainConfig(**VAL, steps=steps, checkpoint_every=2, keep_checkpoints=10)  # noqa: E731
    train(config(8), tmp_path / "full", progress=False)
    part = tmp_path / "part"
    train(config(4), part, progress=False)
    # As if killed after writing a best.pt of step 6 but before its checkpoint: resume restores step 4's state.
    shutil.copy(tmp_path / "full" / "ckpt-00000006.pt", part / "best.pt")
    resumed = train(config(8), part, resume=True, progress=False)
    assert_same_training_state(final_state(tmp_path / "full"), final_state(part))
    assert_same_best(tmp_path / "full", part)
    assert metric_rows(tmp_path / "full") == metric_rows(part)
    assert resumed.best_step == final_state(part)["validation"]["best"]["step"]


def test_a_run_without_val_examples_in_its_config_still_resumes(tmp_path):
    train(toy(steps=2, checkpoint_every=2), tmp_path, progress=False)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["val_examples"]  # written before the key existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    ckpt = latest_checkpoint(tmp_path)
    state = load_checkpoint(ckpt)
    del state["config"]["val_examples"]
    save_checkpoint(ckpt, state)
    assert TrainConfig.from_dict(config).val_examples == 0
    assert train(toy(steps=4, checkpoint_every=2), tmp_path, resume=True, progress=False).step == 4
    assert not (tmp_path / "best.pt").exists()


# ---------------------------------------------------------------------------------------- a short run's settings
def test_the_ema_keeps_decay_to_the_steps_of_the_initial_weights():
    """The EMA the trainer keeps is Σ_k w_k θ_k over the raw weights θ_0 (the initial ones) .. θ_N, with
    w_0 = d^N and w_k = (1 − d) d^(N−k): recomputed from the raw weights recorded after every step. The share d^N
    of θ_0 is what budget_warnings reports."""
    decay, n = 0.9, 6
    config = toy(steps=n, ema_decay=decay).validate()
    data = load_dataset(config.data)
    trainer = train_mod.make_trainer(config, data, torch.device("cpu"))
    batches = BatchStream(len(data.train), config.seed)
    raw = [{k: v.detach().clone().double() for k, v in trainer.net.state_dict().items()}]
    for step in range(1, n + 1):
        trainer.step(batches.next(config.batch_size), lr_at(config, step))
        raw.append({k: v.detach().clone().double() for k, v in trainer.net.state_dict().items()})
    weights = [decay ** n] + [(1 - decay) * decay ** (n - k) for k in range(1, n + 1)]
    assert math.isclose(sum(weights), 1.0)
    for key, got in trainer.ema.items():
        want = sum(w * r[key] for w, r in zip(weights, raw))
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6), key
    assert not torch.equal(raw[0]["inp.weight"], raw[-1]["inp.weight"])  # the weights moved


def test_a_warm_up_or_an_ema_longer_than_the_run_is_warned_with_the_fix(tmp_path):
    """Warned: a warm-up over half the run, an EMA keeping over 5% of the initial weights at the end; the decay
    suggested keeps at most 5%. Not warned: the demo's settings (2,000 steps, warm-up 100, EMA 0.998), a budget in
    minutes only."""
    from ppl_diffusion.train import BudgetWarning, budget_warnings

    warm, ema = budget_warnings(toy(steps=1500, warmup_steps=1000, ema_decay=0.999))
    assert warm == ("--warmup-steps 1000 is over half of the run's 1500 steps: the learning rate reaches --lr 0.001 "
                    "only at step 1000; pass --warmup-steps 75 (5% of the steps) or train longer")
    assert ema == ("--ema-decay 0.999 over 1500 steps leaves 22% of the untrained initial weights in the EMA weights "
                   "that evaluate and sample use; pass --ema-decay 0.998 or lower (at most 1 - 3/steps) or train "
                   "longer")
    for steps in (20, 200, 1500, 2000, 7000):
        decay = float(budget_warnings(toy(steps=steps, ema_decay=0.9999))[-1].split("pass --ema-decay ")[1].split()[0])
        assert decay ** steps <= 0.05 and not budget_warnings(toy(steps=steps, warmup_steps=0, ema_decay=decay))
    assert "pass --ema-decay 0 (no averaging)" in budget_warnings(toy(steps=2, ema_decay=0.5))[-1]
    assert budget_warnings(toy(steps=2000, warmup_steps=100, ema_decay=0.998)) == []
    assert budget_warnings(toy(steps=None, minutes=1.0, warmup_steps=1000, ema_decay=0.9999)) == []
    with pytest.warns(BudgetWarning, match="--ema-decay 0.999 over 4 steps"):
        train(toy(steps=4, ema_decay=0.999), tmp_path, progress=False)
    big = budget_warnings(toy(steps=2000, warmup_steps=100, ema_decay=0.998, batch_size=300), 128)
    assert big == ["--batch-size 300 is larger than the 128 training examples: every step sees each of them up to 3 "
                   "times; pass --batch-size 128 or less"]
    assert budget_warnings(toy(steps=2000, warmup_steps=100, ema_decay=0.998, batch_size=128), 128) == []


def test_train_says_which_net_it_built(tmp_path, capsys):
    """The CLI's first line names the net with the settings the size rule chose and its parameter count, and the
    examples it trains on; the budget warnings are one line each."""
    from ppl_diffusion.cli import _one_line_warning, main
    from ppl_diffusion.train import BudgetWarning

    with pytest.warns(BudgetWarning) as caught:
        assert main(["train", "--data", "digits", "--channels", "8", "--res-blocks", "1", "--T", "5", "--steps", "2",
                     "--batch-size", "4", "--val-examples", "7", "--no-progress", "--run-dir", str(tmp_path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    params = sum(p.numel() for p in load_trained(tmp_path).denoiser.parameters())
    assert first == ("net auto: U-Net (model_channels=8, channel_mult=(1, 2), num_res_blocks=1, "
                     "attention_resolutions=(4,), dropout=0.1, use_scale_shift_norm=True), "
                     f"{params:,} parameters; 1,430 digits training examples of shape [1, 8, 8] (7 more held out "
                     "for validation)")
    assert [_one_line_warning(w.message, w.category, w.filename, w.lineno).count("\n") for w in caught] == [1, 1]
    assert all(_one_line_warning(w.message, w.category, w.filename, w.lineno).startswith("ppl-diffusion: warning: ")
               for w in caught)


def test_sigterm_before_the_first_checkpoint_leaves_no_folder(tmp_path):
    """`kill` (SIGTERM) of a CLI train before its first checkpoint: status 143, one line, and the run folder it made
    is gone, as after Ctrl-C; the message says a stopped run resumes."""
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "runs" / "new"
    proc = subprocess.Popen([sys.executable, "-m", "ppl_diffusion", "train", "--data", "two_moons", "--net", "mlp",
                             "--T", "20", "--steps", "100000", "--checkpoint-every", "100000", "--log-every", "1",
                             "--warmup-steps", "0", "--threads", "1", "--no-progress", "--run-dir", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("ppl-diffusion: terminated; a train run continues"), err
    assert not (tmp_path / "runs").exists()
