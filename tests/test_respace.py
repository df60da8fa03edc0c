"""Respaced sampling: kept steps, the respaced schedule, the step-mapping wrapper, sampling."""

import doctest

import numpy as np
import pyro
import pytest
import torch
from torch import nn

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
from ppl_diffusion import respace as respace_module
from ppl_diffusion.respace import RespacedDenoiser, respace, respaced_schedule, space_timesteps

SCHEDULES = {"linear": NoiseSchedule.linear, "cosine": NoiseSchedule.cosine}


class RecordingNet(nn.Module):
    """ε̂ = 0.1 x_t; records every ``t`` it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.1))
        self.calls: list[list[int]] = []

    def forward(self, x_t, t):
        self.calls.append(t.tolist())
        return self.scale * x_t


def make_diffusion(T=20, schedule="linear", variance="beta", event_shape=(1, 8, 8), denoiser=None):
    dim = int(np.prod(event_shape))
    denoiser = denoiser if denoiser is not None else MLPDenoiser(dim, width=32, depth=1, zero_init=False)
    return GaussianDiffusion(schedule=SCHEDULES[schedule](T), denoiser=denoiser, event_shape=event_shape,
                             variance=variance)


def test_doctests():
    result = doctest.testmod(respace_module)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------- space_timesteps
@pytest.mark.parametrize("T", [1, 2, 3, 10, 97, 1000])
def test_space_timesteps_keeps_both_ends(T):
    for K in sorted({k for k in (1, 2, 3, T // 2, T - 1, T) if 1 <= k <= T}):
        steps = space_timesteps(T, K)
        assert len(steps) == K and all(isinstance(s, int) for s in steps)
        assert all(a < b for a, b in zip(steps, steps[1:])), steps
        assert steps[-1] == T and (K == 1 or steps[0] == 1)
        gaps = np.diff(steps)
        assert K < 3 or gaps.max() - gaps.min() <= 1, f"uneven spacing {steps}"


def test_space_timesteps_values():
    assert space_timesteps(10, 4) == [1, 4, 7, 10]
    assert space_timesteps(10, 10) == list(range(1, 11))
    assert space_timesteps(10, 1) == [10]
    assert space_timesteps(10, "4") == [1, 4, 7, 10]
    # improved DDPM's sections, shifted to 1..T: "2,3" of 10 -> sections 1..5 and 6..10
    assert space_timesteps(10, "2,3") == [1, 5, 6, 8, 10]
    # sections of unequal size: 11 = 6 + 5
    assert space_timesteps(11, "1,1") == [1, 7]
    assert space_timesteps(100, "ddim10") == list(range(1, 101, 10))


@pytest.mark.parametrize("K", [0, -3, 21, 2.5, "abc", "3,x", "ddimx", "0,5", "11,1", True, None],
                         ids=lambda k: repr(k))
def test_invalid_K_names_the_value(K):
    with pytest.raises(ValueError, match=repr(K).replace("[", r"\[").replace("(", r"\(").replace(".", r"\.")):
        space_timesteps(20, K)


@pytest.mark.parametrize("K", [0, 21, 2.5, "abc"], ids=repr)
def test_respace_invalid_K(K):
    with pytest.raises(ValueError, match=repr(K).replace(".", r"\.")):
        respace(make_diffusion(T=20), K)


@pytest.mark.parametrize("steps, bad", [([1, 5, 5], "5"), ([0, 3], "0"), ([3, 21], "21"), ([], "empty")])
def test_respace_invalid_explicit_steps(steps, bad):
    with pytest.raises(ValueError, match=bad):
        respace(make_diffusion(T=20), steps)


# ------------------------------------------------------------------------------------- the schedule
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_all_steps_reproduce_the_original_schedule(schedule, variance):
    d = make_diffusion(T=50, schedule=schedule, variance=variance)
    r = respace(d, d.T)
    assert r.T == d.T
    for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2"):
        assert np.array_equal(getattr(r.schedule, name), getattr(d.schedule, name)), name
    assert np.array_equal(r.p_log_variance, d.p_log_variance)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("K", [1, 2, 7, 25, "3,5", "ddim10", [4, 17, 90, 100]], ids=repr)
def test_respaced_alphas_cumprod_are_the_originals_at_kept_steps(schedule, K):
    sched = SCHEDULES[schedule](100)
    steps = sorted(K) if isinstance(K, list) else space_timesteps(100, K)
    new = respaced_schedule(sched, steps)
    assert new.T == len(steps)
    np.testing.assert_allclose(new.alphas_cumprod, sched.alphas_cumprod[np.array(steps) - 1], rtol=0, atol=1e-12)
    # the definition, independently: β'_k = 1 − ᾱ_{s_k} / ᾱ_{s_{k−1}}, ᾱ_{s_0} = 1
    abar = [1.0] + [float(np.prod(1 - sched.betas[:s])) for s in steps]
    expected = [1 - abar[k] / abar[k - 1] for k in range(1, len(abar))]
    np.testing.assert_allclose(new.betas, expected, rtol=1e-10, atol=1e-14)
    d = make_diffusion(T=100, schedule=schedule)
    assert np.array_equal(respace(d, K).schedule.betas, new.betas)


# ------------------------------------------------------------------------------------- the wrapper
def test_wrapper_passes_original_steps_and_shares_weights():
    net = RecordingNet()
    d = make_diffusion(T=30, denoiser=net, event_shape=(3,))
    r = respace(d, 4)
    steps = space_timesteps(30, 4)
    assert isinstance(r.denoiser, RespacedDenoiser) and r.denoiser.denoiser is net
    assert r.denoiser.timesteps.tolist() == steps == [1, 11, 20, 30]
    assert [id(p) for p in r.parameters()] == [id(p) for p in d.parameters()]
    x = r.sample(5)
    assert x.shape == (5, 3)
    # ancestral order: new steps K..1 are called as the original steps s_K..s_1, one value per batch
    assert net.calls == [[s] * 5 for s in reversed(steps)]
    net.calls.clear()
    r.denoiser(torch.zeros(3, 3), torch.tensor([1, 4, 2]))
    assert net.calls == [[1, 30, 11]]


def test_weights_are_shared_after_training_the_original():
    d = make_diffusion(T=10, event_shape=(2,))
    r = respace(d, 3)
    with torch.no_grad():
        for p in d.denoiser.parameters():
            p.add_(1.0)
    assert r.denoiser.timesteps.tolist() == [1, 5, 10]  # 1 + round(4.5) = 5: round half to even
    x, t = torch.randn(4, 2), torch.tensor([1, 2, 3, 3])
    assert torch.equal(r.denoiser(x, t), d.denoiser(x, torch.tensor([1, 5, 10, 10])))


# ------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_all_steps_give_identical_samples(variance):
    d = make_diffusion(T=20, variance=variance)
    pyro.set_rng_seed(123)
    a = d.sample(6)
    pyro.set_rng_seed(123)
    b = respace(d, 20).sample(6)
    assert torch.equal(a, b)


@pytest.mark.parametrize("K", [1, 5, "2,3"], ids=repr)
def test_sampling_shape(K):
    d = make_diffusion(T=40)
    r = respace(d, K)
    x = r.sample(7)
    assert x.shape == (7, 1, 8, 8) and torch.isfinite(x).all()
    assert r.event_shape == d.event_shape and r.prior is d.prior and r.decoder is d.decoder
    assert r.variance == d.variance
