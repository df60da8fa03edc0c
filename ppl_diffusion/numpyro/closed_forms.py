"""The lecture's closed forms on JAX arrays: the same formulas, term for term, as
:mod:`ppl_diffusion.closed_forms` (PyTorch), reading the same float64 :class:`~ppl_diffusion.schedule.NoiseSchedule`.

Coefficients are computed in float64 numpy exactly as the PyTorch backend computes them, gathered per t
and cast to the data's dtype, so that both backends see the same float32 numbers. ``schedule`` may also be a
:class:`~ppl_diffusion.numpyro.gamma.GammaChain` (the same names as JAX arrays, differentiable in a γ schedule).

Shapes: ``x0`` and ``x_t`` are ``[B x ...]`` (a batch of B examples of any event shape); ``t`` is an int array
``[B]`` of steps in 1..T.

Example:

>>> import jax.numpy as jnp
>>> import numpy as np
>>> import torch
>>> from ppl_diffusion import NoiseSchedule, closed_forms
>>> from ppl_diffusion.numpyro import closed_forms as cf
>>> schedule = NoiseSchedule.linear(T=10)
>>> x0, eps, t = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), jnp.ones((2, 3)), jnp.array([3, 7])
>>> x_t = cf.q_sample(schedule, x0, t, eps)
>>> twin = closed_forms.q_sample(schedule, torch.tensor(np.asarray(x0)), torch.tensor([3, 7]), torch.ones(2, 3))
>>> x_t.shape, bool(np.allclose(np.asarray(x_t), twin.numpy()))   # the PyTorch backend's numbers
((2, 3), True)
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from ..schedule import NoiseSchedule


def extract(arr, t, like):
    """``arr[t − 1]`` broadcastable against ``like``: ``t`` has the batch shape, trailing 1s are added. ``arr`` is a
    float64 NumPy array (cast on the host) or a JAX array (a γ chain's, cast in the program).

    :param arr: a per-step coefficient ``[T]`` (e.g. ``schedule.betas``).
    :param t: steps ``int[B]`` in 1..T.
    :param like: an array ``[B x ...]`` whose dtype and number of dimensions the result takes.
    :returns: ``[B x 1 x ... x 1]``, of ``like``'s dtype.

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro.closed_forms import extract
    >>> schedule = NoiseSchedule.linear(T=10)
    >>> beta = extract(schedule.betas, jnp.array([1, 10]), jnp.zeros((2, 3, 4)))
    >>> beta.shape, beta.dtype, round(float(beta[1, 0, 0]), 3)
    ((2, 1, 1), dtype('float32'), 0.999)
    """
    if isinstance(arr, np.ndarray):
        out = jnp.asarray(arr.astype(like.dtype))[jnp.asarray(t) - 1]
    else:
        out = jnp.asarray(arr).astype(like.dtype)[jnp.asarray(t) - 1]
    return out.reshape(out.shape + (1,) * (like.ndim - out.ndim))


def q_mean_variance(schedule: NoiseSchedule, x0, t):
    r"""Statement 1: q(x_t | x_0) = N(√ᾱ_t · x_0, (1 − ᾱ_t) I). Returns (mean, variance).

    .. math:: q(x_t \mid x_0) = \mathcal{N}\big(\sqrt{\bar\alpha_t}\, x_0,\ (1 - \bar\alpha_t) I\big)

    :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule` or a
        :class:`~ppl_diffusion.numpyro.gamma.GammaChain`.
    :param x0: the data ``[B x ...]``.
    :param t: steps ``int[B]`` in 1..T.
    :returns: ``(mean, variance)``, each of the shape of ``x0``.

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro.closed_forms import q_mean_variance
    >>> schedule = NoiseSchedule.linear(T=10)
    >>> mean, var = q_mean_variance(schedule, jnp.ones((2, 3)), jnp.array([1, 10]))
    >>> mean.shape, round(float(var[0, 0]), 4)   # 1 − ᾱ_1 = β_1
    ((2, 3), 0.01)
    """
    mean = extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
    var = jnp.broadcast_to(extract(1.0 - schedule.alphas_cumprod, t, x0), x0.shape)
    return mean, var


def q_sample(schedule: NoiseSchedule, x0, t, eps):
    r"""x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, a draw from q(x_t | x_0) given the noise ε.

    .. math:: x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon

    :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule` or a
        :class:`~ppl_diffusion.numpyro.gamma.GammaChain`.
    :param x0: the data ``[B x ...]``.
    :param t: steps ``int[B]`` in 1..T.
    :param eps: standard normal noise of the shape of ``x0``.
    :returns: ``x_t``, of the shape of ``x0``.

    Example (the PyTorch backend's numbers):

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion import NoiseSchedule, closed_forms
    >>> from ppl_diffusion.numpyro.closed_forms import q_sample
    >>> schedule = NoiseSchedule.linear(T=10)
    >>> x_t = q_sample(schedule, jnp.full((2, 3), 0.5), jnp.array([2, 9]), jnp.ones((2, 3)))
    >>> twin = closed_forms.q_sample(schedule, torch.full((2, 3), 0.5), torch.tensor([2, 9]), torch.ones(2, 3))
    >>> bool(np.allclose(np.asarray(x_t), twin.numpy()))
    True
    """
    return extract(schedule.sqrt_alphas_cumprod, t, x0) * x0 + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * eps


def q_step_mean_variance(schedule: NoiseSchedule, x_prev, t):
    r"""q(x_t | x_{t−1}) = N(√(1 − β_t) x_{t−1}, β_t I): one step of the forward chain. Returns (mean, variance).

    .. math:: q(x_t \mid x_{t-1}) = \mathcal{N}\big(\sqrt{1 - \beta_t}\, x_{t-1},\ \beta_t I\big)

    :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule` or a
        :class:`~ppl_diffusion.numpyro.gamma.GammaChain`.
    :param x_prev: x_{t−1} ``[B x ...]``.
    :param t: steps ``int[B]`` in 1..T.
    :returns: ``(mean, variance)``, each of the shape of ``x_prev``.

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro.closed_forms import q_step_mean_variance
    >>> mean, var = q_step_mean_variance(NoiseSchedule.linear(T=10), jnp.ones((1, 2)), jnp.array([1]))
    >>> round(float(mean[0, 0]), 4), round(float(var[0, 0]), 4)   # √(1 − 0.01), β_1
    (0.995, 0.01)
    """
    mean = extract(schedule.sqrt_alphas, t, x_prev) * x_prev
    var = jnp.broadcast_to(extract(schedule.betas, t, x_prev), x_prev.shape)
    return mean, var


def q_posterior_mean_variance(schedule: NoiseSchedule, x0, x_t, t):
    r"""q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I): mean, variance and clipped log-variance.

    .. math::

        q(x_{t-1} \mid x_t, x_0) = \mathcal{N}(\tilde\mu_t, \tilde\beta_t I), \quad
        \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1 - \bar\alpha_t} x_0
        + \frac{\sqrt{\alpha_t}\,(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t} x_t, \quad
        \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}\,\beta_t

    The log-variance is clipped at t = 1 (where β̃_1 = 0) to log β̃_2, as DDPM's.

    :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule` or a
        :class:`~ppl_diffusion.numpyro.gamma.GammaChain`.
    :param x0: the data ``[B x ...]``.
    :param x_t: the latent at step t, of the shape of ``x0``.
    :param t: steps ``int[B]`` in 1..T.
    :returns: ``(mean, variance, log_variance)``, each of the shape of ``x_t``.

    Example (at t = 1 the posterior is a point mass at x_0):

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro.closed_forms import q_posterior_mean_variance
    >>> x0, x_t = jnp.full((1, 2), 0.5), jnp.zeros((1, 2))
    >>> mean, var, log_var = q_posterior_mean_variance(NoiseSchedule.linear(T=10), x0, x_t, jnp.array([1]))
    >>> float(mean[0, 0]), float(var[0, 0])
    (0.5, 0.0)
    """
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    var = jnp.broadcast_to(extract(schedule.posterior_variance, t, x_t), x_t.shape)
    log_var = jnp.broadcast_to(extract(schedule.posterior_log_variance_clipped, t, x_t), x_t.shape)
    return mean, var, log_var


def predict_x0_from_eps(schedule: NoiseSchedule, x_t, t, eps):
    r"""x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t: the data that ``x_t`` came from if its noise was ``eps``.

    .. math:: \hat x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\,\hat\epsilon}{\sqrt{\bar\alpha_t}}

    :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule` or a
        :class:`~ppl_diffusion.numpyro.gamma.GammaChain`.
    :param x_t: the latent ``[B x ...]``.
    :param t: steps ``int[B]`` in 1..T.
    :param eps: the predicted noise ε̂, of the shape of ``x_t``.
    :returns: x̂_0, of the shape of ``x_t``.

    Example (it inverts :func:`q_sample`):

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro.closed_forms import predict_x0_from_eps, q_sample
    >>> schedule, t, eps = NoiseSchedule.linear(T=10), jnp.array([4]), jnp.ones((1, 2))
    >>> x_t = q_sample(schedule, jnp.full((1, 2), 0.5), t, eps)
    >>> round(float(predict_x0_from_eps(schedule, x_t, t, eps)[0, 0]), 4)
    0.5
    """
    return (x_t - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / extract(
        schedule.sqrt_alphas_cumprod, t, x_t)


def p_mean_from_eps(schedule: NoiseSchedule, x_t, t, eps):
    r"""DDPM's reverse mean μ_θ(x_t, t) = (x_t − β_t / √(1 − ᾱ_t) · ε̂) / √α_t.

    .. math:: \mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}}
        \Big(x_t - \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}\,\hat\epsilon_\theta(x_t, t)\Big)

    It equals the posterior mean μ̃_t(x̂_0, x_t) at x̂_0 = :func:`predict_x0_from_eps`.

    :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule` or a
        :class:`~ppl_diffusion.numpyro.gamma.GammaChain`.
    :param x_t: the latent ``[B x ...]``.
    :param t: steps ``int[B]`` in 1..T.
    :param eps: the predicted noise ε̂, of the shape of ``x_t``.
    :returns: μ_θ, of the shape of ``x_t``.

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro.closed_forms import (p_mean_from_eps, predict_x0_from_eps,
    ...                                                 q_posterior_mean_variance)
    >>> schedule, t, x_t, eps = NoiseSchedule.linear(T=10), jnp.array([5]), jnp.ones((1, 2)), jnp.full((1, 2), 0.3)
    >>> x0_hat = predict_x0_from_eps(schedule, x_t, t, eps)
    >>> mu_tilde = q_posterior_mean_variance(schedule, x0_hat, x_t, t)[0]
    >>> bool(jnp.allclose(p_mean_from_eps(schedule, x_t, t, eps), mu_tilde, atol=1e-5))
    True
    """
    coef = extract(schedule.betas / schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
    return (x_t - coef * eps) / extract(schedule.sqrt_alphas, t, x_t)


def scaled_latent(schedule: NoiseSchedule, x_t, t):
    r"""(x_t/√ᾱ_t, log((1 − ᾱ_t)/ᾱ_t)) broadcast to x_t: the latent on the data's scale and the log of its noise
    variance σ_t²/α_t² (γ_t of a γ chain), as :func:`ppl_diffusion.closed_forms.scaled_latent`.

    .. math:: \Big(\frac{x_t}{\sqrt{\bar\alpha_t}},\ \gamma_t = \log\frac{1 - \bar\alpha_t}{\bar\alpha_t}\Big)

    :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule` or a
        :class:`~ppl_diffusion.numpyro.gamma.GammaChain`.
    :param x_t: the latent ``[B x ...]``.
    :param t: steps ``int[B]`` in 1..T.
    :returns: ``(loc, log_variance)``, each of the shape of ``x_t``: what VDM's categorical decoder takes.

    Example:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro.closed_forms import scaled_latent
    >>> schedule = NoiseSchedule.linear(T=10)
    >>> loc, gamma = scaled_latent(schedule, jnp.ones((1, 2)), jnp.array([1]))
    >>> round(float(gamma[0, 0]), 4) == round(float(np.log(0.01 / 0.99)), 4)
    True
    """
    gamma = schedule.gamma if hasattr(schedule, "gamma") else np.log1p(-schedule.alphas_cumprod) - np.log(
        schedule.alphas_cumprod)
    return x_t / extract(schedule.sqrt_alphas_cumprod, t, x_t), jnp.broadcast_to(extract(gamma, t, x_t), x_t.shape)


def normal_kl(mean1, logvar1, mean2, logvar2):
    r"""KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats.

    .. math:: \mathrm{KL} = \tfrac12\Big(\log\frac{\sigma_2^2}{\sigma_1^2} + \frac{\sigma_1^2
        + (\mu_1 - \mu_2)^2}{\sigma_2^2} - 1\Big)

    :param mean1: μ_1; every argument broadcasts against the others.
    :param logvar1: log σ_1².
    :param mean2: μ_2.
    :param logvar2: log σ_2².
    :returns: the KL, of the broadcast shape (not summed).

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.closed_forms import normal_kl
    >>> float(normal_kl(jnp.array(1.0), jnp.array(0.0), jnp.array(0.0), jnp.array(0.0)))   # ½ (μ_1 − μ_2)²
    0.5
    """
    return 0.5 * (logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2) - 1.0)


def gaussian_log_likelihood(x, mean, log_scale):
    r"""log N(x | mean, e^{2 log_scale}) elementwise.

    .. math:: \log \mathcal{N}(x \mid \mu, \sigma^2) = -\tfrac12 \Big(\frac{x - \mu}{\sigma}\Big)^2
        - \log\sigma - \tfrac12 \log 2\pi

    :param x: the value; every argument broadcasts against the others.
    :param mean: μ.
    :param log_scale: log σ.
    :returns: the log-density in nats, of the broadcast shape.

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.closed_forms import gaussian_log_likelihood
    >>> round(float(gaussian_log_likelihood(jnp.array(0.0), 0.0, 0.0)), 4)   # −½ log 2π
    -0.9189
    """
    z = (x - mean) * jnp.exp(-log_scale)
    return -0.5 * z ** 2 - log_scale - 0.5 * math.log(2 * math.pi)


def log1mexp(x):
    r"""log(1 − e^x) for x <= 0, accurate near 0 and for very negative x (Mächler 2012).

    .. math:: \log(1 - e^x) = \begin{cases} \log(-\mathrm{expm1}(x)) & x > -\log 2 \\
        \mathrm{log1p}(-e^x) & \text{otherwise} \end{cases}

    :param x: an array of values <= 0.
    :returns: log(1 − e^x), elementwise.

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.closed_forms import log1mexp
    >>> [round(float(v), 4) for v in log1mexp(jnp.array([-1e-6, -1.0, -50.0]))]
    [-13.8155, -0.4587, -0.0]
    """
    return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def log_normal_cdf_diff(a, b):
    r"""log(Φ(b) − Φ(a)) for finite a < b, stable in both tails (see the PyTorch backend).

    .. math:: \log\big(\Phi(b) - \Phi(a)\big) = \log\Phi(b) + \log\big(1 - e^{\log\Phi(a) - \log\Phi(b)}\big),

    computed on the side of 0 where the CDFs are not close to 1 (Φ(b) − Φ(a) = Φ(−a) − Φ(−b)).

    :param a: the lower ends; broadcasts against ``b``.
    :param b: the upper ends, b > a.
    :returns: the log-probability of the interval (a, b] under N(0, 1), elementwise.

    Example (deep in the right tail, where Φ(b) − Φ(a) in float32 would be 0):

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.closed_forms import log_normal_cdf_diff
    >>> round(float(log_normal_cdf_diff(jnp.array(-1.0), jnp.array(1.0))), 4)   # log 0.6827
    -0.3817
    >>> bool(jnp.isfinite(log_normal_cdf_diff(jnp.array(10.0), jnp.array(10.5))))
    True
    """
    flip = (a + b) > 0
    lo = jnp.where(flip, -b, a)
    hi = jnp.where(flip, -a, b)
    log_hi = log_ndtr(hi)
    log_lo = log_ndtr(lo)
    delta = jnp.minimum(log_lo - log_hi, -jnp.finfo(jnp.result_type(a)).tiny)
    return log_hi + log1mexp(delta)


def discretized_gaussian_log_likelihood(x, mean, log_scale, bins: int = 256):
    r"""log P(bin of x) for N(mean, e^{2 log_scale}) discretized over ``bins`` bins on [−1, 1], edge bins
    extended to ±∞; exact in the tails (log-CDF differences).

    With half-width δ = 1/(bins − 1) and σ = e^{log_scale} (DDPM §3.3):

    .. math:: \log P(x) = \log\Big(\Phi\Big(\frac{x + \delta - \mu}{\sigma}\Big)
        - \Phi\Big(\frac{x - \delta - \mu}{\sigma}\Big)\Big),

    with the lower CDF replaced by 0 in the first bin and the upper by 1 in the last.

    :param x: the data on the bin centres in [−1, 1]; every argument broadcasts against the others.
    :param mean: μ.
    :param log_scale: log σ.
    :param int bins: the number of bins (>= 2; 256 for 8-bit data).
    :returns: the log-probability in nats, of the broadcast shape.

    Example (the probabilities of the bins sum to 1):

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.closed_forms import discretized_gaussian_log_likelihood
    >>> centres = jnp.linspace(-1.0, 1.0, 4)
    >>> log_p = discretized_gaussian_log_likelihood(centres, 0.2, jnp.log(0.5), bins=4)
    >>> round(float(jnp.exp(log_p).sum()), 5)
    1.0
    """
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


__all__ = ["discretized_gaussian_log_likelihood", "extract", "gaussian_log_likelihood", "log1mexp",
           "log_normal_cdf_diff", "normal_kl", "p_mean_from_eps", "predict_x0_from_eps", "q_mean_variance",
           "q_posterior_mean_variance", "q_sample", "q_step_mean_variance", "scaled_latent"]
