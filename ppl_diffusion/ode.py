"""The probability-flow ODE of a trained diffusion: exact log-likelihood (a continuous normalizing flow) and
deterministic sampling, solved with torchdiffeq.

With the continuous-time map of :mod:`ppl_diffusion.continuous` (ᾱ(s), β(s), step label t(s)), the ODE

    dx/ds = f(x, s) = −½ β(s) [x − ε̂_θ(x, t(s)) / σ(s)],     s ∈ [ε, 1],

carries the model's density p_1 = p(x_T) at s = 1 to a density p_ε at s = ε (a continuous normalizing flow,
Chen et al. 2018). By the instantaneous change of variables, d log p_s(x(s))/ds = −tr(∂f/∂x), so

    log p_ε(x) = log p_1(x(1)) + ∫_ε^1 tr(∂f/∂x)(x(s), s) ds,        x(ε) = x,

solved forward as one ODE in the state [x, ∫ tr] (Grathwohl et al. 2019, FFJORD). p_ε is a normalized density
for any ε, so this is an exact log-likelihood of a proper model up to the solver's tolerance, where the ELBO is
only a bound (Song et al. 2021, §4.3). The trace is

* ``"exact"``: Σ_i ∂f_i/∂x_i, by one call of the net on D copies of each example and one vector-Jacobian product
  (for D up to a few hundred);
* ``"hutchinson"``: Hutchinson–Skilling's unbiased vᵀ(∂f/∂x)v averaged over K probes v, Rademacher (signs) or
  Gaussian, drawn once per example and fixed along its trajectory: K vector-Jacobian products per evaluation.
  With ``seed`` the probes are counter-based (:mod:`ppl_diffusion.noise`, stream ``PROBE``: probe k of example
  i depends on (seed, i, k) alone, the same numbers on the JAX backend).

Step control. The adaptive solver (``dopri5`` by default, any torchdiffeq method) controls, per step, the largest
over the batch of each example's RMS error ratio, so every example meets ``rtol``/``atol`` (the batch shares
the steps; results depend on the batching only within the tolerance). NFE, the number of evaluations of the
augmented vector field, is counted and returned.

Gradients. ``adjoint=False`` backpropagates through the solver's operations; ``adjoint=True`` solves the
adjoint ODE backwards (``torchdiffeq.odeint_adjoint``, with the seminorm of Kidger et al. 2021): O(1) memory
in the number of steps. Both give the gradient of the computed value up to the solver's tolerance.
:class:`ProbabilityFlow` wraps all this as a Pyro distribution.

Example::

    from ppl_diffusion.ode import log_likelihood, sample_ode

    res = log_likelihood(diffusion, x, trace="hutchinson", probes=1, seed=0)   # res.log_prob: nats, [B]
    x0, nfe = sample_ode(diffusion, n=16, seed=0)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor, nn

from . import noise
from .continuous import ContinuousTime, GammaTime, time_of
from .gamma import CONTINUOUS_SAMPLE_STEPS
from .priors import prior_draws

TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


def _torchdiffeq():
    try:
        import torchdiffeq
    except ImportError:
        raise ImportError("the probability-flow ODE needs torchdiffeq: "
                          "(pip install torchdiffeq)") from None
    return torchdiffeq


def check_options(*, trace: str = "exact", probes: int = 1, probe: str = "rademacher", rtol: float = 1e-5,
                  atol: float = 1e-5) -> None:
    """One-line errors for a bad trace, probe count or kind, or tolerance (the CLI's flags named)."""
    if trace not in TRACES:
        raise ValueError(f"unknown trace {trace!r}; choose one of {TRACES} (--trace)")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose one of {PROBES} (--probe)")
    if isinstance(probes, bool) or not isinstance(probes, numbers.Integral) or probes < 1:
        raise ValueError(f"probes = {probes!r}; pass a positive number of Hutchinson probes (--probes)")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} = {value!r}; pass a positive finite tolerance, e.g. 1e-5 (--{name})")


def check_model(diffusion) -> None:
    """The ODE needs the original net at every step: a respaced model is refused with one line."""
    from .respace import RespacedDenoiser

    if isinstance(getattr(diffusion, "denoiser", None), RespacedDenoiser):
        raise ValueError("this diffusion is respaced: its net exists only at the kept steps, the ODE calls it "
                         "between steps; pass the model it was respaced from")


class TimeCoefficients(nn.Module):
    """ᾱ(s)-side coefficients of a :class:`~ppl_diffusion.continuous.ContinuousTime` on tensors: ``(t, σ, β)`` at a
    0-d ``s``, computed in float64 and cast to ``dtype`` (the formulas of the NumPy reference, which tests them)."""

    def __init__(self, ct: ContinuousTime) -> None:
        super().__init__()
        self.ct = ct
        if ct.kind != "vp-linear":
            self.register_buffer("spline", torch.as_tensor(ct.spline, dtype=torch.float64), persistent=False)

    def forward(self, s: Tensor, dtype) -> tuple[Tensor, Tensor, Tensor]:
        ct, s = self.ct, s.to(torch.float64)
        if ct.kind != "vp-linear":
            t = ct.T * s
            tc = t.clamp(1.0, float(ct.T))
            k = tc.floor().long().clamp(1, ct.T - 1)  # segment [k, k + 1] of the spline
            c0, c1, c2, c3 = self.spline[k - 1].unbind(-1)
            w = tc - k
            log_sigma = ((c0 * w + c1) * w + c2) * w + c3
            var = torch.sigmoid(2.0 * log_sigma)  # 1 − ᾱ = σ̃² / (1 + σ̃²)
            beta = 2.0 * ct.T * ((3.0 * c0 * w + 2.0 * c1) * w + c2) * var
        else:
            t = 1.0 + (ct.T - 1) * s
            log_ab = -ct.beta_min * s - 0.5 * (ct.beta_max - ct.beta_min) * s ** 2
            var = -torch.expm1(log_ab)
            beta = ct.beta_min + s * (ct.beta_max - ct.beta_min)
        return t.to(dtype), var.sqrt().to(dtype), beta.to(dtype)


class GammaTimeCoefficients(nn.Module):
    """The ``(label, σ, β)`` of a γ-schedule model at a 0-d ``s`` (:class:`~ppl_diffusion.continuous.GammaTime`): γ and
    γ' of its schedule in float64, σ² = sigmoid(γ), β = σ² γ', the label γ rescaled (``time_input="gamma"``) or the
    step 1 + (T − 1) s; cast to ``dtype``."""

    def __init__(self, ct: GammaTime) -> None:
        super().__init__()
        self.ct = ct

    def forward(self, s: Tensor, dtype) -> tuple[Tensor, Tensor, Tensor]:
        d = self.ct.diffusion
        s = s.to(torch.float64)
        gamma, dgamma = d.schedule.gamma_and_derivative(s)
        var = torch.sigmoid(gamma)
        label = d.gamma_label(gamma) if d.time_input == "gamma" else 1.0 + (d.T - 1) * s
        return label.to(dtype), var.sqrt().to(dtype), (var * dgamma).to(dtype)


def time_coefficients(ct: ContinuousTime | GammaTime) -> nn.Module:
    """The tensor coefficients of a continuous-time map: :class:`TimeCoefficients` or :class:`GammaTimeCoefficients`."""
    return GammaTimeCoefficients(ct) if isinstance(ct, GammaTime) else TimeCoefficients(ct)


def drift(diffusion, coef: nn.Module, x: Tensor, s: Tensor) -> Tensor:
    """f(x, s) = −½ β(s) [x − ε̂_θ(x, t(s)) / σ(s)] ``[B x ...]`` (the ε̂ half of a learned-variance net), the net called
    at the label t(s) of the map (``coef``: :func:`time_coefficients`)."""
    t, sigma, beta = coef(s, x.dtype)
    eps = diffusion.denoiser_output(x, None, label=t.expand(x.shape[0]))[0]
    return -0.5 * beta * (x - eps / sigma)


def make_probes(diffusion, n: int, *, probes: int, probe: str, seed: int | None, indices, device, dtype) -> Tensor:
    """Hutchinson probes ``[n x K x *event]``: counter-based for ``seed`` (probe k of example ``indices[i]``), else
    from torch's generator; Rademacher probes are the signs of the normals."""
    shape = tuple(diffusion.event_shape)
    if seed is None:
        z = torch.randn((n, probes, *shape), device=device, dtype=dtype)
    else:
        from .infer.bound import check_indices

        index = check_indices(indices, n)
        z = noise.normal(seed, index[:, None], np.arange(probes)[None, :], shape, stream=noise.PROBE,
                         dtype=np.float64)
        z = torch.from_numpy(z).to(device=device, dtype=dtype)
    return torch.where(z >= 0, 1.0, -1.0).to(dtype) if probe == "rademacher" else z


class AugmentedDynamics(nn.Module):
    """The vector field of the state ``[B x (D + 1)]`` = [x flattened, ∫ tr]: ``(f(x, s), tr ∂f/∂x)``, with the
    exact trace or Hutchinson's on ``probe_values`` ``[B x K x *event]``. Counts its calls in ``nfe``.

    The divergence's graph is kept (``create_graph``) when gradients are being recorded at the call (direct
    backpropagation, and the adjoint's backward pass), so log p is differentiable in θ and x."""

    def __init__(self, diffusion, coef: TimeCoefficients, trace: str, probe_values: Tensor | None) -> None:
        super().__init__()
        self.diffusion, self.coef, self.trace, self.probe_values = diffusion, coef, trace, probe_values
        self.event_shape = tuple(diffusion.event_shape)
        self.nfe = 0

    def forward(self, s: Tensor, state: Tensor) -> Tensor:
        self.nfe += 1
        create = torch.is_grad_enabled()
        b, d = state.shape[0], state.shape[1] - 1
        x = state[:, :d].reshape(b, *self.event_shape)
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            if self.trace == "exact":
                # D copies of each example, copy i's output i differentiated w.r.t. copy i's input.
                rep = x.reshape(b, 1, d).expand(b, d, d).reshape(b * d, *self.event_shape)
                f_rep = drift(self.diffusion, self.coef, rep, s).reshape(b, d, d)
                diag = torch.eye(d, dtype=state.dtype, device=state.device)
                (g,) = torch.autograd.grad((f_rep * diag).sum(), rep, create_graph=create)
                div = (g.reshape(b, d, d) * diag).sum((1, 2))
                f = f_rep[:, 0]
            else:
                f = drift(self.diffusion, self.coef, x, s).reshape(b, d)
                v = self.probe_values.reshape(b, -1, d)
                div = 0.0
                for k in range(v.shape[1]):
                    (g,) = torch.autograd.grad(f, x, v[:, k], create_graph=create,  # f is [B x D]
                                               retain_graph=True)
                    div = div + (g.reshape(b, d) * v[:, k]).sum(1)
                div = div / v.shape[1]
        if not create:
            f, div = f.detach(), div.detach()
        return torch.cat([f, div[:, None]], 1)


def _per_example_norm(err: Tensor) -> Tensor:
    """The step controller's norm: the largest over the batch of each example's RMS (scaled) error."""
    return err.reshape(err.shape[0], -1).pow(2).mean(1).sqrt().max() if err.dim() > 1 else err.pow(2).mean().sqrt()


@dataclass
class ODEResult:
    """What :func:`log_likelihood` returns (tensors on the data's device).

    :param torch.Tensor log_prob: ``[B]`` log p_ε(x) in nats, ``prior_log_prob + delta``.
    :param torch.Tensor prior_log_prob: ``[B]`` log p_1(x(1)).
    :param torch.Tensor delta: ``[B]`` ∫_ε^1 tr(∂f/∂x) ds.
    :param torch.Tensor x1: ``[B] + event_shape``, the latent x(1).
    :param int nfe: evaluations of the vector field (forward solve).
    :param float eps: the small-time end ε.

    Example: what :func:`~ppl_diffusion.ode.log_likelihood` returns, for an untrained net.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> from ppl_diffusion.ode import log_likelihood
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> res = log_likelihood(diffusion, torch.rand(4, 2) * 2 - 1, time_map="vp-linear", rtol=1e-3, atol=1e-3)
    >>> res.log_prob.shape, res.x1.shape, res.nfe > 0, 0 < res.eps < 0.01
    (torch.Size([4]), torch.Size([4, 2]), True, True)
    >>> torch.allclose(res.log_prob, res.prior_log_prob + res.delta)
    True
    """

    log_prob: Tensor  # [B] log p_ε(x) in nats
    prior_log_prob: Tensor  # [B] log p_1(x(1))
    delta: Tensor  # [B] ∫_ε^1 tr(∂f/∂x) ds
    x1: Tensor  # [B x ...] the latent x(1)
    nfe: int  # evaluations of the vector field (forward solve)
    eps: float  # the small-time end ε


def log_likelihood(diffusion, x: Tensor, *, trace: str = "exact", probes: int = 1, probe: str = "rademacher",
                   probe_values: Tensor | None = None, rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                   eps: float | None = None, time_map=None, adjoint: bool = False, seed: int | None = None,
                   indices=None) -> ODEResult:
    r"""log p_ε(x) of the probability-flow ODE for a batch ``x`` ``[B x *event_shape]`` (see the module).

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` (its ε̂ and its prior p(x_T) are used).
    :param str trace: ``"exact"`` or ``"hutchinson"``.
    :param int probes: K, Hutchinson probes per example; ``probe`` ``"rademacher"`` or ``"gaussian"``.
    :param probe_values: explicit probes ``[B x K x *event]`` (overrides ``probes``, ``probe`` and ``seed``).
    :param float rtol: the adaptive solver's relative tolerance.
    :param float atol: its absolute tolerance.
    :param float eps: the small-time end (default: the map's, 1/T for ``"grid"``, 0 (γ_0) for ``"gamma"``).
    :param time_map: ``"grid"`` (the default for a NoiseSchedule), ``"grid-linear"``, ``"vp-linear"`` or a
        :class:`~ppl_diffusion.continuous.ContinuousTime`; a γ-schedule model's is ``"gamma"`` (its own time, the
        default, :class:`~ppl_diffusion.continuous.GammaTime`).
    :param bool adjoint: gradients by the adjoint method instead of backpropagation through the solver.
    :param int seed: counter-based probes for (seed, ``indices[i]``, k) (default ``None``: torch's generator).
    :param indices: the examples' indices ``[B]`` for the counter-based probes (default 0..B − 1).
    :param str method: a torchdiffeq method (default ``"dopri5"``).
    :rtype: ODEResult

    .. math:: \log p_\varepsilon(x) = \log p_1(x(1)) + \int_\varepsilon^1 \operatorname{tr}
              \frac{\partial f}{\partial x}(x(s), s)\, ds

    Example: an untrained net (ε̂ = 0) makes the flow linear, f = −½ β(s) x, so x(1) = x · exp(δ / D).

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.ode import log_likelihood
    >>> res = log_likelihood(diffusion, x0, time_map="vp-linear", rtol=1e-3, atol=1e-3)
    >>> res.log_prob.shape, res.x1.shape
    (torch.Size([4]), torch.Size([4, 2]))
    >>> torch.allclose(res.x1, x0 * (res.delta / 2).exp()[:, None], atol=1e-3)
    True
    """
    check_options(trace=trace, probes=probes, probe=probe, rtol=rtol, atol=atol)
    check_model(diffusion)
    x = diffusion.check_data(x, bounded=False)  # a density on R^D: dequantized pixels reach ±(1 + 1/255)
    ct = time_of(diffusion, time_map)
    eps = ct.check_eps(eps)
    coef = time_coefficients(ct).to(x.device)
    b, d = x.shape[0], diffusion.num_dims
    if trace == "hutchinson" and probe_values is None:
        probe_values = make_probes(diffusion, b, probes=probes, probe=probe, seed=seed, indices=indices,
                                   device=x.device, dtype=x.dtype)
    if probe_values is not None:
        want = (b, probe_values.shape[1], *diffusion.event_shape)
        if probe_values.dim() != len(want) or tuple(probe_values.shape) != want:
            raise ValueError(f"probe_values has shape {tuple(probe_values.shape)}; pass [B, K, *event] = "
                             f"[{b}, K, {', '.join(map(str, diffusion.event_shape))}]")
    func = AugmentedDynamics(diffusion, coef, trace, probe_values)
    state = torch.cat([x.reshape(b, d), x.new_zeros(b, 1)], 1)
    span = torch.tensor([eps, 1.0], dtype=x.dtype, device=x.device)
    tde = _torchdiffeq()
    options = dict(norm=_per_example_norm)
    if adjoint:
        params = tuple(p for p in diffusion.denoiser.parameters() if p.requires_grad)
        out = tde.odeint_adjoint(func, state, span, rtol=rtol, atol=atol, method=method, options=options,
                                 adjoint_params=params, adjoint_options=dict(norm="seminorm"))[-1]
    else:
        out = tde.odeint(func, state, span, rtol=rtol, atol=atol, method=method, options=options)[-1]
    x1 = out[:, :d].reshape(x.shape)
    delta = out[:, d]
    prior_lp = diffusion.get_prior(x.device, x.dtype).log_prob(x1)
    return ODEResult(log_prob=prior_lp + delta, prior_log_prob=prior_lp, delta=delta, x1=x1, nfe=func.nfe, eps=eps)


class _Flow(nn.Module):
    """The plain vector field f(x, s) on ``[B x D]`` (sampling), counting its calls."""

    def __init__(self, diffusion, coef: TimeCoefficients) -> None:
        super().__init__()
        self.diffusion, self.coef, self.nfe = diffusion, coef, 0

    def forward(self, s, y):
        self.nfe += 1
        x = y.reshape(y.shape[0], *self.diffusion.event_shape)
        return drift(self.diffusion, self.coef, x, s).reshape(y.shape)


def sample_ode(diffusion, n: int | None = None, *, x_T: Tensor | None = None, rtol: float = 1e-5, atol: float = 1e-5,
               method: str = "dopri5", eps: float | None = None, time_map=None, seed: int | None = None,
               indices=None) -> tuple[Tensor, int]:
    """Deterministic samples: x(ε) ``[n x *event]`` of the ODE solved from s = 1 to ε, and the NFE.

    x(1) = ``x_T`` if given, else drawn from p(x_T): counter-based for ``seed`` (the ``SAMPLE`` stream at t = T,
    the x_T of ancestral sampling with the same seed, :func:`ppl_diffusion.sampling.draw_samples`), else from
    torch's generator. The result is x(ε) itself (no final denoising step); images are rounded to 8 bits by
    the caller.

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion`.
    :param int n: the number of samples (unless ``x_T`` is given).
    :param torch.Tensor x_T: the starting points x(1), ``[n] + event_shape``.
    :param float rtol: the adaptive solver's relative tolerance.
    :param float atol: its absolute tolerance.
    :param str method: a torchdiffeq method.
    :param float eps: the small-time end (default: the time map's).
    :param time_map: as in :func:`log_likelihood`.
    :param int seed: counter-based x_T (default ``None``: torch's generator).
    :param indices: the samples' indices for the counter-based x_T (default 0..n − 1).
    :returns: ``(x(ε) [n] + event_shape, NFE)``.

    Example: from p(x_T), and from given starting points (x = 0 is a fixed point of an untrained net's flow,
    f = −½ β(s) x).

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.ode import sample_ode
    >>> x, nfe = sample_ode(diffusion, 4, seed=0, rtol=1e-2, atol=1e-2)
    >>> x.shape, nfe > 0
    (torch.Size([4, 2]), True)
    >>> sample_ode(diffusion, x_T=torch.zeros(2, 2), rtol=1e-2, atol=1e-2)[0].tolist()
    [[0.0, 0.0], [0.0, 0.0]]
    """
    check_options(rtol=rtol, atol=atol)
    check_model(diffusion)
    ct = time_of(diffusion, time_map)
    eps = ct.check_eps(eps)
    device, dtype = diffusion._device_dtype()
    if x_T is None:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n = {n!r} samples; pass a positive integer (-n)")
        if seed is None:
            x_T = diffusion.get_prior(device, dtype).sample((int(n),))
        else:
            from .infer.bound import check_indices

            x_T = prior_draws_normal(diffusion, seed, check_indices(indices, int(n)), device, dtype)
    with torch.no_grad():
        return _integrate(diffusion, ct, x_T, rtol=rtol, atol=atol, method=method, eps=eps)


def _integrate(diffusion, ct: ContinuousTime | GammaTime, x_T: Tensor, *, rtol: float, atol: float, method: str,
               eps: float) -> tuple[Tensor, int]:
    """x(ε) of the ODE from x(1) = ``x_T`` ``[n x *event]``, and the NFE (differentiable when grad is enabled)."""
    func = _Flow(diffusion, time_coefficients(ct).to(x_T.device))
    span = torch.tensor([1.0, eps], dtype=x_T.dtype, device=x_T.device)
    out = _torchdiffeq().odeint(func, x_T.reshape(x_T.shape[0], -1), span, rtol=rtol, atol=atol, method=method,
                                options=dict(norm=_per_example_norm))[-1]
    return out.reshape(x_T.shape), func.nfe


def prior_draws_normal(diffusion, seed: int, index: np.ndarray, device, dtype) -> Tensor:
    """x_T for (seed, index, T, SAMPLE): loc + scale · counter normal for a Normal prior (ancestral sampling's
    numbers), else :func:`ppl_diffusion.priors.prior_draws`."""
    from pyro.distributions import Independent, Normal

    prior = diffusion.get_prior(device, dtype)
    base = prior.base_dist if isinstance(prior, Independent) else prior
    if isinstance(base, Normal):
        T = diffusion.T or CONTINUOUS_SAMPLE_STEPS  # continuous time: the x_T of sampling's default chain
        z = noise.normal(seed, index, T, tuple(diffusion.event_shape), stream=noise.SAMPLE,
                         dtype=np.float64 if dtype == torch.float64 else np.float32)
        z = torch.from_numpy(z).to(device=device, dtype=dtype)
        return base.loc + base.scale * z
    return prior_draws(prior, seed, index, diffusion.T or CONTINUOUS_SAMPLE_STEPS, device, dtype)


class ProbabilityFlow(TorchDistribution):
    """The diffusion as a continuous normalizing flow: a Pyro distribution over ``diffusion.event_shape`` whose
    :meth:`log_prob` solves the probability-flow ODE (:func:`log_likelihood`) and whose :meth:`rsample` integrates
    it from p(x_T) (:func:`sample_ode`, differentiable by backpropagation through the solver).

    Use it as a likelihood (maximum likelihood through the ODE with plain SVI) or as a prior inside any Pyro
    model::

        def model(x):
            pyro.module("denoiser", diffusion.denoiser)
            with pyro.plate("data", len(x)):
                pyro.sample("x", ProbabilityFlow(diffusion, trace="exact"), obs=x)

        svi = pyro.infer.SVI(model, lambda x: None, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())

    The keywords are those of :func:`log_likelihood` (``trace``, ``probes``, ``probe``, ``rtol``, ``atol``,
    ``method``, ``eps``, ``time_map``, ``adjoint``, ``seed``). The last solve's NFE is ``nfe``.

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` (not respaced).

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.ode import ProbabilityFlow
    >>> flow = ProbabilityFlow(diffusion, time_map="vp-linear", rtol=1e-2, atol=1e-2)
    >>> flow.event_shape, flow.log_prob(x0[:2]).shape, flow.nfe > 0
    (torch.Size([2]), torch.Size([2]), True)
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, diffusion, *, trace: str = "exact", probes: int = 1, probe: str = "rademacher",
                 rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5", eps: float | None = None,
                 time_map=None, adjoint: bool = False, seed: int | None = None, validate_args=None) -> None:
        check_options(trace=trace, probes=probes, probe=probe, rtol=rtol, atol=atol)
        check_model(diffusion)
        self.diffusion = diffusion
        self.time = time_of(diffusion, time_map)
        self.options = dict(trace=trace, probes=probes, probe=probe, rtol=rtol, atol=atol, method=method,
                            eps=self.time.check_eps(eps), time_map=self.time, adjoint=adjoint, seed=seed)
        self.nfe = None
        super().__init__(torch.Size(), torch.Size(diffusion.event_shape), validate_args=validate_args)

    @property
    def support(self):
        """Real vectors of the event shape."""
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape, _instance=None):
        """The flow broadcast to ``batch_shape`` (a Pyro ``ExpandedDistribution``), e.g. under a plate."""
        from pyro.distributions.torch_distribution import ExpandedDistribution

        return ExpandedDistribution(self, batch_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """log p_ε(value) in nats, of shape ``value.shape[:-len(event_shape)]``."""
        n_event = len(self.event_shape)
        if value.dim() < n_event or tuple(value.shape[value.dim() - n_event:]) != tuple(self.event_shape):
            raise ValueError(f"value has shape {tuple(value.shape)}; its last dimensions must be the event shape "
                             f"{tuple(self.event_shape)}")
        batch = value.shape[:value.dim() - n_event]
        flat = value.reshape(-1, *self.event_shape)
        opts = self.options
        res = log_likelihood(self.diffusion, flat, **opts)
        self.nfe = res.nfe
        return res.log_prob.reshape(batch)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        """Samples ``sample_shape + event_shape``: x_T ~ p(x_T) carried to s = ε by the ODE, differentiable in θ
        (backpropagation through the solver)."""
        shape = torch.Size(sample_shape)
        n = max(1, math.prod(shape))
        device, dtype = self.diffusion._device_dtype()
        prior = self.diffusion.get_prior(device, dtype)
        x_T = prior.rsample((n,)) if prior.has_rsample else prior.sample((n,))
        o = self.options
        out, self.nfe = _integrate(self.diffusion, self.time, x_T, rtol=o["rtol"], atol=o["atol"],
                                   method=o["method"], eps=o["eps"])
        return out.reshape(*shape, *self.event_shape)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        """:meth:`rsample` without gradient."""
        with torch.no_grad():
            return self.rsample(sample_shape)


__all__ = ["ODEResult", "ProbabilityFlow", "log_likelihood", "sample_ode"]
