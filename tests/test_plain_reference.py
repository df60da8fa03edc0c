"""The Pyro stochastic-timestep estimator equals the same loss written directly in PyTorch."""

import pytest
import torch

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule, StochasticTimestepELBO
from ppl_diffusion.data import to_model_space
from ppl_diffusion.infer.plain import plain_stochastic_elbo


@pytest.mark.parametrize("variance", ["beta", "posterior"])
@pytest.mark.parametrize("decoder", ["gaussian", "discretized"])
def test_pyro_estimator_equals_plain_pytorch(variance, decoder):
    torch.manual_seed(0)
    net = MLPDenoiser(4, width=32, zero_init=False).double()  # float64: the two sums differ only in rounding
    d = GaussianDiffusion(schedule=NoiseSchedule.cosine(50), denoiser=net, event_shape=(4,), variance=variance,
                          decoder=decoder)
    x0 = to_model_space(torch.randint(0, 256, (64, 4))).double()  # on the 8-bit grid
    torch.manual_seed(1)
    pyro_elbo, t, _, _ = StochasticTimestepELBO().terms(d.model, x0)
    torch.manual_seed(1)
    plain = plain_stochastic_elbo(d, x0)
    assert (t == 1).any() and (t > 1).any()
    torch.testing.assert_close(pyro_elbo, plain, rtol=1e-10, atol=1e-9)
    # and the gradients
    g1 = torch.autograd.grad(pyro_elbo.sum(), list(d.denoiser.parameters()))
    g2 = torch.autograd.grad(plain.sum(), list(d.denoiser.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
