"""The NumPyro / JAX backend: the same model, site names and closed forms as the Pyro backend.

- closed forms and decoders on JAX arrays (:mod:`~ppl_diffusion.numpyro.closed_forms`,
  :mod:`~ppl_diffusion.numpyro.distributions`), from the same float64 schedule;
- the MLP and U-Net denoisers in Flax NNX (:mod:`~ppl_diffusion.numpyro.nets`) with weight conversion both ways
  (:mod:`~ppl_diffusion.numpyro.convert`);
- the γ schedules of a learnable forward process in Flax NNX (:mod:`~ppl_diffusion.numpyro.gamma`), converted by
  name;
- :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion`: the full-chain and one-step programs with the Pyro
  backend's site names and plates, the denoiser registered with ``numpyro.contrib.module.nnx_module``;
- estimators (:mod:`~ppl_diffusion.numpyro.infer`): per-example ELBO terms of any trace pair,
  :class:`~ppl_diffusion.numpyro.infer.StochasticTimestepELBO` and :class:`~ppl_diffusion.numpyro.infer.ChainELBO`
  (the full chain's Trace / TraceMeanField ELBO compiled with ``lax.scan``) as NumPyro ELBOs for
  ``numpyro.infer.SVI``; timestep samplers as JAX state (:mod:`~ppl_diffusion.numpyro.timesteps`);
- the compiled chain (:mod:`~ppl_diffusion.numpyro.chain`): ELBO, ancestral sampling and the per-term bound;
- the probability-flow ODE with diffrax (:mod:`~ppl_diffusion.numpyro.ode`): exact log-likelihood, ODE sampling
  and ``ProbabilityFlow``, a NumPyro distribution;
- training, evaluation and sampling behind ``ppl-diffusion … --backend numpyro``
  (:mod:`~ppl_diffusion.numpyro.train`, :mod:`~ppl_diffusion.numpyro.sampling`), with the Pyro backend's
  checkpoint format.

Agreement with the Pyro backend is tested to float32 precision (``tests/test_numpyro_backend.py``,
``tests/test_numpyro_nets.py``, ``tests/test_numpyro_train.py``).

Needs the ``jax`` extra: ``pip install -c constraints.txt -e ".[jax]"``.

Example (the stochastic-timestep ELBO of a batch, the Pyro backend's names throughout):

>>> import jax
>>> import jax.numpy as jnp
>>> from ppl_diffusion import NoiseSchedule
>>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser, stochastic_elbo_terms
>>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
>>> elbo, t, step = stochastic_elbo_terms(diffusion, jax.random.key(0), jnp.zeros((3, 2)))
>>> elbo.shape
(3,)
"""

try:
    import flax  # noqa: F401
    import jax  # noqa: F401
    import numpyro  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"ppl_diffusion.numpyro needs jax, numpyro and flax ({e.name} is missing); install them with "
                      "pip install -c constraints.txt -e '.[jax]'") from None

from . import chain
from .convert import (flax_twin, from_torch, gamma_params_from_torch_state, gamma_twin, load_torch_state, mlp_from_torch,
                      mlp_to_torch, params_from_torch_state, to_torch, torch_state_from_gamma_params,
                      torch_state_from_params)
from .diffusion import GaussianDiffusion
from .distributions import DiscretizedGaussian, make_decoder
from .gamma import GammaChain, InterpolatedGamma, LinearGamma, MonotoneNetGamma, ScalarGamma, make_gamma_schedule
from .infer import (ChainELBO, ContinuousTimeELBO, StochasticTimestepELBO, continuous_time_loss, continuous_time_terms,
                    per_example_elbo, stochastic_elbo_terms, trace_pair)
from .nets import MLPDenoiser, UNet, mlp_for, timestep_embedding, unet_for, unet_preset

__all__ = ["ChainELBO", "ContinuousTimeELBO", "DiscretizedGaussian", "GammaChain", "GaussianDiffusion",
           "InterpolatedGamma", "LinearGamma", "MLPDenoiser", "MonotoneNetGamma", "ScalarGamma",
           "StochasticTimestepELBO", "UNet", "chain", "continuous_time_loss", "continuous_time_terms", "flax_twin",
           "from_torch", "gamma_params_from_torch_state", "gamma_twin", "load_torch_state", "make_decoder",
           "make_gamma_schedule", "mlp_for", "mlp_from_torch", "mlp_to_torch", "params_from_torch_state",
           "per_example_elbo", "stochastic_elbo_terms", "timestep_embedding", "to_torch",
           "torch_state_from_gamma_params", "torch_state_from_params", "trace_pair", "unet_for", "unet_preset"]
