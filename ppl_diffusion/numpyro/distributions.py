"""The decoders p(x_0 | x_1) as NumPyro distributions, by the same names as the PyTorch backend
(:mod:`ppl_diffusion.distributions`).

A decoder is a small object turning two arrays ``[B x ...]`` (a location and a log-variance) into a NumPyro
distribution over x_0 with batch shape ``[B x ...]``; the model reinterprets the data dimensions as its event.
Decoders are chosen by name (:func:`make_decoder`, :data:`DECODERS`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints
from jax.scipy.special import ndtr
from numpyro.distributions.util import promote_shapes

from ..distributions import bin_centres, check_bins
from ..distributions import uses_denoiser  # noqa: F401 (re-exported: the same test on this backend's decoders)
from .closed_forms import discretized_gaussian_log_likelihood


class DiscretizedGaussian(dist.Distribution):
    r"""N(loc, scale²) discretized over ``bins`` equal bins on [−1, 1], edge bins extended to ±∞.

    Values are the bin centres −1 + 2k/(bins − 1); ``log_prob`` is exact in the tails
    (:func:`~ppl_diffusion.numpyro.closed_forms.discretized_gaussian_log_likelihood`); ``sample`` draws
    from the Normal and rounds to the nearest centre. The twin of
    :class:`ppl_diffusion.distributions.DiscretizedGaussian`.

    .. math:: P(x) = \Phi\Big(\frac{x + \delta - \mu}{\sigma}\Big) - \Phi\Big(\frac{x - \delta - \mu}{\sigma}\Big),
        \quad \delta = \frac{1}{\mathrm{bins} - 1}

    :param loc: μ, broadcast against ``scale`` to the batch shape.
    :param scale: σ > 0.
    :param int bins: the number of values (256 for 8-bit data).

    Example (the PyTorch twin's log-probabilities):

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion import distributions
    >>> from ppl_diffusion.numpyro.distributions import DiscretizedGaussian
    >>> d = DiscretizedGaussian(jnp.zeros(3), jnp.full(3, 0.5), bins=4)
    >>> x = d.sample(jax.random.key(0), (2,))
    >>> k = (np.asarray(x) + 1.0) * 3 / 2   # each value a centre −1 + 2k/3, k = 0..3
    >>> x.shape, bool(np.allclose(k, np.round(k)))
    ((2, 3), True)
    >>> twin = distributions.DiscretizedGaussian(torch.zeros(3), torch.full((3,), 0.5), bins=4)
    >>> bool(np.allclose(np.asarray(d.log_prob(x)), twin.log_prob(torch.tensor(np.asarray(x))).numpy()))
    True
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    pytree_data_fields = ("loc", "scale")
    pytree_aux_fields = ("bins",)

    def __init__(self, loc, scale, bins: int = 256, *, validate_args=None):
        self.loc, self.scale = promote_shapes(loc, scale)
        self.bins = int(bins)
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(loc), jnp.shape(scale))
        self.loc, self.scale = jnp.broadcast_to(self.loc, batch_shape), jnp.broadcast_to(self.scale, batch_shape)
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    def _grid(self, x):
        k = jnp.round((jnp.clip(x, -1.0, 1.0) + 1.0) * (self.bins - 1) / 2.0)
        return k * (2.0 / (self.bins - 1)) - 1.0

    def sample(self, key, sample_shape=()):
        """A draw ``sample_shape + batch_shape`` from the JAX PRNG ``key``: a Normal draw rounded to the nearest
        centre."""
        shape = sample_shape + self.batch_shape
        x = self.loc + self.scale * jax.random.normal(key, shape, dtype=jnp.result_type(self.loc))
        return jax.lax.stop_gradient(self._grid(x))

    def log_prob(self, value):
        """log P(bin of ``value``), exact in the tails."""
        return discretized_gaussian_log_likelihood(value, self.loc, jnp.log(self.scale), self.bins)

    def from_normal(self, eps):
        """The draw whose standard normal noise is ``eps``: loc + scale · eps rounded to the nearest centre.

        :param eps: standard normals of the batch shape.

        Example:

        >>> import jax.numpy as jnp
        >>> from ppl_diffusion.numpyro.distributions import DiscretizedGaussian
        >>> d = DiscretizedGaussian(jnp.zeros(2), jnp.ones(2), bins=3)   # centres −1, 0, 1
        >>> d.from_normal(jnp.array([0.4, 0.6])).tolist()
        [0.0, 1.0]
        """
        return self._grid(self.loc + self.scale * eps)

    @property
    def mean(self):
        """``loc`` (the mean of the Normal before rounding)."""
        return self.loc


class VDMCategorical(dist.Distribution):
    r"""VDM's categorical over the ``bins`` centres c_k = −1 + 2k/(bins − 1), elementwise: P(c_k) ∝
    exp(−(c_k − loc)²/(2 scale²)), the twin of :class:`ppl_diffusion.distributions.VDMCategorical` (the decoder at
    loc = x_1/α_1, scale² = σ_1²/α_1²); ``sample`` and :meth:`from_normal` draw by the inverse CDF.

    .. math:: P(c_k) = \frac{\exp(-(c_k - \mu)^2 / 2\sigma^2)}{\sum_j \exp(-(c_j - \mu)^2 / 2\sigma^2)}

    :param loc: μ, broadcast against ``scale`` to the batch shape.
    :param scale: σ > 0.
    :param int bins: the number of values (256 for 8-bit data).

    Example:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.distributions import VDMCategorical
    >>> d = VDMCategorical(jnp.zeros(2), jnp.full(2, 0.5), bins=3)
    >>> d.logits.shape, [round(float(p), 4) for p in d.probs[0]]
    ((2, 3), [0.1065, 0.787, 0.1065])
    >>> d.sample(jax.random.key(0), (4,)).shape
    (4, 2)
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    pytree_data_fields = ("loc", "scale")
    pytree_aux_fields = ("bins",)

    def __init__(self, loc, scale, bins: int = 256, *, validate_args=None):
        self.bins = int(bins)
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(loc), jnp.shape(scale))
        self.loc, self.scale = jnp.broadcast_to(loc, batch_shape), jnp.broadcast_to(scale, batch_shape)
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    @property
    def centres(self):
        """c_k = (2k − (bins − 1))/(bins − 1) from the host (:func:`ppl_diffusion.distributions.bin_centres`), the
        PyTorch twin's numbers bit for bit."""
        return jnp.asarray(bin_centres(self.bins), dtype=jnp.result_type(self.loc))

    @property
    def logits(self):
        """log P(c_k), ``[*batch_shape x bins]``, normalised."""
        z = (self.centres - self.loc[..., None]) / self.scale[..., None]
        return jax.nn.log_softmax(-0.5 * z * z, axis=-1)

    @property
    def probs(self):
        """P(c_k), ``[*batch_shape x bins]``."""
        return jnp.exp(self.logits)

    def log_prob(self, value):
        """log P(``value``), ``value`` on the centres (rounded to the nearest)."""
        k = jnp.round((jnp.clip(value, -1.0, 1.0) + 1.0) * (self.bins - 1) / 2.0).astype(jnp.int32)
        shape = jax.lax.broadcast_shapes(jnp.shape(value), self.batch_shape)
        logits = jnp.broadcast_to(self.logits, shape + (self.bins,))
        return jnp.take_along_axis(logits, jnp.broadcast_to(k, shape)[..., None], axis=-1)[..., 0]

    def from_normal(self, eps):
        """The centre c_k with k the smallest index whose CDF reaches Φ(eps): a draw for eps ~ N(0, 1).

        :param eps: standard normals of the batch shape.

        Example:

        >>> import jax.numpy as jnp
        >>> from ppl_diffusion.numpyro.distributions import VDMCategorical
        >>> d = VDMCategorical(jnp.zeros(3), jnp.full(3, 0.5), bins=3)
        >>> d.from_normal(jnp.array([-3.0, 0.0, 3.0])).tolist()
        [-1.0, 0.0, 1.0]
        """
        u = ndtr(jnp.asarray(eps, jnp.result_type(self.loc)))
        k = jnp.minimum(jnp.sum(jnp.cumsum(self.probs, -1) < u[..., None], -1), self.bins - 1)
        return jax.lax.stop_gradient(self.centres[k])

    def sample(self, key, sample_shape=()):
        """A draw ``sample_shape + batch_shape`` from the JAX PRNG ``key`` (inverse CDF)."""
        shape = sample_shape + self.batch_shape
        return self.from_normal(jax.random.normal(key, shape, dtype=jnp.result_type(self.loc)))

    @property
    def mean(self):
        """Σ_k P(c_k) c_k."""
        return jnp.sum(self.probs * self.centres, -1)


class GaussianDecoder:
    """p(x_0 | x_1) = N(μ_θ(x_1, 1), σ_1² I): a density, for continuous data.

    Called with the reverse step's mean and log-variance, it returns ``numpyro.distributions.Normal``.

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.distributions import GaussianDecoder
    >>> d = GaussianDecoder()(jnp.zeros((2, 3)), jnp.zeros((2, 3)))
    >>> type(d).__name__, d.batch_shape
    ('Normal', (2, 3))
    """

    name = "gaussian"
    uses_denoiser = True

    def __call__(self, mean, log_variance):
        return dist.Normal(mean, jnp.exp(0.5 * log_variance))


class DiscretizedGaussianDecoder:
    """p(x_0 | x_1) = N(μ_θ(x_1, 1), σ_1² I) discretized over ``bins`` bins on [−1, 1] (DDPM §3.3), for 8-bit data.

    The probability of each pixel value (:class:`DiscretizedGaussian`), so −log p(x_0) gives bits/dim of 8-bit data
    directly.

    :param int bins: the number of values, >= 2 (256 for 8-bit data).

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.distributions import DiscretizedGaussianDecoder
    >>> d = DiscretizedGaussianDecoder(bins=256)(jnp.zeros(3), jnp.full(3, -2.0))
    >>> type(d).__name__, d.bins
    ('DiscretizedGaussian', 256)
    """

    name = "discretized"
    uses_denoiser = True

    def __init__(self, bins: int = 256) -> None:
        self.bins = check_bins(bins)

    def __call__(self, mean, log_variance):
        return DiscretizedGaussian(mean, jnp.exp(0.5 * log_variance), self.bins)


class VDMCategoricalDecoder:
    """VDM's factorised categorical p(x_0 | x_1) over the ``bins`` values, called with x_1/α_1 and log(σ_1²/α_1²)
    (no denoiser call), the twin of :class:`ppl_diffusion.distributions.VDMCategoricalDecoder`.

    :param int bins: the number of values, >= 2 (256 for 8-bit data).

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.distributions import VDMCategoricalDecoder
    >>> decoder = VDMCategoricalDecoder(bins=4)
    >>> decoder.uses_denoiser, type(decoder(jnp.zeros(3), jnp.full(3, -5.0))).__name__
    (False, 'VDMCategorical')
    """

    name = "vdm-categorical"
    uses_denoiser = False

    def __init__(self, bins: int = 256) -> None:
        self.bins = check_bins(bins)

    def __call__(self, loc, log_variance):
        return VDMCategorical(loc, jnp.exp(0.5 * log_variance), self.bins)


#: The decoders by name, as ``ppl_diffusion.distributions.DECODERS``.
DECODERS = {"gaussian": GaussianDecoder, "discretized": DiscretizedGaussianDecoder,
            "vdm-categorical": VDMCategoricalDecoder}


def make_decoder(decoder):
    """A decoder from its name (``"gaussian"``, ``"discretized"``, ``"vdm-categorical"``), a PyTorch-backend
    decoder of the same name, or a decoder object of this backend.

    :param decoder: a name of :data:`DECODERS`, a decoder of :mod:`ppl_diffusion.distributions` (its ``bins``
        kept), or a decoder of this module (returned as it is).
    :raises ValueError: for an unknown name, listing the known ones.

    Example:

    >>> from ppl_diffusion import distributions
    >>> from ppl_diffusion.numpyro.distributions import make_decoder
    >>> type(make_decoder("gaussian")).__name__
    'GaussianDecoder'
    >>> make_decoder(distributions.DiscretizedGaussianDecoder(bins=16)).bins   # the PyTorch decoder's twin
    16
    """
    name = decoder if isinstance(decoder, str) else getattr(decoder, "name", None)
    if isinstance(decoder, tuple(DECODERS.values())):
        return decoder
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODERS)}")
    if name == "gaussian":
        return GaussianDecoder()
    return DECODERS[name](getattr(decoder, "bins", 256))


__all__ = ["DECODERS", "DiscretizedGaussian", "DiscretizedGaussianDecoder", "GaussianDecoder", "VDMCategorical",
           "VDMCategoricalDecoder", "make_decoder"]
