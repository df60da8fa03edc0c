"""Sinusoidal features: the embedding of the step t (Transformer positional encoding, as in DDPM), and the Fourier
features of the input x_t (VDM, Kingma et al. 2021, appendix B) with the rule that picks their frequencies from
the spacing of the data's grey levels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# The exponents n of the frequencies 2^n a Fourier feature may have: float32 keeps about 2^-24 of |x| ~ 1, so the
# phase 2^n·2π·x of a float32 x is exact to ~2^(n−21) radians, a few hundredths at n = 16.
FOURIER_EXPONENTS = range(0, 17)

__all__ = ["fourier_exponents", "fourier_features", "timestep_embedding"]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, dtype=torch.float32, *, shift: float = 0.0,
                       scale: float = 1.0) -> Tensor:
    """``[B]`` steps → ``[B x dim]`` features cos(s·f_i), sin(s·f_i), f_i = max_period^(−i/(dim/2)), of ``dtype``,
    at s = (t + ``shift``) · ``scale`` (t itself by default): computed in float64 for float64, else in float32 (as
    DDPM) and cast.

    :param torch.Tensor t: the steps ``[B]`` (integers or floats).
    :param int dim: the number of features (an odd ``dim`` ends with one zero).
    :param float max_period: the longest period, 10000 as in the Transformer and DDPM.
    :param dtype: the features' dtype.
    :param float shift: added to t before scaling (another code base's step label).
    :param float scale: multiplies t + ``shift``.
    :returns: ``[B x dim]``.

    Example:

    >>> import torch
    >>> from ppl_diffusion.nets import timestep_embedding
    >>> emb = timestep_embedding(torch.tensor([1, 5, 10]), 8)
    >>> emb.shape
    torch.Size([3, 8])
    >>> round(float(emb[0, 0]), 4), round(float(emb[0, 4]), 4)  # cos(1), sin(1) at the top frequency f_0 = 1
    (0.5403, 0.8415)
    """
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


def check_fourier_exponents(exponents, what: str = "fourier_features") -> tuple[int, ...]:
    """``exponents`` (a sequence of distinct integers n in 0..16, the frequencies 2^n; empty or ``None``: no
    features) as a tuple; a one-line ``ValueError`` naming the bad value and the fix otherwise."""
    if exponents is None:
        return ()
    if isinstance(exponents, str):
        fix = ("'auto' is resolved from the data's grey levels by the train command (--fourier-features auto); "
               "pass the exponents themselves here, e.g. [6, 7]" if exponents == "auto" else
               "pass a list of integer exponents n, e.g. [6, 7] (VDM's for 8-bit data)")
        raise ValueError(f"{what} = {exponents!r}: {fix}")
    if not isinstance(exponents, Sequence):
        raise ValueError(f"{what} = {exponents!r}: pass a list of integer exponents n, e.g. [6, 7]")
    for n in exponents:
        if isinstance(n, bool) or not isinstance(n, int) or n not in FOURIER_EXPONENTS:
            raise ValueError(f"{what} = {list(exponents)!r}: each exponent n of a frequency 2^n must be an integer in "
                             f"0..16 (float32 cannot resolve the phase 2^n·2π·x beyond), got {n!r}; VDM uses 6, 7 for "
                             "8-bit data (--fourier-features auto picks them from the data's grey levels)")
    if len(set(exponents)) != len(exponents):
        raise ValueError(f"{what} = {list(exponents)!r}: an exponent appears twice; pass each once")
    return tuple(exponents)


def fourier_features(x: Tensor, exponents: Sequence[int]) -> Tensor:
    """VDM's Fourier features of ``x`` ``[N x C x H x W]``: sin and cos of 2^n·2π·x for each channel c and each
    exponent n of ``exponents`` (F of them), ``[N x 2CF x H x W]``, ordered as VDM's ``Base2FourierFeatures``:
    sin(2^{n_1}·2π·x_c1), sin(2^{n_2}·2π·x_c1), …, sin(2^{n_F}·2π·x_cC), then the cos in the same order.

    Each angle is x times the frequency 2^n·2π rounded once to x's dtype (exact scaling by 2^n), in x's dtype.
    ``torch.sin`` / ``torch.cos`` of a large CPU tensor run in MKL's vector-math library on several threads;
    :mod:`ppl_diffusion.determinism` chooses those kernels once at import, so the features (and their gradients,
    cos and sin again) have the same bits in every process.

    :param torch.Tensor x: ``[N x C x H x W]``.
    :param exponents: the exponents n of the frequencies 2^n, F of them.
    :returns: ``[N x 2CF x H x W]``.

    Example:

    >>> import torch
    >>> from ppl_diffusion.nets.embedding import fourier_features
    >>> x = torch.full((2, 3, 8, 8), 0.125)
    >>> h = fourier_features(x, (2, 3))
    >>> h.shape
    torch.Size([2, 12, 8, 8])
    >>> round(float(h[0, 0, 0, 0]), 4), round(float(h[0, 6, 0, 0]), 4)  # sin(4·2π/8) = 0, cos(4·2π/8) = -1
    (0.0, -1.0)
    """
    n, c = x.shape[:2]
    w = torch.tensor([2.0 ** k * 2.0 * math.pi for k in exponents], dtype=x.dtype, device=x.device)
    h = (x[:, :, None] * w[None, None, :, None, None]).reshape(n, c * len(w), *x.shape[2:])  # (N, C·F, H, W)
    return torch.cat([torch.sin(h), torch.cos(h)], dim=1)


def fourier_exponents(spacing: float) -> tuple[int, int]:
    """The exponents (n* − 1, n*) of the Fourier features for data whose levels are ``spacing`` apart (model space).

    The rule: the top frequency has one period per level step, 2^{n*}·Δ = 1, n* = round(log2(1/Δ)). Then
    sin(2^{n*}·2π·x_t) is (nearly) periodic on the lattice of levels and, at noise levels below the spacing, reads
    the offset of x_t from its level, i.e. the noise itself; the frequency below it turns by π per level step,
    2^{n*−1}·2π·Δ = π, so it tells neighbouring levels apart (their parity), which x_t alone resolves only at
    spacings of ~1. For 8-bit data (Δ = 2/255): 1/Δ = 127.5, (6, 7), VDM's choice; for the digits (17 levels,
    Δ = 0.125): (2, 3).

    :param float spacing: Δ, the distance between neighbouring levels in model space (positive).
    :rtype: tuple[int, int]

    Example:

    >>> from ppl_diffusion.nets.embedding import fourier_exponents
    >>> fourier_exponents(2 / 255), fourier_exponents(0.125)
    ((6, 7), (2, 3))
    """
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or not math.isfinite(spacing) or spacing <= 0:
        raise ValueError(f"grey-level spacing {spacing!r}: pass the positive distance between neighbouring levels in "
                         "model space (2/255 for 8-bit data)")
    top = round(math.log2(1.0 / spacing))
    if top - 1 not in FOURIER_EXPONENTS or top not in FOURIER_EXPONENTS:
        raise ValueError(f"grey-level spacing {spacing:.3g} gives Fourier exponents ({top - 1}, {top}), outside 0..16; "
                         "pass the exponents yourself (--fourier-features n1,n2)")
    return top - 1, top
