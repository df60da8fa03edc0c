"""The estimators the study compares, and one way to call each: an ELBO estimate, or a gradient.

=====================  ==================  =====================================================================
name                   family              estimator
=====================  ==================  =====================================================================
``trace``              full chain          ``Trace_ELBO`` on (model, guide): one forward trajectory, Monte Carlo
``meanfield``          full chain          ``TraceMeanField_ELBO`` on (model, posterior_guide): closed-form KLs
``stochastic-kl``      stochastic t        one uniform t per example, step term analytic (closed-form KL)
``stochastic-kl-is``   stochastic t        ... t importance-sampled (improved DDPM)
``stochastic-kl-ld``   stochastic t        ... low-discrepancy t across the batch (VDM)
``stochastic-mc``      stochastic t        one uniform t per example, step term Monte Carlo (one x_{t−1} draw)
``stochastic-mc-is``   stochastic t        ... t importance-sampled
``stochastic-mc-ld``   stochastic t        ... low-discrepancy t
``iwae``               IWAE (K)            ``RenyiELBO(alpha=0, num_particles=K)`` on (model, guide): the
                                           importance-weighted bound, per example, with K trajectories
``continuous``         continuous time     T = ∞ (a γ schedule, T = 0): ``ContinuousTimeELBO``, the diffusion
                                           term ½ γ'(t)‖ε − ε̂‖² at one uniform t per example, prior KL analytic
``continuous-ld``      continuous time     ... t low-discrepancy across the batch (VDM)
``continuous-is``      continuous time     ... t importance-sampled (a history on bins of [0, 1])
``continuous-mc``      continuous time     ... t uniform, the prior term Monte Carlo (one draw of x_T: Pyro's
                                           ``Trace_ELBO`` on the continuous programs)
=====================  ==================  =====================================================================

The continuous-time estimators score a model in continuous time, the others a chain of T steps (a NoiseSchedule or a
γ schedule with T >= 2); :func:`check_estimators` refuses a mismatch with the model's T in one line. In continuous
time the diffusion term is Monte Carlo in (t, ε) whatever the estimator (there is no step whose KL could be taken in
closed form), the reconstruction term one draw of x_1 (the net at x_1 has no closed form in it); only the prior term
is analytic (``continuous*``) or Monte Carlo (``continuous-mc``).

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

from ..infer import STEP_ESTIMATORS, ContinuousTimeELBO, make_estimator

FULL_CHAIN = ("trace", "meanfield")
CONTINUOUS = ("continuous", "continuous-ld", "continuous-is", "continuous-mc")  # T = 0 (a γ schedule) only
CONTINUOUS_TIMES = {"continuous": "uniform", "continuous-ld": "low-discrepancy", "continuous-is": "importance",
                    "continuous-mc": "uniform"}
#: Every estimator the study measures (the table above).
STUDY_ESTIMATORS = ("trace", "meanfield", "stochastic-kl", "stochastic-kl-is", "stochastic-kl-ld",
                    "stochastic-mc", "stochastic-mc-is", "stochastic-mc-ld", "iwae", *CONTINUOUS)
#: The study's default estimators for a chain of T steps.
DEFAULT_ESTIMATORS = ("trace", "meanfield", "stochastic-kl", "stochastic-kl-is", "stochastic-kl-ld",
                      "stochastic-mc", "iwae")
#: The study's default estimators for a model in continuous time (T = 0).
DEFAULT_CONTINUOUS_ESTIMATORS = CONTINUOUS  # the default of a model in continuous time
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
    "continuous": "T = ∞, diffusion term at one uniform t (Monte Carlo in t, ε), prior KL analytic",
    "continuous-ld": "T = ∞, diffusion term at low-discrepancy t, prior KL analytic",
    "continuous-is": "T = ∞, diffusion term at importance-sampled t, prior KL analytic",
    "continuous-mc": "T = ∞, diffusion term at one uniform t, prior term Monte Carlo",
}


def default_estimators(T: int) -> tuple[str, ...]:
    """The study's default estimators for a model of ``T`` steps (0: continuous time).

    Example:

    >>> from ppl_diffusion.study.estimators import default_estimators
    >>> default_estimators(0)
    ('continuous', 'continuous-ld', 'continuous-is', 'continuous-mc')
    """
    return DEFAULT_CONTINUOUS_ESTIMATORS if T == 0 else DEFAULT_ESTIMATORS


def check_estimators(names, *, trainable: bool = False, T: int | None = None) -> tuple[str, ...]:
    """The names, checked against the study's list (or the trainable ones: the estimators of a chain of steps, the
    race's); with ``T``, also against the model (continuous-time estimators for T = 0 only, the others for a chain);
    a one-line error otherwise.

    :param names: estimator names.
    :param bool trainable: check against the race's (trainable) estimators instead.
    :param int T: the model's number of steps (0: continuous time), or ``None`` not to check.

    Example:

    >>> from ppl_diffusion.study.estimators import check_estimators
    >>> check_estimators(["iwae", "stochastic-kl"], T=10)
    ('iwae', 'stochastic-kl')
    >>> check_estimators(["continuous"], T=10)
    Traceback (most recent call last):
    ...
    ValueError: estimator 'continuous' scores continuous time (T = 0), and this model has T = 10 steps: ...
    """
    known = STEP_ESTIMATORS if trainable else STUDY_ESTIMATORS
    names = tuple(names)
    bad = [n for n in names if n not in known]
    if bad or not names:
        what = "race (training) estimator" if trainable else "study estimator"
        raise ValueError(f"unknown {what} {bad[0] if bad else '(none given)'!r}; choose from {', '.join(known)}")
    if T is not None:
        wrong = [n for n in names if (n in CONTINUOUS) != (T == 0)]
        if wrong and T == 0:
            raise ValueError(f"estimator {wrong[0]!r} scores a chain of steps, and this model is in continuous time "
                             f"(T = 0): pass --estimators from {', '.join(CONTINUOUS)}")
        if wrong:
            raise ValueError(f"estimator {wrong[0]!r} scores continuous time (T = 0), and this model has T = {T} "
                             f"steps: drop it from --estimators (the continuous ones need --T 0 with a γ schedule)")
    return names


@dataclass
class StudyEstimator:
    """One estimator bound to a model: ``estimate(x0)`` → −loss (nats, summed over the batch, no
    gradient); ``gradient(x0)`` → (−loss, the gradient of loss w.r.t. θ, flattened, float64).

    Made by :func:`make_study_estimator`.

    :param str name: the estimator's name (:data:`STUDY_ESTIMATORS`).
    :param loss: the Pyro ELBO (:class:`pyro.infer.ELBO`).
    :param model: the model program.
    :param guide: its guide.
    :param list params: the parameters θ the gradient is taken for.
    :param str bound: the quantity estimated, ``"ELBO"`` or ``"IWAE-K"``.
    :param dict sampler_state: the frozen importance-sampling history (set by :meth:`warm_up`).

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.study.estimators import make_study_estimator
    >>> est = make_study_estimator("stochastic-kl", diffusion)
    >>> est.name, est.family, est.bound, est.num_params, isinstance(est.estimate(x0), float)
    ('stochastic-kl', 'stochastic t', 'ELBO', 2274, True)
    """

    name: str
    loss: ELBO
    model: object
    guide: object
    params: list
    bound: str = "ELBO"  # the quantity whose estimate this is: "ELBO" or "IWAE-K"
    sampler_state: dict | None = field(default=None, repr=False)  # frozen importance-sampling history

    @property
    def family(self) -> str:
        """``"full chain"``, ``"stochastic t"``, ``"IWAE"`` or ``"continuous time"``."""
        if self.name in CONTINUOUS:
            return "continuous time"
        return "full chain" if self.name in FULL_CHAIN else ("IWAE" if self.name == "iwae" else "stochastic t")

    @property
    def description(self) -> str:
        """A few words on the estimator, for the report."""
        return DESCRIPTIONS[self.name] + (f", K = {self.loss.num_particles}" if self.name == "iwae" else "")

    @property
    def num_params(self) -> int:
        """The number of scalars in θ."""
        return sum(p.numel() for p in self.params)

    def reseed(self, seed: int) -> None:
        """Seed the draws of the next calls (``pyro.set_rng_seed``)."""
        import pyro

        pyro.set_rng_seed(seed)

    def sampler_probabilities(self):
        """P(t) of the frozen importance sampler of steps, float64 numpy (None for the other estimators, and for
        continuous time, whose sampler has a density on [0, 1] instead)."""
        if self.sampler_state is None or not hasattr(self.loss.sampler, "probabilities"):
            return None
        return self.loss.sampler.probabilities().numpy()

    def estimate(self, x0: torch.Tensor) -> float:
        """−loss: the estimate of the ELBO (or IWAE bound) summed over the batch ``x0``, nats, without gradient."""
        with torch.no_grad():
            return -self.loss.loss(self.model, self.guide, x0)

    def gradient(self, x0: torch.Tensor) -> tuple[float, torch.Tensor]:
        """(−loss, ∇θ loss flattened to float64 ``[num_params]``) by ``loss_and_grads``; θ's ``.grad`` is left
        cleared and a frozen importance sampler's history restored."""
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
    twin, ``ppl_diffusion.numpyro.study.NumPyroStudyEstimator``).

    :param str name: one of :data:`STUDY_ESTIMATORS`, matching the model's T.
    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` (or its NumPyro twin).
    :param int iwae_particles: K of ``"iwae"`` (>= 2).
    :rtype: StudyEstimator

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.study.estimators import make_study_estimator
    >>> est = make_study_estimator("iwae", diffusion, iwae_particles=2)
    >>> est.bound, est.family
    ('IWAE-2', 'IWAE')
    >>> est = make_study_estimator("stochastic-kl", diffusion)
    >>> value, grad = est.gradient(x0)
    >>> isinstance(value, float), grad.shape == (est.num_params,), grad.dtype
    (True, True, torch.float64)
    """
    check_estimators([name], T=getattr(diffusion, "T", None))
    if getattr(diffusion, "backend", "pyro") == "numpyro":
        if name in CONTINUOUS:
            raise ValueError(f"estimator {name!r} (continuous time) is measured on the Pyro backend only; pass "
                             "--backend pyro")
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
    if name in CONTINUOUS:
        loss = ContinuousTimeELBO(timesteps=CONTINUOUS_TIMES[name], prior_term="mc" if name.endswith("-mc") else "kl")
        return StudyEstimator(name, loss, diffusion.model, diffusion.guide, params)
    est = make_estimator(name)
    return StudyEstimator(name, est.loss, diffusion.model, est.guide(diffusion), params)


__all__ = ["DEFAULT_CONTINUOUS_ESTIMATORS", "DEFAULT_ESTIMATORS", "STUDY_ESTIMATORS", "StudyEstimator", "check_estimators",
           "default_estimators", "make_study_estimator"]
