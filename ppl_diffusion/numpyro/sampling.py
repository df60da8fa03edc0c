"""Sampling and the per-term bound of a trained run on the NumPyro backend (``--backend numpyro``).

The JAX halves of :func:`ppl_diffusion.sampling.draw_samples` and
:func:`ppl_diffusion.evaluate.per_example_terms`; they return NumPy arrays, and everything around them
(files, figures, JSON, bits/dim) is shared with the Pyro backend. Same seed, same numbers on this
backend; the two backends draw different noise for the same seed.

Both run data-parallel over every JAX device (:mod:`.distributed`): a chunk of examples or of samples is
sharded along the mesh axis ``"data"`` when it splits evenly (else it runs unsplit), the weights are
replicated, and so is the result; 1 and N devices give the same numbers to float32 rounding.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..respace import _check_steps, respaced_schedule, space_timesteps
from . import distributed as dp
from .chain import ancestral_sample, variational_bound
from .diffusion import GaussianDiffusion


class RespacedDenoiser(nnx.Module):
    """``net(x_k, k) -> ε̂``: calls the wrapped ``denoiser(x_k, s_k)`` at the original step s_k (shared, not copied)."""

    def __init__(self, denoiser, timesteps) -> None:
        self.denoiser = denoiser
        self.timesteps = tuple(int(s) for s in timesteps)  # static: part of the graph, not of the state

    def __call__(self, x_t, t):
        return self.denoiser(x_t, jnp.asarray(self.timesteps, jnp.int32)[jnp.asarray(t) - 1])


def respace(diffusion: GaussianDiffusion, steps) -> GaussianDiffusion:
    """The NumPyro twin of :func:`ppl_diffusion.respace.respace`: the kept steps s_1 < … < s_K, the same
    respaced schedule, the denoiser called at the original steps."""
    if isinstance(steps, (str, numbers.Number)):
        timesteps = space_timesteps(diffusion.T, steps)
    else:
        timesteps = _check_steps(steps, diffusion.T)
    return GaussianDiffusion(schedule=respaced_schedule(diffusion.schedule, timesteps),
                             denoiser=RespacedDenoiser(diffusion.denoiser, timesteps),
                             event_shape=diffusion.event_shape, prior=diffusion.prior, decoder=diffusion.decoder,
                             variance=diffusion.variance)


def params_of(diffusion) -> dict:
    """The denoiser's weights as a pure dict (the value NumPyro keeps under ``"denoiser$params"``)."""
    return nnx.to_pure_dict(nnx.state(diffusion.denoiser, nnx.Param))


def _compiled(diffusion, key, build):
    """The compiled function ``build()`` for ``key``, kept on the diffusion object so that repeated calls (an
    evaluation per race point, samples per epoch) do not recompile; the denoiser's train / eval mode is part of
    the key (it is baked into the compiled function)."""
    mode = tuple(m.deterministic for _, m in nnx.iter_graph(diffusion.denoiser) if isinstance(m, nnx.Dropout))
    cache = diffusion.__dict__.setdefault("_compiled", {})
    if (key, mode) not in cache:
        cache[(key, mode)] = build()
    return cache[(key, mode)]


def draw_samples(diffusion: GaussianDiffusion, n: int, *, steps: int | None = None, seed: int = 0,
                 chunk: int = 1000) -> np.ndarray:
    """``n`` ancestral samples ``[n x *event_shape]`` (compiled with ``lax.scan``), ``chunk`` at a time;
    ``steps = K`` samples with K respaced steps."""
    chunk = min(chunk, n)

    def build():
        model = diffusion if steps is None else respace(diffusion, steps)
        sharding = dp.sharding_for(chunk)
        return model, jax.jit(lambda p, k: ancestral_sample(model, p, k, chunk, sharding=sharding),
                              out_shardings=dp.replicated())  # the last chunk is cut

    model, fn = _compiled(diffusion, ("sample", steps, chunk), build)
    params = dp.replicate(params_of(model))
    keys = jax.random.split(jax.random.PRNGKey(seed), -(-n // chunk))
    return np.concatenate([np.asarray(fn(params, key)) for key in dp.replicate(keys)])[:n]


def per_example_terms(diffusion: GaussianDiffusion, x: np.ndarray, *, timesteps_per_batch: int = 8,
                      batch_size: int = 500, seed: int = 0) -> np.ndarray:
    """L_0 … L_T for every example of ``x`` ``[N x ...]``, ``[N x (T + 1)]`` nats (float64), in batches of
    ``batch_size``, ``timesteps_per_batch`` steps per denoiser call (``lax.map``)."""
    params = dp.replicate(params_of(diffusion))
    key = jax.random.PRNGKey(seed)
    fn = _compiled(diffusion, ("bound", timesteps_per_batch), lambda: jax.jit(
        lambda p, x0, k: variational_bound(diffusion, p, x0, key=k, batch_size=timesteps_per_batch),
        out_shardings=dp.replicated()))
    parts = []
    for i, start in enumerate(range(0, len(x), batch_size)):
        chunk = dp.global_batch(np.asarray(x[start:start + batch_size], np.float32))  # sharded when it splits evenly
        parts.append(np.asarray(fn(params, chunk, dp.replicate(jax.random.fold_in(key, i))), np.float64))
    return np.concatenate(parts)
