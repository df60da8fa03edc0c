"""Each closed form against an independent computation."""

import math

import mpmath
import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ppl_diffusion import DiscretizedGaussian, NoiseSchedule
from ppl_diffusion import closed_forms as cf

from .common import Z

SCHEDULES = [NoiseSchedule.linear(40), NoiseSchedule.cosine(40)]
IDS = ["linear", "cosine"]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_statement_1_simulated_chain_matches_q_xt_given_x0(schedule):
    """x_t = √(1−β_t) x_{t−1} + √β_t ε, simulated step by step, has the moments of q(x_t|x_0)."""
    n, x0 = 200_000, torch.tensor([0.8, -0.3], dtype=torch.float64)
    x = x0.expand(n, 2).clone()
    for t in range(1, schedule.T + 1):
        tt = torch.full((n,), t)
        mean, var = cf.q_step_mean_variance(schedule, x, tt)
        x = mean + var.sqrt() * torch.randn_like(x)
        if t in (1, 2, 10, schedule.T):
            m, v = cf.q_mean_variance(schedule, x0.expand(1, 2), torch.tensor([t]))
            emp_mean, emp_var = x.mean(0), x.var(0)
            se_mean = (v[0] / n).sqrt()
            se_var = v[0] * math.sqrt(2 / (n - 1))
            assert torch.all((emp_mean - m[0]).abs() < Z * se_mean), (t, emp_mean, m)
            assert torch.all((emp_var - v[0]).abs() < Z * se_var), (t, emp_var, v)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_q_sample_is_a_draw_from_q_xt_given_x0(schedule):
    n, t = 100_000, torch.full((100_000,), 7)
    x0 = torch.full((n, 1), 0.5, dtype=torch.float64)
    xt = cf.q_sample(schedule, x0, t, torch.randn_like(x0))
    ab = schedule.alphas_cumprod[6]
    assert abs(xt.mean().item() - math.sqrt(ab) * 0.5) < Z * math.sqrt((1 - ab) / n)
    assert abs(xt.var().item() - (1 - ab)) < Z * (1 - ab) * math.sqrt(2 / n)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
@pytest.mark.parametrize("t", [1, 2, 13, 40])
def test_posterior_is_bayes_rule(schedule, t):
    """q(x_{t−1}|x_t, x_0) equals Gaussian conditioning of the joint (x_{t−1}, x_t) | x_0."""
    x0, xt = 0.7, -0.4
    ab_prev = 1.0 if t == 1 else np.prod(1 - schedule.betas[: t - 1])
    beta = schedule.betas[t - 1]
    mean = np.array([np.sqrt(ab_prev) * x0, np.sqrt(ab_prev * (1 - beta)) * x0])
    v = 1 - ab_prev
    cov = np.array([[v, np.sqrt(1 - beta) * v], [np.sqrt(1 - beta) * v, (1 - beta) * v + beta]])
    cond_mean = mean[0] + cov[0, 1] / cov[1, 1] * (xt - mean[1])
    cond_var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    m, var, log_var = cf.q_posterior_mean_variance(
        schedule, torch.tensor([[x0]], dtype=torch.float64), torch.tensor([[xt]], dtype=torch.float64), torch.tensor([t])
    )
    assert m.item() == pytest.approx(cond_mean, rel=1e-10, abs=1e-12)
    assert var.item() == pytest.approx(cond_var, rel=1e-10, abs=1e-15)
    if t > 1:
        assert log_var.item() == pytest.approx(math.log(cond_var), rel=1e-10)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_reverse_mean_from_eps_is_posterior_mean_at_predicted_x0(schedule):
    x_t = torch.randn(6, 3, dtype=torch.float64)
    eps = torch.randn(6, 3, dtype=torch.float64)
    t = torch.tensor([1, 2, 5, 17, 39, 40])
    x0_hat = cf.predict_x0_from_eps(schedule, x_t, t, eps)
    mean, _, _ = cf.q_posterior_mean_variance(schedule, x0_hat, x_t, t)
    torch.testing.assert_close(cf.p_mean_from_eps(schedule, x_t, t, eps), mean, rtol=1e-10, atol=1e-10)
    # and x̂_0 inverts Statement 1: q_sample(x̂_0, ε) = x_t
    torch.testing.assert_close(cf.q_sample(schedule, x0_hat, t, eps), x_t, rtol=1e-10, atol=1e-10)


def test_normal_kl_against_torch_and_monte_carlo():
    m1, lv1, m2, lv2 = (torch.tensor(v, dtype=torch.float64) for v in ([0.3, -1.0], [-1.0, 0.5], [0.0, 2.0], [0.2, -0.3]))
    kl = cf.normal_kl(m1, lv1, m2, lv2)
    p, q = Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp())
    torch.testing.assert_close(kl, kl_divergence(p, q), rtol=1e-12, atol=1e-12)
    x = p.sample((400_000,))
    ratio = p.log_prob(x) - q.log_prob(x)
    se = ratio.std(0) / math.sqrt(len(x))
    assert torch.all((ratio.mean(0) - kl).abs() < Z * se)


def test_gaussian_log_likelihood_is_normal_log_prob():
    x, m, ls = torch.randn(3, 5, dtype=torch.float64).unbind(0)
    torch.testing.assert_close(cf.gaussian_log_likelihood(x, m, ls), Normal(m, ls.exp()).log_prob(x))


def _mp_bin_edges(k, bins, mean, scale):
    half = mpmath.mpf(1) / (bins - 1)
    c = -1 + 2 * mpmath.mpf(k) / (bins - 1)
    lo = -mpmath.inf if k == 0 else (c - half - mean) / mpmath.mpf(scale)
    hi = mpmath.inf if k == bins - 1 else (c + half - mean) / mpmath.mpf(scale)
    return lo, hi


def _mp_bin_log_prob_quad(k, bins, mean, scale):
    """log P(bin k) by numerical integration of the standard Normal density (mpmath.quad, 60 digits)."""
    mpmath.mp.dps = 60
    lo, hi = _mp_bin_edges(k, bins, mean, scale)
    pdf = lambda z: mpmath.exp(-z * z / 2) / mpmath.sqrt(2 * mpmath.pi)  # noqa: E731
    points = [lo] + ([mpmath.mpf(0)] if lo < 0 < hi else []) + [hi]  # split at the mode
    return float(mpmath.log(mpmath.quad(pdf, points)))


def _mp_bin_log_prob_erfc(k, bins, mean, scale):
    """log P(bin k) from the complementary error function at 60 digits: exact even 10⁶ nats deep in
    a tail, where quadrature loses relative accuracy."""
    mpmath.mp.dps = 60
    lo, hi = _mp_bin_edges(k, bins, mean, scale)
    q = lambda z: mpmath.erfc(z / mpmath.sqrt(2)) / 2  # noqa: E731  Q(z) = 1 − Φ(z)
    if lo > 0:  # upper tail: Q(lo) − Q(hi)
        return float(mpmath.log(q(lo) - (0 if hi == mpmath.inf else q(hi))))
    return float(mpmath.log(q(-hi) - (0 if lo == -mpmath.inf else q(-lo))))  # Φ(hi) − Φ(lo)


@pytest.mark.parametrize("mean, scale", [(0.0, 0.5), (0.3, 0.01), (-0.99, 0.004), (0.97, 1e-3), (0.0, 3.0)])
def test_discretized_bins_sum_to_one(mean, scale):
    bins = 256
    x = torch.linspace(-1, 1, bins, dtype=torch.float64)
    lp = cf.discretized_gaussian_log_likelihood(x, torch.tensor(mean, dtype=torch.float64), torch.tensor(math.log(scale), dtype=torch.float64), bins)
    assert torch.isfinite(lp).all()
    assert torch.logsumexp(lp, 0).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("mean, scale, ks", [
    (0.0, 0.5, [0, 1, 127, 128, 254, 255]),
    (0.3, 0.02, [0, 100, 165, 166, 200, 255]),      # far tails: probabilities ~ 1e-900
    (-0.95, 0.004, [0, 5, 6, 7, 255]),
    (1.0, 1e-3, [0, 200, 254, 255]),
])
def test_discretized_matches_numerical_integration(mean, scale, ks):
    bins = 256
    x = torch.tensor([-1 + 2 * k / (bins - 1) for k in ks], dtype=torch.float64)
    lp = cf.discretized_gaussian_log_likelihood(x, torch.tensor(mean, dtype=torch.float64), torch.tensor(math.log(scale), dtype=torch.float64), bins)
    exact = np.array([_mp_bin_log_prob_erfc(k, bins, mean, scale) for k in ks])
    np.testing.assert_allclose(lp.numpy(), exact, rtol=1e-12, atol=1e-12)
    for i, k in enumerate(ks):
        if exact[i] > -200:  # where quadrature is accurate, it agrees too
            assert lp[i].item() == pytest.approx(_mp_bin_log_prob_quad(k, bins, mean, scale), rel=1e-9, abs=1e-12)


def test_discretized_float32_tails_are_finite_with_finite_gradients():
    x = torch.tensor([-1.0, 0.0, 1.0, 1.0, -1.0])
    mean = torch.tensor([0.9, -0.95, -0.9, 1.0, -1.0], requires_grad=True)
    log_scale = torch.full((5,), math.log(0.01), requires_grad=True)
    lp = cf.discretized_gaussian_log_likelihood(x, mean, log_scale, 256)
    assert torch.isfinite(lp).all(), lp
    assert lp[0] < -1000 and lp[3] > -1.0  # far tail vs a certain edge bin
    lp.sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()


def test_discretized_gradient_matches_finite_difference():
    x = torch.tensor([-1.0, -0.2, 0.6, 1.0], dtype=torch.float64)
    mean = torch.tensor([-0.9, 0.1, 0.55, 0.7], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor([-3.0, -1.0, -4.0, -2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, s: cf.discretized_gaussian_log_likelihood(x, m, s, 256), (mean, log_scale))


def test_discretized_distribution_samples_on_grid_with_its_probabilities():
    d = DiscretizedGaussian(torch.tensor(0.2), torch.tensor(0.01), bins=256)
    s = d.sample((100_000,))
    k = torch.round((s + 1) * 255 / 2).long()
    torch.testing.assert_close(s, k.float() * 2 / 255 - 1)
    counts = torch.bincount(k, minlength=256).double() / len(s)
    p = d.log_prob(torch.linspace(-1, 1, 256)).double().exp()
    se = (p * (1 - p) / len(s)).sqrt()
    assert torch.all((counts - p).abs() <= Z * se + 1e-12)


def test_discretized_validation_rejects_off_grid_values():
    d = DiscretizedGaussian(torch.tensor(0.0), torch.tensor(0.1), bins=256, validate_args=True)
    with pytest.raises(ValueError, match="not a bin centre"):
        d.log_prob(torch.tensor(0.001))


def test_log_normal_cdf_diff_against_mpmath():
    a = torch.tensor([-40.0, -1.0, 0.5, 30.0, -0.01], dtype=torch.float64)
    b = torch.tensor([-39.0, 1.0, 0.6, 31.0, 0.01], dtype=torch.float64)
    got = cf.log_normal_cdf_diff(a, b)
    mpmath.mp.dps = 500  # Φ(31) − Φ(30) ≈ 1e-197 needs ~200 digits of 1 − Φ
    expected = [float(mpmath.log(mpmath.ncdf(bi) - mpmath.ncdf(ai))) for ai, bi in zip(a.tolist(), b.tolist())]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
