r"""γ schedules in Flax NNX: the twins of :mod:`ppl_diffusion.gamma` (same names, formulas and parameter layout).

γ(t) = γ_0 + (γ_1 − γ_0)·shape(t) on t ∈ [0, 1], α_t² = sigmoid(−γ), σ_t² = sigmoid(γ); see the PyTorch module and
docs/variational.md. Parameters are ``nnx.Param`` under the PyTorch ``state_dict``'s names and layouts (``l2.weight``
``[F x 1]``, ``ends.log_range``, …), so :func:`ppl_diffusion.numpyro.convert.gamma_params_from_torch_state` and
``torch_state_from_gamma_params`` convert them by name. Fixed coefficients (a NoiseSchedule's spline) stay float64
NumPy, outside the module's state. Every schedule computes in the dtype of ``t`` (float64 under
``jax_enable_x64``); γ'(t) is a forward-mode derivative (``jax.jvp``).

:func:`param_module` registers a schedule's parameters in a NumPyro program (``numpyro.param(name + "$params")``, as
``numpyro.contrib.module.nnx_module``) and returns the module itself with them, so that its methods (endpoints,
γ', …) can be called, not only ``__call__``.

.. math:: \gamma(t) = \gamma_0 + (\gamma_1 - \gamma_0)\,\mathrm{shape}(t), \quad
    \alpha_t^2 = \mathrm{sigmoid}(-\gamma(t)), \quad \sigma_t^2 = \mathrm{sigmoid}(\gamma(t))

Example:

>>> import jax.numpy as jnp
>>> from ppl_diffusion.numpyro.gamma import GammaChain, LinearGamma
>>> schedule = LinearGamma(-5.0, 5.0)
>>> schedule(jnp.array([0.0, 0.5, 1.0])).tolist()
[-5.0, 0.0, 5.0]
>>> GammaChain.of(schedule, 4).betas.shape   # the 4-step chain's coefficients
(4,)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from flax import nnx

from ..gamma import GAMMA_MAX, GAMMA_MIN, INTERPOLATIONS, check_chain_T, check_endpoints
from ..gamma import InterpolatedGamma as _TorchInterpolated
from .closed_forms import log1mexp


class _Fixed:
    """A float64 NumPy array kept static (not a state leaf of the NNX module)."""

    def __init__(self, array) -> None:
        self.array = np.asarray(array, np.float64)


def _time(t):
    t = jnp.asarray(t)
    return t if jnp.issubdtype(t.dtype, jnp.floating) else t.astype(jnp.float32)


class GammaSchedule(nnx.Module):
    r"""γ(t) = γ_0 + (γ_1 − γ_0)·shape(t) (see :class:`ppl_diffusion.gamma.GammaSchedule`).

    .. math:: \gamma(t) = \gamma_0 + (\gamma_1 - \gamma_0)\,\mathrm{shape}(t), \quad \mathrm{shape}(0) = 0,\
        \mathrm{shape}(1) = 1

    The base class: a schedule defines :meth:`endpoints` and ``shape``; calling it gives γ(t) in the dtype of
    ``t`` (float32 for integer ``t``).

    Example: a schedule of your own, quadratic in t.

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.gamma import GammaSchedule
    >>> class Quadratic(GammaSchedule):
    ...     def endpoints(self, dtype=jnp.float32):
    ...         return jnp.asarray(-10.0, dtype), jnp.asarray(6.0, dtype)
    ...     def shape(self, t):
    ...         return t ** 2
    >>> g, dg = Quadratic().gamma_and_derivative(jnp.array([0.5]))
    >>> g.tolist(), dg.tolist()  # −10 + 16 · ¼ and 16 · 2 · ½
    ([-6.0], [16.0])
    """

    interior_keys: tuple = ()  # top-level keys of the pure param dict that belong to the interior

    def endpoints(self, dtype=jnp.float32):
        """(γ_0, γ_1), 0-d arrays of ``dtype``."""
        raise NotImplementedError

    def shape(self, t):
        return t

    def __call__(self, t):
        t = _time(t)
        g0, g1 = self.endpoints(t.dtype)
        return g0 + (g1 - g0) * self.shape(t)

    def gamma_and_derivative(self, t, shape=None):
        """(γ(t), γ'(t)), γ' by ``jax.jvp``; ``shape`` (optional) the pair (shape(t), shape'(t)) already computed
        (the variance objective routes their gradients).

        Example:

        >>> import jax.numpy as jnp
        >>> from ppl_diffusion.numpyro.gamma import LinearGamma
        >>> gamma, slope = LinearGamma(-5.0, 5.0).gamma_and_derivative(jnp.array([0.25, 0.75]))
        >>> gamma.tolist(), slope.tolist()
        ([-2.5, 2.5], [10.0, 10.0])
        """
        t = _time(t)
        s, ds = jax.jvp(self.shape, (t,), (jnp.ones_like(t),)) if shape is None else shape
        g0, g1 = self.endpoints(t.dtype)
        return g0 + (g1 - g0) * s, (g1 - g0) * ds

    @property
    def learnable(self) -> bool:
        """Whether the schedule has parameters (``nnx.Param``)."""
        return bool(nnx.to_pure_dict(nnx.state(self, nnx.Param)))


class LinearGamma(GammaSchedule):
    r"""γ linear from γ_0 to γ_1, fixed (the twin of :class:`ppl_diffusion.gamma.LinearGamma`).

    .. math:: \gamma(t) = \gamma_0 + (\gamma_1 - \gamma_0)\, t

    :param float gamma_0: γ at t = 0 (default VDM's −13.3).
    :param float gamma_1: γ at t = 1, > γ_0 (default 5).

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.gamma import LinearGamma
    >>> schedule = LinearGamma()
    >>> [round(float(g), 4) for g in schedule.endpoints()], schedule.learnable
    ([-13.3, 5.0], False)
    """

    def __init__(self, gamma_0: float = GAMMA_MIN, gamma_1: float = GAMMA_MAX) -> None:
        self.gamma_0, self.gamma_1 = check_endpoints(gamma_0, gamma_1)

    def endpoints(self, dtype=jnp.float32):
        return jnp.asarray(self.gamma_0, dtype), jnp.asarray(self.gamma_1, dtype)


class ScalarGamma(GammaSchedule):
    r"""Linear γ with learned endpoints: γ_0 and γ_1 = γ_0 + exp(``log_range``) (parameters of shape ()).

    .. math:: \gamma(t) = \gamma_0 + e^{\mathrm{log\_range}}\, t

    The twin of :class:`ppl_diffusion.gamma.ScalarGamma`.

    :param float gamma_0: the initial γ_0.
    :param float gamma_1: the initial γ_1, > γ_0.

    Example:

    >>> from ppl_diffusion.numpyro.gamma import ScalarGamma
    >>> schedule = ScalarGamma(-5.0, 5.0)
    >>> [round(float(g), 4) for g in schedule.endpoints()], schedule.learnable
    ([-5.0, 5.0], True)
    """

    def __init__(self, gamma_0: float = GAMMA_MIN, gamma_1: float = GAMMA_MAX) -> None:
        g0, g1 = check_endpoints(gamma_0, gamma_1)
        self.gamma_0 = nnx.Param(jnp.asarray(g0, jnp.float32))
        self.log_range = nnx.Param(jnp.asarray(math.log(g1 - g0), jnp.float32))

    def endpoints(self, dtype=jnp.float32):
        g0 = self.gamma_0[...].astype(dtype)
        return g0, g0 + jnp.exp(self.log_range[...].astype(dtype))


class InterpolatedGamma(GammaSchedule):
    """A fixed γ through knots, natural cubic spline or piecewise linear (the twin of
    :class:`ppl_diffusion.gamma.InterpolatedGamma`, whose checks and coefficients it reuses).

    :param times: the knots' times, increasing from 0 to 1.
    :param gammas: γ at the knots, increasing.
    :param str interpolation: ``"cubic"`` or ``"linear"``.

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.gamma import InterpolatedGamma
    >>> schedule = InterpolatedGamma([0.0, 0.5, 1.0], [-4.0, 0.0, 2.0], interpolation="linear")
    >>> schedule(jnp.array([0.25, 0.5, 0.75])).tolist()
    [-2.0, 0.0, 1.0]
    """

    def __init__(self, times, gammas, interpolation: str = "cubic") -> None:
        reference = _TorchInterpolated(times, gammas, interpolation)
        self.interpolation = interpolation
        self.knots = _Fixed(reference.times)
        self.values = _Fixed(reference.gammas)
        self.spline = _Fixed(reference.coefficients)

    @classmethod
    def from_noise_schedule(cls, schedule, interpolation: str = "cubic") -> "InterpolatedGamma":
        """Exact at the schedule's steps: γ((t − 1)/(T − 1)) = log((1 − ᾱ_t)/ᾱ_t).

        :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule`.
        :param str interpolation: ``"cubic"`` or ``"linear"``.

        Example:

        >>> import numpy as np
        >>> from ppl_diffusion import NoiseSchedule
        >>> from ppl_diffusion.numpyro.gamma import InterpolatedGamma, step_times
        >>> schedule = NoiseSchedule.linear(T=10)
        >>> gamma = InterpolatedGamma.from_noise_schedule(schedule)(step_times(10))
        >>> bool(np.allclose(gamma, np.log((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod), atol=1e-4))
        True
        """
        ref = _TorchInterpolated.from_noise_schedule(schedule, interpolation)
        return cls(ref.times, ref.gammas, interpolation)

    def endpoints(self, dtype=jnp.float32):
        return jnp.asarray(self.values.array[0], dtype), jnp.asarray(self.values.array[-1], dtype)

    def __call__(self, t):
        t = _time(t)
        times = jnp.asarray(self.knots.array, t.dtype)
        c = jnp.asarray(self.spline.array, t.dtype)
        k = jnp.clip(jnp.searchsorted(times, jax.lax.stop_gradient(t), side="right") - 1, 0, len(times) - 2)
        dx = t - times[k]
        ck = c[k]
        return ((ck[..., 0] * dx + ck[..., 1]) * dx + ck[..., 2]) * dx + ck[..., 3]

    def shape(self, t):
        g0, g1 = self.values.array[0], self.values.array[-1]
        return (self(t) - g0) / (g1 - g0)


class DenseMonotone(nnx.Module):
    r"""``y = x |W|ᵀ + b``, ``weight`` ``[out x in]`` (torch's layout): a dense layer monotone increasing in x.

    .. math:: y = x\,|W|^\top + b

    :param int in_features: the input width.
    :param int out_features: the output width.
    :param bool bias: whether to add b.
    :param float weight_std: the standard deviation of W's initial draw.
    :param rngs: ``nnx.Rngs``.

    Example:

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from ppl_diffusion.numpyro.gamma import DenseMonotone
    >>> layer = DenseMonotone(1, 3, rngs=nnx.Rngs(0))
    >>> y = layer(jnp.array([[0.0], [1.0]]))
    >>> y.shape, bool((y[1] >= y[0]).all())
    ((2, 3), True)
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, weight_std: float = 0.01,
                 rngs: nnx.Rngs) -> None:
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (out_features, in_features)) * weight_std)
        self.bias = nnx.Param(jnp.zeros((out_features,))) if bias else None

    def __call__(self, x):
        y = x @ jnp.abs(self.weight[...].astype(x.dtype)).T
        return y if self.bias is None else y + self.bias[...].astype(x.dtype)


class MonotoneNetGamma(GammaSchedule):
    r"""VDM's monotone network as the interior, normalised; endpoints fixed or learned (the twin of
    :class:`ppl_diffusion.gamma.MonotoneNetGamma`).

    .. math:: \mathrm{shape}(t) = \frac{r(t) - r(0)}{r(1) - r(0)}, \quad
        r(t) = |w|\, t + \frac{1}{F}\, l_3\big(2\,\mathrm{sigmoid}(l_2(2t - 1)) - 1\big)

    with :class:`DenseMonotone` layers l_2 (1 → F) and l_3 (F → 1).

    :param float gamma_0: the initial γ_0.
    :param float gamma_1: the initial γ_1.
    :param bool learn_endpoints: learn them (:class:`ScalarGamma`) or keep them fixed (:class:`LinearGamma`).
    :param int features: F, the network's width.
    :param rngs: ``nnx.Rngs`` (default ``nnx.Rngs(0)``).

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.gamma import MonotoneNetGamma
    >>> schedule = MonotoneNetGamma(-5.0, 5.0, features=4)
    >>> [round(float(g), 4) for g in schedule(jnp.array([0.0, 1.0]))]
    [-5.0, 5.0]
    """

    interior_keys = ("linear", "l2", "l3")

    def __init__(self, gamma_0: float = GAMMA_MIN, gamma_1: float = GAMMA_MAX, *, learn_endpoints: bool = True,
                 features: int = 1024, rngs: nnx.Rngs | None = None) -> None:
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ValueError(f"features = {features!r}; pass the width of the monotone network, an integer >= 1")
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.ends = ScalarGamma(gamma_0, gamma_1) if learn_endpoints else LinearGamma(gamma_0, gamma_1)
        self.features = features
        self.linear = nnx.Param(jnp.ones((), jnp.float32))
        self.l2 = DenseMonotone(1, features, rngs=rngs)
        self.l3 = DenseMonotone(features, 1, bias=False, rngs=rngs)

    @property
    def learn_endpoints(self) -> bool:
        return isinstance(self.ends, ScalarGamma)

    def endpoints(self, dtype=jnp.float32):
        return self.ends.endpoints(dtype)

    def raw(self, t):
        x = t.reshape(-1, 1)
        h = 2.0 * (jax.nn.sigmoid(self.l2(2.0 * x - 1.0)) - 0.5)
        out = jnp.abs(self.linear[...].astype(t.dtype)) * x + self.l3(h) / self.features
        return out.reshape(t.shape)

    def shape(self, t):
        ends = self.raw(jnp.asarray([0.0, 1.0], t.dtype))
        return (self.raw(t) - ends[0]) / (ends[1] - ends[0])


#: The γ schedules by name, the PyTorch registry's (``ppl_diffusion.gamma.GAMMA_SCHEDULES``).
GAMMA_SCHEDULES = {"fixed-linear": LinearGamma, "fixed-interpolated": InterpolatedGamma,
                   "learned-scalar": ScalarGamma, "learned-net": MonotoneNetGamma}


def make_gamma_schedule(name: str, **kwargs) -> GammaSchedule:
    """A γ schedule by name (:data:`~ppl_diffusion.numpyro.gamma.GAMMA_SCHEDULES`, the PyTorch registry's names).

    ``"fixed-interpolated"`` with ``schedule=NoiseSchedule`` reads that schedule at its steps
    (:meth:`InterpolatedGamma.from_noise_schedule`).

    :param str name: a key of :data:`GAMMA_SCHEDULES`.
    :param kwargs: the schedule's keywords.
    :raises ValueError: for an unknown name, listing the known ones.

    Example:

    >>> from ppl_diffusion.numpyro.gamma import make_gamma_schedule
    >>> type(make_gamma_schedule("learned-scalar", gamma_0=-5.0, gamma_1=5.0)).__name__
    'ScalarGamma'
    """
    if name not in GAMMA_SCHEDULES:
        raise ValueError(f"unknown γ schedule {name!r}; choose one of {sorted(GAMMA_SCHEDULES)}")
    if name == "fixed-interpolated" and "schedule" in kwargs:
        return InterpolatedGamma.from_noise_schedule(**kwargs)
    return GAMMA_SCHEDULES[name](**kwargs)


def param_module(name: str, module: nnx.Module) -> nnx.Module:
    """``module`` with its parameters declared as ``numpyro.param(name + "$params")`` (a pure dict, as
    ``nnx_module``'s) and read from there: the returned module is the one to call (any method).

    :param str name: the site's prefix (``"schedule"`` in the diffusion programs).
    :param module: a γ schedule (a schedule without parameters is returned as it is).

    Example:

    >>> from numpyro import handlers
    >>> from ppl_diffusion.numpyro.gamma import ScalarGamma, param_module
    >>> trace = handlers.trace(lambda: param_module("schedule", ScalarGamma()).endpoints()).get_trace()
    >>> list(trace), sorted(trace["schedule$params"]["value"])
    (['schedule$params'], ['gamma_0', 'log_range'])
    """
    graph_def, params, rest = nnx.split(module, nnx.Param, nnx.Not(nnx.Param))
    pure = nnx.to_pure_dict(params)
    if not pure:
        return module
    values = numpyro.param(name + "$params", pure)
    state = jax.tree.map(lambda v: v, params)
    nnx.replace_by_pure_dict(state, values)
    return nnx.merge(graph_def, state, rest, copy=True)


# ------------------------------------------------------------------------------------------ the discrete chain
def step_times(T: int, dtype=jnp.float32):
    """x_t at (t − 1)/(T − 1), t = 1..T: where the chain's latents sit, ``[T]``.

    Example:

    >>> from ppl_diffusion.numpyro.gamma import step_times
    >>> [round(float(s), 4) for s in step_times(4)]
    [0.0, 0.3333, 0.6667, 1.0]
    """
    return jnp.arange(T, dtype=dtype) / (T - 1)


class GammaChain:
    r"""The T-step chain's coefficients from γ at :func:`~ppl_diffusion.numpyro.gamma.step_times`, JAX arrays under
    the NoiseSchedule's names
    (the twin of :class:`ppl_diffusion.gamma.GammaChain`, the same formulas). With s = t − 1:

    .. math:: \bar\alpha_t = \mathrm{sigmoid}(-\gamma_t), \quad
        \beta_t = \mathrm{sigmoid}(\gamma_t)\,\big(1 - e^{\gamma_s - \gamma_t}\big), \quad
        \tilde\beta_t = \mathrm{sigmoid}(\gamma_s)\,\big(1 - e^{\gamma_s - \gamma_t}\big)

    (β_1 = σ_1², β̃_1 = 0), each computed in log space (log1mexp) to keep its precision when neighbouring γ are
    close; :mod:`ppl_diffusion.numpyro.closed_forms` reads it as it reads a NoiseSchedule.

    :param gamma: γ at the T steps, increasing, ``[T]`` (T >= 2).

    Example (the PyTorch twin's coefficients):

    >>> import numpy as np
    >>> from ppl_diffusion import gamma
    >>> from ppl_diffusion.numpyro.gamma import GammaChain, LinearGamma
    >>> chain = GammaChain.of(LinearGamma(-5.0, 5.0), 4)
    >>> twin = gamma.GammaChain.of(gamma.LinearGamma(-5.0, 5.0), 4)
    >>> bool(np.allclose(chain.betas, twin.betas.numpy(), rtol=1e-5)), chain.T
    (True, 4)
    """

    def __init__(self, gamma) -> None:
        g = gamma
        if g.ndim != 1 or g.shape[0] < 2:
            raise ValueError(f"a chain needs γ at T >= 2 steps, got shape {tuple(g.shape)}")
        first = jnp.arange(g.shape[0]) == 0
        g_prev = jnp.concatenate([g[:1] - 1.0, g[:-1]])
        log_c = log1mexp(g_prev - g)
        log_sigma2, log_alpha2 = jax.nn.log_sigmoid(g), jax.nn.log_sigmoid(-g)
        log_sigma2_prev, log_alpha2_prev = jax.nn.log_sigmoid(g_prev), jax.nn.log_sigmoid(-g_prev)
        self.gamma, self.T = g, int(g.shape[0])
        self.alphas_cumprod = jnp.exp(log_alpha2)
        self.alphas_cumprod_prev = jnp.where(first, 1.0, jnp.exp(log_alpha2_prev))
        self.sqrt_alphas_cumprod = jnp.exp(0.5 * log_alpha2)
        self.sqrt_one_minus_alphas_cumprod = jnp.exp(0.5 * log_sigma2)
        self.log_betas = jnp.where(first, log_sigma2, log_sigma2 + log_c)
        self.betas = jnp.exp(self.log_betas)
        log_alphas = jnp.where(first, log_alpha2, log_alpha2 - log_alpha2_prev)
        self.alphas = jnp.exp(log_alphas)
        self.sqrt_alphas = jnp.exp(0.5 * log_alphas)
        log_post = log_sigma2_prev + log_c
        self.posterior_variance = jnp.where(first, 0.0, jnp.exp(log_post))
        self.posterior_log_variance_clipped = jnp.where(first, log_post[1], log_post)
        self.posterior_mean_coef1 = jnp.where(first, 1.0, jnp.exp(0.5 * log_alpha2_prev + log_c))
        self.posterior_mean_coef2 = jnp.where(first, 0.0, jnp.exp(0.5 * log_alphas + log_sigma2_prev - log_sigma2))

    @classmethod
    def of(cls, schedule: GammaSchedule, T: int, dtype=None) -> "GammaChain":
        """The chain of ``schedule`` with ``T`` steps, in float64 under ``jax_enable_x64`` (else float32)."""
        dtype = jnp.result_type(float) if dtype is None else dtype  # float64 under jax_enable_x64
        return cls(schedule(step_times(T, dtype)))


__all__ = ["GAMMA_SCHEDULES", "DenseMonotone", "GammaChain", "GammaSchedule", "InterpolatedGamma", "LinearGamma",
           "MonotoneNetGamma", "ScalarGamma", "make_gamma_schedule", "param_module", "step_times"]
