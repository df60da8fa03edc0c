"""The full chain compiled: its ELBO and ancestral sampling with ``lax.scan``, from noise passed in.

The named-site programs of :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` are the reference (a Python
loop of T sites); these functions compute the same numbers as pure functions of (params, x_0, noise), so
that ``jax.jit`` compiles one step of the chain instead of T:

- :func:`full_chain_elbo`: the per-example ELBO of one trajectory, scored as ``Trace_ELBO`` on
  (model, guide) (``analytic=False``: the forward chain, log p − log q at every site) or as
  ``TraceMeanField_ELBO`` on (model, posterior_guide) (``analytic=True``: the posterior-order chain, a
  closed-form KL at every site). ``noise[k]`` is the standard normal of the k-th sampled site, in the
  guide's order.
- :func:`sample_from_noise`: ancestral sampling; ``noise[0]`` is x_T, ``noise[k]`` the step to x_{T−k}.
- :func:`variational_bound`: every term L_0 … L_T per example, the per-term evaluator.

``params`` is the denoiser's parameters as a pure dict (``nnx.to_pure_dict(nnx.state(net, nnx.Param))``,
the value NumPyro keeps under ``"denoiser$params"``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from flax import nnx
from jax import lax

from . import closed_forms as cf
from .distributions import uses_denoiser


def denoiser_apply(diffusion):
    """A pure function ``apply(params, x_t, t, dropout_key=None) -> ε̂`` of the diffusion's Flax denoiser.

    The denoiser's mode (``.train()`` / ``.eval()``) is the module's at the time of this call. In training mode
    its dropout keys are replaced by keys derived from ``dropout_key`` (so a compiled function draws fresh
    masks per call); without one, the module's own keys are used as they are.

    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with a NoiseSchedule.
    :returns: ``apply(params, x_t [B x ...], t int[B], dropout_key=None) -> [B x ...]``, jittable.

    Example:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> from ppl_diffusion.numpyro.sampling import params_of
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> params, x0 = params_of(diffusion), jnp.zeros((3, 2))
    >>> from ppl_diffusion.numpyro.chain import denoiser_apply
    >>> eps_hat = jax.jit(denoiser_apply(diffusion))(params, x0, jnp.array([1, 2, 3]))
    >>> eps_hat.shape, float(abs(eps_hat).max())   # the net's last layer starts at zero
    ((3, 2), 0.0)
    """
    if getattr(diffusion, "gamma_schedule", False):
        raise ValueError("the compiled chain takes the denoiser's parameters only, and a γ schedule's would be its "
                         "initial ones here: score a γ-schedule model with its named-site programs (model, guide, "
                         "step_model, continuous_model) or ppl_diffusion.numpyro's ELBOs")
    graphdef, params_state, rest = nnx.split(diffusion.denoiser, nnx.Param, nnx.Not(nnx.Param))

    def apply(params, x_t, t, dropout_key=None):
        state = jax.tree.map(lambda v: v, params_state)
        nnx.replace_by_pure_dict(state, params)
        other = rest if dropout_key is None else _rekey(rest, dropout_key)
        return nnx.merge(graphdef, state, other)(x_t, t)

    return apply


def _decoder(diffusion, p_step, x_1, t):
    """The decoder p(x_0|x_1) at x_1 (``t``: step 1 per example): from ``p_step(x_1, 1)``'s mean and log-variance (one
    denoiser call), or from x_1/α_1 and log(σ_1²/α_1²) for a decoder without the denoiser (VDM's categorical)."""
    if uses_denoiser(diffusion.decoder):
        return diffusion.decoder(*p_step(x_1, 1))
    return diffusion.decoder(*cf.scaled_latent(diffusion.schedule, x_1, t))


def _rekey(rest, key):
    """``rest`` with every PRNG key leaf replaced by ``fold_in(key, i)``."""
    leaves, treedef = jax.tree.flatten(rest)
    out = []
    for i, leaf in enumerate(leaves):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            k = jax.random.fold_in(key, i)
            if not jnp.issubdtype(k.dtype, jax.dtypes.prng_key):
                k = jax.random.wrap_key_data(k, impl=jax.random.key_impl(leaf))
            leaf = k
        out.append(leaf)
    return jax.tree.unflatten(treedef, out)


def _sum_event(x, d: int):
    return x.reshape(x.shape[:x.ndim - d] + (-1,)).sum(-1)


def _normal_logpdf(x, mean, var):
    return -0.5 * (jnp.log(2 * jnp.pi * var) + (x - mean) ** 2 / var)


def _fixed_prior(diffusion, dtype=jnp.float32):
    """p(x_T) for the compiled functions, which take the denoiser's parameters only: a learned NumPyro prior
    (its ``numpyro.param`` sites) would silently give its initial values here, so it is refused."""
    from .priors import Prior

    if isinstance(diffusion.prior, Prior):
        raise ValueError("the compiled chain takes a fixed prior; for a learned one pass its trained distribution, "
                         "GaussianDiffusion(prior=handlers.substitute(prior, data=svi.get_params(state))(), ...), or "
                         "score it with the named-site programs")
    return diffusion.get_prior(dtype)


def prior_term(diffusion, mean_T, var_T, eps_T):
    """L_T = KL(q(x_T|x_0) || p(x_T)) per example: in closed form where NumPyro registers the KL, else the one
    draw log q(x_T) − log p(x_T) at x_T = mean_T + √var_T · eps_T (unbiased, as the Pyro backend's rule)."""
    from numpyro.distributions.kl import kl_divergence

    d = len(diffusion.event_shape)
    q = dist.Normal(mean_T, jnp.sqrt(var_T)).to_event(d)
    p = _fixed_prior(diffusion, mean_T.dtype)
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        x_T = mean_T + jnp.sqrt(var_T) * eps_T
        return q.log_prob(x_T) - p.log_prob(x_T)


def full_chain_elbo(diffusion, params, x0, noise, *, analytic: bool = False, dropout_key=None,
                    block: int | None = 10, remat: bool = True):
    r"""Per-example ELBO ``[B]`` of the trajectory the guide draws from ``noise`` ``[T x B x ...]``;
    ``dropout_key`` gives the denoiser fresh dropout masks at every step (training mode only).

    The guide has no parameters, so the trajectory does not depend on θ: it is drawn first (``lax.scan``,
    the forward chain or the posterior-order chain), and its T scores, each one denoiser call, are then
    independent: ``lax.map`` evaluates them ``block`` steps per call (``None``: one at a time), each
    block under ``jax.checkpoint`` when ``remat`` (the backward pass recomputes a block's activations
    instead of keeping T of them: measured 2× faster at T = 1000 on a CPU, memory-bound otherwise). The
    numbers are those of the step-by-step programs (tested).

    .. math:: \mathrm{ELBO}(x_0) = \log \frac{p(x_T) \prod_{t=2}^T p_\theta(x_{t-1} \mid x_t)\,
        p_\theta(x_0 \mid x_1)}{\prod_{t=1}^T q(x_t \mid x_{t-1})}

    at the trajectory drawn by the forward chain (``analytic=False``), or, in posterior order (``analytic=True``),

    .. math:: \log p_\theta(x_0 \mid x_1) - \sum_{t=2}^T \mathrm{KL}(q(x_{t-1} \mid x_t, x_0) \,\|\,
        p_\theta(x_{t-1} \mid x_t)) - \mathrm{KL}(q(x_T \mid x_0) \,\|\, p(x_T)).

    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with a NoiseSchedule and a fixed
        prior.
    :param params: the denoiser's weights, a pure dict.
    :param x0: the data ``[B x *event_shape]``.
    :param noise: standard normals ``[T x B x *event_shape]``, one per sampled site in the guide's order.
    :param bool analytic: the posterior-order chain with closed-form KLs.
    :param dropout_key: a JAX key for fresh dropout masks (training mode), or None.
    :param block: steps per ``lax.map`` call (None: one at a time).
    :param bool remat: each block under ``jax.checkpoint``.
    :returns: the ELBO per example ``[B]``, nats.

    Example:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> from ppl_diffusion.numpyro.sampling import params_of
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> params, x0 = params_of(diffusion), jnp.zeros((3, 2))
    >>> from ppl_diffusion.numpyro.chain import full_chain_elbo
    >>> noise = jax.random.normal(jax.random.key(0), (4, 3, 2))
    >>> full_chain_elbo(diffusion, params, x0, noise, analytic=True).shape
    (3,)
    """
    s, T, d = diffusion.schedule, diffusion.T, len(diffusion.event_shape)
    apply = denoiser_apply(diffusion)
    batch = x0.shape[0]
    ts = jnp.arange(1, T + 1)

    def full(t):
        return jnp.full((batch,), t, dtype=jnp.int32)

    def p_step(x_t, t):  # p(x_{t-1} | x_t): mean, log-variance
        key = None if dropout_key is None else jax.random.fold_in(dropout_key, t)
        return diffusion.mean_log_var(apply(params, x_t, full(t), key), x_t, full(t))

    def score(term, n):
        """``term(k)`` for k = 0..n−1, stacked ``[n x B]``."""
        return lax.map(jax.checkpoint(term) if remat else term, jnp.arange(n), batch_size=block)

    if not analytic:
        # Guide: x_t = √α_t x_{t−1} + √β_t ε_t, t = 1..T; log q(x_t | x_{t−1}) per site.
        def forward(x_prev, inputs):
            t, eps = inputs
            mean, var = cf.q_step_mean_variance(s, x_prev, full(t))
            x = mean + jnp.sqrt(var) * eps
            return x, (x, _sum_event(_normal_logpdf(x, mean, var), d))

        x_T, (xs, log_q) = lax.scan(forward, x0, (ts, noise))  # xs[k] = x_{k+1}
        # Model: log p(x_T) + Σ_{t=2..T} log p(x_{t−1} | x_t) + log p(x_0 | x_1).
        log_prior = _fixed_prior(diffusion, x0.dtype).log_prob(x_T)

        def reverse(k):  # k = 0..T−2: t = k + 2, x_t = xs[k + 1], x_{t−1} = xs[k]
            mean, log_var = p_step(xs[k + 1], k + 2)
            return _sum_event(_normal_logpdf(xs[k], mean, jnp.exp(log_var)), d)

        log_p = score(reverse, T - 1)
        log_dec = _decoder(diffusion, p_step, xs[0], full(1)).to_event(d).log_prob(x0)
        return log_prior + log_p.sum(0) + log_dec - log_q.sum(0)

    # Posterior order: x_T ~ q(x_T|x_0), then x_{t−1} ~ q(x_{t−1}|x_t, x_0); each site scored by −KL.
    mean_T, var_T = cf.q_mean_variance(s, x0, full(T))
    x_T = mean_T + jnp.sqrt(var_T) * noise[0]
    kl_T = prior_term(diffusion, mean_T, var_T, noise[0])

    def backward(x_t, inputs):
        t, eps = inputs
        q_mean, q_var, _ = cf.q_posterior_mean_variance(s, x0, x_t, full(t))
        return q_mean + jnp.sqrt(q_var) * eps, x_t

    x_1, xs = lax.scan(backward, x_T, (jnp.arange(T, 1, -1), noise[1:]))  # xs[k] = x_{T−k}, k = 0..T−2

    def kl(k):  # t = T − k: KL(q(x_{t−1}|x_t, x_0) || p(x_{t−1}|x_t)) at x_t = xs[k]
        t = T - k
        q_mean, q_var, _ = cf.q_posterior_mean_variance(s, x0, xs[k], full(t))
        p_mean, p_log_var = p_step(xs[k], t)
        return _sum_event(cf.normal_kl(q_mean, jnp.log(q_var), p_mean, p_log_var), d)

    kls = score(kl, T - 1)
    log_dec = _decoder(diffusion, p_step, x_1, full(1)).to_event(d).log_prob(x0)
    return log_dec - kls.sum(0) - kl_T


def sample_from_noise(diffusion, params, noise, *, decoder_key=None):
    r"""Ancestral samples ``[n x ...]`` from ``noise`` ``[T x n x ...]``: x_T = noise[0], then
    x_{t−1} = μ_θ(x_t, t) + σ_t · noise[T − t + 1] for t = T..2; x_0 is the decoder's mean at x_1, or a
    draw from the decoder when ``decoder_key`` is given (VDM's categorical: its mean over the values, or a draw).

    .. math:: x_{t-1} = \mu_\theta(x_t, t) + \sigma_t\, z_{T-t+1}, \quad t = T..2

    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with a NoiseSchedule.
    :param params: the denoiser's weights, a pure dict.
    :param noise: standard normals ``[T x n x *event_shape]`` (``noise[0]`` is x_T itself).
    :param decoder_key: a JAX key to draw x_0 from the decoder, or None for its mean.
    :returns: x_0 ``[n x *event_shape]``.

    Example:

    >>> import jax
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> from ppl_diffusion.numpyro.chain import sample_from_noise
    >>> from ppl_diffusion.numpyro.sampling import params_of
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> noise = jax.random.normal(jax.random.key(0), (4, 3, 2))  # [T x n x D]: x_T, then the steps' draws
    >>> mean = sample_from_noise(diffusion, params_of(diffusion), noise)
    >>> drawn = sample_from_noise(diffusion, params_of(diffusion), noise, decoder_key=jax.random.key(1))
    >>> mean.shape, drawn.shape, bool((mean != drawn).any())
    ((3, 2), (3, 2), True)
    """
    T = diffusion.T
    apply = denoiser_apply(diffusion)
    n = noise.shape[1]

    def p_step(x_t, t):
        tt = jnp.full((n,), t, dtype=jnp.int32)
        return diffusion.mean_log_var(apply(params, x_t, tt), x_t, tt)

    def step(x_t, inputs):
        t, eps = inputs
        mean, log_var = p_step(x_t, t)
        return mean + jnp.exp(0.5 * log_var) * eps, None

    x_1, _ = lax.scan(step, noise[0], (jnp.arange(T, 1, -1), noise[1:]))
    decoder = _decoder(diffusion, p_step, x_1, jnp.ones((n,), jnp.int32))
    return decoder.mean if decoder_key is None else decoder.sample(decoder_key)


def sample_from_counter(diffusion, params, x_T, seed: int, indices):
    """Ancestral samples ``[n x ...]`` from x_T ``[n x ...]`` with the counter-based noise of
    :mod:`ppl_diffusion.noise` (stream ``SAMPLE``): sample i's step to x_{t−1} takes ``normal(seed, indices[i],
    t − 1)`` and the decoder's draw of x_0 ``normal(seed, indices[i], 0)`` (rounded to the bins of a discretized
    decoder, the inverse CDF of VDM's categorical at its Φ): the numbers of the Pyro backend's
    :func:`ppl_diffusion.sampling.draw_samples`, made on the host one step at a time (``jax.pure_callback``).

    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with a NoiseSchedule.
    :param params: the denoiser's weights, a pure dict.
    :param x_T: the starting points ``[n x *event_shape]``.
    :param int seed: the seed of the counter-based noise.
    :param indices: the examples' indices ``int[n]``.
    :returns: x_0 ``[n x *event_shape]``.

    Example: the PyTorch twin's samples for the same weights and seed (x_T is ``normal(seed, i, T)``).

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion as TorchDiffusion, NoiseSchedule, noise
    >>> from ppl_diffusion.nets import MLPDenoiser as TorchMLP
    >>> from ppl_diffusion.numpyro.sampling import params_of
    >>> from ppl_diffusion.numpyro.train import from_torch
    >>> _ = torch.manual_seed(0)
    >>> twin = TorchDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                       denoiser=TorchMLP(2, width=16, depth=1, emb_dim=8, zero_init=False))
    >>> diffusion = from_torch(twin)
    >>> params = params_of(diffusion)
    >>> from ppl_diffusion.numpyro.chain import sample_from_counter
    >>> from ppl_diffusion.sampling import draw_samples
    >>> x_T = jnp.asarray(noise.normal(0, np.arange(3), 4, (2,), stream=noise.SAMPLE))
    >>> x0 = sample_from_counter(diffusion, params, x_T, 0, jnp.arange(3))
    >>> with torch.no_grad():
    ...     reference = draw_samples(twin, 3, seed=0)
    >>> x0.shape, bool(np.allclose(np.asarray(x0), reference.numpy(), atol=1e-4))
    ((3, 2), True)
    """
    from .. import noise as counter

    T = diffusion.T
    apply = denoiser_apply(diffusion)
    n, shape = x_T.shape[0], x_T.shape[1:]

    def p_step(x_t, t):
        tt = jnp.full((n,), t, dtype=jnp.int32)
        return diffusion.mean_log_var(apply(params, x_t, tt), x_t, tt)

    def step(x_t, t):
        mean, log_var = p_step(x_t, t)
        eps = counter_normal(seed, indices, t - 1, shape, x_t.dtype, counter.SAMPLE)
        return mean + jnp.exp(0.5 * log_var) * eps, None

    x_1, _ = lax.scan(step, x_T, jnp.arange(T, 1, -1))
    decoder = _decoder(diffusion, p_step, x_1, jnp.ones((n,), jnp.int32))
    eps = counter_normal(seed, indices, 0, shape, x_1.dtype, counter.SAMPLE)
    # rounded to the bins (discretized), the inverse CDF at Φ(ε) (VDM's categorical), or loc + scale·ε (Gaussian)
    return decoder.from_normal(eps) if hasattr(decoder, "from_normal") else decoder.loc + decoder.scale * eps


def ancestral_sample(diffusion, params, key, n: int, *, sharding=None):
    r"""``n`` ancestral samples ``[n x ...]`` of the model, the compiled twin of ``diffusion.model(None, n)``:
    x_T ~ p(x_T), x_{t−1} ~ p(x_{t−1}|x_t, θ) for t = T..2 (one key per step, split from ``key``), and x_0
    drawn from the decoder at x_1, as the PyTorch backend's ``sample``. Under ``jax.jit``, ``sharding`` (a
    :class:`~jax.sharding.NamedSharding` of axis 0) splits the n chains over devices; the draws are the same.

    .. math:: x_T \sim p(x_T), \quad x_{t-1} \sim \mathcal{N}(\mu_\theta(x_t, t), \sigma_t^2 I), \quad
        x_0 \sim p_\theta(x_0 \mid x_1)

    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with a NoiseSchedule and a fixed
        prior.
    :param params: the denoiser's weights, a pure dict.
    :param key: a JAX PRNG key.
    :param int n: the number of samples.
    :returns: x_0 ``[n x *event_shape]``.

    Example:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> from ppl_diffusion.numpyro.sampling import params_of
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> params, x0 = params_of(diffusion), jnp.zeros((3, 2))
    >>> from ppl_diffusion.numpyro.chain import ancestral_sample
    >>> ancestral_sample(diffusion, params, jax.random.key(0), 3).shape
    (3, 2)
    """
    T = diffusion.T
    apply = denoiser_apply(diffusion)
    k_T, k_steps, k_dec = jax.random.split(key, 3)
    place = (lambda x: x) if sharding is None else (lambda x: lax.with_sharding_constraint(x, sharding))

    def p_step(x_t, t):
        tt = jnp.full((n,), t, dtype=jnp.int32)
        return diffusion.mean_log_var(apply(params, x_t, tt), x_t, tt)

    def step(x_t, inputs):
        t, k = inputs
        mean, log_var = p_step(x_t, t)
        return place(mean + jnp.exp(0.5 * log_var) * jax.random.normal(k, x_t.shape, x_t.dtype)), None

    x_T = place(_fixed_prior(diffusion).sample(k_T, (n,)))
    x_1, _ = lax.scan(step, x_T, (jnp.arange(T, 1, -1), jax.random.split(k_steps, T - 1)))
    return _decoder(diffusion, p_step, x_1, jnp.ones((n,), jnp.int32)).sample(k_dec)


def counter_normal(seed: int, index, t, shape, dtype, stream: int):
    """Standard normals ``[*index.shape x *shape]`` of :func:`ppl_diffusion.noise.normal` for (seed, index, t,
    stream), inside jitted code: computed on the host (``jax.pure_callback``), so they are the bits the Pyro
    backend uses. ``index`` ``[B]`` int array; ``t`` a scalar int (traced); under ``vmap`` (``lax.map`` with
    ``batch_size``) one host call serves the whole block of steps.

    :param int seed: the seed.
    :param index: the examples' indices ``int[B]``.
    :param t: the step, a scalar int.
    :param shape: the event shape.
    :param dtype: the result's dtype.
    :param int stream: a stream of :mod:`ppl_diffusion.noise` (e.g. ``noise.XT``).
    :returns: ``[B x *shape]`` standard normals.

    Example:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ppl_diffusion import noise
    >>> from ppl_diffusion.numpyro.chain import counter_normal
    >>> eps = jax.jit(lambda t: counter_normal(0, jnp.arange(3), t, (2,), jnp.float32, noise.XT))(5)
    >>> bool(np.array_equal(np.asarray(eps), noise.normal(0, np.arange(3), 5, (2,), stream=noise.XT)))
    True
    """
    import numpy as np

    from .. import noise

    np_dtype = np.float64 if jnp.dtype(dtype) == jnp.float64 else np.float32

    def host(index, t):  # index [1 x B] or [B], t [c x 1] or [1]: broadcast to the rows
        return noise.normal(seed, np.asarray(index), np.asarray(t), tuple(shape), stream=stream, dtype=np_dtype)

    out = jax.ShapeDtypeStruct(tuple(index.shape) + tuple(shape), np_dtype)
    eps = jax.pure_callback(host, out, index, jnp.reshape(t, (1,)), vmap_method="expand_dims")
    return eps.astype(dtype)


def variational_bound(diffusion, params, x0, noise=None, *, key=None, batch_size: int | None = None,
                      seed: int | None = None, indices=None):
    r"""Every term of the bound, L_0 … L_T per example ``[B x (T + 1)]`` in nats, as the Pyro backend's
    :func:`~ppl_diffusion.infer.bound.variational_bound`: for step t, x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε_t and L_{t−1} is
    the closed-form KL (t > 1) or the decoder's −log p(x_0|x_1) (t = 1); L_T is the prior's KL. ``lax.map``
    runs the steps, ``batch_size`` of them per denoiser call. The noise, one of:

    - ``noise`` ``[T x B x ...]``: ε_t is ``noise[t − 1]`` (and a prior without closed-form KL reuses
      ``noise[-1]``);
    - ``key``: ε_t drawn from ``fold_in(key, t)`` (no T-fold copy of the batch in memory);
    - ``seed`` (a Python int) with ``indices`` ``[B]`` (default 0..B − 1): the counter-based noise of
      :mod:`ppl_diffusion.noise`, computed on the host step by step, the same numbers as the Pyro backend's
      ``variational_bound(..., seed=seed, indices=indices)`` (stream ``XT`` at (index, t), the prior's draw
      ``PRIOR`` at (index, 0)).

    .. math:: L_0 = -\log p_\theta(x_0 \mid x_1), \quad
        L_{t-1} = \mathrm{KL}(q(x_{t-1} \mid x_t, x_0) \,\|\, p_\theta(x_{t-1} \mid x_t)), \quad
        L_T = \mathrm{KL}(q(x_T \mid x_0) \,\|\, p(x_T))

    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with a NoiseSchedule and a fixed
        prior.
    :param params: the denoiser's weights, a pure dict.
    :param x0: the data ``[B x *event_shape]``.
    :param batch_size: steps per denoiser call (None: one at a time).
    :returns: ``[B x (T + 1)]`` nats; the row sum is −ELBO per example.

    Example (the PyTorch twin's terms for the same weights and seed):

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion as TorchDiffusion, NoiseSchedule
    >>> from ppl_diffusion.infer import variational_bound as torch_bound
    >>> from ppl_diffusion.nets import MLPDenoiser as TorchMLP
    >>> from ppl_diffusion.numpyro.chain import variational_bound
    >>> from ppl_diffusion.numpyro.sampling import params_of
    >>> from ppl_diffusion.numpyro.train import from_torch
    >>> _ = torch.manual_seed(0)
    >>> twin = TorchDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                       denoiser=TorchMLP(2, width=16, depth=1, emb_dim=8, zero_init=False))
    >>> diffusion = from_torch(twin)
    >>> x0 = np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(3, 2)
    >>> terms = variational_bound(diffusion, params_of(diffusion), jnp.asarray(x0), seed=0)
    >>> with torch.no_grad():
    ...     reference = torch_bound(twin, torch.from_numpy(x0), seed=0).terms
    >>> terms.shape, bool(np.allclose(np.asarray(terms), reference.numpy(), rtol=1e-4, atol=1e-4))
    ((3, 5), True)
    """
    if sum(a is not None for a in (noise, key, seed)) != 1:
        raise ValueError("pass exactly one of noise [T x B x ...], a PRNG key, or a seed (counter-based noise)")
    from .. import noise as counter

    s, T, d = diffusion.schedule, diffusion.T, len(diffusion.event_shape)
    apply = denoiser_apply(diffusion)
    batch = x0.shape[0]
    if seed is not None:
        indices = jnp.arange(batch, dtype=jnp.int32) if indices is None else jnp.asarray(indices, jnp.int32)
        if indices.shape != (batch,):
            raise ValueError(f"indices must be {batch} integers >= 0, one per example; got shape {indices.shape}")

    def term(inputs):
        t, eps = inputs
        if key is not None:
            eps = jax.random.normal(jax.random.fold_in(key, t), x0.shape, x0.dtype)
        elif seed is not None:
            eps = counter_normal(seed, indices, t, x0.shape[1:], x0.dtype, counter.XT)
        tt = jnp.full((batch,), t, dtype=jnp.int32)
        x_t = cf.q_sample(s, x0, tt, eps)
        p_mean, p_log_var = diffusion.mean_log_var(apply(params, x_t, tt), x_t, tt)
        q_mean, _, q_log_var = cf.q_posterior_mean_variance(s, x0, x_t, tt)
        kl = _sum_event(cf.normal_kl(q_mean, q_log_var, p_mean, p_log_var), d)
        nll = -diffusion.decoder_at(None, x_t, tt, p_mean, p_log_var, s).to_event(d).log_prob(x0)
        return jnp.where(t == 1, nll, kl)

    steps = lax.map(term, (jnp.arange(1, T + 1), jnp.zeros((T,), x0.dtype) if noise is None else noise),
                    batch_size=batch_size)  # [T x B]; without noise, a placeholder scalar per step
    mean_T, var_T = cf.q_mean_variance(s, x0, jnp.full((batch,), T, dtype=jnp.int32))
    if key is not None:
        eps_T = jax.random.normal(jax.random.fold_in(key, T + 1), x0.shape, x0.dtype)
    elif seed is not None:
        eps_T = counter_normal(seed, indices, 0, x0.shape[1:], x0.dtype, counter.PRIOR)
    else:
        eps_T = noise[-1]
    prior = prior_term(diffusion, mean_T, var_T, eps_T)
    return jnp.concatenate([steps.T, prior[:, None]], axis=1)


def step_terms(diffusion, params, x0, t, eps, eps_T):
    """The bound's term of step ``t[r]`` for row r, L_{t−1} of ``x0[r]`` (``[R x ...]``), and the prior term L_T of
    each row's example, ``([R], [R])`` nats: rows are any mix of (example, step) pairs, as the Pyro backend's
    :func:`~ppl_diffusion.infer.bound.step_terms`. ``eps`` ``[R x ...]`` is ε of x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε and
    ``eps_T`` the prior's draw (used by a prior without closed-form KL); pass ``noise.normal(seed, index, t, XT)``
    and ``(seed, index, 0, PRIOR)`` for the full bound's numbers.

    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with a NoiseSchedule and a fixed
        prior.
    :param params: the denoiser's weights, a pure dict.
    :param x0: the rows' data ``[R x *event_shape]``.
    :param t: the rows' steps ``int[R]`` in 1..T.
    :returns: ``(L_{t−1} [R], L_T [R])`` nats.

    Example: rows (example 0, t = 1), (2, 3), (2, 4) are the full bound's terms at those places.

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion as TorchDiffusion, NoiseSchedule, noise
    >>> from ppl_diffusion.nets import MLPDenoiser as TorchMLP
    >>> from ppl_diffusion.numpyro.sampling import params_of
    >>> from ppl_diffusion.numpyro.train import from_torch
    >>> _ = torch.manual_seed(0)
    >>> twin = TorchDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                       denoiser=TorchMLP(2, width=16, depth=1, emb_dim=8, zero_init=False))
    >>> diffusion = from_torch(twin)
    >>> params = params_of(diffusion)
    >>> from ppl_diffusion.numpyro.chain import step_terms, variational_bound
    >>> x0 = jnp.asarray(np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(3, 2))
    >>> terms = variational_bound(diffusion, params, x0, seed=0)  # [3 x (T + 1)]
    >>> example, t = np.array([0, 2, 2]), np.array([1, 3, 4])
    >>> eps = jnp.asarray(noise.normal(0, example, t, (2,), stream=noise.XT))
    >>> eps_T = jnp.asarray(noise.normal(0, example, 0, (2,), stream=noise.PRIOR))
    >>> L, L_T = step_terms(diffusion, params, x0[example], t, eps, eps_T)
    >>> bool(np.allclose(L, terms[example, t - 1], rtol=1e-5)), bool(np.allclose(L_T, terms[example, 4], rtol=1e-5))
    (True, True)
    """
    s, T, d = diffusion.schedule, diffusion.T, len(diffusion.event_shape)
    t = jnp.asarray(t, jnp.int32)
    x_t = cf.q_sample(s, x0, t, eps)
    p_mean, p_log_var = diffusion.mean_log_var(denoiser_apply(diffusion)(params, x_t, t), x_t, t)
    q_mean, _, q_log_var = cf.q_posterior_mean_variance(s, x0, x_t, t)
    kl = _sum_event(cf.normal_kl(q_mean, q_log_var, p_mean, p_log_var), d)
    nll = -diffusion.decoder_at(None, x_t, t, p_mean, p_log_var, s).to_event(d).log_prob(x0)
    mean_T, var_T = cf.q_mean_variance(s, x0, jnp.full(t.shape, T, dtype=jnp.int32))
    return jnp.where(t == 1, nll, kl), prior_term(diffusion, mean_T, var_T, eps_T)


__all__ = ["ancestral_sample", "counter_normal", "denoiser_apply", "full_chain_elbo", "sample_from_counter",
           "sample_from_noise", "step_terms", "variational_bound"]
