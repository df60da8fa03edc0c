"""Activation checkpointing (``checkpoint_activations``, ``--checkpoint-activations``; ppl_diffusion.nets.remat):
the recomputed path gives the stored path's gradients bit for bit on a CPU (the same arithmetic run twice, dropout
masks included: torch's global generator and the trainer's BatchDraws generator alike), it does recompute (the net
runs again in the backward pass, fewer bytes are saved), and what cannot checkpoint is refused in one line."""

from __future__ import annotations

import contextlib
import json

import pyro
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from ppl_diffusion import GaussianDiffusion, NoiseSchedule
from ppl_diffusion.infer.draws import BatchDraws, slice_dropout
from ppl_diffusion.nets import MLPDenoiser, UNet
from ppl_diffusion.nets.remat import CHECKPOINTING

T = 4


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (tiny nets ran ~20x slower on two threads of a shared machine); conftest restores it."""
    torch.set_num_threads(1)

LEVELS = ("steps", "blocks")


def tiny_unet(dropout: float = 0.3) -> UNet:
    torch.manual_seed(0)  # zero_init off: every layer has a gradient
    return UNet(in_channels=1, model_channels=8, image_size=8, channel_mult=(1, 2), attention_resolutions=(4,),
                dropout=dropout, num_groups=4, zero_init=False)


def data(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


# The full-chain estimators: (loss, guide name); IWAE is RenyiELBO α = 0 with vectorized particles.
ESTIMATORS = {
    "trace": (lambda: Trace_ELBO(), "guide"),
    "meanfield": (lambda: TraceMeanField_ELBO(), "posterior_guide"),
    "iwae": (lambda: RenyiELBO(alpha=0, num_particles=2, vectorize_particles=True, max_plate_nesting=1), "guide"),
}


def chain_gradient(level: str, estimator: str, *, draws: bool = False):
    """(loss, gradients, the draws generator's state after the step) of one full-chain loss in training mode
    (dropout 0.3 on)."""
    net = tiny_unet()
    if draws:
        slice_dropout(net)
    diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=net, event_shape=(1, 8, 8),
                                  checkpoint_activations=level)
    net.train()
    make, guide = ESTIMATORS[estimator]
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    generator = torch.Generator().manual_seed(3)
    elbo = make()
    if isinstance(elbo, RenyiELBO):  # no differentiable_loss: loss_and_grads runs the backward pass itself
        with BatchDraws(generator) if draws else contextlib.nullcontext():
            loss = torch.tensor(elbo.loss_and_grads(diffusion.model, getattr(diffusion, guide), data()))
    else:
        with BatchDraws(generator) if draws else contextlib.nullcontext():
            loss = elbo.differentiable_loss(diffusion.model, getattr(diffusion, guide), data())
        loss.backward()  # outside the BatchDraws, as the trainer does: the recomputation replays its masks
    return loss.detach(), [p.grad.clone() for p in net.parameters()], generator.get_state()


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("draws", [False, True], ids=["torch-rng", "batch-draws"])
def test_checkpointed_full_chain_gradients_equal_the_stored_ones(estimator, draws):
    loss, grads, state = chain_gradient("none", estimator, draws=draws)
    for level in LEVELS:
        loss_c, grads_c, state_c = chain_gradient(level, estimator, draws=draws)
        assert torch.equal(loss, loss_c), level
        assert all(torch.equal(a, b) for a, b in zip(grads, grads_c)), level  # bit for bit, dropout included
        assert torch.equal(state, state_c), level  # the recomputation did not move the step's generator


def test_checkpointing_recomputes_and_saves_less():
    """"steps": the net runs again in the backward pass, once per step, and the forward saves fewer bytes."""
    def run(level):
        net = tiny_unet(dropout=0.0)
        calls = []
        forward = net.forward  # counted in forward (torch runs no forward hooks in a checkpoint's recomputation)
        net.forward = lambda *args: (calls.append(1), forward(*args))[1]
        diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=net, event_shape=(1, 8, 8),
                                      checkpoint_activations=level)
        saved = []

        def pack(x):
            saved.append(x.numel() * x.element_size() if torch.is_tensor(x) else 0)
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            loss = Trace_ELBO().differentiable_loss(diffusion.model, diffusion.guide, data())
        forward_calls = len(calls)
        loss.backward()
        return forward_calls, len(calls) - forward_calls, sum(saved)

    stored, recomputed = run("none"), run("steps")
    assert stored[:2] == (T, 0) and recomputed[:2] == (T, T)
    assert recomputed[2] < stored[2] / 3, (recomputed[2], stored[2])


def test_unet_blocks_recompute_with_the_same_gradients():
    """UNet.use_checkpoint: each block recomputed; the same gradients (dropout on), state dict unchanged."""
    x, t = data(4), torch.tensor([1, 3, 5, 6])
    grads = []
    for flag in (False, True):
        net = tiny_unet()
        keys = list(net.state_dict())
        net.use_checkpoint = flag
        torch.manual_seed(7)
        net(x, t).square().sum().backward()
        grads.append([p.grad for p in net.parameters()])
        assert list(net.state_dict()) == keys
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_the_option_sets_the_unet_and_is_carried():
    net = tiny_unet()
    diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=net, event_shape=(1, 8, 8),
                                  checkpoint_activations="blocks")
    assert net.use_checkpoint and diffusion.with_variance("posterior").checkpoint_activations == "blocks"
    diffusion.checkpoint_activations = "steps"
    assert not net.use_checkpoint and diffusion.checkpoint_activations == "steps"
    assert "checkpoint_activations='steps'" in repr(diffusion)
    assert CHECKPOINTING == ("none", "steps", "blocks")


def test_what_cannot_checkpoint_is_refused_in_one_line():
    mlp = MLPDenoiser(dim=2)
    with pytest.raises(ValueError, match=r"^checkpoint_activations='blocks' recomputes the blocks of a U-Net .*"
                                         r"MLPDenoiser, has none: use 'steps'"):
        GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=mlp, event_shape=(2,),
                          checkpoint_activations="blocks")
    with pytest.raises(ValueError, match=r"unknown checkpoint_activations 'all'; choose one of none, steps, blocks"):
        GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=mlp, event_shape=(2,), checkpoint_activations="all")
    GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=mlp, event_shape=(2,), checkpoint_activations="steps")


def test_cli_refuses_blocks_for_an_mlp_and_leaves_no_run_folder(tmp_path, capsys):
    from ppl_diffusion.cli import main

    run = tmp_path / "run"
    code = main(["train", "--data", "gaussian", "--net", "mlp", "--T", "10", "--steps", "1", "--run-dir", str(run),
                 "--no-progress", "--checkpoint-activations", "blocks"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "checkpoint_activations='blocks'" in err[0] and "MLPDenoiser" in err[0]
    assert not run.exists()
    code = main(["compare", "--data", "gaussian", "--net", "mlp", "--T", "10", "--out", str(tmp_path / "study"),
                 "--no-progress", "--checkpoint-activations", "blocks"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "MLPDenoiser" in err[0]
    assert not (tmp_path / "study").exists()


def test_recorded_in_config_and_changeable_on_resume(tmp_path):
    """Recorded in config.json; a run resumed with checkpointing (memory, not numbers) ends with the bits of the
    uninterrupted run without it (the digits MLP's full chain, Trace_ELBO)."""
    from ppl_diffusion.checkpoint import latest_checkpoint, load_checkpoint
    from ppl_diffusion.cli import main

    base = ["train", "--data", "digits", "--net", "mlp", "--estimator", "trace", "--T", "8", "--batch-size", "8",
            "--warmup-steps", "0", "--checkpoint-every", "2", "--no-progress", "--threads", "1"]
    assert main([*base, "--steps", "4", "--run-dir", str(tmp_path / "a")]) == 0
    assert main([*base, "--steps", "2", "--run-dir", str(tmp_path / "b"), "--checkpoint-activations"]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["checkpoint_activations"] == "steps"
    # resume takes the saved settings of the flags not given: the option changed by giving it
    assert main([*base, "--steps", "4", "--run-dir", str(tmp_path / "b"), "--resume",
                 "--checkpoint-activations", "none"]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["checkpoint_activations"] == "none"
    a, b = (load_checkpoint(latest_checkpoint(tmp_path / r)) for r in "ab")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_steps_with_an_estimator_that_does_not_walk_the_chain_is_refused():
    """Every option is honoured or refused: the stochastic-t estimators call the net once per example, so
    recomputing the chain's calls would do nothing."""
    from ppl_diffusion.train import TrainConfig

    with pytest.raises(ValueError, match=r"^--checkpoint-activations steps recomputes .* the estimator "
                                         r"stochastic-kl-is does not walk .*--checkpoint-activations blocks"):
        TrainConfig(data="gaussian", net="mlp", T=10, steps=1, checkpoint_activations="steps").validate()
    for estimator in ("trace", "meanfield"):
        TrainConfig(data="gaussian", net="mlp", T=10, steps=1, estimator=estimator,
                    checkpoint_activations="steps").validate()
