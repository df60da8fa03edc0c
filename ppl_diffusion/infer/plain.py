"""The stochastic-timestep ELBO written directly in PyTorch, without Pyro: a cross-check and a baseline.

:func:`plain_stochastic_elbo` computes what :class:`~ppl_diffusion.infer.stochastic_elbo.StochasticTimestepELBO` (analytic step term,
uniform t, one step per example, N(0, I) prior) computes, from the closed forms alone, drawing its
random numbers in the same order. With the same seed the two agree to float rounding (tested), and
``benchmarks/pyro_overhead.py`` times one against the other.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import closed_forms as cf


def plain_stochastic_elbo(diffusion, x0: Tensor) -> Tensor:
    r"""Per-example ELBO estimate ``[B]``: −L_T − T · L_{t−1}(x_t), t ~ Uniform{1..T}, x_t ~ q(x_t|x_0).

    .. math:: \hat{\mathcal{L}} = -\mathrm{KL}(q(x_T \mid x_0) \,\|\, \mathcal{N}(0, I)) - T\, L_{t-1}(x_t),
              \quad t \sim \mathcal{U}\{1, \dots, T\},\ x_t \sim q(x_t \mid x_0)

    L_{t−1} is the closed-form KL for t > 1 and −log p(x_0|x_1) for t = 1; L_T = KL(q(x_T|x_0) || N(0, I)).
    Requires the default prior N(0, I).

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` with a chain of T steps and the prior N(0, I).
    :param torch.Tensor x0: the data ``[B] + event_shape``.
    :returns: ``[B]``, nats.

    Example: with the same seed, the Pyro estimator's loss is minus the sum of these.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.infer import StochasticTimestepELBO
    >>> from ppl_diffusion.infer.plain import plain_stochastic_elbo
    >>> _ = torch.manual_seed(1)
    >>> plain = plain_stochastic_elbo(diffusion, x0)
    >>> _ = torch.manual_seed(1)
    >>> pyro_loss = StochasticTimestepELBO().loss(diffusion.model, diffusion.guide, x0)
    >>> plain.shape, abs(-plain.sum().item() - pyro_loss) < 1e-3 * abs(pyro_loss)
    (torch.Size([4]), True)
    """
    s, T = diffusion.coefficients(), diffusion.T
    batch, dims = x0.shape[0], tuple(range(1, x0.dim()))
    t = torch.randint(0, T, (batch,)).to(x0.device) + 1
    # The same draws, in the same order, as the Pyro one-step programs: x_T, x_t, x_{t−1}.
    torch.randn_like(x0)  # x_T ~ q(x_T|x_0): its term is analytic here
    x_t = cf.q_sample(s, x0, t, torch.randn_like(x0))
    torch.randn_like(x0)  # x_{t−1} ~ q(x_{t−1}|x_t, x_0): its term is analytic here
    mean_T, var_T = cf.q_mean_variance(s, x0, torch.full_like(t, T))
    prior = cf.normal_kl(mean_T, var_T.log(), torch.zeros_like(x0), torch.zeros_like(x0)).sum(dims)
    p_mean, p_log_var = diffusion.p_mean_variance(x_t, t)
    q_mean, _, q_log_var = cf.q_posterior_mean_variance(s, x0, x_t, t)
    kl = cf.normal_kl(q_mean, q_log_var, p_mean, p_log_var).sum(dims)
    decoder = diffusion.decoder_at(x_t, t, p_mean, p_log_var, coef=s).log_prob(x0).sum(dims)
    step = torch.where(t == 1, decoder, -kl)
    return -prior + T * step


__all__ = ["plain_stochastic_elbo"]
