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

A γ schedule (:mod:`ppl_diffusion.numpyro.gamma`) in place of the NoiseSchedule makes the forward process learnable,
as on the PyTorch side: ``T >= 2`` steps at (t − 1)/(T − 1) or ``T = 0`` (``continuous_model`` /
``continuous_guide``), the parameters registered as ``numpyro.param("schedule$params")`` in the model and the guides,
the net conditioned on the step (``time_input="step"``) or on γ rescaled (``"gamma"``).
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
from ..gamma import GAMMA_LABEL_SCALE, check_forward_process
from ..nets.remat import check_checkpointing
from ..schedule import NoiseSchedule
from . import closed_forms as cf
from .distributions import make_decoder, uses_denoiser
from .gamma import GammaChain, GammaSchedule, param_module


def checkpointed_nnx_module(name: str, module):
    """``numpyro.contrib.module.nnx_module(name, module)`` (the same ``numpyro.param("<name>$params")`` and mutable
    ``"<name>$state"`` sites, the same values) whose every call runs under ``jax.checkpoint``: the backward pass
    recomputes the call's activations instead of keeping them. The call is a pure function of (parameters, mutable
    state, inputs), its new mutable state (dropout's key counts) returned and carried as ``nnx_module`` does, so the
    recomputation draws the same masks."""
    from flax import nnx
    from numpyro.primitives import mutable as numpyro_mutable

    graph_def, params_state, other_state = nnx.split(module, nnx.Param, nnx.Not(nnx.Param))
    params = numpyro.param(name + "$params") if params_state else None
    if params is None:
        params = numpyro.param(name + "$params", nnx.to_pure_dict(params_state))
    other = nnx.to_pure_dict(other_state)
    holder = numpyro_mutable(name + "$state", {"state": other}) if other else None

    @jax.checkpoint
    def pure(params, state, *args):
        p = jax.tree.map(lambda v: v, params_state)
        if params:
            nnx.replace_by_pure_dict(p, params)
        o = jax.tree.map(lambda v: v, other_state)
        if state is not None:
            nnx.replace_by_pure_dict(o, state)
        net = nnx.merge(graph_def, p, o, copy=True)
        out = net(*args)
        new = nnx.to_pure_dict(nnx.split(net, nnx.Param, nnx.Not(nnx.Param))[2]) if state is not None else None
        return out, new

    def call(*args):
        out, new = pure(params, holder["state"] if holder else None, *args)
        if holder:
            holder["state"] = jax.lax.stop_gradient(new)
        return out

    return call


#: The learned variances of the PyTorch backend (``ppl_diffusion.diffusion.LEARNED_VARIANCES``) on JAX arrays,
#: the fraction f of log β_t in log σ_t² = f log β_t + (1 − f) log β̃_t from the net's output v.
LEARNED_VARIANCES = {
    "learned": lambda v: jax.nn.sigmoid(2.0 * v),
    "learned-range": lambda v: (v + 1.0) / 2.0,
}
assert set(LEARNED_VARIANCES) == set(_TORCH_LEARNED)


class GaussianDiffusion:
    r"""DDPM as a NumPyro latent-variable model (see the module table), the twin of
    :class:`ppl_diffusion.diffusion.GaussianDiffusion` (the same sites, plates and numbers).

    .. math:: p_\theta(x_{0:T}) = p(x_T) \prod_{t=2}^{T} p_\theta(x_{t-1} \mid x_t)\; p_\theta(x_0 \mid x_1),
        \quad q(x_{1:T} \mid x_0) = \prod_{t=1}^{T} q(x_t \mid x_{t-1})

    :param schedule: the float64 NoiseSchedule shared with the PyTorch backend, or a γ schedule
        (:mod:`ppl_diffusion.numpyro.gamma`), which needs ``T``.
    :param denoiser: a Flax NNX module ``denoiser(x_t, t) -> ε̂`` (e.g.
        :class:`~ppl_diffusion.numpyro.nets.MLPDenoiser`).
    :param tuple event_shape: shape of one example.
    :param prior: p(x_T), a NumPyro distribution with event shape ``event_shape``, or a learned
        :class:`ppl_diffusion.numpyro.priors.Prior` (default N(0, I)).
    :param decoder: ``"gaussian"``, ``"discretized"`` or ``"vdm-categorical"`` (from x_1/α_1, no denoiser call).
    :param str variance: a name in ``ppl_diffusion.diffusion.VARIANCES`` (``"beta"``, ``"posterior"``,
        ``"fixed-large"``) or in :data:`LEARNED_VARIANCES` (``"learned"``, ``"learned-range"``).
    :param int T: with a γ schedule, T >= 2 steps or 0 (continuous time).
    :param str time_input: ``"step"`` or ``"gamma"`` (default for a γ schedule), as the PyTorch backend's.
    :param tuple gamma_range: (γ_lo, γ_hi) of the ``"gamma"`` label (default: the schedule's endpoints now).
    :param str checkpoint_activations: ``"none"``, ``"steps"`` or ``"blocks"``, as the PyTorch backend's: with
        ``"steps"`` the named-site :meth:`model` calls the net under ``jax.checkpoint`` at every step (its dropout
        state carried through); ``"blocks"`` also sets a U-Net's ``use_checkpoint`` (``nnx.remat`` per block). The
        compiled chain (:func:`~ppl_diffusion.numpyro.chain.full_chain_elbo`) recomputes its steps in any case:
        ``jax.checkpoint`` over each block of steps, chosen for speed.

    Example (the model's sites, and the ELBO of one trajectory with NumPyro's own ``Trace_ELBO``):

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from numpyro import handlers
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> x0 = jnp.zeros((3, 2))
    >>> trace = handlers.trace(handlers.seed(diffusion.model, 0)).get_trace(x0)
    >>> [name for name, site in trace.items() if site["type"] == "sample"]
    ['x_4', 'x_3', 'x_2', 'x_1', 'x_0']
    >>> trace["x_0"]["fn"].batch_shape, trace["x_0"]["fn"].event_shape
    ((3,), (2,))
    """

    backend = "numpyro"

    def __init__(self, *, schedule, denoiser, event_shape, prior=None, decoder="gaussian",
                 variance: str = "beta", T: int | None = None, time_input: str | None = None,
                 gamma_range=None, checkpoint_activations: str = "none") -> None:
        if not isinstance(schedule, (NoiseSchedule, GammaSchedule)):
            raise TypeError(f"schedule must be a NoiseSchedule or a γ schedule (ppl_diffusion.numpyro.gamma), got "
                            f"{type(schedule).__name__}")
        if variance not in VARIANCES and variance not in LEARNED_VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose one of {sorted([*VARIANCES, *LEARNED_VARIANCES])}")
        ends = None if isinstance(schedule, NoiseSchedule) else tuple(float(g) for g in schedule.endpoints())
        self._T, self.time_input, self.gamma_range = check_forward_process(schedule, T, time_input, gamma_range,
                                                                           variance, endpoints=ends)
        self.schedule = schedule
        self.denoiser = denoiser
        self.event_shape = check_event_shape(event_shape, allow_empty=True)
        if prior is not None:
            from .priors import check_prior

            handlers.seed(check_prior, rng_seed=0)(prior, self.event_shape)
        self.prior = prior
        self.decoder = make_decoder(decoder)
        self.variance = variance
        self.p_log_variance = (None if variance in LEARNED_VARIANCES or self.gamma_schedule
                               else VARIANCES[variance](schedule))
        self.checkpoint_activations = checkpoint_activations

    @property
    def checkpoint_activations(self) -> str:
        """``"none"``, ``"steps"`` or ``"blocks"`` (see the class docstring and :mod:`ppl_diffusion.nets.remat`)."""
        return self._checkpoint_activations

    @checkpoint_activations.setter
    def checkpoint_activations(self, level: str) -> None:
        check_checkpointing(level)
        if level == "blocks" and not isinstance(getattr(self.denoiser, "use_checkpoint", None), bool):
            raise ValueError(f"checkpoint_activations='blocks' recomputes the blocks of a U-Net (its use_checkpoint); "
                             f"this denoiser, {type(self.denoiser).__name__}, has none: use 'steps' (each step's whole "
                             "call, any net)")
        if isinstance(getattr(self.denoiser, "use_checkpoint", None), bool):
            self.denoiser.use_checkpoint = level == "blocks"
        self._checkpoint_activations = level

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
        """The number of steps T, or 0 in continuous time."""
        return self._T

    @property
    def gamma_schedule(self) -> bool:
        """Whether the forward process is a γ schedule (:mod:`ppl_diffusion.numpyro.gamma`)."""
        return isinstance(self.schedule, GammaSchedule)

    @property
    def continuous(self) -> bool:
        """Whether the model is in continuous time (T = 0)."""
        return self._T == 0

    def with_steps(self, T: int) -> "GaussianDiffusion":
        """The same model (γ schedule, denoiser, prior shared) with ``T`` steps, or in continuous time for T = 0.

        :param int T: T >= 2 steps, or 0.
        :raises ValueError: for a NoiseSchedule model, whose chain has its own steps.

        Example:

        >>> from ppl_diffusion.numpyro import GaussianDiffusion, LinearGamma, MLPDenoiser
        >>> net = MLPDenoiser(2, width=16, depth=1, emb_dim=8)
        >>> diffusion = GaussianDiffusion(schedule=LinearGamma(), denoiser=net, event_shape=(2,), T=10)
        >>> diffusion.with_steps(0).continuous, diffusion.with_steps(5).T
        (True, 5)
        """
        if not self.gamma_schedule:
            raise ValueError("with_steps re-discretises a γ schedule; a NoiseSchedule's chain has its own steps")
        return GaussianDiffusion(schedule=self.schedule, denoiser=self.denoiser, event_shape=self.event_shape,
                                 prior=self.prior, decoder=self.decoder, variance=self.variance, T=T,
                                 time_input=self.time_input, gamma_range=self.gamma_range,
                                 checkpoint_activations=self.checkpoint_activations)

    def _sched(self):
        """The γ schedule with its parameters registered (``numpyro.param("schedule$params")``), or the
        NoiseSchedule."""
        return param_module("schedule", self.schedule) if self.gamma_schedule else self.schedule

    def _need_chain(self) -> None:
        if self._T == 0:
            raise ValueError("this model is in continuous time (T = 0) and has no chain of steps: score it with "
                             "ppl_diffusion.numpyro.ContinuousTimeELBO (continuous_model / continuous_guide), or "
                             "take a chain with diffusion.with_steps(T)")

    def coefficients(self, schedule=None):
        """The NoiseSchedule, or the :class:`~ppl_diffusion.numpyro.gamma.GammaChain` of ``schedule`` (default: the
        registered γ schedule, ``_sched``) at the T steps."""
        if not self.gamma_schedule:
            return self.schedule
        self._need_chain()
        return GammaChain.of(self._sched() if schedule is None else schedule, self._T)

    def log_variance_table(self, coef):
        """log σ_t² of a fixed variance, t = 1..T (NumPy for a NoiseSchedule, JAX for a γ chain)."""
        return self.p_log_variance if self.p_log_variance is not None else VARIANCES[self.variance](coef)

    def time_label(self, t, coef):
        """The net's label at steps t: t, or 1000 (γ_t − γ_lo)/(γ_hi − γ_lo) (``time_input="gamma"``)."""
        return t if self.time_input == "step" else self.gamma_label(coef.gamma[jnp.asarray(t) - 1])

    def gamma_label(self, gamma):
        """The net's label 1000 (γ − γ_lo)/(γ_hi − γ_lo) of log-SNR ``gamma`` (``time_input="gamma"``)."""
        lo, hi = self.gamma_range
        return (gamma - lo) * (GAMMA_LABEL_SCALE / (hi - lo))

    @property
    def num_dims(self) -> int:
        """D, the number of dimensions of one example."""
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

    def _net(self, checkpoint: bool = False):
        """The denoiser registered (``nnx_module("denoiser", ...)``); with ``checkpoint``, each call under
        ``jax.checkpoint`` (:func:`checkpointed_nnx_module`)."""
        return (checkpointed_nnx_module if checkpoint else nnx_module)("denoiser", self.denoiser)

    def _call(self, net, x_t, t, coef=None, label=None):
        """The net at (x_t, its label): :meth:`time_label` of the steps ``t`` (``coef`` the chain's coefficients, when
        the net is conditioned on γ), or ``label`` itself."""
        if label is not None:
            t = label.astype(x_t.dtype)
        elif self.time_input != "step":
            t = self.time_label(t, self.coefficients() if coef is None else coef).astype(x_t.dtype)
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

    def mean_log_var(self, out, x_t, t, coef=None):
        """Mean and log-variance of p(x_{t−1}|x_t, θ) from the denoiser's output ``out`` at (x_t, t); with a learned
        variance log σ² = f log β_t + (1 − f) log β̃_t, f = sigmoid(2 v) or (v + 1)/2 (``"learned-range"``), as the Pyro
        backend. ``coef``: the chain's coefficients (default: the NoiseSchedule, or the registered γ chain)."""
        coef = self.coefficients() if coef is None else coef
        eps, v = self.split_output(out, x_t)
        mean = cf.p_mean_from_eps(coef, x_t, t, eps)
        if v is None:
            return mean, jnp.broadcast_to(cf.extract(self.log_variance_table(coef), t, x_t), x_t.shape)
        frac = LEARNED_VARIANCES[self.variance](v)
        log_beta = cf.extract(coef.log_betas, t, v)
        log_post = cf.extract(coef.posterior_log_variance_clipped, t, v)
        return mean, frac * log_beta + (1.0 - frac) * log_post

    def predict_eps(self, net, x_t, t, coef=None):
        """ε̂_θ(x_t, t) ``[B x ...]``: the ε half of the output of ``net`` (a callable ``net(x_t, label)``) at
        ``(x_t, t)``, the label as :meth:`time_label`."""
        return self.split_output(self._call(net, x_t, t, coef), x_t)[0]

    def p_mean_variance(self, net, x_t, t, coef=None):
        """Mean and log-variance of p(x_{t−1}|x_t, θ) (at t = 1, the decoder's)."""
        coef = self.coefficients() if coef is None else coef
        return self.mean_log_var(self._call(net, x_t, t, coef), x_t, t, coef)

    def decoder_at(self, net, x_t, t, mean=None, log_var=None, coef=None):
        """p(x_0|x_t) of the decoder at the latent ``x_t`` of step ``t`` (1: the decoder's; other steps are masked out
        by the callers), as the PyTorch backend's: ``decoder(mean, log_var)`` of the reverse step (computed with
        ``net`` when not given), or ``decoder(x_t/α_t, log(σ_t²/α_t²))`` without the net for ``"vdm-categorical"``."""
        coef = self.coefficients() if coef is None else coef
        if not uses_denoiser(self.decoder):
            return self.decoder(*cf.scaled_latent(coef, x_t, t))
        if mean is None:
            mean, log_var = self.p_mean_variance(net, x_t, t, coef)
        return self.decoder(mean, log_var)

    def _full_t(self, t: int, x):
        return jnp.full(self._batch_shape(x), t, dtype=jnp.int32)

    # ------------------------------------------------------------------ full chain
    def model(self, x0=None, n: int | None = None):
        r"""The generative model p_θ(x_{0:T}), sites ``x_T`` … ``x_1`` (``f"x_{t}"``) and ``x_0`` (observed at
        ``x0``) in the plate ``"data"``, the denoiser registered as ``nnx_module("denoiser", ...)``.

        .. math:: x_T \sim p(x_T), \quad x_{t-1} \sim \mathcal{N}(\mu_\theta(x_t, t), \sigma_t^2 I),
            \quad x_0 \sim p_\theta(x_0 \mid x_1)

        :param x0: the data ``[B x *event_shape]``, or None to sample.
        :param int n: the number of examples to sample when ``x0`` is None.
        :returns: x_0 ``[B x *event_shape]`` (the observed value, or a draw).

        Example (ancestral sampling through the named sites):

        >>> import jax
        >>> import jax.numpy as jnp
        >>> from numpyro import handlers
        >>> from ppl_diffusion import NoiseSchedule
        >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
        ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
        >>> handlers.seed(diffusion.model, 0)(None, n=3).shape
        (3, 2)
        """
        self._need_chain()
        net = self._net(checkpoint=self.checkpoint_activations != "none")
        coef = self.coefficients()
        batch = x0.shape[0] if x0 is not None else n
        dtype = x0.dtype if x0 is not None else jnp.float32
        d, T = self._d(), self.T
        with numpyro.plate("data", batch):
            x = numpyro.sample(f"x_{T}", self.get_prior(dtype))
            for t in range(T, 1, -1):
                mean, log_var = self.p_mean_variance(net, x, self._full_t(t, x), coef)
                x = numpyro.sample(f"x_{t - 1}", dist.Normal(mean, jnp.exp(0.5 * log_var)).to_event(d))
            return numpyro.sample("x_0", self.decoder_at(net, x, self._full_t(1, x), coef=coef).to_event(d), obs=x0)

    def guide(self, x0, n: int | None = None):
        r"""The forward chain as a guide, sites ``x_1`` … ``x_T`` in the plate ``"data"``; no parameters.

        .. math:: q(x_{1:T} \mid x_0) = \prod_{t=1}^T \mathcal{N}\big(x_t;\ \sqrt{1 - \beta_t}\, x_{t-1}, \beta_t I\big)

        :param x0: the data ``[B x *event_shape]``.
        :returns: x_T ``[B x *event_shape]``.

        Example (with the model, NumPyro's ``Trace_ELBO`` estimates the ELBO):

        >>> import jax
        >>> import jax.numpy as jnp
        >>> from numpyro import handlers
        >>> from ppl_diffusion import NoiseSchedule
        >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
        ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
        >>> from numpyro.infer import Trace_ELBO
        >>> params = {"denoiser$params": handlers.trace(handlers.seed(diffusion.model, 0)).get_trace(
        ...     jnp.zeros((3, 2)))["denoiser$params"]["value"]}
        >>> loss = Trace_ELBO().loss(jax.random.key(0), params, diffusion.model, diffusion.guide, jnp.zeros((3, 2)))
        >>> loss.shape   # −ELBO of the batch, in nats
        ()
        """
        self._need_chain()
        d, x, coef = self._d(), x0, self.coefficients()
        with numpyro.plate("data", x0.shape[0]):
            for t in range(1, self.T + 1):
                mean, var = cf.q_step_mean_variance(coef, x, self._full_t(t, x))
                x = numpyro.sample(f"x_{t}", dist.Normal(mean, jnp.sqrt(var)).to_event(d))
        return x

    def posterior_guide(self, x0, n: int | None = None):
        r"""The forward process in posterior order, for ``TraceMeanField_ELBO`` (an analytic KL at every site):
        sites ``x_T`` … ``x_1`` in the plate ``"data"``.

        .. math:: q(x_{1:T} \mid x_0) = q(x_T \mid x_0) \prod_{t=2}^T q(x_{t-1} \mid x_t, x_0)

        :param x0: the data ``[B x *event_shape]``.
        :returns: x_1 ``[B x *event_shape]``.
        """
        self._need_chain()
        d, T, coef = self._d(), self.T, self.coefficients()
        with numpyro.plate("data", x0.shape[0]):
            mean, var = cf.q_mean_variance(coef, x0, self._full_t(T, x0))
            x = numpyro.sample(f"x_{T}", dist.Normal(mean, jnp.sqrt(var)).to_event(d))
            for t in range(T, 1, -1):
                mean, var, _ = cf.q_posterior_mean_variance(coef, x0, x, self._full_t(t, x))
                x = numpyro.sample(f"x_{t - 1}", dist.Normal(mean, jnp.sqrt(var)).to_event(d))
        return x

    # ------------------------------------------------------------------ one step per example
    def _step_sites(self, x0, t, weight, is_model: bool, net=None):
        self._need_chain()
        d, T, coef = self._d(), self.T, self.coefficients()
        with numpyro.plate("data", x0.shape[0]):
            mean_T, var_T = cf.q_mean_variance(coef, x0, self._full_t(T, x0))
            q_T = dist.Normal(mean_T, jnp.sqrt(var_T)).to_event(d)
            numpyro.sample("x_T", self.get_prior(x0.dtype) if is_model else q_T)
            with handlers.scale(scale=weight) if weight is not None else contextlib.nullcontext():
                mean, var = cf.q_mean_variance(coef, x0, t)
                x_t = numpyro.sample("x_t", dist.Normal(mean, jnp.sqrt(var)).to_event(d))
                if is_model:
                    p_mean, p_log_var = self.p_mean_variance(net, x_t, t, coef)
                    with handlers.mask(mask=t > 1):
                        numpyro.sample("x_prev", dist.Normal(p_mean, jnp.exp(0.5 * p_log_var)).to_event(d))
                    with handlers.mask(mask=t == 1):
                        numpyro.sample("x_0", self.decoder_at(net, x_t, t, p_mean, p_log_var, coef).to_event(d),
                                       obs=x0)
                else:
                    q_mean, _, q_log_var = cf.q_posterior_mean_variance(coef, x0, x_t, t)
                    with handlers.mask(mask=t > 1):
                        numpyro.sample("x_prev", dist.Normal(q_mean, jnp.exp(0.5 * q_log_var)).to_event(d))

    def step_model(self, x0, t, weight=None):
        r"""One reverse step per example at steps ``t`` (``int[B]`` in 1..T); see the PyTorch backend.

        Sites: ``x_T`` ~ p(x_T), ``x_t`` ~ q(x_t|x_0), ``x_prev`` ~ p_θ(x_{t−1}|x_t) (masked to t > 1) and ``x_0``
        observed under p_θ(x_0|x_1) (masked to t = 1), in the plate ``"data"``; scored against :meth:`step_guide`
        by :func:`~ppl_diffusion.numpyro.infer.per_example_elbo`, this gives the stochastic-timestep ELBO

        .. math:: \mathcal{L} = -\mathrm{KL}(q(x_T \mid x_0) \,\|\, p(x_T)) - w(t)\, L_{t-1}, \quad
            L_{t-1} = \mathrm{KL}(q(x_{t-1} \mid x_t, x_0) \,\|\, p_\theta(x_{t-1} \mid x_t))
            \ (t > 1), \quad L_0 = -\log p_\theta(x_0 \mid x_1).

        :param x0: the data ``[B x *event_shape]``.
        :param t: steps ``int[B]`` in 1..T.
        :param weight: the importance weights 1/P(t) ``[B]`` scaling the step's sites (None: 1).

        Example:

        >>> import jax
        >>> import jax.numpy as jnp
        >>> from numpyro import handlers
        >>> from ppl_diffusion import NoiseSchedule
        >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
        ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
        >>> trace = handlers.trace(handlers.seed(diffusion.step_model, 0)).get_trace(jnp.zeros((3, 2)),
        ...                                                                           jnp.array([1, 2, 4]))
        >>> [name for name, site in trace.items() if site["type"] == "sample"]
        ['x_T', 'x_t', 'x_prev', 'x_0']
        """
        self._step_sites(x0, t, weight, True, self._net())

    def step_guide(self, x0, t, weight=None):
        """The pair of :meth:`step_model`: ``x_T`` ~ q(x_T|x_0), ``x_t`` ~ q(x_t|x_0) and ``x_prev`` ~
        q(x_{t−1}|x_t, x_0) (masked to t > 1); no parameters.

        :param x0: the data ``[B x *event_shape]``.
        :param t: steps ``int[B]`` in 1..T.
        :param weight: the importance weights 1/P(t) ``[B]`` (None: 1).
        """
        self._step_sites(x0, t, weight, False)

    # ------------------------------------------------------------------ continuous time
    def check_continuous(self) -> None:
        """A one-line error unless the model has a continuous time (a γ schedule, the net conditioned on γ)."""
        if not self.gamma_schedule or self.time_input != "gamma":
            raise ValueError("continuous time needs a γ schedule and a net conditioned on γ (time_input='gamma'); "
                             f"this model has {type(self.schedule).__name__} and time_input={self.time_input!r}")

    def _continuous_sites(self, x0, t, weight, is_model: bool, net=None, shape=None):
        self.check_continuous()
        d = self._d()
        sched = self._sched()
        dims = tuple(range(1, x0.ndim))
        work = jnp.result_type(float)  # γ in float64 under jax_enable_x64, as the PyTorch backend's

        def q_normal(gamma):
            gamma = gamma.reshape(gamma.shape + (1,) * (x0.ndim - gamma.ndim))
            alpha = jnp.sqrt(jax.nn.sigmoid(-gamma)).astype(x0.dtype)
            sigma = jnp.sqrt(jax.nn.sigmoid(gamma)).astype(x0.dtype)
            return alpha, sigma, dist.Normal(alpha * x0, jnp.broadcast_to(sigma, x0.shape)).to_event(d)

        batch = x0.shape[0]
        g0, g1 = sched.endpoints(work)
        g_t, dg_t = sched.gamma_and_derivative(jnp.asarray(t, work), shape=shape)
        with numpyro.plate("data", batch):
            _, _, q_T = q_normal(jnp.broadcast_to(g1, (batch,)))
            numpyro.sample("x_T", self.get_prior(x0.dtype) if is_model else q_T)
            alpha_0, sigma_0, q_1 = q_normal(jnp.broadcast_to(g0, (batch,)))
            x_1 = numpyro.sample("x_1", q_1)
            if is_model:
                if uses_denoiser(self.decoder):
                    eps_hat = self.split_output(self._call(net, x_1, None, label=self.gamma_label(
                        jnp.broadcast_to(g0, (batch,)))), x_1)[0]
                    mean = (x_1 - sigma_0 * eps_hat) / alpha_0
                    log_var = jnp.broadcast_to(jax.nn.log_sigmoid(g0).astype(x0.dtype), x0.shape)
                else:  # VDM's categorical: x_1/α_0 and log(σ_0²/α_0²) = γ_0, no denoiser call
                    mean, log_var = x_1 / alpha_0, jnp.broadcast_to(g0.astype(x0.dtype), x0.shape)
                numpyro.sample("x_0", self.decoder(mean, log_var).to_event(d), obs=x0)
            with handlers.scale(scale=weight) if weight is not None else contextlib.nullcontext():
                alpha_t, sigma_t, q_t = q_normal(g_t)
                x_t = numpyro.sample("x_t", q_t)
                if is_model:
                    eps = (x_t - alpha_t * x0) / sigma_t
                    eps_hat = self.split_output(self._call(net, x_t, None, label=self.gamma_label(g_t)), x_t)[0]
                    mse = jnp.sum((eps - eps_hat) ** 2, axis=dims)
                    numpyro.factor("diffusion", -0.5 * dg_t.astype(x0.dtype) * mse)

    def continuous_model(self, x0, t, weight=None, shape=None):
        r"""The continuous-time model at per-example times ``t`` (``[B]`` in [0, 1]): sites ``x_T``, ``x_1``, ``x_0``,
        ``x_t`` and the factor ``diffusion``, as the PyTorch backend's. ``shape`` (optional): (shape(t), shape'(t))
        of the schedule's interior, computed by the caller (the variance objective).

        The factor is VDM's diffusion term at one time per example (weighted by ``weight``, 1/p(t)):

        .. math:: \log f = -\tfrac12\, \gamma'(t)\, \lVert \epsilon - \hat\epsilon_\theta(x_t; \gamma(t)) \rVert^2,
            \quad x_t = \alpha_t x_0 + \sigma_t \epsilon

        :param x0: the data ``[B x *event_shape]``.
        :param t: times ``[B]`` in [0, 1].
        :param weight: the importance weights 1/p(t) ``[B]`` (None: 1).

        Example:

        >>> import jax
        >>> import jax.numpy as jnp
        >>> from numpyro import handlers
        >>> from ppl_diffusion.numpyro import GaussianDiffusion, LinearGamma, MLPDenoiser
        >>> net = MLPDenoiser(2, width=16, depth=1, emb_dim=8)
        >>> diffusion = GaussianDiffusion(schedule=LinearGamma(), denoiser=net, event_shape=(2,), T=0)
        >>> trace = handlers.trace(handlers.seed(diffusion.continuous_model, 0)).get_trace(
        ...     jnp.zeros((3, 2)), jnp.array([0.1, 0.5, 0.9]))
        >>> [name for name, site in trace.items() if site["type"] == "sample"]
        ['x_T', 'x_1', 'x_0', 'x_t', 'diffusion']
        """
        self._continuous_sites(x0, t, weight, True, self._net(), shape)

    def continuous_guide(self, x0, t, weight=None, shape=None):
        """The pair of :meth:`continuous_model`: ``x_T`` at γ_1, ``x_1`` at γ_0, ``x_t`` at γ(t)."""
        self._continuous_sites(x0, t, weight, False, None, shape)


__all__ = ["GaussianDiffusion", "LEARNED_VARIANCES"]
