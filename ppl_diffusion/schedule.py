"""Noise schedules of the forward chain, in float64 numpy, shared by every backend.

Time runs t = 1..T as in the lecture; arrays are 0-indexed, so β_t is ``betas[t - 1]``.
Every derived array below has length T and follows DDPM (Ho et al. 2020) and improved DDPM
(Nichol & Dhariwal 2021):

* ``alphas``               α_t = 1 − β_t   (``sqrt_alphas`` √α_t, ``log_betas`` log β_t)
* ``alphas_cumprod``       ᾱ_t = ∏_{s ≤ t} α_s                      (Statement 1: q(x_t|x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I))
* ``alphas_cumprod_prev``  ᾱ_{t−1}, with ᾱ_0 = 1
* ``posterior_variance``   β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)     (variance of q(x_{t−1}|x_t, x_0); β̃_1 = 0)
* ``posterior_log_variance_clipped``  log β̃_t with β̃_1 replaced by β̃_2 (β̃_1 = 0 has no log)
* ``posterior_mean_coef1`` √ᾱ_{t−1} β_t / (1 − ᾱ_t)                  (coefficient of x_0 in μ̃_t)
* ``posterior_mean_coef2`` √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)            (coefficient of x_t in μ̃_t)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["NoiseSchedule"]


class NoiseSchedule:
    r"""The variances β_1..β_T of the forward chain and every coefficient derived from them, in float64.

    The forward chain is

    .. math::

        q(x_t \mid x_{t-1}) = \mathcal{N}\big(\sqrt{1-\beta_t}\, x_{t-1}, \beta_t I\big), \qquad
        q(x_t \mid x_0) = \mathcal{N}\big(\sqrt{\bar\alpha_t}\, x_0, (1-\bar\alpha_t) I\big),
        \quad \bar\alpha_t = \prod_{s \le t} (1 - \beta_s).

    The derived arrays (``alphas``, ``alphas_cumprod``, ``alphas_cumprod_prev``, ``posterior_variance``,
    ``posterior_log_variance_clipped``, ``posterior_mean_coef1``, ``posterior_mean_coef2``, ...) are attributes of
    shape ``[T]``, listed in :mod:`ppl_diffusion.schedule`; step t is index ``t - 1``. Build one with
    :meth:`linear` or :meth:`cosine`, or from your own β.

    :param betas: array-like of length T >= 1, every β_t finite and in (0, 1).
    :raises ValueError: naming the first bad index and value.

    Example:

    >>> from ppl_diffusion import NoiseSchedule
    >>> s = NoiseSchedule([0.1, 0.2, 0.5])
    >>> s.T, s.alphas_cumprod.shape
    (3, (3,))
    >>> [round(float(a), 4) for a in s.alphas_cumprod]  # 0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.5
    [0.9, 0.72, 0.36]
    >>> round(float(s.posterior_variance[1]), 4)  # β̃_2 = β_2 (1 − ᾱ_1) / (1 − ᾱ_2)
    0.0714
    """

    def __init__(self, betas) -> None:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.shape[0] < 1:
            raise ValueError(
                f"betas must be a 1-D array with T >= 1 entries, got shape {betas.shape}; "
                "pass one β_t per step t = 1..T"
            )
        bad = ~(np.isfinite(betas) & (betas > 0) & (betas < 1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"beta schedule has β_{i + 1} = {float(betas[i])!r} (betas[{i}]); every β_t must be finite "
                "and lie in (0, 1)"
            )
        self.betas = betas
        self.alphas = 1.0 - betas
        self.sqrt_alphas = np.sqrt(self.alphas)
        self.log_betas = np.log(betas)
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃_1 = 0: its log is replaced by log β̃_2 (improved DDPM); with T = 1 there is no β̃_2, use β_1.
        first = self.posterior_variance[1] if self.T > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)
        )

    @property
    def T(self) -> int:
        """Number of diffusion steps T (the length of every array).

        >>> NoiseSchedule.linear(T=20).T
        20
        """
        return int(self.betas.shape[0])

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float | None = None, beta_end: float | None = None):
        r"""DDPM's linear schedule: β_t evenly spaced from ``beta_start`` to ``beta_end``.

        .. math::

            \beta_t = \beta_{\mathrm{start}} + \frac{t - 1}{T - 1} (\beta_{\mathrm{end}} - \beta_{\mathrm{start}}),
            \qquad t = 1..T.

        Defaults are DDPM's β_1 = 1e-4 and β_T = 0.02 at T = 1000, scaled by 1000 / T for other T
        (improved DDPM), so that ᾱ_T stays near zero whatever T; the scaled β_T is capped at 0.999
        (it reaches 1 for T <= 20). Explicit values are used as given.

        :param int T: the number of steps, >= 1.
        :param float beta_start: β_1 (default 1e-4 · 1000/T).
        :param float beta_end: β_T (default min(0.02 · 1000/T, 0.999)).
        :rtype: ~ppl_diffusion.schedule.NoiseSchedule

        Example:

        >>> s = NoiseSchedule.linear(T=20)
        >>> round(float(s.betas[0]), 4), round(float(s.betas[-1]), 4)  # 1e-4 · 50 and 0.02 · 50 capped
        (0.005, 0.999)
        >>> float(s.alphas_cumprod[-1]) < 1e-4
        True
        >>> NoiseSchedule.linear(T=10, beta_start=0.1, beta_end=0.1).betas.tolist() == [0.1] * 10
        True
        """
        T = _check_T(T)
        scale = 1000.0 / T
        beta_start = 1e-4 * scale if beta_start is None else beta_start
        beta_end = min(0.02 * scale, 0.999) if beta_end is None else beta_end
        return cls(np.linspace(beta_start, beta_end, T, dtype=np.float64))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        r"""Improved DDPM's cosine schedule, defined through ᾱ:

        .. math::

            \bar\alpha(t) = \frac{f(t)}{f(0)}, \quad f(t) = \cos^2\Big(\frac{t/T + s}{1 + s} \cdot \frac{\pi}{2}\Big),
            \qquad \beta_t = \min\Big(1 - \frac{\bar\alpha(t)}{\bar\alpha(t-1)}, \beta_{\max}\Big).

        β_t is clipped at ``max_beta`` (0.999) to avoid the singularity at t = T; elsewhere ``alphas_cumprod``
        equals ᾱ(t) exactly.

        :param int T: the number of steps, >= 1.
        :param float s: the small offset that keeps β_1 away from 0 (improved DDPM's 0.008).
        :param float max_beta: the cap on every β_t.
        :rtype: ~ppl_diffusion.schedule.NoiseSchedule

        Example:

        >>> import math
        >>> s = NoiseSchedule.cosine(T=10)
        >>> f = lambda t: math.cos((t / 10 + 0.008) / 1.008 * math.pi / 2) ** 2
        >>> round(float(s.alphas_cumprod[4]), 6) == round(f(5) / f(0), 6)  # ᾱ_5 is the closed form
        True
        >>> round(float(s.betas[-1]), 4)  # the last β, clipped
        0.999
        """
        T = _check_T(T)

        def f(t):
            return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1.0 - f(t) / f(t - 1), max_beta) for t in range(1, T + 1)]
        return cls(betas)

    def __repr__(self) -> str:
        return f"NoiseSchedule(T={self.T}, beta_1={self.betas[0]:.3g}, beta_T={self.betas[-1]:.3g})"


def _check_T(T) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T = {T!r} is not a number of steps; pass an integer T >= 1")
    return int(T)
