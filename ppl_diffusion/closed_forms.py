"""Closed forms of the lecture, as small functions on tensors.

Shapes: ``x0`` and ``x_t`` are ``[B x ...]`` (a batch of B examples of any event shape); ``t`` is
a ``LongTensor[B]`` of steps in 1..T. Schedule coefficients are gathered in float64 and cast to the
dtype of the data, as improved DDPM does. ``schedule`` is a :class:`~ppl_diffusion.NoiseSchedule` (float64
numpy) or a :class:`~ppl_diffusion.gamma.GammaChain` (the same names as float64 tensors, differentiable in a
learned γ schedule's parameters).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .schedule import NoiseSchedule


def extract(arr: np.ndarray | Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``arr[t - 1]`` as a tensor broadcastable against ``like`` (shape ``[B, 1, ..., 1]``); ``arr`` a float64 array
    or tensor (a tensor keeps its gradient)."""
    out = torch.as_tensor(arr, device=t.device)[t - 1].to(like.dtype)
    return out.reshape(out.shape + (1,) * (like.dim() - out.dim()))


def q_mean_variance(schedule: NoiseSchedule, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Statement 1: q(x_t | x_0) = N(√ᾱ_t · x_0, (1 − ᾱ_t) I). Returns (mean, variance)."""
    mean = extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
    var = extract(1.0 - schedule.alphas_cumprod, t, x0).expand_as(x0)
    return mean, var


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε, a draw from q(x_t | x_0) given the noise ε."""
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * eps
    )


def q_step_mean_variance(schedule: NoiseSchedule, x_prev: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """One forward step: q(x_t | x_{t−1}) = N(√(1 − β_t) · x_{t−1}, β_t I). Returns (mean, variance)."""
    mean = extract(schedule.sqrt_alphas, t, x_prev) * x_prev
    var = extract(schedule.betas, t, x_prev).expand_as(x_prev)
    return mean, var


def q_posterior_mean_variance(
    schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """q(x_{t−1} | x_t, x_0) = N(μ̃_t(x_t, x_0), β̃_t I), by Bayes' rule on the forward chain.

    μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t,
    β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t).

    Returns (mean, variance, clipped log-variance); the variance is 0 at t = 1, where
    x_{t−1} = x_0 is known, and the clipped log-variance uses β̃_2 there.
    """
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    var = extract(schedule.posterior_variance, t, x_t).expand_as(x_t)
    log_var = extract(schedule.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
    return mean, var, log_var


def predict_x0_from_eps(schedule: NoiseSchedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t, Statement 1 solved for x_0."""
    return (x_t - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / extract(
        schedule.sqrt_alphas_cumprod, t, x_t
    )


def p_mean_from_eps(schedule: NoiseSchedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """DDPM's reverse mean μ_θ(x_t, t) = (x_t − β_t / √(1 − ᾱ_t) · ε̂) / √α_t.

    It equals μ̃_t(x_t, x̂_0) with x̂_0 from :func:`predict_x0_from_eps`.
    """
    coef = extract(schedule.betas / schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
    return (x_t - coef * eps) / extract(schedule.sqrt_alphas, t, x_t)


def scaled_latent(schedule: NoiseSchedule, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(x_t/√ᾱ_t, log((1 − ᾱ_t)/ᾱ_t)): the latent on the data's scale, x_t/α_t = x_0 + (σ_t/α_t) ε, and the log of
    its noise variance σ_t²/α_t² (γ_t of a γ chain, read exactly; log-SNR⁻¹ of a NoiseSchedule), the second
    broadcast to ``x_t``'s shape. VDM's categorical decoder reads them at t = 1."""
    gamma = schedule.gamma if hasattr(schedule, "gamma") else np.log1p(-schedule.alphas_cumprod) - np.log(
        schedule.alphas_cumprod)
    return x_t / extract(schedule.sqrt_alphas_cumprod, t, x_t), extract(gamma, t, x_t).expand_as(x_t)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise (diagonal Gaussians), in nats.

    = ½ (logvar2 − logvar1 + e^{logvar1 − logvar2} + (mean1 − mean2)² e^{−logvar2} − 1).
    Sum over the event dimensions for the KL of the diagonal Gaussian.
    """
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log N(x | mean, e^{2 log_scale}) elementwise: the continuous decoder."""
    z = (x - mean) * torch.exp(-log_scale)
    return -0.5 * z**2 - log_scale - 0.5 * math.log(2 * math.pi)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − e^x) for x <= 0, accurate for x near 0 and for x very negative (Mächler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_normal_cdf_diff(a: Tensor, b: Tensor) -> Tensor:
    """log(Φ(b) − Φ(a)) for finite a < b, stable in both tails.

    By symmetry Φ(b) − Φ(a) = Φ(−a) − Φ(−b), so the interval is moved to the lower half-line, where
    log Φ is accurate, and log(Φ(b) − Φ(a)) = log Φ(b) + log(1 − e^{log Φ(a) − log Φ(b)}).
    """
    flip = (a + b) > 0
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    log_lo = torch.special.log_ndtr(lo)
    # Guard the degenerate a == b (probability 0) against log(0) - log(0) = nan.
    delta = torch.clamp(log_lo - log_hi, max=-torch.finfo(a.dtype).tiny)
    return log_hi + log1mexp(delta)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor, bins: int = 256) -> Tensor:
    """log P(bin of x) for N(mean, e^{2 log_scale}) discretized over ``bins`` bins on [−1, 1].

    Bin centres are c_k = −1 + 2k/(K − 1), k = 0..K−1, with edges c_k ± 1/(K − 1); the first bin
    extends to −∞ and the last to +∞, so the K probabilities sum to 1. Every probability is a
    log-CDF difference (:func:`log_normal_cdf_diff`), exact in the tails where improved DDPM's tanh
    approximation of Φ underflows. ``x`` must lie on the bin centres (8-bit pixels mapped to [−1, 1]).
    """
    if bins < 2:
        raise ValueError(f"bins = {bins!r}; a discretized decoder needs at least 2 bins")
    half = 1.0 / (bins - 1)
    inv_scale = torch.exp(-log_scale)
    upper = (x - mean + half) * inv_scale
    lower = (x - mean - half) * inv_scale
    left_edge = x < -1.0 + half
    right_edge = x > 1.0 - half
    # Replace the infinite edges by finite stand-ins before any log, so that no branch of the
    # torch.where below produces a nan gradient.
    log_cdf_upper = torch.special.log_ndtr(upper)  # left bin: log Φ(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)  # right bin: log(1 − Φ(lower))
    mid_lower = torch.where(left_edge | right_edge, upper - 1.0, lower)
    mid = log_normal_cdf_diff(mid_lower, upper)
    return torch.where(left_edge, log_cdf_upper, torch.where(right_edge, log_sf_lower, mid))
