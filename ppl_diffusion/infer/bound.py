r"""The full variational bound, every term separately: L_0, L_1 … L_{T−1}, L_T, in nats per example.

.. math:: -\log p(x_0) \le L_0 + \sum_{t=2}^{T} L_{t-1} + L_T, \qquad
          L_0 = -\log p(x_0 \mid x_1),\quad
          L_{t-1} = \mathrm{KL}(q(x_{t-1} \mid x_t, x_0) \,\|\, p_\theta(x_{t-1} \mid x_t)),\quad
          L_T = \mathrm{KL}(q(x_T \mid x_0) \,\|\, p(x_T)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .. import noise as counter_noise
from ..variance import auto_timesteps_per_batch  # noqa: F401 (re-exported: the call size of the bound and fit_variance)
from .draws import FeedNoiseMessenger
from .trace_terms import per_example_elbo, trace_pair


@dataclass
class VariationalBound:
    """The terms of −ELBO for a batch.

    ``terms[:, j]`` is L_j in nats: L_0 = −log p(x_0|x_1) (decoder), L_j = E KL(q(x_j|x_{j+1}, x_0) ||
    p(x_j|x_{j+1}, θ)) for j = 1..T−1, L_T = KL(q(x_T|x_0) || p(x_T)) (prior). Each L_j for j < T is a
    one-draw estimate over x_{j+1} ~ q(x_{j+1}|x_0), so their sum is an unbiased estimate of −ELBO.

    :param torch.Tensor terms: ``[B x (T + 1)]``, column j is L_j in nats (NaN for a term not evaluated).
    :param int num_dims: D, the data dimensions of one example (for bits per dimension).

    Example:

    >>> import torch
    >>> from ppl_diffusion.infer import VariationalBound
    >>> bound = VariationalBound(terms=torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 1.0]]), num_dims=2)
    >>> bound.nll.tolist(), bound.kl_terms.shape
    ([6.0, 2.0], torch.Size([2, 1]))
    >>> round(bound.bits_per_dim()[0].item(), 4)  # 6 / (2 ln 2)
    4.328
    """

    terms: Tensor  # [B x (T + 1)], nats
    num_dims: int  # D, data dimensions per example

    @property
    def nll(self) -> Tensor:
        """−ELBO per example ``[B]``, an upper bound on −log p(x_0), in nats."""
        return self.terms.sum(-1)

    @property
    def elbo(self) -> Tensor:
        """The ELBO per example ``[B]`` (minus :attr:`nll`), nats."""
        return -self.nll

    @property
    def decoder_term(self) -> Tensor:
        """L_0 = −log p(x_0|x_1) per example ``[B]``, nats."""
        return self.terms[:, 0]

    @property
    def prior_term(self) -> Tensor:
        """L_T = KL(q(x_T|x_0) || p(x_T)) per example ``[B]``, nats."""
        return self.terms[:, -1]

    @property
    def kl_terms(self) -> Tensor:
        """L_1 … L_{T−1}, ``[B x (T − 1)]``."""
        return self.terms[:, 1:-1]

    def bits_per_dim(self) -> Tensor:
        """−ELBO / (D ln 2) per example."""
        return self.nll / (self.num_dims * math.log(2.0))


def feed_noise(fn, noise: dict):
    """``fn`` with its sites named in ``noise`` drawn from those standard normals (:class:`FeedNoiseMessenger`)."""
    return FeedNoiseMessenger(noise)(fn)


def _normal(seed: int, index: np.ndarray, t, like: Tensor, stream: int) -> Tensor:
    """Counter-based ε ``[len(index) x *event]`` for (seed, index, t, stream), as a tensor like ``like``."""
    eps = counter_noise.normal(seed, index, t, tuple(like.shape[1:]), stream=stream,
                               dtype=np.float64 if like.dtype == torch.float64 else np.float32)
    return torch.from_numpy(eps).to(device=like.device, dtype=like.dtype)


def check_indices(indices, n: int) -> np.ndarray:
    """``indices`` as an int64 array of ``n`` integers >= 0 (default 0..n − 1); a one-line error otherwise."""
    if indices is None:
        return np.arange(n, dtype=np.int64)
    a = np.asarray(indices.cpu() if torch.is_tensor(indices) else indices)
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer) or (a.size and a.min() < 0):
        raise ValueError(f"indices must be {n} integers >= 0 (one per example, e.g. test-set indices), "
                         f"got shape {a.shape} of {a.dtype}")
    return a.astype(np.int64)


def step_terms(diffusion, x0: Tensor, t: Tensor, *, analytic: bool = True, seed: int | None = None,
               indices=None) -> tuple[Tensor, Tensor]:
    """The bound's term of step ``t[r]`` for row r: L_{t−1} of ``x0[r]`` (``[R x ...]``), in one denoiser call.

    Rows are (example, step) pairs, any mix: ``t`` ``[R]`` in 1..T, ``indices`` ``[R]`` the examples' indices
    (with ``seed``: counter-based noise, ε of row r is ``normal(seed, indices[r], t[r], stream=XT)``, so a row's
    term equals the full bound's ``terms[i, t − 1]`` for the same example, seed and step; see
    :func:`variational_bound`). Returns ``(L_{t−1} [R], L_T [R])`` in nats, the prior term of each row's example
    (no network call of its own, it is read off the same trace).

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` with a chain of T steps.
    :param torch.Tensor x0: ``[R] + event_shape``, the example of each row.
    :param torch.Tensor t: ``LongTensor[R]``, the step of each row, in 1..T.
    :param bool analytic: score L_{t−1} by its closed-form KL (default), else by one draw of x_{t−1}.
    :param int seed: counter-based noise (see above); ``None``: torch's generator.
    :param indices: ``[R]`` the rows' example indices (with ``seed``; default 0..R − 1).
    :rtype: tuple(torch.Tensor, torch.Tensor)

    Example: a row's term is the full bound's term of its example and step, for the same seed.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.infer import variational_bound
    >>> from ppl_diffusion.infer.bound import step_terms
    >>> with torch.no_grad():
    ...     term, prior = step_terms(diffusion, x0[[1, 3]], torch.tensor([3, 7]), seed=0, indices=[1, 3])
    ...     full = variational_bound(diffusion, x0, seed=0)
    >>> term.shape, torch.allclose(term, full.terms[[1, 3], [2, 6]])
    (torch.Size([2]), True)
    >>> torch.allclose(prior, full.prior_term[[1, 3]])
    True
    """
    if seed is None and indices is not None:
        raise ValueError("indices select counter-based noise; pass seed=... with them")
    guide = diffusion.step_guide
    if seed is not None:
        rows = check_indices(indices, x0.shape[0])
        steps = t.cpu().numpy()
        fed = {"x_t": _normal(seed, rows, steps, x0, counter_noise.XT),
               "x_T": _normal(seed, rows, 0, x0, counter_noise.PRIOR)}
        if not analytic:
            fed["x_prev"] = _normal(seed, rows, steps, x0, counter_noise.PREV)
        guide = feed_noise(guide, fed)
    model_trace, guide_trace = trace_pair(diffusion.step_model, guide, x0, t)
    site = per_example_elbo(model_trace, guide_trace, analytic=analytic)
    return -(site["x_t"] + site["x_prev"] + site["x_0"]), -site["x_T"]


def variational_bound(diffusion, x0: Tensor, *, analytic: bool = True, timesteps_per_batch: int = 1,
                      timesteps=None, progress: bool = False, seed: int | None = None,
                      indices=None) -> VariationalBound:
    """Evaluate every term of the bound for the batch ``x0`` (``[B x ...]``).

    Step t = 1..T runs the one-step programs with t fixed for the whole batch (L_{t−1} scored by its
    closed-form KL when ``analytic``, else by one Monte-Carlo draw). ``timesteps_per_batch`` steps are
    evaluated in one call of the denoiser (the batch is tiled), trading memory for speed. Wrap the call
    in ``torch.no_grad()`` unless you need gradients. ``timesteps`` (steps in 1..T) evaluates only the
    terms L_{t−1} of those steps, for estimates of the bound from a subset of its terms; the other
    columns are NaN (the prior term L_T is always computed).

    The noise: with ``seed=None`` it is drawn from torch's generator (seed it with ``pyro.set_rng_seed``).
    With an integer ``seed`` it is counter-based (:mod:`ppl_diffusion.noise`): ε_t of example i is
    ``normal(seed, indices[i], t, stream=XT)`` (``indices`` default 0..B − 1, e.g. the examples' test-set
    indices), the prior's Monte-Carlo draw (a prior without closed-form KL) ``(indices[i], 0, PRIOR)`` and
    the step's draw of x_{t−1} (``analytic=False``) ``(indices[i], t, PREV)``. Each example's terms are then a
    function of (seed, its index, its x_0) alone: the same on any batch, subset, process or backend.

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` with a chain of T steps.
    :param torch.Tensor x0: the data ``[B] + event_shape`` (e.g. ``[N x C x H x W]``).
    :param bool analytic: closed-form KL for the steps' terms (default), else one Monte-Carlo draw each.
    :param int timesteps_per_batch: steps evaluated per denoiser call.
    :param timesteps: evaluate only the terms of these steps (in 1..T); default all.
    :param bool progress: show a progress bar (tqdm).
    :param int seed: counter-based noise (above); ``None``: torch's generator.
    :param indices: ``[B]`` the examples' indices (with ``seed``).
    :returns: the terms ``[B x (T + 1)]``.
    :rtype: VariationalBound

    Example: with a seed, an example's terms do not depend on the batch it is evaluated in.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion import variational_bound
    >>> with torch.no_grad():
    ...     bound = variational_bound(diffusion, x0, seed=0, timesteps_per_batch=5)
    ...     part = variational_bound(diffusion, x0[2:], seed=0, indices=[2, 3])
    >>> bound.terms.shape, bound.bits_per_dim().shape
    (torch.Size([4, 11]), torch.Size([4]))
    >>> torch.allclose(part.terms, bound.terms[2:])
    True
    """
    if getattr(diffusion, "continuous", False):
        raise ValueError("variational_bound sums the steps of a finite chain, and this model is in continuous time "
                         "(T = 0): estimate its bound with ppl_diffusion.infer.continuous_bound."
                         "estimate_continuous_bound(diffusion, x0, plan_continuous_uniform(), seed=0), or score a "
                         "T-step chain of it with variational_bound(diffusion.with_steps(T), x0)")
    x0 = diffusion.check_data(x0)
    if seed is None and indices is not None:
        raise ValueError("indices select counter-based noise; pass seed=... with them")
    index = None if seed is None else check_indices(indices, x0.shape[0])
    batch, T = x0.shape[0], diffusion.T
    c = max(1, min(int(timesteps_per_batch), T))
    steps = list(range(1, T + 1)) if timesteps is None else sorted({int(t) for t in timesteps})
    if not steps or steps[0] < 1 or steps[-1] > T:
        raise ValueError(f"timesteps must be a non-empty set of steps in 1..T = 1..{T}, got {timesteps!r}")
    nan = torch.full((batch,), float("nan"), dtype=x0.dtype, device=x0.device)
    columns: list[Tensor] = [nan] * T
    prior = None
    blocks = [steps[i:i + c] for i in range(0, len(steps), c)]
    if progress:
        from tqdm.auto import tqdm

        blocks = tqdm(blocks, desc="bound", unit="step", total=len(blocks), unit_scale=c)
    for block in blocks:
        ts = torch.tensor(block, device=x0.device)
        x0c = x0.repeat((len(ts),) + (1,) * (x0.dim() - 1))
        step, prior_rows = step_terms(diffusion, x0c, ts.repeat_interleave(batch), analytic=analytic, seed=seed,
                                      indices=None if index is None else np.tile(index, len(block)))
        step = step.reshape(len(ts), batch)
        if prior is None:
            prior = prior_rows[:batch]
        for i, ti in enumerate(ts.tolist()):
            columns[ti - 1] = step[i]
    terms = torch.stack(columns + [prior], dim=-1)
    return VariationalBound(terms=terms, num_dims=diffusion.num_dims)


__all__ = ["VariationalBound", "step_terms", "variational_bound"]
