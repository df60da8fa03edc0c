"""The full variational bound, every term separately: L_0, L_1 … L_{T−1}, L_T, in nats per example."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .trace_terms import per_example_elbo, trace_pair


@dataclass
class VariationalBound:
    """The terms of −ELBO for a batch.

    ``terms[:, j]`` is L_j in nats: L_0 = −log p(x_0|x_1) (decoder), L_j = E KL(q(x_j|x_{j+1}, x_0) ||
    p(x_j|x_{j+1}, θ)) for j = 1..T−1, L_T = KL(q(x_T|x_0) || p(x_T)) (prior). Each L_j for j < T is a
    one-draw estimate over x_{j+1} ~ q(x_{j+1}|x_0), so their sum is an unbiased estimate of −ELBO.
    """

    terms: Tensor  # [B x (T + 1)], nats
    num_dims: int  # D, data dimensions per example

    @property
    def nll(self) -> Tensor:
        """−ELBO per example ``[B]``, an upper bound on −log p(x_0), in nats."""
        return self.terms.sum(-1)

    @property
    def elbo(self) -> Tensor:
        return -self.nll

    @property
    def decoder_term(self) -> Tensor:
        return self.terms[:, 0]

    @property
    def prior_term(self) -> Tensor:
        return self.terms[:, -1]

    @property
    def kl_terms(self) -> Tensor:
        """L_1 … L_{T−1}, ``[B x (T − 1)]``."""
        return self.terms[:, 1:-1]

    def bits_per_dim(self) -> Tensor:
        """−ELBO / (D ln 2) per example."""
        return self.nll / (self.num_dims * math.log(2.0))


def auto_timesteps_per_batch(batch: int, target: int = 512) -> int:
    """Steps per denoiser call so that a call sees about ``target`` inputs: large enough to keep a CPU busy,
    small enough that activations stay under glibc's mmap threshold (bigger calls measured 1.8× slower)."""
    return max(1, target // max(1, batch))


def variational_bound(diffusion, x0: Tensor, *, analytic: bool = True, timesteps_per_batch: int = 1,
                      timesteps=None, progress: bool = False) -> VariationalBound:
    """Evaluate every term of the bound for the batch ``x0`` (``[B x ...]``).

    Step t = 1..T runs the one-step programs with t fixed for the whole batch (L_{t−1} scored by its
    closed-form KL when ``analytic``, else by one Monte-Carlo draw). ``timesteps_per_batch`` steps are
    evaluated in one call of the denoiser (the batch is tiled), trading memory for speed. Wrap the call
    in ``torch.no_grad()`` unless you need gradients. ``timesteps`` (steps in 1..T) evaluates only the
    terms L_{t−1} of those steps, for estimates of the bound from a subset of its terms; the other
    columns are NaN (the prior term L_T is always computed).
    """
    x0 = diffusion.check_data(x0)
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
        t = ts.repeat_interleave(batch)
        x0c = x0.repeat((len(ts),) + (1,) * (x0.dim() - 1))
        model_trace, guide_trace = trace_pair(diffusion.step_model, diffusion.step_guide, x0c, t)
        site = per_example_elbo(model_trace, guide_trace, analytic=analytic)
        step = (site["x_t"] + site["x_prev"] + site["x_0"]).reshape(len(ts), batch)
        if prior is None:
            prior = -site["x_T"][:batch]
        for i, ti in enumerate(ts.tolist()):
            columns[ti - 1] = -step[i]
    terms = torch.stack(columns + [prior], dim=-1)
    return VariationalBound(terms=terms, num_dims=diffusion.num_dims)
