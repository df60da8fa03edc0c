"""The per-t picture: mean and spread of the step term L_{t−1}, scored analytically and by Monte Carlo.

At each step t of a grid, every example of the fixed batch is repeated M times and the one-step
programs are traced once (x_t ~ q(x_t|x_0), x_{t−1} ~ q(x_{t−1}|x_t, x_0)). The same trace is scored
twice: by the closed-form KL (the analytic term, random only through x_t) and by log q − log p at the
drawn x_{t−1} (the Monte-Carlo term). Per example i and step t this gives the mean m_{t,i}, the
variance v_{t,i} (over the noise, at fixed x_0) and the second moment S_{t,i} = E[L²] of each term.

When the grid is every t = 1..T, these moments predict the variance of the stochastic-t estimators
at this θ and batch without running them (per example, over t and the noise; the batch mean's
variance is the sum over i divided by B²), for t drawn from P:

    Var_i(P) = Σ_t S_{t,i} / P(t) − (Σ_t m_{t,i})²,     uniform P: T Σ_t S_{t,i} − (Σ_t m_{t,i})²,

split for uniform t into a within-t part T Σ_t v_{t,i} (the noise) and a between-t part
T Σ_t m_{t,i}² − (Σ_t m_{t,i})² (the choice of t). (Σ_t m̂)² is corrected by Σ_t v̂/M for its bias. The
study compares the predictions with the measured replicates: an independent check of both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import torch

from ..infer.trace_terms import per_example_elbo, trace_pair


@dataclass
class PerTResult:
    """Moments of −(step term) ... stored as the loss L_{t−1} (nats), per step of ``t``.

    For example i and step t, over M draws of x_t (and of x_{t−1} for the Monte-Carlo term): m_{t,i} the mean,
    v_{t,i} the variance (ddof 1) and S_{t,i} the mean square, of the analytic term (``*_kl``) and the Monte-Carlo
    term (``*_mc``), each ``[G x B]``. Made by :func:`per_t_moments`.

    Example: G = 3 steps of T = 10, M = 2 draws, B = 4 examples.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.study.per_t import per_t_moments
    >>> res = per_t_moments(diffusion, x0, steps=3, repeats=2)
    >>> res.t.tolist(), res.repeats, res.T, res.mean_kl.shape, res.var_mc.shape, res.full_grid
    ([1, 3, 10], 2, 10, (3, 4), (3, 4), False)
    """

    t: np.ndarray  # [G] steps of the grid
    repeats: int  # M draws per example and step
    mean_kl: np.ndarray  # [G, B] m_{t,i}, analytic term
    var_kl: np.ndarray  # [G, B] v_{t,i}
    sq_kl: np.ndarray  # [G, B] S_{t,i}
    mean_mc: np.ndarray
    var_mc: np.ndarray
    sq_mc: np.ndarray
    T: int

    @property
    def full_grid(self) -> bool:
        """Whether the grid holds every t = 1..T (needed by :meth:`predicted_variance`)."""
        return len(self.t) == self.T

    def predicted_variance(self, kind: str, probabilities=None) -> dict:
        """Predicted variance of the batch-mean ELBO of the stochastic estimator with step term ``kind``
        ("kl" or "mc"), t ~ ``probabilities`` (default uniform); only on the full grid.

        Per example, Var = Σ_t S_t / P(t) − (Σ_t m_t)², with (Σ_t m_t)² estimated without bias; the batch mean's
        is their sum over B². Uniform t also splits it into ``within_t`` (T Σ_t v_t) and ``between_t``.

        :param str kind: ``"kl"`` or ``"mc"``.
        :param probabilities: P(t) ``[T]``; default uniform.
        :returns: ``{"total", "within_t", "between_t"}`` (the last two for uniform t only).
        """
        if not self.full_grid:
            raise ValueError("predicted variances need every t = 1..T in the grid (per_t_steps = T)")
        m, v, s = (getattr(self, f"{q}_{kind}") for q in ("mean", "var", "sq"))
        batch = m.shape[1]
        sum_m_sq = m.sum(0) ** 2 - v.sum(0) / self.repeats  # unbiased (Σ_t m)², per example
        p = np.full(self.T, 1.0 / self.T) if probabilities is None else np.asarray(probabilities, dtype=np.float64)
        per_example = (s / p[:, None]).sum(0) - sum_m_sq
        out = {"total": float(per_example.sum() / batch ** 2)}
        if probabilities is None:
            within = self.T * v.sum(0)
            out["within_t"] = float(within.sum() / batch ** 2)
            out["between_t"] = out["total"] - out["within_t"]
        return out

    def importance_probabilities(self, kind: str = "kl") -> np.ndarray:
        """P(t) ∝ sqrt(E[L_t²]) over the batch: the ideal of improved DDPM's sampler, ``[G]``.

        :param str kind: ``"kl"`` or ``"mc"``.
        """
        w = np.sqrt(getattr(self, f"sq_{kind}").mean(1))
        return w / w.sum()

    def rows(self) -> list[dict]:
        """One row per t: means over the batch of m, v and S for both terms (dicts, for the CSV)."""
        out = []
        for j, t in enumerate(self.t):
            out.append({"t": int(t), "mean_kl": float(self.mean_kl[j].mean()), "var_kl": float(self.var_kl[j].mean()),
                        "second_moment_kl": float(self.sq_kl[j].mean()), "mean_mc": float(self.mean_mc[j].mean()),
                        "var_mc": float(self.var_mc[j].mean()), "second_moment_mc": float(self.sq_mc[j].mean())})
        return out


def grid(T: int, steps: int | None) -> np.ndarray:
    """Every t when ``steps`` is None or ≥ T, else about ``steps`` log-spaced steps in 1..T.

    Example:

    >>> from ppl_diffusion.study.per_t import grid
    >>> grid(1000, 5).tolist(), len(grid(10, None))
    ([1, 6, 32, 178, 1000], 10)
    """
    if steps is None or steps >= T:
        return np.arange(1, T + 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"per_t_steps = {steps!r}; pass an integer >= 2, or none for every t (--per-t-steps)")
    return np.unique(np.round(np.geomspace(1, T, steps)).astype(int))


@torch.no_grad()
def per_t_moments(diffusion, x0: torch.Tensor, *, steps: int | None = None, repeats: int = 4, seed: int = 0,
                  max_inputs: int = 2048, progress: bool = False) -> PerTResult:
    """The moments of the analytic and Monte-Carlo step terms at each t of the grid (see the module).

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` with a chain of T steps.
    :param torch.Tensor x0: the batch ``[B] + event_shape``.
    :param int steps: grid size (:func:`grid`); ``None``: every t.
    :param int repeats: M >= 2 draws per example and step.
    :param int seed: ``pyro.set_rng_seed`` before the draws.
    :param int max_inputs: inputs per traced call.
    :param bool progress: show a progress bar.
    :rtype: PerTResult

    Example: at t = 1 the step term is the decoder's −log p(x_0|x_1), the same for both kinds.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> import numpy as np
    >>> from ppl_diffusion.study.per_t import per_t_moments
    >>> res = per_t_moments(diffusion, x0, repeats=2)
    >>> res.mean_kl.shape, np.allclose(res.mean_kl[0], res.mean_mc[0])
    ((10, 4), True)
    >>> sorted(res.predicted_variance("kl"))
    ['between_t', 'total', 'within_t']
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"repeats = {repeats!r}; a variance needs at least 2 draws per step (--per-t-repeats)")
    x0 = diffusion.check_data(x0)
    batch, T = x0.shape[0], diffusion.T
    ts = grid(T, steps)
    pyro.set_rng_seed(seed)
    per_call = max(1, max_inputs // (batch * repeats))  # steps per traced call
    kl = np.empty((len(ts), repeats, batch))
    mc = np.empty((len(ts), repeats, batch))
    blocks = [ts[i:i + per_call] for i in range(0, len(ts), per_call)]
    from tqdm.auto import tqdm

    j = 0
    for block in tqdm(blocks, desc="per-t", disable=not progress, leave=False):
        n = len(block) * repeats
        t = torch.as_tensor(np.repeat(block, repeats * batch), device=x0.device)
        xs = x0.repeat((n,) + (1,) * (x0.dim() - 1))
        model_trace, guide_trace = trace_pair(diffusion.step_model, diffusion.step_guide, xs, t)
        for analytic, out in ((True, kl), (False, mc)):
            site = per_example_elbo(model_trace, guide_trace, analytic=analytic)
            loss = -(site["x_t"] + site["x_prev"] + site["x_0"])
            out[j:j + len(block)] = loss.double().cpu().numpy().reshape(len(block), repeats, batch)
        j += len(block)
    return PerTResult(t=ts, repeats=repeats, T=T,
                      mean_kl=kl.mean(1), var_kl=kl.var(1, ddof=1), sq_kl=(kl ** 2).mean(1),
                      mean_mc=mc.mean(1), var_mc=mc.var(1, ddof=1), sq_mc=(mc ** 2).mean(1))


__all__ = ["PerTResult", "grid", "per_t_moments"]
