"""The forward process as a learnable schedule: γ(t) = log(σ_t² / α_t²) on t ∈ [0, 1] (VDM, Kingma et al. 2021).

A variance-preserving forward process is one increasing function, the log noise-to-signal ratio γ(t) = −log SNR(t):

    α_t² = sigmoid(−γ(t)),   σ_t² = sigmoid(γ(t)),   q(x_t|x_0) = N(α_t x_0, σ_t² I),

so that α_t² + σ_t² = 1 and γ increases from γ_0 = γ(0) (almost no noise) to γ_1 = γ(1) (almost pure noise). It
is the ``(1 − ᾱ)/ᾱ`` of a :class:`~ppl_diffusion.schedule.NoiseSchedule` in the log: γ_t = log((1 − ᾱ_t)/ᾱ_t) = 2 log σ̃_t,
the VE noise level of :mod:`ppl_diffusion.continuous`. Every schedule here is written

    γ(t) = γ_0 + (γ_1 − γ_0) · shape(t),     shape(0) = 0, shape(1) = 1, shape increasing,

with the endpoints and the interior (``shape``) parametrised apart: the continuous-time ELBO depends on the
schedule through its endpoints alone, and the interior only through the variance of its estimate
(docs/variational.md), so the two are trained by different objectives
(:class:`~ppl_diffusion.infer.continuous_elbo.ContinuousTimeELBO`, ``schedule_objective="variance"``).

The schedules, chosen by name in :func:`make_gamma_schedule` (:data:`GAMMA_SCHEDULES`):

========================  ====================================================================================
``"fixed-linear"``        :class:`LinearGamma`: γ linear from γ_0 to γ_1, no parameters (VDM's ``fixed``).
``"fixed-interpolated"``  :class:`InterpolatedGamma`: through given knots (t_k, γ_k), a natural cubic spline;
                          :meth:`InterpolatedGamma.from_noise_schedule` reads any NoiseSchedule exactly at its steps.
``"learned-scalar"``      :class:`ScalarGamma`: linear, learned endpoints γ_0 < γ_1 (VDM's ``learnable_scalar``).
``"learned-net"``         :class:`MonotoneNetGamma`: VDM's monotone network (positive-weight dense layers) as the
                          interior, endpoints fixed or learned.
========================  ====================================================================================

Every schedule computes in the dtype of ``t`` (parameters are cast to it): the chain's coefficients are formed
in float64 from γ at the steps, as the NoiseSchedule's are, and cast per step to the data's dtype.

Where a chain of T steps sits in [0, 1] (:func:`step_times`): latent x_t at t_τ = (t − 1)/(T − 1), t = 1..T, so
the decoder's latent x_1 is at γ_0 and the prior's x_T at γ_1 for every T. Then our T-step chain is VDM's discrete
model with T − 1 transitions, the endpoint terms (decoder L_0 and prior L_T) do not depend on T, and the T → ∞
limit of the steps L_1..L_{T−1} is the continuous-time diffusion term with the same endpoints. :class:`~ppl_diffusion.gamma.GammaChain`
holds the chain's coefficients from γ at those times under the NoiseSchedule's names, so the closed forms read
either.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import numpy as np
import torch
from torch import Tensor, nn

from .closed_forms import log1mexp
from .schedule import NoiseSchedule

GAMMA_MIN = -13.3  #: VDM's default γ_0 for 8-bit images (σ_0² ≈ 1.7e-6)
GAMMA_MAX = 5.0  #: VDM's default γ_1 for 8-bit images (α_1² ≈ 6.7e-3)
#: The chain of steps that samples a model in continuous time unless told (sample --steps K), and whose x_T noise
#: (SAMPLE stream at t = K) the probability-flow ODE starts from.
CONTINUOUS_SAMPLE_STEPS = 1000
#: The interpolations of :class:`InterpolatedGamma`.
INTERPOLATIONS = ("cubic", "linear")


def _as_time(t) -> Tensor:
    """``t`` as a floating tensor (a Python number becomes a float64 0-d tensor)."""
    if not torch.is_tensor(t):
        return torch.as_tensor(t, dtype=torch.float64)
    return t if t.is_floating_point() else t.to(torch.float64)


def _shown(value) -> str:
    """A number as the user wrote it (``1.0``, not numpy's ``np.float64(1.0)``); anything else as its repr."""
    return repr(float(value)) if isinstance(value, numbers.Real) and not isinstance(value, bool) else repr(value)


def _endpoint(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} = {_shown(value)}; pass a finite number (a log noise-to-signal ratio, e.g. {name} = "
                         f"{GAMMA_MIN if name.endswith('0') else GAMMA_MAX})")
    return float(value)


def check_endpoints(gamma_0, gamma_1) -> tuple[float, float]:
    """(γ_0, γ_1) as floats with γ_0 < γ_1; a one-line error otherwise."""
    gamma_0, gamma_1 = _endpoint("gamma_0", gamma_0), _endpoint("gamma_1", gamma_1)
    if not gamma_0 < gamma_1:
        raise ValueError(f"gamma_0 = {gamma_0!r} >= gamma_1 = {gamma_1!r}; γ must increase from little noise at t = 0 "
                         f"to much noise at t = 1: pass gamma_0 < gamma_1 (VDM: {GAMMA_MIN}, {GAMMA_MAX})")
    return gamma_0, gamma_1


class InteriorGradientScale:
    """Per-example factors of the gradient that reaches a schedule's interior (see :meth:`GammaSchedule.scale_interior`).

    ``scale`` (``Tensor[B]``) is set after the forward pass and before ``backward``; the gradient of the interior's
    output at example i's time is multiplied by ``scale[i]``.

    Example: factors (2, 0) give the interior the gradient of 2 γ(t_0) alone.

    >>> import torch
    >>> from ppl_diffusion.gamma import InteriorGradientScale, MonotoneNetGamma
    >>> _ = torch.manual_seed(0)
    >>> schedule = MonotoneNetGamma(features=16).double()
    >>> t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    >>> scale = InteriorGradientScale()
    >>> with schedule.scale_interior(scale):
    ...     g, _ = schedule.gamma_and_derivative(t)
    ...     scale.scale = torch.tensor([2.0, 0.0], dtype=torch.float64)
    ...     g.sum().backward()
    >>> scaled = [p.grad.clone() for p in schedule.interior_parameters()]
    >>> schedule.zero_grad()
    >>> (2 * schedule.gamma_and_derivative(t)[0][0]).backward()
    >>> all(torch.allclose(a, p.grad) for a, p in zip(scaled, schedule.interior_parameters()))
    True
    """

    def __init__(self) -> None:
        self.scale: Tensor | None = None

    def hook(self, grad: Tensor) -> Tensor:
        """``grad * scale``: the tensor hook registered on the interior's outputs (an error if no scale is set)."""
        if self.scale is None:
            raise RuntimeError("the schedule's interior gradient is scaled per example, but no scale was set before "
                               "backward(); set InteriorGradientScale.scale (ContinuousTimeELBO does)")
        if grad.shape != self.scale.shape:
            raise RuntimeError(f"interior gradient of shape {tuple(grad.shape)} but {tuple(self.scale.shape)} scales")
        return grad * self.scale.to(grad.dtype)


class GammaSchedule(nn.Module):
    r"""γ(t) = γ_0 + (γ_1 − γ_0)·shape(t), t ∈ [0, 1] (see the module). Subclasses give :meth:`endpoints` and
    :meth:`shape` (default: t, linear); γ'(t) comes by autodiff (:meth:`gamma_and_derivative`).

    ``t`` is a floating tensor of any shape (a Python number is a float64 0-d tensor); the result has its shape and
    dtype.

    .. math::

        \gamma(t) = \gamma_0 + (\gamma_1 - \gamma_0)\, \mathrm{shape}(t), \qquad
        \alpha_t^2 = \operatorname{sigmoid}(-\gamma(t)), \quad \sigma_t^2 = \operatorname{sigmoid}(\gamma(t)).

    Example: a schedule of your own, quadratic in t.

    >>> import torch
    >>> class Quadratic(GammaSchedule):
    ...     def endpoints(self, dtype=torch.float64):
    ...         return torch.tensor(-10.0, dtype=dtype), torch.tensor(6.0, dtype=dtype)
    ...     def shape(self, t):
    ...         return t ** 2
    >>> g, dg = Quadratic().gamma_and_derivative(torch.tensor([0.5], dtype=torch.float64))
    >>> g.tolist(), dg.tolist()  # −10 + 16 · ¼ and 16 · 2 · ½
    ([-6.0], [16.0])
    """

    def __init__(self) -> None:
        super().__init__()
        self._interior_scale: InteriorGradientScale | None = None

    # -------------------------------------------------------------- what subclasses define
    def endpoints(self, dtype=torch.float64) -> tuple[Tensor, Tensor]:
        """(γ_0, γ_1) as 0-d tensors of ``dtype`` (differentiable where learned).

        :rtype: tuple[torch.Tensor, torch.Tensor]
        """
        raise NotImplementedError

    def shape(self, t: Tensor) -> Tensor:
        """The interior, increasing from shape(0) = 0 to shape(1) = 1."""
        return t

    def interior_parameters(self) -> list[nn.Parameter]:
        """The parameters of :meth:`shape` (trained for the estimator's variance in continuous time)."""
        return []

    def endpoint_parameters(self) -> list[nn.Parameter]:
        """The parameters of :meth:`endpoints` (trained by the ELBO)."""
        return []

    # -------------------------------------------------------------- derived
    def forward(self, t) -> Tensor:
        """γ(t), of the shape and dtype of ``t``.

        :param t: times in [0, 1], a floating tensor or a number.
        """
        t = _as_time(t)
        g0, g1 = self.endpoints(t.dtype)
        return g0 + (g1 - g0) * self.shape(t)

    def gamma_and_derivative(self, t) -> tuple[Tensor, Tensor]:
        """(γ(t), γ'(t)), the derivative by autodiff (differentiable in the parameters).

        Inside :meth:`scale_interior` the gradient reaching the interior through both is multiplied per example by
        the context's factors (hooks on shape(t) and shape'(t) of a ``[B]``-shaped ``t``).

        :param t: times in [0, 1], a floating tensor or a number.
        :rtype: tuple[torch.Tensor, torch.Tensor]

        Example: autodiff's γ' agrees with a finite difference.

        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> schedule = MonotoneNetGamma(features=16).double()
        >>> t, h = torch.tensor([0.3], dtype=torch.float64), 1e-6
        >>> g, dg = schedule.gamma_and_derivative(t)
        >>> fd = (schedule(t + h) - schedule(t - h)) / (2 * h)
        >>> bool(torch.allclose(dg, fd, rtol=1e-6))
        True
        """
        t = _as_time(t)
        with torch.enable_grad():
            tt = t.detach().requires_grad_(True)
            s = self.shape(tt)
            (ds,) = torch.autograd.grad(s.sum(), tt, create_graph=True)
        if not any(p.requires_grad for p in self.interior_parameters()):
            s, ds = s.detach(), ds.detach()  # no graph to keep: a fixed interior
        elif self._interior_scale is not None and t.dim() == 1:
            s.register_hook(self._interior_scale.hook)
            ds.register_hook(self._interior_scale.hook)
        g0, g1 = self.endpoints(t.dtype)
        return g0 + (g1 - g0) * s, (g1 - g0) * ds

    @contextlib.contextmanager
    def scale_interior(self, scale: InteriorGradientScale):
        """Within the context, the gradients reaching :meth:`interior_parameters` through
        :meth:`gamma_and_derivative` at ``[B]`` times are multiplied by ``scale.scale[i]`` per example (set before
        ``backward``): with scale = 2·L_i this turns the gradient of Σ L_i into that of Σ L_i² for the interior alone,
        in the same backward pass (VDM, Appendix I.2).

        :param InteriorGradientScale scale: holds the per-example factors.
        """
        previous, self._interior_scale = self._interior_scale, scale
        try:
            yield scale
        finally:
            self._interior_scale = previous

    @property
    def learnable(self) -> bool:
        """Whether any parameter requires a gradient (the model then registers the schedule with Pyro)."""
        return any(p.requires_grad for p in self.parameters())

    def alpha_sigma(self, t) -> tuple[Tensor, Tensor]:
        """(α_t, σ_t) = (√sigmoid(−γ(t)), √sigmoid(γ(t))): α_t² + σ_t² = 1.

        :param t: times in [0, 1], a floating tensor or a number.
        :rtype: tuple[torch.Tensor, torch.Tensor]

        >>> alpha, sigma = LinearGamma(-10.0, 5.0).alpha_sigma(0.5)
        >>> round(float(alpha ** 2 + sigma ** 2), 6), round(float(sigma ** 2), 4)  # sigmoid(−2.5)
        (1.0, 0.0759)
        """
        g = self(t)
        return torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()

    def describe(self) -> dict:
        """The current endpoints (floats), for logs.

        >>> LinearGamma().describe()
        {'gamma_0': -13.3, 'gamma_1': 5.0}
        """
        g0, g1 = self.endpoints()
        return {"gamma_0": float(g0.detach()), "gamma_1": float(g1.detach())}


class LinearGamma(GammaSchedule):
    """γ(t) = γ_0 + (γ_1 − γ_0) t, fixed (VDM's ``NoiseSchedule_FixedLinear``).

    :param float gamma_0: γ at t = 0 (the decoder's noise level σ_0² = sigmoid(γ_0)).
    :param float gamma_1: γ at t = 1 (the prior's end: α_1² = sigmoid(−γ_1)); γ_0 < γ_1.

    >>> LinearGamma(-10.0, 6.0)(torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)).tolist()
    [-10.0, -6.0, 6.0]
    """

    def __init__(self, gamma_0: float = GAMMA_MIN, gamma_1: float = GAMMA_MAX) -> None:
        super().__init__()
        self.gamma_0, self.gamma_1 = check_endpoints(gamma_0, gamma_1)

    def endpoints(self, dtype=torch.float64):
        return (torch.tensor(self.gamma_0, dtype=dtype), torch.tensor(self.gamma_1, dtype=dtype))

    def extra_repr(self) -> str:
        return f"gamma_0={self.gamma_0}, gamma_1={self.gamma_1}"


class ScalarGamma(GammaSchedule):
    """γ(t) = γ_0 + (γ_1 − γ_0) t with learned endpoints (VDM's ``NoiseSchedule_Scalar``).

    Parametrised so that the order holds: γ_0 is a parameter, γ_1 = γ_0 + exp(``log_range``).

    :param float gamma_0: the initial γ_0.
    :param float gamma_1: the initial γ_1 > γ_0.

    >>> schedule = ScalarGamma(-10.0, 6.0)
    >>> [round(g.item(), 4) for g in schedule.endpoints()], schedule.learnable, len(schedule.endpoint_parameters())
    ([-10.0, 6.0], True, 2)
    """

    def __init__(self, gamma_0: float = GAMMA_MIN, gamma_1: float = GAMMA_MAX) -> None:
        super().__init__()
        g0, g1 = check_endpoints(gamma_0, gamma_1)
        self.gamma_0 = nn.Parameter(torch.tensor(g0))
        self.log_range = nn.Parameter(torch.tensor(math.log(g1 - g0)))

    def endpoints(self, dtype=torch.float64):
        g0 = self.gamma_0.to(dtype)
        return g0, g0 + torch.exp(self.log_range.to(dtype))

    def endpoint_parameters(self):
        return [self.gamma_0, self.log_range]


class InterpolatedGamma(GammaSchedule):
    """A fixed γ through knots (t_k, γ_k), 0 = t_0 < … < t_{K−1} = 1 and γ_0 < … < γ_{K−1}, exact at the knots.

    ``interpolation="cubic"`` (default): the natural cubic spline (twice continuously differentiable, as
    :mod:`ppl_diffusion.continuous`'s grid map), refused where it is not increasing between two knots;
    ``"linear"``: piecewise linear in γ (always increasing; γ' jumps at the knots). The coefficients are float64
    and fixed (not a buffer: ``.float()`` does not round them).

    :param times: the knots' times, increasing from 0 to 1.
    :param gammas: γ at the knots, increasing.
    :param str interpolation: one of :data:`INTERPOLATIONS`.

    >>> g = InterpolatedGamma([0.0, 0.5, 1.0], [-8.0, -1.0, 4.0], interpolation="linear")
    >>> g(torch.tensor([0.5, 0.75], dtype=torch.float64)).tolist()
    [-1.0, 1.5]
    """

    def __init__(self, times, gammas, interpolation: str = "cubic") -> None:
        super().__init__()
        times, gammas = np.asarray(times, np.float64), np.asarray(gammas, np.float64)
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interpolation!r}; choose one of {INTERPOLATIONS}")
        if times.ndim != 1 or times.shape != gammas.shape or len(times) < 2:
            raise ValueError(f"times and gammas must be 1-D of the same length >= 2, got shapes {times.shape} and "
                             f"{gammas.shape}")
        if not (np.all(np.isfinite(times)) and np.all(np.isfinite(gammas))):
            raise ValueError("times and gammas must be finite")
        if times[0] != 0.0 or times[-1] != 1.0 or np.any(np.diff(times) <= 0):
            raise ValueError(f"times must increase strictly from 0 to 1, got {float(times[0])!r} .. {float(times[-1])!r}"
                             + ("" if np.all(np.diff(times) > 0) else
                                f" (times[{int(np.flatnonzero(np.diff(times) <= 0)[0]) + 1}] does not increase)"))
        bad = np.flatnonzero(np.diff(gammas) <= 0)
        if bad.size:
            k = int(bad[0]) + 1
            raise ValueError(f"a fixed γ must increase, but gammas[{k}] = {float(gammas[k])!r} <= gammas[{k - 1}] = "
                             f"{float(gammas[k - 1])!r} (at t = {times[k]:g}); pass increasing log noise-to-signal ratios")
        check_endpoints(gammas[0], gammas[-1])
        self.interpolation = interpolation
        self.times, self.gammas = times, gammas
        h = np.diff(times)
        if interpolation == "cubic" and len(times) > 2:
            from scipy.interpolate import CubicSpline

            c = CubicSpline(times, gammas, bc_type="natural").c.T  # [K − 1 x 4]: c0 dx³ + c1 dx² + c2 dx + c3
            # γ' on a segment is 3 c0 dx² + 2 c1 dx + c2: its minimum is at an end or at the vertex.
            vertex = np.where(c[:, 0] != 0, -c[:, 1] / (3 * np.where(c[:, 0] != 0, c[:, 0], 1.0)), 0.0)
            points = np.stack([np.zeros_like(h), h, np.clip(vertex, 0.0, h)], 1)
            slope = 3 * c[:, :1] * points ** 2 + 2 * c[:, 1:2] * points + c[:, 2:3]
            low = np.flatnonzero(slope.min(1) <= 0)
            if low.size:
                k = int(low[0])
                raise ValueError(f"the cubic spline of γ decreases between the knots t = {times[k]:g} and "
                                 f"{times[k + 1]:g} (γ' = {slope[k].min():.3g}), so it is not a forward process; "
                                 "pass interpolation='linear' (increasing between increasing knots)")
        else:
            slope = np.diff(gammas) / h
            c = np.stack([np.zeros_like(h), np.zeros_like(h), slope, gammas[:-1]], 1)
        self.coefficients = np.ascontiguousarray(c)

    @classmethod
    def from_noise_schedule(cls, schedule: NoiseSchedule, interpolation: str = "cubic") -> "InterpolatedGamma":
        """The γ of a discrete chain, exact at its steps: γ((t − 1)/(T − 1)) = log((1 − ᾱ_t)/ᾱ_t), t = 1..T
        (:func:`step_times`), so that ``GaussianDiffusion(schedule=this, T=schedule.T, time_input="step")`` is the
        chain of ``schedule`` term by term.

        :param ~ppl_diffusion.schedule.NoiseSchedule schedule: a chain of T >= 2 steps.
        :param str interpolation: one of :data:`INTERPOLATIONS`.

        >>> import numpy as np
        >>> from ppl_diffusion import NoiseSchedule
        >>> s = NoiseSchedule.linear(T=20)
        >>> chain = GammaChain.of(InterpolatedGamma.from_noise_schedule(s), 20)
        >>> bool(np.allclose(chain.alphas_cumprod.numpy(), s.alphas_cumprod))
        True
        """
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if schedule.T < 2:
            raise ValueError(f"a γ through the steps needs T >= 2 (the decoder's and the prior's ends), got T = "
                             f"{schedule.T}")
        ab = schedule.alphas_cumprod
        return cls(np.arange(schedule.T) / (schedule.T - 1), np.log1p(-ab) - np.log(ab), interpolation)

    def endpoints(self, dtype=torch.float64):
        return (torch.tensor(self.gammas[0], dtype=dtype), torch.tensor(self.gammas[-1], dtype=dtype))

    def forward(self, t) -> Tensor:
        t = _as_time(t)
        times = torch.as_tensor(self.times, dtype=t.dtype, device=t.device)
        c = torch.as_tensor(self.coefficients, dtype=t.dtype, device=t.device)
        k = torch.clamp(torch.searchsorted(times, t.detach().contiguous(), right=True) - 1, 0, len(self.times) - 2)
        dx = t - times[k]
        ck = c[k]
        return ((ck[..., 0] * dx + ck[..., 1]) * dx + ck[..., 2]) * dx + ck[..., 3]

    def shape(self, t: Tensor) -> Tensor:
        g0, g1 = self.gammas[0], self.gammas[-1]
        return (self.forward(t) - g0) / (g1 - g0)

    def extra_repr(self) -> str:
        return (f"knots={len(self.times)}, gamma_0={self.gammas[0]:.4g}, gamma_1={self.gammas[-1]:.4g}, "
                f"interpolation={self.interpolation!r}")


class DenseMonotone(nn.Module):
    """``y = x |W|ᵀ + b``: a dense layer with non-negative weights, increasing in every input (VDM's ``DenseMonotone``).

    ``weight`` ``[out x in]`` as ``torch.nn.Linear``'s; its absolute value is used.

    :param int in_features: inputs.
    :param int out_features: outputs.
    :param bool bias: add a learned bias.
    :param float weight_std: the initial weights' standard deviation.

    >>> _ = torch.manual_seed(0)
    >>> layer = DenseMonotone(1, 3)
    >>> bool((layer(torch.ones(1, 1)) >= layer(torch.zeros(1, 1))).all())  # increasing in its input
    True
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, weight_std: float = 0.01) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * weight_std)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """``x |W|ᵀ + b`` for ``x`` ``[... x in]``."""
        y = x @ self.weight.to(x.dtype).abs().T
        return y if self.bias is None else y + self.bias.to(x.dtype)


class MonotoneNetGamma(GammaSchedule):
    """VDM's monotone network as the interior, endpoints fixed or learned (VDM's ``NoiseSchedule_NNet``, normalised).

    The network is VDM's: g̃(t) = w t + l3(φ(l2(2t − 1))) / F with φ(h) = 2 (sigmoid(h) − ½), ``l2`` ``[F x 1]`` and
    ``l3`` ``[1 x F]`` :class:`DenseMonotone` layers (F = ``features``, weights N(0, 0.01²), VDM's init) and w > 0
    (``linear``, its absolute value used); so g̃ increases, starting almost linear. It is normalised to shape(t) =
    (g̃(t) − g̃(0)) / (g̃(1) − g̃(0)), so that γ(0) = γ_0 and γ(1) = γ_1 exactly (VDM's code lets them drift: its
    issue 11). The endpoints are those of :class:`ScalarGamma` (``learn_endpoints=True``) or fixed.

    :param float gamma_0: the (initial) γ_0.
    :param float gamma_1: the (initial) γ_1.
    :param bool learn_endpoints: learn γ_0 and γ_1 (else fixed).
    :param int features: F, the width of the monotone network.

    Example: exact endpoints, increasing in between.

    >>> _ = torch.manual_seed(0)
    >>> schedule = MonotoneNetGamma(-10.0, 5.0, features=16)
    >>> g = schedule(torch.linspace(0, 1, 5, dtype=torch.float64)).detach()
    >>> [round(float(g[0]), 4), round(float(g[-1]), 4)], bool((g.diff() > 0).all())
    ([-10.0, 5.0], True)
    """

    def __init__(self, gamma_0: float = GAMMA_MIN, gamma_1: float = GAMMA_MAX, *, learn_endpoints: bool = True,
                 features: int = 1024) -> None:
        super().__init__()
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ValueError(f"features = {features!r}; pass the width of the monotone network, an integer >= 1")
        self.ends = ScalarGamma(gamma_0, gamma_1) if learn_endpoints else LinearGamma(gamma_0, gamma_1)
        self.features = features
        self.linear = nn.Parameter(torch.ones(()))
        self.l2 = DenseMonotone(1, features)
        self.l3 = DenseMonotone(features, 1, bias=False)

    @property
    def learn_endpoints(self) -> bool:
        """Whether γ_0 and γ_1 are learned."""
        return isinstance(self.ends, ScalarGamma)

    def endpoints(self, dtype=torch.float64):
        return self.ends.endpoints(dtype)

    def raw(self, t: Tensor) -> Tensor:
        """g̃(t), unnormalised."""
        x = t.reshape(-1, 1)
        h = self.l2(2.0 * x - 1.0)
        h = 2.0 * (torch.sigmoid(h) - 0.5)
        out = self.linear.to(t.dtype).abs() * x + self.l3(h) / self.features
        return out.reshape(t.shape)

    def shape(self, t: Tensor) -> Tensor:
        ends = self.raw(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))
        return (self.raw(t) - ends[0]) / (ends[1] - ends[0])

    def interior_parameters(self):
        return [self.linear, *self.l2.parameters(), *self.l3.parameters()]

    def endpoint_parameters(self):
        return self.ends.endpoint_parameters()

    def extra_repr(self) -> str:
        return f"features={self.features}, learn_endpoints={self.learn_endpoints}"


#: The γ schedules by name (``--gamma-schedule``), for :func:`make_gamma_schedule`.
GAMMA_SCHEDULES = {
    "fixed-linear": LinearGamma,
    "fixed-interpolated": InterpolatedGamma,
    "learned-scalar": ScalarGamma,
    "learned-net": MonotoneNetGamma,
}


def make_gamma_schedule(name: str, **kwargs) -> GammaSchedule:
    """A γ schedule by name (:data:`GAMMA_SCHEDULES`); ``"fixed-interpolated"`` with ``schedule=NoiseSchedule``
    reads that schedule at its steps (:meth:`InterpolatedGamma.from_noise_schedule`).

    :param str name: a key of :data:`GAMMA_SCHEDULES`.
    :param kwargs: the schedule's constructor arguments.
    :raises ValueError: for an unknown name, listing the known ones.

    >>> make_gamma_schedule("fixed-linear", gamma_0=-10.0, gamma_1=6.0)
    LinearGamma(gamma_0=-10.0, gamma_1=6.0)
    >>> make_gamma_schedule("learned-scalar").learnable
    True
    """
    if name not in GAMMA_SCHEDULES:
        raise ValueError(f"unknown γ schedule {name!r}; choose one of {sorted(GAMMA_SCHEDULES)}")
    if name == "fixed-interpolated" and "schedule" in kwargs:
        return InterpolatedGamma.from_noise_schedule(**kwargs)
    return GAMMA_SCHEDULES[name](**kwargs)


# ------------------------------------------------------------------------------------------ a model's forward process
TIME_INPUTS = ("step", "gamma")  #: What the net is conditioned on, the step label t or γ(t) rescaled (VDM)
GAMMA_LABEL_SCALE = 1000.0  #: With ``time_input="gamma"`` the label runs over [0, 1000] for γ in ``gamma_range``


def check_forward_process(schedule, T, time_input, gamma_range, variance, *, endpoints=None):
    """A diffusion's (T, time_input, gamma_range), checked against its forward process (both backends): a
    NoiseSchedule (``endpoints`` None: T is its own, the net takes steps) or a γ schedule with current
    ``endpoints`` (γ_0, γ_1) as floats (T = 0 or >= 2; the γ label's range defaults to the endpoints). One-line
    errors."""
    if endpoints is None:
        if T is not None and T != schedule.T:
            raise ValueError(f"T = {T!r} but the NoiseSchedule has T = {schedule.T}; omit T (it is the schedule's)")
        if time_input not in (None, "step"):
            raise ValueError(f"time_input = {time_input!r}: a NoiseSchedule's net is conditioned on the step label "
                             "(time_input='step'); for γ labels pass a γ schedule, "
                             "InterpolatedGamma.from_noise_schedule(schedule)")
        if gamma_range is not None:
            raise ValueError("gamma_range rescales the γ label of a γ schedule; a NoiseSchedule's net takes steps")
        return schedule.T, "step", None
    if T is None:
        raise ValueError("a γ schedule needs T: pass T >= 2 for a chain of T steps or T = 0 for continuous time")
    T = check_chain_T(T)
    time_input = "gamma" if time_input is None else time_input
    if time_input not in TIME_INPUTS:
        raise ValueError(f"unknown time_input {time_input!r}; choose one of {TIME_INPUTS}")
    if T == 0 and time_input == "step":
        raise ValueError("time_input='step' labels the net by the chain's steps, and T = 0 (continuous time) has "
                         "none: pass time_input='gamma' (the net sees γ(t) rescaled) or T >= 2")
    if T == 0 and variance != "beta":
        raise ValueError(f"variance = {variance!r} with T = 0: in continuous time only the decoder has a variance, "
                         "σ_0² = sigmoid(γ_0); pass variance='beta' (its value at the first step)")
    lo, hi = endpoints if gamma_range is None else (float(v) for v in gamma_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"gamma_range = {gamma_range!r}; pass (γ_lo, γ_hi) finite with γ_lo < γ_hi")
    return T, time_input, (float(lo), float(hi))


# ------------------------------------------------------------------------------------------ the discrete chain
def check_chain_T(T) -> int:
    """T of a chain on a γ schedule: 0 (continuous time) or an integer >= 2; a one-line error otherwise.

    :param T: the number of steps.
    :rtype: int

    >>> check_chain_T(0), check_chain_T(10)
    (0, 10)
    >>> check_chain_T(1)
    Traceback (most recent call last):
    ...
    ValueError: T = 1; with a γ schedule pass T >= 2 steps ...
    """
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 0 or T == 1:
        raise ValueError(f"T = {T!r}; with a γ schedule pass T >= 2 steps (latents x_1 at γ_0 … x_T at γ_1) or "
                         "T = 0 for continuous time")
    return int(T)


def step_times(T: int, *, dtype=torch.float64, device=None) -> Tensor:
    """Where the chain's latents sit: t_τ = (t − 1)/(T − 1) for x_t, t = 1..T, ``[T]``.

    :param int T: the chain's steps, >= 2.

    >>> step_times(5).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    return torch.arange(T, dtype=dtype, device=device) / (T - 1)


class GammaChain:
    """The coefficients of the T-step chain of γ at :func:`step_times`, tensors ``[T]`` under the names of
    :class:`~ppl_diffusion.schedule.NoiseSchedule` (so :mod:`ppl_diffusion.closed_forms` reads either), differentiable in
    the schedule's parameters. With s = t − 1 (γ_s = −∞ at t = 1, where x_0 is the data):

    - ᾱ_t = α_t² = sigmoid(−γ_t), 1 − ᾱ_t = σ_t² = sigmoid(γ_t);
    - β_t = σ²_{t|s} = σ_t² − α²_{t|s} σ_s² = σ_t² (−expm1(γ_s − γ_t)), α_t = α²_{t|s} = ᾱ_t/ᾱ_s (β_1 = σ_1²);
    - β̃_t = σ_s² (−expm1(γ_s − γ_t)) (0 at t = 1, clipped log: log β̃_2 there), μ̃_t's coefficients
      α_s (−expm1(γ_s − γ_t)) of x_0 and α_{t|s} σ_s²/σ_t² of x_t;

    each in a form that keeps its precision when neighbouring γ are close (log1mexp for the logs). ``gamma`` holds
    γ_t itself.

    :param torch.Tensor gamma: γ at the T steps, increasing, ``[T]`` (T >= 2); float64 recommended.

    Example: the chain's coefficients are a NoiseSchedule's, built from its own β.

    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> chain = GammaChain.of(LinearGamma(-10.0, 5.0), 10)
    >>> s = NoiseSchedule(chain.betas.numpy())
    >>> chain.T, bool(np.allclose(s.alphas_cumprod, chain.alphas_cumprod.numpy()))
    (10, True)
    >>> bool(np.allclose(s.posterior_variance, chain.posterior_variance.numpy()))
    True
    """

    def __init__(self, gamma: Tensor) -> None:
        if gamma.dim() != 1 or gamma.shape[0] < 2:
            raise ValueError(f"a chain needs γ at T >= 2 steps, got shape {tuple(gamma.shape)}")
        g = gamma
        g_prev = torch.cat([g[:1] - 1.0, g[:-1]])  # a stand-in at t = 1, replaced below (keeps gradients finite)
        first = torch.zeros_like(g, dtype=torch.bool)
        first[0] = True
        log_c = log1mexp(g_prev - g)  # log(−expm1(γ_s − γ_t)) = log(1 − SNR_t/SNR_s)
        log_sigma2, log_alpha2 = torch.nn.functional.logsigmoid(g), torch.nn.functional.logsigmoid(-g)
        log_sigma2_prev = torch.nn.functional.logsigmoid(g_prev)
        log_alpha2_prev = torch.nn.functional.logsigmoid(-g_prev)
        self.gamma = g
        self.T = int(g.shape[0])
        self.alphas_cumprod = torch.exp(log_alpha2)
        self.alphas_cumprod_prev = torch.where(first, torch.ones_like(g), torch.exp(log_alpha2_prev))
        self.sqrt_alphas_cumprod = torch.exp(0.5 * log_alpha2)
        self.sqrt_one_minus_alphas_cumprod = torch.exp(0.5 * log_sigma2)
        self.log_betas = torch.where(first, log_sigma2, log_sigma2 + log_c)
        self.betas = torch.exp(self.log_betas)
        log_alphas = torch.where(first, log_alpha2, log_alpha2 - log_alpha2_prev)
        self.alphas = torch.exp(log_alphas)
        self.sqrt_alphas = torch.exp(0.5 * log_alphas)
        log_post = log_sigma2_prev + log_c
        self.posterior_variance = torch.where(first, torch.zeros_like(g), torch.exp(log_post))
        self.posterior_log_variance_clipped = torch.where(first, log_post[1], log_post)
        self.posterior_mean_coef1 = torch.where(first, torch.ones_like(g), torch.exp(0.5 * log_alpha2_prev + log_c))
        self.posterior_mean_coef2 = torch.where(
            first, torch.zeros_like(g), torch.exp(0.5 * log_alphas + log_sigma2_prev - log_sigma2))

    @classmethod
    def of(cls, schedule: GammaSchedule, T: int, *, device=None) -> "GammaChain":
        """The chain of ``schedule`` with ``T`` steps, γ evaluated in float64 at :func:`step_times`.

        :param ~ppl_diffusion.gamma.GammaSchedule schedule: the γ schedule.
        :param int T: the chain's steps, >= 2.
        :param device: where the coefficients live.
        """
        return cls(schedule(step_times(T, device=device)))

    def __repr__(self) -> str:
        return f"GammaChain(T={self.T}, gamma_1st={float(self.gamma[0]):.4g}, gamma_T={float(self.gamma[-1]):.4g})"


__all__ = ["CONTINUOUS_SAMPLE_STEPS", "GAMMA_LABEL_SCALE", "GAMMA_MAX", "GAMMA_MIN", "GAMMA_SCHEDULES", "INTERPOLATIONS",
           "TIME_INPUTS", "DenseMonotone", "GammaChain", "GammaSchedule", "InteriorGradientScale", "InterpolatedGamma",
           "LinearGamma", "MonotoneNetGamma", "ScalarGamma", "check_chain_T", "make_gamma_schedule", "step_times"]
