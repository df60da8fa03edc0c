r"""The continuous-time ELBO (T = ∞) of a model with a γ schedule, and the schedule's variance objective.

VDM (Kingma et al. 2021, eq. 17): with α_t² = sigmoid(−γ(t)), σ_t² = sigmoid(γ(t)) and x_t = α_t x_0 + σ_t ε,

.. math:: -\mathcal{L}_\infty(x_0) = \underbrace{\mathbb{E}_{q(x_1|x_0)}[-\log p(x_0|x_1)]}_{\text{reconstruction, at } \gamma_0}
          + \underbrace{\mathrm{KL}(q(x_T|x_0)\,\|\,p(x_T))}_{\text{prior, at } \gamma_1}
          + \underbrace{\tfrac12\,\mathbb{E}_{t \sim U[0,1],\,\varepsilon}\big[\gamma'(t)\,
            \lVert \varepsilon - \hat\varepsilon_\theta(x_t, \gamma(t)) \rVert^2\big]}_{\text{diffusion}}

(the latents' names are the chain's: x_1 is the decoder's latent at γ_0, x_T the prior's at γ_1, for every T). The
diffusion term is the limit of the chain's Σ_{t=2..T} L_{t−1} as T → ∞ (docs/variational.md), γ'(t) is taken by
autodiff, and t is drawn uniformly, low-discrepancy across the batch (VDM) or by importance (a history of the
integrand on bins of [0, 1]), weight 1/p(t). :class:`ContinuousTimeELBO` scores the Pyro programs
:meth:`~ppl_diffusion.diffusion.GaussianDiffusion.continuous_model` / ``continuous_guide`` at the drawn t, like
:class:`~ppl_diffusion.infer.stochastic_elbo.StochasticTimestepELBO` scores the one-step programs.

**The schedule's interior is trained for variance.** With the net conditioned on γ (``time_input="gamma"``) the
diffusion term is ½ ∫_{γ_0}^{γ_1} E‖ε − ε̂(x_γ, γ)‖² dγ: the ELBO depends on the schedule through its endpoints
only, and the interior changes only the variance of the estimate. ``schedule_objective="variance"`` keeps the
ELBO's gradient for the denoiser, the prior and the endpoints, and gives the interior parameters η the gradient of
Σ_i (w_i L_i)², the squared per-example diffusion estimates (whose mean is the variance plus an η-free square), in
the same backward pass: the gradient reaching the interior's output at example i is ∂(w_i L_i)/∂·, and multiplied by
2 w_i L_i it becomes ∂(w_i L_i)²/∂· (VDM, Appendix I.2; their public code does not do it, google-research/vdm
issues 1 and 11).
"""

from __future__ import annotations

import contextlib

from pyro.util import warn_if_nan
from torch import Tensor

from ..gamma import InteriorGradientScale
from .draws import FeedNoiseMessenger
from .stochastic_elbo import StochasticTimestepELBO, diffusion_of, draw_timesteps, record_losses
from .timesteps import UniformTimes, make_timestep_sampler
from .trace_terms import per_example_elbo, trace_pair

SCHEDULE_OBJECTIVES = ("elbo", "variance")
PRIOR_TERMS = ("kl", "mc")  # the prior term KL(q(x_T|x_0) || p(x_T)) in closed form, or by one draw of x_T


def continuous_time_terms(diffusion, x0: Tensor, t: Tensor, *, noise: dict | None = None,
                          analytic: bool = True) -> dict[str, Tensor]:
    """The continuous-time ELBO's terms of each example at its time ``t[i]``, nats ``[B]`` each:

    - ``"prior"``: KL(q(x_T|x_0) || p(x_T)) at γ_1 (closed form where registered and ``analytic``, else one draw);
    - ``"reconstruction"``: −log p(x_0|x_1), x_1 ~ q(x_1|x_0) at γ_0 (one draw);
    - ``"diffusion"``: ½ γ'(t) ‖ε − ε̂(x_t, γ(t))‖², the diffusion term's integrand at t (one draw of ε), unweighted:
      E over t ~ U[0, 1) and ε is the diffusion term.

    ``noise`` (optional) maps sites (``"x_T"``, ``"x_1"``, ``"x_t"``) to the standard normals they are drawn from
    (:class:`~ppl_diffusion.infer.draws.FeedNoiseMessenger`), e.g. counter-based noise for an evaluation.

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` in continuous time (a γ schedule, ``T = 0``).
    :param torch.Tensor x0: the data ``[B] + event_shape``.
    :param torch.Tensor t: ``[B]`` times in [0, 1] (float64 keeps γ(t) in float64).
    :param bool analytic: the prior's KL in closed form where registered (default), else one draw of x_T.

    Example: with the same noise, the diffusion term is the model's integrand
    (:meth:`~ppl_diffusion.diffusion.GaussianDiffusion.diffusion_integrand`).

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser
    >>> from ppl_diffusion.gamma import LinearGamma
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=LinearGamma(), denoiser=MLPDenoiser(dim=2, width=16, depth=1),
    ...                               event_shape=(2,), T=0)  # continuous time, the net conditioned on γ(t)
    >>> x0 = torch.rand(4, 2) * 2 - 1
    >>> from ppl_diffusion.infer import continuous_time_terms
    >>> t, eps = torch.rand(4, dtype=torch.float64), torch.randn(4, 2)
    >>> terms = continuous_time_terms(diffusion, x0, t, noise={"x_t": eps})
    >>> sorted(terms), terms["diffusion"].shape
    (['diffusion', 'prior', 'reconstruction'], torch.Size([4]))
    >>> torch.allclose(terms["diffusion"], diffusion.diffusion_integrand(x0, t, eps))
    True
    """
    diffusion.check_continuous()
    guide = diffusion.continuous_guide if noise is None else FeedNoiseMessenger(noise)(diffusion.continuous_guide)
    model_trace, guide_trace = trace_pair(diffusion.continuous_model, guide, x0, t)
    site = per_example_elbo(model_trace, guide_trace, analytic=analytic)
    return {"prior": -site["x_T"], "reconstruction": -(site["x_0"] + site["x_1"]),
            "diffusion": -(site["diffusion"] + site["x_t"])}


class ContinuousTimeELBO(StochasticTimestepELBO):
    r"""Unbiased estimate of the continuous-time ELBO (module docstring) from k times per example.

    .. math:: \hat{\mathcal{L}} = -L_\text{prior} - L_\text{rec} - \frac1k \sum_{j=1}^k \frac{L(t_j)}{p(t_j)},
              \quad L(t) = \tfrac12 \gamma'(t) \lVert \varepsilon - \hat\varepsilon \rVert^2,\ t_j \sim p

    (with k > 1 the reconstruction and prior terms are averaged over k draws as well). Use it as any Pyro ELBO:
    ``SVI(diffusion.model, diffusion.guide, optim, loss=ContinuousTimeELBO())`` on a model with a γ schedule and
    ``time_input="gamma"`` (usually T = 0; the programs passed are not run, the estimator traces
    ``continuous_model`` / ``continuous_guide``, which register the denoiser, a learned prior and the schedule), or
    ``elbo.differentiable_loss(diffusion.model, diffusion.guide, x0)`` in a custom loop. The loss is −ELBO summed
    over the batch, in nats.

    :param timesteps: ``"uniform"``, ``"low-discrepancy"`` (one offset per batch, VDM), ``"importance"`` or a sampler
        of times (:mod:`ppl_diffusion.infer.timesteps`, ``T = 0``).
    :param int timesteps_per_example: k, times drawn per example (default 1).
    :param str schedule_objective: ``"elbo"`` (every parameter by the ELBO) or ``"variance"`` (the schedule's interior
        by the variance of the diffusion estimate, everything else by the ELBO; needs a schedule with interior
        parameters, :class:`~ppl_diffusion.gamma.MonotoneNetGamma`).
    :param str prior_term: ``"kl"`` (default: the prior's KL in closed form where one is registered, as in
        training) or ``"mc"`` (log q(x_T|x_0) − log p(x_T) at one draw of x_T: the value of Pyro's ``Trace_ELBO`` on
        the continuous programs). The diffusion term is Monte Carlo in (t, ε) and the reconstruction term one draw
        of x_1 either way (T = ∞ has no step whose KL could be taken in closed form instead).
    :param dict sampler_kwargs: passed to the named sampler (e.g. ``bins``, ``history``, ``uniform_prob``).

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser
    >>> from ppl_diffusion.gamma import LinearGamma
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=LinearGamma(), denoiser=MLPDenoiser(dim=2, width=16, depth=1),
    ...                               event_shape=(2,), T=0)  # continuous time, the net conditioned on γ(t)
    >>> x0 = torch.rand(4, 2) * 2 - 1
    >>> from ppl_diffusion.infer import ContinuousTimeELBO
    >>> elbo = ContinuousTimeELBO(timesteps="low-discrepancy", timesteps_per_example=2)
    >>> estimate, t, weight, parts = elbo.terms(diffusion.model, x0)
    >>> estimate.shape, t.shape, t.dtype, weight.tolist() == [1.0] * 8
    (torch.Size([4]), torch.Size([8]), torch.float64, True)
    >>> loss = elbo.differentiable_loss(diffusion.model, diffusion.guide, x0)
    >>> loss.shape, loss.requires_grad
    (torch.Size([]), True)
    """

    def __init__(self, *, timesteps="uniform", timesteps_per_example: int = 1, schedule_objective: str = "elbo",
                 prior_term: str = "kl", sampler_kwargs: dict | None = None) -> None:
        super().__init__(timesteps_per_example=timesteps_per_example, timesteps=timesteps,
                         sampler_kwargs=sampler_kwargs)
        if schedule_objective not in SCHEDULE_OBJECTIVES:
            raise ValueError(f"unknown schedule_objective {schedule_objective!r}; choose one of {SCHEDULE_OBJECTIVES}")
        self.schedule_objective = schedule_objective
        if prior_term not in PRIOR_TERMS:
            raise ValueError(f"unknown prior_term {prior_term!r}; choose one of {PRIOR_TERMS} (closed-form KL or one "
                             "draw of x_T)")
        self.prior_term = prior_term
        if self.sampler is not None and getattr(self.sampler, "T", None) != 0:
            raise ValueError(f"the continuous-time ELBO draws times in [0, 1]; {type(timesteps).__name__} draws steps "
                             "(pass make_timestep_sampler(name, 0) or a name)")

    def get_sampler(self, T: int = 0) -> UniformTimes:
        """The sampler of times (T = 0), made on first use; ``T`` is ignored."""
        return super().get_sampler(0)

    def terms(self, model, x0: Tensor) -> tuple[Tensor, Tensor, Tensor, dict]:
        """Draw the times and score them: (per-example ELBO estimate ``[B]``, t ``[B·k]``, weights ``[B·k]``, the
        per-row terms of :func:`continuous_time_terms` ``[B·k]``; rows grouped by example).

        :param model: ``diffusion.model`` of a model in continuous time.
        :param x0: the data ``[B] + event_shape``.
        """
        diffusion = diffusion_of(model)
        diffusion.check_continuous()
        x0 = diffusion.check_data(x0)
        k, batch = self.timesteps_per_example, x0.shape[0]
        t, weight = draw_timesteps(self.get_sampler(0), batch * k, x0.device)
        x0k = x0.repeat_interleave(k, dim=0) if k > 1 else x0
        parts = continuous_time_terms(diffusion, x0k, t, analytic=self.prior_term == "kl")  # t float64: γ(t) in float64
        weight = weight.to(x0.dtype)
        nll = parts["prior"] + parts["reconstruction"] + weight * parts["diffusion"]
        return -nll.reshape(batch, k).mean(-1), t, weight, parts

    def _interior_scale(self, diffusion):
        if self.schedule_objective != "variance":
            return None, contextlib.nullcontext()
        schedule = diffusion.schedule
        if not any(p.requires_grad for p in schedule.interior_parameters()):
            raise ValueError(f"schedule_objective='variance' trains the interior of a learned γ schedule, and "
                             f"{type(schedule).__name__} has none; use MonotoneNetGamma or schedule_objective='elbo'")
        scale = InteriorGradientScale()
        return scale, schedule.scale_interior(scale)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """−ELBO summed over the batch, differentiable; records the integrand for importance t. With
        ``schedule_objective="variance"`` the gradient reaching the schedule's interior is that of
        Σ_rows (w L(t))² / k instead (set up here, applied by ``backward``)."""
        diffusion = diffusion_of(model)
        scale, context = self._interior_scale(diffusion)
        with context:
            elbo, t, weight, parts = self.terms(model, *args, **kwargs)
        diff = parts["diffusion"].detach()
        if scale is not None:
            scale.scale = 2.0 * weight * diff
        record_losses(self.sampler, t, diff)
        loss = -elbo.sum()
        warn_if_nan(loss, "loss")
        return loss


__all__ = ["ContinuousTimeELBO", "continuous_time_terms"]
