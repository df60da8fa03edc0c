"""Reverse variances fitted in closed form: the σ_t² that maximise the ELBO for a trained mean.

For p(x_{t−1}|x_t, θ) = N(μ_θ(x_t, t), σ_t² I) the term of the bound at step t ≥ 2 is, per dimension,

    L_{t−1} / D = E KL(N(μ̃_t, β̃_t) || N(μ_θ, σ_t²)) = ½ [log(σ_t²/β̃_t) + (β̃_t + m_t)/σ_t² − 1],

with m_t = E (μ̃_t(x_t, x_0) − μ_θ(x_t, t))² / D the mean-squared error of the reverse mean over
x_0 ~ data and x_t ~ q(x_t|x_0). It is minimised by

    σ_t*² = β̃_t + m_t,

the optimal isotropic variance for an imperfect mean (Bao et al. 2022, "Analytic-DPM" and its
follow-up "Estimating the Optimal Covariance with Imperfect Mean in Diffusion Probabilistic Models").
For a perfect mean σ_t*² = β̃_t; DDPM's fixed choices β_t and β̃_t are the two ends it interpolates.
The decoder p(x_0|x_1) has no closed form for the discretized likelihood, so its log-variance is the
minimiser of the decoder's negative log-likelihood, found by a grid and golden-section search. VDM's categorical
decoder (``"vdm-categorical"``) has no variance of its own to fit (it reads σ_1²/α_1²): σ_1² stays β_1 there.

:func:`fit_variance` estimates m_t and the decoder variance on training data (any number of examples,
one draw of x_t per example and step); ``GaussianDiffusion(..., variance=fitted.log_variance)`` or
:meth:`~ppl_diffusion.diffusion.GaussianDiffusion.with_variance` then gives a model whose bound on
*held-out* data is evaluated exactly as for a fixed variance. The σ_t² are parameters of p fitted on the
training split only, so the test bound stays a bound.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import closed_forms as cf
from .distributions import uses_denoiser

__all__ = ["FittedVariance", "fit_variance"]


def auto_timesteps_per_batch(batch: int, target: int = 512) -> int:
    """Steps per denoiser call so that a call sees about ``target`` inputs: large enough to keep a CPU busy,
    small enough that activations stay under glibc's mmap threshold (bigger calls measured 1.8× slower). Shared by
    :func:`fit_variance` and the bound's evaluation (:mod:`ppl_diffusion.infer.bound`, above this module)."""
    return max(1, target // max(1, batch))


@dataclass
class FittedVariance:
    r"""The result of :func:`fit_variance`: what σ_t² is made of, for this schedule or a respaced one.

    With e_t = E (x_0 − x̂_0(x_t, t))² / D the denoiser's mean-squared error in x_0 (per dimension), the
    reverse mean's error is m_t = c_t² e_t with c_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) the posterior mean's
    coefficient of x_0, so σ_t² = β̃_t + c_t² e_t for t ≥ 2. Holding e_t rather than σ_t² lets a
    respaced chain (:func:`~ppl_diffusion.respace.respace`) get its own optimal variances (Analytic-DPM §4).

    .. math::

        \sigma_t^2 = \tilde\beta_t + c_t^2 e_t, \quad c_t = \frac{\sqrt{\bar\alpha_{t-1}}\, \beta_t}{1 - \bar\alpha_t},
        \quad e_t = \frac{1}{D} \mathbb{E} \lVert x_0 - \hat x_0(x_t, t) \rVert^2 \qquad (t \ge 2).

    Pass it as ``GaussianDiffusion(variance=...)`` or to :meth:`~ppl_diffusion.diffusion.GaussianDiffusion.with_variance`.

    Example: σ_t² lies above β̃_t by the mean's error; the fit survives a round trip through JSON.

    >>> from ppl_diffusion import NoiseSchedule
    >>> s = NoiseSchedule.linear(T=4)
    >>> fitted = FittedVariance(x0_mse=np.full(4, 0.1), decoder_log_variance=-5.0, num_examples=8, seconds=0.0)
    >>> log_var = fitted.log_variance(s)
    >>> float(log_var[0]), bool((log_var[1:] > np.log(s.posterior_variance[1:])).all())
    (-5.0, True)
    >>> FittedVariance.from_dict(fitted.to_dict()).log_variance(s).tolist() == log_var.tolist()
    True
    """

    x0_mse: np.ndarray  #: e_t, t = 1..T, float64 ``[T]``
    decoder_log_variance: float  #: log σ_1², the decoder's, fitted by grid search
    num_examples: int  #: training examples used
    seconds: float  #: wall time of the fit

    def log_variance(self, schedule) -> np.ndarray:
        """log σ_t², t = 1..T, float64 ``[T]``, for ``schedule`` (the one fitted, or the respaced one of :meth:`respaced`).

        :param schedule: a :class:`~ppl_diffusion.schedule.NoiseSchedule` of the fit's T steps, or a γ model's
            :class:`~ppl_diffusion.gamma.GammaChain` (read at its current γ, as constants).
        :raises ValueError: when the schedule has another T.
        """
        if len(self.x0_mse) != schedule.T:
            raise ValueError(f"fitted variance covers {len(self.x0_mse)} steps but the schedule has T = {schedule.T}; "
                             "fit it for this schedule (fit_variance) or respace it with respace()")
        post_var, coef1 = (np.asarray(torch.as_tensor(v).detach().cpu(), dtype=np.float64)
                           for v in (schedule.posterior_variance, schedule.posterior_mean_coef1))
        out = np.empty(schedule.T)
        out[0] = self.decoder_log_variance
        out[1:] = np.log(post_var[1:] + coef1[1:] ** 2 * self.x0_mse[1:])
        return out

    def respaced(self, timesteps) -> "FittedVariance":
        """The fit for the chain that keeps only the original steps ``timesteps`` (s_1 < … < s_K).

        e_t is a property of the denoiser at step t, so the kept steps keep theirs. The decoder keeps its
        fitted variance when s_1 = 1; otherwise its x̂_0 is the denoiser's at s_1, with variance e_{s_1}.

        :param timesteps: the kept steps s_1 < … < s_K in 1..T.
        :rtype: ~ppl_diffusion.variance.FittedVariance

        >>> fitted = FittedVariance(x0_mse=np.array([0.1, 0.2, 0.3]), decoder_log_variance=-5.0, num_examples=8,
        ...                         seconds=0.0)
        >>> fitted.respaced([1, 3]).x0_mse.tolist(), fitted.respaced([2, 3]).decoder_log_variance == math.log(0.2)
        ([0.1, 0.3], True)
        """
        steps = np.asarray(timesteps, dtype=np.int64)
        decoder = self.decoder_log_variance if steps[0] == 1 else math.log(self.x0_mse[steps[0] - 1])
        return FittedVariance(x0_mse=self.x0_mse[steps - 1], decoder_log_variance=decoder,
                              num_examples=self.num_examples, seconds=self.seconds)

    def to_dict(self) -> dict:
        """The fit as JSON-ready numbers (what checkpoints store); :meth:`from_dict` reads it back."""
        return {"x0_mse": self.x0_mse.tolist(), "decoder_log_variance": self.decoder_log_variance,
                "num_examples": self.num_examples, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> "FittedVariance":
        """The fit stored by :meth:`to_dict`.

        :param dict d: the stored fit.
        """
        return cls(x0_mse=np.asarray(d["x0_mse"], dtype=np.float64),
                   decoder_log_variance=float(d["decoder_log_variance"]),
                   num_examples=int(d["num_examples"]), seconds=float(d["seconds"]))


def _decoder_log_variance(diffusion, x0: Tensor, mean: Tensor, lo: float, hi: float, points: int) -> float:
    """argmin over log σ² in [lo, hi] of the decoder's −log p(x_0|x_1) summed over the examples: the best of
    ``points`` grid points, refined by golden-section search between its neighbours (to 1e-6)."""
    x0, mean = x0.double(), mean.double()

    def nll(log_var: float) -> float:
        return -diffusion.decoder(mean, torch.full_like(mean, log_var)).log_prob(x0).sum().item()

    grid = np.linspace(lo, hi, points)
    values = [nll(v) for v in grid]
    best = int(np.argmin(values))
    if best in (0, points - 1):
        raise ValueError(f"the decoder's fitted variance {math.exp(grid[best]):.3g} lies at the edge of the search "
                         f"range [{math.exp(lo):.3g}, {math.exp(hi):.3g}]; its likelihood is unbounded for these data")
    a, b = grid[best - 1], grid[best + 1]
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > 1e-6:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return (a + b) / 2


@torch.no_grad()
def fit_variance(diffusion, x0: Tensor, *, batch_size: int = 256, timesteps_per_batch: int | None = None,
                 timesteps=None, seed: int = 0, progress: bool = False) -> FittedVariance:
    """Fit σ_t², t = 1..T, of ``diffusion`` on the training examples ``x0`` ``[N x ...]`` (see the module).

    :param int batch_size: examples per call of the denoiser (times ``timesteps_per_batch``).
    :param int timesteps_per_batch: steps t per denoiser call (the batch is tiled); default: about 512 inputs.
    :param timesteps: fit e_t at these steps only (they must include 1, the decoder's); e_t is NaN at the
        others, so the model is only usable at the fitted steps (for estimates from a subset of terms).
    :param int seed: seeds the draws x_t ~ q(x_t|x_0) (a private generator; global RNGs untouched).
    :returns: :class:`~ppl_diffusion.variance.FittedVariance`; raises ``ValueError`` if the decoder's optimum lies outside
        σ² ∈ [10⁻¹², 1] (its likelihood then grows without bound, e.g. data a denoiser reproduces exactly).

    :param diffusion: the trained :class:`~ppl_diffusion.diffusion.GaussianDiffusion` of T steps (a NoiseSchedule's,
        or a γ schedule's chain, fitted at its current γ).
    :param torch.Tensor x0: training examples ``[N x *event_shape]``.
    :param bool progress: show a progress bar.

    Example: fit the variances of a (here untrained) model and use them.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
    ...                               event_shape=(2,))
    >>> fitted = fit_variance(diffusion, torch.randn(16, 2), seed=0)
    >>> fitted.x0_mse.shape, fitted.num_examples
    ((10,), 16)
    >>> _, log_var = diffusion.with_variance(fitted).p_mean_variance(torch.zeros(1, 2), torch.tensor([5]))
    >>> round(log_var[0, 0].item(), 4) == round(float(fitted.log_variance(diffusion.schedule)[4]), 4)
    True
    """
    started = time.monotonic()
    x0 = diffusion.check_data(x0)
    if x0.shape[0] < 1:
        raise ValueError("fit_variance needs at least one training example")
    device = next(diffusion.denoiser.parameters()).device
    s, T = diffusion.coefficients(), diffusion.T  # a NoiseSchedule, or a γ model's chain (its γ now)
    if timesteps_per_batch is None:
        timesteps_per_batch = auto_timesteps_per_batch(min(batch_size, x0.shape[0]))
    c = max(1, min(int(timesteps_per_batch), T))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    sq_err = np.zeros(T)  # Σ over examples and dims of (x_0 − x̂_0(x_t, t))²
    decoder_means = []
    steps = list(range(1, T + 1)) if timesteps is None else sorted({int(t) for t in timesteps})
    if not steps or steps[0] != 1 or steps[-1] > T:
        raise ValueError(f"timesteps must be steps in 1..T = 1..{T} including 1 (the decoder's), got {timesteps!r}")
    blocks = [steps[i:i + c] for i in range(0, len(steps), c)]
    if progress:
        from tqdm.auto import tqdm

        blocks = tqdm(blocks, desc="fit variance", unit="step", total=len(blocks), unit_scale=c)
    was_training = diffusion.training
    diffusion.eval()
    try:
        for block in blocks:
            ts = torch.tensor(block)
            for chunk in x0.split(batch_size):
                chunk = chunk.to(device)
                t = ts.repeat_interleave(chunk.shape[0]).to(device)
                xc = chunk.repeat((len(ts),) + (1,) * (chunk.dim() - 1))
                eps = torch.randn(xc.shape, generator=generator, dtype=xc.dtype).to(device)
                x_t = cf.q_sample(s, xc, t, eps)
                x0_hat = diffusion.predict_x0(x_t, t)
                err = (xc - x0_hat).double().pow(2).flatten(1).sum(1).reshape(len(ts), -1).sum(1)
                for i, ti in enumerate(ts.tolist()):
                    sq_err[ti - 1] += err[i].item()
                if block[0] == 1:
                    decoder_means.append(x0_hat[: chunk.shape[0]].cpu())  # μ_θ(x_1, 1) = x̂_0(x_1, 1)
    finally:
        diffusion.train(was_training)
    x0_mse = sq_err / (x0.shape[0] * diffusion.num_dims)
    x0_mse[np.setdiff1d(np.arange(T), np.asarray(steps) - 1)] = np.nan
    if uses_denoiser(diffusion.decoder):
        decoder_log_variance = _decoder_log_variance(diffusion, x0.cpu(), torch.cat(decoder_means),
                                                     math.log(1e-12), 0.0, 57)
    else:  # VDM's categorical decoder reads x_1/α_1 and σ_1²/α_1², no variance: σ_1² stays β_1, unused
        decoder_log_variance = math.log(float(s.betas[0]))
    return FittedVariance(x0_mse=x0_mse, decoder_log_variance=decoder_log_variance, num_examples=int(x0.shape[0]),
                          seconds=round(time.monotonic() - started, 2))
