"""Per-example ELBO contributions of each site of a (model, guide) trace pair.

Pyro's ELBOs return the sum over the batch; the stochastic-timestep estimator and the bound
evaluator need each example's term (for the importance-sampling history and the per-t report), so
they trace the one-step programs and score every site here, as ``TraceMeanField_ELBO`` does per site.
"""

from __future__ import annotations

import torch
from pyro import poutine
from torch import Tensor
from torch.distributions import kl_divergence


def trace_pair(model, guide, *args, **kwargs):
    """Run ``guide``, then ``model`` replayed on its samples; return (model_trace, guide_trace).

    :param model: a Pyro program, e.g. ``diffusion.step_model``.
    :param guide: its guide, e.g. ``diffusion.step_guide``, run first on the same arguments.
    :returns: the two :class:`pyro.poutine.Trace` objects.

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.infer import trace_pair
    >>> t = torch.tensor([1, 2, 5, 10])  # one step per example
    >>> model_trace, guide_trace = trace_pair(diffusion.step_model, diffusion.step_guide, x0, t)
    >>> bool((model_trace.nodes["x_t"]["value"] == guide_trace.nodes["x_t"]["value"]).all())
    True
    """
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def per_example_elbo(model_trace, guide_trace, analytic: bool) -> dict[str, Tensor]:
    """For every sample site of the model, its per-example contribution to the ELBO (``Tensor[B]``).

    Observed site: log p(x). Latent site: −KL(q || p) when ``analytic`` and a closed form is
    registered (``torch.distributions.kl_divergence``), else the one-sample log p(z) − log q(z).
    Masked-out examples contribute exactly 0; ``poutine.scale`` is not applied (the caller weights).
    Summed over sites and examples it is the per-site ELBO of ``TraceMeanField_ELBO`` (``analytic=True``) or
    ``Trace_ELBO`` (``analytic=False``) for one trajectory.

    :param model_trace: the model's trace, replayed on the guide's (:func:`trace_pair`).
    :param guide_trace: the guide's trace.
    :param bool analytic: take the closed-form −KL for latent sites where one is registered.
    :returns: ``{site name: Tensor[B]}``, nats.

    Example: the one-step programs, whose sites sum to the step's term −L_{t−1} and the prior's −L_T.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.infer import per_example_elbo, trace_pair
    >>> t = torch.tensor([1, 2, 5, 10])
    >>> terms = per_example_elbo(*trace_pair(diffusion.step_model, diffusion.step_guide, x0, t), analytic=True)
    >>> sorted(terms), terms["x_T"].shape  # "data": the plate's own subsample site
    (['data', 'x_0', 'x_T', 'x_prev', 'x_t'], torch.Size([4]))
    >>> terms["x_0"][1:].tolist(), terms["x_prev"][0].item()  # the decoder is scored at t = 1 only, the KL at t > 1
    ([0.0, 0.0, 0.0], 0.0)
    """
    out = {}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        fn, value = site["fn"], site["value"]
        if site["is_observed"]:
            term = fn.log_prob(value)
        else:
            guide_fn = guide_trace.nodes[name]["fn"]
            term = None
            if analytic:
                try:
                    term = -kl_divergence(guide_fn, fn)
                except NotImplementedError:
                    term = None
            if term is None:
                term = fn.log_prob(value) - guide_fn.log_prob(value)
        mask = site["mask"]
        if mask is not None:
            term = torch.where(mask, term, torch.zeros((), dtype=term.dtype, device=term.device))
        out[name] = term
    return out


__all__ = ["per_example_elbo", "trace_pair"]
