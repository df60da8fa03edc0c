"""The exact case: Gaussian data and a linear denoiser make the model linear-Gaussian.

Then log p(x_0) is known in closed form (propagating the reverse chain's Gaussian marginals) and so is
the ELBO (every term a Gaussian expectation of a quadratic), both computed in ``tests/common.py``
without any code of the package. The ELBO never exceeds log p(x_0); the estimators' means equal the
closed-form ELBO; and for N(0, I) data the optimal linear denoiser with σ_t² = β_t makes the reverse
chain equal to the forward one, so the bound is tight and even the Monte-Carlo ELBO has no variance.
"""

import numpy as np
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ppl_diffusion import GaussianDiffusion, NoiseSchedule, StochasticTimestepELBO, variational_bound
from ppl_diffusion.diffusion import VARIANCES

from .common import (LinearDenoiser, assert_mc_close, linear_gaussian_elbo, linear_gaussian_log_marginal, mean_se,
                     optimal_linear_coefficients)

M, S2 = np.array([0.3, -0.5]), np.array([0.25, 0.6])  # data N(M, diag(S2))


def data(n, m=M, s2=S2, seed=0):
    return np.random.default_rng(seed).normal(m, np.sqrt(s2), size=(n, len(m)))


@pytest.mark.parametrize("T", [10, 1000])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_elbo_never_exceeds_log_likelihood(T, schedule, variance):
    s = getattr(NoiseSchedule, schedule)(T)
    rng = np.random.default_rng(1)
    a0, b0 = optimal_linear_coefficients(s, M, S2)
    x0 = data(20)
    for scale in (0.0, 0.05, 0.5):
        a, b = a0 + scale * rng.normal(size=a0.shape), b0 + scale * rng.normal(size=b0.shape)
        log_p = linear_gaussian_log_marginal(s, a, b, VARIANCES[variance](s), x0)
        elbo, _ = linear_gaussian_elbo(s, a, b, VARIANCES[variance](s), x0)
        assert np.all(elbo <= log_p + 1e-9), (elbo - log_p).max()


@pytest.mark.parametrize("T, tol", [(50, 0.03), (1000, 0.002)])
def test_gap_with_the_optimal_linear_denoiser(T, tol):
    """With ε̂ = E[ε|x_t] and σ_t² = β_t the gap is only the mismatch of the reverse variances:
    0.026 nats at T = 50, 0.0013 at T = 1000 for this data (2 dimensions)."""
    s = NoiseSchedule.linear(T)
    a, b = optimal_linear_coefficients(s, M, S2)
    x0 = data(50)
    gap = linear_gaussian_log_marginal(s, a, b, VARIANCES["beta"](s), x0) - linear_gaussian_elbo(s, a, b, VARIANCES["beta"](s), x0)[0]
    print(f"T = {T}: gap = {gap.mean():.5f} nats (max {gap.max():.5f})")
    assert np.all(gap >= 0) and gap.max() < tol


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_tight_bound_for_standard_normal_data(schedule):
    """N(0, I) data: the forward chain is stationary and reversible, the optimal linear model with
    σ_t² = β_t is the forward chain run backwards, and log p(x_0, z) − log q(z|x_0) = log p(x_0)
    for every trajectory z: the Pyro programs must give that number on every draw."""
    T = 30
    s = getattr(NoiseSchedule, schedule)(T)
    zeros, ones = np.zeros(2), np.ones(2)
    a, b = optimal_linear_coefficients(s, zeros, ones)
    d = GaussianDiffusion(schedule=s, denoiser=LinearDenoiser(T, 2, a, b), event_shape=(2,))
    x0 = torch.as_tensor(data(8, zeros, ones))
    log_p = linear_gaussian_log_marginal(s, a, b, d.p_log_variance, x0.numpy()).sum()
    assert log_p == pytest.approx(-0.5 * (x0.numpy() ** 2).sum() - 8 * np.log(2 * np.pi), rel=1e-9)  # N(0, I)
    for _ in range(3):
        for guide in (d.guide, d.posterior_guide):
            assert -Trace_ELBO().loss(d.model, guide, x0) == pytest.approx(log_p, abs=1e-7)
    # The analytic-KL estimator is exact only in expectation (its KLs are averaged over x_t draws).
    draws = [-TraceMeanField_ELBO().loss(d.model, d.posterior_guide, x0) for _ in range(200)]
    assert_mc_close(mean_se(draws), (log_p, 0.0), what="meanfield")


def _float64_model(schedule, variance, T=20, perturb=0.05):
    s = getattr(NoiseSchedule, schedule)(T)
    a, b = optimal_linear_coefficients(s, M, S2)
    rng = np.random.default_rng(2)
    a, b = a + perturb * rng.normal(size=a.shape), b + perturb * rng.normal(size=b.shape)
    d = GaussianDiffusion(schedule=s, denoiser=LinearDenoiser(T, 2, a, b), event_shape=(2,), variance=variance)
    x0 = torch.as_tensor(data(3))
    elbo, terms = linear_gaussian_elbo(s, a, b, d.p_log_variance, x0.numpy())
    return d, x0, elbo, terms


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_estimators_have_the_closed_form_elbo_as_mean(schedule, variance):
    d, x0, exact, terms = _float64_model(schedule, variance)
    R = 400
    xr = x0.repeat(R, 1)
    exact_total = exact.sum()
    runs = {
        "meanfield": lambda: -TraceMeanField_ELBO().loss(d.model, d.posterior_guide, xr) / R,
        "stochastic kl": lambda: -StochasticTimestepELBO(timesteps_per_example=4).loss(d.model, d.guide, xr) / R,
        "stochastic mc": lambda: -StochasticTimestepELBO(timesteps_per_example=4, step_term="mc").loss(
            d.model, d.guide, xr) / R,
        "bound": lambda: -variational_bound(d, xr).nll.sum().item() / R,
    }
    with torch.no_grad():
        for name, fn in runs.items():
            m = mean_se([fn() for _ in range(25)])
            print(f"{schedule}-{variance} {name}: {m[0]:.4f} ± {m[1]:.4f}, exact {exact_total:.4f}")
            assert_mc_close(m, (exact_total, 0.0), what=name)
            assert m[1] < 0.02 * abs(exact_total)  # power: a bias of 10% of the ELBO would be seen


def test_bound_terms_have_the_closed_form_means():
    """Each L_t of the evaluator, averaged over draws, is the closed-form L_t."""
    d, x0, _, terms = _float64_model("cosine", "beta")
    R = 3000
    with torch.no_grad():
        bound = variational_bound(d, x0.repeat(R, 1), timesteps_per_batch=5)
    per = bound.terms.reshape(R, 3, -1)
    mean, se = per.mean(0).numpy(), (per.std(0) / R**0.5).numpy()
    assert np.all(np.abs(mean - terms) <= 5 * se + 1e-12), np.abs(mean - terms) / (se + 1e-300)
    np.testing.assert_allclose(mean[:, -1], terms[:, -1], rtol=1e-10)  # the prior term is exact


def test_bound_terms_of_a_subset_of_steps():
    """``timesteps`` evaluates only those terms (closed-form means), NaN elsewhere; the prior is always there."""
    d, x0, _, terms = _float64_model("linear", "beta")
    R, steps = 2000, [1, 2, 7, 20]
    with torch.no_grad():
        bound = variational_bound(d, x0.repeat(R, 1), timesteps=steps, timesteps_per_batch=3)
    per = bound.terms.reshape(R, 3, -1)
    cols = np.array(steps) - 1
    assert np.isnan(np.delete(per.numpy(), np.append(cols, 20), axis=-1)).all()
    mean, se = per.mean(0).numpy()[:, cols], (per.std(0) / R**0.5).numpy()[:, cols]
    assert np.all(np.abs(mean - terms[:, cols]) <= 5 * se + 1e-12)
    np.testing.assert_allclose(per.mean(0).numpy()[:, -1], terms[:, -1], rtol=1e-10)
    with pytest.raises(ValueError, match="1..T = 1..20"):
        variational_bound(d, x0, timesteps=[0, 3])


@pytest.mark.parametrize("rank", [0, 1], ids=["rank0", "rank1"])
def test_estimators_under_batch_draws_have_the_closed_form_elbo_as_mean(rank):
    """Training's draws (t and every latent made for the global batch of 2 ranks, this rank's rows kept) are
    the estimators' own distribution: their means are still the closed-form ELBO."""
    from pyro.infer import Trace_ELBO

    from ppl_diffusion.distributed import World
    from ppl_diffusion.infer.draws import BatchDraws

    d, x0, exact, _ = _float64_model("linear", "beta")
    R = 400
    xr = x0.repeat(R, 1)
    draws = BatchDraws(torch.Generator().manual_seed(7), World(rank=rank, world_size=2))
    runs = {
        "trace": lambda: -Trace_ELBO().loss(d.model, d.guide, xr) / R,
        "meanfield": lambda: -TraceMeanField_ELBO().loss(d.model, d.posterior_guide, xr) / R,
        "stochastic kl": lambda: -StochasticTimestepELBO(timesteps_per_example=4).loss(d.model, d.guide, xr) / R,
        "stochastic mc": lambda: -StochasticTimestepELBO(timesteps_per_example=4, step_term="mc").loss(
            d.model, d.guide, xr) / R,
    }
    with torch.no_grad():
        for name, fn in runs.items():
            values = []
            for _ in range(25):
                with draws:
                    values.append(fn())
            m = mean_se(values)
            assert_mc_close(m, (exact.sum(), 0.0), what=f"{name} under BatchDraws")
            assert m[1] < 0.02 * abs(exact.sum())
