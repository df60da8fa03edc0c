"""Closed forms of the lecture, as small functions on tensors.

Shapes: ``x0`` and ``x_t`` are ``[B x ...]`` (a batch of B examples of any event shape); ``t`` is
a ``LongTensor[B]`` of steps in 1..T. Schedule coefficients are gathered in float64 and cast to the
dtype of the data, as improved DDPM does. ``schedule`` is a :class:`~ppl_diffusion.schedule.NoiseSchedule` (float64
numpy) or a :class:`~ppl_diffusion.gamma.GammaChain` (the same names as float64 tensors, differentiable in a
learned γ schedule's parameters).

Every function is elementwise over the batch and event dimensions: ``t`` picks one row of the schedule per
example, broadcast as ``[B x 1 x ... x 1]``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .schedule import NoiseSchedule

__all__ = ["discretized_gaussian_log_likelihood", "gaussian_log_likelihood", "log1mexp", "log_normal_cdf_diff",
           "normal_kl", "p_mean_from_eps", "predict_x0_from_eps", "q_mean_variance", "q_posterior_mean_variance",
           "q_sample", "q_step_mean_variance", "scaled_latent"]


def extract(arr: np.ndarray | Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``arr[t - 1]`` as a tensor broadcastable against ``like`` (shape ``[B, 1, ..., 1]``); ``arr`` a float64 array
    or tensor (a tensor keeps its gradient)."""
    out = torch.as_tensor(arr, device=t.device)[t - 1].to(like.dtype)
    return out.reshape(out.shape + (1,) * (like.dim() - out.dim()))


def q_mean_variance(schedule: NoiseSchedule, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    r"""Statement 1, the marginal of the forward chain: (mean, variance) of

    .. math::

        q(x_t \mid x_0) = \mathcal{N}\big(\sqrt{\bar\alpha_t}\, x_0, (1 - \bar\alpha_t) I\big).

    :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule` (or a γ chain).
    :param torch.Tensor x0: data ``[B x ...]``.
    :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.
    :returns: (mean, variance), each of the shape of ``x0``.
    :rtype: tuple[torch.Tensor, torch.Tensor]

    Example:

    >>> import torch
    >>> from ppl_diffusion import NoiseSchedule
    >>> s = NoiseSchedule.linear(T=10)
    >>> x0 = torch.ones(2, 3, dtype=torch.float64)
    >>> mean, var = q_mean_variance(s, x0, torch.tensor([1, 10]))
    >>> mean.shape, var.shape
    (torch.Size([2, 3]), torch.Size([2, 3]))
    >>> bool(torch.allclose(mean[1], torch.tensor(s.alphas_cumprod[9] ** 0.5, dtype=torch.float64)))
    True
    >>> bool(torch.allclose(var[0], torch.tensor(s.betas[0], dtype=torch.float64)))  # 1 − ᾱ_1 = β_1
    True
    """
    mean = extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
    var = extract(1.0 - schedule.alphas_cumprod, t, x0).expand_as(x0)
    return mean, var


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    r"""A draw from :math:`q(x_t \mid x_0)` given its noise ε (the reparameterisation of Statement 1):

    .. math::

        x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \varepsilon, \qquad \varepsilon \sim \mathcal{N}(0, I).

    :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule` (or a γ chain).
    :param torch.Tensor x0: data ``[B x ...]``.
    :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.
    :param torch.Tensor eps: standard normal noise of the shape of ``x0``.
    :returns: x_t, of the shape of ``x0``.

    Example:

    >>> import torch
    >>> from ppl_diffusion import NoiseSchedule
    >>> s = NoiseSchedule.linear(T=10)
    >>> _ = torch.manual_seed(0)
    >>> x0, eps, t = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([1, 3, 5, 10])
    >>> mean, var = q_mean_variance(s, x0, t)
    >>> bool(torch.allclose(q_sample(s, x0, t, eps), mean + var.sqrt() * eps))
    True
    """
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * eps
    )


def q_step_mean_variance(schedule: NoiseSchedule, x_prev: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    r"""One forward step: (mean, variance) of

    .. math::

        q(x_t \mid x_{t-1}) = \mathcal{N}\big(\sqrt{1 - \beta_t}\, x_{t-1}, \beta_t I\big).

    :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule` (or a γ chain).
    :param torch.Tensor x_prev: x_{t−1}, ``[B x ...]``.
    :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.
    :returns: (mean, variance), each of the shape of ``x_prev``.
    :rtype: tuple[torch.Tensor, torch.Tensor]

    Example: two steps compose to the marginal q(x_2|x_0) of :func:`q_mean_variance`.

    >>> import torch
    >>> from ppl_diffusion import NoiseSchedule
    >>> s = NoiseSchedule.linear(T=10)
    >>> x0, one, two = torch.ones(1, 2, dtype=torch.float64), torch.tensor([1]), torch.tensor([2])
    >>> m1, v1 = q_step_mean_variance(s, x0, one)
    >>> m2, v2 = q_step_mean_variance(s, m1, two)
    >>> m, v = q_mean_variance(s, x0, two)
    >>> bool(torch.allclose(m2, m)), bool(torch.allclose((1 - s.betas[1]) * v1 + v2, v))
    (True, True)
    """
    mean = extract(schedule.sqrt_alphas, t, x_prev) * x_prev
    var = extract(schedule.betas, t, x_prev).expand_as(x_prev)
    return mean, var


def q_posterior_mean_variance(
    schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The forward posterior q(x_{t−1} | x_t, x_0) = N(μ̃_t(x_t, x_0), β̃_t I), by Bayes' rule on the forward chain:

    .. math::

        \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\, \beta_t}{1 - \bar\alpha_t} x_0
            + \frac{\sqrt{\alpha_t}\, (1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t} x_t, \qquad
        \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t} \beta_t.

    Returns (mean, variance, clipped log-variance); the variance is 0 at t = 1, where
    x_{t−1} = x_0 is known, and the clipped log-variance uses β̃_2 there.

    :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule` (or a γ chain).
    :param torch.Tensor x0: data ``[B x ...]``.
    :param torch.Tensor x_t: latents of the shape of ``x0``.
    :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.
    :returns: (mean, variance, log-variance), each of the shape of ``x_t``.
    :rtype: tuple[torch.Tensor, torch.Tensor, torch.Tensor]

    Example: at t = 1 the posterior is the point x_0; at t = 2 its variance is β̃_2.

    >>> import torch
    >>> from ppl_diffusion import NoiseSchedule
    >>> s = NoiseSchedule.linear(T=10)
    >>> x0, x_t = torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    >>> mean, var, log_var = q_posterior_mean_variance(s, x0, x_t, torch.tensor([1, 2]))
    >>> mean.shape, float(mean[0, 0]), float(var[0, 0])
    (torch.Size([2, 3]), 0.0, 0.0)
    >>> bool(torch.isclose(var[1, 0], torch.tensor(s.posterior_variance[1], dtype=torch.float64)))
    True
    >>> bool(torch.allclose(log_var[0], log_var[1]))  # clipped: log β̃_2 at t = 1 too
    True
    """
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    var = extract(schedule.posterior_variance, t, x_t).expand_as(x_t)
    log_var = extract(schedule.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
    return mean, var, log_var


def predict_x0_from_eps(schedule: NoiseSchedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    r"""Statement 1 solved for x_0: the estimate of x_0 from x_t and a noise prediction ε̂,

    .. math::

        \hat x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\, \hat\varepsilon}{\sqrt{\bar\alpha_t}}.

    :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule` (or a γ chain).
    :param torch.Tensor x_t: latents ``[B x ...]``.
    :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.
    :param torch.Tensor eps: the noise prediction ε̂, of the shape of ``x_t``.
    :returns: x̂_0, of the shape of ``x_t``.

    Example: with the true noise it inverts :func:`q_sample`.

    >>> import torch
    >>> from ppl_diffusion import NoiseSchedule
    >>> s = NoiseSchedule.linear(T=10)
    >>> _ = torch.manual_seed(0)
    >>> x0, eps, t = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64), torch.tensor([2, 5, 9])
    >>> bool(torch.allclose(predict_x0_from_eps(s, q_sample(s, x0, t, eps), t, eps), x0))
    True
    """
    return (x_t - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / extract(
        schedule.sqrt_alphas_cumprod, t, x_t
    )


def p_mean_from_eps(schedule: NoiseSchedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    r"""DDPM's reverse mean, the mean of p(x_{t−1} | x_t, θ) for a noise prediction ε̂ = ε̂_θ(x_t, t):

    .. math::

        \mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}} \Big(x_t - \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}\, \hat\varepsilon\Big).

    It equals μ̃_t(x_t, x̂_0) with x̂_0 from :func:`predict_x0_from_eps`.

    :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule` (or a γ chain).
    :param torch.Tensor x_t: latents ``[B x ...]``.
    :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.
    :param torch.Tensor eps: the noise prediction ε̂, of the shape of ``x_t``.
    :returns: μ_θ, of the shape of ``x_t``.

    Example: the identity with the posterior mean at the predicted x̂_0.

    >>> import torch
    >>> from ppl_diffusion import NoiseSchedule
    >>> s = NoiseSchedule.cosine(T=10)
    >>> _ = torch.manual_seed(0)
    >>> x_t, eps, t = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64), torch.tensor([1, 4, 10])
    >>> x0_hat = predict_x0_from_eps(s, x_t, t, eps)
    >>> bool(torch.allclose(p_mean_from_eps(s, x_t, t, eps), q_posterior_mean_variance(s, x0_hat, x_t, t)[0]))
    True
    """
    coef = extract(schedule.betas / schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
    return (x_t - coef * eps) / extract(schedule.sqrt_alphas, t, x_t)


def scaled_latent(schedule: NoiseSchedule, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    r"""(x_t/√ᾱ_t, log((1 − ᾱ_t)/ᾱ_t)): the latent on the data's scale, x_t/α_t = x_0 + (σ_t/α_t) ε, and the log of
    its noise variance σ_t²/α_t² (γ_t of a γ chain, read exactly; log-SNR⁻¹ of a NoiseSchedule), the second
    broadcast to ``x_t``'s shape. VDM's categorical decoder reads them at t = 1.

    .. math::

        \frac{x_t}{\sqrt{\bar\alpha_t}} \sim \mathcal{N}\Big(x_0, \frac{1 - \bar\alpha_t}{\bar\alpha_t} I\Big)
        \quad \text{under } q(x_t \mid x_0).

    :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule` or a :class:`~ppl_diffusion.gamma.GammaChain`.
    :param torch.Tensor x_t: latents ``[B x ...]``.
    :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.
    :returns: (scaled latent, log variance), each of the shape of ``x_t``.
    :rtype: tuple[torch.Tensor, torch.Tensor]

    Example:

    >>> import math, torch
    >>> from ppl_diffusion import NoiseSchedule
    >>> s = NoiseSchedule([0.2, 0.5])
    >>> loc, log_var = scaled_latent(s, torch.full((1, 2), 0.8, dtype=torch.float64), torch.tensor([1]))
    >>> round(float(loc[0, 0]), 4), round(float(log_var[0, 1]), 4) == round(math.log(0.2 / 0.8), 4)
    (0.8944, True)
    """
    gamma = schedule.gamma if hasattr(schedule, "gamma") else np.log1p(-schedule.alphas_cumprod) - np.log(
        schedule.alphas_cumprod)
    return x_t / extract(schedule.sqrt_alphas_cumprod, t, x_t), extract(gamma, t, x_t).expand_as(x_t)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    r"""KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise (diagonal Gaussians), in nats:

    .. math::

        \mathrm{KL} = \tfrac12 \big(\log\sigma_2^2 - \log\sigma_1^2 + \sigma_1^2/\sigma_2^2
            + (\mu_1 - \mu_2)^2/\sigma_2^2 - 1\big).

    Sum over the event dimensions for the KL of the diagonal Gaussian. The arguments broadcast.

    :param torch.Tensor mean1: μ_1.
    :param torch.Tensor logvar1: log σ_1².
    :param torch.Tensor mean2: μ_2.
    :param torch.Tensor logvar2: log σ_2².

    Example: it agrees with torch's ``kl_divergence``.

    >>> import torch
    >>> from torch.distributions import Normal, kl_divergence
    >>> m1, lv1, m2, lv2 = torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(-0.5), torch.tensor(0.4)
    >>> kl = normal_kl(m1, lv1, m2, lv2)
    >>> round(float(kl), 4)
    0.5378
    >>> bool(torch.isclose(kl, kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))))
    True
    """
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    r"""log N(x | mean, e^{2 log_scale}) elementwise, in nats: the continuous decoder's density.

    .. math::

        \log \mathcal{N}(x \mid \mu, \sigma^2) = -\tfrac12 \Big(\frac{x - \mu}{\sigma}\Big)^2 - \log\sigma
            - \tfrac12 \log 2\pi.

    :param torch.Tensor x: the values.
    :param torch.Tensor mean: μ, broadcast against ``x``.
    :param torch.Tensor log_scale: log σ, broadcast against ``x``.

    Example:

    >>> import torch
    >>> x, mean, log_scale = torch.tensor([0.0, 1.0]), torch.tensor(0.5), torch.tensor(-0.3)
    >>> lp = gaussian_log_likelihood(x, mean, log_scale)
    >>> bool(torch.allclose(lp, torch.distributions.Normal(mean, log_scale.exp()).log_prob(x)))
    True
    """
    z = (x - mean) * torch.exp(-log_scale)
    return -0.5 * z**2 - log_scale - 0.5 * math.log(2 * math.pi)


def log1mexp(x: Tensor) -> Tensor:
    r""":math:`\log(1 - e^x)` for x <= 0, accurate for x near 0 and for x very negative (Mächler 2012).

    Computed as ``log(-expm1(x))`` for x > −log 2 and ``log1p(-exp(x))`` below.

    :param torch.Tensor x: values <= 0.

    Example: the naive formula loses every digit near 0 in float32; this one does not.

    >>> import torch
    >>> x = torch.tensor([-1e-8, -1.0, -50.0])
    >>> [round(float(v), 4) for v in log1mexp(x)]
    [-18.4207, -0.4587, -0.0]
    >>> float(torch.log(1 - torch.exp(x[0])))
    -inf
    """
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_normal_cdf_diff(a: Tensor, b: Tensor) -> Tensor:
    r""":math:`\log(\Phi(b) - \Phi(a))` for finite a < b, stable in both tails (Φ the standard normal CDF).

    By symmetry Φ(b) − Φ(a) = Φ(−a) − Φ(−b), so the interval is moved to the lower half-line, where
    log Φ is accurate, and log(Φ(b) − Φ(a)) = log Φ(b) + log(1 − e^{log Φ(a) − log Φ(b)}).

    :param torch.Tensor a: lower ends.
    :param torch.Tensor b: upper ends, broadcast against ``a``.

    Example: in the bulk it is the plain difference; far in the tail it stays finite.

    >>> import torch
    >>> a, b = torch.tensor([-1.0, 40.0], dtype=torch.float64), torch.tensor([1.0, 41.0], dtype=torch.float64)
    >>> out = log_normal_cdf_diff(a, b)
    >>> round(float(out[0].exp()), 4)  # P(−1 < Z < 1)
    0.6827
    >>> round(float(out[1]), 2)  # Φ(41) − Φ(40) underflows to 0 in float64, its log does not
    -804.61
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
    r"""log P(bin of x) for N(mean, e^{2 log_scale}) discretized over ``bins`` bins on [−1, 1].

    Bin centres are c_k = −1 + 2k/(K − 1), k = 0..K−1, with edges c_k ± 1/(K − 1); the first bin
    extends to −∞ and the last to +∞, so the K probabilities sum to 1. Every probability is a
    log-CDF difference (:func:`log_normal_cdf_diff`), exact in the tails where improved DDPM's tanh
    approximation of Φ underflows. ``x`` must lie on the bin centres (8-bit pixels mapped to [−1, 1]).

    .. math::

        P(c_k) = \Phi\Big(\frac{c_k + \delta - \mu}{\sigma}\Big) - \Phi\Big(\frac{c_k - \delta - \mu}{\sigma}\Big),
        \quad \delta = \frac{1}{K - 1}, \quad c_0 - \delta := -\infty, \; c_{K-1} + \delta := +\infty.

    :param torch.Tensor x: values on the bin centres.
    :param torch.Tensor mean: μ, broadcast against ``x``.
    :param torch.Tensor log_scale: log σ, broadcast against ``x``.
    :param int bins: K, the number of bins (256 for 8-bit data), >= 2.

    Example: the probabilities of the K centres sum to 1.

    >>> import torch
    >>> centres = torch.linspace(-1, 1, 4, dtype=torch.float64)  # K = 4 bins
    >>> lp = discretized_gaussian_log_likelihood(centres, torch.tensor(0.2), torch.tensor(-0.5), bins=4)
    >>> lp.shape, round(float(lp.exp().sum()), 6)
    (torch.Size([4]), 1.0)
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
