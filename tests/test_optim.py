"""JointOptim takes exactly the steps of pyro.optim.Adam, with one torch optimizer."""

import pyro
import torch
from pyro.infer import SVI

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule, StochasticTimestepELBO
from ppl_diffusion.optim import JointAdam


def run(optim, steps=5):
    pyro.clear_param_store()
    torch.manual_seed(0)
    d = GaussianDiffusion(schedule=NoiseSchedule.linear(20), denoiser=MLPDenoiser(2, width=16), event_shape=(2,))
    x0 = torch.randn(32, 2)
    torch.manual_seed(1)
    svi = SVI(d.model, d.guide, optim, loss=StochasticTimestepELBO())
    losses = [svi.step(x0) for _ in range(steps)]
    return losses, [p.detach().clone() for p in d.denoiser.parameters()], svi


def test_same_steps_as_pyro_adam():
    l1, w1, _ = run(pyro.optim.Adam({"lr": 1e-2}))
    l2, w2, svi = run(JointAdam({"lr": 1e-2}))
    assert l1 == l2
    for a, b in zip(w1, w2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert len(svi.optim.optimizer.param_groups) == 1


def test_state_round_trip():
    _, _, svi = run(JointAdam({"lr": 1e-2}), steps=2)
    state = svi.optim.get_state()
    fresh = JointAdam({"lr": 1e-2})
    fresh.set_state(state)
    params = [p for _, p in pyro.get_param_store().named_parameters()]
    for p in params:
        p.grad = torch.zeros_like(p)
    fresh(set(params))
    assert fresh.optimizer.state_dict()["state"].keys() == state["optimizer"]["state"].keys()
