import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ppl_diffusion import NoiseSchedule


def test_single_step_schedules_are_valid():
    for s in (NoiseSchedule.linear(1), NoiseSchedule.cosine(1), NoiseSchedule([0.5])):
        assert s.T == 1 and s.posterior_variance[0] == 0.0 and np.isfinite(s.posterior_log_variance_clipped).all()


@pytest.mark.parametrize("T", [2, 25, 1000])
def test_linear_matches_ddpm(T):
    s = NoiseSchedule.linear(T)
    assert s.T == T and s.betas.dtype == np.float64
    assert s.betas[0] == pytest.approx(min(1e-4 * 1000 / T, 0.999))
    assert s.betas[-1] == pytest.approx(min(0.02 * 1000 / T, 0.999))
    assert np.allclose(np.diff(s.betas), np.diff(s.betas)[0])


def test_linear_explicit_values_are_used_as_given():
    s = NoiseSchedule.linear(10, beta_start=0.1, beta_end=0.2)
    assert s.betas[0] == 0.1 and s.betas[-1] == pytest.approx(0.2)


def test_cosine_follows_its_alpha_bar_until_the_clip():
    T, s_ = 1000, 0.008
    s = NoiseSchedule.cosine(T)
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2  # noqa: E731
    expected = np.array([f(t) / f(0) for t in range(1, T + 1)])
    clipped = np.flatnonzero(s.betas >= 0.999)
    assert list(clipped) == [T - 1]  # only the last step hits the clip
    np.testing.assert_allclose(s.alphas_cumprod[: T - 1], expected[: T - 1], rtol=1e-10)
    assert s.betas.max() <= 0.999


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(50), NoiseSchedule.cosine(50)], ids=["linear", "cosine"])
def test_derived_arrays_from_their_definitions(schedule):
    s = schedule
    ab = np.array([np.prod(1 - s.betas[:t]) for t in range(1, s.T + 1)])  # ∏ α_s, brute force
    np.testing.assert_allclose(s.alphas_cumprod, ab, rtol=1e-12)
    np.testing.assert_allclose(s.alphas_cumprod_prev, np.append(1.0, ab[:-1]), rtol=1e-12)
    assert s.posterior_variance[0] == 0.0
    np.testing.assert_allclose(s.posterior_log_variance_clipped[1:], np.log(s.posterior_variance[1:]))
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
    # β̃_t <= β_t: the posterior is narrower than the forward step.
    assert np.all(s.posterior_variance <= s.betas + 1e-15)


@pytest.mark.parametrize("betas, match", [
    ([], "T >= 1"),
    ([0.1, float("nan")], r"β_2 = nan \(betas\[1\]\)"),
    ([0.1, 0.2, 1.0], r"β_3 = 1.0"),
    ([0.0], r"β_1 = 0.0"),
    ([-0.5, 0.1], r"β_1 = -0.5"),
    ([0.1, float("inf")], r"β_2 = inf"),
    ([[0.1, 0.2]], "1-D"),
])
def test_invalid_betas_name_the_index_and_value(betas, match):
    with pytest.raises(ValueError, match=match):
        NoiseSchedule(betas)


@pytest.mark.parametrize("T", [0, -3, 2.5, True])
def test_invalid_T(T):
    with pytest.raises(ValueError, match="T = "):
        NoiseSchedule.linear(T)
    with pytest.raises(ValueError, match="T = "):
        NoiseSchedule.cosine(T)


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(1000), NoiseSchedule.cosine(1000)], ids=["linear", "cosine"])
def test_statement_2_prior_term_is_tiny(schedule):
    """Statement 2: KL(q(x_T|x_0) || N(0, I)) ≈ 0 for every x_0 in [−1, 1] (per dimension)."""
    x0 = torch.linspace(-1, 1, 201, dtype=torch.float64)
    ab = float(schedule.alphas_cumprod[-1])
    q = Normal(math.sqrt(ab) * x0, math.sqrt(1 - ab))
    kl = kl_divergence(q, Normal(0.0, 1.0))
    print(f"{schedule}: alpha_bar_T = {ab:.3g}, max KL per dimension = {kl.max().item():.3g} nats")
    assert kl.max().item() < 5e-5
    # For a 28x28 image that is < 0.04 nats in all, < 1e-7 bits/dim.
