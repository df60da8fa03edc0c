"""Data sets as float tensors in model space. (The image data sets arrive with the product issue.)"""

from __future__ import annotations

import math

import torch


def eight_gaussians(n: int, *, radius: float = 2.0, std: float = 0.1, scale: float = 0.5, seed: int | None = None):
    """``[n x 2]`` draws from 8 equal Gaussians on a circle of ``radius``, multiplied by ``scale``.

    The classic 2-D toy of the diffusion and flow literature; with the defaults the points lie in [−1.1, 1.1]².
    """
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    k = torch.randint(0, 8, (n,), generator=gen)
    angle = k.float() * (2 * math.pi / 8)
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    return scale * (centres + std * torch.randn(n, 2, generator=gen))
