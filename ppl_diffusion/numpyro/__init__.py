"""The NumPyro / JAX backend: the same model, site names and closed forms as the Pyro backend.

Work in progress (issue 6). Here now: the closed forms and decoders on JAX arrays, the MLP denoiser in
Flax NNX with weight conversion both ways, the full-chain and one-step programs with the Pyro backend's
site names and plates, per-example ELBO terms and a stochastic-timestep ELBO for ``numpyro.infer.SVI``,
and the full chain compiled with ``lax.scan`` (:mod:`.chain`: its ELBO, MC or analytic, and ancestral
sampling from given noise). Agreement with the Pyro backend is tested to float32 precision
(``tests/test_numpyro_backend.py``). Not yet: the U-Net, importance-sampled t, the per-term evaluator,
the CLI's ``--backend numpyro`` with shared checkpoints, and the benchmark.

Needs the ``jax`` extra: ``pip install -c constraints.txt -e ".[jax]"``.
"""

try:
    import flax  # noqa: F401
    import jax  # noqa: F401
    import numpyro  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"ppl_diffusion.numpyro needs jax, numpyro and flax ({e.name} is missing); install them with "
                      "pip install -c constraints.txt -e '.[jax]'") from None

from .convert import mlp_from_torch, mlp_to_torch
from .diffusion import GaussianDiffusion
from .distributions import DiscretizedGaussian, make_decoder
from .infer import StochasticTimestepELBO, per_example_elbo, stochastic_elbo_terms, trace_pair
from .nets import MLPDenoiser, timestep_embedding

__all__ = ["DiscretizedGaussian", "GaussianDiffusion", "MLPDenoiser", "StochasticTimestepELBO", "make_decoder",
           "mlp_from_torch", "mlp_to_torch", "per_example_elbo", "stochastic_elbo_terms", "timestep_embedding",
           "trace_pair"]
