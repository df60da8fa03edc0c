"""ppl_diffusion: Gaussian diffusion models (DDPM) written as Pyro probabilistic programs."""

from . import determinism  # noqa: F401  first: MKL's kernels chosen in one thread before any parallel call
from .diffusion import GaussianDiffusion
from .distributions import DiscretizedGaussian, DiscretizedGaussianDecoder, GaussianDecoder
from .infer import StochasticTimestepELBO, make_estimator, variational_bound
from .nets import MLPDenoiser
from .schedule import NoiseSchedule

__version__ = "0.1.0"

__all__ = [
    "DiscretizedGaussian", "DiscretizedGaussianDecoder", "GaussianDecoder", "GaussianDiffusion", "MLPDenoiser",
    "NoiseSchedule", "StochasticTimestepELBO", "make_estimator", "variational_bound",
]
