"""Distributions over the step t of the stochastic-timestep estimator, and over the time t ∈ [0, 1] of the
continuous-time one.

A sampler draws ``t`` (``LongTensor[n]`` in 1..T) and returns the importance weight 1/P(t), so that
Σ_t term_t is estimated without bias by term_t / P(t). Samplers keep their state in
``state_dict()`` so that a resumed training run draws exactly what an uninterrupted one would.

In continuous time (T = 0, :func:`make_timestep_sampler` with ``T=0``) the samplers of the same names draw
``t`` (float64 ``[n]`` in [0, 1)) with weight 1/p(t), so that ∫_0^1 f(t) dt is estimated by f(t)/p(t):
:class:`UniformTimes`, :class:`LowDiscrepancyTimes` (VDM's) and :class:`ImportanceTimes` (improved DDPM's
history on ``bins`` equal bins of [0, 1], uniform within a bin).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _device_of(generator: torch.Generator | None) -> torch.device:
    return torch.device("cpu") if generator is None else generator.device


class UniformTimesteps:
    r"""t ~ Uniform{1..T}; weight T.

    :math:`P(t) = 1/T`, so :math:`\sum_t f(t) = \mathbb{E}_{t \sim P}[f(t)/P(t)]`.

    :param int T: the number of steps.

    Example:

    >>> import torch
    >>> from ppl_diffusion.infer import UniformTimesteps
    >>> t, weight = UniformTimesteps(10).sample(4, generator=torch.Generator().manual_seed(0))
    >>> t.shape, bool(((1 <= t) & (t <= 10)).all()), weight.tolist()
    (torch.Size([4]), True, [10.0, 10.0, 10.0, 10.0])
    """

    name = "uniform"

    def __init__(self, T: int) -> None:
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"T = {T!r}; a timestep sampler needs an integer T >= 1")
        self.T = T

    def probabilities(self) -> Tensor:
        """P(t) for t = 1..T, float64[T]."""
        return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)

    def sample(self, n: int, device=None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` steps and their weights 1/P(t) (float64), drawn from ``generator`` (default: torch's global one)."""
        idx = torch.randint(0, self.T, (n,), generator=generator, device=_device_of(generator))
        return (idx + 1).to(device), torch.full((n,), float(self.T), dtype=torch.float64, device=device)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record per-example step losses L_{t−1} (used by importance sampling; ignored here)."""

    def state_dict(self) -> dict:
        """The sampler's state (a dict of its T and tensors), for a checkpoint."""
        return {"T": self.T}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s state (a ``ValueError`` if it is for another T)."""
        if int(state["T"]) != self.T:
            raise ValueError(f"timestep sampler state is for T = {state['T']}, this model has T = {self.T}")


class LowDiscrepancyTimesteps(UniformTimesteps):
    """Low-discrepancy uniform steps across a batch (Kingma et al. 2021, VDM, Appendix I.1); weight T.

    One u_0 ~ U[0, 1) per call, u_i = (u_0 + i / n) mod 1 and t_i = ⌊T u_i⌋ + 1 for i = 0..n−1: each t_i
    on its own is uniform on 1..T (so the estimate stays unbiased), while the n steps of a batch are
    spread evenly over 1..T (one per stratum of width T/n), which removes most of the between-t
    variance of the batch mean. Examples are in random order in a batch, so pairing example i with the
    i-th stratum adds no bias.

    :param int T: the number of steps.

    Example: 4 draws hit the 4 strata of 1..8 once each.

    >>> import torch
    >>> from ppl_diffusion.infer import LowDiscrepancyTimesteps
    >>> t, weight = LowDiscrepancyTimesteps(8).sample(4, generator=torch.Generator().manual_seed(0))
    >>> sorted(((t - 1) // 2).tolist())  # stratum of each draw
    [0, 1, 2, 3]
    """

    name = "low-discrepancy"

    def sample(self, n: int, device=None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        u0 = torch.rand((), dtype=torch.float64, generator=generator, device=_device_of(generator)).cpu()
        u = (u0 + torch.arange(n, dtype=torch.float64) / n) % 1.0
        idx = torch.clamp((u * self.T).floor().long(), max=self.T - 1)
        return (idx + 1).to(device), torch.full((n,), float(self.T), dtype=torch.float64, device=device)


class ImportanceTimesteps(UniformTimesteps):
    r"""Improved DDPM's importance sampling: P(t) ∝ sqrt(E[L_t²]), mixed with ``uniform_prob`` of uniform.

    E[L_t²] is the mean over the last ``history`` recorded losses at t (a ring buffer per t); until
    every t has ``history`` of them, t is drawn uniformly (Nichol & Dhariwal 2021, §3.3).

    .. math:: P(t) = (1 - u) \frac{\sqrt{\mathbb{E}[L_{t-1}^2]}}{\sum_s \sqrt{\mathbb{E}[L_{s-1}^2]}} + \frac{u}{T}

    :param int T: the number of steps.
    :param int history: losses kept per step.
    :param float uniform_prob: u, the uniform mixture's weight, in (0, 1].

    Example:

    >>> import torch
    >>> from ppl_diffusion.infer import ImportanceTimesteps
    >>> sampler = ImportanceTimesteps(3, history=2, uniform_prob=0.1)
    >>> sampler.update(torch.tensor([1, 1, 2, 2, 3, 3]), torch.tensor([1.0, 1.0, 2.0, 2.0, 1.0, 1.0]))
    >>> sampler.warmed_up, [round(p, 4) for p in sampler.probabilities().tolist()]  # 0.9 · (1, 2, 1)/4 + 0.1/3
    (True, [0.2583, 0.4833, 0.2583])
    """

    name = "importance"

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 1e-3) -> None:
        super().__init__(T)
        if history < 1 or not 0.0 < uniform_prob <= 1.0:
            raise ValueError(f"history = {history!r} must be >= 1 and uniform_prob = {uniform_prob!r} in (0, 1]")
        self.history = int(history)
        self.uniform_prob = float(uniform_prob)
        self.loss_history = torch.zeros(self.T, self.history, dtype=torch.float64)  # ring buffer per t
        self.loss_counts = torch.zeros(self.T, dtype=torch.long)  # losses recorded per t, capped at history
        self.write_pos = torch.zeros(self.T, dtype=torch.long)  # next slot of each ring buffer

    @property
    def warmed_up(self) -> bool:
        """Whether every step has ``history`` recorded losses (before that, t is uniform)."""
        return bool((self.loss_counts == self.history).all())

    def probabilities(self) -> Tensor:
        """P(t) for t = 1..T, float64[T] (uniform until :attr:`warmed_up`)."""
        if not self.warmed_up:
            return super().probabilities()
        w = self.loss_history.pow(2).mean(-1).sqrt()
        w = w / w.sum()
        return w * (1.0 - self.uniform_prob) + self.uniform_prob / self.T

    def sample(self, n: int, device=None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` steps drawn from :meth:`probabilities` and their weights 1/P(t) (float64)."""
        p = self.probabilities()
        idx = torch.multinomial(p.to(_device_of(generator)), n, replacement=True, generator=generator).cpu()
        return (idx + 1).to(device), (1.0 / p[idx]).to(device)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Append each example's loss to the history of its t, in batch order (vectorised)."""
        i = t.detach().long().cpu() - 1
        losses = losses.detach().double().cpu()
        order = torch.sort(i, stable=True).indices
        i, losses = i[order], losses[order]
        n_per_t = torch.bincount(i, minlength=self.T)
        first = torch.cumsum(n_per_t, 0) - n_per_t  # index of each t's first entry in the sorted batch
        rank = torch.arange(len(i)) - first[i]  # 0, 1, ... within each t
        keep = rank >= n_per_t[i] - self.history  # only the newest `history` entries of a t survive
        slot = (self.write_pos[i] + rank) % self.history
        self.loss_history[i[keep], slot[keep]] = losses[keep]
        self.write_pos = (self.write_pos + n_per_t) % self.history
        self.loss_counts = torch.clamp(self.loss_counts + n_per_t, max=self.history)

    def state_dict(self) -> dict:
        return {"T": self.T, "loss_history": self.loss_history.clone(), "loss_counts": self.loss_counts.clone(),
                "write_pos": self.write_pos.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.loss_history = state["loss_history"].clone().double()
        self.loss_counts = state["loss_counts"].clone().long()
        self.write_pos = state["write_pos"].clone().long()


class UniformTimes:
    """Continuous time: t ~ U[0, 1); weight 1.

    Example:

    >>> import torch
    >>> from ppl_diffusion.infer import UniformTimes
    >>> t, weight = UniformTimes().sample(4, generator=torch.Generator().manual_seed(0))
    >>> t.dtype, bool(((0 <= t) & (t < 1)).all()), weight.tolist()
    (torch.float64, True, [1.0, 1.0, 1.0, 1.0])
    """

    name = "uniform"
    T = 0  # continuous time

    def sample(self, n: int, device=None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` times (float64 ``[n]``) and their weights 1/p(t) (float64), from ``generator``."""
        t = torch.rand((n,), dtype=torch.float64, generator=generator, device=_device_of(generator))
        return t.to(device), torch.ones((n,), dtype=torch.float64, device=device)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record per-example diffusion terms at their times (used by importance sampling; ignored here)."""

    def state_dict(self) -> dict:
        """The sampler's state, for a checkpoint (``T`` = 0: continuous time)."""
        return {"T": 0}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s state (a ``ValueError`` for a sampler of steps)."""
        if int(state["T"]) != 0:
            raise ValueError(f"timestep sampler state is for T = {state['T']} steps; this model is in continuous "
                             "time (T = 0)")


class LowDiscrepancyTimes(UniformTimes):
    """Continuous time, VDM's low-discrepancy sampler: one u_0 ~ U[0, 1) per call, t_i = (u_0 + i/n) mod 1 for
    i = 0..n−1: each t_i uniform (weight 1), the batch's times spread evenly over [0, 1).

    Example: the times of a batch are one offset plus the grid i/n.

    >>> import torch
    >>> from ppl_diffusion.infer import LowDiscrepancyTimes
    >>> t, _ = LowDiscrepancyTimes().sample(4, generator=torch.Generator().manual_seed(0))
    >>> sorted((t * 4).floor().long().tolist())  # one time in each quarter of [0, 1)
    [0, 1, 2, 3]
    """

    name = "low-discrepancy"

    def sample(self, n: int, device=None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        u0 = torch.rand((), dtype=torch.float64, generator=generator, device=_device_of(generator)).cpu()
        t = (u0 + torch.arange(n, dtype=torch.float64) / n) % 1.0
        return t.to(device), torch.ones((n,), dtype=torch.float64, device=device)


class ImportanceTimes(UniformTimes):
    """Continuous time, improved DDPM's importance sampling on ``bins`` equal bins of [0, 1): bin k has probability
    P(k) ∝ √E[L²] of the last ``history`` terms recorded in it (mixed with ``uniform_prob`` of uniform, uniform
    until every bin has ``history`` of them), t uniform within the bin, weight 1/p(t) = 1/(bins · P(k)). The
    history is an :class:`ImportanceTimesteps` over the bins (its state_dict format, with ``T`` = 0 and ``bins``).

    :param int bins: equal bins of [0, 1).
    :param int history: losses kept per bin.
    :param float uniform_prob: the uniform mixture's weight, in (0, 1].

    Example: p(t) is a density on [0, 1]; before the history is full it is uniform.

    >>> import torch
    >>> from ppl_diffusion.infer import ImportanceTimes
    >>> sampler = ImportanceTimes(bins=2, history=1, uniform_prob=0.5)
    >>> sampler.density(torch.tensor([0.25, 0.75])).tolist()
    [1.0, 1.0]
    >>> sampler.update(torch.tensor([0.1, 0.9]), torch.tensor([3.0, 1.0]))  # bin 1 has 3x the loss of bin 2
    >>> sampler.density(torch.tensor([0.25, 0.75])).tolist()  # 2 · (0.5 · (3/4, 1/4) + 0.5/2)
    [1.25, 0.75]
    """

    name = "importance"

    def __init__(self, bins: int = 100, history: int = 10, uniform_prob: float = 1e-3) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins = {bins!r}; the continuous importance sampler needs an integer number of bins >= 1")
        self.bins = bins
        self.by_bin = ImportanceTimesteps(bins, history=history, uniform_prob=uniform_prob)

    @property
    def warmed_up(self) -> bool:
        """Whether every bin has ``history`` recorded terms."""
        return self.by_bin.warmed_up

    def density(self, t: Tensor) -> Tensor:
        """p(t), float64, at times ``t`` in [0, 1]."""
        k = torch.clamp((t.double().cpu() * self.bins).floor().long(), 0, self.bins - 1)
        return self.by_bin.probabilities()[k] * self.bins

    def sample(self, n: int, device=None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` times (float64) drawn from p and their weights 1/p(t)."""
        k, weight = self.by_bin.sample(n, generator=generator)  # bins 1..K, weight 1/P(k)
        u = torch.rand((n,), dtype=torch.float64, generator=generator, device=_device_of(generator)).cpu()
        t = (k.cpu().double() - 1.0 + u) / self.bins
        return t.to(device), (weight.cpu() / self.bins).to(device)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Append each term to the history of the bin of its time."""
        k = torch.clamp((t.detach().double().cpu() * self.bins).floor().long(), 0, self.bins - 1) + 1
        self.by_bin.update(k, losses)

    def state_dict(self) -> dict:
        return {**self.by_bin.state_dict(), "T": 0, "bins": self.bins}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if int(state["bins"]) != self.bins:
            raise ValueError(f"importance sampler state has {state['bins']} bins, this sampler {self.bins}")
        self.by_bin.load_state_dict({**state, "T": self.bins})


TIMESTEP_SAMPLERS = {"uniform": UniformTimesteps, "importance": ImportanceTimesteps,
                     "low-discrepancy": LowDiscrepancyTimesteps}
TIME_SAMPLERS = {"uniform": UniformTimes, "importance": ImportanceTimes, "low-discrepancy": LowDiscrepancyTimes}


def make_timestep_sampler(name: str, T: int, **kwargs) -> UniformTimesteps | UniformTimes:
    """A sampler by name: ``"uniform"``, ``"importance"`` or ``"low-discrepancy"``; of steps 1..T, or of times in
    [0, 1) for ``T = 0`` (continuous time).

    :param str name: ``"uniform"``, ``"importance"`` or ``"low-discrepancy"``.
    :param int T: the number of steps, or 0 for continuous time.
    :param kwargs: to the sampler's class (e.g. ``history``, ``uniform_prob``, and ``bins`` for T = 0).

    Example:

    >>> from ppl_diffusion.infer import make_timestep_sampler
    >>> type(make_timestep_sampler("importance", 10)).__name__, type(make_timestep_sampler("importance", 0)).__name__
    ('ImportanceTimesteps', 'ImportanceTimes')
    """
    if name not in TIMESTEP_SAMPLERS:
        raise ValueError(f"unknown timestep sampler {name!r}; choose one of {sorted(TIMESTEP_SAMPLERS)}")
    if T == 0 and not isinstance(T, bool):
        return TIME_SAMPLERS[name](**kwargs)
    return TIMESTEP_SAMPLERS[name](T, **kwargs)


__all__ = ["ImportanceTimes", "ImportanceTimesteps", "LowDiscrepancyTimes", "LowDiscrepancyTimesteps", "UniformTimes",
           "UniformTimesteps", "make_timestep_sampler"]
