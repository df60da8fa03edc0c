"""Training loop and checkpoints: exact resume (also after SIGKILL), atomic files, clear errors."""

from __future__ import annotations

import json
import os
import random
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

import ppl_diffusion.train.pyro_trainer as train_mod
from ppl_diffusion.checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                                      remove_stale_temporaries, rng_state, save_checkpoint, set_rng_state)
from ppl_diffusion.infer import ESTIMATORS
from ppl_diffusion.train import TrainConfig, TrainingDiverged, load_trained, train

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
    return [(r["step"], r["loss"]) for r in map(json.loads, (Path(run_dir) / name).read_text().splitlines())]


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


def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path):
    """The 8-Gaussians toy killed at random moments, each part a new process, ends bit for bit as the
    uninterrupted run in yet another process: every tensor of the state, and the metrics."""
    config = toy(steps=40, checkpoint_every=1, keep_checkpoints=2)
    run = tmp_path / "killed"
    rng = random.Random(1234)
    cmd = [sys.executable, "-c", SCRIPT, json.dumps(config.to_dict())]
    reference = subprocess.Popen([*cmd, str(tmp_path / "reference")], env=TWO_THREADS, stderr=subprocess.PIPE,
                                 text=True)
    kills = 0
    for _ in range(3):
        before = latest_checkpoint(run)
        proc = subprocess.Popen([*cmd, str(run)], env=TWO_THREADS, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while proc.poll() is None and latest_checkpoint(run) == before and time.monotonic() < deadline:
            time.sleep(0.005)  # wait until training runs (imports take a while), then kill at random
        time.sleep(rng.uniform(0.0, 0.15))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1
    done = subprocess.run([*cmd, str(run)], env=TWO_THREADS, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-2000:]
    assert_same_training_state(final_state(tmp_path / "reference"), final_state(run))
    assert metric_rows(tmp_path / "reference") == metric_rows(run)
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
    result = train(toy(estimator=estimator, steps=2, T=5, variance=variance), tmp_path, progress=False)
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
    assert [s for s, _ in metric_rows(tmp_path)] == [1, 2, 3, 4]


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
