"""The decoders p(x_0 | x_1) as NumPyro distributions, by the same names as the PyTorch backend."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.util import promote_shapes

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

    @property
    def mean(self):
        return self.loc


class GaussianDecoder:
    """p(x_0 | x_1) = N(μ_θ(x_1, 1), σ_1² I), for continuous data."""

    name = "gaussian"

    def __call__(self, mean, log_variance):
        return dist.Normal(mean, jnp.exp(0.5 * log_variance))


class DiscretizedGaussianDecoder:
    """p(x_0 | x_1) discretized over ``bins`` bins on [−1, 1] (DDPM §3.3), for 8-bit data."""

    name = "discretized"

    def __init__(self, bins: int = 256) -> None:
        if not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins = {bins!r}; pass an integer number of bins >= 2 (256 for 8-bit data)")
        self.bins = bins

    def __call__(self, mean, log_variance):
        return DiscretizedGaussian(mean, jnp.exp(0.5 * log_variance), self.bins)


DECODERS = {"gaussian": GaussianDecoder, "discretized": DiscretizedGaussianDecoder}


def make_decoder(decoder):
    """A decoder from its name (``"gaussian"``, ``"discretized"``), a PyTorch-backend decoder of the same
    name, or a decoder object of this backend."""
    name = decoder if isinstance(decoder, str) else getattr(decoder, "name", None)
    if isinstance(decoder, (GaussianDecoder, DiscretizedGaussianDecoder)):
        return decoder
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODERS)}")
    if name == "discretized":
        return DiscretizedGaussianDecoder(getattr(decoder, "bins", 256))
    return GaussianDecoder()
