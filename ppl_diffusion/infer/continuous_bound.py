"""The continuous-time bound (T = ∞) of a γ-schedule model per example: an unbiased estimate, with its standard error
and the Monte-Carlo error of its t-integral.

The bound of example x_0 (docs/variational.md; :class:`~ppl_diffusion.infer.continuous_elbo.ContinuousTimeELBO` trains by it) is

    L(x_0) = L_rec + L_prior + ∫_0^1 E_ε L(t) dt,     L(t) = ½ γ'(t) ‖ε − ε̂(α_t x_0 + σ_t ε, γ(t))‖²,

and :func:`estimate_continuous_bound` computes, for every example,

    L̂ = L_rec + L_prior + Σ_k (1/m) Σ_{r=1}^m L(t_kr) / p_k(t_kr),     t_kr ~ p_k on stratum S_k,

- **the prior term** L_prior = KL(q(x_T|x_0) ‖ p(x_T)) at γ_1, in closed form (one draw of x_T, ``(seed, i, 0, PRIOR)``,
  for a prior without a closed-form KL: the full bound's rule);
- **the reconstruction term** L_rec = −log p(x_0|x_1), one draw x_1 = α_0 x_0 + σ_0 ε with ε = ``(seed, i, 1, XT)``, the
  noise of the full bound's L_0 of a chain of the same γ (x_1 sits at γ_0 at every T), so that it is the very number
  the chains' evaluation prints for L_0 (the decoder is the net at x_1: no closed form in x_1; the one draw is
  unbiased, and its spread is inside the standard error over examples, not in the t-integral's);
- **the diffusion term** by R = K·m draws of t per example (:class:`ContinuousPlan`): [0, 1] is cut into K strata and
  t drawn m times in each from a proposal p_k, uniform (:func:`plan_continuous_uniform`: K equal strata, so each
  draw is uniform on its stratum, a per-example low-discrepancy design) or a pilot's importance proposal
  (:func:`plan_continuous_from_profile` on :func:`continuous_pilot_profile`'s √E[L(t)²] from training examples,
  as ``evaluate --bound estimate`` does for the chain); draw r of stratum k is ``noise.uniform(seed, i, k·m + r,
  TIMESTEP)`` through p_k's inverse CDF, and its ε is ``noise.normal(seed, i, k·m + r, DIFFUSION)``.

Every number is a function of (seed, the example's index, its x_0, the plan) alone: any batch, subset or process
count gives each example the same estimate, and for fixed weights the estimate is deterministic (what validation
needs). E[L̂] = L: each draw's L(t)/p_k(t) is unbiased for ∫_{S_k} E_ε L, and the endpoint draws for their terms.

**Standard errors.** The examples' L̂ are independent, so the SE over examples of their mean covers everything
(examples, t, ε, x_1). The t-integral's own Monte-Carlo error, what R draws leave of the diffusion term (t and ε),
is estimated per example from the m ≥ 2 draws within each stratum: v̂_i = Σ_k s_k²/m, s_k² the sample variance of
L(t)/p_k(t) over the stratum's draws (unbiased for the conditional variance of the diffusion estimate), and its SE of
the mean is √(Σ_i v̂_i)/N (``None`` for m = 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .. import noise as counter_noise
from ..resume import Chunk, compute_now, in_chunks
from .bound import check_indices
from .estimate import PerExampleEstimate, _count
from .continuous_elbo import continuous_time_terms

PROPOSALS = ("uniform", "pilot")


@dataclass(frozen=True)
class ContinuousPlan:
    """Where the draws of t fall: ``strata[k]`` = (first bin, last bin + 1) of stratum k over the bins of [0, 1]
    with ``edges`` ``[G + 1]``, a proposal density ``density`` ``[G]`` constant on each bin (∫_0^1 = 1, > 0), and
    ``draws`` = m draws per stratum and example. Made by :func:`plan_continuous_uniform` or
    :func:`plan_continuous_from_profile`.

    Example:

    >>> from ppl_diffusion.infer.continuous_bound import plan_continuous_uniform
    >>> plan = plan_continuous_uniform(strata=4, draws=2)
    >>> plan.t_draws, plan.to_dict()["strata_bounds"][1]
    (8, [0.25, 0.5])
    >>> t, w = plan.draw(seed=0, indices=[0, 1, 2])  # [N x K x m]
    >>> t.shape, bool(((t[:, 1] >= 0.25) & (t[:, 1] < 0.5)).all()), w[0, 0].tolist()  # w = 1/(m p_k(t))
    ((3, 4, 2), True, [0.125, 0.125])
    """

    edges: np.ndarray
    density: np.ndarray
    strata: tuple  # K pairs (first bin, end bin)
    draws: int
    proposal: str = "uniform"
    pilot: dict = field(default_factory=dict)

    @property
    def t_draws(self) -> int:
        """R = K·m, draws of t per example (each one network call)."""
        return len(self.strata) * self.draws

    def draw(self, seed: int, indices) -> tuple[np.ndarray, np.ndarray]:
        """Times ``[N x K x m]`` and weights 1/(m·p_k(t)) ``[N x K x m]`` of the examples ``indices``.

        :param int seed: the draws' seed (counter-based, per example).
        :param indices: the examples' indices ``[N]``.
        """
        index = check_indices(indices, len(np.asarray(indices)))
        K, m = len(self.strata), self.draws
        u = counter_noise.uniform(seed, index[:, None], np.arange(K * m)[None, :],
                                  stream=counter_noise.TIMESTEP).reshape(len(index), K, m)
        t, w = np.zeros_like(u), np.zeros_like(u)
        widths = np.diff(self.edges)
        for k, (a, b) in enumerate(self.strata):
            mass = self.density[a:b] * widths[a:b]  # the proposal's mass per bin of the stratum
            total = mass.sum()
            cdf = np.cumsum(mass) / total
            j = np.minimum(np.searchsorted(cdf, u[:, k], side="right"), b - a - 1)  # the bin of each draw
            below = np.where(j > 0, cdf[np.maximum(j - 1, 0)], 0.0)
            frac = np.clip((u[:, k] - below) / (cdf[j] - below), 0.0, 1.0)  # uniform within the bin
            t[:, k] = np.minimum(self.edges[a + j] + frac * widths[a + j], np.nextafter(1.0, 0.0))
            w[:, k] = total / (m * self.density[a + j])  # 1 / (m p_k(t)), p_k = density / stratum mass
        return t, w

    def to_dict(self) -> dict:
        """The plan's settings, JSON-ready."""
        return {"strata": len(self.strata), "draws": self.draws, "t_draws": self.t_draws, "proposal": self.proposal,
                "strata_bounds": [[float(self.edges[a]), float(self.edges[b])] for a, b in self.strata],
                **({"pilot": self.pilot} if self.pilot else {})}


def plan_continuous_uniform(*, strata: int = 20, draws: int = 2) -> ContinuousPlan:
    """K = ``strata`` equal strata of [0, 1], t uniform in each, m = ``draws`` draws per stratum.

    :param int strata: K.
    :param int draws: m.
    :rtype: ContinuousPlan

    Example:

    >>> from ppl_diffusion.infer.continuous_bound import plan_continuous_uniform
    >>> plan = plan_continuous_uniform(strata=4, draws=2)
    >>> plan.t_draws, plan.to_dict()["strata_bounds"][1]
    (8, [0.25, 0.5])
    """
    K, m = _count("strata", strata, "--strata", 1), _count("draws", draws, "--draws", 1)
    return ContinuousPlan(edges=np.linspace(0.0, 1.0, K + 1), density=np.ones(K),
                          strata=tuple((k, k + 1) for k in range(K)), draws=m)


def plan_continuous_from_profile(profile, *, strata: int = 20, draws: int = 2, floor: float = 0.1,
                                 pilot: dict | None = None) -> ContinuousPlan:
    """Stratified importance sampling of t from a profile g ``[G]`` >= 0 on G equal bins of [0, 1]: the proposal
    q = (1 − floor)·g/∫g + floor (a uniform floor: weights stay below 1/floor), the strata contiguous runs of bins
    cut at the k/K quantiles of q (K <= G). With g = √E[L(t)²] this is the variance-optimal proposal and allocation
    (as :func:`~ppl_diffusion.infer.estimate.plan_from_profile` for the chain).

    :param profile: g ``[G]``, e.g. :func:`continuous_pilot_profile`'s.
    :param int strata: K <= G.
    :param int draws: m.
    :param float floor: the uniform proposal's weight, in (0, 1].
    :param dict pilot: the pilot's settings, kept in :meth:`ContinuousPlan.to_dict`.
    :rtype: ContinuousPlan

    Example: a profile twice as high on the first half of [0, 1] puts the first cut before t = 1/2.

    >>> from ppl_diffusion.infer.continuous_bound import plan_continuous_from_profile
    >>> plan = plan_continuous_from_profile([2.0, 2.0, 1.0, 1.0], strata=2, floor=0.25)
    >>> plan.to_dict()["strata_bounds"], plan.density.tolist()  # q = 0.75 g / mean(g) + 0.25
    ([[0.0, 0.5], [0.5, 1.0]], [1.25, 1.25, 0.75, 0.75])
    """
    g = np.asarray(profile, dtype=np.float64)
    if g.ndim != 1 or not len(g) or not np.all(np.isfinite(g)) or g.min() < 0:
        raise ValueError(f"profile must be G finite values >= 0 (one per bin of [0, 1]), got shape {g.shape}")
    if not 0 < floor <= 1:
        raise ValueError(f"floor = {floor!r}; pass a mixing weight of the uniform proposal in (0, 1]")
    K, m = _count("strata", strata, "--strata", 1), _count("draws", draws, "--draws", 1)
    G = len(g)
    if K > G:
        raise ValueError(f"strata = {K} but the pilot has {G} bins; pass --strata <= {G}")
    q = (1 - floor) * (g / g.mean() if g.sum() > 0 else 1.0) + floor  # a density on [0, 1]: mean over bins 1
    c = np.cumsum(q)
    cuts = []
    for k in range(1, K):
        j = int(np.searchsorted(c, k / K * c[-1])) + 1
        lo = (cuts[-1] if cuts else 0) + 1
        cuts.append(min(max(j, lo), G - (K - k)))
    bounds = [0, *cuts, G]
    return ContinuousPlan(edges=np.linspace(0.0, 1.0, G + 1), density=q,
                          strata=tuple(zip(bounds[:-1], bounds[1:])), draws=m, proposal="pilot", pilot=pilot or {})


def _eps(seed: int, index: np.ndarray, draw, like: Tensor, stream: int) -> Tensor:
    z = counter_noise.normal(seed, index, draw, tuple(like.shape[1:]), stream=stream,
                             dtype=np.float64 if like.dtype == torch.float64 else np.float32)
    return torch.from_numpy(z).to(device=like.device, dtype=like.dtype)


def first_draw_terms(diffusion, x0: Tensor, t: Tensor, eps: Tensor, *, seed: int, indices) -> dict[str, Tensor]:
    """The continuous programs' terms ``[B]`` (nats) at times ``t`` with the diffusion term's noise ``eps``, the
    endpoints' noise the module's (x_1: ``(seed, i, 1, XT)``; x_T: ``(seed, i, 0, PRIOR)``): ``"reconstruction"``,
    ``"prior"`` and ``"diffusion"`` = L(t) (:func:`~ppl_diffusion.infer.continuous_elbo.continuous_time_terms`, two network calls)."""
    index = check_indices(indices, x0.shape[0])
    noise = {"x_1": _eps(seed, index, 1, x0, counter_noise.XT), "x_T": _eps(seed, index, 0, x0, counter_noise.PRIOR),
             "x_t": eps}
    return continuous_time_terms(diffusion, x0, t, noise=noise)


def continuous_pilot_profile(diffusion, x: Tensor, *, seed: int, bins: int = 50, inputs_per_call: int = 512
                             ) -> tuple[np.ndarray, int]:
    """√E[L(t)²] over the examples ``x`` (``[n x ...]``, training data) at the midpoints of ``bins`` equal bins of
    [0, 1]: ``([bins], calls)``. Its noise is ``noise.seed_of(seed, 0, 0, TIMESTEP)``'s, not the evaluation's.

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` in continuous time.
    :param torch.Tensor x: training examples ``[n] + event_shape``.
    :param int seed: the evaluation's seed (the pilot derives its own).
    :param int bins: G.
    :param int inputs_per_call: rows per denoiser call.

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser
    >>> from ppl_diffusion.gamma import LinearGamma
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=LinearGamma(), denoiser=MLPDenoiser(dim=2, width=16, depth=1),
    ...                               event_shape=(2,), T=0)  # continuous time, the net conditioned on γ(t)
    >>> x0 = torch.rand(4, 2) * 2 - 1
    >>> from ppl_diffusion.infer.continuous_bound import continuous_pilot_profile
    >>> with torch.no_grad():
    ...     profile, calls = continuous_pilot_profile(diffusion, x0, seed=0, bins=5)
    >>> profile.shape, calls
    ((5,), 20)
    """
    _count("bins", bins, "the pilot's bins", 1)
    x = diffusion.check_data(x)
    pilot_seed = counter_noise.seed_of(seed, 0, 0, counter_noise.TIMESTEP)
    n = len(x)
    mid = (np.arange(bins) + 0.5) / bins
    rows = np.stack(np.broadcast_arrays(np.arange(n)[:, None], np.arange(bins)[None, :]), -1).reshape(-1, 2)
    values = np.zeros((n, bins))
    with torch.no_grad():
        for start in range(0, len(rows), inputs_per_call):
            r = rows[start:start + inputs_per_call]
            xi = x[torch.as_tensor(r[:, 0], device=x.device)]
            eps = _eps(pilot_seed, r[:, 0], r[:, 1], xi, counter_noise.DIFFUSION)
            t = torch.as_tensor(mid[r[:, 1]], dtype=torch.float64, device=x.device)
            values[r[:, 0], r[:, 1]] = diffusion.diffusion_integrand(xi, t, eps).double().cpu().numpy()
    return np.sqrt((values ** 2).mean(0)), len(rows)


@dataclass
class ContinuousBoundEstimate(PerExampleEstimate):
    """Per-example estimates of the continuous-time bound (nats) and the t-integral's estimated variance.

    :param torch.Tensor nll: ``[N]``, L̂ per example (nats), unbiased for the continuous-time bound.
    :param torch.Tensor t_variance: ``[N]``, v̂_i, unbiased for the variance of the diffusion term's estimate; NaN
        when draws = 1.
    :param dict terms: ``{"reconstruction", "diffusion", "prior"}``: ``[N]`` each, summing to ``nll``.
    :param numpy.ndarray t: ``[N x R]`` the drawn times.
    :param numpy.ndarray integrand: ``[N x R]`` L(t) at them (unweighted).
    :param int calls: denoiser inputs evaluated.
    :param int num_dims: D.

    Example: what :func:`~ppl_diffusion.infer.continuous_bound.estimate_continuous_bound` returns, for an untrained
    net in continuous time.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser
    >>> from ppl_diffusion.gamma import LinearGamma
    >>> from ppl_diffusion.infer.continuous_bound import estimate_continuous_bound, plan_continuous_uniform
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=LinearGamma(), denoiser=MLPDenoiser(dim=2, width=16, depth=1),
    ...                               event_shape=(2,), T=0)
    >>> with torch.no_grad():
    ...     est = estimate_continuous_bound(diffusion, torch.rand(4, 2) * 2 - 1,
    ...                                     plan_continuous_uniform(strata=2, draws=1), seed=0)
    >>> sorted(est.terms), est.t.shape, est.integrand.shape, est.num_dims
    (['diffusion', 'prior', 'reconstruction'], (4, 2), (4, 2), 2)
    >>> bool(torch.isnan(est.t_variance).all())  # one draw per stratum: no variance estimate
    True
    """

    nll: Tensor  # [N], L̂ per example (nats), unbiased for the continuous-time bound
    t_variance: Tensor  # [N], v̂_i, unbiased for the variance of the diffusion term's estimate; NaN when draws = 1
    terms: dict  # {"reconstruction", "diffusion", "prior"}: [N] each, summing to nll
    t: np.ndarray  # [N x R] the drawn times
    integrand: np.ndarray  # [N x R] L(t) at them (unweighted)
    calls: int  # denoiser inputs evaluated
    num_dims: int


def estimate_continuous_bound(diffusion, x: Tensor, plan: ContinuousPlan, *, seed: int, indices=None,
                              draw_seed: int | None = None, inputs_per_call: int = 512, progress: bool = False,
                              chunk: Chunk = compute_now, calls_per_chunk: int = 1) -> ContinuousBoundEstimate:
    """The estimate L̂ of every example of ``x`` ``[N x ...]`` under ``plan`` (the module docstring), for a model in
    continuous time (a γ schedule, ``T = 0``).

    :param int seed: the noise and the draws of t (example i's depend on (seed, indices[i]) alone).
    :param indices: the examples' indices (e.g. test-set indices; default 0..N − 1).
    :param int draw_seed: seed of the draws of t and of the diffusion term's ε (default ``seed``): other values
        give independent estimates of the diffusion term with the same endpoint terms.
    :param int inputs_per_call: (example, time) rows per denoiser call.
    :param chunk: saves or reads back each group of ``calls_per_chunk`` denoiser calls (:mod:`ppl_diffusion.resume`;
        default: none saved); the estimate is the same bits either way.
    :param bool progress: show a progress bar (tqdm).
    :rtype: ContinuousBoundEstimate

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser
    >>> from ppl_diffusion.gamma import LinearGamma
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=LinearGamma(), denoiser=MLPDenoiser(dim=2, width=16, depth=1),
    ...                               event_shape=(2,), T=0)  # continuous time, the net conditioned on γ(t)
    >>> x0 = torch.rand(4, 2) * 2 - 1
    >>> from ppl_diffusion.infer.continuous_bound import estimate_continuous_bound, plan_continuous_uniform
    >>> with torch.no_grad():
    ...     est = estimate_continuous_bound(diffusion, x0, plan_continuous_uniform(strata=2, draws=2), seed=0)
    >>> est.nll.shape, est.t.shape, est.calls  # 4 examples, R = 4 draws of t, R + 1 calls each
    (torch.Size([4]), (4, 4), 20)
    >>> torch.allclose(est.nll, sum(est.terms.values()))
    True
    """
    if not getattr(diffusion, "continuous", False):
        raise ValueError("estimate_continuous_bound scores a model in continuous time (a γ schedule with T = 0); "
                         "this model has T = {} steps: use estimate_bound or variational_bound".format(diffusion.T))
    x = diffusion.check_data(x)
    n = len(x)
    index = check_indices(indices, n)
    dseed = seed if draw_seed is None else draw_seed
    t, w = plan.draw(dseed, index)  # [N x K x m]
    K, m = t.shape[1], t.shape[2]
    R = K * m
    rows = np.stack([np.repeat(np.arange(n), R), np.tile(np.arange(R), n)], -1)  # (example, draw j = k·m + r)
    rows = rows[rows[:, 1] > 0]  # draw 0 is scored with the endpoint terms
    values = np.zeros((n, R))
    flat_t = t.reshape(n, R)

    def noise_of(r):  # the diffusion term's ε of rows (example, draw)
        return _eps(dseed, index[r[:, 0]], r[:, 1], x, counter_noise.DIFFUSION)

    def first(start):  # draw 0 of examples start.. in the programs' own pass, which also scores the endpoint terms
        part = np.arange(start, min(start + inputs_per_call, n))
        r = np.stack([part, np.zeros_like(part)], -1)
        ti = torch.as_tensor(flat_t[part, 0], dtype=torch.float64, device=x.device)
        terms = first_draw_terms(diffusion, x[start:start + len(part)], ti, noise_of(r), seed=seed,
                                 indices=index[part])
        return {k: terms[k].double().cpu().numpy() for k in ("reconstruction", "prior", "diffusion")}

    def integrand(start):  # draws 1..R − 1: the integrand alone, one network call per row
        r = rows[start:start + inputs_per_call]
        xi = x[torch.as_tensor(r[:, 0], device=x.device)]
        ti = torch.as_tensor(flat_t[r[:, 0], r[:, 1]], dtype=torch.float64, device=x.device)
        return {"integrand": diffusion.diffusion_integrand(xi, ti, noise_of(r)).double().cpu().numpy()}

    calls = range(0, len(rows), inputs_per_call)
    done = in_chunks(chunk, "rows", calls, calls_per_chunk, integrand)
    if progress:
        from tqdm.auto import tqdm

        done = tqdm(done, total=len(calls), desc="continuous bound", unit="call")
    with torch.no_grad():
        rec, prior = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        for start, out in in_chunks(chunk, "first", range(0, n, inputs_per_call), calls_per_chunk, first):
            part = np.arange(start, min(start + inputs_per_call, n))
            rec[part], prior[part] = torch.from_numpy(out["reconstruction"]), torch.from_numpy(out["prior"])
            values[part, 0] = out["diffusion"]
        for start, out in done:
            r = rows[start:start + inputs_per_call]
            values[r[:, 0], r[:, 1]] = out["integrand"]
    weighted = values.reshape(n, K, m) * w  # [N x K x m], each L(t)/(m p_k(t))
    diffusion_term = weighted.sum((1, 2))
    t_var = (m * weighted).var(axis=2, ddof=1).sum(1) / m if m > 1 else np.full(n, np.nan)
    terms = {"reconstruction": rec, "diffusion": torch.from_numpy(diffusion_term), "prior": prior}
    nll = terms["reconstruction"] + terms["diffusion"] + terms["prior"]
    return ContinuousBoundEstimate(nll=nll, t_variance=torch.from_numpy(np.asarray(t_var, float)), terms=terms,
                                   t=flat_t, integrand=values, calls=n * (R + 1), num_dims=diffusion.num_dims)


__all__ = ["ContinuousBoundEstimate", "ContinuousPlan", "continuous_pilot_profile", "estimate_continuous_bound",
           "plan_continuous_from_profile", "plan_continuous_uniform"]
