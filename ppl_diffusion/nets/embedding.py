"""Sinusoidal embedding of the step t (Transformer positional encoding, as in DDPM)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, dtype=torch.float32, *, shift: float = 0.0,
                       scale: float = 1.0) -> Tensor:
    """``[B]`` steps → ``[B x dim]`` features cos(s·f_i), sin(s·f_i), f_i = max_period^(−i/(dim/2)), of ``dtype``,
    at s = (t + ``shift``) · ``scale`` (t itself by default): computed in float64 for float64, else in float32 (as
    DDPM) and cast."""
    half = dim // 2
    work = torch.float64 if dtype == torch.float64 else torch.float32
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=work, device=t.device) / half)
    s = t.to(work)
    if shift or scale != 1.0:  # another code base's step label (e.g. improved-diffusion's 0-based, rescaled)
        s = (s + shift) * scale
    args = s[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb.to(dtype)
