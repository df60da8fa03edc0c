"""The learned-schedule row: what training a γ schedule's interior for variance does to the estimators, at a fixed θ.

In continuous time (T = 0, the net conditioned on γ) the ELBO depends on a γ schedule through its endpoints only; the
interior of VDM's monotone net (:class:`~ppl_diffusion.gamma.MonotoneNetGamma`) changes only how the diffusion term's
t-integral is sampled, so it is trained to minimise the estimate's variance (docs/variational.md). This module
measures that in ``compare``'s terms, with the denoiser θ and the endpoints held fixed:

1. **initial**: the interior reset to its initialisation (VDM's: positive-weight layers with weights N(0, 0.01²),
   nearly linear; drawn from ``seed``), every continuous-time estimator measured by
   :func:`~ppl_diffusion.study.fixed.measure` (R replicates of the ELBO estimate and of the gradient in θ);
2. the interior alone trained for ``steps`` Adam steps on training batches with
   ``ContinuousTimeELBO(schedule_objective="variance")`` (its gradient is that of Σ_i (w_i L_i)², the squared
   per-example diffusion estimates; the denoiser and the endpoints are frozen);
3. **trained**: the same estimators measured again, with the same replicate seeds.

Both stages estimate the same ELBO (same θ, same endpoints): their means must agree within their MCSEs, and the
ratio of the variances (trained / initial, with its SE from the draws' fourth moments by the delta method) is what
the interior buys.
"""

from __future__ import annotations

import dataclasses
import math

import pyro
import torch

from ..infer import ContinuousTimeELBO
from .estimators import CONTINUOUS, make_study_estimator
from .fixed import FixedThetaRow, measure


def check_interior(diffusion) -> list:
    """The interior parameters of ``diffusion``'s γ schedule; a one-line error for a model without one, or not in
    continuous time.

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion`.

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser
    >>> from ppl_diffusion.gamma import MonotoneNetGamma
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=MonotoneNetGamma(features=8), event_shape=(2,), T=0,
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1))  # VDM's learned schedule
    >>> x0 = torch.rand(4, 2) * 2 - 1
    >>> from ppl_diffusion.study.schedule import check_interior
    >>> len(check_interior(diffusion)) > 0
    True
    """
    schedule = diffusion.schedule
    interior = list(schedule.interior_parameters()) if hasattr(schedule, "interior_parameters") else []
    if not getattr(diffusion, "continuous", False) or not interior:
        what = (f"a {type(schedule).__name__} schedule" if getattr(diffusion, "gamma_schedule", False)
                else "a NoiseSchedule")
        raise ValueError(f"the learned-schedule row trains the interior of a γ schedule in continuous time, and this "
                         f"model has {what} with T = {diffusion.T}: use --schedule learned-net --T 0 (or a run of "
                         "it), or pass --schedule-steps 0")
    return interior


def reset_interior(diffusion, seed: int) -> None:
    """The schedule's interior parameters at a fresh initialisation of the same class and width (drawn from
    ``seed``); the endpoints and everything else are kept.

    :param diffusion: a model in continuous time with a learned γ schedule (:func:`check_interior`).
    :param int seed: the initialisation's seed.

    Example: the same seed gives the same interior.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser
    >>> from ppl_diffusion.gamma import MonotoneNetGamma
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=MonotoneNetGamma(features=8), event_shape=(2,), T=0,
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1))  # VDM's learned schedule
    >>> x0 = torch.rand(4, 2) * 2 - 1
    >>> from ppl_diffusion.study.schedule import check_interior, reset_interior
    >>> reset_interior(diffusion, seed=1)
    >>> before = [p.detach().clone() for p in check_interior(diffusion)]
    >>> with torch.no_grad():
    ...     _ = [p.add_(1.0) for p in check_interior(diffusion)]
    >>> reset_interior(diffusion, seed=1)
    >>> all(torch.equal(p, q) for p, q in zip(check_interior(diffusion), before))
    True
    """
    schedule = diffusion.schedule
    interior = check_interior(diffusion)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(schedule)(*(float(g.detach()) for g in schedule.endpoints()), features=schedule.features)
    with torch.no_grad():
        for p, q in zip(interior, fresh.interior_parameters()):
            p.copy_(q.to(p))


def train_interior(diffusion, train_x: torch.Tensor, *, steps: int, lr: float, batch_size: int, seed: int) -> list:
    """``steps`` Adam steps of the interior alone on batches of ``train_x`` with the variance objective (uniform t);
    the denoiser, the endpoints and a learned prior are frozen. Returns the per-step losses (−ELBO per example).

    :param diffusion: a model in continuous time with a learned γ schedule.
    :param torch.Tensor train_x: training examples ``[n] + event_shape``.
    :param int steps: Adam steps.
    :param float lr: Adam's learning rate.
    :param int batch_size: examples per step.
    :param int seed: the batches' and the draws' seed.

    Example: the denoiser is untouched.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser
    >>> from ppl_diffusion.gamma import MonotoneNetGamma
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=MonotoneNetGamma(features=8), event_shape=(2,), T=0,
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1))  # VDM's learned schedule
    >>> x0 = torch.rand(4, 2) * 2 - 1
    >>> from ppl_diffusion.study.schedule import train_interior
    >>> net = [p.detach().clone() for p in diffusion.denoiser.parameters()]
    >>> _ = diffusion.eval()  # as the study does (frozen modules in train mode make Pyro warn)
    >>> losses = train_interior(diffusion, x0, steps=2, lr=1e-3, batch_size=4, seed=0)
    >>> len(losses), all(torch.equal(p, q) for p, q in zip(diffusion.denoiser.parameters(), net))
    (2, True)
    """
    interior = check_interior(diffusion)
    frozen = [p for p in diffusion.parameters() if p.requires_grad and all(p is not q for q in interior)]
    elbo = ContinuousTimeELBO(timesteps="uniform", schedule_objective="variance")
    opt = torch.optim.Adam(interior, lr=lr)
    g = torch.Generator().manual_seed(seed)
    pyro.set_rng_seed(seed)
    losses = []
    for p in frozen:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            batch = train_x[torch.randint(0, len(train_x), (batch_size,), generator=g)].to(interior[0].device)
            opt.zero_grad()
            loss = elbo.differentiable_loss(diffusion.model, diffusion.guide, batch)
            loss.backward()
            opt.step()
            losses.append(loss.item() / batch_size)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return losses


def _compare(before: FixedThetaRow, after: FixedThetaRow) -> dict:
    """The trained/initial variance ratio with its SE (delta method) and the difference of the means with its SE."""
    vb, va = before.elbo_sd ** 2, after.elbo_sd ** 2
    ratio = va / vb if vb > 0 else float("nan")
    ratio_se = ratio * math.hypot(after.elbo_var_se / va, before.elbo_var_se / vb) if va > 0 and vb > 0 else float("nan")
    diff, diff_se = after.elbo_mean - before.elbo_mean, math.hypot(after.elbo_mcse, before.elbo_mcse)
    return {"estimator": before.estimator, "var_initial": vb, "var_initial_se": before.elbo_var_se, "var_trained": va,
            "var_trained_se": after.elbo_var_se, "ratio": ratio, "ratio_se": ratio_se,
            "grad_ratio": after.grad_total_variance / before.grad_total_variance,
            "mean_difference": diff, "mean_difference_se": diff_se, "z": diff / diff_se if diff_se > 0 else float("nan")}


def learned_schedule_rows(diffusion, x0: torch.Tensor, train_x: torch.Tensor, *, estimators=CONTINUOUS,
                          replicates: int, steps: int, lr: float, batch_size: int, seed: int = 0,
                          progress: bool = False, on_draws=None) -> dict:
    """The learned-schedule row of the study (module docstring): returns ``{"rows": [...], "comparison": [...],
    "losses": [...], ...}``, each row a :class:`~ppl_diffusion.study.fixed.FixedThetaRow` as a dict with ``"stage"`` ``"initial"`` or
    ``"trained"``. The interior is left trained. ``on_draws(stage, name, idata)`` receives each stage's draws.

    :param diffusion: a model in continuous time with a learned γ schedule.
    :param torch.Tensor x0: the fixed batch the estimators are measured on.
    :param torch.Tensor train_x: the interior's training examples.
    :param estimators: the continuous-time estimators to measure.
    :param int replicates: R per measurement (:func:`~ppl_diffusion.study.fixed.measure`).
    :param int steps: the interior's Adam steps.
    :param float lr: its learning rate.
    :param int batch_size: its batch size.
    :param int seed: the interior's initialisation, batches and replicate seeds.
    :param bool progress: show progress bars.

    Example (on a model such as :func:`train_interior`'s; seconds: two measurements through arviz):

    >>> from ppl_diffusion.study.schedule import learned_schedule_rows
    >>> out = learned_schedule_rows(diffusion, x0, x0, estimators=["continuous"], replicates=4, steps=1, lr=1e-3,
    ...                             batch_size=4)  # doctest: +SKIP
    >>> [row["stage"] for row in out["rows"]]  # doctest: +SKIP
    ['initial', 'trained']
    """
    names = [n for n in estimators if n in CONTINUOUS]
    if not names:
        raise ValueError(f"the learned-schedule row measures the continuous-time estimators; none is among {estimators}: "
                         f"pass --estimators with some of {', '.join(CONTINUOUS)}")
    reset_interior(diffusion, seed)
    rows, measured = [], {}
    for stage in ("initial", "trained"):
        if stage == "trained":
            diffusion.eval()
            losses = train_interior(diffusion, train_x, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
        for k, name in enumerate(names):
            est = make_study_estimator(name, diffusion)
            row, idata = measure(est, x0, replicates, seed=seed + k, progress=progress)
            measured[stage, name] = row
            rows.append({"stage": stage, **dataclasses.asdict(row)})
            if on_draws is not None:
                on_draws(stage, name, idata)
    return {"steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed, "replicates": replicates,
            "interior": f"{type(diffusion.schedule).__name__}(features={diffusion.schedule.features})",
            "rows": rows, "losses": losses,
            "comparison": [_compare(measured["initial", n], measured["trained", n]) for n in names]}


__all__ = ["check_interior", "learned_schedule_rows", "reset_interior", "train_interior"]
