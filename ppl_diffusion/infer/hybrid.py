"""Improved DDPM's hybrid objective for a learned reverse variance, as a Pyro ELBO (``--estimator hybrid``).

Nichol & Dhariwal (2021, §3.1) train the mean with DDPM's simple loss and the variance with the
variational bound:

.. math:: L_\\text{hybrid} = L_\\text{simple} + \\lambda L_\\text{vlb}, \\qquad
          L_\\text{simple} = \\tfrac{1}{D}\\lVert \\varepsilon - \\hat\\varepsilon_\\theta(x_t, t)\\rVert^2, \\qquad
          L_\\text{vlb} \\approx \\frac{T\\, L_{t-1}}{D \\ln 2}\\ \\text{(bits/dim)},\\quad \\lambda = 10^{-3},

with t uniform and one x_t ~ q(x_t|x_0) per example, and a stop-gradient on the mean μ_θ inside the
bound term (so the bound trains σ_t² only). The bound term here also holds the prior's L_T / (D ln 2) (zero
gradient for the fixed N(0, I); it trains a learnable prior). These are their scalings (the simple loss is a mean over the D
dimensions; the bound term is the stochastic-t estimate T·L_{t−1} of Σ_t L_{t−1} in bits per dimension,
their ``vb × num_timesteps / 1000`` with λ = 1/1000).

L_hybrid is not a bound. :class:`HybridELBO` therefore returns a loss whose **value** is the unbiased
stochastic-t estimate of −ELBO (nats, summed over the batch: the prior term L_T plus T·L_{t−1} at the same
t and x_t, with the learned σ_t²) and whose **gradient** is that of λ-weighted L_hybrid (summed over the
batch): ``value.detach() + (hybrid − hybrid.detach())``. Training logs, bits/dim and the study then report
the same ELBO as every other estimator, while the update is improved DDPM's.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.util import warn_if_nan
from torch import Tensor

from .. import closed_forms as cf
from ..priors import prior_kl
from .draws import active
from .stochastic_elbo import StochasticTimestepELBO, diffusion_of, draw_timesteps


class HybridELBO(StochasticTimestepELBO):
    """``SVI(diffusion.model, diffusion.guide, optim, loss=HybridELBO())`` for ``variance="learned"``.

    The loss's value is the stochastic-t estimate of −ELBO, its gradient that of L_simple + λ L_vlb (the module
    docstring).

    :param float lam: λ, the weight of the bound term (improved DDPM: 0.001).
    :param kwargs: to :class:`~ppl_diffusion.infer.stochastic_elbo.StochasticTimestepELBO` (e.g. ``timesteps_per_example``).

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> from ppl_diffusion.infer import HybridELBO
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.cosine(T=10), variance="learned",
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1, learn_sigma=True),
    ...                               event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1
    >>> parts = HybridELBO().parts(diffusion.model, x0)
    >>> sorted(parts), parts["simple"].shape
    (['elbo', 'simple', 't', 'vlb'], torch.Size([4]))
    >>> loss = HybridELBO().differentiable_loss(diffusion.model, diffusion.guide, x0)
    >>> loss.shape, loss.requires_grad
    (torch.Size([]), True)
    """

    def __init__(self, lam: float = 1e-3, **kwargs) -> None:
        if not (isinstance(lam, (int, float)) and lam >= 0):
            raise ValueError(f"HybridELBO(lam={lam!r}): pass a weight >= 0 (improved DDPM: 0.001)")
        super().__init__(step_term="kl", timesteps="uniform", **kwargs)
        self.lam = float(lam)

    def parts(self, model, x0: Tensor) -> dict:
        """Per-example pieces: ``elbo`` (the unbiased estimate), ``simple`` (L_simple), ``vlb`` (the bound term
        with the mean detached, bits/dim, T·L_{t−1}), ``t``; ``[B]`` each.

        :param model: ``diffusion.model`` of a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` with a learned variance.
        :param torch.Tensor x0: the data ``[B] + event_shape``.
        """
        diffusion = diffusion_of(model)
        if not diffusion.learned_variance:
            raise ValueError("the hybrid loss trains a learned variance; build the model with variance='learned' "
                             "(--variance learned) or use another estimator")
        x0 = diffusion.check_data(x0)
        diffusion._register()  # pyro.module: SVI collects the parameters the loss touches from the trace
        batch, d = x0.shape[0], len(diffusion.event_shape)
        t, weight = draw_timesteps(self.get_sampler(diffusion.T), batch, x0.device)
        weight = weight.to(x0.dtype)
        draws = active()
        eps = torch.randn_like(x0) if draws is None else draws.randn(x0.shape, dtype=x0.dtype, device=x0.device)
        s = diffusion.coefficients()  # the NoiseSchedule, or a γ schedule's chain
        x_t = cf.q_sample(s, x0, t, eps)
        eps_hat, v = diffusion.denoiser_output(x_t, t, coef=s)
        log_var = diffusion.learned_log_variance(v, t, s)
        q_mean, _, q_log_var = cf.q_posterior_mean_variance(s, x0, x_t, t)

        def step_loss(eps_for_mean):  # L_{t−1}: the KL for t > 1, the decoder's −log p(x_0|x_1) at t = 1
            mean = cf.p_mean_from_eps(s, x_t, t, eps_for_mean)
            kl = cf.normal_kl(q_mean, q_log_var, mean, log_var).reshape(batch, -1).sum(-1)
            nll = -diffusion.decoder_at(x_t, t, mean, log_var, coef=s).to_event(d).log_prob(x0)
            return torch.where(t == 1, nll, kl)

        # L_T = KL(q(x_T|x_0) || p(x_T)): closed form where registered, else one Monte-Carlo draw.
        mean_T, var_T = cf.q_mean_variance(s, x0, diffusion._full_t(diffusion.T, batch, x0.device))
        q_T = dist.Normal(mean_T, var_T.sqrt()).to_event(d)
        prior_term, _ = prior_kl(q_T, diffusion.get_prior(x0.device, x0.dtype), draws=1)
        to_bpd = 1.0 / (x0[0].numel() * math.log(2.0))
        return {"elbo": -(prior_term + weight * step_loss(eps_hat)),
                "simple": (eps - eps_hat).pow(2).reshape(batch, -1).mean(-1),
                "vlb": (prior_term + weight * step_loss(eps_hat.detach())) * to_bpd, "t": t}

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """A scalar whose value is −ELBO (nats, summed over the batch) and whose gradient is the hybrid loss's."""
        p = self.parts(model, *args, **kwargs)
        value = -p["elbo"].sum()
        hybrid = (p["simple"] + self.lam * p["vlb"]).sum()
        loss = value.detach() + (hybrid - hybrid.detach())
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        """−ELBO summed over the batch (the stochastic-t estimate), as a float, without gradient."""
        with torch.no_grad():
            return -self.parts(model, *args, **kwargs)["elbo"].sum().item()


__all__ = ["HybridELBO"]
