"""Sampling and the per-term bound of a trained run on the NumPyro backend (``--backend numpyro``).

The JAX halves of :func:`ppl_diffusion.sampling.draw_samples` and
:func:`ppl_diffusion.evaluate.per_example_terms`; they return NumPy arrays, and everything around them
(files, figures, JSON, bits/dim) is shared with the Pyro backend. The bound's noise is counter-based
(:mod:`ppl_diffusion.noise`), the same numbers as the Pyro backend's for the same seed.

Both run data-parallel over every JAX device (:mod:`~ppl_diffusion.numpyro.distributed`): a chunk of examples or of
samples is
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
from .chain import sample_from_counter, variational_bound
from .diffusion import GaussianDiffusion


class RespacedDenoiser(nnx.Module):
    """``net(x_k, k) -> ε̂``: calls the wrapped ``denoiser(x_k, s_k)`` at the original step s_k (shared, not copied).

    :param denoiser: the trained net, ``denoiser(x_t, t) -> ε̂``.
    :param timesteps: the kept steps s_1 < … < s_K of the original chain.

    Example:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> from ppl_diffusion.numpyro.sampling import RespacedDenoiser
    >>> net = RespacedDenoiser(diffusion.denoiser, (1, 4))
    >>> x = jnp.ones((3, 2))
    >>> bool(jnp.array_equal(net(x, jnp.full(3, 2)), diffusion.denoiser(x, jnp.full(3, 4))))   # step 2 is s_2 = 4
    True
    """

    def __init__(self, denoiser, timesteps) -> None:
        self.denoiser = denoiser
        self.timesteps = tuple(int(s) for s in timesteps)  # static: part of the graph, not of the state

    def __call__(self, x_t, t):
        return self.denoiser(x_t, jnp.asarray(self.timesteps, jnp.int32)[jnp.asarray(t) - 1])


def respace(diffusion: GaussianDiffusion, steps) -> GaussianDiffusion:
    r"""The NumPyro twin of :func:`ppl_diffusion.respace.respace`: the kept steps s_1 < … < s_K, the same
    respaced schedule, the denoiser called at the original steps.

    .. math:: \bar\alpha'_k = \bar\alpha_{s_k}, \quad \beta'_k = 1 - \bar\alpha_{s_k} / \bar\alpha_{s_{k-1}}

    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with a NoiseSchedule.
    :param steps: the number of steps K (spread evenly), a spacing string of
        :func:`ppl_diffusion.respace.space_timesteps` (e.g. ``"ddim10"``), or the kept steps themselves.
    :returns: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with K steps.

    Example:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> from ppl_diffusion.numpyro.sampling import respace
    >>> short = respace(diffusion, 2)
    >>> short.T, short.denoiser.timesteps
    (2, (1, 4))
    >>> bool(np.isclose(short.schedule.alphas_cumprod[-1], diffusion.schedule.alphas_cumprod[-1]))
    True
    """
    if isinstance(steps, (str, numbers.Number)):
        timesteps = space_timesteps(diffusion.T, steps)
    else:
        timesteps = _check_steps(steps, diffusion.T)
    return GaussianDiffusion(schedule=respaced_schedule(diffusion.schedule, timesteps),
                             denoiser=RespacedDenoiser(diffusion.denoiser, timesteps),
                             event_shape=diffusion.event_shape, prior=diffusion.prior, decoder=diffusion.decoder,
                             variance=diffusion.variance)


def params_of(diffusion) -> dict:
    """The denoiser's weights as a pure dict (the value NumPyro keeps under ``"denoiser$params"``).

    Example:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> from ppl_diffusion.numpyro.sampling import params_of
    >>> sorted(params_of(diffusion))
    ['blocks', 'inp', 'out', 'out_norm', 'time_in', 'time_out']
    """
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


def prior_draws(diffusion: GaussianDiffusion, seed: int, index: np.ndarray, t: int) -> jnp.ndarray:
    """x_T ``[len(index) x *event]``: for a Normal prior loc + scale · ``noise.normal(seed, index, t, SAMPLE)``
    (the Pyro backend's numbers), else example i drawn with the JAX key made from the counter key of
    (seed, index[i], t, SAMPLE) (depends on its index alone).

    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with a fixed prior.
    :param int seed: the seed.
    :param index: the examples' indices ``int[n]``.
    :param int t: the step of the draw (T for ancestral sampling).
    :returns: ``[n x *event_shape]``.

    Example (N(0, I): the counter-based normals themselves):

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> from ppl_diffusion import noise
    >>> from ppl_diffusion.numpyro.sampling import prior_draws
    >>> x_T = prior_draws(diffusion, 0, np.arange(3), 4)
    >>> bool(np.array_equal(np.asarray(x_T), noise.normal(0, np.arange(3), 4, (2,), stream=noise.SAMPLE)))
    True
    """
    import numpyro.distributions as dist

    from .. import noise
    from .chain import _fixed_prior

    prior = _fixed_prior(diffusion)
    base = prior.base_dist if isinstance(prior, dist.Independent) else prior
    if isinstance(base, dist.Normal):
        eps = noise.normal(seed, index, t, tuple(diffusion.event_shape), stream=noise.SAMPLE)
        return jnp.broadcast_to(base.loc, eps.shape) + jnp.broadcast_to(base.scale, eps.shape) * jnp.asarray(eps)
    keys = noise.key(seed, index, t, noise.SAMPLE)
    keys = jnp.asarray(np.stack([keys >> np.uint64(32), keys & np.uint64(0xFFFFFFFF)], -1).astype(np.uint32))
    return jax.vmap(lambda k: prior.sample(k))(keys)


def draw_samples(diffusion: GaussianDiffusion, n: int, *, steps: int | None = None, seed: int = 0,
                 chunk: int = 1000, indices=None) -> np.ndarray:
    """``n`` ancestral samples ``[n x *event_shape]`` (compiled with ``lax.scan``), ``chunk`` at a time;
    ``steps = K`` samples with K respaced steps. The noise is counter-based (:mod:`ppl_diffusion.noise`):
    sample i's is a function of (``seed``, ``indices[i]``, step), ``indices`` default 0..n − 1, the same
    numbers as the Pyro backend's :func:`ppl_diffusion.sampling.draw_samples`.

    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with a NoiseSchedule and a fixed
        prior.
    :param int n: the number of samples.
    :param steps: K respaced steps (:func:`respace`), or None for the full chain.
    :param int seed: the seed of the counter-based noise.
    :param int chunk: samples per compiled call.
    :param indices: the samples' indices ``int[n]`` (default 0..n − 1).
    :returns: a NumPy array ``[n x *event_shape]``.

    Example (sample i depends on (seed, i) alone, not on the chunking):

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> from ppl_diffusion.numpyro.sampling import draw_samples
    >>> x = draw_samples(diffusion, 3, seed=0)
    >>> x.shape, bool(np.array_equal(draw_samples(diffusion, 3, seed=0, chunk=3), x))
    ((3, 2), True)
    """
    from ..infer.bound import check_indices

    index = check_indices(indices, n)
    model = diffusion if steps is None else respace(diffusion, steps)
    if n == 0:
        return np.zeros((0, *model.event_shape), np.float32)
    model, fn = _compiled(diffusion, ("sample", steps, seed), lambda: (model, jax.jit(
        lambda p, x_T, idx: sample_from_counter(model, p, x_T, seed, idx), out_shardings=dp.replicated())))
    params = dp.replicate(params_of(model))
    parts = []
    for start in range(0, n, chunk):
        idx = index[start:start + chunk]
        x_T = np.asarray(prior_draws(model, seed, idx, model.T), np.float32)
        # sharded over the JAX devices when the chunk splits evenly
        parts.append(np.asarray(fn(params, dp.global_batch(x_T), dp.global_batch(np.asarray(idx, np.int32)))))
    return np.concatenate(parts)


def per_example_terms(diffusion: GaussianDiffusion, x: np.ndarray, *, timesteps_per_batch: int = 8,
                      batch_size: int = 500, seed: int = 0, indices=None) -> np.ndarray:
    """L_0 … L_T for every example of ``x`` ``[N x ...]``, ``[N x (T + 1)]`` nats (float64), in batches of
    ``batch_size``, ``timesteps_per_batch`` steps per denoiser call (``lax.map``). The noise is counter-based
    (:mod:`ppl_diffusion.noise`) for (``seed``, ``indices[i]``, t), ``indices`` default 0..N − 1: the same
    numbers as the Pyro backend's :func:`ppl_diffusion.evaluate.per_example_terms`, on any batching.

    The terms are those of :func:`~ppl_diffusion.numpyro.chain.variational_bound`; a row's sum is −ELBO of the
    example, an upper bound on −log p(x_0).

    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with a NoiseSchedule and a fixed
        prior.
    :param x: the data ``[N x *event_shape]``.
    :param int timesteps_per_batch: steps per denoiser call.
    :param int batch_size: examples per compiled call.
    :param int seed: the seed of the counter-based noise.
    :param indices: the examples' indices ``int[N]`` (default 0..N − 1).
    :returns: a float64 NumPy array ``[N x (T + 1)]``, nats.

    Example:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> from ppl_diffusion.numpyro.sampling import per_example_terms
    >>> terms = per_example_terms(diffusion, np.zeros((3, 2), np.float32), seed=0)
    >>> terms.shape, terms.dtype, bool((terms.sum(1) > 0).all())
    ((3, 5), dtype('float64'), True)
    """
    from ..infer.bound import check_indices

    indices = check_indices(indices, len(x))
    if len(x) == 0:  # an empty share of a process
        return np.zeros((0, diffusion.T + 1))
    params = dp.replicate(params_of(diffusion))
    fn = _compiled(diffusion, ("bound", timesteps_per_batch, seed), lambda: jax.jit(
        lambda p, x0, idx: variational_bound(diffusion, p, x0, seed=seed, indices=idx, batch_size=timesteps_per_batch),
        out_shardings=dp.replicated()))
    parts = []
    for start in range(0, len(x), batch_size):
        chunk = dp.global_batch(np.asarray(x[start:start + batch_size], np.float32))  # sharded when it splits evenly
        idx = dp.global_batch(np.asarray(indices[start:start + batch_size], np.int32))
        parts.append(np.asarray(fn(params, chunk, idx), np.float64))
    return np.concatenate(parts)


__all__ = ["RespacedDenoiser", "draw_samples", "params_of", "per_example_terms", "prior_draws", "respace"]
