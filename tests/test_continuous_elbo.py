"""The continuous-time ELBO (T = ∞) of a γ schedule: the exact Gaussian case in closed form, the T → ∞ limit of the
chain with its order, unbiased t-estimators, gradients, the interior's invariance and its variance objective."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from ppl_diffusion import GaussianDiffusion, MLPDenoiser
from ppl_diffusion.gamma import LinearGamma, MonotoneNetGamma, ScalarGamma
from ppl_diffusion.infer import (ContinuousTimeELBO, ImportanceTimes, LowDiscrepancyTimes, UniformTimes,
                                 continuous_time_terms, make_timestep_sampler, per_example_elbo, trace_pair)
from ppl_diffusion.infer.draws import FeedNoiseMessenger

from .common import (Z, GammaGaussianOracle, central_difference, cubature_noise, gaussian_continuous_terms,
                     gaussian_elbo_by_endpoints, mean_se)

M, S2 = np.array([0.5, -0.3]), np.array([0.01, 0.2])  # the data N(m, diag s²)
RANGE = (-10.0, 8.0)


def _net_schedule(g0=RANGE[0], g1=RANGE[1], *, learn_endpoints=True, seed=1, spread=2.0, features=8):
    """A MonotoneNetGamma with a visibly non-linear interior."""
    schedule = MonotoneNetGamma(g0, g1, learn_endpoints=learn_endpoints, features=features).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in schedule.interior_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * spread)
    return schedule


def _oracle_model(schedule, T=0, variance="beta", trainable=True):
    oracle = GammaGaussianOracle(M, S2, RANGE, trainable=trainable)
    return GaussianDiffusion(schedule=schedule, denoiser=oracle, event_shape=(2,), T=T, variance=variance,
                             gamma_range=RANGE)


def _ends(schedule):
    """The schedule's endpoints as floats (a learned one's are float32 parameters: not exactly RANGE)."""
    return tuple(float(g.detach()) for g in schedule.endpoints())


def _data(n, seed=0):
    return torch.from_numpy(M + np.sqrt(S2) * np.random.default_rng(seed).standard_normal((n, 2)))


def _cubature(diffusion, x0, t):
    """E over the noise of :func:`continuous_time_terms` at times ``t`` (exact for the oracle: every term is quadratic
    in the noise), ``[B]`` each."""
    B, D = x0.shape
    pts = cubature_noise(B, D)
    k = 2 * D
    terms = continuous_time_terms(diffusion, x0.repeat_interleave(k, 0), t.repeat_interleave(k),
                                  noise={"x_T": pts, "x_1": pts, "x_t": pts})
    return {name: v.reshape(B, k).mean(1) for name, v in terms.items()}


def _quadrature_diffusion(diffusion, x0, nodes=400):
    """∫_0^1 E_ε L(t) dt by Gauss–Legendre in t, E_ε by cubature: the exact diffusion term ``[B]``."""
    u, w = np.polynomial.legendre.leggauss(nodes)
    t, w = torch.from_numpy((u + 1) / 2), torch.from_numpy(w / 2)
    B = x0.shape[0]
    xs = x0.repeat(nodes, 1)
    terms = _cubature(diffusion, xs, t.repeat_interleave(B))["diffusion"].reshape(nodes, B)
    return (w[:, None] * terms).sum(0)


# ------------------------------------------------------------------ the exact Gaussian case
@pytest.mark.parametrize("schedule", [lambda: LinearGamma(*RANGE), lambda: _net_schedule()], ids=["linear", "net"])
def test_exact_gaussian_case_in_closed_form(schedule):
    diffusion = _oracle_model(schedule())
    x0 = _data(5)
    ends = _ends(diffusion.schedule)
    exact = gaussian_continuous_terms(M, S2, x0.numpy(), *ends)
    with torch.no_grad():
        at_half = _cubature(diffusion, x0, torch.full((5,), 0.5, dtype=torch.float64))
        np.testing.assert_allclose(at_half["prior"].numpy(), exact["prior"], rtol=1e-12)
        np.testing.assert_allclose(at_half["reconstruction"].numpy(), exact["reconstruction"], rtol=1e-10)
        np.testing.assert_allclose(_quadrature_diffusion(diffusion, x0).numpy(), exact["diffusion"], rtol=1e-8)
    # the same ELBO by the endpoint route (the chain's terms telescope for the exact reverse process) ...
    total = sum(exact.values())
    np.testing.assert_allclose(total, -gaussian_elbo_by_endpoints(M, S2, x0.numpy(), *ends), rtol=1e-12)
    # ... which is log p(x) once the endpoints are far enough out: only the endpoint terms separate them
    log_p = (-0.5 * np.log(2 * math.pi * S2) - (x0.numpy() - M) ** 2 / (2 * S2)).sum(-1)
    wide = sum(gaussian_continuous_terms(M, S2, x0.numpy(), -25.0, 25.0).values())
    np.testing.assert_allclose(-wide, log_p, atol=1e-8)
    assert np.all(total - (-log_p) > 1e-6)  # at (−10, 8) the endpoint terms cost something


@pytest.mark.parametrize("timesteps", ["uniform", "low-discrepancy", "importance"])
def test_t_estimators_are_unbiased(timesteps):
    """The mean of R estimates (fresh t and noise each) is the closed form, within Z standard errors."""
    diffusion = _oracle_model(_net_schedule())
    x0 = _data(16, seed=1)
    exact = float(sum(gaussian_continuous_terms(M, S2, x0.numpy(), *_ends(diffusion.schedule)).values()).sum())
    elbo = ContinuousTimeELBO(timesteps=timesteps, sampler_kwargs={"bins": 10, "history": 4}
                              if timesteps == "importance" else None)
    if timesteps == "importance":  # fill the history, then score with a fixed, far from uniform proposal
        for _ in range(12):
            elbo.differentiable_loss(diffusion.model, diffusion.guide, x0)
        p = elbo.sampler.density(torch.linspace(0, 0.999, 100))
        assert elbo.sampler.warmed_up and float(p.max() / p.min()) > 3
    losses = [elbo.loss(diffusion.model, diffusion.guide, x0) for _ in range(300)]
    mean, se = mean_se(losses)
    assert abs(mean - exact) < Z * se, f"{timesteps}: {mean:.5g} ± {se:.2g} vs {exact:.5g}"


# ------------------------------------------------------------------ the T → ∞ limit
def _chain_diffusion_term(diffusion, x0):
    """Σ_{t=2..T} E[L_{t−1}] of the chain, exactly (cubature over x_t at every step), by the package's step programs,
    and its endpoint terms (L_0, L_T) ``[B]``."""
    B, D = x0.shape
    T, k = diffusion.T, 2 * D
    steps = torch.arange(1, T + 1)
    rows_x = x0.repeat_interleave(k, 0).repeat(T, 1)
    rows_t = steps.repeat_interleave(B * k)
    pts = cubature_noise(B * T, D)
    guide = FeedNoiseMessenger({"x_t": pts, "x_T": pts})(diffusion.step_guide)
    site = per_example_elbo(*trace_pair(diffusion.step_model, guide, rows_x, rows_t), analytic=True)
    step = -(site["x_t"] + site["x_prev"] + site["x_0"]).reshape(T, B, k).mean(-1)  # [T x B]: L_{t−1}
    return step[1:].sum(0), step[0], -site["x_T"].reshape(T, B, k)[0, :, 0]


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_diffusion_term_is_the_limit_of_the_chain_with_error_order_one_over_T(variance):
    """The chain of T steps with the same γ: its endpoint terms are the continuous ones for every T, and its steps
    L_1..L_{T−1} converge to the diffusion term with error ∝ 1/T: the error halves with each doubling of T (fitted
    over T = 40 … 640; below, higher orders still show), and T · error settles."""
    schedule = _net_schedule(spread=1.0)
    x0 = _data(3, seed=2)
    exact = gaussian_continuous_terms(M, S2, x0.numpy(), *_ends(schedule))
    Ts, errors = [10, 20, 40, 80, 160, 320, 640], []
    with torch.no_grad():
        for T in Ts:
            steps, decoder, prior = _chain_diffusion_term(_oracle_model(schedule, T=T, variance=variance), x0)
            np.testing.assert_allclose(prior.numpy(), exact["prior"], rtol=1e-12)
            if variance == "beta":  # the decoder's σ² is β_1 = σ_0², the continuous decoder's
                np.testing.assert_allclose(decoder.numpy(), exact["reconstruction"], rtol=1e-10)
            errors.append(float((steps.numpy() - exact["diffusion"]).sum()))
    errors = np.abs(errors)
    slope = np.polyfit(np.log(Ts[2:]), np.log(errors[2:]), 1)[0]
    assert np.all(np.diff(errors) < 0) and -1.1 < slope < -0.95, f"errors {errors}, slope {slope:.3f}"
    scaled = np.array(Ts) * errors
    assert abs(scaled[-1] / scaled[-2] - 1) < 0.05, f"T · error {scaled}"
    assert errors[-1] < 0.05 * float(exact["diffusion"].sum())


# ------------------------------------------------------------------ gradients
def _mlp_model(schedule, seed=0):
    torch.manual_seed(seed)
    net = MLPDenoiser(dim=2, width=16, depth=1, zero_init=False).double()
    return GaussianDiffusion(schedule=schedule, denoiser=net, event_shape=(2,), T=0, gamma_range=RANGE)


def test_elbo_gradients_are_central_differences():
    """On fixed t and noise the estimate is a smooth function of every parameter: autodiff (γ' included) against
    central differences, for the endpoints, the interior and a denoiser weight."""
    diffusion = _mlp_model(_net_schedule(spread=1.0))
    x0 = _data(6)
    g = torch.Generator().manual_seed(3)
    t = torch.rand(6, dtype=torch.float64, generator=g)
    noise = {name: torch.randn(6, 2, dtype=torch.float64, generator=g) for name in ("x_T", "x_1", "x_t")}

    def nll():
        return sum(v.sum() for v in continuous_time_terms(diffusion, x0, t, noise=noise, analytic=False).values())

    s = diffusion.schedule
    checks = [(s.ends.gamma_0, ()), (s.ends.log_range, ()), (s.linear, ()), (s.l2.weight, (3, 0)),
              (s.l3.weight, (0, 5)), (diffusion.denoiser.inp.weight, (0, 1))]
    grads = torch.autograd.grad(nll(), [p for p, _ in checks])
    for (p, index), grad in zip(checks, grads):
        assert float(grad[index]) == pytest.approx(central_difference(nll, p, index=index), rel=1e-6, abs=1e-8)


def test_expected_elbo_gradient_in_the_endpoints_is_the_closed_forms():
    """The exact expectation (quadrature over t, cubature over the noise) differentiated by autodiff equals the
    derivative of the closed form in (γ_0, γ_1)."""
    schedule = ScalarGamma(-9.0, 6.0).double()
    diffusion = _oracle_model(schedule)
    x0 = _data(4, seed=5)

    def exact_nll():
        parts = _cubature(diffusion, x0, torch.full((4,), 0.5, dtype=torch.float64))
        return (parts["prior"] + parts["reconstruction"] + _quadrature_diffusion(diffusion, x0, nodes=200)).sum()

    g0_grad, lr_grad = torch.autograd.grad(exact_nll(), [schedule.gamma_0, schedule.log_range])

    def closed(g0, g1):
        return float(sum(gaussian_continuous_terms(M, S2, x0.numpy(), g0, g1).values()).sum())

    g0, g1 = (float(v.detach()) for v in schedule.endpoints())
    h = 1e-5
    d0 = (closed(g0 + h, g1) - closed(g0 - h, g1)) / (2 * h)
    d1 = (closed(g0, g1 + h) - closed(g0, g1 - h)) / (2 * h)
    # γ_1 = γ_0 + e^ρ: ∂/∂γ_0 moves both ends, ∂/∂ρ moves γ_1 by e^ρ = γ_1 − γ_0
    assert float(g0_grad) == pytest.approx(d0 + d1, rel=1e-6)
    assert float(lr_grad) == pytest.approx(d1 * (g1 - g0), rel=1e-6)


# ------------------------------------------------------------------ the interior: the ELBO does not see it
def test_expected_elbo_does_not_depend_on_the_interior():
    """Exactly (the oracle, quadrature and cubature): two interiors, same endpoints, same diffusion term; other
    endpoints, another one."""
    x0 = _data(4, seed=6)
    with torch.no_grad():
        values = [_quadrature_diffusion(_oracle_model(_net_schedule(seed=s, spread=1.0)), x0, nodes=600).numpy()
                  for s in (1, 2)]
        moved = _quadrature_diffusion(_oracle_model(_net_schedule(-6.0, 8.0, seed=1, spread=1.0)), x0,
                                      nodes=600).numpy()
    np.testing.assert_allclose(values[1], values[0], rtol=1e-7)
    assert np.all(np.abs(moved - values[0]) > 1e-2)


def test_elbo_expectation_is_unchanged_by_the_interior_and_moved_by_the_endpoints():
    """A small MLP at a fixed θ: the mean ELBO estimate of two interiors agrees within Monte-Carlo error, while
    moving γ_0 changes it by many standard errors."""
    x0 = _data(32, seed=7).float()
    means = []
    for schedule in (_net_schedule(seed=1), _net_schedule(seed=2), _net_schedule(-2.0, RANGE[1], seed=1)):
        diffusion = _mlp_model(schedule.float())
        diffusion.denoiser.float()
        elbo = ContinuousTimeELBO(timesteps="low-discrepancy")
        means.append(mean_se([elbo.loss(diffusion.model, diffusion.guide, x0) for _ in range(150)]))
    (m1, s1), (m2, s2), (m3, s3) = means
    assert abs(m1 - m2) < Z * math.hypot(s1, s2), means
    assert abs(m1 - m3) > Z * math.hypot(s1, s3), means


# ------------------------------------------------------------------ the interior: trained for variance
def test_variance_objective_gives_the_interior_the_gradient_of_the_squared_estimate():
    """One backward pass: the denoiser and the endpoints get the ELBO's gradient, the interior that of
    Σ_rows (w L(t))² / k, on the same draws."""
    diffusion = _mlp_model(_net_schedule(spread=1.0))
    x0 = _data(8)
    interior = diffusion.schedule.interior_parameters()
    others = [p for n, p in diffusion.named_parameters() if not any(p is q for q in interior)]
    grads = {}
    for objective in ("elbo", "variance"):
        diffusion.zero_grad()
        pyro.set_rng_seed(4)
        ContinuousTimeELBO(timesteps="uniform", timesteps_per_example=2,
                           schedule_objective=objective).differentiable_loss(diffusion.model, diffusion.guide,
                                                                             x0).backward()
        grads[objective] = [p.grad.clone() for p in others + interior]
    pyro.set_rng_seed(4)
    _, _, weight, parts = ContinuousTimeELBO(timesteps="uniform", timesteps_per_example=2).terms(diffusion.model, x0)
    want = torch.autograd.grad(((weight * parts["diffusion"]) ** 2).sum() / 2, interior)
    for a, b in zip(grads["elbo"][:len(others)], grads["variance"][:len(others)]):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    for got, w in zip(grads["variance"][len(others):], want):
        torch.testing.assert_close(got, w, rtol=1e-9, atol=1e-9)


def _estimator_variance(diffusion, x0, R):
    """Per-example mean and variance of the uniform-t estimate w L(t) over R draws, and the variance's standard error
    (√((m4 − v²)/R)) averaged over the examples."""
    with torch.no_grad():
        xr = x0.repeat(R, 1)
        t = torch.rand(len(xr), dtype=torch.float64)
        L = continuous_time_terms(diffusion, xr, t)["diffusion"].reshape(R, -1).numpy()
    var = L.var(0, ddof=1)
    m4 = ((L - L.mean(0)) ** 4).mean(0)
    return L.mean(0), var.mean(), math.sqrt(((m4 - var ** 2) / R).sum()) / len(var), math.sqrt(var.mean() / R)


def test_variance_objective_lowers_the_estimators_variance():
    """On a toy (2-D Gaussian data, the exact ε̂: a fixed θ) training the interior by SVI with
    schedule_objective='variance' lowers the diffusion estimate's variance far beyond its sampling error, and its
    expectation stays the closed form."""
    diffusion = _oracle_model(MonotoneNetGamma(*RANGE, learn_endpoints=False, features=16).double(), trainable=False)
    x0 = _data(8, seed=8)
    exact = gaussian_continuous_terms(M, S2, x0.numpy(), *_ends(diffusion.schedule))["diffusion"]
    _, var_before, se_before, _ = _estimator_variance(diffusion, x0, 2000)
    svi = pyro.infer.SVI(diffusion.model, diffusion.guide, pyro.optim.Adam({"lr": 0.1}),
                         ContinuousTimeELBO(schedule_objective="variance"))
    batch = _data(64, seed=9)
    for _ in range(80):
        svi.step(batch)
    mean, var_after, se_after, mean_se_ = _estimator_variance(diffusion, x0, 2000)
    assert var_after < var_before - Z * math.hypot(se_before, se_after), (var_before, var_after)
    assert var_after < 0.7 * var_before
    assert abs(float((mean - exact).mean())) < Z * mean_se_ / math.sqrt(len(mean))


def test_variance_objective_needs_an_interior():
    diffusion = _mlp_model(ScalarGamma(*RANGE).double())
    with pytest.raises(ValueError, match="ScalarGamma has none") as e:
        ContinuousTimeELBO(schedule_objective="variance").differentiable_loss(diffusion.model, diffusion.guide,
                                                                             _data(2))
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ Pyro: SVI, programs, samplers
@pytest.mark.parametrize("timesteps", ["uniform", "low-discrepancy", "importance"])
@pytest.mark.parametrize("objective", ["elbo", "variance"])
def test_svi_trains_denoiser_and_schedule(timesteps, objective):
    diffusion = _mlp_model(_net_schedule().float())
    diffusion.denoiser.float()
    before = {n: p.detach().clone() for n, p in diffusion.named_parameters()}
    elbo = ContinuousTimeELBO(timesteps=timesteps, schedule_objective=objective,
                              sampler_kwargs={"bins": 4, "history": 1} if timesteps == "importance" else None)
    svi = pyro.infer.SVI(diffusion.model, diffusion.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    for _ in range(3):
        assert math.isfinite(svi.step(_data(16).float()))
    moved = {n for n, p in diffusion.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert {"schedule.ends.gamma_0", "schedule.ends.log_range", "schedule.l2.weight", "denoiser.out.2.weight"} <= moved
    if timesteps == "importance":
        assert int(elbo.sampler.by_bin.loss_counts.sum()) > 0


def test_continuous_programs_are_scored_by_pyros_own_elbos():
    """Trace_ELBO on (continuous_model, continuous_guide) at given times and weights is the estimator's value on
    the same draws (Monte-Carlo prior term): the pair is an ordinary probabilistic program."""
    diffusion = _mlp_model(_net_schedule())
    x0, t = _data(5), torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    pyro.set_rng_seed(2)
    pyro_loss = Trace_ELBO().loss(diffusion.continuous_model, diffusion.continuous_guide, x0, t, weight)
    pyro.set_rng_seed(2)
    parts = continuous_time_terms(diffusion, x0, t, analytic=False)
    expected = (parts["prior"] + parts["reconstruction"] + weight * parts["diffusion"]).sum()
    assert pyro_loss == pytest.approx(float(expected.detach()), rel=1e-12)


def test_time_samplers():
    assert isinstance(make_timestep_sampler("uniform", 0), UniformTimes)
    g = torch.Generator().manual_seed(0)
    t, w = LowDiscrepancyTimes().sample(8, generator=g)
    assert torch.equal(torch.sort((t * 8).floor()).values, torch.arange(8.0)) and torch.all(w == 1)
    sampler = ImportanceTimes(bins=5, history=1)
    sampler.update(torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9]), torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0]))
    t, w = sampler.sample(1000, generator=g)
    torch.testing.assert_close(w, 1 / sampler.density(t))
    grid = torch.linspace(0, 1, 10001, dtype=torch.float64)[:-1] + 0.5e-4
    assert float(sampler.density(grid).mean()) == pytest.approx(1.0, rel=1e-9)
    other = ImportanceTimes(bins=5, history=1)
    other.load_state_dict(sampler.state_dict())
    torch.testing.assert_close(other.density(grid), sampler.density(grid))
    with pytest.raises(ValueError, match="draws times in"):
        ContinuousTimeELBO(timesteps=make_timestep_sampler("uniform", 10))
    with pytest.raises(ValueError, match="continuous time"):
        UniformTimes().load_state_dict(make_timestep_sampler("uniform", 10).state_dict())


def test_continuous_time_needs_gamma_labels():
    diffusion = GaussianDiffusion(schedule=LinearGamma(), denoiser=MLPDenoiser(dim=2, width=8, depth=1),
                                  event_shape=(2,), T=10, time_input="step")
    with pytest.raises(ValueError, match="time_input='gamma'") as e:
        ContinuousTimeELBO().loss(diffusion.model, diffusion.guide, torch.zeros(3, 2))
    assert "\n" not in str(e.value)


def test_docs_snippet_runs():
    """docs/variational.md's example runs as written, and a step of it trains."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "variational.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    scope = {"__name__": "__docs__"}
    exec(compile(code, "variational.md", "exec"), scope)
    assert math.isfinite(scope["svi"].step(torch.randn(8, 2)))
