"""The stochastic-timestep estimator's machinery: samplers, k steps, SVI, errors."""

import math
from collections import deque

import pyro
import pytest
import torch
from pyro.infer import SVI

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule, StochasticTimestepELBO, make_estimator
from ppl_diffusion.gamma import MonotoneNetGamma
from ppl_diffusion.infer import ESTIMATORS, ImportanceTimesteps, UniformTimesteps, make_timestep_sampler

from .common import Z


def make(T=20, variance="beta"):
    learned = variance == "learned"
    return GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=MLPDenoiser(2, width=16, depth=1, learn_sigma=learned),
                             event_shape=(2,), variance=variance)


def test_uniform_sampler_draws_uniformly_with_weight_T():
    s = UniformTimesteps(7)
    t, w = s.sample(70_000)
    assert t.min() == 1 and t.max() == 7 and torch.all(w == 7)
    counts = torch.bincount(t, minlength=8)[1:].double()
    p = 1 / 7
    assert torch.all((counts / 70_000 - p).abs() < Z * math.sqrt(p * (1 - p) / 70_000))


def test_importance_history_matches_a_reference_implementation():
    """The vectorised ring buffer keeps exactly the newest `history` losses per t, as improved DDPM's loop does."""
    T, H = 5, 3
    s = ImportanceTimesteps(T, history=H)
    ref = [deque(maxlen=H) for _ in range(T)]
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        t = torch.randint(1, T + 1, (9,), generator=gen)
        losses = torch.rand(9, generator=gen, dtype=torch.float64)
        s.update(t, losses)
        for ti, li in zip(t.tolist(), losses.tolist()):
            ref[ti - 1].append(li)
        for k in range(T):
            assert s.loss_counts[k] == len(ref[k])
            got = sorted(s.loss_history[k, : len(ref[k])].tolist()) if len(ref[k]) < H else sorted(s.loss_history[k].tolist())
            assert got == pytest.approx(sorted(ref[k]))
    assert s.warmed_up
    p = s.probabilities()
    w = torch.tensor([math.sqrt(sum(v * v for v in r) / H) for r in ref], dtype=torch.float64)
    torch.testing.assert_close(p, (w / w.sum()) * (1 - 1e-3) + 1e-3 / T)


def test_importance_sampler_draws_from_its_probabilities_with_inverse_weights():
    s = ImportanceTimesteps(4, history=1)
    s.update(torch.tensor([1, 2, 3, 4]), torch.tensor([1.0, 2.0, 3.0, 10.0]))
    p = s.probabilities()
    t, w = s.sample(50_000)
    torch.testing.assert_close(w, 1 / p[t - 1])
    freq = torch.bincount(t, minlength=5)[1:].double() / 50_000
    assert torch.all((freq - p).abs() < Z * (p * (1 - p) / 50_000).sqrt())


def test_sampler_state_round_trip():
    a = ImportanceTimesteps(6, history=2)
    a.update(torch.tensor([1, 2, 2, 6, 6, 6]), torch.arange(6.0))
    b = ImportanceTimesteps(6, history=2)
    b.load_state_dict(a.state_dict())
    for name in ("loss_history", "loss_counts", "write_pos"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    with pytest.raises(ValueError, match="T = 6, this model has T = 5"):
        ImportanceTimesteps(5).load_state_dict(a.state_dict())


def test_k_steps_per_example_shapes():
    d = make()
    elbo = StochasticTimestepELBO(timesteps_per_example=4)
    per_example, t, w, step = elbo.terms(d.model, torch.randn(3, 2))
    assert per_example.shape == (3,) and t.shape == w.shape == step.shape == (12,)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_named_estimator_trains_with_pyro_svi(name):
    pyro.set_rng_seed(0)
    if ESTIMATORS[name].needs_steps:
        d = make(T=10, variance="learned" if name == "hybrid" else "beta")  # the hybrid loss trains a learned σ²
    else:  # a continuous-time estimator: a γ schedule in continuous time
        d = GaussianDiffusion(schedule=MonotoneNetGamma(features=8), denoiser=MLPDenoiser(2, width=16, depth=1),
                              event_shape=(2,), T=0)
    est = make_estimator(name)
    svi = SVI(d.model, est.guide(d), pyro.optim.Adam({"lr": 1e-2}), loss=est.loss)
    x0 = torch.randn(32, 2) * 0.3
    before = [p.detach().clone() for p in d.denoiser.parameters()]
    losses = [svi.step(x0) for _ in range(5)]
    assert all(math.isfinite(v) for v in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, d.denoiser.parameters()))
    assert math.isfinite(svi.evaluate_loss(x0))


def test_differentiable_loss_in_a_custom_loop():
    d = make()
    elbo = StochasticTimestepELBO(timesteps="importance")
    opt = torch.optim.Adam(d.denoiser.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        loss = elbo.differentiable_loss(d.model, d.guide, torch.randn(16, 2))
        loss.backward()
        opt.step()
    assert int(elbo.sampler.loss_counts.sum()) == 3 * 16


def test_loss_does_not_touch_the_history():
    d = make()
    elbo = StochasticTimestepELBO(timesteps="importance")
    elbo.loss(d.model, d.guide, torch.randn(16, 2))
    assert int(elbo.sampler.loss_counts.sum()) == 0


def test_errors():
    with pytest.raises(ValueError, match="unknown step_term 'exact'"):
        StochasticTimestepELBO(step_term="exact")
    with pytest.raises(ValueError, match="timesteps_per_example = 0"):
        StochasticTimestepELBO(timesteps_per_example=0)
    with pytest.raises(ValueError, match="unknown timestep sampler 'sobol'"):
        make_timestep_sampler("sobol", 10)
    with pytest.raises(ValueError, match=r"unknown estimator 'elbo'; choose one of \['trace'"):
        make_estimator("elbo")
    with pytest.raises(TypeError, match="pass model=diffusion.model"):
        StochasticTimestepELBO().loss(lambda x: None, lambda x: None, torch.randn(2, 2))
    d, elbo = make(T=20), StochasticTimestepELBO()
    elbo.loss(d.model, d.guide, torch.randn(2, 2))
    with pytest.raises(ValueError, match="sampler is for T = 20, the model has T = 5"):
        elbo.loss(make(T=5).model, None, torch.randn(2, 2))
