"""The continuous-time maps of the chain: ᾱ at the steps, β = −d log ᾱ/ds, and the tensor evaluation."""

import math

import numpy as np
import pytest
import torch

from ppl_diffusion import NoiseSchedule
from ppl_diffusion.continuous import MAPS, ContinuousTime
from ppl_diffusion.ode import TimeCoefficients

SCHEDULES = {"linear": lambda: NoiseSchedule.linear(1000), "cosine": lambda: NoiseSchedule.cosine(1000),
             "linear-20": lambda: NoiseSchedule.linear(20)}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("kind", ["grid", "grid-linear"])
def test_grid_maps_reproduce_the_chain_at_every_step(name, kind):
    schedule = SCHEDULES[name]()
    ct = ContinuousTime(schedule, kind)
    steps = np.arange(1, schedule.T + 1)
    np.testing.assert_allclose(ct.step(steps / schedule.T), steps, rtol=1e-12)
    np.testing.assert_allclose(ct.alpha_bar(steps / schedule.T), schedule.alphas_cumprod, rtol=1e-10)


def test_grid_map_equals_the_cosine_formula_at_the_steps_but_the_clipped_last():
    schedule = NoiseSchedule.cosine(1000)
    ct = ContinuousTime(schedule)

    def f(u, s=0.008):
        return np.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    u = np.arange(1, 1000) / 1000
    np.testing.assert_allclose(ct.alpha_bar(u), f(u) / f(0.0), rtol=1e-9)


def test_vp_linear_is_score_sdes_and_matches_the_chain_to_first_order_in_beta():
    schedule = NoiseSchedule.linear(1000)
    ct = ContinuousTime(schedule, "vp-linear")
    assert (ct.beta_min, ct.beta_max) == pytest.approx((0.1, 20.0))
    steps = np.arange(1, 1001)
    s = (steps - 1) / 999  # score_sde's label 999 s is our step − 1
    np.testing.assert_allclose(ct.step(s), steps, rtol=1e-12)
    gap = np.abs(np.log(ct.alpha_bar(s)) - np.log(schedule.alphas_cumprod))
    # log ᾱ_t = Σ log(1 − β_i) = −Σ β_i − Σ β_i²/2 − …: the map keeps −Σ β_i to O(β) per step, so the gap is
    # of the order of Σ β_i²/2 (0.067 at t = T) plus the Riemann-sum error, never more than twice that.
    bound = np.cumsum(schedule.betas ** 2) / 2 + schedule.betas
    assert np.all(gap <= 2 * bound), gap.max()
    assert 0.03 < gap[-1] < 0.1  # the documented "up to 0.07"


def test_vp_linear_is_refused_for_a_schedule_that_is_not_linear():
    with pytest.raises(ValueError, match="not linear: use the grid map"):
        ContinuousTime(NoiseSchedule.cosine(100), "vp-linear")
    with pytest.raises(ValueError, match="unknown continuous-time map 'cosine'"):
        ContinuousTime(NoiseSchedule.cosine(100), "cosine")


@pytest.mark.parametrize("kind,name", [(k, n) for k in MAPS for n in ("linear", "cosine")
                                         if (k, n) != ("vp-linear", "cosine")])  # vp-linear: linear schedules only
def test_beta_is_minus_the_derivative_of_log_alpha_bar(kind, name):
    ct = ContinuousTime(SCHEDULES[name](), kind)
    rng = np.random.default_rng(0)
    s = rng.uniform(0.002, 0.998, 200)
    s = s[np.abs(s * 1000 - np.round(s * 1000)) > 1e-3]  # central differences away from the knots
    h = 1e-7
    fd = -(np.log(ct.alpha_bar(s + h)) - np.log(ct.alpha_bar(s - h))) / (2 * h)
    np.testing.assert_allclose(ct.beta(s), fd, rtol=1e-5, atol=1e-6)
    dense = np.linspace(ct.default_eps, 1.0, 20_001)
    assert np.all(ct.beta(dense) > 0)  # ᾱ decreasing: the spline does not overshoot between steps


def test_the_grid_spline_has_continuous_beta_and_the_log_linear_one_jumps_at_steps():
    schedule = NoiseSchedule.linear(1000)
    knots = np.arange(2, 999) / 1000
    jumps = {}
    for kind in ("grid", "grid-linear"):
        ct = ContinuousTime(schedule, kind)
        jumps[kind] = np.abs(ct.beta(knots + 1e-12) - ct.beta(knots - 1e-12)).max()
    assert jumps["grid"] < 1e-6 < jumps["grid-linear"]


@pytest.mark.parametrize("kind", MAPS)
def test_tensor_coefficients_equal_the_numpy_reference(kind):
    ct = ContinuousTime(NoiseSchedule.linear(200), kind)
    coef = TimeCoefficients(ct)
    for s in np.random.default_rng(1).uniform(ct.default_eps, 1.0, 25):
        t, sigma, beta = coef(torch.tensor(s, dtype=torch.float64), torch.float64)
        assert t.item() == pytest.approx(ct.step(s), rel=1e-12)
        assert sigma.item() ** 2 == pytest.approx(1 - ct.alpha_bar(s), rel=1e-10)
        assert beta.item() == pytest.approx(ct.beta(s), rel=1e-10)


def test_eps_is_checked_against_the_first_trained_step():
    ct = ContinuousTime(NoiseSchedule.linear(100))
    assert ct.check_eps(None) == 0.01
    with pytest.raises(ValueError, match=r"eps = 1e-05 is outside \[1/T = 0.01"):
        ct.check_eps(1e-5)
    with pytest.raises(ValueError, match="eps = 1.0 is outside"):
        ct.check_eps(1.0)
    assert ContinuousTime(NoiseSchedule.linear(100), "vp-linear").check_eps(None) == 1e-5
    with pytest.raises(ValueError, match="need T >= 2"):
        ContinuousTime(NoiseSchedule.linear(1))
