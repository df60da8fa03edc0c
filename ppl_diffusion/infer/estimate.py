"""An unbiased estimate of the full bound from a few of its T terms per example, with its standard error.

The full bound of example i is L = L_0 + Σ_{t=1}^{T−1} L_t + L_T: T + 1 terms, T denoiser calls (step t's call
gives L_{t−1}). The terms concentrate at small t, so :func:`estimate_bound` computes

    L̂ = Σ_{t=1}^{t_0} L_{t−1}  +  Σ_k (1/m) Σ_{r=1}^m L_{t_kr − 1} / P_k(t_kr)  +  L_T,     t_kr ~ P_k,

every step t ≤ t_0 (``full_steps``) exactly, and the steps t_0 + 1..T split into K contiguous strata S_k, each
sampled m times (``draws``) from a proposal P_k on S_k: uniform (``plan_uniform``, P_k = 1 / ``|S_k|``) or the pilot's
importance proposal (``plan_from_profile``). E[L̂] = L for any P_k > 0 on S_k, and
t_0 + K·m calls replace T. The draws are per example and counter-based: draw r of stratum k of example i is
``noise.uniform(seed, i, k·m + r, stream=TIMESTEP)`` pushed through P_k's inverse CDF, and the term of step t is
the full bound's term (noise ``(seed, i, t, XT)``, :func:`~ppl_diffusion.infer.bound.step_terms`). So an example's
estimate depends on (seed, i, x_0, plan) alone (any batch, subset or process count), and, given the bound's
noise, L̂ is unbiased for *the same* full bound that ``variational_bound(..., seed=seed)`` computes: the estimate
and the full bound differ by the t-sampling alone.

**Standard errors.** The examples' L̂ are independent, so the SE over examples of the per-example estimates
(``BoundEstimate.bits_per_dim``) covers the examples' spread and the t-sampling together. The t-sampling alone
(how far the figure may be from the full bound of the same examples and seed) is estimated per example from the
m ≥ 2 draws of each stratum, v̂_i = Σ_k s_k² / m with s_k² the sample variance of L_t / P_k(t) over the draws
(unbiased for the conditional variance of L̂_i), and its SE of the mean is √(Σ_i v̂_i) / N (``None`` for m = 1).

**Proposal.** The variance of L̂ for one stratum is (1/m)(Σ_t L_t²/P_k(t) − S_k²), smallest on average over
examples for P_k(t) ∝ √E[L_t²] (improved DDPM's importance sampling of t uses the same root mean square).
:func:`pilot_profile` measures √E[L_t²] on a few *training* examples at a grid of steps (its own seed: the
plan is independent of the evaluated draws, so the estimate stays unbiased), :func:`plan_from_profile`
mixes it with a uniform floor (defensive importance sampling: weights bounded by ``|tail|`` / floor) and cuts the
tail at equal quantiles of that proposal, so that each stratum carries an equal share of it and m draws each is
the variance-optimal allocation when the profile is right.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .. import noise as counter_noise
from ..resume import Chunk, compute_now, in_chunks
from .bound import check_indices, step_terms

PROPOSALS = ("uniform", "pilot")


def _count(name: str, value, flag: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} = {value!r}; pass an integer >= {minimum} ({flag})")
    return int(value)


@dataclass(frozen=True)
class EstimatePlan:
    """Which steps an estimate computes: every t in 1..``full_steps``, and ``draws`` steps from each stratum.

    ``strata[k]`` holds the steps of stratum k (contiguous, together t_0 + 1..T) and ``probs[k]`` P_k(t) on them
    (positive, summing to 1). Made by :func:`plan_uniform` or :func:`plan_from_profile`.

    Example:

    >>> from ppl_diffusion.infer.estimate import plan_uniform
    >>> plan = plan_uniform(10, full_steps=4, strata=3, draws=2)
    >>> [s.tolist() for s in plan.strata], plan.calls_per_example
    ([[5, 6], [7, 8], [9, 10]], 10)
    >>> steps, weights = plan.draw(seed=0, indices=[0, 1])  # [N x K x m]: 2 examples, 3 strata, 2 draws
    >>> steps.shape, weights[0, 0].tolist()  # 1 / (m P_k(t)) = 1 / (2 · 1/2)
    ((2, 3, 2), [1.0, 1.0])
    """

    T: int
    full_steps: int  # t_0: steps 1..t_0 are computed for every example
    strata: tuple  # K int64 arrays of steps
    probs: tuple  # K float64 arrays, P_k(t) on strata[k]
    draws: int  # m draws per stratum and example
    proposal: str = "uniform"
    pilot: dict = field(default_factory=dict)  # the pilot's settings and calls, if any

    @property
    def calls_per_example(self) -> int:
        """Denoiser inputs per example, at most (repeated draws of one step are computed once)."""
        return self.full_steps + len(self.strata) * self.draws

    def draw(self, seed: int, indices) -> tuple[np.ndarray, np.ndarray]:
        """Steps ``[N x K x m]`` and weights 1 / (m·P_k(t)) ``[N x K x m]`` of the examples ``indices``.

        :param int seed: the draws' seed (counter-based: draw r of stratum k of example i is
            ``noise.uniform(seed, i, k·m + r, stream=TIMESTEP)``).
        :param indices: the examples' indices ``[N]``.
        """
        index = check_indices(indices, len(np.asarray(indices)))
        K, m = len(self.strata), self.draws
        steps = np.zeros((len(index), K, m), dtype=np.int64)
        weights = np.zeros((len(index), K, m))
        if K == 0:
            return steps, weights
        u = counter_noise.uniform(seed, index[:, None], np.arange(K * m)[None, :],
                                  stream=counter_noise.TIMESTEP).reshape(len(index), K, m)
        for k, (s, p) in enumerate(zip(self.strata, self.probs)):
            cdf = np.cumsum(p)
            j = np.minimum(np.searchsorted(cdf / cdf[-1], u[:, k], side="right"), len(s) - 1)
            steps[:, k], weights[:, k] = s[j], 1.0 / (m * p[j])
        return steps, weights

    def to_dict(self) -> dict:
        """The plan's settings, JSON-ready (for a result file)."""
        return {"full_steps": self.full_steps, "strata": len(self.strata), "draws": self.draws,
                "proposal": self.proposal, "calls_per_example": self.calls_per_example,
                "strata_bounds": [[int(s[0]), int(s[-1])] for s in self.strata], **({"pilot": self.pilot}
                                                                                    if self.pilot else {})}


def _tail(T: int, full_steps: int, strata: int, draws: int) -> tuple[int, np.ndarray, int]:
    T = _count("T", T, "the model's T", 1)
    t0 = min(_count("full_steps", full_steps, "--full-steps", 0), T)
    _count("strata", strata, "--strata", 1)
    _count("draws", draws, "--draws", 1)
    return t0, np.arange(t0 + 1, T + 1, dtype=np.int64), draws


def plan_uniform(T: int, *, full_steps: int = 20, strata: int = 20, draws: int = 2) -> EstimatePlan:
    """t = 1..``full_steps`` exactly; the rest in ``strata`` strata of (nearly) equal width, each sampled uniformly
    ``draws`` times. ``full_steps`` >= T gives the full bound; ``strata`` is capped at the number of steps left.

    :param int T: the model's number of steps.
    :param int full_steps: t_0, the steps computed exactly.
    :param int strata: K.
    :param int draws: m, draws per stratum and example.
    :rtype: EstimatePlan

    Example:

    >>> from ppl_diffusion.infer.estimate import plan_uniform
    >>> plan = plan_uniform(1000)  # the defaults: 20 steps exactly, 20 strata of 49 steps, 2 draws each
    >>> plan.calls_per_example, len(plan.strata), len(plan.strata[0])
    (60, 20, 49)
    """
    t0, tail, m = _tail(T, full_steps, strata, draws)
    parts = [s for s in np.array_split(tail, min(strata, len(tail))) if len(s)] if len(tail) else []
    return EstimatePlan(T=T, full_steps=t0, strata=tuple(parts), probs=tuple(np.full(len(s), 1 / len(s))
                                                                             for s in parts), draws=m)


def plan_from_profile(profile, *, full_steps: int = 20, strata: int = 20, draws: int = 2,
                      floor: float = 0.1, pilot: dict | None = None) -> EstimatePlan:
    """Stratified importance sampling of the steps above ``full_steps`` from a profile g(t) >= 0, ``[T]``.

    The proposal on the tail is q(t) = (1 − floor) g(t)/Σg + floor / ``|tail|`` (``floor`` in (0, 1]: bounded
    weights); the strata are contiguous runs of steps cut at the k/K quantiles of q (each at least one step), and
    P_k = q restricted to stratum k, renormalised. With g = √E[L_t²] (:func:`pilot_profile`) this is the
    variance-optimal proposal and allocation (module docstring).

    :param profile: g ``[T]``, e.g. :func:`pilot_profile`'s.
    :param int full_steps: t_0.
    :param int strata: K.
    :param int draws: m.
    :param float floor: the uniform proposal's weight in the mixture, in (0, 1].
    :param dict pilot: the pilot's settings, kept in :meth:`EstimatePlan.to_dict`.
    :rtype: EstimatePlan

    Example: a profile concentrated at small t gives narrow strata there.

    >>> import numpy as np
    >>> from ppl_diffusion.infer.estimate import plan_from_profile
    >>> plan = plan_from_profile(1.0 / np.arange(1, 21), full_steps=2, strata=3, draws=2)
    >>> [(int(s[0]), int(s[-1])) for s in plan.strata]
    [(3, 5), (6, 11), (12, 20)]
    >>> [round(float(p.sum()), 6) for p in plan.probs]
    [1.0, 1.0, 1.0]
    """
    g = np.asarray(profile, dtype=np.float64)
    if g.ndim != 1 or not np.all(np.isfinite(g)) or (g.size and g.min() < 0):
        raise ValueError(f"profile must be T finite values >= 0 (one per step), got shape {g.shape}")
    if not 0 < floor <= 1:
        raise ValueError(f"floor = {floor!r}; pass a mixing weight of the uniform proposal in (0, 1]")
    t0, tail, m = _tail(len(g), full_steps, strata, draws)
    if not len(tail):
        return EstimatePlan(T=len(g), full_steps=t0, strata=(), probs=(), draws=m, proposal="pilot",
                            pilot=pilot or {})
    gt = g[tail - 1]
    q = (1 - floor) * (gt / gt.sum() if gt.sum() > 0 else 1 / len(tail)) + floor / len(tail)
    K = min(strata, len(tail))
    # Cut after the first step whose cumulative mass reaches k/K, keeping every stratum non-empty.
    cuts, c = [], np.cumsum(q)
    for k in range(1, K):
        j = int(np.searchsorted(c, k / K * c[-1])) + 1
        lo = (cuts[-1] if cuts else 0) + 1
        cuts.append(min(max(j, lo), len(tail) - (K - k)))
    parts = np.split(np.arange(len(tail)), cuts)
    return EstimatePlan(T=len(g), full_steps=t0, strata=tuple(tail[p] for p in parts),
                        probs=tuple(q[p] / q[p].sum() for p in parts), draws=m, proposal="pilot", pilot=pilot or {})


def _is_numpyro(diffusion) -> bool:
    return getattr(diffusion, "backend", "pyro") == "numpyro"


def terms_of_rows(diffusion, x, pairs: np.ndarray, *, seed: int, index: np.ndarray, inputs_per_call: int = 512,
                  progress: bool = False, chunk: Chunk = compute_now, calls_per_chunk: int = 1) -> np.ndarray:
    """``values [N x (T + 1)]`` float64: ``values[i, t − 1]`` = L_{t−1} of example i for every (i, t) row of
    ``pairs`` ``[R x 2]`` (0 elsewhere) and ``values[i, T]`` = L_T of every example in a row, with the full bound's
    noise of (``seed``, ``index[i]``, t); ``inputs_per_call`` rows per denoiser call. Pyro
    (:func:`~ppl_diffusion.infer.bound.step_terms`) or NumPyro (:func:`ppl_diffusion.numpyro.estimate.row_terms`,
    compiled) by the model's backend. ``chunk`` (:mod:`ppl_diffusion.resume`) saves or reads back each group of
    ``calls_per_chunk`` calls (key ``rows-<group>``): the calls are the same whatever was saved."""
    n, T = len(x), diffusion.T
    values = np.zeros((n, T + 1))
    if _is_numpyro(diffusion):
        from ..numpyro.estimate import row_terms

        xs = np.asarray(x.cpu().numpy() if torch.is_tensor(x) else x, np.float32)

        def rows_fn(rows):
            return row_terms(diffusion, xs[rows[:, 0]], rows[:, 1], index[rows[:, 0]], seed=seed,
                             size=min(inputs_per_call, len(pairs)))
    else:
        def rows_fn(rows):
            at = torch.as_tensor(rows[:, 0], device=x.device)
            term, prior = step_terms(diffusion, x[at], torch.as_tensor(rows[:, 1], device=x.device), seed=seed,
                                     indices=index[rows[:, 0]])
            return term.double().cpu().numpy(), prior.double().cpu().numpy()
    calls = range(0, len(pairs), inputs_per_call)

    def call(start):
        term, prior = rows_fn(pairs[start:start + inputs_per_call])
        return {"term": term, "prior": prior}

    done = in_chunks(chunk, "rows", calls, calls_per_chunk, call)
    if progress:
        from tqdm.auto import tqdm

        done = tqdm(done, total=len(calls), desc="estimate", unit="call")
    with torch.no_grad():
        for start, out in done:
            rows = pairs[start:start + inputs_per_call]
            values[rows[:, 0], rows[:, 1] - 1] = out["term"]
            values[rows[:, 0], T] = out["prior"]
    return values


def pilot_profile(diffusion, x: Tensor, *, seed: int, grid: int = 50, full_steps: int = 0,
                  inputs_per_call: int = 512) -> tuple[np.ndarray, int]:
    """√E[L_{t−1}²] over the examples ``x`` (``[n x ...]``, training data) at ``grid`` steps spread evenly over
    ``full_steps + 1..T``, linear in between: ``([T], calls)``. Its noise is ``noise.seed_of(seed, 0, 0, TIMESTEP)``'s,
    not the evaluation's.

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` with a chain of T steps.
    :param torch.Tensor x: training examples ``[n] + event_shape``.
    :param int seed: the evaluation's seed (the pilot derives its own from it).
    :param int grid: steps measured.
    :param int full_steps: t_0 (the grid starts above it).
    :param int inputs_per_call: (example, step) pairs per denoiser call.

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.infer.estimate import pilot_profile, plan_from_profile
    >>> with torch.no_grad():
    ...     profile, calls = pilot_profile(diffusion, x0, seed=0, grid=5)
    >>> profile.shape, calls, bool((profile > 0).all())
    ((10,), 20, True)
    >>> plan_from_profile(profile, full_steps=2, strata=2).proposal
    'pilot'
    """
    T = diffusion.T
    _count("grid", grid, "the pilot's grid", 2)
    lo = min(full_steps + 1, T)
    steps = np.unique(np.round(np.linspace(lo, T, min(grid, T - lo + 1))).astype(np.int64))
    pilot_seed = counter_noise.seed_of(seed, 0, 0, counter_noise.TIMESTEP)
    n = len(x)
    pairs = np.stack(np.broadcast_arrays(np.arange(n)[:, None], steps[None, :]), -1).reshape(-1, 2)
    values = terms_of_rows(diffusion, x if _is_numpyro(diffusion) else diffusion.check_data(x), pairs,
                           seed=pilot_seed, index=np.arange(n), inputs_per_call=inputs_per_call)
    rms = np.sqrt((values[:, steps - 1] ** 2).mean(0))
    return np.interp(np.arange(1, T + 1), steps, rms), len(pairs)


class PerExampleEstimate:
    """What an estimate of a bound per example (``nll`` ``[N]`` nats, ``t_variance`` ``[N]``, ``calls``,
    ``num_dims``) reports: bits/dim and its standard errors (:class:`BoundEstimate`, and the continuous-time
    bound's :class:`~ppl_diffusion.infer.continuous_bound.ContinuousBoundEstimate`).

    Example: bits/dim of 2 examples in D = 2 dimensions (nats / (D ln 2)), with no t-sampling variance.

    >>> import math
    >>> import torch
    >>> from ppl_diffusion.infer.estimate import BoundEstimate
    >>> nll = torch.tensor([2.0, 4.0]) * math.log(2.0)  # 2 and 4 bits, 1 and 2 bits/dim
    >>> est = BoundEstimate(nll=nll, t_variance=torch.zeros(2), terms=nll[:, None], calls=2, num_dims=2)
    >>> est.bits_per_dim().tolist(), {k: round(v, 4) for k, v in est.summary().items()}
    ([1.0, 2.0], {'bpd': 1.5, 'bpd_stderr': 0.5, 'bpd_t_stderr': 0.0, 'calls': 2})
    """

    def bits_per_dim(self) -> Tensor:
        """The estimate per example in bits per dimension, nll / (D ln 2), ``[N]``."""
        return self.nll / (self.num_dims * math.log(2.0))

    def summary(self) -> dict:
        """Mean bits/dim, its SE over examples (includes the t-sampling) and the t-sampling's SE alone:
        ``{"bpd", "bpd_stderr", "bpd_t_stderr", "calls"}`` (an SE is ``None`` where it cannot be estimated)."""
        bpd, n = self.bits_per_dim(), len(self.nll)
        to_bpd = 1.0 / (self.num_dims * math.log(2.0))
        t_se = (self.t_variance.sum().clamp(min=0).sqrt().item() / n * to_bpd
                if n and not torch.isnan(self.t_variance).any() else None)
        return {"bpd": bpd.mean().item(), "bpd_stderr": bpd.std().item() / math.sqrt(n) if n > 1 else None,
                "bpd_t_stderr": t_se, "calls": self.calls}


@dataclass
class BoundEstimate(PerExampleEstimate):
    """Per-example estimates of the full bound (nats) and the estimated variance of their t-sampling.

    :param torch.Tensor nll: ``[N]``, L̂ per example (nats), unbiased for the full bound of
        ``variational_bound(seed=...)``.
    :param torch.Tensor t_variance: ``[N]``, v̂_i, unbiased for Var(L̂_i | the bound's noise); NaN when draws = 1.
    :param torch.Tensor terms: ``[N x (T + 1)]``, unbiased per-term estimates; ``terms.sum(-1) == nll``.
    :param int calls: denoiser inputs evaluated (distinct (example, step) pairs).
    :param int num_dims: D, data dimensions per example.

    Example: what :func:`~ppl_diffusion.infer.estimate.estimate_bound` returns, for an untrained net.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> from ppl_diffusion.infer.estimate import estimate_bound, plan_uniform
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> with torch.no_grad():
    ...     est = estimate_bound(diffusion, torch.rand(4, 2) * 2 - 1, plan_uniform(10, full_steps=3, strata=2),
    ...                          seed=0)
    >>> est.nll.shape, est.t_variance.shape, est.terms.shape, est.num_dims
    (torch.Size([4]), torch.Size([4]), torch.Size([4, 11]), 2)
    >>> torch.allclose(est.terms.sum(-1), est.nll)
    True
    """

    nll: Tensor  # [N], L̂ per example (nats), unbiased for the full bound of variational_bound(seed=...)
    t_variance: Tensor  # [N], v̂_i, unbiased for Var(L̂_i | the bound's noise); NaN when draws = 1
    terms: Tensor  # [N x (T + 1)], unbiased per-term estimates (L_j exactly for j < t_0 and j = T; else the
    #               draws' weighted terms at their steps, 0 elsewhere); terms.sum(-1) == nll
    calls: int  # denoiser inputs evaluated (distinct (example, step) pairs)
    num_dims: int


def estimate_bound(diffusion, x: Tensor, plan: EstimatePlan, *, seed: int, indices=None, draw_seed: int | None = None,
                   inputs_per_call: int = 512, progress: bool = False, chunk: Chunk = compute_now,
                   calls_per_chunk: int = 1) -> BoundEstimate:
    """The estimate L̂ of every example of ``x`` ``[N x ...]`` under ``plan`` (module docstring).

    :param int seed: the bound's noise and the draws of t (example i's draws depend on (seed, indices[i]) alone).
    :param indices: the examples' indices (e.g. test-set indices; default 0..N − 1).
    :param int draw_seed: seed of the draws of t alone (default ``seed``): other values give independent
        estimates of the same full bound (the bound's noise stays ``seed``'s).
    :param int inputs_per_call: (example, step) pairs per denoiser call.
    :param chunk: saves or reads back each group of ``calls_per_chunk`` denoiser calls (:mod:`ppl_diffusion.resume`;
        default: none saved); the estimate is the same bits either way.
    :param bool progress: show a progress bar (tqdm).
    :rtype: BoundEstimate

    Example: a plan that computes every step is the full bound, term for term.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.infer import variational_bound
    >>> from ppl_diffusion.infer.estimate import estimate_bound, plan_uniform
    >>> with torch.no_grad():
    ...     full = variational_bound(diffusion, x0, seed=0)
    ...     exact = estimate_bound(diffusion, x0, plan_uniform(10, full_steps=10), seed=0)
    ...     est = estimate_bound(diffusion, x0, plan_uniform(10, full_steps=3, strata=2, draws=2), seed=0)
    >>> torch.allclose(exact.nll, full.nll.double()), exact.calls
    (True, 40)
    >>> est.nll.shape, est.calls <= 4 * 7, sorted(est.summary())
    (torch.Size([4]), True, ['bpd', 'bpd_stderr', 'bpd_t_stderr', 'calls'])
    """
    if plan.T != diffusion.T:
        raise ValueError(f"the plan is for T = {plan.T} but the model has T = {diffusion.T}; make the plan from "
                         "the model's T")
    if not _is_numpyro(diffusion):
        x = diffusion.check_data(x)
    n, T = len(x), diffusion.T
    index = check_indices(indices, n)
    steps, weights = plan.draw(seed if draw_seed is None else draw_seed, index)  # [N x K x m]
    K, m = steps.shape[1], steps.shape[2]
    # Rows: every (example, step) pair needed, once.
    exact = np.arange(1, plan.full_steps + 1, dtype=np.int64)
    pairs = np.concatenate([np.stack(np.broadcast_arrays(np.arange(n)[:, None], exact[None, :]), -1).reshape(-1, 2),
                            np.stack([np.repeat(np.arange(n), K * m), steps.reshape(-1)], -1)])
    pairs = np.unique(pairs, axis=0)
    values = terms_of_rows(diffusion, x, pairs, seed=seed, index=index, inputs_per_call=inputs_per_call,
                           progress=progress, chunk=chunk, calls_per_chunk=calls_per_chunk)
    terms = np.zeros((n, T + 1))
    terms[:, :plan.full_steps] = values[:, :plan.full_steps]
    terms[:, T] = values[:, T]
    drawn = values[np.arange(n)[:, None, None], steps - 1] * weights  # [N x K x m], each L_t / (m P_k(t))
    np.add.at(terms, (np.repeat(np.arange(n), K * m), steps.reshape(-1) - 1), drawn.reshape(-1))
    # v̂_i = Σ_k s_k² / m, s_k² the sample variance of L_t / P_k(t) = m · drawn over the m draws.
    t_var = ((m * drawn).var(axis=2, ddof=1).sum(1) / m) if m > 1 else np.full(n, np.nan)
    if K == 0:
        t_var = np.zeros(n)
    return BoundEstimate(nll=torch.from_numpy(terms.sum(-1)), t_variance=torch.from_numpy(np.asarray(t_var, float)),
                         terms=torch.from_numpy(terms), calls=len(pairs), num_dims=diffusion.num_dims)


__all__ = ["BoundEstimate", "EstimatePlan", "PerExampleEstimate", "estimate_bound", "pilot_profile", "plan_from_profile",
           "plan_uniform"]
