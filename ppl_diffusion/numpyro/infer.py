"""Per-example ELBO terms of NumPyro traces, and the stochastic-timestep ELBO for ``numpyro.infer.SVI``.

The same rules as the PyTorch backend (:mod:`ppl_diffusion.infer.trace_terms`): an observed site
contributes log p(x); a latent site −KL(q || p) when ``analytic`` and a closed form is registered
(``numpyro.distributions.kl.kl_divergence``), else the one-sample log p(z) − log q(z); masked-out
examples contribute exactly 0; scales are applied by the caller.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.distributions.kl import kl_divergence
from numpyro.infer.elbo import ELBO


def trace_pair(model, guide, rng_key, *args, **kwargs):
    """Run ``guide`` seeded with ``rng_key``, then ``model`` replayed on its samples; (model_trace, guide_trace)."""
    k_guide, k_model = jax.random.split(rng_key)
    guide_trace = handlers.trace(handlers.seed(guide, k_guide)).get_trace(*args, **kwargs)
    model_trace = handlers.trace(handlers.replay(handlers.seed(model, k_model), guide_trace)).get_trace(
        *args, **kwargs)
    return model_trace, guide_trace


def per_example_elbo(model_trace, guide_trace, analytic: bool) -> dict:
    """For every sample site of the model, its per-example contribution to the ELBO (``[B]``)."""
    out = {}
    for name, site in model_trace.items():
        if site["type"] != "sample":
            continue
        fn, value = site["fn"], site["value"]
        if site["is_observed"]:
            term = fn.log_prob(value)
        else:
            guide_fn = guide_trace[name]["fn"]
            term = None
            if analytic:
                try:
                    term = -kl_divergence(guide_fn, fn)
                except NotImplementedError:
                    term = None
            if term is None:
                term = fn.log_prob(value) - guide_fn.log_prob(value)
        mask = site.get("mask")
        if mask is not None and mask is not True:
            term = jnp.where(mask, term, jnp.zeros((), term.dtype))
        out[name] = term
    return out


def stochastic_elbo_terms(diffusion, rng_key, x0, *, step_term: str = "kl", params=None):
    """One uniform t per example (weight T), x_t ~ q(x_t|x_0): per-example ELBO estimates ``[B]``, the steps
    t and the step terms −L_{t−1}. ``params`` (a NumPyro param map) replaces the registered weights."""
    k_t, k_trace = jax.random.split(rng_key)
    t = jax.random.randint(k_t, (x0.shape[0],), 1, diffusion.T + 1)
    model, guide = diffusion.step_model, diffusion.step_guide
    if params is not None:
        model = handlers.substitute(model, data=params)
    model_trace, guide_trace = trace_pair(model, guide, k_trace, x0, t)
    site = per_example_elbo(model_trace, guide_trace, analytic=step_term == "kl")
    step = site["x_t"] + site["x_prev"] + site["x_0"]
    return site["x_T"] + diffusion.T * step, t, step


class StochasticTimestepELBO(ELBO):
    """The stochastic-timestep ELBO (uniform t) as a NumPyro ELBO: ``SVI(diffusion.model, diffusion.guide,
    optax.adam(1e-3), loss=StochasticTimestepELBO())``. The loss is −ELBO summed over the batch, in nats.
    The guide argument is not run: the estimator draws x_t in closed form from the one-step programs."""

    def __init__(self, step_term: str = "kl") -> None:
        if step_term not in ("kl", "mc"):
            raise ValueError(f"unknown step_term {step_term!r}; choose 'kl' or 'mc'")
        super().__init__(num_particles=1)
        self.step_term = step_term

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        diffusion = getattr(model, "__self__", None)
        if diffusion is None or not hasattr(diffusion, "step_model"):
            raise TypeError("this estimator scores a ppl_diffusion.numpyro.GaussianDiffusion; pass model=diffusion.model")
        elbo, _, _ = stochastic_elbo_terms(diffusion, rng_key, args[0], step_term=self.step_term, params=param_map)
        return {"loss": -jnp.sum(elbo), "mutable_state": None}
