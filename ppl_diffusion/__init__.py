"""ppl_diffusion: Gaussian diffusion models (DDPM) written as Pyro probabilistic programs.

The reverse chain p(x_T) ∏ p(x_{t−1}|x_t, θ) is a Pyro model, the forward chain q(x_{1:T}|x_0) its guide, and
``pyro.infer.SVI`` maximises the ELBO. The names below are the library's entry points; each is documented in its
module (:class:`~ppl_diffusion.diffusion.GaussianDiffusion`, :class:`~ppl_diffusion.schedule.NoiseSchedule`,
:mod:`ppl_diffusion.distributions`, :mod:`ppl_diffusion.infer`, :mod:`ppl_diffusion.nets`).

Example: a diffusion over 2-D points, its negative ELBO (nats, summed over the batch), and samples.

>>> import pyro, torch
>>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
>>> _ = torch.manual_seed(0)
>>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10), denoiser=MLPDenoiser(2, width=16, depth=1),
...                               event_shape=(2,))
>>> x0 = torch.randn(4, 2)
>>> loss = pyro.infer.TraceMeanField_ELBO().differentiable_loss(diffusion.model, diffusion.posterior_guide, x0)
>>> loss.shape, diffusion.sample(3).shape
(torch.Size([]), torch.Size([3, 2]))
"""

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
