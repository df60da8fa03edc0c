"""The estimators the study compares, and one way to call each: an ELBO estimate, or a gradient.

===================  ==================  =====================================================================
name                 family              estimator
===================  ==================  =====================================================================
``trace``            full chain          ``Trace_ELBO`` on (model, guide): one forward trajectory, Monte Carlo
``meanfield``        full chain          ``TraceMeanField_ELBO`` on (model, posterior_guide): closed-form KLs
``stochastic-kl``    stochastic t        one uniform t per example, step term analytic (closed-form KL)
``stochastic-kl-is`` stochastic t        ... t importance-sampled (improved DDPM)
``stochastic-kl-ld`` stochastic t        ... low-discrepancy t across the batch (VDM)
``stochastic-mc``    stochastic t        one uniform t per example, step term Monte Carlo (one x_{t−1} draw)
``stochastic-mc-is`` stochastic t        ... t importance-sampled
``stochastic-mc-ld`` stochastic t        ... low-discrepancy t
``iwae``             IWAE (K)            ``RenyiELBO(alpha=0, num_particles=K)`` on (model, guide): the
                                         importance-weighted bound, per example, with K trajectories
===================  ==================  =====================================================================

All but ``iwae`` are unbiased for the same ELBO. ``iwae`` estimates a different, tighter bound
(log p(x_0) ≥ IWAE_K ≥ ELBO; Burda et al. 2016), so its mean is reported apart and never pooled with
the others. Pyro's ``RenyiELBO`` keeps the plates common to every site (here ``"data"``) when it
sums log-weights, so the log-mean-exp over the K particles is taken per example.

Every call goes through Pyro's own ELBO interface: ``loss`` for an estimate, ``loss_and_grads`` for
a gradient (what ``pyro.infer.SVI`` calls), so what is measured is what a user trains with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pyro.infer import ELBO, RenyiELBO

from ..infer import STEP_ESTIMATORS, make_estimator

FULL_CHAIN = ("trace", "meanfield")
STUDY_ESTIMATORS = ("trace", "meanfield", "stochastic-kl", "stochastic-kl-is", "stochastic-kl-ld",
                    "stochastic-mc", "stochastic-mc-is", "stochastic-mc-ld", "iwae")
DEFAULT_ESTIMATORS = ("trace", "meanfield", "stochastic-kl", "stochastic-kl-is", "stochastic-kl-ld",
                      "stochastic-mc", "iwae")
DESCRIPTIONS = {
    "trace": "full chain, Trace_ELBO (Monte Carlo)",
    "meanfield": "full chain, TraceMeanField_ELBO (analytic KL)",
    "stochastic-kl": "stochastic t, analytic step, t uniform",
    "stochastic-kl-is": "stochastic t, analytic step, t importance-sampled",
    "stochastic-kl-ld": "stochastic t, analytic step, t low-discrepancy",
    "stochastic-mc": "stochastic t, Monte-Carlo step, t uniform",
    "stochastic-mc-is": "stochastic t, Monte-Carlo step, t importance-sampled",
    "stochastic-mc-ld": "stochastic t, Monte-Carlo step, t low-discrepancy",
    "iwae": "IWAE: RenyiELBO α = 0, K trajectories (a tighter bound)",
}


def check_estimators(names, *, trainable: bool = False) -> tuple[str, ...]:
    """The names, checked against the study's list (or the trainable ones: the estimators of a chain of steps, the
    study's models being NoiseSchedule chains); a one-line error otherwise."""
    known = STEP_ESTIMATORS if trainable else STUDY_ESTIMATORS
    names = tuple(names)
    bad = [n for n in names if n not in known]
    if bad or not names:
        what = "race (training) estimator" if trainable else "study estimator"
        raise ValueError(f"unknown {what} {bad[0] if bad else '(none given)'!r}; choose from {', '.join(known)}")
    return names


@dataclass
class StudyEstimator:
    """One estimator bound to a model: ``estimate(x0)`` → −loss (nats, summed over the batch, no
    gradient); ``gradient(x0)`` → (−loss, the gradient of loss w.r.t. θ, flattened, float64)."""

    name: str
    loss: ELBO
    model: object
    guide: object
    params: list
    bound: str = "ELBO"  # the quantity whose estimate this is: "ELBO" or "IWAE-K"
    sampler_state: dict | None = field(default=None, repr=False)  # frozen importance-sampling history

    @property
    def family(self) -> str:
        return "full chain" if self.name in FULL_CHAIN else ("IWAE" if self.name == "iwae" else "stochastic t")

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.name] + (f", K = {self.loss.num_particles}" if self.name == "iwae" else "")

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def reseed(self, seed: int) -> None:
        import pyro

        pyro.set_rng_seed(seed)

    def sampler_probabilities(self):
        """P(t) of the frozen importance sampler, float64 numpy (None for the other estimators)."""
        return None if self.sampler_state is None else self.loss.sampler.probabilities().numpy()

    def estimate(self, x0: torch.Tensor) -> float:
        with torch.no_grad():
            return -self.loss.loss(self.model, self.guide, x0)

    def gradient(self, x0: torch.Tensor) -> tuple[float, torch.Tensor]:
        for p in self.params:
            p.grad = None
        value = -self.loss.loss_and_grads(self.model, self.guide, x0)
        if self.sampler_state is not None:  # keep θ *and* P(t) fixed: replicates must be identically distributed
            self.loss.sampler.load_state_dict(self.sampler_state)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params])
        for p in self.params:
            p.grad = None
        return value, flat.double()

    def warm_up(self, x0: torch.Tensor, max_calls: int = 100_000) -> int:
        """Importance-sampled t: fill the loss history (untimed calls at this θ), then freeze it.
        Returns the number of calls it took (0 for the other estimators)."""
        sampler_of = getattr(self.loss, "get_sampler", None)
        if sampler_of is None or not self.name.endswith("-is"):
            return 0
        diffusion = self.model.__self__
        sampler = sampler_of(diffusion.T)
        calls = 0
        while not sampler.warmed_up:
            with torch.no_grad():
                self.loss.differentiable_loss(self.model, self.guide, x0)
            calls += 1
            if calls >= max_calls:
                raise RuntimeError(f"{self.name}: importance sampler not warmed up after {calls} calls")
        self.sampler_state = sampler.state_dict()
        return calls


def make_study_estimator(name: str, diffusion, *, iwae_particles: int = 8) -> StudyEstimator:
    """The estimator ``name`` (see the module table) for ``diffusion`` (a NumPyro diffusion gets the compiled
    twin, :class:`ppl_diffusion.numpyro.study.NumPyroStudyEstimator`)."""
    check_estimators([name])
    if getattr(diffusion, "backend", "pyro") == "numpyro":
        from ..numpyro.study import NumPyroStudyEstimator

        return NumPyroStudyEstimator(name, diffusion, full_chain=name in FULL_CHAIN, description=DESCRIPTIONS[name],
                                     iwae_particles=iwae_particles)
    params = [p for p in diffusion.denoiser.parameters() if p.requires_grad]
    if name == "iwae":
        if isinstance(iwae_particles, bool) or not isinstance(iwae_particles, int) or iwae_particles < 2:
            raise ValueError(f"iwae_particles = {iwae_particles!r}; the IWAE bound needs K >= 2 trajectories "
                             "(--iwae-particles)")
        loss = RenyiELBO(alpha=0, num_particles=iwae_particles, vectorize_particles=True, max_plate_nesting=1)
        return StudyEstimator(name, loss, diffusion.model, diffusion.guide, params, bound=f"IWAE-{iwae_particles}")
    est = make_estimator(name)
    return StudyEstimator(name, est.loss, diffusion.model, est.guide(diffusion), params)
