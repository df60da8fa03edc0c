"""Activation checkpointing on the NumPyro backend: the named-site full-chain programs with each step's net call
under ``jax.checkpoint`` (``checkpoint_activations="steps"``), and the Flax U-Net's blocks under ``nnx.remat``
(``use_checkpoint``), give the stored path's gradients, dropout on: the call's dropout state is an input of the
checkpointed function, so the recomputation draws the same masks. The chain's checkpointed calls are bit for bit
when jitted (as the trainers run them); the U-Net's remat'd blocks are equal to float32 rounding (XLA fuses them
differently).

Found while writing these: run eagerly (no ``jit``), a checkpointed call is compiled as one program while the
stored path runs op by op, and with dropout the gradients then differ by float32 rounding (measured 3.5e-7 and
4.6e-7 relative; equal without dropout). Under ``jit`` both are one program and the bits are equal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("numpyro")

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO  # noqa: E402

from ppl_diffusion import GaussianDiffusion, NoiseSchedule  # noqa: E402
from ppl_diffusion.nets import MLPDenoiser  # noqa: E402
from ppl_diffusion.nets import UNet as TorchUNet  # noqa: E402
from ppl_diffusion.numpyro.convert import flax_twin  # noqa: E402
from ppl_diffusion.numpyro.train import from_torch  # noqa: E402


def chain_gradient(level: str, estimator: str):
    """(loss, gradient leaves) of numpyro's Trace_ELBO (guide) or TraceMeanField_ELBO (posterior_guide) over a
    3-step chain of the 2-D MLP with dropout 0.3 in training mode, jitted."""
    torch.manual_seed(0)
    net = MLPDenoiser(dim=2, dropout=0.3, zero_init=False)
    diffusion = from_torch(GaussianDiffusion(schedule=NoiseSchedule.linear(3), denoiser=net, event_shape=(2,),
                                             checkpoint_activations=level))
    assert diffusion.checkpoint_activations == level
    diffusion.denoiser.train()
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2)), jnp.float32)
    elbo, guide = ((Trace_ELBO(), diffusion.guide) if estimator == "trace" else
                   (TraceMeanField_ELBO(), diffusion.posterior_guide))
    svi = SVI(diffusion.model, guide, optax.adam(1e-3), loss=elbo)
    state = svi.init(jax.random.PRNGKey(0), x0)
    params = svi.get_params(state)

    def loss(p):
        return elbo.loss_with_mutable_state(jax.random.PRNGKey(1), {**p, **(state.mutable_state or {})},
                                            diffusion.model, guide, x0)["loss"]

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return float(value), jax.tree.leaves(grads)


@pytest.mark.parametrize("estimator", ["trace", pytest.param("meanfield", marks=pytest.mark.slow)])
def test_checkpointed_named_site_chain_gradients_equal_the_stored_ones(estimator):
    value, grads = chain_gradient("none", estimator)
    value_c, grads_c = chain_gradient("steps", estimator)
    assert value == value_c
    assert all(np.array_equal(a, b) for a, b in zip(grads, grads_c))
    assert max(float(jnp.abs(g).max()) for g in grads) > 0


@pytest.mark.slow  # ~20 s: two U-Net gradients compiled
def test_flax_unet_blocks_remat_gives_the_same_gradients():
    """UNet.use_checkpoint on the Flax twin: each block under nnx.remat; the same gradient to float32 rounding
    (dropout on, jitted). Not bit for bit: XLA fuses the remat'd blocks differently (measured 1.9e-6 relative
    without dropout, 8.1e-6 with it; other dropout masks would change it by ~1e-1)."""
    torch.manual_seed(0)
    tnet = TorchUNet(in_channels=1, model_channels=8, image_size=8, channel_mult=(1, 2), attention_resolutions=(4,),
                     dropout=0.3, num_groups=4, zero_init=False)
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, size=(3, 1, 8, 8)), jnp.float32)
    t = jnp.asarray([1, 2, 3])
    grads = []
    for flag in (False, True):
        net = flax_twin(tnet)
        net.train()
        net.use_checkpoint = flag
        grad = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x, t) ** 2)))
        grads.append(jax.tree.leaves(grad(net)))
    assert max(float(jnp.abs(a - b).max() / jnp.abs(a).max()) for a, b in zip(*grads)) < 1e-4


def test_blocks_refused_for_a_net_without_them():
    torch.manual_seed(0)
    td = GaussianDiffusion(schedule=NoiseSchedule.linear(3), denoiser=MLPDenoiser(dim=2), event_shape=(2,))
    jd = from_torch(td)
    with pytest.raises(ValueError, match=r"^checkpoint_activations='blocks' recomputes the blocks of a U-Net"):
        jd.checkpoint_activations = "blocks"
