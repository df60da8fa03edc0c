"""Estimators of the diffusion ELBO, chosen by name in :func:`~ppl_diffusion.infer.make_estimator`.

====================  ==========================================================================
name                  estimator
====================  ==========================================================================
``trace``             (a) ``pyro.infer.Trace_ELBO`` on (model, guide): one forward trajectory,
                      log p(x_0, x_{1:T}) − log q(x_{1:T}|x_0). Monte Carlo over the whole chain.
``meanfield``         (b) ``pyro.infer.TraceMeanField_ELBO`` on (model, posterior_guide): one
                      trajectory, each step scored by KL(q(x_{t−1}|x_t, x_0) || p(x_{t−1}|x_t)).
``stochastic-kl``     (c) :class:`~ppl_diffusion.infer.stochastic_elbo.StochasticTimestepELBO`, analytic step term, t uniform.
``stochastic-mc``     (c) Monte-Carlo step term, t uniform.
``stochastic-kl-is``  (c) analytic step term, t importance-sampled (improved DDPM).
``stochastic-mc-is``  (c) Monte-Carlo step term, t importance-sampled.
``stochastic-kl-ld``  (c) analytic step term, low-discrepancy uniform t across the batch (VDM).
``stochastic-mc-ld``  (c) Monte-Carlo step term, low-discrepancy t.
``hybrid``            improved DDPM's L_simple + λ L_vlb for ``variance="learned"`` (:class:`~ppl_diffusion.infer.hybrid.HybridELBO`):
                      its value is the stochastic-kl estimate of −ELBO, its gradient the hybrid one.
``continuous``        (T = 0) :class:`~ppl_diffusion.infer.continuous_elbo.ContinuousTimeELBO`: reconstruction at γ_0, prior at γ_1 and the
                      diffusion term ½ γ'(t)‖ε − ε̂‖² at one uniform t per example (Monte Carlo in t and ε).
``continuous-ld``     (T = 0) ... low-discrepancy t across the batch (VDM's).
``continuous-is``     (T = 0) ... t importance-sampled (a history of the integrand on bins of [0, 1]).
====================  ==========================================================================

All estimate the same ELBO (nats, summed over the batch); (d) :func:`~ppl_diffusion.infer.bound.variational_bound` returns
its terms separately. Each entry of :data:`ESTIMATORS` says which models it scores (:class:`EstimatorSpec`'s ``time``):
``"steps"``, a chain of T steps (a NoiseSchedule, or a γ schedule (:mod:`ppl_diffusion.gamma`) with T >= 2: every
one of them works on either), or ``"continuous"``, a γ schedule in continuous time (T = 0, net conditioned on γ);
:func:`check_estimator` refuses a mismatch in one line. The continuous ones take ``schedule_objective="variance"``
to train a learned schedule's interior for the estimator's variance. The importance-weighted bound with K trajectories (Pyro's ``RenyiELBO`` with
α = 0 on (model, guide); the model supports ``vectorize_particles=True``) is a different, tighter
bound, kept out of this table; :mod:`ppl_diffusion.study` reports it apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from .bound import VariationalBound, variational_bound
from .continuous_elbo import ContinuousTimeELBO, continuous_time_terms
from .hybrid import HybridELBO
from .stochastic_elbo import StochasticTimestepELBO
from .timesteps import (ImportanceTimes, ImportanceTimesteps, LowDiscrepancyTimes, LowDiscrepancyTimesteps, UniformTimes,
                        UniformTimesteps, make_timestep_sampler)
from .trace_terms import per_example_elbo, trace_pair


@dataclass
class Estimator:
    """An ELBO estimator and the guide it must be paired with (what :func:`make_estimator` returns).

    :param str name: the estimator's name in :data:`ESTIMATORS`.
    :param loss: the Pyro ELBO (a :class:`pyro.infer.ELBO`): ``loss.differentiable_loss(diffusion.model,
        estimator.guide(diffusion), x0)`` is −ELBO summed over the batch ``x0`` ``[B] + event_shape``, in nats.
    :param str guide_name: ``"guide"`` (the forward process q(x_{1:T}|x_0)) or ``"posterior_guide"`` (the chain
        drawn backwards through q(x_{t−1}|x_t, x_0), whose steps ``TraceMeanField_ELBO`` scores by their KLs).

    Example:

    >>> from ppl_diffusion.infer import make_estimator
    >>> est = make_estimator("meanfield")
    >>> est.guide_name, type(est.loss).__name__
    ('posterior_guide', 'TraceMeanField_ELBO')
    """

    name: str
    loss: ELBO
    guide_name: str  # "guide" or "posterior_guide"

    def guide(self, diffusion):
        """The guide program of ``diffusion`` (a :class:`~ppl_diffusion.diffusion.GaussianDiffusion`) this estimator pairs
        with, a bound method such as ``diffusion.posterior_guide``."""
        return getattr(diffusion, self.guide_name)


TIMES = ("steps", "continuous")  # what an estimator scores: a chain of T steps, or continuous time (T = 0)


@dataclass(frozen=True)
class EstimatorSpec:
    """An entry of :data:`ESTIMATORS`: how to make the ELBO, the guide it pairs with, and the time it scores
    (``"steps"``: a chain of T steps, any schedule; ``"continuous"``: a γ schedule with T = 0).

    :param factory: ``factory(**kwargs)`` makes the ELBO, a :class:`pyro.infer.ELBO`.
    :param str guide_name: ``"guide"`` or ``"posterior_guide"``, the program the ELBO pairs with.
    :param str time: ``"steps"`` (default) or ``"continuous"``.

    Example:

    >>> from ppl_diffusion.infer import ESTIMATORS
    >>> spec = ESTIMATORS["continuous-ld"]
    >>> spec.time, spec.needs_steps, spec.guide_name
    ('continuous', False, 'guide')
    """

    factory: Callable[..., ELBO]
    guide_name: str  # "guide" or "posterior_guide"
    time: str = "steps"

    @property
    def needs_steps(self) -> bool:
        """Whether the estimator scores a chain of steps (and so refuses a continuous-time model)."""
        return self.time == "steps"


def _stochastic(step_term, timesteps):
    return EstimatorSpec(lambda **kw: StochasticTimestepELBO(step_term=step_term, timesteps=timesteps, **kw), "guide")


def _continuous(timesteps):
    return EstimatorSpec(lambda **kw: ContinuousTimeELBO(timesteps=timesteps, **kw), "guide", "continuous")


#: The estimators by name (the table above), ``name -> EstimatorSpec``.
ESTIMATORS = {
    "trace": EstimatorSpec(lambda **kw: Trace_ELBO(**kw), "guide"),
    "meanfield": EstimatorSpec(lambda **kw: TraceMeanField_ELBO(**kw), "posterior_guide"),
    "stochastic-kl": _stochastic("kl", "uniform"),
    "stochastic-mc": _stochastic("mc", "uniform"),
    "stochastic-kl-is": _stochastic("kl", "importance"),
    "stochastic-mc-is": _stochastic("mc", "importance"),
    "stochastic-kl-ld": _stochastic("kl", "low-discrepancy"),
    "stochastic-mc-ld": _stochastic("mc", "low-discrepancy"),
    "hybrid": EstimatorSpec(lambda **kw: HybridELBO(**kw), "guide"),
    "continuous": _continuous("uniform"),
    "continuous-ld": _continuous("low-discrepancy"),
    "continuous-is": _continuous("importance"),
}
#: Names of the estimators that score a chain of T steps (``ESTIMATORS[name].time == "steps"``).
STEP_ESTIMATORS = tuple(n for n, s in ESTIMATORS.items() if s.needs_steps)
#: Names of the estimators that score continuous time (T = 0, a γ schedule).
CONTINUOUS_ESTIMATORS = tuple(n for n, s in ESTIMATORS.items() if not s.needs_steps)


def check_estimator(name: str, T: int) -> EstimatorSpec:
    """The entry of ``name`` if it scores a model of ``T`` steps (0: continuous time); a one-line ``ValueError``
    naming the value and the fix otherwise.

    :param str name: a key of :data:`ESTIMATORS`.
    :param int T: the model's number of steps (``diffusion.T``), 0 for continuous time.
    :rtype: EstimatorSpec
    :raises ValueError: for an unknown name, or an estimator of steps with T = 0 (and the converse).

    Example:

    >>> from ppl_diffusion.infer import check_estimator
    >>> check_estimator("stochastic-kl-is", T=10).guide_name
    'guide'
    >>> check_estimator("continuous", T=10)
    Traceback (most recent call last):
    ...
    ValueError: estimator 'continuous' scores continuous time (T = 0), and this model has T = 10 steps: ...
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {list(ESTIMATORS)}")
    spec = ESTIMATORS[name]
    if T == 0 and spec.needs_steps:
        raise ValueError(f"estimator {name!r} scores a chain of steps, and T = 0 is continuous time: pass --estimator "
                         f"one of {', '.join(CONTINUOUS_ESTIMATORS)} (or T >= 2 steps)")
    if T != 0 and not spec.needs_steps:
        raise ValueError(f"estimator {name!r} scores continuous time (T = 0), and this model has T = {T} steps: pass "
                         f"--T 0 with a γ schedule, or a step estimator such as stochastic-kl-is")
    return spec


def make_estimator(name: str, **kwargs) -> Estimator:
    """The estimator called ``name`` (the table of :mod:`ppl_diffusion.infer` lists them); ``kwargs`` go to its ELBO class.

    Each estimates the same −ELBO, :math:`\\mathbb{E}_q[\\log q(x_{1:T} \\mid x_0) - \\log p(x_{0:T})]` (nats,
    summed over the batch), with the guide it must be paired with (:meth:`Estimator.guide`).

    :param str name: a key of :data:`ESTIMATORS` (a ``ValueError`` lists them otherwise).
    :param kwargs: keyword arguments of the ELBO class, e.g. ``timesteps_per_example=2``.
    :rtype: Estimator

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule, make_estimator
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> est = make_estimator("stochastic-kl", timesteps_per_example=2)
    >>> loss = est.loss.differentiable_loss(diffusion.model, est.guide(diffusion), x0)
    >>> loss.shape, bool(loss.isfinite()), loss.requires_grad
    (torch.Size([]), True, True)
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {list(ESTIMATORS)}")
    spec = ESTIMATORS[name]
    return Estimator(name=name, loss=spec.factory(**kwargs), guide_name=spec.guide_name)


__all__ = [
    "CONTINUOUS_ESTIMATORS", "ESTIMATORS", "STEP_ESTIMATORS", "ContinuousTimeELBO", "Estimator", "EstimatorSpec",
    "HybridELBO", "ImportanceTimes", "ImportanceTimesteps", "LowDiscrepancyTimes", "LowDiscrepancyTimesteps",
    "StochasticTimestepELBO", "UniformTimes", "UniformTimesteps", "VariationalBound", "check_estimator",
    "continuous_time_terms", "make_estimator", "make_timestep_sampler", "per_example_elbo", "trace_pair",
    "variational_bound",
]
