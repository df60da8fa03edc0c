"""The lecture's closed forms on JAX arrays: the same formulas, term for term, as
:mod:`ppl_diffusion.closed_forms` (PyTorch), reading the same float64 :class:`~ppl_diffusion.NoiseSchedule`.

Coefficients are computed in float64 numpy exactly as the PyTorch backend computes them, gathered per t
and cast to the data's dtype, so that both backends see the same float32 numbers. ``schedule`` may also be a
:class:`~ppl_diffusion.numpyro.gamma.GammaChain` (the same names as JAX arrays, differentiable in a γ schedule).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from ..schedule import NoiseSchedule


def extract(arr, t, like):
    """``arr[t − 1]`` broadcastable against ``like``: ``t`` has the batch shape, trailing 1s are added. ``arr`` is a
    float64 NumPy array (cast on the host) or a JAX array (a γ chain's, cast in the program)."""
    if isinstance(arr, np.ndarray):
        out = jnp.asarray(arr.astype(like.dtype))[jnp.asarray(t) - 1]
    else:
        out = jnp.asarray(arr).astype(like.dtype)[jnp.asarray(t) - 1]
    return out.reshape(out.shape + (1,) * (like.ndim - out.ndim))


def q_mean_variance(schedule: NoiseSchedule, x0, t):
    """Statement 1: q(x_t | x_0) = N(√ᾱ_t · x_0, (1 − ᾱ_t) I). Returns (mean, variance)."""
    mean = extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
    var = jnp.broadcast_to(extract(1.0 - schedule.alphas_cumprod, t, x0), x0.shape)
    return mean, var


def q_sample(schedule: NoiseSchedule, x0, t, eps):
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
    return extract(schedule.sqrt_alphas_cumprod, t, x0) * x0 + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * eps


def q_step_mean_variance(schedule: NoiseSchedule, x_prev, t):
    """q(x_t | x_{t−1}) = N(√(1 − β_t) x_{t−1}, β_t I)."""
    mean = extract(schedule.sqrt_alphas, t, x_prev) * x_prev
    var = jnp.broadcast_to(extract(schedule.betas, t, x_prev), x_prev.shape)
    return mean, var


def q_posterior_mean_variance(schedule: NoiseSchedule, x0, x_t, t):
    """q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I): mean, variance and clipped log-variance."""
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    var = jnp.broadcast_to(extract(schedule.posterior_variance, t, x_t), x_t.shape)
    log_var = jnp.broadcast_to(extract(schedule.posterior_log_variance_clipped, t, x_t), x_t.shape)
    return mean, var, log_var


def predict_x0_from_eps(schedule: NoiseSchedule, x_t, t, eps):
    """x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t."""
    return (x_t - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / extract(
        schedule.sqrt_alphas_cumprod, t, x_t)


def p_mean_from_eps(schedule: NoiseSchedule, x_t, t, eps):
    """DDPM's reverse mean μ_θ(x_t, t) = (x_t − β_t / √(1 − ᾱ_t) · ε̂) / √α_t."""
    coef = extract(schedule.betas / schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
    return (x_t - coef * eps) / extract(schedule.sqrt_alphas, t, x_t)


def scaled_latent(schedule: NoiseSchedule, x_t, t):
    """(x_t/√ᾱ_t, log((1 − ᾱ_t)/ᾱ_t)) broadcast to x_t: the latent on the data's scale and the log of its noise
    variance σ_t²/α_t² (γ_t of a γ chain), as :func:`ppl_diffusion.closed_forms.scaled_latent`."""
    gamma = schedule.gamma if hasattr(schedule, "gamma") else np.log1p(-schedule.alphas_cumprod) - np.log(
        schedule.alphas_cumprod)
    return x_t / extract(schedule.sqrt_alphas_cumprod, t, x_t), jnp.broadcast_to(extract(gamma, t, x_t), x_t.shape)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2) - 1.0)


def gaussian_log_likelihood(x, mean, log_scale):
    """log N(x | mean, e^{2 log_scale}) elementwise."""
    z = (x - mean) * jnp.exp(-log_scale)
    return -0.5 * z ** 2 - log_scale - 0.5 * math.log(2 * math.pi)


def log1mexp(x):
    """log(1 − e^x) for x <= 0, accurate near 0 and for very negative x (Mächler 2012)."""
    return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def log_normal_cdf_diff(a, b):
    """log(Φ(b) − Φ(a)) for finite a < b, stable in both tails (see the PyTorch backend)."""
    flip = (a + b) > 0
    lo = jnp.where(flip, -b, a)
    hi = jnp.where(flip, -a, b)
    log_hi = log_ndtr(hi)
    log_lo = log_ndtr(lo)
    delta = jnp.minimum(log_lo - log_hi, -jnp.finfo(jnp.result_type(a)).tiny)
    return log_hi + log1mexp(delta)


def discretized_gaussian_log_likelihood(x, mean, log_scale, bins: int = 256):
    """log P(bin of x) for N(mean, e^{2 log_scale}) discretized over ``bins`` bins on [−1, 1], edge bins
    extended to ±∞; exact in the tails (log-CDF differences)."""
    if bins < 2:
        raise ValueError(f"bins = {bins!r}; a discretized decoder needs at least 2 bins")
    half = 1.0 / (bins - 1)
    inv_scale = jnp.exp(-log_scale)
    upper = (x - mean + half) * inv_scale
    lower = (x - mean - half) * inv_scale
    left_edge = x < -1.0 + half
    right_edge = x > 1.0 - half
    log_cdf_upper = log_ndtr(upper)
    log_sf_lower = log_ndtr(-lower)
    mid_lower = jnp.where(left_edge | right_edge, upper - 1.0, lower)
    mid = log_normal_cdf_diff(mid_lower, upper)
    return jnp.where(left_edge, log_cdf_upper, jnp.where(right_edge, log_sf_lower, mid))
