"""Replicates at a fixed θ: the spread of each ELBO estimate and of its gradient, through arviz.

For one batch x_0 (fixed) and one θ (fixed), each estimator is called R times for an ELBO estimate
(``loss``) and R times for a gradient (``loss_and_grads``), every call timed; replicate r is seeded by
(seed, r) alone, so the replicates can be split across ``torchrun`` processes (:func:`measure`). The ELBO draws (per
example: −loss / B) and, for the gradient, its norm and its projections on a few fixed random unit
directions are saved as an ``arviz.InferenceData`` (group ``posterior``: the draws, in 2 chains of R/2
when R is even; group ``sample_stats``: the seconds per call), one netCDF file per estimator. The
replicates are independent draws by construction (each its own seed), so the Monte-Carlo standard error of their
mean is sd / √R (sd with ddof = 1; :func:`mcse`), not arviz's, which divides by its autocorrelation-based ESS
(64 for 40 draws: arviz caps ESS at R·log10 R) and so came out below sd / √R. arviz's ``summary`` still gives the
mean, sd and bulk ESS; ESS stays as a diagnostic of that independence, flagged when it leaves
:data:`ESS_RANGE` times R (:func:`ess_flag`). The range is set by simulation (:func:`independent_ess`): arviz's
bulk ESS of R independent draws in this layout is rank-based, so the same for any continuous distribution of the
draws, and in 10,000 simulations (``independent_ess(R)``) it fell below R/4 in 0.21 % of them at R = 40 and
0.08 % at R = 200 (its 0.1 % quantile is 0.23 R and 0.27 R), and above 2R in none and 0.02 % (its 99.9 % quantile
is 1.60 R, the cap, and 1.77 R). Below R ≈ 30 it sits at the cap and says little.

The gradient's total variance tr Cov(ĝ) = Σ_i Var(ĝ_i) over all parameters is accumulated exactly
(Welford, float64: :class:`RunningMoments`) without storing the draws; ‖E ĝ‖² is estimated without bias as ‖ḡ‖² − tr Cov / R,
and the signal-to-noise ratio is SNR = ‖E ĝ‖ / sqrt(tr Cov) (Rainforth et al. 2018 use it per
component; this is its aggregate form). Efficiency is 1 / (variance × seconds per call): the number
of calls' worth of precision one second buys, comparable across estimators of the same quantity.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..resume import Chunk, compute_now
from .estimators import StudyEstimator

GRAD_DIRECTIONS = 8  # random unit directions the gradient draws are projected on (kept in the netCDF)
REPLICATES_PER_CHUNK = 8  # replicates per saved chunk of a measurement (ppl_diffusion.resume)


@dataclass
class FixedThetaRow:
    """The measurements of one estimator at the fixed θ; ELBO and gradient per example (batch mean).

    One row of ``fixed_theta.csv`` (made by :func:`measure`); each field is commented in the source. The
    efficiencies are set from the others: 1 / (sd² × seconds per call) and 1 / (tr Cov(ĝ) × seconds per gradient).

    Example (a row built by hand; :func:`measure` makes one from draws):

    >>> from ppl_diffusion.study.fixed import FixedThetaRow
    >>> row = FixedThetaRow(estimator="stochastic-kl", family="stochastic t", bound="ELBO", description="",
    ...                     replicates=4, elbo_mean=-10.0, elbo_sd=2.0, elbo_mcse=1.0, elbo_ess=4.0,
    ...                     loss_seconds=0.5, grad_seconds=0.25, grad_total_variance=4.0, grad_mean_norm_sq=1.0,
    ...                     grad_snr=0.5, grad_proj_ess_min=4.0)
    >>> row.elbo_efficiency, row.grad_efficiency  # 1 / (2² × 0.5), 1 / (4 × 0.25)
    (0.5, 1.0)
    """

    estimator: str
    family: str
    bound: str
    description: str
    replicates: int
    elbo_mean: float
    elbo_sd: float
    elbo_mcse: float  # Monte-Carlo standard error of the mean of R independent draws: sd / √R
    elbo_ess: float  # arviz's bulk effective sample size of the R draws (a diagnostic: ≈ R when independent)
    loss_seconds: float  # mean seconds per ELBO estimate
    grad_seconds: float  # mean seconds per gradient
    grad_total_variance: float  # tr Cov(ĝ), ĝ = ∇θ (loss / B)
    grad_mean_norm_sq: float  # unbiased estimate of ‖E ĝ‖²
    grad_snr: float  # sqrt(max(‖E ĝ‖², 0) / tr Cov)
    grad_proj_ess_min: float  # smallest arviz ESS over the projected gradient directions
    elbo_var_se: float = float("nan")  # standard error of elbo_sd² (from the draws' fourth moment)
    elbo_efficiency: float = float("nan")  # 1 / (elbo_sd² × loss_seconds)
    grad_efficiency: float = float("nan")  # 1 / (tr Cov × grad_seconds)
    warmup_calls: int = 0  # untimed calls that filled an importance sampler's history
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        var = self.elbo_sd ** 2
        self.elbo_efficiency = 1.0 / (var * self.loss_seconds) if var > 0 else float("inf")
        tv = self.grad_total_variance
        self.grad_efficiency = 1.0 / (tv * self.grad_seconds) if tv > 0 else float("inf")


class RunningMoments:
    """Mean and variance of vectors fed one at a time (Welford's update, float64): for gradients of
    millions of parameters, whose R draws are not kept.

    :param int n: the vectors' length.

    Example:

    >>> import torch
    >>> from ppl_diffusion.study.fixed import RunningMoments
    >>> moments = RunningMoments(2)
    >>> for x in ([1.0, 0.0], [3.0, 0.0], [5.0, 3.0]):
    ...     moments.add(torch.tensor(x))
    >>> moments.mean.tolist(), moments.variance.tolist(), moments.total_variance()
    ([3.0, 1.0], [4.0, 3.0], 7.0)
    """

    def __init__(self, n: int) -> None:
        self.count = 0
        self.mean = torch.zeros(n, dtype=torch.float64)
        self._m2 = torch.zeros(n, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        """Feed one vector (any shape, flattened to ``[n]``)."""
        x = x.detach().double().cpu().reshape(-1)
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (x - self.mean)

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased variance of each component (needs 2 draws)."""
        return self._m2 / (self.count - 1)

    def total_variance(self) -> float:
        """tr Cov = Σ_i Var(x_i)."""
        return self.variance.sum().item()

    def merge(self, other: "RunningMoments") -> "RunningMoments":
        """The moments of both streams of vectors together (Chan et al.'s pairwise update), in place."""
        n = self.count + other.count
        if other.count:
            delta = other.mean - self.mean
            self._m2 += other._m2 + delta.pow(2) * (self.count * other.count / n)
            self.mean += delta * (other.count / n)
            self.count = n
        return self

    def gathered(self, world) -> "RunningMoments":
        """The moments over every process of ``world`` (each fed its own vectors), merged in rank order."""
        if not world.distributed:
            return self
        counts = world.gather(torch.tensor([self.count], dtype=torch.float64))
        means, m2s = world.gather(self.mean[None]), world.gather(self._m2[None])
        total = RunningMoments(len(self.mean))
        for c, m, m2 in zip(counts.tolist(), means, m2s):
            part = RunningMoments(len(self.mean))
            part.count, part.mean, part._m2 = int(c), m.clone(), m2.clone()
            total.merge(part)
        return total

    def mean_norm_sq(self) -> float:
        """Unbiased ‖E x‖²: ‖x̄‖² − tr Cov / R."""
        return self.mean.pow(2).sum().item() - self.total_variance() / self.count


#: ESS / R outside this range flags replicates that do not look independent (:func:`ess_flag`).
ESS_RANGE = (0.25, 2.0)


def mcse(draws) -> float:
    """Monte-Carlo standard error of the mean of R independent draws: sd / √R, sd with ddof = 1.

    Example:

    >>> from ppl_diffusion.study.fixed import mcse
    >>> mcse([1.0, 2.0, 3.0, 4.0])  # sd = √(5/3), / √4
    0.6455
    """
    x = np.asarray(draws, dtype=np.float64).reshape(-1)
    return float(x.std(ddof=1) / math.sqrt(len(x)))


def ess_flag(ess: float, replicates: int) -> str | None:
    """``None`` when arviz's ESS of ``replicates`` independent draws is within :data:`ESS_RANGE` of R, else a
    few words for the report saying which way it departs (below: the draws look positively correlated, and
    sd / √R would understate the MCSE).

    :param float ess: arviz's bulk ESS of the draws.
    :param int replicates: R.

    Example:

    >>> from ppl_diffusion.study.fixed import ess_flag
    >>> ess_flag(38.0, 40) is None, ess_flag(5.0, 40)[:9]
    (True, 'ESS 5 < R')
    """
    low, high = ESS_RANGE
    if ess < low * replicates:
        return (f"ESS {ess:.0f} < R/4 = {low * replicates:.0f}: the replicates look correlated, so sd/√R "
                "understates the MCSE")
    if ess > high * replicates:
        return f"ESS {ess:.0f} > 2R = {high * replicates:.0f}: the replicates look anticorrelated"
    return None


def independent_ess(replicates: int, simulations: int = 10_000, seed: int = 0) -> np.ndarray:
    """arviz's bulk ESS / R of ``replicates`` independent N(0, 1) draws in the study's layout (``_chains``),
    ``simulations`` times: the simulation :data:`ESS_RANGE` was set from (the module docstring has its figures).

    :param int replicates: R.
    :param int simulations: how many sets of R draws.
    :param int seed: the draws' seed.

    Example:

    >>> from ppl_diffusion.study.fixed import independent_ess
    >>> ratios = independent_ess(40, simulations=3)
    >>> ratios.shape, bool(((ratios > 0.25) & (ratios <= 2.0)).all())
    ((3,), True)
    """
    import warnings

    import arviz as az

    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz warns about few draws per chain at small R
        return np.array([float(az.ess(_chains(rng.normal(size=replicates)), method="bulk"))
                         for _ in range(simulations)]) / replicates


def variance_se(draws) -> float:
    """Standard error of the sample variance of i.i.d. draws: sqrt((m4 − s⁴) / R), m4 the fourth central
    moment (no normality assumed: heavy tails make it large, as they should).

    Example: ±1 draws have m4 = s⁴ (up to the ddof), so their variance is known almost exactly.

    >>> from ppl_diffusion.study.fixed import variance_se
    >>> round(variance_se([-1.0, 1.0] * 50), 4)
    0.0
    """
    x = np.asarray(draws, dtype=np.float64).reshape(-1)
    c = x - x.mean()
    return float(np.sqrt(max((c ** 4).mean() - c.var(ddof=1) ** 2, 0.0) / len(x)))


def _chains(x: np.ndarray) -> np.ndarray:
    """R draws as [chain x draw]: 2 chains when R is even (so that arviz can compare halves)."""
    x = np.asarray(x)
    return x.reshape((2, -1) + x.shape[1:]) if len(x) % 2 == 0 and len(x) >= 8 else x[None]


def inference_data(name: str, elbo, grad_norm, grad_proj, loss_seconds, grad_seconds, attrs: dict):
    """The draws of one estimator as ``arviz.InferenceData``: group ``posterior`` (``elbo``, ``grad_norm``,
    ``grad_proj`` ``[R x directions]``) and ``sample_stats`` (the seconds per call), in 2 chains of R/2 when R is
    even and >= 8.

    :param str name: the estimator.
    :param dict attrs: kept as string attributes.

    Example: R = 8 draws become 2 chains of 4.

    >>> import numpy as np
    >>> from ppl_diffusion.study.fixed import inference_data
    >>> idata = inference_data("stochastic-kl", elbo=np.arange(8.0), grad_norm=np.ones(8), grad_proj=np.zeros((8, 3)),
    ...                        loss_seconds=np.full(8, 0.01), grad_seconds=np.full(8, 0.02), attrs={"T": 10})
    >>> list(idata.groups()), idata.posterior["elbo"].shape, idata.posterior["grad_proj"].shape
    (['posterior', 'sample_stats'], (2, 4), (2, 4, 3))
    """
    import arviz as az

    idata = az.from_dict(
        posterior={"elbo": _chains(elbo), "grad_norm": _chains(grad_norm), "grad_proj": _chains(grad_proj)},
        sample_stats={"loss_seconds": _chains(loss_seconds), "grad_seconds": _chains(grad_seconds)},
        dims={"grad_proj": ["direction"]},
        attrs={"estimator": name, **{k: str(v) for k, v in attrs.items()}},
    )
    return idata


def measure(est: StudyEstimator, x0: torch.Tensor, replicates: int, *, seed: int = 0, directions=None,
            progress: bool = False, chunk: Chunk = compute_now, per_chunk: int = REPLICATES_PER_CHUNK):
    """R replicates of ``est`` at the current θ; returns (:class:`~ppl_diffusion.study.fixed.FixedThetaRow`, ``InferenceData``).

    Replicate r (of the ELBO estimate, and separately of the gradient) runs with the estimator reseeded by
    :func:`ppl_diffusion.noise.seed_of` ``(seed, r)``, so its draws depend on (seed, r) alone. Under
    ``torchrun`` each process runs a contiguous share of the replicates and the draws, timings and gradient
    moments are gathered in replicate order: every process returns the row of the whole R (the timings are
    those of each replicate's own process).

    ``chunk`` (:mod:`ppl_diffusion.resume`) saves or reads back each group of ``per_chunk`` replicates (their draws,
    timings and the gradient moments after them, keys ``elbo-…`` and ``grad-…``), so a measurement killed and
    called again continues to the same draws and moments, bit for bit (the timings read back are those of the
    process that measured them).

    :param est: the estimator (:func:`~ppl_diffusion.study.estimators.make_study_estimator`).
    :param torch.Tensor x0: the fixed batch ``[B] + event_shape``.
    :param int replicates: R >= 4.
    :param int seed: replicate r's seed is ``seed_of(seed, r)``.
    :param directions: unit directions ``[K x num_params]`` the gradients are projected on (default: 8 random).
    :param bool progress: show a progress bar.

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.study.estimators import make_study_estimator
    >>> from ppl_diffusion.study.fixed import measure
    >>> row, idata = measure(make_study_estimator("stochastic-kl", diffusion), x0, replicates=4)
    >>> row.replicates, row.elbo_sd > 0, row.grad_total_variance > 0, idata.posterior["elbo"].shape
    (4, True, True, (1, 4))
    """
    import arviz as az

    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 4:
        raise ValueError(f"replicates = {replicates!r}; pass at least 4 (--replicates)")
    from .. import noise
    from ..distributed import world

    w = world()
    batch = x0.shape[0]
    est.reseed(seed)
    warmup = est.warm_up(x0)  # the same on every process: reseeded identically
    # One untimed call of each path (allocations, lazy initialisation), then the timed replicates.
    est.estimate(x0)
    est.gradient(x0)
    n_params = est.num_params
    if directions is None:
        g = torch.Generator().manual_seed(12345)
        directions = torch.randn(GRAD_DIRECTIONS, n_params, generator=g, dtype=torch.float64)
        directions /= directions.norm(dim=1, keepdim=True)

    from tqdm.auto import tqdm

    # Replicate r's randomness is the generator seeded with seed_of(seed, r, phase): a function of (seed, r)
    # alone, so the replicates can be split across processes (contiguously, gathered in order).
    mine = range(replicates)[w.shard(replicates)]
    groups = [mine[i:i + per_chunk] for i in range(0, len(mine), per_chunk)]
    key = f"{mine.start}-{mine.stop}"
    elbo, loss_s = [], []
    bar = tqdm(total=2 * len(mine), desc=est.name, disable=not (progress and w.is_main), leave=False)

    def estimates(group):
        values, seconds = [], []
        for r in group:
            est.reseed(noise.seed_of(seed, r, 0))
            t0 = time.perf_counter()
            value = est.estimate(x0)
            seconds.append(time.perf_counter() - t0)
            values.append(value / batch)
        return {"elbo": np.asarray(values, np.float64), "seconds": np.asarray(seconds, np.float64)}

    for j, group in enumerate(groups):
        done = chunk(f"elbo-{key}-{j}", lambda: estimates(group))
        elbo.extend(done["elbo"].tolist())
        loss_s.extend(done["seconds"].tolist())
        bar.update(len(group))
    moments = RunningMoments(n_params)
    grad_s, norms, projs = [], [], []

    def gradients(group):
        seconds, group_norms, group_projs = [], [], []
        for r in group:
            est.reseed(noise.seed_of(seed, r, 1))
            t0 = time.perf_counter()
            _, g = est.gradient(x0)
            seconds.append(time.perf_counter() - t0)
            g = g.cpu() / batch  # the gradient of the per-example loss
            moments.add(g)
            group_norms.append(g.norm().item())
            group_projs.append((directions @ g).numpy())
        return {"seconds": np.asarray(seconds, np.float64), "norms": np.asarray(group_norms, np.float64),
                "projs": np.asarray(group_projs, np.float64).reshape(len(group), len(directions)),
                "count": np.array(moments.count), "mean": moments.mean.numpy(), "m2": moments._m2.numpy()}

    for j, group in enumerate(groups):
        done = chunk(f"grad-{key}-{j}", lambda: gradients(group))
        grad_s.extend(done["seconds"].tolist())
        norms.extend(done["norms"].tolist())
        projs.extend(list(done["projs"]))
        # The moments after this group (read back, or as just computed: the same numbers).
        moments.count = int(done["count"])
        moments.mean = torch.from_numpy(np.array(done["mean"]))
        moments._m2 = torch.from_numpy(np.array(done["m2"]))
        bar.update(len(group))
    bar.close()

    def gather(values, shape=()):
        return w.gather(torch.as_tensor(np.asarray(values, np.float64).reshape(-1, *shape))).numpy()

    elbo, loss_s, grad_s, norms = gather(elbo), gather(loss_s), gather(grad_s), gather(norms)
    projs = gather(projs, (len(directions),))
    moments = moments.gathered(w)
    total_var, mean_sq = moments.total_variance(), moments.mean_norm_sq()

    idata = inference_data(est.name, elbo, norms, projs, loss_s, grad_s,
                           {"bound": est.bound, "batch": batch, "replicates": replicates})
    summ = az.summary(idata, var_names=["elbo"], kind="all", round_to="none")
    ess_proj = az.ess(idata, var_names=["grad_proj"])["grad_proj"].values
    row = FixedThetaRow(
        estimator=est.name, family=est.family, bound=est.bound, description=est.description,
        replicates=replicates, elbo_mean=float(summ.loc["elbo", "mean"]), elbo_sd=float(summ.loc["elbo", "sd"]),
        elbo_mcse=mcse(elbo), elbo_ess=float(summ.loc["elbo", "ess_bulk"]),
        loss_seconds=float(np.mean(loss_s)), grad_seconds=float(np.mean(grad_s)),
        grad_total_variance=total_var, grad_mean_norm_sq=mean_sq,
        grad_snr=math.sqrt(max(mean_sq, 0.0) / total_var) if total_var > 0 else float("inf"),
        grad_proj_ess_min=float(np.min(ess_proj)), elbo_var_se=variance_se(elbo), warmup_calls=warmup,
    )
    if warmup:
        row.notes.append(f"importance-sampling history filled by {warmup} untimed calls at this θ, then frozen")
    return row, idata


def pooled_agreement(rows: list[FixedThetaRow]) -> dict:
    r"""Do the unbiased estimators (bound "ELBO") agree on the mean? χ² of the means against their
    inverse-variance pooled mean, with each mean's MCSE sd / √R; returns the test's numbers.

    .. math:: \chi^2 = \sum_j w_j (m_j - \bar m)^2, \quad w_j = 1/\mathrm{MCSE}_j^2, \quad
              \bar m = \sum_j w_j m_j / \sum_j w_j, \qquad \text{dof} = J - 1

    :param list rows: :class:`FixedThetaRow` objects; those of bound ``"ELBO"`` with an MCSE > 0 are pooled.
    :returns: ``{"estimators", "pooled_elbo", "pooled_se", "chi2", "dof", "p_value", "z"}``.

    Example: two means 2 MCSEs apart.

    >>> from ppl_diffusion.study.fixed import FixedThetaRow, pooled_agreement
    >>> def row(name, mean):
    ...     return FixedThetaRow(estimator=name, family="stochastic t", bound="ELBO", description="", replicates=4,
    ...                          elbo_mean=mean, elbo_sd=2.0, elbo_mcse=1.0, elbo_ess=4.0, loss_seconds=0.1,
    ...                          grad_seconds=0.1, grad_total_variance=1.0, grad_mean_norm_sq=1.0, grad_snr=1.0,
    ...                          grad_proj_ess_min=4.0)
    >>> out = pooled_agreement([row("a", -10.0), row("b", -12.0)])
    >>> out["pooled_elbo"], out["chi2"], out["dof"], round(out["p_value"], 4)
    (-11.0, 2.0, 1, 0.1573)
    """
    rows = [r for r in rows if r.bound == "ELBO" and r.elbo_mcse > 0]
    if len(rows) < 2:
        return {"estimators": [r.estimator for r in rows], "chi2": None, "dof": 0, "p_value": None}
    w = np.array([1.0 / r.elbo_mcse ** 2 for r in rows])
    m = np.array([r.elbo_mean for r in rows])
    pooled = float((w * m).sum() / w.sum())
    chi2 = float((w * (m - pooled) ** 2).sum())
    from scipy.stats import chi2 as chi2_dist

    z = (m - pooled) / np.sqrt(np.maximum(1.0 / w - 1.0 / w.sum(), 1e-300))
    return {"estimators": [r.estimator for r in rows], "pooled_elbo": pooled, "pooled_se": float(w.sum() ** -0.5),
            "chi2": chi2, "dof": len(rows) - 1, "p_value": float(chi2_dist.sf(chi2, len(rows) - 1)),
            "z": {r.estimator: float(zi) for r, zi in zip(rows, z)}}


__all__ = ["ESS_RANGE", "FixedThetaRow", "RunningMoments", "ess_flag", "independent_ess", "inference_data", "mcse",
           "measure",
           "pooled_agreement", "variance_se"]
