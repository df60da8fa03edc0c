"""GaussianDiffusion: DDPM written as a Pyro model and guide (a VAE whose latent is x_1..x_T).

Site names. In the full-chain programs the latent at step t is the site ``f"x_{t}"``; with T = 1000
the model samples ``x_1000``, ``x_999``, …, ``x_1`` and observes ``x_0``. Every site lies in the plate
``"data"`` over the batch; the data dimensions are the site's event (``.to_event``).

=====================  ============================================================================
``model(x0)``          p(x_T) ∏_{t=2..T} p(x_{t−1}|x_t, θ) · p(x_0|x_1, θ), ``x_0`` observed.
                       ``model(None, n=…)`` generates n examples; :meth:`GaussianDiffusion.sample` returns them.
``guide(x0)``          the forward chain ∏_{t=1..T} q(x_t|x_{t−1}); no parameters.
``posterior_guide``    the same joint in posterior order: q(x_T|x_0) ∏_{t=T..2} q(x_{t−1}|x_t, x_0).
``step_model``,        a one-step pair for a per-example step t (sites ``x_T``, ``x_t``, ``x_prev``,
``step_guide``         ``x_0``): the programs the stochastic-timestep estimator scores.
=====================  ============================================================================

The full-chain programs accept Pyro's vectorized particles (``vectorize_particles=True``): values then
carry extra leading batch dimensions ``[K x B x ...]`` and the denoiser is called on one flattened batch,
so ``RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)`` is the
importance-weighted bound per example in one pass.

The reverse step is p(x_{t−1}|x_t, θ) = N(μ_θ(x_t, t), σ_t² I) with DDPM's
μ_θ = (x_t − β_t/√(1 − ᾱ_t) · ε̂_θ(x_t, t)) / √α_t and σ_t² fixed by ``variance``:
``"beta"`` σ_t² = β_t, ``"posterior"`` σ_t² = β̃_t (β̃_2 at t = 1, where β̃_1 = 0), or fitted to the
trained mean in closed form (:mod:`ppl_diffusion.variance`). The decoder p(x_0|x_1) uses μ_θ(x_1, 1)
and σ_1².

**A learned forward process** (VDM; docs/variational.md). ``schedule`` may be a γ schedule
(:mod:`ppl_diffusion.gamma`, a ``torch.nn.Module``) instead of a NoiseSchedule: with ``T >= 2`` the chain's β_t
follow from γ at the steps' times (x_t at (t − 1)/(T − 1): the decoder's x_1 at γ_0, the prior's x_T at γ_1), every
program above keeps its sites, and the schedule is a submodule registered with ``pyro.module("schedule", ...)`` in
the model *and* the guides, so ``pyro.infer.SVI(diffusion.model, diffusion.guide, ...)`` trains the forward process
with the reverse one. With ``T = 0`` the model is in continuous time: its programs are ``continuous_model`` /
``continuous_guide`` (sites ``x_T``, ``x_1``, ``x_0``, ``x_t`` and the factor ``diffusion``) for
:class:`~ppl_diffusion.infer.continuous_elbo.ContinuousTimeELBO`. The net is conditioned on the step label t (``time_input="step"``,
as today) or on γ rescaled (``"gamma"``: 1000 (γ − γ_lo)/(γ_hi − γ_lo), VDM's), the default for γ schedules: the
continuous-time ELBO is then unchanged by the schedule's interior.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn

from . import closed_forms as cf
from .distributions import ForwardStepNormal, make_decoder, uses_denoiser
from .gamma import GAMMA_LABEL_SCALE, TIME_INPUTS, GammaChain, GammaSchedule, check_forward_process  # noqa: F401
from .nets.remat import check_checkpointing, checkpoint_call
from .precision import autocast, check_precision
from .schedule import NoiseSchedule

__all__ = ["LEARNED_VARIANCES", "VARIANCES", "DiffusionInputError", "GaussianDiffusion"]


def _concat(a, b):
    """``a`` and ``b`` end to end, for NumPy arrays, tensors and JAX arrays alike."""
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b])
    if torch.is_tensor(a):
        return torch.cat([a, b])
    import jax.numpy as jnp

    return jnp.concatenate([a, b])


#: Fixed reverse variances σ_t² by name (``variance=...``), each a map from a schedule to log σ_t², a float64 array
#: of length T (a tensor for a γ chain). ``"beta"`` β_t, ``"posterior"`` β̃_t (β̃_2 at t = 1), ``"fixed-large"``
#: β_t with β̃_2 at t = 1.
VARIANCES = {
    "beta": lambda s: s.log_betas,
    "posterior": lambda s: s.posterior_log_variance_clipped,
    # improved DDPM's (and DDPM's code's) FIXED_LARGE: β_t for t >= 2, but β̃_2 at the decoder (t = 1), as "posterior"
    "fixed-large": lambda s: _concat(s.posterior_log_variance_clipped[:1], s.log_betas[1:]),
}
#: Learned reverse variances by name (``variance=...``), each the fraction f(v) of the denoiser's variance output v
#: in log σ_t² = f log β_t + (1 − f) log β̃_t (β̃ clipped at t = 1); read in ``p_mean_variance``.
LEARNED_VARIANCES = {
    "learned": lambda v: torch.sigmoid(2.0 * v),  # ours: = (v + 1)/2 to first order, kept inside [β̃_t, β_t]
    "learned-range": lambda v: (v + 1.0) / 2.0,  # improved DDPM's LEARNED_RANGE exactly (unbounded for |v| > 1)
}


class DiffusionInputError(ValueError):
    """Bad input to a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` program (the data's shape or values, the denoiser's output): a
    ``ValueError`` whose message stays one line when raised inside a Pyro program. (Pyro's trace re-raises a
    ``ValueError`` with its table of the sites' shapes appended; these messages name the shapes themselves.)

    :param str message: the message; only its first line is kept.

    >>> str(DiffusionInputError("x0 has shape (3,)\\nTrace Shapes: ..."))
    'x0 has shape (3,)'
    """

    def __init__(self, message: str) -> None:
        super().__init__(str(message).split("\n", 1)[0])


class GaussianDiffusion(nn.Module):
    r"""DDPM as a latent-variable model with Pyro callables ``model``, ``guide``, ``posterior_guide``.

    The model is the reverse chain and the guides the forward one (a VAE whose latent is x_1..x_T):

    .. math::

        p_\theta(x_{0:T}) = p(x_T) \prod_{t=2}^{T} \mathcal{N}\big(x_{t-1}; \mu_\theta(x_t, t), \sigma_t^2 I\big)
            \; p_\theta(x_0 \mid x_1), \qquad
        q(x_{1:T} \mid x_0) = \prod_{t=1}^{T} \mathcal{N}\big(x_t; \sqrt{1 - \beta_t}\, x_{t-1}, \beta_t I\big),

    with :math:`\mu_\theta(x_t, t) = (x_t - \beta_t/\sqrt{1 - \bar\alpha_t}\, \hat\varepsilon_\theta(x_t, t))/\sqrt{\alpha_t}`,
    so that ``pyro.infer.SVI`` maximises the ELBO :math:`\mathbb{E}_q[\log p_\theta(x_{0:T}) - \log q(x_{1:T} \mid x_0)]
    \le \log p_\theta(x_0)`. Data are batches ``[B x *event_shape]``; the sites are listed in
    :mod:`ppl_diffusion.diffusion`.

    :param schedule: the forward process: a :class:`~ppl_diffusion.schedule.NoiseSchedule` (the chain's β_1..β_T), or a γ schedule
        (:class:`~ppl_diffusion.gamma.GammaSchedule`, fixed or learned; a submodule, registered in the programs as
        ``pyro.module("schedule", ...)``), which needs ``T``.
    :param int T: with a γ schedule, the chain's number of steps T >= 2 (x_t at γ((t − 1)/(T − 1))), or 0 for
        continuous time (:meth:`continuous_model`); with a NoiseSchedule, omitted (or its own T).
    :param str time_input: what the denoiser is given as its second argument: ``"step"`` the step label t
        (``LongTensor[B]`` in 1..T; the only choice for a NoiseSchedule) or ``"gamma"`` γ(t) rescaled,
        1000 (γ − γ_lo)/(γ_hi − γ_lo) (a float tensor, VDM's; the default for a γ schedule, and needed for T = 0).
    :param tuple gamma_range: (γ_lo, γ_hi) of the ``"gamma"`` label, fixed at construction (default: the schedule's
        endpoints then), so that a learned schedule's net sees the same label for the same γ throughout training.
    :param torch.nn.Module denoiser: ``denoiser(x_t, t) -> ε̂`` with ``x_t`` of shape ``[B x ...]``,
        ``t`` a ``LongTensor[B]`` of steps in 1..T (or the float labels of ``time_input="gamma"``), and ``ε̂`` of
        the shape of ``x_t``.
    :param tuple event_shape: shape of one example, e.g. ``(2,)`` (or ``2``) or ``(1, 8, 8)``; taken from
        ``prior`` when omitted.
    :param prior: p(x_T): any Pyro distribution with event shape ``event_shape`` (a torch one is wrapped in
        :class:`~ppl_diffusion.priors.TorchPrior`), or a learnable :class:`ppl_diffusion.priors.Prior` module (a
        submodule; its parameters train with the denoiser's); default N(0, I). Its term KL(q(x_T|x_0) || p(x_T))
        is analytic where a closed form is registered, Monte Carlo otherwise.
    :param decoder: p(x_0|x_1): ``"gaussian"`` (default), ``"discretized"`` (256 bins on [−1, 1]),
        ``"vdm-categorical"`` (VDM's categorical over the 256 values, from x_1/α_1 without a denoiser call) or a
        decoder object (see :mod:`ppl_diffusion.distributions`).
    :param variance: ``"beta"`` (σ_t² = β_t), ``"posterior"`` (σ_t² = β̃_t), ``"learned"`` (improved DDPM:
        log σ_t² = f log β_t + (1 − f) log β̃_t with f = sigmoid(2 v), v the denoiser's second half of
        channels, so σ_t² stays between β̃_t and β_t; the denoiser must output twice the data's channels,
        e.g. ``UNet(learn_sigma=True)``, ``MLPDenoiser(learn_sigma=True)``), ``"learned-range"`` (improved DDPM's
        own f = (v + 1)/2, for its checkpoints), ``"fixed-large"`` (improved DDPM's FIXED_LARGE: β_t, with β̃_2 at
        t = 1), or a
        :class:`~ppl_diffusion.variance.FittedVariance`: the ELBO-optimal σ_t² for the trained mean,
        fitted on training data (:func:`~ppl_diffusion.variance.fit_variance`; see :meth:`with_variance`).
    :param str precision: ``"fp32"`` (default) or ``"bf16"``: the denoiser's call runs under bfloat16 autocast
        and its output is cast back to the data's dtype; everything else stays in float32 / float64
        (:mod:`ppl_diffusion.precision`).
    :param str checkpoint_activations: ``"none"`` (default), ``"steps"`` or ``"blocks"``
        (:mod:`ppl_diffusion.nets.remat`): with ``"steps"`` the full-chain :meth:`model` recomputes each step's
        denoiser call in the backward pass instead of keeping its activations (``torch.utils.checkpoint``), so a
        full-chain gradient (``Trace_ELBO``, ``TraceMeanField_ELBO``, IWAE) keeps T calls' inputs and outputs, not
        T calls' activations; ``"blocks"`` also recomputes each block inside a U-Net in every program (the net's
        ``use_checkpoint``; refused for a net without one). Memory and time change, the numbers do not (the
        gradients equal the stored path's bit for bit on a CPU, dropout masks included). A settable attribute.

    Example: the analytic-KL ELBO of a batch and its gradient (``pyro.infer.SVI(diffusion.model,
    diffusion.posterior_guide, optim, pyro.infer.TraceMeanField_ELBO())`` trains with it), then ancestral samples.

    >>> import pyro, torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
    ...                               event_shape=(2,))
    >>> x0 = torch.randn(4, 2)
    >>> loss = pyro.infer.TraceMeanField_ELBO().differentiable_loss(diffusion.model, diffusion.posterior_guide, x0)
    >>> loss.backward()  # loss: −ELBO in nats, summed over the batch
    >>> diffusion.denoiser.out[-1].weight.grad.shape
    torch.Size([2, 16])
    >>> diffusion.T, diffusion.num_dims, diffusion.sample(3).shape
    (10, 2, torch.Size([3, 2]))
    """

    def __init__(
        self,
        *,
        schedule: NoiseSchedule | GammaSchedule,
        denoiser: nn.Module,
        event_shape: tuple[int, ...] | None = None,
        prior: dist.Distribution | None = None,
        decoder="gaussian",
        variance: str = "beta",
        precision: str = "fp32",
        T: int | None = None,
        time_input: str | None = None,
        gamma_range: tuple[float, float] | None = None,
        checkpoint_activations: str = "none",
    ) -> None:
        super().__init__()
        if not isinstance(schedule, (NoiseSchedule, GammaSchedule)):
            raise TypeError(f"schedule must be a NoiseSchedule or a γ schedule (ppl_diffusion.gamma), got "
                            f"{type(schedule).__name__}; build one with NoiseSchedule.linear(T) or NoiseSchedule.cosine(T)")
        T, time_input, gamma_range = self._check_forward_process(schedule, T, time_input, gamma_range, variance)
        if not isinstance(denoiser, nn.Module):
            raise TypeError(f"denoiser must be a torch.nn.Module computing denoiser(x_t, t) -> eps, "
                            f"got {type(denoiser).__name__}")
        from .variance import FittedVariance

        check_precision(precision)
        if not isinstance(variance, FittedVariance) and variance not in VARIANCES and variance not in LEARNED_VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; choose one of {sorted([*VARIANCES, *LEARNED_VARIANCES])} "
                             "or pass a FittedVariance (ppl_diffusion.variance.fit_variance)")
        from .priors import as_prior, check_event_shape, check_prior

        if event_shape is not None:
            event_shape = check_event_shape(event_shape, allow_empty=True)
        if prior is not None:
            prior = as_prior(prior)
            if event_shape is None:
                event_shape = tuple(check_prior(prior, None).event_shape)
            check_prior(prior, event_shape)
        if event_shape is None:
            raise ValueError("pass event_shape=(...), the shape of one example, or a prior with that event shape")
        self.schedule = schedule  # a GammaSchedule is a submodule (its parameters train and are checkpointed)
        self._T, self.time_input, self.gamma_range = T, time_input, gamma_range
        self.denoiser = denoiser
        self.event_shape = torch.Size(event_shape)
        self.prior = prior
        self.decoder = make_decoder(decoder)
        self.variance = variance
        self.precision = precision  # the denoiser call's arithmetic (ppl_diffusion.precision)
        self.checkpoint_activations = checkpoint_activations  # memory against time (ppl_diffusion.nets.remat)
        if isinstance(variance, FittedVariance):  # log σ_t², float64[T]; of a γ chain at its γ now (not retrained)
            self.p_log_variance = variance.log_variance(self.coefficients())
        elif variance in LEARNED_VARIANCES or self.gamma_schedule:
            self.p_log_variance = None  # read from the denoiser's output, or from the γ chain, in p_mean_variance
        else:
            self.p_log_variance = VARIANCES[variance](schedule)

    @staticmethod
    def _check_forward_process(schedule, T, time_input, gamma_range, variance):
        """(T, time_input, gamma_range) checked against the schedule; one-line errors."""
        from .variance import FittedVariance

        ends = None if isinstance(schedule, NoiseSchedule) else tuple(float(g.detach()) for g in schedule.endpoints())
        checked = check_forward_process(schedule, T, time_input, gamma_range, variance, endpoints=ends)
        if isinstance(variance, FittedVariance) and checked[0] == 0:
            raise ValueError("a FittedVariance is fitted on a chain's steps and this model is in continuous time "
                             "(T = 0): fit and use it on diffusion.with_steps(T)")
        return checked

    def with_variance(self, variance) -> "GaussianDiffusion":
        """The same model (schedule, denoiser shared, prior, decoder) with reverse variance ``variance``.

        :param variance: a name in :data:`~ppl_diffusion.diffusion.VARIANCES` or :data:`~ppl_diffusion.diffusion.LEARNED_VARIANCES`, or a
            :class:`~ppl_diffusion.variance.FittedVariance`.
        :rtype: ~ppl_diffusion.diffusion.GaussianDiffusion

        Example: σ_t² = β̃_t instead of β_t, the same denoiser.

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                               event_shape=(2,))
        >>> posterior = diffusion.with_variance("posterior")
        >>> x_t, t = torch.randn(1, 2), torch.tensor([5])
        >>> _, log_var = posterior.p_mean_variance(x_t, t)
        >>> posterior.denoiser is diffusion.denoiser, round(float(log_var[0, 0].exp()), 6) == round(
        ...     float(diffusion.schedule.posterior_variance[4]), 6)
        (True, True)
        """
        return GaussianDiffusion(schedule=self.schedule, denoiser=self.denoiser, event_shape=tuple(self.event_shape),
                                 prior=self.prior, decoder=self.decoder, variance=variance, precision=self.precision,
                                 checkpoint_activations=self.checkpoint_activations, **self._process_kwargs())

    def with_steps(self, T: int) -> "GaussianDiffusion":
        """The same model (γ schedule, denoiser and prior shared; decoder, variance, time input) as a chain of ``T``
        steps, or in continuous time for T = 0: e.g. a continuous-time model's bound or samples at finite T.

        :param int T: the chain's steps (>= 2), or 0 for continuous time.
        :rtype: ~ppl_diffusion.diffusion.GaussianDiffusion
        :raises ValueError: for a NoiseSchedule (respace it with :func:`~ppl_diffusion.respace.respace`).

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser
        >>> from ppl_diffusion.gamma import LinearGamma
        >>> _ = torch.manual_seed(0)
        >>> continuous = GaussianDiffusion(schedule=LinearGamma(), T=0, denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                                event_shape=(2,))
        >>> continuous.continuous, continuous.with_steps(10).T, continuous.with_steps(10).sample(3).shape
        (True, 10, torch.Size([3, 2]))
        """
        if not self.gamma_schedule:
            raise ValueError("with_steps re-discretises a γ schedule; a NoiseSchedule's chain has its own steps "
                             "(ppl_diffusion.respace.respace(diffusion, K) respaces it)")
        return GaussianDiffusion(schedule=self.schedule, denoiser=self.denoiser, event_shape=tuple(self.event_shape),
                                 prior=self.prior, decoder=self.decoder, variance=self.variance,
                                 precision=self.precision, T=T, time_input=self.time_input,
                                 gamma_range=self.gamma_range, checkpoint_activations=self.checkpoint_activations)

    def _process_kwargs(self) -> dict:
        return ({"T": self._T, "time_input": self.time_input, "gamma_range": self.gamma_range}
                if self.gamma_schedule else {})

    @property
    def checkpoint_activations(self) -> str:
        """What the backward pass recomputes instead of storing, ``"none"``, ``"steps"`` or ``"blocks"`` (see the
        class docstring and :mod:`ppl_diffusion.nets.remat`)."""
        return self._checkpoint_activations

    @checkpoint_activations.setter
    def checkpoint_activations(self, level: str) -> None:
        check_checkpointing(level)
        blocks = level == "blocks"
        if blocks and not isinstance(getattr(self.denoiser, "use_checkpoint", None), bool):
            raise ValueError(f"checkpoint_activations='blocks' recomputes the blocks of a U-Net (its use_checkpoint); "
                             f"this denoiser, {type(self.denoiser).__name__}, has none: use 'steps' (each step's whole "
                             "call, any net)")
        if isinstance(getattr(self.denoiser, "use_checkpoint", None), bool):
            self.denoiser.use_checkpoint = blocks
        self._checkpoint_activations = level

    @property
    def gamma_schedule(self) -> bool:
        """Whether the forward process is a γ schedule (:mod:`ppl_diffusion.gamma`) rather than a
        :class:`~ppl_diffusion.schedule.NoiseSchedule`."""
        return isinstance(self.schedule, GammaSchedule)

    @property
    def continuous(self) -> bool:
        """Whether the model is in continuous time (a γ schedule with T = 0)."""
        return self._T == 0

    def coefficients(self) -> NoiseSchedule | GammaChain:
        """The chain's coefficients: the NoiseSchedule itself (float64 numpy), or the :class:`~ppl_diffusion.gamma.GammaChain` of the γ
        schedule at the T steps (float64 tensors, differentiable in its parameters). The programs compute it once
        per run and pass it to every closed form.

        :rtype: ~ppl_diffusion.schedule.NoiseSchedule or ~ppl_diffusion.gamma.GammaChain

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser
        >>> from ppl_diffusion.gamma import LinearGamma
        >>> d = GaussianDiffusion(schedule=LinearGamma(), T=10, denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                       event_shape=(2,))
        >>> chain = d.coefficients()
        >>> type(chain).__name__, tuple(chain.alphas_cumprod.shape)
        ('GammaChain', (10,))
        """
        if not self.gamma_schedule:
            return self.schedule
        self._need_chain()
        device = next((p.device for p in self.schedule.parameters()), self._device_dtype()[0])
        return GammaChain.of(self.schedule, self._T, device=device)

    def _need_chain(self) -> None:
        if self._T == 0:
            raise ValueError("this model is in continuous time (T = 0) and has no chain of steps: score it with "
                             "ppl_diffusion.infer.ContinuousTimeELBO (continuous_model / continuous_guide), or take "
                             "a chain with diffusion.with_steps(T)")

    def log_variance_table(self, coef=None):
        """log σ_t² of a fixed variance for t = 1..T (float64 array, or tensor for a γ chain); ``None`` if learned.

        :param coef: the chain's coefficients (:meth:`coefficients`), when the caller has them.

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                               event_shape=(2,))
        >>> bool((diffusion.log_variance_table() == diffusion.schedule.log_betas).all())  # variance="beta"
        True
        """
        if self.p_log_variance is not None or self.learned_variance:
            return self.p_log_variance
        return VARIANCES[self.variance](self.coefficients() if coef is None else coef)

    # ------------------------------------------------------------------ conventions and checks
    @property
    def T(self) -> int:
        """The number of steps T, or 0 for a model in continuous time."""
        return self._T

    @property
    def num_dims(self) -> int:
        """D, the number of data dimensions of one example, the product of ``event_shape`` (for bits/dim)."""
        return int(math.prod(self.event_shape))

    def _event_dims(self) -> int:
        return len(self.event_shape)

    def _device_dtype(self):
        p = next(self.denoiser.parameters(), None)
        return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.get_default_dtype())

    def check_data(self, x0: Tensor, *, bounded: bool = True) -> Tensor:
        """Check that ``x0`` is a finite batch ``[B x *event_shape]`` of floats; raise a one-line error if not.

        ``bounded=False`` skips the discretized decoder's range [−1, 1] (the probability-flow ODE's density lives
        on all of R^D, and uniformly dequantized pixels reach ±(1 + 1/255)). Data of another floating dtype than the
        denoiser's parameters are refused where the denoiser (or a learned prior) meets them (``_check_dtype``):
        the guides, which have no parameters, take any.

        :param torch.Tensor x0: the data ``[B x *event_shape]``.
        :param bool bounded: check the discretized decoder's range [−1, 1].
        :returns: ``x0`` itself.
        :raises DiffusionInputError: for a wrong shape or non-finite values (``TypeError`` for a non-float tensor).

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                               event_shape=(2,))
        >>> diffusion.check_data(torch.zeros(3, 2)).shape
        torch.Size([3, 2])
        >>> diffusion.check_data(torch.zeros(3, 4))
        Traceback (most recent call last):
        ...
        ppl_diffusion.diffusion.DiffusionInputError: x0 has shape (3, 4); expected [B, 2] ...
        """
        if not torch.is_tensor(x0):
            raise TypeError(f"x0 must be a tensor of shape [B, {', '.join(map(str, self.event_shape))}], "
                            f"got {type(x0).__name__}")
        if not x0.is_floating_point():
            raise TypeError(f"x0 has dtype {x0.dtype}; pass float data in model space, x0.float() (8-bit images: "
                            "x / 127.5 - 1)")
        if x0.dim() != 1 + len(self.event_shape) or x0.shape[1:] != self.event_shape or x0.shape[0] < 1:
            raise DiffusionInputError(
                f"x0 has shape {tuple(x0.shape)}; expected [B, {', '.join(map(str, self.event_shape))}] "
                f"(a batch of examples of event shape {tuple(self.event_shape)})"
            )
        bad = ~torch.isfinite(x0)
        if bad.any():
            idx = tuple(int(i) for i in bad.nonzero()[0])
            raise DiffusionInputError(f"x0{list(idx)} = {x0[idx].item()}: data must be finite; drop or impute "
                                      "non-finite values before training")
        if bounded and getattr(self.decoder, "bins", None) is not None:
            out = (x0 < -1) | (x0 > 1)
            if out.any():
                idx = tuple(int(i) for i in out.nonzero()[0])
                raise DiffusionInputError(f"x0{list(idx)} = {x0[idx].item()} lies outside [-1, 1], the range of the "
                                          "discretized decoder; map 8-bit pixels v to 2 v / 255 - 1")
        return x0

    def _check_dtype(self, dtype: torch.dtype, part: str) -> None:
        """Data of ``dtype`` meeting the floating parameters of ``part`` (the denoiser, or a learned prior): a
        mismatch is refused, not cast, with a one-line ``TypeError`` naming the conversion (torch would fail deep in
        the first layer, "mat1 and mat2 must have the same dtype"). float64 end to end (``diffusion.double()`` and
        float64 data) is the exact arithmetic the tests use."""
        module = getattr(self, part)
        p = next((p for p in module.parameters() if p.is_floating_point()), None) \
            if isinstance(module, nn.Module) else None
        if p is not None and p.dtype != dtype:
            to = {torch.float32: "x0.float()", torch.float64: "x0.double()"}.get(p.dtype, f"x0.to({p.dtype})")
            whole = {torch.float32: "float", torch.float64: "double"}.get(dtype)
            model = f", or the model to the data's with diffusion.{whole}()" if whole else ""
            raise TypeError(f"the data have dtype {dtype} but the {part}'s parameters are {p.dtype}; convert the "
                            f"data: {to}{model}")

    def check_timesteps(self, t: Tensor, batch: int) -> Tensor:
        """``t`` checked to be a ``LongTensor[batch]`` of steps in 1..T; a one-line ``ValueError`` if not.

        :param torch.Tensor t: the steps.
        :param int batch: B, the batch size.
        :returns: ``t`` itself.
        """
        self._need_chain()
        if not torch.is_tensor(t) or t.dtype not in (torch.int64, torch.int32) or t.shape != (batch,):
            raise ValueError(f"t must be a LongTensor of shape ({batch},), got {t!r}")
        if ((t < 1) | (t > self.T)).any():
            bad = t[(t < 1) | (t > self.T)][0].item()
            raise ValueError(f"timestep t = {bad} is outside 1..T = 1..{self.T}")
        return t

    def _full_t(self, t: int, batch, device) -> Tensor:
        """Step ``t`` for every example: ``batch`` is the batch size or the batch shape of ``x``, which has
        extra leading dimensions when Pyro vectorizes particles (``vectorize_particles=True``)."""
        shape = (batch,) if isinstance(batch, int) else tuple(batch)
        return torch.full(shape, t, dtype=torch.long, device=device)

    def _batch_shape(self, x: Tensor) -> torch.Size:
        return x.shape[:x.dim() - self._event_dims()]

    def get_prior(self, device=None, dtype=None) -> dist.Distribution:
        """p(x_T): the given prior (a learnable :class:`~ppl_diffusion.priors.Prior`'s current distribution),
        or N(0, I) over ``event_shape`` on ``device``.

        :param device: the device of the default N(0, I).
        :param dtype: the dtype of the default N(0, I) (a learnable prior's parameters must have it).
        :rtype: pyro.distributions.Distribution

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                               event_shape=(2,))
        >>> prior = diffusion.get_prior()
        >>> prior.batch_shape, prior.event_shape
        (torch.Size([]), torch.Size([2]))
        """
        if isinstance(self.prior, nn.Module):
            if dtype is not None:
                self._check_dtype(dtype, "prior")
            return self.prior()
        if self.prior is not None:
            return self.prior
        zeros = torch.zeros(self.event_shape, device=device, dtype=dtype)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(self._event_dims())

    # ------------------------------------------------------------------ closed forms
    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor | None = None) -> Tensor:
        r"""A draw of :math:`x_t \sim q(x_t \mid x_0) = \mathcal{N}(\sqrt{\bar\alpha_t}\, x_0, (1 - \bar\alpha_t) I)`
        (Statement 1): :func:`~ppl_diffusion.closed_forms.q_sample` with this model's coefficients.

        :param torch.Tensor x0: data ``[B x *event_shape]``.
        :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.
        :param torch.Tensor eps: the noise ε (default: a fresh standard normal draw).
        :returns: x_t, of the shape of ``x0``.

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                               event_shape=(2,))
        >>> x0, eps = torch.ones(2, 2), torch.zeros(2, 2)
        >>> x_t = diffusion.q_sample(x0, torch.tensor([1, 10]), eps)  # ε = 0: the mean √ᾱ_t x_0
        >>> round(float(x_t[0, 0]) ** 2, 4) == round(float(diffusion.schedule.alphas_cumprod[0]), 4)
        True
        """
        eps = torch.randn_like(x0) if eps is None else eps
        return cf.q_sample(self.coefficients(), x0, t, eps)

    def q_posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor):
        """Mean, variance and clipped log-variance of the forward posterior q(x_{t−1}|x_t, x_0) = N(μ̃_t, β̃_t I):
        :func:`~ppl_diffusion.closed_forms.q_posterior_mean_variance` with this model's coefficients.

        :param torch.Tensor x0: data ``[B x *event_shape]``.
        :param torch.Tensor x_t: latents of the shape of ``x0``.
        :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                               event_shape=(2,))
        >>> mean, var, log_var = diffusion.q_posterior_mean_variance(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([1]))
        >>> mean.tolist(), var.tolist()  # at t = 1, x_0 itself
        ([[0.0, 0.0]], [[0.0, 0.0]])
        """
        return cf.q_posterior_mean_variance(self.coefficients(), x0, x_t, t)

    def time_label(self, t: Tensor, coef=None) -> Tensor:
        """The denoiser's second argument at steps ``t``: t itself (``time_input="step"``), or γ_t rescaled
        (``"gamma"``, :meth:`gamma_label`).

        :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.
        :param coef: the chain's coefficients (:meth:`coefficients`), when the caller has them.
        """
        if self.time_input == "step":
            return t
        coef = self.coefficients() if coef is None else coef
        return self.gamma_label(coef.gamma[t - 1])

    def gamma_label(self, gamma: Tensor) -> Tensor:
        """1000 (γ − γ_lo)/(γ_hi − γ_lo) with (γ_lo, γ_hi) = ``gamma_range``: the net's label for noise level γ
        (VDM's rescaled γ; its gradient reaches a learned schedule).

        :param torch.Tensor gamma: γ per example ``[B]``.

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser
        >>> from ppl_diffusion.gamma import LinearGamma
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=LinearGamma(-10.0, 5.0), T=0, event_shape=(2,),
        ...                               denoiser=MLPDenoiser(2, width=16, depth=1))
        >>> diffusion.gamma_range, diffusion.gamma_label(torch.tensor([-10.0, 5.0])).tolist()
        ((-10.0, 5.0), [0.0, 1000.0])
        """
        lo, hi = self.gamma_range
        return (gamma - lo) * (GAMMA_LABEL_SCALE / (hi - lo))

    @property
    def learned_variance(self) -> bool:
        """Whether σ_t² is read from the denoiser's variance output (a name in :data:`~ppl_diffusion.diffusion.LEARNED_VARIANCES`)."""
        return isinstance(self.variance, str) and self.variance in LEARNED_VARIANCES

    def denoiser_output(self, x_t: Tensor, t: Tensor, *, coef=None, label: Tensor | None = None,
                        checkpoint: bool = False) -> tuple[Tensor, Tensor | None]:
        """(ε̂_θ(x_t, t), v): the denoiser's output split, v the variance output (``None`` unless the variance
        is learned); each checked to have the shape of ``x_t``. The one call of the denoiser: with
        ``precision="bf16"`` it runs under bfloat16 autocast and its output is cast back to ``x_t``'s dtype.
        The net is given :meth:`time_label` of ``t`` (``coef``: the chain's coefficients, when the caller has
        them), or ``label`` itself when given (continuous time). ``checkpoint``: the call's activations are
        recomputed in the backward pass (:func:`~ppl_diffusion.nets.remat.checkpoint_call`), not kept.

        :param torch.Tensor x_t: latents ``[B x *event_shape]`` (or ``[K x B x *event_shape]``, vectorized particles).
        :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T (ignored when ``label`` is given).
        :returns: (ε̂, v), ε̂ of the shape of ``x_t``, v of that shape or ``None``.
        :rtype: tuple[torch.Tensor, torch.Tensor or None]
        :raises DiffusionInputError: when the denoiser's output has the wrong shape.
        """
        t = self.time_label(t, coef) if label is None else label
        if t.is_floating_point() and t.dtype != x_t.dtype:
            t = t.to(x_t.dtype)
        batch_shape = self._batch_shape(x_t)
        self._check_dtype(x_t.dtype, "denoiser")
        call = checkpoint_call if checkpoint else (lambda net, x, s: net(x, s))
        with autocast(self.precision, x_t.device.type):
            if len(batch_shape) > 1:  # vectorized particles [K x B x ...]: the denoiser sees one flat batch
                out = call(self.denoiser, x_t.reshape(-1, *self.event_shape), t.expand(batch_shape).reshape(-1))
            else:
                out = call(self.denoiser, x_t, t)
        if torch.is_tensor(out) and out.dtype != x_t.dtype and self.precision != "fp32":
            out = out.to(x_t.dtype)  # bf16 → float32: what follows (μ_θ, KLs, decoder) is float32 arithmetic
        # A learned-variance net (learn_sigma) under a fixed or fitted variance: its ε̂ half is used, its v ignored.
        two = self.learned_variance or getattr(self.denoiser, "learn_sigma", False)
        if len(batch_shape) > 1:
            k = 2 if two else 1
            out = out.reshape(*batch_shape, k * self.event_shape[0], *self.event_shape[1:]) \
                if torch.is_tensor(out) and out.numel() == k * x_t.numel() else out
        if two:
            c = x_t.shape[len(batch_shape)]
            want = (*x_t.shape[:len(batch_shape)], 2 * c, *x_t.shape[len(batch_shape) + 1:])
            if not torch.is_tensor(out) or out.shape != want:
                got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
                what = f"variance={self.variance!r}" if self.learned_variance else "a learn_sigma denoiser"
                raise DiffusionInputError(
                    f"{what}: the denoiser returned {got} for x_t of shape {tuple(x_t.shape)}; it must return ε̂ and "
                    f"v stacked on the channel axis, shape {want} (UNet(learn_sigma=True) or "
                    "MLPDenoiser(learn_sigma=True))")
            eps, v = out.split(c, dim=len(batch_shape))
            return (eps, v) if self.learned_variance else (eps, None)
        if not torch.is_tensor(out) or out.shape != x_t.shape:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise DiffusionInputError(
                f"denoiser returned {got} for x_t of shape {tuple(x_t.shape)}; denoiser(x_t, t) must return ε̂ of "
                f"the shape of x_t, {self.num_dims} values per example of event shape {tuple(self.event_shape)} "
                f"(e.g. an MLP's last layer nn.Linear(width, {self.num_dims}), reshaped to the event shape)")
        return out, None

    def predict_eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The denoiser's ε̂_θ(x_t, t), checked to have the shape of ``x_t``.

        :param torch.Tensor x_t: latents ``[B x *event_shape]``.
        :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                               event_shape=(2,))
        >>> diffusion.predict_eps(torch.randn(3, 2), torch.tensor([1, 5, 10]))  # MLPDenoiser starts at ε̂ = 0
        tensor([[0., 0.],
                [0., 0.],
                [0., 0.]], grad_fn=<ViewBackward0>)
        """
        return self.denoiser_output(x_t, t)[0]

    def predict_x0(self, x_t: Tensor, t: Tensor) -> Tensor:
        r"""The denoiser's estimate of x_0, Statement 1 solved for x_0:

        .. math::

            \hat x_0(x_t, t) = \frac{x_t - \sqrt{1 - \bar\alpha_t}\, \hat\varepsilon_\theta(x_t, t)}{\sqrt{\bar\alpha_t}}.

        :param torch.Tensor x_t: latents ``[B x *event_shape]``.
        :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                               event_shape=(2,))
        >>> x_t = torch.ones(1, 2)
        >>> x0_hat = diffusion.predict_x0(x_t, torch.tensor([3]))  # ε̂ = 0 at initialisation: x_t / √ᾱ_3
        >>> round(x0_hat[0, 0].item(), 4) == round(float(diffusion.schedule.alphas_cumprod[2] ** -0.5), 4)
        True
        """
        coef = self.coefficients()
        return cf.predict_x0_from_eps(coef, x_t, t, self.denoiser_output(x_t, t, coef=coef)[0])

    def learned_log_variance(self, v: Tensor, t: Tensor, coef=None) -> Tensor:
        """log σ_t² = f log β_t + (1 − f) log β̃_t (β̃ clipped at t = 1) with ``"learned"``'s f = sigmoid(2 v) (= (v + 1)/2
        to first order, improved DDPM's interpolation, bounded: always between log β̃_t and log β_t), or with
        ``"learned-range"``'s f = (v + 1)/2, improved DDPM's own (:data:`~ppl_diffusion.diffusion.LEARNED_VARIANCES`).

        :param torch.Tensor v: the denoiser's variance output, ``[B x *event_shape]``.
        :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.
        :param coef: the chain's coefficients (:meth:`coefficients`), when the caller has them.

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> d = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), event_shape=(2,), variance="learned",
        ...                       denoiser=MLPDenoiser(2, width=16, depth=1, learn_sigma=True))
        >>> log_var = d.learned_log_variance(torch.tensor([[-50.0, 50.0]]), torch.tensor([4]))  # f = 0 and f = 1
        >>> torch.allclose(log_var.double(), torch.tensor([d.schedule.posterior_log_variance_clipped[3],
        ...                                                d.schedule.log_betas[3]]))
        True
        """
        coef = self.coefficients() if coef is None else coef
        frac = LEARNED_VARIANCES[self.variance](v)
        log_beta = cf.extract(coef.log_betas, t, v)
        log_post = cf.extract(coef.posterior_log_variance_clipped, t, v)
        return frac * log_beta + (1.0 - frac) * log_post

    def p_mean_variance(self, x_t: Tensor, t: Tensor, *, detach_mean: bool = False, coef=None,
                        checkpoint: bool = False) -> tuple[Tensor, Tensor]:
        r"""Mean μ_θ(x_t, t) and log-variance log σ_t² of p(x_{t−1}|x_t, θ); at t = 1, the decoder's.
        ``detach_mean``: the mean without gradient (improved DDPM's hybrid loss trains only σ_t² by the bound).
        ``coef``: the chain's coefficients (:meth:`coefficients`), when the caller has them. ``checkpoint``: the
        denoiser's activations recomputed in the backward pass (:meth:`denoiser_output`).

        .. math::

            p_\theta(x_{t-1} \mid x_t) = \mathcal{N}\Big(\frac{1}{\sqrt{\alpha_t}} \Big(x_t - \frac{\beta_t}{\sqrt{1 -
            \bar\alpha_t}} \hat\varepsilon_\theta(x_t, t)\Big), \sigma_t^2 I\Big).

        :param torch.Tensor x_t: latents ``[B x *event_shape]``.
        :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.
        :returns: (mean, log-variance), each of the shape of ``x_t``.
        :rtype: tuple[torch.Tensor, torch.Tensor]

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                               event_shape=(2,))
        >>> x_t, t = torch.ones(1, 2), torch.tensor([4])
        >>> mean, log_var = diffusion.p_mean_variance(x_t, t)  # ε̂ = 0 at initialisation: μ = x_t / √α_4, σ² = β_4
        >>> s = diffusion.schedule
        >>> round(mean[0, 0].item(), 5) == round(float(s.alphas[3] ** -0.5), 5), round(log_var[0, 0].item(), 4) == round(
        ...     float(s.log_betas[3]), 4)
        (True, True)
        """
        coef = self.coefficients() if coef is None else coef
        eps, v = self.denoiser_output(x_t, t, coef=coef, checkpoint=checkpoint)
        mean = cf.p_mean_from_eps(coef, x_t, t, eps.detach() if detach_mean else eps)
        if v is not None:
            return mean, self.learned_log_variance(v, t, coef)
        log_var = cf.extract(self.log_variance_table(coef), t, x_t).expand_as(x_t)
        return mean, log_var

    def decoder_at(self, x_t: Tensor, t: Tensor, mean: Tensor | None = None, log_var: Tensor | None = None, *,
                   coef=None, checkpoint: bool = False):
        """p(x_0|x_t) of the decoder at the latent ``x_t`` of step ``t`` (the decoder's step is t = 1; at other
        steps the value is masked out by the callers): ``decoder(mean, log_var)`` with the reverse step's mean and
        log-variance (:meth:`p_mean_variance`, computed here when not given: one denoiser call), or, for a decoder
        that does not use the denoiser (``"vdm-categorical"``), ``decoder(x_t/α_t, log(σ_t²/α_t²))`` and no call
        (:func:`~ppl_diffusion.closed_forms.scaled_latent`). ``checkpoint``: the call's activations recomputed in
        the backward pass (:meth:`denoiser_output`).

        :param torch.Tensor x_t: latents ``[B x *event_shape]``.
        :param torch.Tensor t: steps ``LongTensor[B]`` (the decoder's is 1).
        :returns: the decoder's distribution, batch shape ``[B x *event_shape]``.

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                               event_shape=(2,))
        >>> p = diffusion.decoder_at(torch.zeros(3, 2), torch.ones(3, dtype=torch.long))
        >>> type(p).__name__, p.batch_shape
        ('Normal', torch.Size([3, 2]))
        """
        coef = self.coefficients() if coef is None else coef
        if not uses_denoiser(self.decoder):
            return self.decoder(*cf.scaled_latent(coef, x_t, t))
        if mean is None:
            mean, log_var = self.p_mean_variance(x_t, t, coef=coef, checkpoint=checkpoint)
        return self.decoder(mean, log_var)

    # ------------------------------------------------------------------ Pyro programs
    def model(self, x0: Tensor | None = None, n: int | None = None):
        r"""The reverse chain, a Pyro model. Sites ``x_T`` … ``x_1`` (named ``f"x_{t}"``), ``x_0`` observed when given:

        .. math::

            x_T \sim p(x_T), \quad x_{t-1} \sim \mathcal{N}(\mu_\theta(x_t, t), \sigma_t^2 I) \; (t = T..2),
            \quad x_0 \sim p_\theta(x_0 \mid x_1),

        every site in the plate ``"data"`` with the data dimensions as its event.

        :param torch.Tensor x0: observed data ``[B x *event_shape]``, or ``None`` to generate.
        :param int n: with ``x0=None``, the number of examples to generate.
        :returns: x_0 ``[B x *event_shape]`` (the observed data, or the generated examples).

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                               event_shape=(2,))
        >>> import pyro
        >>> trace = pyro.poutine.trace(diffusion.model).get_trace(torch.zeros(4, 2))
        >>> [name for name in trace.nodes if name.startswith("x_")]
        ['x_10', 'x_9', 'x_8', 'x_7', 'x_6', 'x_5', 'x_4', 'x_3', 'x_2', 'x_1', 'x_0']
        >>> trace.nodes["x_0"]["is_observed"], trace.nodes["x_5"]["fn"].event_shape
        (True, torch.Size([2]))
        """
        self._need_chain()
        self._register()
        coef = self.coefficients()
        if x0 is not None:
            x0 = self.check_data(x0)
            batch, device, dtype = x0.shape[0], x0.device, x0.dtype
        else:
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"model(None, n=...) generates n examples; got n = {n!r}, pass an int >= 1")
            batch, (device, dtype) = n, self._device_dtype()
        d, T = self._event_dims(), self.T
        remat = self.checkpoint_activations != "none"  # each step's call recomputed in the backward pass
        with pyro.plate("data", batch):
            x = pyro.sample(f"x_{T}", self.get_prior(device, dtype))
            for t in range(T, 1, -1):
                mean, log_var = self.p_mean_variance(x, self._full_t(t, self._batch_shape(x), device), coef=coef,
                                                     checkpoint=remat)
                x = pyro.sample(f"x_{t - 1}", dist.Normal(mean, torch.exp(0.5 * log_var)).to_event(d))
            return pyro.sample("x_0", self.decoder_at(x, self._full_t(1, self._batch_shape(x), device), coef=coef,
                                                      checkpoint=remat).to_event(d), obs=x0)

    def guide(self, x0: Tensor, n: int | None = None):
        r"""The forward chain, a Pyro guide: sites ``x_1`` … ``x_T`` in the forward order, for ``Trace_ELBO``:

        .. math::

            x_t \sim q(x_t \mid x_{t-1}) = \mathcal{N}\big(\sqrt{1 - \beta_t}\, x_{t-1}, \beta_t I\big), \quad t = 1..T.

        It has no parameters (unless the γ schedule is learned).

        .. warning:: Its sites are visited in the opposite order to the model's, so an analytic-KL ELBO
            (``TraceMeanField_ELBO``) would pair the wrong distributions: it is refused with a one-line error. Use
            :meth:`posterior_guide` there.

        :param torch.Tensor x0: data ``[B x *event_shape]``.
        :param n: unused (the model's signature).
        :returns: x_T ``[B x *event_shape]``.

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                               event_shape=(2,))
        >>> import pyro
        >>> x0 = torch.zeros(4, 2)
        >>> loss = pyro.infer.Trace_ELBO().differentiable_loss(diffusion.model, diffusion.guide, x0)
        >>> loss.shape, bool(torch.isfinite(loss))  # a one-sample estimate of −ELBO, summed over the batch
        (torch.Size([]), True)
        """
        x0 = self.check_data(x0)
        self._need_chain()
        coef = self._register_schedule()
        batch, d = x0.shape[0], self._event_dims()
        x = x0
        with pyro.plate("data", batch):
            for t in range(1, self.T + 1):
                mean, var = cf.q_step_mean_variance(coef, x, self._full_t(t, self._batch_shape(x), x0.device))
                x = pyro.sample(f"x_{t}", ForwardStepNormal(mean, var.sqrt()).to_event(d))
        return x

    def posterior_guide(self, x0: Tensor, n: int | None = None):
        r"""The forward joint in posterior order: q(x_T|x_0), then q(x_{t−1}|x_t, x_0) for t = T..2.

        It visits the sites in the model's order with the model's dependencies, so
        ``TraceMeanField_ELBO`` scores every latent site by its closed-form KL:

        .. math::

            x_T \sim \mathcal{N}\big(\sqrt{\bar\alpha_T}\, x_0, (1 - \bar\alpha_T) I\big), \quad
            x_{t-1} \sim \mathcal{N}\big(\tilde\mu_t(x_t, x_0), \tilde\beta_t I\big) \; (t = T..2).

        :param torch.Tensor x0: data ``[B x *event_shape]``.
        :param n: unused (the model's signature).
        :returns: x_1 ``[B x *event_shape]``.

        Example: its first site is Statement 1's q(x_T|x_0).

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                               event_shape=(2,))
        >>> import pyro
        >>> x0 = torch.ones(3, 2)
        >>> site = pyro.poutine.trace(diffusion.posterior_guide).get_trace(x0).nodes["x_10"]
        >>> torch.allclose(site["fn"].base_dist.loc, x0 * diffusion.schedule.alphas_cumprod[-1] ** 0.5)
        True
        """
        x0 = self.check_data(x0)
        self._need_chain()
        coef = self._register_schedule()
        batch, d, T = x0.shape[0], self._event_dims(), self.T
        with pyro.plate("data", batch):
            mean, var = cf.q_mean_variance(coef, x0, self._full_t(T, batch, x0.device))
            x = pyro.sample(f"x_{T}", dist.Normal(mean, var.sqrt()).to_event(d))
            for t in range(T, 1, -1):
                mean, var, _ = cf.q_posterior_mean_variance(coef, x0, x,
                                                            self._full_t(t, self._batch_shape(x), x0.device))
                x = pyro.sample(f"x_{t - 1}", dist.Normal(mean, var.sqrt()).to_event(d))
        return x

    def _step_sites(self, x0: Tensor, t: Tensor, weight: Tensor | None, is_model: bool):
        x0 = self.check_data(x0)
        batch, d, T = x0.shape[0], self._event_dims(), self.T
        t = self.check_timesteps(t, batch)
        coef = self.coefficients() if is_model else self._register_schedule()  # step_model registered it
        with pyro.plate("data", batch):
            # The prior term: KL(q(x_T|x_0) || p(x_T)), unweighted.
            mean_T, var_T = cf.q_mean_variance(coef, x0, self._full_t(T, batch, x0.device))
            q_T = dist.Normal(mean_T, var_T.sqrt()).to_event(d)
            pyro.sample("x_T", self.get_prior(x0.device, x0.dtype) if is_model else q_T)
            scale = poutine.scale(scale=weight) if weight is not None else contextlib.nullcontext()
            with scale:
                # x_t ~ q(x_t|x_0) in both programs: its term is exactly zero.
                mean, var = cf.q_mean_variance(coef, x0, t)
                x_t = pyro.sample("x_t", dist.Normal(mean, var.sqrt()).to_event(d))
                if is_model:
                    p_mean, p_log_var = self.p_mean_variance(x_t, t, coef=coef)
                    with poutine.mask(mask=t > 1):
                        pyro.sample("x_prev", dist.Normal(p_mean, torch.exp(0.5 * p_log_var)).to_event(d))
                    with poutine.mask(mask=t == 1):
                        pyro.sample("x_0", self.decoder_at(x_t, t, p_mean, p_log_var, coef=coef).to_event(d), obs=x0)
                else:
                    # At t = 1 the site is masked out; the clipped variance keeps it a valid Normal.
                    q_mean, _, q_log_var = cf.q_posterior_mean_variance(coef, x0, x_t, t)
                    with poutine.mask(mask=t > 1):
                        pyro.sample("x_prev", dist.Normal(q_mean, torch.exp(0.5 * q_log_var)).to_event(d))

    def step_model(self, x0: Tensor, t: Tensor, weight: Tensor | None = None):
        """One reverse step per example, at per-example steps ``t`` (``LongTensor[B]`` in 1..T).

        Sites: ``x_T ~ p(x_T)``; ``x_t ~ q(x_t|x_0)`` (the same distribution as in
        :meth:`step_guide`, so it cancels); for t > 1 ``x_prev ~ p(x_{t−1}|x_t, θ)``; for t = 1
        ``x_0 ~ p(x_0|x_1, θ)`` observed. ``weight[B]`` scales the step sites (``poutine.scale``):
        with weight = 1/P(t), ``Trace_ELBO`` on the pair is an unbiased Monte-Carlo estimate of the
        ELBO and ``TraceMeanField_ELBO`` the analytic-KL one.

        :param torch.Tensor x0: data ``[B x *event_shape]``.
        :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.
        :param torch.Tensor weight: per-example weights ``[B]`` of the step sites, or ``None``.

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                               event_shape=(2,))
        >>> import pyro
        >>> x0, t = torch.zeros(4, 2), torch.tensor([1, 2, 5, 10])
        >>> trace = pyro.poutine.trace(diffusion.step_model).get_trace(x0, t)
        >>> [name for name in trace.nodes if name.startswith("x_")]
        ['x_T', 'x_t', 'x_prev', 'x_0']
        >>> loss = pyro.infer.TraceMeanField_ELBO().differentiable_loss(diffusion.step_model, diffusion.step_guide,
        ...                                                             x0, t, torch.full((4,), 10.0))  # 1/P(t)
        >>> loss.shape
        torch.Size([])
        """
        self._register()
        self._step_sites(x0, t, weight, is_model=True)

    def step_guide(self, x0: Tensor, t: Tensor, weight: Tensor | None = None):
        """The pair of :meth:`step_model`: ``x_T ~ q(x_T|x_0)``, ``x_t ~ q(x_t|x_0)``,
        ``x_prev ~ q(x_{t−1}|x_t, x_0)`` (masked at t = 1).

        :param torch.Tensor x0: data ``[B x *event_shape]``.
        :param torch.Tensor t: steps ``LongTensor[B]`` in 1..T.
        :param torch.Tensor weight: per-example weights ``[B]``, as :meth:`step_model`'s.
        """
        self._step_sites(x0, t, weight, is_model=False)

    # ------------------------------------------------------------------ continuous time (T = 0, or any γ model)
    def check_continuous(self) -> None:
        """A one-line error unless the model has a continuous time: a γ schedule and a net conditioned on γ."""
        if not self.gamma_schedule or self.time_input != "gamma":
            raise ValueError("continuous time needs a γ schedule and a net conditioned on γ (time_input='gamma'); "
                             f"this model has {type(self.schedule).__name__} and time_input={self.time_input!r}")

    def check_times(self, t: Tensor, batch: int) -> Tensor:
        """``t`` checked to be a float tensor ``[batch]`` in [0, 1] (continuous time); one-line error if not.

        :param torch.Tensor t: times.
        :param int batch: B, the batch size.
        :returns: ``t`` itself.
        """
        self.check_continuous()
        if not torch.is_tensor(t) or not t.is_floating_point() or t.shape != (batch,):
            raise ValueError(f"t must be a float tensor of shape ({batch},) of times in [0, 1], got {t!r}")
        if ((t < 0) | (t > 1)).any():
            raise ValueError(f"time t = {t[(t < 0) | (t > 1)][0].item()!r} is outside [0, 1]")
        return t

    def _continuous_sites(self, x0: Tensor, t: Tensor, weight: Tensor | None, is_model: bool):
        x0 = self.check_data(x0)
        batch, d = x0.shape[0], self._event_dims()
        t = self.check_times(t, batch)

        def q_normal(gamma):  # q(x_s|x_0) = N(α_s x_0, σ_s² I) at γ(s)
            alpha, sigma = self._alpha_sigma(gamma, x0)
            return alpha, sigma, dist.Normal(alpha * x0, sigma.expand_as(x0)).to_event(d)

        g0, g1 = self.schedule.endpoints()
        g0, g1 = g0.to(x0.device), g1.to(x0.device)
        g_t, dg_t = self.schedule.gamma_and_derivative(t.to(torch.float64))
        with pyro.plate("data", batch):
            # The prior term KL(q(x_T|x_0) || p(x_T)) at γ_1.
            _, _, q_T = q_normal(g1.expand(batch))
            pyro.sample("x_T", self.get_prior(x0.device, x0.dtype) if is_model else q_T)
            # The decoder's latent x_1 ~ q(x_1|x_0) at γ_0 in both programs (its term is 0), and −log p(x_0|x_1):
            # μ = x̂_0 = (x_1 − σ_0 ε̂)/α_0 and σ² = σ_0² = sigmoid(γ_0), the chain's decoder at its first step; or,
            # for a decoder without the denoiser (VDM's categorical), x_1/α_0 and log(σ_0²/α_0²) = γ_0.
            alpha_0, sigma_0, q_1 = q_normal(g0.expand(batch))
            x_1 = pyro.sample("x_1", q_1)
            if is_model:
                if uses_denoiser(self.decoder):
                    eps_hat = self.denoiser_output(x_1, None, label=self.gamma_label(g0.expand(batch)))[0]
                    mean = (x_1 - sigma_0 * eps_hat) / alpha_0
                    log_var = torch.nn.functional.logsigmoid(g0).to(x0.dtype).expand_as(x0)
                else:
                    mean, log_var = x_1 / alpha_0, g0.to(x0.dtype).expand_as(x0)
                pyro.sample("x_0", self.decoder(mean, log_var).to_event(d), obs=x0)
            scale = poutine.scale(scale=weight) if weight is not None else contextlib.nullcontext()
            with scale:
                alpha_t, sigma_t, q_t = q_normal(g_t)
                x_t = pyro.sample("x_t", q_t)  # in both programs: its term is 0
                if is_model:
                    pyro.factor("diffusion", -self._integrand(x0, x_t, g_t, dg_t, alpha_t, sigma_t))

    def _alpha_sigma(self, gamma: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        """(α, σ) = (√sigmoid(−γ), √sigmoid(γ)) of per-example ``gamma`` ``[B]`` (float64), cast to the data's dtype
        and shaped to broadcast against ``x0`` ``[B x ...]``."""
        shape = gamma.shape + (1,) * (x0.dim() - gamma.dim())
        return (torch.sigmoid(-gamma).sqrt().to(x0.dtype).reshape(shape),
                torch.sigmoid(gamma).sqrt().to(x0.dtype).reshape(shape))

    def _integrand(self, x0: Tensor, x_t: Tensor, g_t: Tensor, dg_t: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
        """½ γ'(t) ‖ε − ε̂(x_t, γ(t))‖² per example, ε = (x_t − α_t x_0)/σ_t: the diffusion term's integrand."""
        eps = (x_t - alpha_t * x0) / sigma_t
        eps_hat = self.denoiser_output(x_t, None, label=self.gamma_label(g_t))[0]
        return 0.5 * dg_t.to(x0.dtype) * (eps - eps_hat).pow(2).sum(tuple(range(1, x0.dim())))

    def diffusion_integrand(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        r"""L(t) = ½ γ'(t) ‖ε − ε̂(x_t, γ(t))‖² per example ``[B]`` (nats) at x_t = α_t x_0 + σ_t ε: the number that
        :meth:`continuous_model`'s factor ``diffusion`` scores for the same ``x0`` ``[B x ...]``, times ``t``
        ``[B]`` in [0, 1] and noise ``eps`` (the site ``x_t`` fed ``eps``), without its other terms' network call.
        E over t ~ U[0, 1) and ε is the continuous-time diffusion term.

        .. math::

            \mathcal{L}_\infty = \tfrac12 \mathbb{E}_{t \sim U[0, 1],\, \varepsilon \sim \mathcal{N}(0, I)}
            \big[\gamma'(t)\, \lVert \varepsilon - \hat\varepsilon_\theta(x_t, \gamma(t)) \rVert^2\big].

        :param torch.Tensor x0: data ``[B x *event_shape]``.
        :param torch.Tensor t: times ``[B]`` in [0, 1].
        :param torch.Tensor eps: noise of the shape of ``x0``.
        :returns: L(t) per example ``[B]``, in nats.

        Example: with ε̂ = 0 (an untrained MLPDenoiser) and a linear γ, L(t) = ½ (γ_1 − γ_0) ‖ε‖².

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser
        >>> from ppl_diffusion.gamma import LinearGamma
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=LinearGamma(-10.0, 5.0), T=0, event_shape=(2,),
        ...                               denoiser=MLPDenoiser(2, width=16, depth=1))
        >>> eps = torch.ones(2, 2)
        >>> diffusion.diffusion_integrand(torch.zeros(2, 2), torch.tensor([0.25, 0.75]), eps).tolist()  # ½ · 15 · 2
        [15.0, 15.0]
        """
        x0 = self.check_data(x0)
        t = self.check_times(t, x0.shape[0])
        g_t, dg_t = self.schedule.gamma_and_derivative(t.to(torch.float64))
        alpha_t, sigma_t = self._alpha_sigma(g_t, x0)
        x_t = alpha_t * x0 + sigma_t * eps.to(x0.dtype)
        return self._integrand(x0, x_t, g_t, dg_t, alpha_t, sigma_t)

    def continuous_model(self, x0: Tensor, t: Tensor, weight: Tensor | None = None):
        """The continuous-time model at per-example times ``t`` (``Tensor[B]`` in [0, 1]): the ELBO's three terms.

        Sites: ``x_T ~ p(x_T)`` (its KL with the guide's q(x_T|x_0) at γ_1 is the prior term); ``x_1 ~ q(x_1|x_0)``
        at γ_0 and ``x_0 ~ p(x_0|x_1)`` observed (the reconstruction term, the decoder at γ_0); ``x_t ~ q(x_t|x_0)``
        at γ(t) and the factor ``diffusion`` = −½ γ'(t) ‖ε − ε̂(x_t, γ(t))‖², ε = (x_t − α_t x_0)/σ_t, the diffusion
        term's integrand (VDM eq. 17). ``x_1`` and ``x_t`` have the same distribution in both programs, so they
        cancel. ``weight[B]`` (1/p(t)) scales ``x_t`` and ``diffusion``; with t ~ p, ``Trace_ELBO`` /
        ``TraceMeanField_ELBO`` on the pair is an unbiased estimate of the continuous-time ELBO.

        :param torch.Tensor x0: data ``[B x *event_shape]``.
        :param torch.Tensor t: times ``[B]`` in [0, 1].
        :param torch.Tensor weight: per-example weights ``[B]``, or ``None``.

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser
        >>> from ppl_diffusion.gamma import LinearGamma
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=LinearGamma(-10.0, 5.0), T=0, event_shape=(2,),
        ...                               denoiser=MLPDenoiser(2, width=16, depth=1))
        >>> import pyro
        >>> trace = pyro.poutine.trace(diffusion.continuous_model).get_trace(torch.zeros(3, 2), torch.rand(3))
        >>> [name for name in trace.nodes if name.startswith("x_") or name == "diffusion"]
        ['x_T', 'x_1', 'x_0', 'x_t', 'diffusion']
        """
        self._register()
        self._continuous_sites(x0, t, weight, is_model=True)

    def continuous_guide(self, x0: Tensor, t: Tensor, weight: Tensor | None = None):
        """The pair of :meth:`continuous_model`: ``x_T ~ q(x_T|x_0)`` at γ_1, ``x_1`` at γ_0, ``x_t`` at γ(t).

        :param torch.Tensor x0: data ``[B x *event_shape]``.
        :param torch.Tensor t: times ``[B]`` in [0, 1].
        :param torch.Tensor weight: per-example weights ``[B]``, or ``None``.
        """
        self._register_schedule(chain=False)
        self._continuous_sites(x0, t, weight, is_model=False)

    def _register(self) -> None:
        pyro.module("denoiser", self.denoiser)
        if isinstance(self.prior, nn.Module) and next(self.prior.parameters(), None) is not None:
            pyro.module("prior", self.prior)
        self._register_schedule(chain=False)

    def _register_schedule(self, chain: bool = True):
        """``pyro.module("schedule", ...)`` for a learned γ schedule (model and guides alike); the chain's
        coefficients (:meth:`coefficients`) when ``chain``."""
        if self.gamma_schedule and self.schedule.learnable:
            pyro.module("schedule", self.schedule)
        return self.coefficients() if chain else None

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """Ancestral sampling: run :meth:`model` without data and return ``x_0`` of shape ``[n x *event_shape]``.

        x_T ~ p(x_T), then x_{t−1} ~ p(x_{t−1}|x_t, θ) for t = T..1, drawn from torch's global generator, without
        gradients.

        :param int n: the number of examples, >= 1.
        :raises ValueError: for a continuous-time model (sample ``with_steps(T)``).

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
        ...                               event_shape=(2,))
        >>> _ = torch.manual_seed(1)
        >>> x = diffusion.sample(4)
        >>> _ = torch.manual_seed(1)
        >>> x.shape, bool((diffusion.sample(4) == x).all())
        (torch.Size([4, 2]), True)
        """
        if self.continuous:
            raise ValueError("this model is in continuous time (T = 0) and samples through a chain: "
                             "diffusion.with_steps(T).sample(n)")
        return self.model(None, n=n)

    def extra_repr(self) -> str:
        process = f", time_input={self.time_input!r}, gamma_range={self.gamma_range}" if self.gamma_schedule else ""
        return (f"T={self.T}{process}, event_shape={tuple(self.event_shape)}, variance={self.variance!r}, "
                f"decoder={self.decoder!r}, precision={self.precision!r}, "
                f"checkpoint_activations={self.checkpoint_activations!r}, "
                f"prior={'N(0, I)' if self.prior is None else self.prior!r}")
