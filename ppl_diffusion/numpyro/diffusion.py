"""GaussianDiffusion for NumPyro: the same programs, site names and plates as the Pyro backend.

=====================  ============================================================================
``model(x0)``          p(x_T) ∏ p(x_{t−1}|x_t, θ) · p(x_0|x_1, θ); sites ``x_T`` … ``x_1`` (``f"x_{t}"``),
                       ``x_0`` observed; plate ``"data"``. The denoiser is registered with
                       ``numpyro.contrib.module.nnx_module("denoiser", ...)``.
``guide(x0)``          the forward chain ∏ q(x_t|x_{t−1}); no parameters.
``posterior_guide``    q(x_T|x_0) ∏ q(x_{t−1}|x_t, x_0), for ``TraceMeanField_ELBO``.
``step_model``,        the one-step pair for per-example steps t (sites ``x_T``, ``x_t``, ``x_prev``,
``step_guide``         ``x_0``), scored by :func:`ppl_diffusion.numpyro.infer.per_example_elbo`.
=====================  ============================================================================

The full-chain programs are written with a Python loop, site by site, as the reference the PyTorch
backend is checked against; compiled estimators of the full chain with ``lax.scan`` are the next step
of issue 6.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.contrib.module import nnx_module

from ..diffusion import LEARNED_VARIANCES as _TORCH_LEARNED
from ..diffusion import VARIANCES
from ..priors import check_event_shape
from ..schedule import NoiseSchedule
from . import closed_forms as cf
from .distributions import make_decoder


# The learned variances of the PyTorch backend (ppl_diffusion.diffusion.LEARNED_VARIANCES), on JAX arrays.
LEARNED_VARIANCES = {
    "learned": lambda v: jax.nn.sigmoid(2.0 * v),
    "learned-range": lambda v: (v + 1.0) / 2.0,
}
assert set(LEARNED_VARIANCES) == set(_TORCH_LEARNED)


class GaussianDiffusion:
    """DDPM as a NumPyro latent-variable model (see the module table).

    :param NoiseSchedule schedule: the float64 schedule shared with the PyTorch backend.
    :param denoiser: a Flax NNX module ``denoiser(x_t, t) -> ε̂`` (e.g. :class:`~ppl_diffusion.numpyro.MLPDenoiser`).
    :param tuple event_shape: shape of one example.
    :param prior: p(x_T), a NumPyro distribution with event shape ``event_shape``, or a learned
        :class:`ppl_diffusion.numpyro.priors.Prior` (default N(0, I)).
    :param decoder: ``"gaussian"`` or ``"discretized"``.
    :param str variance: a name in :data:`ppl_diffusion.diffusion.VARIANCES` (``"beta"``, ``"posterior"``,
        ``"fixed-large"``) or in :data:`LEARNED_VARIANCES` (``"learned"``, ``"learned-range"``).
    """

    backend = "numpyro"

    def __init__(self, *, schedule: NoiseSchedule, denoiser, event_shape, prior=None, decoder="gaussian",
                 variance: str = "beta") -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if variance not in VARIANCES and variance not in LEARNED_VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose one of {sorted([*VARIANCES, *LEARNED_VARIANCES])}")
        self.schedule = schedule
        self.denoiser = denoiser
        self.event_shape = check_event_shape(event_shape, allow_empty=True)
        if prior is not None:
            from .priors import check_prior

            handlers.seed(check_prior, rng_seed=0)(prior, self.event_shape)
        self.prior = prior
        self.decoder = make_decoder(decoder)
        self.variance = variance
        self.p_log_variance = None if variance in LEARNED_VARIANCES else VARIANCES[variance](schedule)

    def eval(self) -> "GaussianDiffusion":
        """The denoiser in evaluation mode (no dropout), as ``torch.nn.Module.eval``; returns self."""
        self.denoiser.eval()
        return self

    def train(self, mode: bool = True) -> "GaussianDiffusion":
        """The denoiser in training mode (dropout on) or, with ``mode=False``, evaluation mode; returns self."""
        self.denoiser.train() if mode else self.denoiser.eval()
        return self

    @property
    def T(self) -> int:
        return self.schedule.T

    @property
    def num_dims(self) -> int:
        return int(np.prod(self.event_shape))

    def _d(self) -> int:
        return len(self.event_shape)

    def _batch_shape(self, x):
        return x.shape[:x.ndim - self._d()]

    def get_prior(self, dtype=jnp.float32):
        """p(x_T): the given distribution, a learned prior's (its ``numpyro.param`` sites declared), or N(0, I)."""
        from .priors import Prior

        if isinstance(self.prior, Prior):
            return self.prior()
        if self.prior is not None:
            return self.prior
        return dist.Normal(jnp.zeros(self.event_shape, dtype), 1.0).to_event(self._d())

    def _net(self):
        return nnx_module("denoiser", self.denoiser)

    def _call(self, net, x_t, t):
        batch_shape = self._batch_shape(x_t)
        if len(batch_shape) > 1:  # vectorized particles: one flat call
            t = jnp.broadcast_to(t, batch_shape).reshape(-1)
            out = net(x_t.reshape((-1,) + self.event_shape), t)
            return out.reshape(batch_shape + out.shape[1:])
        return net(x_t, t)

    def split_output(self, out, x_t):
        """(ε̂, v) from the denoiser's output, checked to have the shape of ``x_t`` (twice its channels with a
        learned variance); v is None unless the variance is learned. Every use of the denoiser's output passes
        here: a wrong shape is a one-line ``ValueError`` when the program is traced (JAX would broadcast it)."""
        learned = self.variance in LEARNED_VARIANCES
        axis = len(self._batch_shape(x_t))
        want = x_t.shape if not learned else (*x_t.shape[:axis], 2 * x_t.shape[axis], *x_t.shape[axis + 1:])
        if tuple(out.shape) != tuple(want):
            fix = ("it must return ε̂ and v stacked on the channel axis (learn_sigma=True)" if learned else
                   f"it must return ε̂ of the shape of x_t, {self.num_dims} values per example of event shape "
                   f"{self.event_shape} (e.g. an MLP's last layer nnx.Linear(width, {self.num_dims}), reshaped)")
            raise ValueError(f"denoiser returned {tuple(out.shape)} for x_t of shape {tuple(x_t.shape)}; {fix}")
        if not learned:
            return out, None
        eps, v = jnp.split(out, 2, axis=axis)
        return eps, v

    def mean_log_var(self, out, x_t, t):
        """Mean and log-variance of p(x_{t−1}|x_t, θ) from the denoiser's output ``out`` at (x_t, t); with a learned
        variance log σ² = f log β_t + (1 − f) log β̃_t, f = sigmoid(2 v) or (v + 1)/2 (``"learned-range"``), as the Pyro
        backend."""
        eps, v = self.split_output(out, x_t)
        mean = cf.p_mean_from_eps(self.schedule, x_t, t, eps)
        if v is None:
            return mean, jnp.broadcast_to(cf.extract(self.p_log_variance, t, x_t), x_t.shape)
        frac = LEARNED_VARIANCES[self.variance](v)
        log_beta = cf.extract(np.log(self.schedule.betas), t, v)
        log_post = cf.extract(self.schedule.posterior_log_variance_clipped, t, v)
        return mean, frac * log_beta + (1.0 - frac) * log_post

    def predict_eps(self, net, x_t, t):
        return self.split_output(self._call(net, x_t, t), x_t)[0]

    def p_mean_variance(self, net, x_t, t):
        """Mean and log-variance of p(x_{t−1}|x_t, θ) (at t = 1, the decoder's)."""
        return self.mean_log_var(self._call(net, x_t, t), x_t, t)

    def _full_t(self, t: int, x):
        return jnp.full(self._batch_shape(x), t, dtype=jnp.int32)

    # ------------------------------------------------------------------ full chain
    def model(self, x0=None, n: int | None = None):
        net = self._net()
        batch = x0.shape[0] if x0 is not None else n
        dtype = x0.dtype if x0 is not None else jnp.float32
        d, T = self._d(), self.T
        with numpyro.plate("data", batch):
            x = numpyro.sample(f"x_{T}", self.get_prior(dtype))
            for t in range(T, 1, -1):
                mean, log_var = self.p_mean_variance(net, x, self._full_t(t, x))
                x = numpyro.sample(f"x_{t - 1}", dist.Normal(mean, jnp.exp(0.5 * log_var)).to_event(d))
            mean, log_var = self.p_mean_variance(net, x, self._full_t(1, x))
            return numpyro.sample("x_0", self.decoder(mean, log_var).to_event(d), obs=x0)

    def guide(self, x0, n: int | None = None):
        d, x = self._d(), x0
        with numpyro.plate("data", x0.shape[0]):
            for t in range(1, self.T + 1):
                mean, var = cf.q_step_mean_variance(self.schedule, x, self._full_t(t, x))
                x = numpyro.sample(f"x_{t}", dist.Normal(mean, jnp.sqrt(var)).to_event(d))
        return x

    def posterior_guide(self, x0, n: int | None = None):
        d, T = self._d(), self.T
        with numpyro.plate("data", x0.shape[0]):
            mean, var = cf.q_mean_variance(self.schedule, x0, self._full_t(T, x0))
            x = numpyro.sample(f"x_{T}", dist.Normal(mean, jnp.sqrt(var)).to_event(d))
            for t in range(T, 1, -1):
                mean, var, _ = cf.q_posterior_mean_variance(self.schedule, x0, x, self._full_t(t, x))
                x = numpyro.sample(f"x_{t - 1}", dist.Normal(mean, jnp.sqrt(var)).to_event(d))
        return x

    # ------------------------------------------------------------------ one step per example
    def _step_sites(self, x0, t, weight, is_model: bool, net=None):
        d, T = self._d(), self.T
        with numpyro.plate("data", x0.shape[0]):
            mean_T, var_T = cf.q_mean_variance(self.schedule, x0, self._full_t(T, x0))
            q_T = dist.Normal(mean_T, jnp.sqrt(var_T)).to_event(d)
            numpyro.sample("x_T", self.get_prior(x0.dtype) if is_model else q_T)
            with handlers.scale(scale=weight) if weight is not None else contextlib.nullcontext():
                mean, var = cf.q_mean_variance(self.schedule, x0, t)
                x_t = numpyro.sample("x_t", dist.Normal(mean, jnp.sqrt(var)).to_event(d))
                if is_model:
                    p_mean, p_log_var = self.p_mean_variance(net, x_t, t)
                    with handlers.mask(mask=t > 1):
                        numpyro.sample("x_prev", dist.Normal(p_mean, jnp.exp(0.5 * p_log_var)).to_event(d))
                    with handlers.mask(mask=t == 1):
                        numpyro.sample("x_0", self.decoder(p_mean, p_log_var).to_event(d), obs=x0)
                else:
                    q_mean, _, q_log_var = cf.q_posterior_mean_variance(self.schedule, x0, x_t, t)
                    with handlers.mask(mask=t > 1):
                        numpyro.sample("x_prev", dist.Normal(q_mean, jnp.exp(0.5 * q_log_var)).to_event(d))

    def step_model(self, x0, t, weight=None):
        """One reverse step per example at steps ``t`` (``int[B]`` in 1..T); see the PyTorch backend."""
        self._step_sites(x0, t, weight, True, self._net())

    def step_guide(self, x0, t, weight=None):
        self._step_sites(x0, t, weight, False)

