"""Learned priors p(x_T) for the NumPyro backend: ``GaussianDiffusion(prior=DiagonalGaussian((2,)))``.

The NumPyro idiom for learned quantities is a named ``numpyro.param`` site: each prior here is a callable
that, run inside the model, declares its parameters (``prior$loc``, ...) and returns the distribution, so
``numpyro.infer.SVI`` optimises them with the denoiser's. A fixed prior is any NumPyro distribution with
the event shape. The prior's term KL(q(x_T|x_0) || p(x_T)) is analytic where NumPyro registers a KL
(the Gaussians) and Monte Carlo otherwise, by the rule of :func:`ppl_diffusion.numpyro.infer.per_example_elbo`.

Twins of :mod:`ppl_diffusion.priors` (same parametrisations and initial values):
:class:`DiagonalGaussian`, :class:`StudentT` (ν fixed or learned, ν = 2 + softplus), :class:`GaussianMixture`,
and :class:`FlowPrior` (N(0, I) through NumPyro's ``InverseAutoregressiveTransform`` layers, their
autoregressive nets registered with ``numpyro.module``).

Example:

>>> import jax.numpy as jnp
>>> from numpyro import handlers
>>> from ppl_diffusion.numpyro.priors import DiagonalGaussian
>>> prior = DiagonalGaussian((2,))
>>> trace = handlers.trace(prior).get_trace()   # the params it declares when run in a model
>>> sorted(trace), prior().event_shape
(['prior$loc', 'prior$log_scale'], (2,))
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
    distribution (event shape ``event_shape``, batch shape ()). The twin of :class:`ppl_diffusion.priors.Prior`.

    :param event_shape: the shape of one example (e.g. ``(2,)``, or ``2``, or ``(1, 8, 8)``).
    :param str name: the prefix of its ``numpyro.param`` sites.

    Example: a prior of your own, a Laplace with a learned location.

    >>> import jax.numpy as jnp
    >>> import numpyro.distributions as dist
    >>> from numpyro import handlers
    >>> from ppl_diffusion.numpyro.priors import Prior
    >>> class Laplace(Prior):
    ...     def __call__(self):
    ...         loc = self.param("loc", jnp.zeros(self.event_shape))
    ...         return dist.Laplace(loc, 1.0).to_event(len(self.event_shape))
    >>> prior = Laplace(2)
    >>> with handlers.trace() as trace:
    ...     d = prior()
    >>> prior.event_shape, prior.dim, list(trace), d.event_shape
    ((2,), 2, ['prior$loc'], (2,))
    """

    def __init__(self, event_shape, name: str = "prior") -> None:
        try:
            self.event_shape = check_event_shape(event_shape)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: {e}") from None
        self.dim = int(np.prod(self.event_shape))
        self.name = name

    def param(self, key: str, init):
        """The param site ``{name}${key}`` with initial value ``init`` (``numpyro.param``)."""
        return numpyro.param(f"{self.name}${key}", init)

    def __call__(self):  # pragma: no cover - abstract
        raise NotImplementedError


class DiagonalGaussian(Prior):
    r"""N(μ, diag σ²) with μ and log σ learned per dimension (params ``loc``, ``log_scale``); starts at N(0, I).

    .. math:: p(x_T) = \mathcal{N}(\mu, \operatorname{diag} \sigma^2)

    The twin of :class:`ppl_diffusion.priors.DiagonalGaussian`; its KL to q(x_T|x_0) is in closed form.

    :param event_shape: the shape of one example.
    :param str name: the prefix of its ``numpyro.param`` sites.

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.priors import DiagonalGaussian
    >>> d = DiagonalGaussian((2,))()   # outside a model: the initial values
    >>> d.event_shape, round(float(d.log_prob(jnp.zeros(2))), 4)   # log N(0; 0, I) = −log 2π
    ((2,), -1.8379)
    """

    def __call__(self):
        loc = self.param("loc", jnp.zeros(self.event_shape))
        log_scale = self.param("log_scale", jnp.zeros(self.event_shape))
        return dist.Normal(loc, jnp.exp(log_scale)).to_event(len(self.event_shape))


class StudentT(Prior):
    r"""Independent Student-t per dimension: location and log-scale learned; ``df`` ν fixed (a number) or,
    with ``learn_df=True``, learned from that start as ν = 2 + softplus(ρ) (> 2: finite variance).

    .. math:: p(x_T) = \prod_i \mathrm{StudentT}(x_{T,i};\ \nu, \mu_i, \sigma_i)

    Heavier tails than N(0, I); the KL to q(x_T|x_0) has no closed form and is scored by Monte Carlo. The twin of
    :class:`ppl_diffusion.priors.StudentT`.

    :param event_shape: the shape of one example.
    :param float df: ν, > 0 (> 2 when learned).
    :param bool learn_df: whether ν is a param (``df_raw``).
    :param str name: the prefix of its ``numpyro.param`` sites.

    Example:

    >>> from ppl_diffusion.numpyro.priors import StudentT
    >>> d = StudentT((3,), df=5.0, learn_df=True)()
    >>> d.event_shape, round(float(d.base_dist.df[0]), 4)   # ν starts at df
    ((3,), 5.0)
    """

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
    r"""Σ_k π_k N(μ_k, diag σ_k²) with K components: logits of π, means and log-scales learned. The means
    start at small random offsets (``init_scale``, NumPy's generator of ``seed``) so that the components can
    separate; scales at 1.

    .. math:: p(x_T) = \sum_{k=1}^K \pi_k\, \mathcal{N}(\mu_k, \operatorname{diag} \sigma_k^2)

    The twin of :class:`ppl_diffusion.priors.GaussianMixture`; its KL term is scored by Monte Carlo.

    :param event_shape: the shape of one example.
    :param int components: K.
    :param float init_scale: the standard deviation of the initial means.
    :param int seed: the seed of the initial means.
    :param str name: the prefix of its ``numpyro.param`` sites.

    Example:

    >>> import jax
    >>> from ppl_diffusion.numpyro.priors import GaussianMixture
    >>> d = GaussianMixture((2,), components=3)()
    >>> d.event_shape, d.sample(jax.random.key(0), (4,)).shape
    ((2,), (4, 2))
    """

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
    r"""N(0, I) over the flattened D dimensions through ``layers`` inverse autoregressive transforms
    (``numpyro.distributions.flows.InverseAutoregressiveTransform`` with ``numpyro.nn.AutoregressiveNN``),
    dimensions reversed between layers, reshaped to the event shape.

    .. math:: x_T = f_L \circ \dots \circ f_1(z), \quad z \sim \mathcal{N}(0, I_D)

    The twin of :class:`ppl_diffusion.priors.FlowPrior` (the same layer count and widths; its KL term is scored by
    Monte Carlo). The autoregressive nets are registered as ``numpyro.module("{name}$arn{i}", ...)``, so the
    prior must run under ``numpyro.handlers.seed`` (their initialisation draws).

    :param event_shape: the shape of one example.
    :param int layers: L, the number of transforms.
    :param int hidden: the width of each autoregressive net's two hidden layers (default max(16, 2D)).
    :param str name: the prefix of its sites.

    Example:

    >>> import jax.numpy as jnp
    >>> from numpyro import handlers
    >>> from ppl_diffusion.numpyro.priors import FlowPrior
    >>> d = handlers.seed(FlowPrior((1, 2, 2), layers=1), rng_seed=0)()
    >>> d.event_shape, d.log_prob(jnp.zeros((3, 1, 2, 2))).shape
    ((1, 2, 2), (3,))
    """

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
    """The distribution of ``prior`` (a distribution or a :class:`Prior`), checked; one-line errors.

    :param prior: a NumPyro distribution over one example, or a :class:`Prior` (called).
    :param event_shape: the data's event shape.
    :raises TypeError: for a class, a non-distribution or a distribution without ``log_prob``.
    :raises ValueError: for a batch shape other than () or another event shape, naming the fix.

    Example:

    >>> import jax.numpy as jnp
    >>> import numpyro.distributions as dist
    >>> from ppl_diffusion.numpyro.priors import check_prior
    >>> check_prior(dist.Normal(jnp.zeros(2), 1.0).to_event(1), (2,)).event_shape
    (2,)
    >>> check_prior(dist.Normal(jnp.zeros(2), 1.0), (2,))
    Traceback (most recent call last):
    ...
    ValueError: prior has batch shape (2,); it must be () (the model adds the data plate):
    use .to_event(1) to make those dimensions the event
    """
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
