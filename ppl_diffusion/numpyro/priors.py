"""Learned priors p(x_T) for the NumPyro backend: ``GaussianDiffusion(prior=DiagonalGaussian((2,)))``.

The NumPyro idiom for learned quantities is a named ``numpyro.param`` site: each prior here is a callable
that, run inside the model, declares its parameters (``prior$loc``, ...) and returns the distribution, so
``numpyro.infer.SVI`` optimises them with the denoiser's. A fixed prior is any NumPyro distribution with
the event shape. The prior's term KL(q(x_T|x_0) || p(x_T)) is analytic where NumPyro registers a KL
(the Gaussians) and Monte Carlo otherwise, by the rule of :func:`ppl_diffusion.numpyro.per_example_elbo`.

Twins of :mod:`ppl_diffusion.priors` (same parametrisations and initial values):
:class:`DiagonalGaussian`, :class:`StudentT` (ν fixed or learned, ν = 2 + softplus), :class:`GaussianMixture`,
and :class:`FlowPrior` (N(0, I) through NumPyro's ``InverseAutoregressiveTransform`` layers, their
autoregressive nets registered with ``numpyro.module``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from ..priors import check_event_shape


class Prior:
    """A learned p(x_T) for NumPyro: ``prior()`` inside a model declares ``{name}$…`` params and returns the
    distribution (event shape ``event_shape``, batch shape ())."""

    def __init__(self, event_shape, name: str = "prior") -> None:
        try:
            self.event_shape = check_event_shape(event_shape)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: {e}") from None
        self.dim = int(np.prod(self.event_shape))
        self.name = name

    def param(self, key: str, init):
        return numpyro.param(f"{self.name}${key}", init)

    def __call__(self):  # pragma: no cover - abstract
        raise NotImplementedError


class DiagonalGaussian(Prior):
    def __call__(self):
        loc = self.param("loc", jnp.zeros(self.event_shape))
        log_scale = self.param("log_scale", jnp.zeros(self.event_shape))
        return dist.Normal(loc, jnp.exp(log_scale)).to_event(len(self.event_shape))


class StudentT(Prior):
    def __init__(self, event_shape, df: float = 5.0, learn_df: bool = False, name: str = "prior") -> None:
        super().__init__(event_shape, name)
        if not df > (2.0 if learn_df else 0.0):
            raise ValueError(f"StudentT(df={df!r}): the degrees of freedom must be > 0 (> 2 when learned)")
        self.df0, self.learn_df = float(df), learn_df

    def __call__(self):
        loc = self.param("loc", jnp.zeros(self.event_shape))
        log_scale = self.param("log_scale", jnp.zeros(self.event_shape))
        if self.learn_df:
            df = 2.0 + jax.nn.softplus(self.param("df_raw", jnp.asarray(self.df0 - 2.0 + math.log(-math.expm1(2.0 - self.df0)))))
        else:
            df = jnp.asarray(self.df0)
        return dist.StudentT(jnp.broadcast_to(df, self.event_shape), loc, jnp.exp(log_scale)).to_event(
            len(self.event_shape))


class GaussianMixture(Prior):
    def __init__(self, event_shape, components: int = 4, init_scale: float = 0.1, seed: int = 0,
                 name: str = "prior") -> None:
        super().__init__(event_shape, name)
        self.components = int(components)
        self.locs0 = init_scale * np.random.default_rng(seed).normal(size=(self.components, *self.event_shape))

    def __call__(self):
        logits = self.param("logits", jnp.zeros(self.components))
        locs = self.param("locs", jnp.asarray(self.locs0, jnp.float32))
        log_scales = self.param("log_scales", jnp.zeros((self.components, *self.event_shape)))
        comp = dist.Normal(locs, jnp.exp(log_scales)).to_event(len(self.event_shape))
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), comp)


class FlowPrior(Prior):
    """N(0, I) over the flattened D dimensions through ``layers`` inverse autoregressive transforms
    (``numpyro.distributions.flows.InverseAutoregressiveTransform`` with ``numpyro.nn.AutoregressiveNN``),
    dimensions reversed between layers, reshaped to the event shape."""

    def __init__(self, event_shape, layers: int = 2, hidden: int | None = None, name: str = "prior") -> None:
        super().__init__(event_shape, name)
        self.layers, self.hidden = int(layers), hidden or max(16, 2 * self.dim)

    def __call__(self):
        from numpyro import module
        from numpyro.distributions.flows import InverseAutoregressiveTransform
        from numpyro.distributions.transforms import PermuteTransform, ReshapeTransform
        from numpyro.nn import AutoregressiveNN

        parts = []
        for i in range(self.layers):
            if i:
                parts.append(PermuteTransform(jnp.arange(self.dim - 1, -1, -1)))
            arn = module(f"{self.name}$arn{i}", AutoregressiveNN(self.dim, [self.hidden, self.hidden],
                                                                 permutation=jnp.arange(self.dim)),
                         input_shape=(self.dim,))
            parts.append(InverseAutoregressiveTransform(arn))
        if len(self.event_shape) > 1:
            parts.append(ReshapeTransform(self.event_shape, (self.dim,)))
        base = dist.Normal(jnp.zeros(self.dim), 1.0).to_event(1)
        return dist.TransformedDistribution(base, parts)


def check_prior(prior, event_shape):
    """The distribution of ``prior`` (a distribution or a :class:`Prior`), checked; one-line errors."""
    if isinstance(prior, type):
        raise TypeError(f"prior is the class {prior.__name__}; pass an instance, e.g. prior={prior.__name__}"
                        f"({'event_shape' if issubclass(prior, Prior) else '...'})")
    d = prior() if isinstance(prior, Prior) else prior
    if not isinstance(d, dist.Distribution):
        raise TypeError(f"prior must be a NumPyro distribution over x_T or a ppl_diffusion.numpyro.priors.Prior, "
                        f"got {type(d).__name__}")
    if type(d).log_prob is dist.Distribution.log_prob:
        raise TypeError(f"prior {type(d).__name__} has no log_prob; the bound needs log p(x_T)")
    if tuple(d.batch_shape) != ():
        raise ValueError(f"prior has batch shape {tuple(d.batch_shape)}; it must be () (the model adds the data "
                         f"plate): use .to_event({len(d.batch_shape)}) to make those dimensions the event")
    if tuple(d.event_shape) != tuple(event_shape):
        raise ValueError(f"prior has event shape {tuple(d.event_shape)} but the data's event shape is "
                         f"{tuple(event_shape)}; use .to_event(...) so that the prior's event is one example")
    return d


__all__ = ["DiagonalGaussian", "FlowPrior", "GaussianMixture", "Prior", "StudentT", "check_prior"]
