"""The stochastic-timestep ELBO: one reverse step per example, scored analytically or by Monte Carlo."""

from __future__ import annotations

import torch
from pyro.infer import ELBO
from pyro.util import warn_if_nan
from torch import Tensor

from .draws import active
from .timesteps import UniformTimesteps, make_timestep_sampler
from .trace_terms import per_example_elbo, trace_pair

STEP_TERMS = ("kl", "mc")


def diffusion_of(model):
    """The :class:`~ppl_diffusion.diffusion.GaussianDiffusion` whose method ``model`` is."""
    from ..diffusion import GaussianDiffusion

    owner = getattr(model, "__self__", None)
    if not isinstance(owner, GaussianDiffusion):
        raise TypeError(
            f"this estimator scores a GaussianDiffusion; pass model=diffusion.model (got {model!r})"
        )
    return owner


def record_losses(sampler, t: Tensor, losses: Tensor) -> None:
    """``sampler.update(t, losses)``; under :class:`~ppl_diffusion.infer.draws.BatchDraws` every rank records the
    global batch's losses in the same order, so that every rank keeps the same sampler state (after a step's last
    micro-batch, when it keeps them in ``records``)."""
    draws = active()
    if draws is None:
        sampler.update(t, losses)
    else:
        draws.record(sampler, t, losses)


def draw_timesteps(sampler, n: int, device) -> tuple[Tensor, Tensor]:
    """``sampler.sample(n)``, or under :class:`~ppl_diffusion.infer.draws.BatchDraws` this rank's rows of the
    global batch's draw."""
    draws = active()
    return sampler.sample(n, device=device) if draws is None else draws.timesteps(sampler, n, device)


class StochasticTimestepELBO(ELBO):
    r"""Unbiased ELBO estimate from k random steps per example (DDPM's training objective, exact).

    With L_0 = −log p(x_0|x_1), L_{t−1} = KL(q(x_{t−1}|x_t, x_0) || p(x_{t−1}|x_t, θ)) for t = 2..T and
    L_T = KL(q(x_T|x_0) || p(x_T)), the ELBO of one example is

    .. math:: \mathcal{L} = -L_T - \sum_{t=1}^{T} \mathbb{E}_{q(x_t|x_0)}[L_{t-1}]
              \approx -L_T - \frac{1}{k}\sum_{j=1}^{k} \frac{L_{t_j - 1}(x_{t_j})}{P(t_j)},
              \quad t_j \sim P,\ x_{t_j} \sim q(x_{t_j}|x_0) \text{ (Statement 1)}.

    ``step_term="kl"`` scores L_{t−1} by its closed-form KL (``TraceMeanField_ELBO`` on the one-step
    programs :meth:`~ppl_diffusion.diffusion.GaussianDiffusion.step_model` / ``step_guide``); ``"mc"`` by one
    draw x_{t−1} ~ q(x_{t−1}|x_t, x_0) of log q − log p (``Trace_ELBO`` on the same pair). L_T is
    analytic when a KL is registered for the prior, else one Monte-Carlo draw. P is uniform or
    improved DDPM's importance sampling (:class:`~ppl_diffusion.infer.timesteps.ImportanceTimesteps`).

    Use it as any Pyro ELBO: ``SVI(diffusion.model, diffusion.guide, optim, loss=StochasticTimestepELBO())``
    (the guide argument is not run: the estimator draws x_t in closed form), or
    ``loss = elbo.differentiable_loss(diffusion.model, diffusion.guide, x0)`` in a custom loop. The
    loss is −ELBO summed over the batch, in nats, as Pyro's ELBOs return it.

    :param int timesteps_per_example: k, steps drawn per example (default 1).
    :param str step_term: ``"kl"`` (analytic) or ``"mc"`` (Monte Carlo).
    :param timesteps: ``"uniform"``, ``"importance"`` or a sampler object with ``sample``/``update``.
    :param dict sampler_kwargs: passed to the named sampler (e.g. ``history``, ``uniform_prob``).

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion import StochasticTimestepELBO
    >>> elbo = StochasticTimestepELBO(timesteps_per_example=2, timesteps="importance")
    >>> loss = elbo.differentiable_loss(diffusion.model, diffusion.guide, x0)  # −ELBO of the batch, nats
    >>> loss.backward()  # what SVI.step does before its optimizer's step
    >>> diffusion.denoiser.out[-1].weight.grad.shape
    torch.Size([2, 16])
    >>> elbo.sampler.loss_counts.sum().item()  # 4 examples × 2 steps recorded for importance sampling
    8
    """

    def __init__(self, *, timesteps_per_example: int = 1, step_term: str = "kl", timesteps="uniform",
                 sampler_kwargs: dict | None = None) -> None:
        super().__init__(num_particles=1)
        if step_term not in STEP_TERMS:
            raise ValueError(f"unknown step_term {step_term!r}; choose one of {STEP_TERMS}")
        if isinstance(timesteps_per_example, bool) or not isinstance(timesteps_per_example, int) \
                or timesteps_per_example < 1:
            raise ValueError(f"timesteps_per_example = {timesteps_per_example!r}; pass an integer >= 1")
        self.timesteps_per_example = timesteps_per_example
        self.step_term = step_term
        self._timesteps = timesteps
        self._sampler_kwargs = sampler_kwargs or {}
        self.sampler = None if isinstance(timesteps, str) else timesteps

    def _get_trace(self, model, guide, args, kwargs):
        # Pyro's ELBO base class asks for it; this estimator traces the one-step programs itself.
        raise NotImplementedError("StochasticTimestepELBO traces diffusion.step_model/step_guide in terms()")

    def get_sampler(self, T: int) -> UniformTimesteps:
        """The timestep sampler, made on first use for the model's T (a ``ValueError`` if it was made for another T).

        :param int T: the model's number of steps.
        """
        if self.sampler is None:
            self.sampler = make_timestep_sampler(self._timesteps, T, **self._sampler_kwargs)
        if self.sampler.T != T:
            raise ValueError(f"this estimator's timestep sampler is for T = {self.sampler.T}, the model has T = {T}")
        return self.sampler

    def terms(self, model, x0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Draw the steps and score them: (per-example ELBO estimate, t, weights, step terms −L_{t−1}).

        Shapes: ELBO ``[B]``; t, weights and step terms ``[B·k]`` (k steps per example, grouped by example).

        :param model: ``diffusion.model`` (its :class:`~ppl_diffusion.diffusion.GaussianDiffusion` is what is scored).
        :param torch.Tensor x0: the data ``[B] + event_shape``.

        Example:

        >>> import torch
        >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
        >>> _ = torch.manual_seed(0)
        >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
        ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
        >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
        >>> from ppl_diffusion import StochasticTimestepELBO
        >>> elbo, t, weight, step = StochasticTimestepELBO(timesteps_per_example=3).terms(diffusion.model, x0)
        >>> elbo.shape, t.shape, weight.unique().tolist()  # uniform t: weight 1/P(t) = T
        (torch.Size([4]), torch.Size([12]), [10.0])
        """
        diffusion = diffusion_of(model)
        x0 = diffusion.check_data(x0)
        k, batch = self.timesteps_per_example, x0.shape[0]
        t, weight = draw_timesteps(self.get_sampler(diffusion.T), batch * k, x0.device)
        x0k = x0.repeat_interleave(k, dim=0) if k > 1 else x0
        model_trace, guide_trace = trace_pair(diffusion.step_model, diffusion.step_guide, x0k, t)
        site = per_example_elbo(model_trace, guide_trace, analytic=self.step_term == "kl")
        step = site["x_t"] + site["x_prev"] + site["x_0"]  # −L_{t−1}; the x_t term is exactly 0
        per_draw = site["x_T"] + weight.to(step.dtype) * step
        elbo = per_draw.reshape(batch, k).mean(-1)
        return elbo, t, weight, step

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """−ELBO summed over the batch, differentiable in θ; records the step losses for importance t.

        :param model: ``diffusion.model``.
        :param guide: not run (x_t is drawn in closed form).
        :param x0: the data ``[B] + event_shape``.
        :returns: a scalar tensor, nats.
        """
        elbo, t, _, step = self.terms(model, *args, **kwargs)
        record_losses(self.sampler, t, -step.detach())
        loss = -elbo.sum()
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        """−ELBO summed over the batch, as a float; no gradient and no update of the sampler's history.

        :param model: ``diffusion.model``.
        :param guide: not run.
        :param x0: the data ``[B] + event_shape``.
        """
        with torch.no_grad():
            elbo, *_ = self.terms(model, *args, **kwargs)
        loss = -elbo.sum().item()
        warn_if_nan(loss, "loss")
        return loss

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """As :meth:`differentiable_loss`, then ``backward()``: the step ``pyro.infer.SVI`` takes."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return loss.item()


__all__ = ["StochasticTimestepELBO"]
