"""Priors p(x_T) at the end of the reverse chain: ``GaussianDiffusion(prior=...)``.

A prior is either a fixed distribution whose event shape is one example's (the default is N(0, I)): Pyro's,
or torch's, which is wrapped in :class:`TorchPrior` (Pyro's programs call a distribution to sample it), or a
:class:`Prior`: a ``torch.nn.Module`` with learnable parameters whose ``forward()``
returns that distribution. ``GaussianDiffusion`` registers a :class:`Prior` as its submodule ``prior``
and with ``pyro.module("prior", ...)`` in its programs, so ``pyro.infer.SVI`` and
:func:`ppl_diffusion.train.loop.train` optimise its parameters together with the denoiser's.

The prior's term of the bound, L_T = KL(q(x_T|x_0) || p(x_T)), is scored in closed form when a KL is
registered for the pair (``torch.distributions.kl.register_kl``; here: the Gaussian priors), and by one
Monte-Carlo draw log q(x_T|x_0) − log p(x_T) otherwise, in every estimator, the evaluator and the study
(:func:`ppl_diffusion.infer.trace_terms.per_example_elbo` decides per site). Either way the ELBO stays exact in
expectation. :func:`prior_kl` gives the term with more draws, for checks.

===========================  ===================================================================
``StandardNormal``           N(0, I), fixed (the default, as a module)
``DiagonalGaussian``         N(μ, diag σ²), μ and log σ learned (analytic KL)
``StudentT``                 independent Student-t per dimension, location and log-scale learned, the
                             degrees of freedom ν fixed or learned (ν = 2 + softplus(·) > 2)
``GaussianMixture``          Σ_k π_k N(μ_k, diag σ_k²), weights, means and log-scales learned
``FlowPrior``                N(0, I) pushed through Pyro's affine autoregressive transforms
                             (``pyro.distributions.transforms``) in the MAF direction, learned
===========================  ===================================================================

:func:`make_prior` builds one by name (the ``--prior`` flag of ``ppl-diffusion train``);
:func:`check_prior` is the validation every prior passes, with one-line errors; :func:`as_prior` wraps a torch
distribution; :func:`prior_draws` draws x_T of sample i from any prior as a function of (seed, i) (the sampler's and
the ODE's x_T).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import Tensor, nn
from torch.distributions import kl_divergence, register_kl

from . import noise

__all__ = ["PRIORS", "DiagonalGaussian", "FlowPrior", "GaussianMixture", "Prior", "StandardNormal", "StudentT",
           "TorchPrior", "as_prior", "check_prior", "make_prior", "prior_draws", "prior_kl"]


def check_event_shape(event_shape, *, allow_empty: bool = False) -> tuple[int, ...]:
    """``event_shape``, the shape of one example, as a tuple of positive ints; an int ``n`` is ``(n,)``, as NumPy
    and PyTorch read a shape. Anything else is a one-line ``ValueError`` naming it."""
    shape = (event_shape,) if isinstance(event_shape, int) and not isinstance(event_shape, bool) else event_shape
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if (shape is None or (not shape and not allow_empty)
            or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in shape)):
        raise ValueError(f"event_shape = {event_shape!r}; pass the shape of one example as positive integers, "
                         "e.g. (2,) (or 2) for vectors, (1, 8, 8) for images")
    return tuple(int(s) for s in shape)


class Prior(nn.Module):
    """A learnable p(x_T): ``forward()`` returns a Pyro distribution with ``event_shape`` and batch shape ().

    Subclass it and define :meth:`forward`; ``GaussianDiffusion(prior=...)`` registers the module, so its
    parameters train with the denoiser's.

    :param event_shape: the shape of one example (e.g. ``(2,)``, or ``2``, or ``(1, 8, 8)``).

    Example: a Laplace prior with a learned scale.

    >>> import torch, pyro.distributions as dist
    >>> class Laplace(Prior):
    ...     def __init__(self, event_shape):
    ...         super().__init__(event_shape)
    ...         self.log_scale = torch.nn.Parameter(torch.zeros(self.event_shape))
    ...     def forward(self):
    ...         return dist.Laplace(torch.zeros(self.event_shape), self.log_scale.exp()).to_event(1)
    >>> prior = Laplace(2)
    >>> prior.event_shape, prior.dim, check_prior(prior, (2,)).event_shape
    (torch.Size([2]), 2, torch.Size([2]))
    """

    def __init__(self, event_shape: Sequence[int] | int) -> None:
        super().__init__()
        try:
            event_shape = check_event_shape(event_shape)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: {e}") from None
        self.event_shape = torch.Size(event_shape)
        self.dim = math.prod(event_shape)

    def _device_dtype(self):
        p = next(self.parameters(), None)
        b = next(self.buffers(), None)
        ref = p if p is not None else b
        return (ref.device, ref.dtype) if ref is not None else (torch.device("cpu"), torch.get_default_dtype())

    def forward(self) -> dist.Distribution:  # pragma: no cover - abstract
        """The distribution p(x_T) at the current parameters: event shape ``event_shape``, batch shape ()."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"event_shape={tuple(self.event_shape)}"


class StandardNormal(Prior):
    r"""N(0, I) over the event, with no parameters (the default prior, as a module).

    .. math::

        p(x_T) = \mathcal{N}(x_T; 0, I).

    :param event_shape: the shape of one example.

    >>> import math, torch
    >>> p = StandardNormal((2,))()
    >>> p.event_shape, round(float(p.log_prob(torch.zeros(2))), 4) == round(-math.log(2 * math.pi), 4)
    (torch.Size([2]), True)
    """

    def __init__(self, event_shape: Sequence[int]) -> None:
        super().__init__(event_shape)
        self.register_buffer("zero", torch.zeros(()), persistent=False)

    def forward(self) -> dist.Distribution:
        loc = self.zero.expand(self.event_shape)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(len(self.event_shape))


class DiagonalGaussian(Prior):
    r"""N(μ, diag σ²) with μ and log σ learned per dimension; starts at N(0, I). Its KL to q(x_T|x_0) is analytic.

    .. math::

        p(x_T) = \mathcal{N}(x_T; \mu, \operatorname{diag} \sigma^2).

    :param event_shape: the shape of one example.

    >>> import torch
    >>> prior = DiagonalGaussian((1, 2, 2))
    >>> sum(p.numel() for p in prior.parameters())  # μ and log σ per dimension
    8
    >>> kl = torch.distributions.kl_divergence(prior(), StandardNormal((1, 2, 2))())
    >>> float(kl.detach())  # it starts at N(0, I)
    0.0
    """

    def __init__(self, event_shape: Sequence[int]) -> None:
        super().__init__(event_shape)
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(len(self.event_shape))


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class StudentT(Prior):
    """Independent Student-t per dimension: location and log-scale learned; ``df`` ν fixed (a number) or,
    with ``learn_df=True``, learned from that start as ν = 2 + softplus(ρ) (> 2: finite variance).

    Heavier tails than N(0, I); the KL to q(x_T|x_0) has no closed form and is scored by Monte Carlo.

    :param event_shape: the shape of one example.
    :param float df: ν (> 0, or > 2 when learned).
    :param bool learn_df: learn ν from ``df``.

    >>> prior = StudentT((2,), df=5.0, learn_df=True)
    >>> round(prior.df.item(), 4), prior().event_shape
    (5.0, torch.Size([2]))
    """

    def __init__(self, event_shape: Sequence[int], df: float = 5.0, learn_df: bool = False) -> None:
        super().__init__(event_shape)
        if not (isinstance(df, (int, float)) and df > (2.0 if learn_df else 0.0)):
            raise ValueError(f"StudentT(df={df!r}): the degrees of freedom must be > 0 (> 2 when learned)")
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))
        self.learn_df = learn_df
        if learn_df:
            self.df_raw = nn.Parameter(torch.tensor(_inverse_softplus(df - 2.0)))
        else:
            self.register_buffer("df_fixed", torch.tensor(float(df)))

    @property
    def df(self) -> torch.Tensor:
        """ν, a 0-d tensor (differentiable when learned)."""
        return 2.0 + F.softplus(self.df_raw) if self.learn_df else self.df_fixed

    def forward(self) -> dist.Distribution:
        df = self.df.expand(self.event_shape)
        return dist.StudentT(df, self.loc, self.log_scale.exp()).to_event(len(self.event_shape))

    def extra_repr(self) -> str:
        return f"event_shape={tuple(self.event_shape)}, df={self.df.item():.3g}, learn_df={self.learn_df}"


class GaussianMixture(Prior):
    r"""Σ_k π_k N(μ_k, diag σ_k²) with K components: logits of π, means and log-scales learned. The means
    start at small random offsets (``init_scale``) so that the components can separate; scales at 1.

    .. math::

        p(x_T) = \sum_{k=1}^K \pi_k \mathcal{N}(x_T; \mu_k, \operatorname{diag} \sigma_k^2).

    :param event_shape: the shape of one example.
    :param int components: K.
    :param float init_scale: the standard deviation of the initial means.
    :param torch.Generator generator: draws the initial means (default: torch's global generator).

    Example: with equal weights and unit scales at the start, the density is the average of the K Gaussians'.

    >>> import torch
    >>> prior = GaussianMixture((2,), components=3, generator=torch.Generator().manual_seed(0))
    >>> x = torch.zeros(2)
    >>> components = torch.distributions.Normal(prior.locs, 1.0).log_prob(x).sum(-1)  # [3]
    >>> bool(torch.isclose(prior().log_prob(x), components.exp().mean().log()))
    True
    """

    def __init__(self, event_shape: Sequence[int], components: int = 4, init_scale: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(event_shape)
        if isinstance(components, bool) or not isinstance(components, int) or components < 1:
            raise ValueError(f"GaussianMixture(components={components!r}): pass a positive integer")
        self.components = components
        self.logits = nn.Parameter(torch.zeros(components))
        self.locs = nn.Parameter(init_scale * torch.randn((components, *self.event_shape), generator=generator))
        self.log_scales = nn.Parameter(torch.zeros((components, *self.event_shape)))

    def forward(self) -> dist.Distribution:
        comp = dist.Normal(self.locs, self.log_scales.exp()).to_event(len(self.event_shape))
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), comp)

    def extra_repr(self) -> str:
        return f"event_shape={tuple(self.event_shape)}, components={self.components}"


class FlowPrior(Prior):
    """N(0, I) pushed through ``layers`` of Pyro's learnable affine autoregressive transforms over the flattened
    D dimensions (the order of the dimensions reversed between layers), reshaped to the event shape.

    The transforms are used in the masked-autoregressive (MAF) direction: the *density* log p(x_T) is one pass
    of each autoregressive net (``T.affine_autoregressive(...).inv`` maps x_T to the base), and *sampling* x_T
    takes D sequential passes. The bound needs the density at every step (L_T scored by Monte Carlo: no KL to
    q(x_T|x_0) is registered) and samples only at generation; the IAF direction measured 40× slower per
    density (90 ms against 2.3 ms for D = 64, batch 128, with the gradient). (Pyro's ``spline_coupling`` was
    tried and left out: its density integrated to 0.87–1.05 on fine grids in 2-D, not to 1.)

    :param event_shape: the shape of one example.
    :param int layers: the number of autoregressive transforms.
    :param int hidden: the autoregressive nets' hidden width (default max(16, 2 D)).

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> p = FlowPrior((1, 2, 2), layers=2)()
    >>> p.event_shape, p.sample().shape, p.log_prob(torch.zeros(3, 1, 2, 2)).shape
    (torch.Size([1, 2, 2]), torch.Size([1, 2, 2]), torch.Size([3]))
    """

    def __init__(self, event_shape: Sequence[int], layers: int = 2, hidden: int | None = None) -> None:
        super().__init__(event_shape)
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"FlowPrior(layers={layers!r}): pass a positive integer")
        hidden = hidden or max(16, 2 * self.dim)
        self.layers = layers
        self.transforms = nn.ModuleList(T.affine_autoregressive(self.dim, hidden_dims=[hidden, hidden])
                                        for _ in range(layers))
        self.register_buffer("zero", torch.zeros(()), persistent=False)
        self.register_buffer("perm", torch.arange(self.dim - 1, -1, -1), persistent=False)

    def forward(self) -> dist.Distribution:
        loc = self.zero.expand(self.dim)
        parts = []
        for i, transform in enumerate(self.transforms):
            if i:
                parts.append(T.Permute(self.perm))
            parts.append(transform.inv)  # MAF: log_prob in one pass
        if len(self.event_shape) > 1:
            parts.append(T.ReshapeTransform((self.dim,), tuple(self.event_shape)))
        return dist.TransformedDistribution(dist.Normal(loc, torch.ones_like(loc)).to_event(1), parts)

    def extra_repr(self) -> str:
        return f"event_shape={tuple(self.event_shape)}, layers={self.layers}"


#: The priors by name (``--prior``), each a class or factory of ``event_shape``.
PRIORS = {"normal": StandardNormal, "gaussian": DiagonalGaussian, "student-t": StudentT,
          "student-t-learned-df": lambda shape: StudentT(shape, learn_df=True), "mixture": GaussianMixture,
          "flow": FlowPrior}


def make_prior(name: str, event_shape: Sequence[int]) -> Prior:
    """The prior called ``name`` (a key of :data:`PRIORS`) over ``event_shape``, with default settings.

    :param str name: a key of :data:`PRIORS`.
    :param event_shape: the shape of one example.
    :raises ValueError: for an unknown name, listing the known ones.

    >>> make_prior("student-t-learned-df", (2,))
    StudentT(event_shape=(2,), df=5, learn_df=True)
    """
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of {list(PRIORS)}")
    return PRIORS[name](tuple(event_shape))


class TorchPrior(dist.TorchDistribution):
    """A ``torch.distributions.Distribution`` (not a Pyro one) as a Pyro distribution, delegating to it.

    Pyro's programs sample a site by calling its distribution and expand it to the data plate with Pyro's
    methods, which torch's own distributions lack (sampling from the model failed deep in Pyro with "object is
    not callable"); ``GaussianDiffusion(prior=...)`` wraps a torch distribution in this (:func:`as_prior`). Its
    density, draws (reparameterised where the wrapped one's are) and moments are the wrapped distribution's, and
    a KL registered for it is used: ``kl_divergence(q, TorchPrior(p)) = kl_divergence(q, p)``, so the prior
    term stays analytic where it was.

    :param torch.distributions.Distribution base: the wrapped distribution.

    Example: torch's Normal wrapped keeps its analytic KL.

    >>> import torch
    >>> base = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), 2.0), 1)
    >>> q = torch.distributions.Independent(torch.distributions.Normal(torch.ones(2), 1.0), 1)
    >>> prior = TorchPrior(base)
    >>> prior.event_shape, bool(torch.distributions.kl_divergence(q, prior) == torch.distributions.kl_divergence(q, base))
    (torch.Size([2]), True)
    """

    arg_constraints: dict = {}

    def __init__(self, base: torch.distributions.Distribution) -> None:
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def has_rsample(self) -> bool:
        """Whether the wrapped distribution has reparameterised draws."""
        return self.base.has_rsample

    @property
    def support(self):
        """The wrapped distribution's support."""
        return self.base.support

    @property
    def mean(self):
        """The wrapped distribution's mean."""
        return self.base.mean

    @property
    def variance(self):
        """The wrapped distribution's variance."""
        return self.base.variance

    def sample(self, sample_shape=torch.Size()):
        """A draw of the wrapped distribution, ``[*sample_shape x *batch_shape x *event_shape]``."""
        return self.base.sample(sample_shape)

    def rsample(self, sample_shape=torch.Size()):
        """A reparameterised draw of the wrapped distribution."""
        return self.base.rsample(sample_shape)

    def log_prob(self, value):
        """The wrapped distribution's log-density at ``value``."""
        return self.base.log_prob(value)

    def entropy(self):
        """The wrapped distribution's entropy."""
        return self.base.entropy()

    def expand(self, batch_shape, _instance=None):
        """The wrapped distribution expanded to ``batch_shape`` (Pyro's expansion where torch's has none)."""
        try:  # torch's own distributions expand; then the KL registered for them still applies
            return TorchPrior(self.base.expand(batch_shape))
        except NotImplementedError:
            return super().expand(batch_shape)

    def __repr__(self) -> str:
        return f"TorchPrior({self.base!r})"


@register_kl(torch.distributions.Distribution, TorchPrior)
def _kl_to_torch_prior(q, p):
    return kl_divergence(q, p.base)


def as_prior(prior):
    """``prior`` as ``GaussianDiffusion`` keeps it: a :class:`Prior` module or a Pyro distribution unchanged, a
    torch (not Pyro) distribution wrapped in :class:`TorchPrior`; a class instead of an instance is a one-line
    ``TypeError`` saying to pass an instance.

    >>> import torch
    >>> as_prior(torch.distributions.Normal(0.0, 1.0))
    TorchPrior(Normal(loc: 0.0, scale: 1.0))
    """
    if isinstance(prior, type):
        example = f"{prior.__name__}(event_shape)" if issubclass(prior, Prior) else f"{prior.__name__}(...)"
        raise TypeError(f"prior is the class {prior.__name__}; pass an instance, e.g. prior={example}")
    if isinstance(prior, torch.distributions.Distribution) and not isinstance(prior, TorchDistributionMixin):
        return TorchPrior(prior)
    return prior


def check_prior(prior, event_shape) -> dist.Distribution:
    """Validate ``prior`` (a :class:`Prior` or a distribution) for examples of ``event_shape``; return its
    distribution. One-line ``TypeError`` / ``ValueError`` naming what is wrong and the fix.

    :param prior: a :class:`Prior` module or a distribution.
    :param event_shape: the data's event shape, or ``None`` to skip that check.
    :rtype: pyro.distributions.Distribution

    >>> import torch, pyro.distributions as dist
    >>> check_prior(dist.Normal(torch.zeros(2), 1.0).to_event(1), (2,)).event_shape
    torch.Size([2])
    >>> check_prior(dist.Normal(torch.zeros(2), 1.0), (2,))
    Traceback (most recent call last):
    ...
    ValueError: prior has batch shape (2,); it must be () ...
    """
    d = prior() if isinstance(prior, nn.Module) else prior
    if not isinstance(d, torch.distributions.Distribution):
        raise TypeError(f"prior must be a distribution over x_T (Pyro's, or torch's: it is wrapped) or a "
                        f"ppl_diffusion.priors.Prior module, got {type(d).__name__}; for a density of your own, "
                        "subclass pyro.distributions.TorchDistribution with log_prob and rsample (or sample)")
    if isinstance(prior, nn.Module) and not isinstance(d, TorchDistributionMixin):
        raise TypeError(f"{type(prior).__name__}.forward() returned the torch distribution {type(d).__name__}; "
                        f"return Pyro's (pyro.distributions.{type(d).__name__}, the same with what Pyro's programs "
                        "need), or wrap it: ppl_diffusion.priors.TorchPrior(d)")
    if type(d).log_prob is torch.distributions.Distribution.log_prob:
        raise TypeError(f"prior {type(d).__name__} has no log_prob; the bound needs log p(x_T): implement "
                        "log_prob (and rsample for a Monte-Carlo KL)")
    if tuple(d.batch_shape) != ():
        raise ValueError(f"prior has batch shape {tuple(d.batch_shape)}; it must be () (the model adds the data "
                         f"plate): use .to_event({len(d.batch_shape)}) to make those dimensions the event")
    if event_shape is not None and tuple(d.event_shape) != tuple(event_shape):
        raise ValueError(f"prior has event shape {tuple(d.event_shape)} but the data's event shape is "
                         f"{tuple(event_shape)}; use .to_event(...) so that the prior's event is one example")
    return d


def prior_kl(q: dist.Distribution, p: dist.Distribution, draws: int = 64) -> tuple[torch.Tensor, bool]:
    r"""KL(q || p) per batch element: (value, analytic). Closed form if registered, else the mean of ``draws``
    Monte-Carlo draws of log q(z) − log p(z), z ~ q.

    .. math::

        \mathrm{KL}(q \,\|\, p) \approx \frac{1}{S} \sum_{s=1}^S \big[\log q(z_s) - \log p(z_s)\big],
        \quad z_s \sim q \text{ (when no closed form is registered).}

    :param q: the guide's q(x_T|x_0), batch shape ``[B]``.
    :param p: the prior p(x_T).
    :param int draws: S, the Monte-Carlo draws.
    :returns: (KL ``[B]`` in nats, whether it is analytic).

    >>> import torch, pyro.distributions as dist
    >>> q = dist.Normal(torch.zeros(4, 2), 1.0).to_event(1)
    >>> kl, analytic = prior_kl(q, StandardNormal((2,))())
    >>> kl.shape, analytic, float(kl.abs().max())
    (torch.Size([4]), True, 0.0)
    >>> _ = torch.manual_seed(0)
    >>> kl, analytic = prior_kl(q, StudentT((2,), df=5.0)(), draws=1000)
    >>> analytic, bool(((kl > 0) & (kl < 0.1)).all())
    (False, True)
    """
    try:
        return torch.distributions.kl_divergence(q, p), True
    except NotImplementedError:
        z = q.rsample((draws,)) if q.has_rsample else q.sample((draws,))
        return (q.log_prob(z) - p.log_prob(z)).mean(0), False


def prior_draws(prior, seed: int, index, t: int, device, dtype) -> Tensor:
    """x_T ``[len(index) x *event]`` from a prior without a location-scale form (Student-t, mixture, flow):
    example i drawn by torch's generator seeded with the counter key of (seed, index[i], t, SAMPLE), so each
    draw depends on its index alone. Torch's global generator is left as it was.

    :param prior: the prior distribution (any with ``sample``).
    :param int seed: the run's seed.
    :param index: the samples' indices ``[N]``.
    :param int t: the step coordinate of the key (T for x_T).
    :param device: the result's device.
    :param dtype: the result's dtype.

    >>> import torch
    >>> p = StudentT((2,))()
    >>> x = prior_draws(p, 0, [0, 1, 2], 10, "cpu", torch.float32)
    >>> x.shape, bool((prior_draws(p, 0, [2], 10, "cpu", torch.float32)[0] == x[2]).all())
    (torch.Size([3, 2]), True)
    """
    keys = noise.key(seed, np.asarray(index), t, noise.SAMPLE)
    devices = [device] if torch.device(device).type == "cuda" else []
    rows = []
    with torch.random.fork_rng(devices=devices):
        for k in keys.tolist():
            torch.manual_seed(k & (2 ** 63 - 1))
            rows.append(prior.sample())
    return torch.stack(rows).to(device=device, dtype=dtype)
