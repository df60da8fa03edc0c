"""Distributions the model's sites use: the decoders p(x_0 | x_1), and the forward-step Normal.

A decoder is a small object turning the reverse mean and log-variance at t = 1 into a Pyro
distribution over x_0 with batch shape ``[B x ...]`` (the model reinterprets the data dimensions as
its event). Decoders are chosen by name in :func:`make_decoder`.
"""

from __future__ import annotations

import torch
from pyro.distributions import Normal, TorchDistribution, constraints
from torch.distributions import kl as torch_kl
from torch import Tensor

from .closed_forms import discretized_gaussian_log_likelihood


class DiscretizedGaussian(TorchDistribution):
    """N(loc, scale²) discretized over ``bins`` equal bins on [−1, 1], edge bins extended to ±∞.

    Values are the bin centres −1 + 2k/(bins − 1). ``log_prob`` is exact in the tails
    (:func:`~ppl_diffusion.closed_forms.discretized_gaussian_log_likelihood`); ``sample`` draws from
    the Normal and rounds to the nearest centre, which is a draw from this distribution.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real  # the bin centres; checked in log_prob when validation is on
    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor, bins: int = 256, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(torch.as_tensor(loc), torch.as_tensor(scale))
        self.bins = int(bins)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return DiscretizedGaussian(self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.bins)

    def _grid(self, x: Tensor) -> Tensor:
        k = torch.round((x.clamp(-1.0, 1.0) + 1.0) * (self.bins - 1) / 2.0)
        return k * (2.0 / (self.bins - 1)) - 1.0

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            x = self.loc.expand(shape) + self.scale.expand(shape) * torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
            return self._grid(x)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            off = (value - self._grid(value)).abs() > 1e-4 / self.bins
            if off.any():
                bad = value[off].flatten()[0].item()
                raise ValueError(
                    f"value {bad!r} is not a bin centre of a {self.bins}-bin discretized decoder; "
                    "map 8-bit pixels v to 2 v / 255 − 1"
                )
        return discretized_gaussian_log_likelihood(value, self.loc, torch.log(self.scale), self.bins)

    @property
    def mean(self):
        return self.loc


class GaussianDecoder:
    """p(x_0 | x_1) = N(μ_θ(x_1, 1), σ_1² I): a density, for continuous data."""

    name = "gaussian"

    def __call__(self, mean: Tensor, log_variance: Tensor):
        return Normal(mean, torch.exp(0.5 * log_variance))

    def __repr__(self) -> str:
        return "GaussianDecoder()"


class DiscretizedGaussianDecoder:
    """p(x_0 | x_1) = N(μ_θ(x_1, 1), σ_1² I) discretized over ``bins`` bins on [−1, 1] (DDPM §3.3).

    The probability of each pixel value, so −log p(x_0) gives bits/dim of 8-bit data directly.
    """

    name = "discretized"

    def __init__(self, bins: int = 256) -> None:
        if not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins = {bins!r}; pass an integer number of bins >= 2 (256 for 8-bit data)")
        self.bins = bins

    def __call__(self, mean: Tensor, log_variance: Tensor):
        return DiscretizedGaussian(mean, torch.exp(0.5 * log_variance), self.bins)

    def __repr__(self) -> str:
        return f"DiscretizedGaussianDecoder(bins={self.bins})"


DECODERS = {"gaussian": GaussianDecoder, "discretized": DiscretizedGaussianDecoder}


def make_decoder(decoder) -> GaussianDecoder | DiscretizedGaussianDecoder:
    """A decoder from its name (``"gaussian"``, ``"discretized"``) or a decoder object itself."""
    if isinstance(decoder, str):
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODERS)}")
        return DECODERS[decoder]()
    if not callable(decoder):
        raise TypeError(f"decoder {decoder!r} is neither a name in {sorted(DECODERS)} nor a callable")
    return decoder


class ForwardStepNormal(Normal):
    """The forward step q(x_t | x_{t−1}) of :meth:`GaussianDiffusion.guide`: a plain Normal.

    Its own type exists for one reason: ``TraceMeanField_ELBO`` on (model, guide) would compute
    KL(q(x_t|x_{t−1}) || p(x_t|x_{t+1})) per site, which is not a term of the ELBO (the guide visits the
    sites in the opposite order of the model). The KL against anything is registered to raise.
    """


def _forward_order_kl(p, q):
    raise ValueError(
        "TraceMeanField_ELBO (or any analytic-KL ELBO) was given the forward-order guide "
        "GaussianDiffusion.guide, whose sites q(x_t|x_{t-1}) do not match the model's "
        "p(x_{t-1}|x_t): the per-site KL would not be a term of the ELBO. Use "
        "guide=diffusion.posterior_guide with TraceMeanField_ELBO, or Trace_ELBO with the forward guide."
    )


torch_kl.register_kl(ForwardStepNormal, torch.distributions.Distribution)(_forward_order_kl)
torch_kl.register_kl(ForwardStepNormal, torch.distributions.Normal)(_forward_order_kl)
