"""A run's forward process: the schedules ``--schedule`` names, their settings, and their checks.

=========================  ==========================================================================================
``linear``, ``cosine``     a :class:`~ppl_diffusion.schedule.NoiseSchedule` of T steps (DDPM's, scaled by 1000/T; improved
                           DDPM's), the net conditioned on the step; ``custom``: an import's own β_t (``betas``)
``fixed-linear``           γ linear from ``gamma_min`` to ``gamma_max`` (VDM's ``fixed``), no parameters
``learned-scalar``         γ linear, its endpoints learned (VDM's ``learnable_scalar``); starts at
                           (``gamma_min``, ``gamma_max``)
``learned-net``            VDM's monotone network: endpoints learned by the ELBO, the interior (in continuous time)
                           by the variance of the estimate (``schedule_objective``)
``interpolated-linear``,   the γ of that NoiseSchedule of T steps, exact at its steps
``interpolated-cosine``    (:meth:`~ppl_diffusion.gamma.InterpolatedGamma.from_noise_schedule`); with
                           ``time_input="step"`` the same model as ``linear`` / ``cosine`` term by term
=========================  ==========================================================================================

The γ schedules (:mod:`ppl_diffusion.gamma`, docs/variational.md) run with T >= 2 steps or in continuous time,
``T = 0`` (``--T 0``, also spelled ``--T inf``): the ELBO is then estimated by the ``continuous*`` estimators. Their
settings are config keys that a NoiseSchedule run leaves ``None``: ``gamma_min``, ``gamma_max`` (VDM's −13.3 and 5.0
by default), ``time_input`` (``"gamma"``, the net sees γ rescaled over [gamma_min, gamma_max], by default;
``"step"``, the step label, at finite T only) and ``schedule_objective`` (continuous time: ``"variance"`` trains the
interior of ``learned-net`` for the estimate's variance and its endpoints by the ELBO, the default there;
``"elbo"`` everything by the ELBO). ``resolve`` writes the defaults into the config before it is saved, so
config.json records every one. The net's γ label is rescaled over (gamma_min, gamma_max), fixed at the start, so
that a learned schedule's net sees the same label for the same γ throughout training and after loading.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from ..gamma import GAMMA_MAX, GAMMA_MIN, TIME_INPUTS, InterpolatedGamma, LinearGamma, MonotoneNetGamma, ScalarGamma
from ..infer import check_estimator
from ..infer.continuous_elbo import SCHEDULE_OBJECTIVES
from ..schedule import NoiseSchedule

__all__ = ["SCHEDULES", "build_schedule", "is_gamma"]

NOISE_SCHEDULES = {"linear": NoiseSchedule.linear, "cosine": NoiseSchedule.cosine}
# γ schedules by name: builder(gamma_min, gamma_max, T) and whether the schedule has an interior to train
GAMMA_SCHEDULES = {
    "fixed-linear": lambda lo, hi, T: LinearGamma(lo, hi),
    "learned-scalar": lambda lo, hi, T: ScalarGamma(lo, hi),
    "learned-net": lambda lo, hi, T: MonotoneNetGamma(lo, hi, learn_endpoints=True),
    "interpolated-linear": lambda lo, hi, T: InterpolatedGamma.from_noise_schedule(NoiseSchedule.linear(T)),
    "interpolated-cosine": lambda lo, hi, T: InterpolatedGamma.from_noise_schedule(NoiseSchedule.cosine(T)),
}
WITH_INTERIOR = ("learned-net",)  # the schedules whose interior the variance objective trains
INTERPOLATED = ("interpolated-linear", "interpolated-cosine")  # endpoints from the NoiseSchedule, finite T only
#: The names ``--schedule`` (``TrainConfig.schedule``) takes; ``"custom"`` is an imported model's own ``betas``.
SCHEDULES = (*NOISE_SCHEDULES, *GAMMA_SCHEDULES)
GAMMA_KEYS = ("gamma_min", "gamma_max", "time_input", "schedule_objective")  # None for a NoiseSchedule


def is_gamma(name: str) -> bool:
    """Whether the schedule ``name`` is a γ schedule (the forward process as a module) rather than a NoiseSchedule.

    Example:

    >>> from ppl_diffusion.train.schedules import is_gamma
    >>> is_gamma("learned-net"), is_gamma("linear")
    (True, False)
    """
    return name in GAMMA_SCHEDULES


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def resolve(config):
    """``config`` with the γ settings it leaves ``None`` at their defaults (a NoiseSchedule's stay ``None``):
    what config.json records and what every later build of the model reads."""
    if not is_gamma(config.schedule):
        return config
    updates = {"time_input": "gamma" if config.time_input is None else config.time_input}
    if config.schedule not in INTERPOLATED:
        updates["gamma_min"] = GAMMA_MIN if config.gamma_min is None else config.gamma_min
        updates["gamma_max"] = GAMMA_MAX if config.gamma_max is None else config.gamma_max
    if config.schedule_objective is None:
        continuous_interior = config.T == 0 and config.schedule in WITH_INTERIOR
        updates["schedule_objective"] = "variance" if continuous_interior else "elbo"
    return dataclasses.replace(config, **updates)


def check(config) -> None:
    """The forward process of ``config`` and the estimator against it: one-line ``ValueError``s naming the value
    and the fix (the schedule's name is checked by the caller)."""
    T = config.T
    if isinstance(T, bool) or not isinstance(T, int):
        raise ValueError(f"T = {T!r}; pass an integer number of steps (--T), or 0 for continuous time with a γ schedule")
    if not is_gamma(config.schedule):
        given = [_flag(k) for k in GAMMA_KEYS if getattr(config, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} set with schedule {config.schedule!r}, a NoiseSchedule: "
                             f"{'they set' if len(given) > 1 else 'it sets'} a γ schedule; drop "
                             f"{'them' if len(given) > 1 else 'it'} or pass --schedule one of "
                             f"{', '.join(GAMMA_SCHEDULES)}")
        if T < 1:
            raise ValueError(f"T = {T} with schedule {config.schedule!r}: a NoiseSchedule has T >= 1 steps; continuous "
                             "time (T = 0) needs a γ schedule, e.g. --schedule learned-net")
        check_estimator(config.estimator, T)
        return
    if T < 0 or T == 1:
        raise ValueError(f"T = {T}; with a γ schedule pass T >= 2 steps (latents x_1 at γ_0 … x_T at γ_1) or T = 0 for "
                         "continuous time (--T 0)")
    name = config.schedule
    if name in INTERPOLATED:
        given = [_flag(k) for k in ("gamma_min", "gamma_max") if getattr(config, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} with schedule {name!r}: its endpoints are those of the "
                             f"{name.split('-')[1]} NoiseSchedule of T steps; drop {', '.join(given)} or pass "
                             "--schedule fixed-linear")
        if T == 0:
            raise ValueError(f"schedule {name!r} reads a NoiseSchedule at its T steps, and T = 0 has none: pass "
                             "T >= 2, or a γ schedule of continuous time (fixed-linear, learned-scalar, learned-net)")
    else:
        for key in ("gamma_min", "gamma_max"):
            v = getattr(config, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)):
                raise ValueError(f"{key} = {v!r}; pass a finite log noise-to-signal ratio ({_flag(key)}, e.g. "
                                 f"{GAMMA_MIN if key == 'gamma_min' else GAMMA_MAX})")
        lo = GAMMA_MIN if config.gamma_min is None else config.gamma_min
        hi = GAMMA_MAX if config.gamma_max is None else config.gamma_max
        if not lo < hi:
            raise ValueError(f"gamma_min = {lo!r} >= gamma_max = {hi!r}; γ must increase from little noise at t = 0 to "
                             f"much noise at t = 1: pass --gamma-min below --gamma-max (VDM: {GAMMA_MIN}, {GAMMA_MAX})")
    time_input = config.time_input
    if time_input is not None and time_input not in TIME_INPUTS:
        raise ValueError(f"unknown time_input {time_input!r}; choose one of {', '.join(TIME_INPUTS)} (--time-input)")
    if T == 0 and time_input == "step":
        raise ValueError("--time-input step labels the net by the chain's steps, and T = 0 (continuous time) has none: "
                         "pass --time-input gamma (the default) or T >= 2")
    if T == 0 and config.variance != "beta":
        raise ValueError(f"variance {config.variance!r} with T = 0: in continuous time only the decoder has a variance, "
                         "σ_0² = sigmoid(γ_0); pass --variance beta (or T >= 2 steps)")
    objective = config.schedule_objective
    if objective is not None:
        if objective not in SCHEDULE_OBJECTIVES:
            raise ValueError(f"unknown schedule_objective {objective!r}; choose one of {', '.join(SCHEDULE_OBJECTIVES)} "
                             "(--schedule-objective)")
        if objective == "variance" and T != 0:
            raise ValueError(f"--schedule-objective variance with T = {T}: the interior changes only the estimate's "
                             "variance in continuous time; at finite T it changes the ELBO, so it trains by the ELBO: "
                             "pass --schedule-objective elbo or --T 0")
        if objective == "variance" and name not in WITH_INTERIOR:
            raise ValueError(f"--schedule-objective variance with schedule {name!r}, which has no interior to train: "
                             f"pass --schedule {' or '.join(WITH_INTERIOR)}, or --schedule-objective elbo")
    check_estimator(config.estimator, T)


def build_schedule(config):
    """The forward process of ``config``: a :class:`~ppl_diffusion.schedule.NoiseSchedule` (a named one of T steps, or
    ``"custom"``'s ``betas``) or a γ schedule module (unset settings at their defaults).

    :param config: a :class:`~ppl_diffusion.train.config.TrainConfig` (its ``schedule``, ``T``, ``betas``,
        ``gamma_min`` and ``gamma_max``).

    Example:

    >>> from ppl_diffusion.train import TrainConfig, build_schedule
    >>> schedule = build_schedule(TrainConfig(schedule="cosine", T=10))
    >>> type(schedule).__name__, tuple(schedule.betas.shape)
    ('NoiseSchedule', (10,))
    >>> type(build_schedule(TrainConfig(schedule="fixed-linear", T=0))).__name__  # continuous time
    'LinearGamma'
    """
    if config.schedule == "custom":
        return NoiseSchedule(config.betas)
    if not is_gamma(config.schedule):
        return NOISE_SCHEDULES[config.schedule](config.T)
    lo = GAMMA_MIN if config.gamma_min is None else config.gamma_min
    hi = GAMMA_MAX if config.gamma_max is None else config.gamma_max
    return GAMMA_SCHEDULES[config.schedule](lo, hi, config.T)


def process_kwargs(config) -> dict:
    """The keyword arguments of :class:`~ppl_diffusion.diffusion.GaussianDiffusion` that a γ schedule needs (T, the time
    input, the γ label's range (gamma_min, gamma_max), fixed whatever the learned endpoints are now); ``{}`` for a
    NoiseSchedule."""
    if not is_gamma(config.schedule):
        return {}
    config = resolve(config)
    gamma_range = None if config.schedule in INTERPOLATED else (float(config.gamma_min), float(config.gamma_max))
    return {"T": config.T, "time_input": config.time_input, "gamma_range": gamma_range}


def estimator_kwargs(config) -> dict:
    """What the estimator of ``config`` is made with: the schedule objective for the continuous-time ones."""
    from ..infer import ESTIMATORS

    if ESTIMATORS[config.estimator].needs_steps:
        return {}
    return {"schedule_objective": resolve(config).schedule_objective or "elbo"}
