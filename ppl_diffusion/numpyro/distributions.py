"""The decoders p(x_0 | x_1) as NumPyro distributions, by the same names as the PyTorch backend."""

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
    """N(loc, scale²) discretized over ``bins`` equal bins on [−1, 1], edge bins extended to ±∞.

    Values are the bin centres −1 + 2k/(bins − 1); ``log_prob`` is exact in the tails; ``sample`` draws
    from the Normal and rounds to the nearest centre.
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
        shape = sample_shape + self.batch_shape
        x = self.loc + self.scale * jax.random.normal(key, shape, dtype=jnp.result_type(self.loc))
        return jax.lax.stop_gradient(self._grid(x))

    def log_prob(self, value):
        return discretized_gaussian_log_likelihood(value, self.loc, jnp.log(self.scale), self.bins)

    def from_normal(self, eps):
        """The draw whose standard normal noise is ``eps``: loc + scale · eps rounded to the nearest centre."""
        return self._grid(self.loc + self.scale * eps)

    @property
    def mean(self):
        return self.loc


class VDMCategorical(dist.Distribution):
    """VDM's categorical over the ``bins`` centres c_k = −1 + 2k/(bins − 1), elementwise: P(c_k) ∝
    exp(−(c_k − loc)²/(2 scale²)), the twin of :class:`ppl_diffusion.distributions.VDMCategorical` (the decoder at
    loc = x_1/α_1, scale² = σ_1²/α_1²); ``sample`` and :meth:`from_normal` draw by the inverse CDF."""

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
        return jnp.exp(self.logits)

    def log_prob(self, value):
        k = jnp.round((jnp.clip(value, -1.0, 1.0) + 1.0) * (self.bins - 1) / 2.0).astype(jnp.int32)
        shape = jax.lax.broadcast_shapes(jnp.shape(value), self.batch_shape)
        logits = jnp.broadcast_to(self.logits, shape + (self.bins,))
        return jnp.take_along_axis(logits, jnp.broadcast_to(k, shape)[..., None], axis=-1)[..., 0]

    def from_normal(self, eps):
        """The centre c_k with k the smallest index whose CDF reaches Φ(eps): a draw for eps ~ N(0, 1)."""
        u = ndtr(jnp.asarray(eps, jnp.result_type(self.loc)))
        k = jnp.minimum(jnp.sum(jnp.cumsum(self.probs, -1) < u[..., None], -1), self.bins - 1)
        return jax.lax.stop_gradient(self.centres[k])

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        return self.from_normal(jax.random.normal(key, shape, dtype=jnp.result_type(self.loc)))

    @property
    def mean(self):
        return jnp.sum(self.probs * self.centres, -1)


class GaussianDecoder:
    """p(x_0 | x_1) = N(μ_θ(x_1, 1), σ_1² I), for continuous data."""

    name = "gaussian"
    uses_denoiser = True

    def __call__(self, mean, log_variance):
        return dist.Normal(mean, jnp.exp(0.5 * log_variance))


class DiscretizedGaussianDecoder:
    """p(x_0 | x_1) discretized over ``bins`` bins on [−1, 1] (DDPM §3.3), for 8-bit data."""

    name = "discretized"
    uses_denoiser = True

    def __init__(self, bins: int = 256) -> None:
        self.bins = check_bins(bins)

    def __call__(self, mean, log_variance):
        return DiscretizedGaussian(mean, jnp.exp(0.5 * log_variance), self.bins)


class VDMCategoricalDecoder:
    """VDM's factorised categorical p(x_0 | x_1) over the ``bins`` values, called with x_1/α_1 and log(σ_1²/α_1²)
    (no denoiser call), the twin of :class:`ppl_diffusion.distributions.VDMCategoricalDecoder`."""

    name = "vdm-categorical"
    uses_denoiser = False

    def __init__(self, bins: int = 256) -> None:
        self.bins = check_bins(bins)

    def __call__(self, loc, log_variance):
        return VDMCategorical(loc, jnp.exp(0.5 * log_variance), self.bins)


DECODERS = {"gaussian": GaussianDecoder, "discretized": DiscretizedGaussianDecoder,
            "vdm-categorical": VDMCategoricalDecoder}


def make_decoder(decoder):
    """A decoder from its name (``"gaussian"``, ``"discretized"``, ``"vdm-categorical"``), a PyTorch-backend
    decoder of the same name, or a decoder object of this backend."""
    name = decoder if isinstance(decoder, str) else getattr(decoder, "name", None)
    if isinstance(decoder, tuple(DECODERS.values())):
        return decoder
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODERS)}")
    if name == "gaussian":
        return GaussianDecoder()
    return DECODERS[name](getattr(decoder, "bins", 256))
