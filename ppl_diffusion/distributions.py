"""Distributions the model's sites use: the decoders p(x_0 | x_1), and the forward-step Normal.

A decoder is a small object turning two tensors ``[B x ...]`` into a Pyro distribution over x_0 with batch shape
``[B x ...]`` (the model reinterprets the data dimensions as its event). Decoders are chosen by name in
:func:`make_decoder`:

=====================  =================================================================================
``"gaussian"``         N(μ_θ(x_1, 1), σ_1²): a density, for continuous data
``"discretized"``      the same Gaussian, its mass on each of 256 bins of [−1, 1] (DDPM §3.3), exact in the
                       tails: 8-bit data
``"vdm-categorical"``  VDM's factorised categorical over the 256 values: p(x_0 = c_k|x_1) ∝
                       N(c_k; x_1/α_1, σ_1²/α_1²), no network call: 8-bit data
=====================  =================================================================================

The first two read the reverse step's mean and log-variance at t = 1 (one call of the denoiser); a decoder with
``uses_denoiser = False`` reads the latent rescaled to the data's scale, x_1/α_1, and log(σ_1²/α_1²) (= γ_0 of a γ
schedule) instead (:func:`~ppl_diffusion.closed_forms.scaled_latent`), and the model skips the denoiser.
"""

from __future__ import annotations

import numpy as np
import torch
from pyro.distributions import Normal, TorchDistribution, constraints
from torch.distributions import kl as torch_kl
from torch import Tensor

from .closed_forms import discretized_gaussian_log_likelihood

__all__ = ["DECODERS", "IMAGE_DECODERS", "DiscretizedGaussian", "DiscretizedGaussianDecoder", "GaussianDecoder",
           "VDMCategorical", "VDMCategoricalDecoder", "bin_centres", "make_decoder"]


class _OnBins(TorchDistribution):
    """A distribution over the ``bins`` centres of [−1, 1], elementwise, from a location and a scale (the decoders'
    shared constructor and ``expand``)."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real  # the bin centres; checked in log_prob when validation is on
    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor, bins: int = 256, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(torch.as_tensor(loc), torch.as_tensor(scale))
        self.bins = int(bins)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return type(self)(self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.bins)


def check_bins(bins) -> int:
    """``bins`` (the number of values of a decoder on [−1, 1]), an integer >= 2; a one-line ``ValueError``."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins = {bins!r}; pass an integer number of values >= 2 (256 for 8-bit data)")
    return bins


class DiscretizedGaussian(_OnBins):
    r"""N(loc, scale²) discretized over ``bins`` equal bins on [−1, 1], edge bins extended to ±∞.

    Values are the bin centres c_k = −1 + 2k/(bins − 1), with probabilities

    .. math::

        P(c_k) = \Phi\Big(\frac{c_k + \delta - \mu}{\sigma}\Big) - \Phi\Big(\frac{c_k - \delta - \mu}{\sigma}\Big),
        \qquad \delta = \frac{1}{\mathrm{bins} - 1},

    the first bin's lower edge at −∞ and the last bin's upper edge at +∞. ``log_prob`` is exact in the tails
    (:func:`~ppl_diffusion.closed_forms.discretized_gaussian_log_likelihood`); ``sample`` draws from
    the Normal and rounds to the nearest centre, which is a draw from this distribution. Elementwise: batch shape
    the broadcast shape of ``loc`` and ``scale``, event shape ().

    :param torch.Tensor loc: μ.
    :param torch.Tensor scale: σ > 0, broadcast against ``loc``.
    :param int bins: the number of values (256 for 8-bit data).

    Example:

    >>> import torch
    >>> d = DiscretizedGaussian(torch.zeros(3), torch.full((3,), 0.5), bins=4)
    >>> d.batch_shape, d.sample().shape
    (torch.Size([3]), torch.Size([3]))
    >>> centres = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])[:, None]  # the 4 values, against each of the 3 elements
    >>> [round(float(v), 4) for v in d.log_prob(centres).exp().sum(0)]  # the probabilities sum to 1
    [1.0, 1.0, 1.0]
    """

    def _grid(self, x: Tensor) -> Tensor:
        k = torch.round((x.clamp(-1.0, 1.0) + 1.0) * (self.bins - 1) / 2.0)
        return k * (2.0 / (self.bins - 1)) - 1.0

    def sample(self, sample_shape=torch.Size()):
        """A draw ``[*sample_shape x *batch_shape]``: loc + scale · ε rounded to the nearest bin centre."""
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            x = self.loc.expand(shape) + self.scale.expand(shape) * torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
            return self._grid(x)

    def log_prob(self, value: Tensor) -> Tensor:
        """log P(value), ``value`` on the bin centres (checked when validation is on), in nats."""
        if self._validate_args:
            off = (value - self._grid(value)).abs() > 1e-4 / self.bins
            if off.any():
                bad = value[off].flatten()[0].item()
                raise ValueError(
                    f"value {bad!r} is not a bin centre of a {self.bins}-bin discretized decoder; "
                    "map 8-bit pixels v to 2 v / 255 − 1"
                )
        return discretized_gaussian_log_likelihood(value, self.loc, torch.log(self.scale), self.bins)

    def from_normal(self, eps: Tensor) -> Tensor:
        """The draw whose standard normal noise is ``eps``: loc + scale · eps rounded to the nearest centre.

        >>> import torch
        >>> d = DiscretizedGaussian(torch.tensor([0.3]), torch.tensor([0.1]), bins=4)
        >>> round(float(d.from_normal(torch.zeros(1))[0]), 4)  # 1/3 is the centre nearest to 0.3
        0.3333
        """
        return self._grid(self.loc + self.scale * eps)

    @property
    def mean(self):
        """``loc`` (the mean of the underlying Normal)."""
        return self.loc


def bin_centres(bins: int) -> np.ndarray:
    """The ``bins`` centres c_k = (2k − (bins − 1))/(bins − 1) of [−1, 1], float64 NumPy (each the float64 nearest to
    the centre; cast to float32 it is the float32 the data's pixels are, as ``data.to_model_space`` rounds once from
    float64). Computed on the host so that both backends' decoders hold the same bits: a compiled division by a
    constant may become a multiplication by its reciprocal, one ulp off.

    :param int bins: the number of centres, >= 2.
    :rtype: numpy.ndarray

    >>> bin_centres(5).tolist()
    [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    k = np.arange(bins, dtype=np.float64)
    return (2.0 * k - (bins - 1)) / (bins - 1)


class VDMCategorical(_OnBins):
    r"""VDM's categorical over the ``bins`` centres c_k = −1 + 2k/(bins − 1) of [−1, 1], elementwise:

        P(c_k) = exp(−(c_k − loc)²/(2 scale²)) / Σ_j exp(−(c_j − loc)²/(2 scale²)),

    the Gaussian density N(c_k; loc, scale²) normalised over the centres (google-research/vdm ``EncDec.decode``,
    on our centres: VDM's are (k + ½)·2/bins − 1). As the decoder p(x_0|x_1) it has loc = x_1/α_1, scale² =
    σ_1²/α_1² = e^{γ_0}: the posterior over x_0 of q(x_1|x_0) under a uniform prior on the centres for each
    pixel alone, exact when the pixels are independent given x_1, and no network call. ``log_prob`` is a
    ``log_softmax`` over the ``bins`` logits (``[... x bins]`` in memory); ``sample`` and :meth:`from_normal` are
    exact draws (inverse CDF).

    :param torch.Tensor loc: the location (x_1/α_1 as the decoder).
    :param torch.Tensor scale: the scale > 0 (σ_1/α_1), broadcast against ``loc``.
    :param int bins: the number of values (256 for 8-bit data).

    Example: the probabilities are the normal density at the centres, normalised.

    >>> import torch
    >>> d = VDMCategorical(torch.tensor([0.0, 0.9]), torch.tensor([0.5, 0.5]), bins=4)
    >>> d.logits.shape, [round(float(p), 4) for p in d.probs.sum(-1)]
    (torch.Size([2, 4]), [1.0, 1.0])
    >>> w = torch.exp(-0.5 * ((d.centres - 0.9) / 0.5) ** 2)
    >>> bool(torch.allclose(d.probs[1], w / w.sum()))
    True
    >>> float(d.sample().abs().max()) <= 1.0
    True
    """

    @property
    def centres(self) -> Tensor:
        """The centres c_k = −1 + 2k/(bins − 1), k = 0..bins − 1, in the dtype of ``loc`` (:func:`bin_centres`, the
        numbers the data's pixels are, ``data.to_model_space``, and the NumPyro twin's, bit for bit)."""
        return torch.as_tensor(bin_centres(self.bins), dtype=self.loc.dtype, device=self.loc.device)

    @property
    def logits(self) -> Tensor:
        """log P(c_k), ``[*batch_shape x bins]``, normalised."""
        z = (self.centres - self.loc[..., None]) / self.scale[..., None]
        return torch.log_softmax(-0.5 * z * z, dim=-1)

    @property
    def probs(self) -> Tensor:
        """P(c_k), ``[*batch_shape x bins]``."""
        return self.logits.exp()

    def _index(self, x: Tensor) -> Tensor:
        return torch.round((x.clamp(-1.0, 1.0) + 1.0) * (self.bins - 1) / 2.0).long()

    def log_prob(self, value: Tensor) -> Tensor:
        """log P(value), ``value`` on the centres (checked when validation is on), in nats."""
        if self._validate_args:
            off = (value - self.centres[self._index(value)]).abs() > 1e-4 / self.bins
            if off.any():
                raise ValueError(f"value {value[off].flatten()[0].item()!r} is not a centre of a {self.bins}-value "
                                 "categorical decoder; map 8-bit pixels v to 2 v / 255 − 1")
        shape = torch.broadcast_shapes(value.shape, self.batch_shape)
        logits = self.logits.expand(*shape, self.bins)
        return logits.gather(-1, self._index(value).expand(shape)[..., None])[..., 0]

    def from_normal(self, eps: Tensor) -> Tensor:
        """The draw whose standard normal noise is ``eps``: the centre c_k with k the smallest index whose CDF
        reaches Φ(eps) (inverse-CDF sampling, so a draw from this distribution for eps ~ N(0, 1))."""
        u = torch.special.ndtr(eps.to(self.loc.dtype))
        cdf = self.probs.cumsum(-1)
        k = (cdf < u[..., None]).sum(-1).clamp(max=self.bins - 1)
        return self.centres[k]

    def sample(self, sample_shape=torch.Size()):
        """An exact draw ``[*sample_shape x *batch_shape]`` of the centres (:meth:`from_normal` of a normal draw)."""
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            return self.from_normal(torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device))

    @property
    def mean(self):
        """Σ_k c_k P(c_k)."""
        return (self.probs * self.centres).sum(-1)


class GaussianDecoder:
    r"""p(x_0 | x_1) = N(μ_θ(x_1, 1), σ_1² I): a density, for continuous data (``decoder="gaussian"``).

    Called with the reverse step's mean and log-variance at t = 1, it returns the elementwise Pyro
    :class:`~pyro.distributions.Normal`:

    .. math::

        p(x_0 \mid x_1) = \mathcal{N}\big(x_0; \mu_\theta(x_1, 1), \sigma_1^2 I\big).

    Example:

    >>> import torch
    >>> d = GaussianDecoder()(torch.zeros(2, 3), torch.zeros(2, 3))  # mean 0, log σ² = 0
    >>> type(d).__name__, d.batch_shape
    ('Normal', torch.Size([2, 3]))
    >>> round(float(d.log_prob(torch.zeros(2, 3))[0, 0]), 4)  # −½ log 2π
    -0.9189
    """

    name = "gaussian"
    uses_denoiser = True

    def __call__(self, mean: Tensor, log_variance: Tensor):
        return Normal(mean, torch.exp(0.5 * log_variance))

    def __repr__(self) -> str:
        return "GaussianDecoder()"


class DiscretizedGaussianDecoder:
    """p(x_0 | x_1) = N(μ_θ(x_1, 1), σ_1² I) discretized over ``bins`` bins on [−1, 1] (DDPM §3.3).

    The probability of each pixel value, so −log p(x_0) gives bits/dim of 8-bit data directly. Called with the
    reverse step's mean and log-variance, it returns a :class:`DiscretizedGaussian` (``decoder="discretized"``).

    :param int bins: the number of values on [−1, 1] (256 for 8-bit data), >= 2.

    Example:

    >>> import torch
    >>> decoder = DiscretizedGaussianDecoder(bins=256)
    >>> x0 = torch.full((1, 2), 1 / 255)  # a bin centre: pixel 128 of 0..255
    >>> d = decoder(x0, torch.full((1, 2), -20.0))  # σ far below a bin's width: all mass on the centre
    >>> round(float(d.log_prob(x0).exp()[0, 0]), 4)
    1.0
    """

    name = "discretized"
    uses_denoiser = True

    def __init__(self, bins: int = 256) -> None:
        self.bins = check_bins(bins)

    def __call__(self, mean: Tensor, log_variance: Tensor):
        return DiscretizedGaussian(mean, torch.exp(0.5 * log_variance), self.bins)

    def __repr__(self) -> str:
        return f"DiscretizedGaussianDecoder(bins={self.bins})"


class VDMCategoricalDecoder:
    """VDM's p(x_0 | x_1): for each pixel the categorical over the ``bins`` values with P(c_k) ∝ N(c_k; x_1/α_1,
    σ_1²/α_1²) (:class:`VDMCategorical`), factorised over pixels (Kingma et al. 2021, appendix B; ``EncDec`` of
    google-research/vdm). No network call: the model calls it with loc = x_1/α_1 and log variance log(σ_1²/α_1²)
    (= γ_0) in place of the reverse step's mean and variance (``uses_denoiser = False``). For 8-bit data.

    Where the discretized decoder spends one denoiser call per example to predict x_0, this one trusts x_1: its
    −log p(x_0|x_1) falls to 0 as γ_0 → −∞ (σ_1/α_1 much below the spacing 2/(bins − 1)), so a learned γ_0 is pushed
    low and the denoiser's first steps carry the work.

    :param int bins: the number of values on [−1, 1] (256 for 8-bit data), >= 2.

    Example:

    >>> import torch
    >>> d = VDMCategoricalDecoder(bins=256)(torch.zeros(1, 3), torch.full((1, 3), -13.3))
    >>> type(d).__name__, d.batch_shape
    ('VDMCategorical', torch.Size([1, 3]))
    """

    name = "vdm-categorical"
    uses_denoiser = False

    def __init__(self, bins: int = 256) -> None:
        self.bins = check_bins(bins)

    def __call__(self, loc: Tensor, log_variance: Tensor):
        return VDMCategorical(loc, torch.exp(0.5 * log_variance), self.bins)

    def __repr__(self) -> str:
        return f"VDMCategoricalDecoder(bins={self.bins})"


#: The decoders p(x_0|x_1) by name (``GaussianDiffusion(decoder=...)``, ``--decoder``).
DECODERS = {"gaussian": GaussianDecoder, "discretized": DiscretizedGaussianDecoder,
            "vdm-categorical": VDMCategoricalDecoder}
#: The decoders of 8-bit data (a ``bins`` attribute, data on the bin centres), for the data's own choice.
IMAGE_DECODERS = ("discretized", "vdm-categorical")


def uses_denoiser(decoder) -> bool:
    """Whether ``decoder`` is called with the reverse step's mean and log-variance at t = 1 (one denoiser call), or
    (``uses_denoiser = False``) with x_1/α_1 and log(σ_1²/α_1²). Decoder objects without the attribute use it."""
    return bool(getattr(decoder, "uses_denoiser", True))


def make_decoder(decoder) -> GaussianDecoder | DiscretizedGaussianDecoder | VDMCategoricalDecoder:
    """A decoder from its name (``"gaussian"``, ``"discretized"``, ``"vdm-categorical"``; the keys of
    :data:`DECODERS`) or a decoder object itself (any callable ``decoder(mean, log_variance)`` returning a
    distribution).

    :param decoder: a name or a decoder object.
    :raises ValueError: for an unknown name, listing the known ones.

    >>> make_decoder("discretized")
    DiscretizedGaussianDecoder(bins=256)
    >>> make_decoder("gaussian")
    GaussianDecoder()
    """
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
