"""The NumPyro / JAX backend: the same model, site names and closed forms as the Pyro backend.

- closed forms and decoders on JAX arrays (:mod:`.closed_forms`, :mod:`.distributions`), from the same
  float64 schedule;
- the MLP and U-Net denoisers in Flax NNX (:mod:`.nets`) with weight conversion both ways (:mod:`.convert`);
- the γ schedules of a learnable forward process in Flax NNX (:mod:`.gamma`), converted by name;
- :class:`GaussianDiffusion`: the full-chain and one-step programs with the Pyro backend's site names and
  plates, the denoiser registered with ``numpyro.contrib.module.nnx_module``;
- estimators (:mod:`.infer`): per-example ELBO terms of any trace pair, :class:`StochasticTimestepELBO`
  and :class:`ChainELBO` (the full chain's Trace / TraceMeanField ELBO compiled with ``lax.scan``) as
  NumPyro ELBOs for ``numpyro.infer.SVI``; timestep samplers as JAX state (:mod:`.timesteps`);
- the compiled chain (:mod:`.chain`): ELBO, ancestral sampling and the per-term bound;
- the probability-flow ODE with diffrax (:mod:`.ode`): exact log-likelihood, ODE sampling and
  ``ProbabilityFlow``, a NumPyro distribution;
- training, evaluation and sampling behind ``ppl-diffusion … --backend numpyro`` (:mod:`.train`,
  :mod:`.sampling`), with the Pyro backend's checkpoint format.

Agreement with the Pyro backend is tested to float32 precision (``tests/test_numpyro_backend.py``,
``tests/test_numpyro_nets.py``, ``tests/test_numpyro_train.py``).

Needs the ``jax`` extra: ``pip install -c constraints.txt -e ".[jax]"``.
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
