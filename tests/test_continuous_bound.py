"""The continuous-time bound's estimate (evaluate on a T = 0 run): unbiased for the closed form of the exact Gaussian
case, its t-integral's standard error honest, its endpoint terms those of the chains of the same γ, its numbers a
function of (seed, example) alone, and its plans' draws and weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ppl_diffusion import GaussianDiffusion, MLPDenoiser
from ppl_diffusion.gamma import LinearGamma
from ppl_diffusion.infer import continuous_time_terms, variational_bound
from ppl_diffusion.infer.continuous_bound import (continuous_pilot_profile, estimate_continuous_bound,
                                                  plan_continuous_from_profile, plan_continuous_uniform)

from .common import Z, gaussian_continuous_terms, mean_se
from .test_continuous_elbo import RANGE, M, S2, _data, _ends, _net_schedule, _oracle_model


def _closed_form(diffusion, x0) -> np.ndarray:
    """The exact continuous-time bound per example (nats) of the oracle model."""
    return sum(gaussian_continuous_terms(M, S2, x0.numpy(), *_ends(diffusion.schedule)).values())


@pytest.mark.parametrize("proposal", ["uniform", "pilot"])
def test_plans_draw_in_their_strata_with_weights_that_integrate(proposal):
    """Each draw lies in its stratum, is a function of (seed, index), and Σ w f(t) is unbiased for ∫_0^1 f."""
    profile = np.exp(-8 * np.linspace(0, 1, 50)) + 0.01  # a proposal far from uniform, mass near t = 0
    plan = (plan_continuous_uniform(strata=5, draws=3) if proposal == "uniform"
            else plan_continuous_from_profile(profile, strata=5, draws=3))
    index = np.arange(4000)
    t, w = plan.draw(7, index)
    for k, (a, b) in enumerate(plan.strata):
        assert np.all((t[:, k] >= plan.edges[a]) & (t[:, k] < plan.edges[b]))
    t2, w2 = plan.draw(7, index[::-1].copy())
    assert np.array_equal(t2[::-1], t) and np.array_equal(w2[::-1], w)  # per example, whatever the batch
    for f, exact in ((lambda s: s ** 2, 1 / 3), (lambda s: np.exp(-10 * s), (1 - math.exp(-10)) / 10)):
        est = (w * f(t)).sum((1, 2))  # one estimate of ∫ f per example
        mean, se = mean_se(est)
        assert abs(mean - exact) < Z * se + 1e-12, (proposal, mean, se, exact)
    if proposal == "pilot":  # the strata follow the proposal's mass: narrower where it concentrates
        widths = [plan.edges[b] - plan.edges[a] for a, b in plan.strata]
        assert widths[0] < widths[-1]


@pytest.mark.parametrize("proposal", ["uniform", "pilot"])
def test_estimate_is_unbiased_for_the_closed_form_bound(proposal):
    """The exact Gaussian case (the exact ε̂, a non-linear learned-net γ): the mean over seeds of the estimate of each
    example is the closed-form bound, and the t-integral's estimated variance is the spread of its diffusion term
    over independent draws of t and ε (same endpoint noise)."""
    diffusion = _oracle_model(_net_schedule(), trainable=False)
    x0 = _data(6, seed=3)
    exact = _closed_form(diffusion, x0)
    if proposal == "pilot":
        profile, calls = continuous_pilot_profile(diffusion, _data(8, seed=9), seed=0, bins=20)
        assert calls == 8 * 20 and np.all(profile > 0)
        plan = plan_continuous_from_profile(profile, strata=4, draws=2)
    else:
        plan = plan_continuous_uniform(strata=4, draws=2)
    # R = 300 independent replicates of each example at once: its rows at indices i + N·r (the noise and the draws
    # are a function of (seed, index) alone), i.e. 300 seeds' worth.
    R, N = 300, len(x0)
    est = estimate_continuous_bound(diffusion, x0.repeat(R, 1), plan, seed=0, indices=np.arange(R * N))
    nll = est.nll.reshape(R, N).numpy()
    for i in range(N):
        mean, se = mean_se(nll[:, i])
        assert abs(mean - exact[i]) < Z * se, (i, mean, se, exact[i])
    # The t-integral's variance: the diffusion term's spread over the replicates (its draws of t and ε) against the
    # mean of its estimate v̂. Both unbiased for the same variance; with 300 replicates the ratio of the sample
    # variance to its mean is within ~±3·sqrt(2/299) (plus the heavier tails of a variance of squares): 35 %.
    spread = est.terms["diffusion"].reshape(R, N).var(0).numpy()
    estimated = est.t_variance.reshape(R, N).mean(0).numpy()
    np.testing.assert_allclose(estimated, spread, rtol=0.35)
    assert np.all(est.terms["reconstruction"].reshape(R, N).std(0).numpy() > 0)  # x_1 drawn per replicate


def test_endpoint_terms_are_the_chains_L0_and_LT():
    """x_1 at γ_0 and x_T at γ_1 at every T: with the same seed the reconstruction and prior terms are the L_0 and L_T
    of the full bound of any chain of the same γ (here 7 steps, the Gaussian decoder, variance "beta")."""
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(schedule=LinearGamma(*RANGE), denoiser=MLPDenoiser(2, width=16, depth=1),
                                  event_shape=(2,), T=0, gamma_range=RANGE)
    x0 = _data(5)
    index = np.array([3, 10, 4, 7, 0])
    est = estimate_continuous_bound(diffusion, x0.float(), plan_continuous_uniform(strata=2, draws=1), seed=11,
                                    indices=index)
    with torch.no_grad():
        chain = variational_bound(diffusion.with_steps(7), x0.float(), seed=11, indices=index).terms
    torch.testing.assert_close(est.terms["reconstruction"], chain[:, 0].double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(est.terms["prior"], chain[:, -1].double(), rtol=1e-5, atol=1e-6)
    assert torch.isnan(est.t_variance).all()  # one draw per stratum: no within-stratum variance


def test_integrand_is_the_continuous_programs_factor():
    diffusion = _oracle_model(_net_schedule(), trainable=False)
    x0 = _data(4)
    g = torch.Generator().manual_seed(1)
    t = torch.rand(4, dtype=torch.float64, generator=g)
    eps = torch.randn(4, 2, dtype=torch.float64, generator=g)
    with torch.no_grad():
        direct = diffusion.diffusion_integrand(x0, t, eps)
        traced = continuous_time_terms(diffusion, x0, t, noise={"x_t": eps, "x_1": eps, "x_T": eps})["diffusion"]
    torch.testing.assert_close(direct, traced, rtol=0, atol=0)


def test_each_example_is_a_function_of_seed_and_index():
    """Another batching (rows per call), order or subset gives each example the same estimate."""
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(schedule=_net_schedule().float(), denoiser=MLPDenoiser(2, width=16, depth=1),
                                  event_shape=(2,), T=0, gamma_range=RANGE)
    x = _data(9).float()
    plan = plan_continuous_uniform(strata=3, draws=2)
    full = estimate_continuous_bound(diffusion, x, plan, seed=5, indices=np.arange(9), inputs_per_call=7)
    part = estimate_continuous_bound(diffusion, x[[8, 2, 5]], plan, seed=5, indices=[8, 2, 5], inputs_per_call=512)
    torch.testing.assert_close(part.nll, full.nll[[8, 2, 5]], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(part.t, full.t[[8, 2, 5]])
    assert full.calls == 9 * (6 + 1) and full.terms["diffusion"].shape == (9,)


def test_bad_input_is_one_line():
    chain = GaussianDiffusion(schedule=LinearGamma(*RANGE), denoiser=MLPDenoiser(2, width=8, depth=1),
                              event_shape=(2,), T=5)
    with pytest.raises(ValueError, match="continuous time .* T = 5 steps: use estimate_bound"):
        estimate_continuous_bound(chain, torch.zeros(2, 2), plan_continuous_uniform(), seed=0)
    with pytest.raises(ValueError, match=r"strata = 60 but the pilot has 50 bins; pass --strata <= 50"):
        plan_continuous_from_profile(np.ones(50), strata=60)
    with pytest.raises(ValueError, match=r"draws = 0; pass an integer >= 1 \(--draws\)"):
        plan_continuous_uniform(draws=0)


def test_variational_bound_of_a_continuous_model_names_the_fix():
    """variational_bound sums a finite chain's steps; on a T = 0 model it says which function gives the bound."""
    diffusion = GaussianDiffusion(schedule=LinearGamma(*RANGE), denoiser=MLPDenoiser(2, width=8, depth=1),
                                  event_shape=(2,), T=0, gamma_range=RANGE)
    with pytest.raises(ValueError, match=r"continuous time \(T = 0\).*estimate_continuous_bound.*with_steps"):
        variational_bound(diffusion, _data(3).float())
