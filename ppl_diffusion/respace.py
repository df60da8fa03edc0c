"""Respaced sampling (improved DDPM §4, Nichol & Dhariwal 2021; their ``respace.py``).

A model trained with T steps is sampled with K < T steps s_1 < … < s_K of 1..T by a new diffusion
whose forward chain jumps between the kept steps. Its schedule keeps the original ᾱ at those steps:

    ᾱ'_k = ᾱ_{s_k},    β'_k = 1 − ᾱ_{s_k} / ᾱ_{s_{k−1}}   (k = 1..K, ᾱ_{s_0} = 1),

so q'(x_k|x_0) is exactly the original q(x_{s_k}|x_0) and the trained ε̂_θ(x_{s_k}, s_k) is the right
noise prediction at new step k. Every other coefficient (α'_k, β̃'_k, posterior coefficients, the fixed
variances σ'_k² = β'_k or β̃'_k) is derived from β' by :class:`~ppl_diffusion.schedule.NoiseSchedule` as usual,
which is what improved DDPM's ``SpacedDiffusion`` does. The denoiser is shared through
:class:`RespacedDenoiser`, which maps the new step k to the original step s_k before calling it.

Example::

    fast = respace(diffusion, 50)          # 50 of diffusion.T steps, T and 1 included
    x0 = fast.sample(64)                   # improved DDPM's respaced ancestral sampling
    fast.denoiser.timesteps                # tensor([1, ..., diffusion.T])
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor, nn

from .diffusion import GaussianDiffusion
from .schedule import NoiseSchedule
from .variance import FittedVariance

__all__ = ["RespacedDenoiser", "respace", "respaced_schedule", "space_timesteps"]


def space_timesteps(T: int, K: int | str) -> list[int]:
    """The kept steps s_1 < … < s_K of 1..T, as a sorted list of ints.

    ``K`` an integer: K evenly spaced steps s_i = 1 + round((i − 1)(T − 1)/(K − 1)), i = 1..K,
    so s_1 = 1 and s_K = T always (improved DDPM's single section, shifted from their 0-based
    steps to our 1..T). ``K = 1`` keeps only T: a one-step sampler must start where the prior p(x_T)
    is matched. Python's ``round`` (half to even) is used, as in improved DDPM.

    ``K`` a string, as improved DDPM's ``space_timesteps``:

    * ``"10,20,30"``: 1..T is cut into as many equal sections as counts (the first T mod n sections
      one step longer) and each section gets that many evenly spaced steps, its first and last
      included (a count of 1 keeps only the section's first step). ``"K"`` is the integer K.
    * ``"ddimK"``: the steps 1, 1 + s, 1 + 2s, … for the first stride s giving exactly K steps
      (DDIM's striding; T itself is not necessarily kept).

    :raises ValueError: naming the value when K is not an integer in 1..T, a section asks for more
        steps than it has, or the string cannot be parsed.

    :param int T: the original number of steps.
    :param K: the number of kept steps, or a string as above.
    :rtype: list[int]

    Example:

    >>> space_timesteps(10, 4)
    [1, 4, 7, 10]
    >>> space_timesteps(1000, "2,3")
    [1, 500, 501, 751, 1000]
    >>> space_timesteps(20, "ddim5")
    [1, 5, 9, 13, 17]
    """
    if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 1:
        raise ValueError(f"T = {T!r} is not a number of steps; pass an integer T >= 1")
    T = int(T)
    if isinstance(K, str):
        return _space_from_string(T, K)
    K = _check_count(K, T, "K")
    if K == 1:
        return [T]
    return _section(1, T, K)


def _check_count(K, T: int, what: str) -> int:
    if isinstance(K, bool) or not isinstance(K, numbers.Integral):
        raise ValueError(f"{what} = {K!r} is not an integer number of steps; pass an int in 1..T = 1..{T}")
    if not 1 <= K <= T:
        raise ValueError(f"{what} = {K!r} steps is outside 1..T = 1..{T}; a respaced sampler keeps between "
                         f"1 and T of the original steps")
    return int(K)


def _section(start: int, size: int, count: int) -> list[int]:
    """``count`` evenly spaced steps of start..start + size − 1, both ends kept when count > 1."""
    stride = (size - 1) / (count - 1) if count > 1 else 1.0
    return [start + round(i * stride) for i in range(count)]


def _space_from_string(T: int, spec: str) -> list[int]:
    text = spec.strip()
    if text.startswith("ddim"):
        try:
            K = int(text[len("ddim"):])
        except ValueError:
            raise ValueError(f"K = {spec!r}: expected 'ddim' followed by an integer, e.g. 'ddim50'") from None
        K = _check_count(K, T, f"K = {spec!r}: the count")
        for stride in range(1, T + 1):
            steps = list(range(1, T + 1, stride))
            if len(steps) == K:
                return steps
        raise ValueError(f"K = {spec!r}: no integer stride gives exactly {K} steps of 1..{T}; "
                         "pick another count or use an integer K")
    try:
        counts = [int(c) for c in text.split(",")]
    except ValueError:
        raise ValueError(f"K = {spec!r} is neither an integer, comma-separated section counts like '10,20' "
                         "nor 'ddimK'") from None
    if len(counts) > T:
        raise ValueError(f"K = {spec!r} has {len(counts)} sections but T = {T}; pass at most T sections")
    if len(counts) == 1:
        return space_timesteps(T, counts[0])
    size_per, extra = divmod(T, len(counts))
    steps, start = [], 1
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(f"K = {spec!r}: section {i + 1} (steps {start}..{start + size - 1}) cannot hold "
                             f"{count} steps; pass a count in 1..{size}")
        steps += _section(start, size, count)
        start += size
    return steps


class RespacedDenoiser(nn.Module):
    """``net(x_k, k) -> ε̂``: calls the wrapped ``denoiser(x_k, s_k)`` at the original step s_k.

    The wrapped module is held by reference (its parameters are shared, not copied), so training or
    loading weights into the original network changes the respaced one too.

    :param torch.nn.Module denoiser: the original ``denoiser(x_t, t)``, t in 1..T.
    :param timesteps: the kept steps s_1 < … < s_K, stored as the buffer ``timesteps`` (``LongTensor[K]``).

    Example: new step k calls the original net at s_k.

    >>> import torch
    >>> calls = []
    >>> class Net(torch.nn.Module):
    ...     def forward(self, x_t, t):
    ...         calls.append(t.tolist())
    ...         return torch.zeros_like(x_t)
    >>> net = RespacedDenoiser(Net(), [1, 10, 20])
    >>> _ = net(torch.zeros(3, 2), torch.tensor([1, 2, 3]))
    >>> calls
    [[1, 10, 20]]
    """

    def __init__(self, denoiser: nn.Module, timesteps) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.register_buffer("timesteps", torch.as_tensor(list(timesteps), dtype=torch.long), persistent=False)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """``denoiser(x_t, s_t)``: ``x_t`` ``[B x ...]``, ``t`` a ``LongTensor[B]`` of new steps in 1..K."""
        # t: LongTensor[B] of new steps k in 1..K  ->  s_k, LongTensor[B] in 1..T
        return self.denoiser(x_t, self.timesteps.to(t.device)[t - 1])

    def extra_repr(self) -> str:
        return f"K={self.timesteps.numel()}, timesteps={_short(self.timesteps.tolist())}"


def _short(steps: list[int]) -> str:
    if len(steps) <= 8:
        return str(steps)
    return f"[{', '.join(map(str, steps[:3]))}, ..., {', '.join(map(str, steps[-3:]))}]"


def respaced_schedule(schedule: NoiseSchedule, timesteps) -> NoiseSchedule:
    r"""The schedule over the kept steps, float64:

    .. math::

        \beta'_k = 1 - \frac{\bar\alpha_{s_k}}{\bar\alpha_{s_{k-1}}} \quad (\bar\alpha_{s_0} = 1),
        \qquad \text{so that} \quad \bar\alpha'_k = \bar\alpha_{s_k}.

    Where s_k = s_{k−1} + 1 the ratio is 1 − α_{s_k} = β_{s_k}, and β_{s_k} is taken as stored, so keeping
    every step reproduces the original schedule bit for bit.

    :param ~ppl_diffusion.schedule.NoiseSchedule schedule: the original schedule.
    :param timesteps: the kept steps s_1 < … < s_K in 1..T.
    :rtype: ~ppl_diffusion.schedule.NoiseSchedule

    Example: the marginals q(x_k|x_0) are the original ones at the kept steps.

    >>> import numpy as np
    >>> s = NoiseSchedule.linear(T=20)
    >>> r = respaced_schedule(s, [1, 5, 10, 20])
    >>> r.T, bool(np.allclose(r.alphas_cumprod, s.alphas_cumprod[[0, 4, 9, 19]]))
    (4, True)
    >>> bool((respaced_schedule(s, range(1, 21)).betas == s.betas).all())
    True
    """
    steps = np.asarray(timesteps, dtype=np.int64)
    abar = schedule.alphas_cumprod[steps - 1]
    abar_prev = np.append(1.0, abar[:-1])
    betas = 1.0 - abar / abar_prev
    consecutive = np.diff(np.append(0, steps)) == 1
    betas[consecutive] = schedule.betas[steps[consecutive] - 1]
    return NoiseSchedule(betas)


def respace(diffusion: GaussianDiffusion, steps) -> GaussianDiffusion:
    """A :class:`~ppl_diffusion.diffusion.GaussianDiffusion` over the kept steps s_1 < … < s_K of ``diffusion``.

    Its schedule is :func:`respaced_schedule`; its denoiser is a :class:`RespacedDenoiser` around
    ``diffusion.denoiser`` (shared, no copy); prior, decoder, variance name and event shape are the
    original's. ``respace(d, K).sample(n)`` is improved DDPM's respaced ancestral sampling of ``d``'s
    model (sites ``x_K`` … ``x_1``, ``x_0``; new step k stands for original step s_k).

    :param ~ppl_diffusion.diffusion.GaussianDiffusion diffusion: the trained diffusion with T steps.
    :param steps: an int K or a string (see :func:`space_timesteps`), or an iterable of distinct
        original steps in 1..T (sorted here).
    :raises ValueError: naming the value when K or a step is invalid.
    :rtype: ~ppl_diffusion.diffusion.GaussianDiffusion

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=20), denoiser=MLPDenoiser(2, width=16, depth=1),
    ...                               event_shape=(2,))
    >>> fast = respace(diffusion, 5)
    >>> fast.T, fast.denoiser.timesteps.tolist(), fast.sample(3).shape
    (5, [1, 6, 11, 15, 20], torch.Size([3, 2]))
    >>> fast.denoiser.denoiser is diffusion.denoiser  # shared, not copied
    True
    """
    if not isinstance(diffusion, GaussianDiffusion):
        raise TypeError(f"respace needs a GaussianDiffusion, got {type(diffusion).__name__}")
    T = diffusion.T
    if isinstance(steps, (str, numbers.Number)):
        timesteps = space_timesteps(T, steps)
    else:
        timesteps = _check_steps(steps, T)
    return GaussianDiffusion(
        schedule=respaced_schedule(diffusion.schedule, timesteps),
        denoiser=RespacedDenoiser(diffusion.denoiser, timesteps),
        event_shape=tuple(diffusion.event_shape),
        prior=diffusion.prior,
        decoder=diffusion.decoder,
        variance=(diffusion.variance.respaced(timesteps) if isinstance(diffusion.variance, FittedVariance)
                  else diffusion.variance),
        precision=diffusion.precision,
    )


def _check_steps(steps, T: int) -> list[int]:
    values = list(steps.tolist() if hasattr(steps, "tolist") else steps)
    if not values:
        raise ValueError(f"steps = {steps!r} is empty; keep at least one step of 1..T = 1..{T}")
    for s in values:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 1 <= s <= T:
            raise ValueError(f"step {s!r} in steps is not an integer in 1..T = 1..{T}")
    if len(set(values)) != len(values):
        dup = next(s for s in values if values.count(s) > 1)
        raise ValueError(f"step {dup} appears more than once in steps; the kept steps must be distinct")
    return sorted(int(s) for s in values)
