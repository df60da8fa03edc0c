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
    """Run ``guide``, then ``model`` replayed on its samples; return (model_trace, guide_trace)."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def per_example_elbo(model_trace, guide_trace, analytic: bool) -> dict[str, Tensor]:
    """For every sample site of the model, its per-example contribution to the ELBO (``Tensor[B]``).

    Observed site: log p(x). Latent site: −KL(q || p) when ``analytic`` and a closed form is
    registered (``torch.distributions.kl_divergence``), else the one-sample log p(z) − log q(z).
    Masked-out examples contribute exactly 0; ``poutine.scale`` is not applied (the caller weights).
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
