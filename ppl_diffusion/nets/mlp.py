"""An MLP denoiser ε̂_θ(x_t, t) for low-dimensional data (2-D toys, small vectors)."""

from __future__ import annotations

import math

from torch import Tensor, nn

from .embedding import timestep_embedding


class ResidualMLPBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.SiLU()
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.fc1(self.act(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.drop(self.act(z)))


class MLPDenoiser(nn.Module):
    """``net(x_t, t) -> ε̂`` with ``x_t`` of shape ``[B x ...]`` (flattened to D = prod of the rest).

    A stack of residual blocks (LayerNorm, SiLU, dropout) conditioned on a sinusoidal embedding of t,
    with a zero-initialised output layer, so that ε̂ = 0 at initialisation.

    :param int dim: D, the number of data dimensions.
    :param int width: hidden width. :param int depth: residual blocks.
    :param bool learn_sigma: output ε̂ and a variance output v, stacked on the first event axis
        (``[B x 2D]`` for vectors, ``[B x 2C x H x W]`` for images), for ``variance="learned"``.
    """

    def __init__(self, dim: int, *, width: int = 128, depth: int = 3, emb_dim: int = 64, dropout: float = 0.0,
                 zero_init: bool = True, learn_sigma: bool = False) -> None:
        super().__init__()
        if dim < 1 or width < 1 or depth < 0:
            raise ValueError(f"MLPDenoiser(dim={dim}, width={width}, depth={depth}): sizes must be positive")
        self.dim, self.emb_dim, self.learn_sigma = dim, emb_dim, learn_sigma
        self.time = nn.Sequential(nn.Linear(emb_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualMLPBlock(width, width, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, 2 * dim if learn_sigma else dim))
        if zero_init:
            nn.init.zeros_(self.out[-1].weight)
            nn.init.zeros_(self.out[-1].bias)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        shape = x_t.shape
        x = x_t.reshape(shape[0], -1)  # (B, D)
        if x.shape[1] != self.dim:
            raise ValueError(f"MLPDenoiser(dim={self.dim}) got x_t of shape {tuple(shape)} "
                             f"({x.shape[1]} dimensions per example)")
        emb = self.time(timestep_embedding(t, self.emb_dim, dtype=x.dtype))  # (B, width)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(h)
        return out.reshape(shape[0], 2 * shape[1], *shape[2:]) if self.learn_sigma else out.reshape(shape)

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(p.shape) for p in self.parameters())
