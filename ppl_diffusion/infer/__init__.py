"""Estimators of the diffusion ELBO, chosen by name in :func:`make_estimator`.

====================  ==========================================================================
name                  estimator
====================  ==========================================================================
``trace``             (a) ``pyro.infer.Trace_ELBO`` on (model, guide): one forward trajectory,
                      log p(x_0, x_{1:T}) − log q(x_{1:T}|x_0). Monte Carlo over the whole chain.
``meanfield``         (b) ``pyro.infer.TraceMeanField_ELBO`` on (model, posterior_guide): one
                      trajectory, each step scored by KL(q(x_{t−1}|x_t, x_0) || p(x_{t−1}|x_t)).
``stochastic-kl``     (c) :class:`StochasticTimestepELBO`, analytic step term, t uniform.
``stochastic-mc``     (c) Monte-Carlo step term, t uniform.
``stochastic-kl-is``  (c) analytic step term, t importance-sampled (improved DDPM).
``stochastic-mc-is``  (c) Monte-Carlo step term, t importance-sampled.
``stochastic-kl-ld``  (c) analytic step term, low-discrepancy uniform t across the batch (VDM).
``stochastic-mc-ld``  (c) Monte-Carlo step term, low-discrepancy t.
``hybrid``            improved DDPM's L_simple + λ L_vlb for ``variance="learned"`` (:class:`HybridELBO`):
                      its value is the stochastic-kl estimate of −ELBO, its gradient the hybrid one.
====================  ==========================================================================

All estimate the same ELBO (nats, summed over the batch); (d) :func:`variational_bound` returns
its terms separately. A model with a γ schedule (:mod:`ppl_diffusion.gamma`) and T steps works with every one of
them; in continuous time (T = 0) its ELBO is :class:`ContinuousTimeELBO` (uniform, low-discrepancy or importance t;
``schedule_objective="variance"`` trains the schedule's interior for the estimator's variance), not in this table
(it needs a γ schedule). The importance-weighted bound with K trajectories (Pyro's ``RenyiELBO`` with
α = 0 on (model, guide); the model supports ``vectorize_particles=True``) is a different, tighter
bound, kept out of this table; :mod:`ppl_diffusion.study` reports it apart.
"""

from __future__ import annotations

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
    """An ELBO estimator and the guide it must be paired with."""

    name: str
    loss: ELBO
    guide_name: str  # "guide" or "posterior_guide"

    def guide(self, diffusion):
        return getattr(diffusion, self.guide_name)


def _stochastic(step_term, timesteps):
    return lambda **kw: StochasticTimestepELBO(step_term=step_term, timesteps=timesteps, **kw)


ESTIMATORS = {
    "trace": (lambda **kw: Trace_ELBO(**kw), "guide"),
    "meanfield": (lambda **kw: TraceMeanField_ELBO(**kw), "posterior_guide"),
    "stochastic-kl": (_stochastic("kl", "uniform"), "guide"),
    "stochastic-mc": (_stochastic("mc", "uniform"), "guide"),
    "stochastic-kl-is": (_stochastic("kl", "importance"), "guide"),
    "stochastic-mc-is": (_stochastic("mc", "importance"), "guide"),
    "stochastic-kl-ld": (_stochastic("kl", "low-discrepancy"), "guide"),
    "stochastic-mc-ld": (_stochastic("mc", "low-discrepancy"), "guide"),
    "hybrid": (lambda **kw: HybridELBO(**kw), "guide"),
}


def make_estimator(name: str, **kwargs) -> Estimator:
    """The estimator called ``name`` (see the table above); ``kwargs`` go to its ELBO class."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {list(ESTIMATORS)}")
    factory, guide_name = ESTIMATORS[name]
    return Estimator(name=name, loss=factory(**kwargs), guide_name=guide_name)


__all__ = [
    "ESTIMATORS", "ContinuousTimeELBO", "Estimator", "HybridELBO", "ImportanceTimes", "ImportanceTimesteps",
    "LowDiscrepancyTimes", "LowDiscrepancyTimesteps", "StochasticTimestepELBO", "UniformTimes", "UniformTimesteps",
    "VariationalBound", "continuous_time_terms", "make_estimator", "make_timestep_sampler", "per_example_elbo",
    "trace_pair", "variational_bound",
]
