"""Continuous time for the discrete chain: the VP-SDE whose marginals are the chain's q(x_t|x_0).

The forward chain of T steps has the marginals of Statement 1, q(x_t|x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I). The
variance-preserving SDE of Song et al. (2021, §3.4) on s ∈ [0, 1],

    dx = −½ β(s) x ds + √β(s) dW,       ᾱ(s) = exp(−∫_0^s β(u) du),

has the marginals q_s(x_s|x_0) = N(√ᾱ(s) x_0, (1 − ᾱ(s)) I): Statement 1 with ᾱ_t replaced by ᾱ(s). A
*continuous-time map* says which ᾱ(s) stands for the chain and at which step label t(s) the denoiser, trained
at the integer steps 1..T, is called. Then the score of q_s and the denoiser are related as in the chain's
training target (x_t = √ᾱ_t x_0 + σ_t ε, so ∇ log q(x_t|x_0) = −ε / σ_t):

    s_θ(x, s) = −ε̂_θ(x, t(s)) / σ(s),    σ(s) = √(1 − ᾱ(s)),

and the probability-flow ODE (Song et al. 2021, eq. 13) shares every marginal with the SDE:

    dx/ds = f(x, s) = −½ β(s) [x + s_θ(x, s)] = −½ β(s) [x − ε̂_θ(x, t(s)) / σ(s)].

Two maps (:class:`~ppl_diffusion.continuous.ContinuousTime`):

``"grid"`` (default, any schedule)
    t(s) = T·s on s ∈ [1/T, 1], and the VE noise level σ̃(s) = √((1 − ᾱ(s)) / ᾱ(s)) interpolated in t through the
    chain's steps by a natural cubic spline of log σ̃_t (twice continuously differentiable). It equals the chain at
    every step, ᾱ(k/T) = ᾱ_k for k = 1..T (linear, cosine with its clipped last β, any β), so the denoiser is
    called at step t exactly where it was trained, with the noise level it was trained at, and between steps at
    the interpolated one. β(s) = −d log ᾱ/ds = 2 T (1 − ᾱ(s)) · d log σ̃/dt is then continuous, which an adaptive
    solver needs: with a kink at each of the T steps (the piecewise-linear map below) dopri5 at rtol = 1e-8 takes
    ~20,000 evaluations and still misses the exact Gaussian log-density by 2e-3 nats. The small-time end is
    s = 1/T, the first trained step (σ(1/T)² = β_1): below it the net was never trained, so ``eps`` must be
    ≥ 1/T.
``"grid-linear"`` (k-diffusion's)
    as ``"grid"`` but log σ̃ piecewise linear in t between the steps: k-diffusion's ``DiscreteSchedule``
    (``quantize=False``) in VP coordinates, for comparing with its ``log_likelihood`` on the same net.
``"vp-linear"`` (score_sde's, linear schedules only)
    β(s) = β_min + s (β_max − β_min) with β_min = T β_1, β_max = T β_T (DDPM's 1e-4..0.02 at T = 1000 give
    score_sde's 0.1 and 20), ᾱ(s) = exp(−β_min s − ½ (β_max − β_min) s²), and score_sde's label for DDPM's nets
    t = 999 s in their 0-based steps, i.e. t(s) = 1 + (T − 1) s in ours. It is smooth but matches the chain only
    to first order in β (log(1 − β_t) ≈ −β_t and a Riemann sum): at T = 1000, log ᾱ differs by up to 0.07 at
    the last step. The small-time end is score_sde's ε = 1e-5 (below the first trained noise level: the net
    is extrapolated there, as in score_sde).

The cosine schedule's own ᾱ(s) = f(s)/f(0) is not offered as a map: it reaches 0 at s = 1, where β(s) = ∞ and the
ODE is singular; ``"grid"`` equals it at every step but the last (where the chain clips β_T at 0.999) and
interpolates between steps.

``"gamma"`` (a γ-schedule model, :class:`~ppl_diffusion.continuous.GammaTime`; the only map there)
    s is γ's own time t ∈ [0, 1]: ᾱ(s) = sigmoid(−γ(s)), σ²(s) = sigmoid(γ(s)), and β(s) = −d log ᾱ/ds =
    d/ds log(1 + e^{γ(s)}) = σ²(s) γ'(s) (γ' by autodiff); the net is called as it was trained, on γ(s) rescaled
    (``time_input="gamma"``) or at the step label 1 + (T − 1) s (``"step"``, x_t at (t − 1)/(T − 1)). Exact at every
    time, at finite T and in continuous time alike; the small-time end is s = 0, γ_0, where the decoder's latent
    x_1 sits (the first noise level the net was trained at), so ``eps`` >= 0.

What the ODE does not use. The reverse variances σ_t² (fixed, learned or fitted) and the decoder p(x_0|x_1) do
not enter the probability flow: only ε̂ and the prior p(x_T) (the density at s = 1) do. A learned-variance net's
ε̂ half is used. A respaced model has no net between its kept steps: use the model it was respaced from.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .schedule import NoiseSchedule

__all__ = ["MAPS", "ContinuousTime", "GammaTime", "time_of"]

#: The continuous-time maps of a NoiseSchedule by name (``--time-map``); a γ-schedule model's map is ``"gamma"``.
MAPS = ("grid", "grid-linear", "vp-linear")


class ContinuousTime:
    r"""ᾱ(s), β(s) and the step label t(s) of a continuous-time map of a
    :class:`~ppl_diffusion.schedule.NoiseSchedule` (see the module): the VP-SDE

    .. math::

        dx = -\tfrac12 \beta(s)\, x\, ds + \sqrt{\beta(s)}\, dW, \qquad
        \bar\alpha(s) = \exp\Big(-\int_0^s \beta(u)\, du\Big),

    whose marginals q_s(x_s|x_0) = N(√ᾱ(s) x_0, (1 − ᾱ(s)) I) stand for the chain's.

    All definitions are float64 NumPy here (:meth:`alpha_bar`, :meth:`beta`, :meth:`step`); the backends evaluate
    the same formulas on tensors from the attribute ``spline`` (the grid maps: log σ̃ on step segment [k, k + 1] is
    ``((c0 w + c1) w + c2) w + c3`` with ``spline[k − 1] = (c0, c1, c2, c3)`` and w = t − k) or from
    ``beta_min``, ``beta_max`` (``"vp-linear"``).

    :param ~ppl_diffusion.schedule.NoiseSchedule schedule: the discrete chain.
    :param str kind: ``"grid"``, ``"grid-linear"`` or ``"vp-linear"``.

    Example: the grid map equals the chain at every step, and β(s) = −d log ᾱ/ds.

    >>> from ppl_diffusion import NoiseSchedule
    >>> ct = ContinuousTime(NoiseSchedule.linear(T=20))
    >>> bool(np.isclose(ct.alpha_bar(0.5), ct.schedule.alphas_cumprod[9])), float(ct.step(0.5))
    (True, 10.0)
    >>> s, h = 0.43, 1e-6
    >>> fd = -(np.log(ct.alpha_bar(s + h)) - np.log(ct.alpha_bar(s - h))) / (2 * h)
    >>> bool(np.isclose(ct.beta(s), fd, rtol=1e-6))
    True
    """

    def __init__(self, schedule: NoiseSchedule, kind: str = "grid") -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if kind not in MAPS:
            raise ValueError(f"unknown continuous-time map {kind!r}; choose one of {MAPS}")
        self.schedule, self.kind, self.T = schedule, kind, schedule.T
        if kind.startswith("grid"):
            if self.T < 2:
                raise ValueError(f"the grid maps interpolate between steps and need T >= 2, got T = {self.T}")
            ab = schedule.alphas_cumprod
            self.log_sigmas = 0.5 * (np.log1p(-ab) - np.log(ab))  # log σ̃_k, k = 1..T, float64[T]
            slope = np.diff(self.log_sigmas)
            if kind == "grid":
                from scipy.interpolate import CubicSpline

                c = CubicSpline(np.arange(1.0, self.T + 1), self.log_sigmas, bc_type="natural").c  # [4 x (T − 1)]
                self.spline = np.ascontiguousarray(c.T)
            else:
                z = np.zeros_like(slope)
                self.spline = np.stack([z, z, slope, self.log_sigmas[:-1]], 1)
            self.s_min = 1.0 / self.T
        else:
            betas = schedule.betas
            ref = np.linspace(betas[0], betas[-1], self.T)
            if not np.allclose(betas, ref, rtol=1e-10, atol=0.0):
                raise ValueError("the vp-linear map (score_sde's) is for a linear beta schedule; this schedule is not "
                                 "linear: use the grid map (--time-map grid)")
            self.beta_min, self.beta_max = self.T * float(betas[0]), self.T * float(betas[-1])
            self.s_min = 0.0

    @classmethod
    def make(cls, schedule: NoiseSchedule, kind: "str | ContinuousTime" = "grid") -> "ContinuousTime":
        """``kind`` itself if it is a :class:`~ppl_diffusion.continuous.ContinuousTime` (checked to be of ``schedule``), else the named map.

        :param ~ppl_diffusion.schedule.NoiseSchedule schedule: the discrete chain.
        :param kind: a name in :data:`MAPS` or a :class:`~ppl_diffusion.continuous.ContinuousTime`.

        >>> from ppl_diffusion import NoiseSchedule
        >>> ContinuousTime.make(NoiseSchedule.linear(T=20), "vp-linear")
        ContinuousTime(NoiseSchedule(T=20, beta_1=0.005, beta_T=0.999), kind='vp-linear')
        """
        if isinstance(kind, ContinuousTime):
            if kind.schedule is not schedule and not np.array_equal(kind.schedule.betas, schedule.betas):
                raise ValueError("the ContinuousTime given is of another schedule than the diffusion's")
            return kind
        return cls(schedule, kind)

    @property
    def default_eps(self) -> float:
        """The default small-time end, the first step 1/T (grid maps) or score_sde's 1e-5 (vp-linear)."""
        return self.s_min if self.kind != "vp-linear" else 1e-5

    def check_eps(self, eps) -> float:
        """``eps`` (``None``: :attr:`default_eps`) checked to lie in [``s_min``, 1); one-line error if not.

        :param eps: the small-time end of the ODE, or ``None``.

        >>> from ppl_diffusion import NoiseSchedule
        >>> ct = ContinuousTime(NoiseSchedule.linear(T=20))
        >>> ct.check_eps(None), ct.check_eps(0.1)
        (0.05, 0.1)
        >>> ct.check_eps(0.01)
        Traceback (most recent call last):
        ...
        ValueError: eps = 0.01 is outside [1/T = 0.05 (the first step the net was trained at), 1) ...
        """
        if eps is None:
            return self.default_eps
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps):
            raise ValueError(f"eps = {eps!r}; pass the small-time end of the ODE as a number in (0, 1) (--eps)")
        if not self.s_min <= eps < 1 or eps <= 0:
            low = f"1/T = {self.s_min:g} (the first step the net was trained at)" if self.s_min else "0"
            raise ValueError(f"eps = {eps!r} is outside [{low}, 1) for the {self.kind} map; pass eps >= "
                             f"{max(self.s_min, 0):g} and < 1 (--eps)")
        return float(eps)

    # ---------------------------------------------------------------- float64 reference formulas
    def step(self, s):
        """t(s): the (non-integer) step label the denoiser is called at: T s (grid maps), 1 + (T − 1) s (vp-linear).

        :param s: times in [0, 1] (a number or an array).
        """
        s = np.asarray(s, np.float64)
        return self.T * s if self.kind != "vp-linear" else 1.0 + (self.T - 1) * s

    def _grid_log_sigma(self, s):
        t = np.clip(self.T * np.asarray(s, np.float64), 1.0, float(self.T))
        k = np.clip(np.floor(t).astype(np.int64), 1, self.T - 1)  # segment [k, k + 1]
        w = t - k
        c0, c1, c2, c3 = np.moveaxis(self.spline[k - 1], -1, 0)
        return ((c0 * w + c1) * w + c2) * w + c3, (3.0 * c0 * w + 2.0 * c1) * w + c2  # log σ̃(s), d log σ̃ / dt

    def alpha_bar(self, s):
        """ᾱ(s), float64, of the shape of ``s``.

        :param s: times in [0, 1] (a number or an array).
        """
        if self.kind != "vp-linear":
            log_sigma, _ = self._grid_log_sigma(s)
            return 1.0 / (1.0 + np.exp(2.0 * log_sigma))
        s = np.asarray(s, np.float64)
        return np.exp(-self.beta_min * s - 0.5 * (self.beta_max - self.beta_min) * s ** 2)

    def beta(self, s):
        """β(s) = −d log ᾱ(s) / ds, float64 (grid: the right derivative at a step).

        :param s: times in [0, 1] (a number or an array).
        """
        if self.kind != "vp-linear":
            log_sigma, slope = self._grid_log_sigma(s)
            return 2.0 * self.T * slope / (1.0 + np.exp(-2.0 * log_sigma))
        return self.beta_min + np.asarray(s, np.float64) * (self.beta_max - self.beta_min)

    def __repr__(self) -> str:
        return f"ContinuousTime({self.schedule!r}, kind={self.kind!r})"


class GammaTime:
    r"""The continuous time of a γ-schedule model (the map ``"gamma"`` of the module): s is γ's own t, ᾱ(s) =
    sigmoid(−γ(s)), β(s) = σ²(s) γ'(s), the net's label as the model conditions it. The same interface as
    :class:`~ppl_diffusion.continuous.ContinuousTime` (:meth:`alpha_bar`, :meth:`beta`, :meth:`step`, :meth:`check_eps`), float64 NumPy from
    the schedule's float64 evaluation.

    .. math::

        \bar\alpha(s) = \operatorname{sigmoid}(-\gamma(s)), \qquad
        \beta(s) = -\frac{d \log \bar\alpha(s)}{ds} = \operatorname{sigmoid}(\gamma(s))\, \gamma'(s).

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` with a γ schedule (T >= 2 or T = 0).

    Example: a linear γ from −10 to 5; the net's label runs from 0 to 1000.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser
    >>> from ppl_diffusion.gamma import LinearGamma
    >>> d = GaussianDiffusion(schedule=LinearGamma(-10.0, 5.0), T=0, event_shape=(2,),
    ...                       denoiser=MLPDenoiser(2, width=16, depth=1))
    >>> gt = GammaTime(d)
    >>> round(float(gt.alpha_bar(1.0)), 6) == round(1 / (1 + math.exp(5.0)), 6), gt.step(np.array([0.0, 1.0])).tolist()
    (True, [0.0, 1000.0])
    >>> round(float(gt.beta(0.5)), 4) == round(15 / (1 + math.exp(2.5)), 4)  # sigmoid(γ) γ' at γ(½) = −2.5
    True
    """

    kind = "gamma"
    s_min = 0.0
    default_eps = 0.0

    def __init__(self, diffusion) -> None:
        if not getattr(diffusion, "gamma_schedule", False):
            raise TypeError("GammaTime is the time of a γ-schedule model; a NoiseSchedule's is ContinuousTime")
        self.diffusion, self.schedule, self.T = diffusion, diffusion.schedule, diffusion.T

    def check_eps(self, eps) -> float:
        """``eps`` (``None``: 0, γ_0) checked to lie in [0, 1); one-line error if not.

        :param eps: the small-time end of the ODE, or ``None``.
        """
        if eps is None:
            return self.default_eps
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or not 0 <= eps < 1:
            raise ValueError(f"eps = {eps!r}; the ODE of a γ schedule runs on its own time s in [0, 1]: pass eps >= 0 "
                             "(γ_0, the default) and < 1 (--eps)")
        return float(eps)

    def _gamma(self, s):
        import torch

        with torch.no_grad():
            g, dg = self.schedule.gamma_and_derivative(torch.as_tensor(np.asarray(s, np.float64)))
        return g.double().cpu().numpy(), dg.double().cpu().numpy()

    def alpha_bar(self, s):
        """ᾱ(s) = sigmoid(−γ(s)), float64.

        :param s: times in [0, 1] (a number or an array).
        """
        return 1.0 / (1.0 + np.exp(self._gamma(s)[0]))

    def beta(self, s):
        """β(s) = sigmoid(γ(s)) γ'(s), float64.

        :param s: times in [0, 1] (a number or an array).
        """
        g, dg = self._gamma(s)
        return dg / (1.0 + np.exp(-g))

    def step(self, s):
        """The net's label at s: γ(s) rescaled (``time_input="gamma"``) or the step 1 + (T − 1) s (``"step"``).

        :param s: times in [0, 1] (a number or an array).
        """
        d = self.diffusion
        if d.time_input == "step":
            return 1.0 + (self.T - 1) * np.asarray(s, np.float64)
        lo, hi = d.gamma_range
        return (self._gamma(s)[0] - lo) * (1000.0 / (hi - lo))

    def __repr__(self) -> str:
        return f"GammaTime({type(self.schedule).__name__}, T={self.T}, time_input={self.diffusion.time_input!r})"


def time_of(diffusion, time_map=None):
    """The continuous time of ``diffusion`` for the ODE: a :class:`~ppl_diffusion.continuous.ContinuousTime` of its NoiseSchedule by
    ``time_map`` (``None``: ``"grid"``; or an instance), or for a γ schedule its :class:`~ppl_diffusion.continuous.GammaTime` (``time_map``
    ``None`` or ``"gamma"``). One-line errors for a map that does not fit the model.

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion`.
    :param time_map: a name in :data:`MAPS`, ``"gamma"``, an instance, or ``None``.
    :rtype: ~ppl_diffusion.continuous.ContinuousTime or ~ppl_diffusion.continuous.GammaTime

    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> d = GaussianDiffusion(schedule=NoiseSchedule.linear(T=20), denoiser=MLPDenoiser(2, width=16, depth=1),
    ...                       event_shape=(2,))
    >>> time_of(d).kind, time_of(d, "grid-linear").kind
    ('grid', 'grid-linear')
    """
    if isinstance(time_map, (ContinuousTime, GammaTime)):
        if isinstance(time_map, GammaTime) != bool(getattr(diffusion, "gamma_schedule", False)):
            raise ValueError(f"the time map {time_map!r} is not of this model's forward process")
        return time_map if isinstance(time_map, GammaTime) else ContinuousTime.make(diffusion.schedule, time_map)
    if getattr(diffusion, "gamma_schedule", False):
        if time_map not in (None, "gamma"):
            raise ValueError(f"time map {time_map!r} with a γ-schedule model: its ODE runs on γ's own time (the map "
                             "'gamma', exact at every time); drop --time-map")
        return GammaTime(diffusion)
    if time_map == "gamma":
        raise ValueError("time map 'gamma' is a γ-schedule model's; this model's forward process is a NoiseSchedule: "
                         f"choose one of {MAPS} (--time-map)")
    return ContinuousTime.make(diffusion.schedule, "grid" if time_map is None else time_map)
