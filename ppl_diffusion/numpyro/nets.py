"""Denoisers in Flax NNX, layer for layer the PyTorch ones, so that weights convert both ways
(:mod:`ppl_diffusion.numpyro.convert`). The U-Net is not ported yet (issue 6)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """``[B]`` steps → ``[B x dim]`` features cos(t·f_i), sin(t·f_i), f_i = max_period^(−i/(dim/2)), float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t).astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


class ResidualMLPBlock(nnx.Module):
    def __init__(self, width: int, emb_dim: int, dropout: float, *, rngs: nnx.Rngs) -> None:
        self.norm = nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs)  # torch's default epsilon
        self.emb = nnx.Linear(emb_dim, width, rngs=rngs)
        self.fc1 = nnx.Linear(width, width, rngs=rngs)
        self.fc2 = nnx.Linear(width, width, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, h, emb):
        z = self.fc1(jax.nn.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.drop(jax.nn.silu(z)))


class MLPDenoiser(nnx.Module):
    """``net(x_t, t) -> ε̂``, the Flax twin of :class:`ppl_diffusion.nets.MLPDenoiser` (same layers, same
    names, same initial output of zero when ``zero_init``)."""

    def __init__(self, dim: int, *, width: int = 128, depth: int = 3, emb_dim: int = 64, dropout: float = 0.0,
                 zero_init: bool = True, rngs: nnx.Rngs | None = None) -> None:
        if dim < 1 or width < 1 or depth < 0:
            raise ValueError(f"MLPDenoiser(dim={dim}, width={width}, depth={depth}): sizes must be positive")
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.dim, self.emb_dim = dim, emb_dim
        self.time_in = nnx.Linear(emb_dim, width, rngs=rngs)
        self.time_out = nnx.Linear(width, width, rngs=rngs)
        self.inp = nnx.Linear(dim, width, rngs=rngs)
        self.blocks = nnx.List([ResidualMLPBlock(width, width, dropout, rngs=rngs) for _ in range(depth)])
        self.out_norm = nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs)
        self.out = nnx.Linear(width, dim, rngs=rngs)
        if zero_init:  # ε̂ = 0 at initialisation, as the PyTorch net
            self.out.kernel[...] = jnp.zeros_like(self.out.kernel[...])
            self.out.bias[...] = jnp.zeros_like(self.out.bias[...])

    def __call__(self, x_t, t):
        shape = x_t.shape
        x = x_t.reshape(shape[0], -1)
        if x.shape[1] != self.dim:
            raise ValueError(f"MLPDenoiser(dim={self.dim}) got x_t of shape {tuple(shape)} "
                             f"({x.shape[1]} dimensions per example)")
        emb = self.time_out(jax.nn.silu(self.time_in(timestep_embedding(t, self.emb_dim).astype(x.dtype))))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(jax.nn.silu(self.out_norm(h))).reshape(shape)
