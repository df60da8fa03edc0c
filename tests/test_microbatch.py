"""Micro-batching (``--microbatch M``, ``TrainConfig.microbatch``): a step whose batch is scored M examples at a time,
the gradients accumulated before one optimizer step, is the unsplit step to float rounding, on the Pyro backend
(1 process here; 2-process torchrun in test_distributed.py) and on NumPyro; a size that does not divide the
per-process batch is one line naming the nearest valid sizes.

Why a tolerance and not bits: the split step draws exactly the unsplit step's numbers (every draw is made for the
global batch and sliced), but its gradient is a sum of per-chunk sums, whose float32 additions are grouped
differently from the one whole-batch sum; Adam then divides by sqrt(v), so a rounding-level change of a gradient
moves a weight by ~lr·1e-7 relative at most per step. 1e-5 on weights after a few steps is the bar the
data-parallel tests use for the same reason (reduction order); what is exact is asserted exactly: the generator's
state after the step, the importance sampler's history (its losses are recorded once per step, in batch order,
up to the same rounding of each example's loss), the number of steps."""

from __future__ import annotations

import json

import pytest
import torch

from ppl_diffusion.checkpoint import latest_checkpoint, load_checkpoint
from ppl_diffusion.train import TrainConfig, train

from ppl_diffusion.data import load_dataset
from ppl_diffusion.train.pyro_trainer import PyroTrainer

# The digits MLP with dropout (its masks are drawn for the global batch and sliced), batch 8 in chunks of 2.
BASE = dict(data="digits", net="mlp", net_config={"dropout": 0.2}, T=20, batch_size=8, lr=1e-3, warmup_steps=0,
            ema_decay=0.5, steps=3, checkpoint_every=3, log_every=1, seed=5, device="cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (tiny nets; conftest restores the count after each test)."""
    torch.set_num_threads(1)


def one_step(**kw):
    """(loss, gradients, the draws generator's state, the sampler's state) after one Pyro training step."""
    trainer = PyroTrainer(TrainConfig(**{**BASE, **kw}), load_dataset("digits"), torch.device("cpu"))
    loss, _ = trainer.step(torch.arange(BASE["batch_size"]), 1e-3)
    sampler = None if trainer.sampler is None else trainer.sampler.state_dict()
    return loss, [p.grad.clone() for p in trainer.params], trainer.generator.get_state(), sampler


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / a.double().abs().max().clamp_min(1e-30)).item()


# trace: the full chain (T calls per step), also with each step's call checkpointed; stochastic-kl-is: importance-
# sampled t (the history recorded once per step); hybrid: improved DDPM's loss (its own noise draw).
@pytest.mark.parametrize("estimator,extra", [("trace", {}), ("trace", {"checkpoint_activations": "steps"}),
                                             ("stochastic-kl-is", {}), ("hybrid", {"variance": "learned"})],
                         ids=["trace", "trace-checkpointed", "stochastic-kl-is", "hybrid"])
def test_microbatched_gradient_equals_the_whole_batch(estimator, extra):
    """One step's gradient (before clipping and Adam) in chunks of 2 equals the whole batch's to float32 rounding
    (measured 2e-7 to 4e-7 relative; dropout alone changes it by 1e-2, so the masks are the same), the generator
    ends in the same state (the same draws, no more), and the importance sampler recorded the same losses."""
    loss, grads, state, sampler = one_step(estimator=estimator, **{k: v for k, v in extra.items() if k == "variance"})
    loss_m, grads_m, state_m, sampler_m = one_step(estimator=estimator, microbatch=2, **extra)
    assert abs(loss - loss_m) <= 1e-6 * abs(loss)
    assert max(relative(a, b) for a, b in zip(grads, grads_m)) < 1e-5
    assert torch.equal(state, state_m)
    if sampler is not None and "loss_counts" in sampler:  # importance sampling's history
        assert torch.equal(sampler["loss_counts"], sampler_m["loss_counts"]) and sampler["loss_counts"].sum() == 8
        assert torch.allclose(sampler["loss_history"], sampler_m["loss_history"], rtol=1e-5, atol=0)


def run(tmp_path, name: str, **kw) -> dict:
    train(TrainConfig(**{**BASE, **kw}), tmp_path / name, progress=False)
    return load_checkpoint(latest_checkpoint(tmp_path / name))


def test_microbatched_run_equals_the_whole_run(tmp_path):
    """Three steps through train(): the recorded config, the draws and the sampler's counts exact; the weights to
    1e-4. Adam's first steps move a weight by about lr·g/|g|, so a component whose per-example gradients cancel to
    rounding level can move differently by up to lr = 1e-3 a step: measured 1.05e-5 after 3 steps."""
    whole = run(tmp_path, "whole", estimator="stochastic-kl-is")
    split = run(tmp_path, "split", estimator="stochastic-kl-is", microbatch=2)
    assert json.loads((tmp_path / "split" / "config.json").read_text())["microbatch"] == 2
    for key in ("model", "ema"):
        assert max(relative(whole[key][k], split[key][k]) * whole[key][k].abs().max().item()
                   for k in whole[key]) < 1e-4, key
    assert torch.equal(whole["draws"]["state"], split["draws"]["state"])
    assert torch.equal(whole["sampler"]["loss_counts"], split["sampler"]["loss_counts"])
    assert whole["step"] == split["step"] == BASE["steps"]


def test_a_microbatch_that_does_not_divide_the_batch_is_one_line(tmp_path, capsys):
    from ppl_diffusion.cli import main

    run_dir = tmp_path / "run"
    code = main(["train", "--data", "digits", "--net", "mlp", "--T", "10", "--batch-size", "12", "--steps", "1",
                 "--microbatch", "5", "--run-dir", str(run_dir), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "microbatch 5 does not divide the per-process batch 12" in err[0] and "--microbatch 4 or 6" in err[0]
    assert not run_dir.exists()
    with pytest.raises(ValueError, match=r"microbatch = 0; pass a positive number"):
        TrainConfig(**{**BASE, "microbatch": 0}).validate()


# ---------------------------------------------------------------------------------------- NumPyro
def numpyro_step(**kw):
    """(loss, Adam's first moment after one step = 0.1 · the clipped gradient, the sampler's state) of the
    NumPyro trainer: the gradient of the jitted step, through the state it keeps."""
    pytest.importorskip("jax")
    pytest.importorskip("numpyro")
    import jax

    from ppl_diffusion.numpyro.train import NumPyroTrainer
    from ppl_diffusion.train.config import build_diffusion

    trainer = NumPyroTrainer(TrainConfig(**{**BASE, "backend": "numpyro", "grad_clip": None, **kw}),
                             load_dataset("digits"), build_diffusion)
    loss, _ = trainer.step(torch.arange(BASE["batch_size"]), 1e-3)
    mu = jax.tree.leaves(trainer._adam_state(trainer.svi_state.optim_state[1][1]).mu)
    return loss, mu, trainer.sampler_state


@pytest.mark.slow  # two trainers compiled: ~30 s of CPU each case
@pytest.mark.parametrize("estimator", ["stochastic-kl-is", "trace"])
def test_numpyro_microbatched_step_equals_the_whole_step(estimator):
    """The jitted step in chunks of 2 (lax.scan, every draw made for the global batch and sliced: the guide's
    latents, the compiled chain's noise, dropout masks) gives the whole step's loss and gradient to float32
    rounding, and the importance sampler the same history."""
    import jax
    import numpy as np

    loss, mu, sampler = numpyro_step(estimator=estimator)
    loss_m, mu_m, sampler_m = numpyro_step(estimator=estimator, microbatch=2)
    assert abs(loss - loss_m) <= 1e-6 * abs(loss)
    assert max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)) for a, b in zip(mu, mu_m)) < 1e-5
    for a, b in zip(jax.tree.leaves(sampler), jax.tree.leaves(sampler_m)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)


# ---------------------------------------------------------------------------------------- torchrun
@pytest.mark.slow  # a torchrun launch and a 1-process run: 20-60 s
def test_two_processes_in_microbatches_train_as_one_process_whole(tmp_path):
    """torchrun (gloo, 2 processes), each rank's 8 rows in micro-batches of 4, the gradients all-reduced once per
    step, against one process with the whole batch of 16: the weights after 10 steps to test_distributed's bar
    (1e-5: float32 reduction order), the importance sampler's history the same."""
    from .test_distributed import MLP, TOLERANCE, max_diff, torchrun_train, weights

    cfg = {**MLP, "steps": 10, "checkpoint_every": 10}
    done = torchrun_train(tmp_path / "two", cfg, "--microbatch", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    train(TrainConfig(**cfg), tmp_path / "one", progress=False)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["microbatch"] == 4
    assert max_diff(weights(tmp_path / "one"), weights(tmp_path / "two")) < TOLERANCE
    a, b = (load_checkpoint(latest_checkpoint(tmp_path / r)) for r in ("one", "two"))
    assert torch.equal(a["sampler"]["loss_counts"], b["sampler"]["loss_counts"])
    assert torch.allclose(a["sampler"]["loss_history"], b["sampler"]["loss_history"], rtol=1e-5)
    assert torch.equal(a["draws"]["state"], b["draws"]["state"])
