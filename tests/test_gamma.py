"""γ schedules (ppl_diffusion.gamma) and the chain of T steps they define: today's chain term by term for a γ read
from a NoiseSchedule, every program and estimator on a learned schedule, SVI training the guide."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
from ppl_diffusion.gamma import (GAMMA_SCHEDULES, GammaChain, InterpolatedGamma, LinearGamma, MonotoneNetGamma,
                                 ScalarGamma, make_gamma_schedule, step_times)
from ppl_diffusion.infer import (StochasticTimestepELBO, per_example_elbo, trace_pair, variational_bound)
from ppl_diffusion.infer.estimate import estimate_bound, plan_uniform
from tests.common import central_difference

SCHEDULE_NAMES = ["linear", "cosine"]


def _schedules():
    g = torch.Generator().manual_seed(1)
    net = MonotoneNetGamma(-9.0, 7.0, features=8)
    with torch.no_grad():  # a visibly non-linear interior
        for p in net.interior_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 3.0)
    return {"fixed-linear": LinearGamma(-9.0, 7.0), "learned-scalar": ScalarGamma(-9.0, 7.0), "learned-net": net,
            "fixed-interpolated": InterpolatedGamma.from_noise_schedule(NoiseSchedule.cosine(30))}


@pytest.mark.parametrize("name", sorted(GAMMA_SCHEDULES))
def test_schedule_is_monotone_with_exact_endpoints_and_autodiff_derivative(name):
    schedule = _schedules()[name]
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    g = schedule(t).detach()
    g0, g1 = (float(v.detach()) for v in schedule.endpoints())
    assert torch.all(torch.diff(g) > 0)
    assert abs(float(g[0]) - g0) <= 1e-12 * abs(g0) and abs(float(g[-1]) - g1) <= 1e-12 * abs(g1)
    # γ'(t) by autodiff against central differences of γ, away from the knots of the spline
    s = torch.rand(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    gamma, dgamma = schedule.gamma_and_derivative(s)
    h = 1e-6
    fd = (schedule(s + h) - schedule(s - h)).detach() / (2 * h)
    torch.testing.assert_close(gamma.detach(), schedule(s).detach(), rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(dgamma.detach(), fd, rtol=1e-6, atol=1e-6)
    a, sg = schedule.alpha_sigma(s)
    torch.testing.assert_close((a ** 2 + sg ** 2).detach(), torch.ones_like(s))


def test_scalar_parametrisation_keeps_the_order():
    schedule = ScalarGamma(-5.0, 5.0)
    with torch.no_grad():
        schedule.log_range.fill_(-30.0)
    g0, g1 = schedule.endpoints()
    assert g1 > g0


@pytest.mark.parametrize("build, match", [
    (lambda: LinearGamma(3.0, 3.0), "gamma_0 = 3.0 >= gamma_1 = 3.0"),
    (lambda: ScalarGamma(2.0, -1.0), "gamma_0 = 2.0 >= gamma_1 = -1.0"),
    (lambda: MonotoneNetGamma(1.0, 0.0), "gamma_0 = 1.0 >= gamma_1"),
    (lambda: LinearGamma(float("nan"), 1.0), "gamma_0 = nan"),
    (lambda: InterpolatedGamma([0.0, 0.5, 1.0], [-3.0, -4.0, 2.0]), r"a fixed γ must increase, but gammas\[1\]"),
    (lambda: InterpolatedGamma([0.0, 0.5, 0.5, 1.0], [-3.0, -1.0, 0.0, 2.0]), r"times\[2\] does not increase"),
    (lambda: InterpolatedGamma([0.0, 0.1, 0.2, 1.0], [-5.0, 4.9, 5.0, 5.1]), "interpolation='linear'"),
    (lambda: make_gamma_schedule("cosine"), "choose one of"),
    # numpy input is named as a number, not as numpy's repr (np.float64(1.0))
    (lambda: InterpolatedGamma(np.array([0.0, 0.5, 0.9]), [-3.0, -1.0, 2.0]), r"got 0\.0 \.\. 0\.9$"),
    (lambda: InterpolatedGamma([0.0, 0.5, 1.0], np.array([-3.0, -4.0, 2.0])), r"gammas\[1\] = -4\.0 <= gammas\[0\] = -3\.0 "),
    (lambda: LinearGamma(np.float64("nan"), 1.0), r"gamma_0 = nan;"),
])
def test_bad_schedules_are_one_line_errors(build, match):
    with pytest.raises(ValueError, match=match) as e:
        build()
    assert "\n" not in str(e.value)


def test_linear_interpolation_is_the_fix_for_an_overshooting_spline():
    schedule = InterpolatedGamma([0.0, 0.1, 0.2, 1.0], [-5.0, 4.9, 5.0, 5.1], interpolation="linear")
    assert torch.all(torch.diff(schedule(torch.linspace(0, 1, 1001, dtype=torch.float64))) > 0)


@pytest.mark.parametrize("kwargs, match", [
    ({"schedule": LinearGamma()}, "a γ schedule needs T"),
    ({"schedule": LinearGamma(), "T": 1}, "T = 1"),
    ({"schedule": LinearGamma(), "T": 0, "time_input": "step"}, "T = 0 .continuous time. has none"),
    ({"schedule": LinearGamma(), "T": 0, "variance": "posterior"}, "only the decoder has a variance"),
    ({"schedule": LinearGamma(), "T": 10, "time_input": "noise"}, "unknown time_input"),
    ({"schedule": LinearGamma(), "T": 10, "gamma_range": (1.0, 1.0)}, "gamma_range"),
    ({"schedule": NoiseSchedule.linear(10), "time_input": "gamma"}, "conditioned on the step label"),
    ({"schedule": NoiseSchedule.linear(10), "T": 20}, "T = 20 but the NoiseSchedule has T = 10"),
])
def test_bad_forward_process_is_a_one_line_error(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        GaussianDiffusion(denoiser=MLPDenoiser(dim=2, width=8, depth=1), event_shape=(2,), **kwargs)
    assert "\n" not in str(e.value)


def test_continuous_model_has_no_chain():
    diffusion = GaussianDiffusion(schedule=LinearGamma(), denoiser=MLPDenoiser(dim=2, width=8, depth=1),
                                  event_shape=(2,), T=0)
    x0 = torch.zeros(3, 2)
    for call in (lambda: diffusion.model(x0), lambda: diffusion.guide(x0), lambda: diffusion.sample(2),
                 lambda: diffusion.step_model(x0, torch.ones(3, dtype=torch.long))):
        with pytest.raises(ValueError, match="continuous time") as e:
            call()
        assert "\n" not in str(e.value)
    assert diffusion.with_steps(5).T == 5 and diffusion.with_steps(5).schedule is diffusion.schedule


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
@pytest.mark.parametrize("T", [2, 50, 1000])
def test_chain_of_a_noise_schedule_has_its_coefficients(name, T):
    s = getattr(NoiseSchedule, name)(T)
    chain = GammaChain.of(InterpolatedGamma.from_noise_schedule(s), T)
    for key in ("betas", "alphas", "sqrt_alphas", "log_betas", "alphas_cumprod", "alphas_cumprod_prev",
                "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "posterior_variance",
                "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
        np.testing.assert_allclose(getattr(chain, key).numpy(), getattr(s, key), rtol=1e-11, atol=1e-300, err_msg=key)


def test_chain_coefficients_against_their_definitions():
    """β_t = 1 − ᾱ_t/ᾱ_{t−1} etc. written naively in float64 from ᾱ = sigmoid(−γ) at (t − 1)/(T − 1)."""
    schedule = _schedules()["learned-net"]
    T = 40
    g = schedule(step_times(T)).detach().numpy()
    ab = 1.0 / (1.0 + np.exp(g))
    ab_prev = np.append(1.0, ab[:-1])
    beta = 1.0 - ab / ab_prev
    chain = GammaChain.of(schedule, T)
    np.testing.assert_allclose(chain.betas.detach().numpy(), beta, rtol=1e-9)
    np.testing.assert_allclose(chain.alphas_cumprod.detach().numpy(), ab, rtol=1e-12)
    np.testing.assert_allclose(chain.posterior_variance.detach().numpy(), beta * (1 - ab_prev) / (1 - ab), rtol=1e-9)
    np.testing.assert_allclose(chain.posterior_mean_coef1.detach().numpy(), beta * np.sqrt(ab_prev) / (1 - ab),
                               rtol=1e-9)
    np.testing.assert_allclose(chain.posterior_mean_coef2.detach().numpy(),
                               np.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab), rtol=1e-9)


# ------------------------------------------------------------------ today's chain, term by term
def _pair(name, variance, T=12, dtype=torch.float64, learn_sigma=False):
    s = getattr(NoiseSchedule, name)(T)
    torch.manual_seed(0)
    net = MLPDenoiser(dim=2, width=16, depth=1, zero_init=False, learn_sigma=learn_sigma).to(dtype)
    today = GaussianDiffusion(schedule=s, denoiser=net, event_shape=(2,), variance=variance)
    gamma = GaussianDiffusion(schedule=InterpolatedGamma.from_noise_schedule(s), T=T, time_input="step", denoiser=net,
                              event_shape=(2,), variance=variance)
    return today, gamma


def _site_terms(model, guide, x0, analytic, seed=0, *args):
    pyro.set_rng_seed(seed)
    return per_example_elbo(*trace_pair(model, guide, x0, *args), analytic=analytic)


@pytest.mark.parametrize("variance", ["beta", "posterior", "fixed-large", "learned"])
@pytest.mark.parametrize("name", SCHEDULE_NAMES)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)], ids=["f64", "f32"])
def test_fixed_gamma_of_a_schedule_is_todays_chain_term_by_term(name, variance, dtype, tol):
    today, gamma = _pair(name, variance, dtype=dtype, learn_sigma=variance == "learned")
    x0 = torch.randn(5, 2, dtype=dtype, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([1, 2, 5, 11, 12])
    for a, b in [(_site_terms(today.model, today.guide, x0, False), _site_terms(gamma.model, gamma.guide, x0, False)),
                 (_site_terms(today.model, today.posterior_guide, x0, True),
                  _site_terms(gamma.model, gamma.posterior_guide, x0, True)),
                 (_site_terms(today.step_model, today.step_guide, x0, True, 0, t),
                  _site_terms(gamma.step_model, gamma.step_guide, x0, True, 0, t)),
                 (_site_terms(today.step_model, today.step_guide, x0, False, 0, t),
                  _site_terms(gamma.step_model, gamma.step_guide, x0, False, 0, t))]:
        assert a.keys() == b.keys()
        for site in a:
            torch.testing.assert_close(b[site], a[site], rtol=tol, atol=tol, msg=site)
    with torch.no_grad():
        torch.testing.assert_close(variational_bound(gamma, x0, seed=7).terms, variational_bound(today, x0, seed=7).terms,
                                   rtol=tol, atol=tol)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_fixed_gamma_of_a_schedule_gives_todays_estimators(name):
    today, gamma = _pair(name, "beta")
    x0 = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    losses = {}
    for label, diffusion in (("today", today), ("gamma", gamma)):
        out = []
        for loss, guide in [(Trace_ELBO(), diffusion.guide), (TraceMeanField_ELBO(), diffusion.posterior_guide),
                            (StochasticTimestepELBO(timesteps="uniform"), diffusion.guide),
                            (StochasticTimestepELBO(timesteps="low-discrepancy", step_term="mc"), diffusion.guide),
                            (RenyiELBO(alpha=0, num_particles=3, vectorize_particles=True, max_plate_nesting=1),
                             diffusion.guide)]:
            pyro.set_rng_seed(5)
            out.append(loss.loss(diffusion.model, guide, x0))
        est = estimate_bound(diffusion, x0, plan_uniform(diffusion.T, full_steps=3, strata=3, draws=2), seed=2)
        out.append(float(est.nll.sum()))
        losses[label] = np.array(out)
    np.testing.assert_allclose(losses["gamma"], losses["today"], rtol=1e-9)


# ------------------------------------------------------------------ a learned schedule in every program
def _learned(T=8, dtype=torch.float64, time_input="gamma", schedule=None):
    torch.manual_seed(0)
    schedule = MonotoneNetGamma(-7.0, 6.0, features=8) if schedule is None else schedule
    net = MLPDenoiser(dim=2, width=16, depth=1, zero_init=False)
    return GaussianDiffusion(schedule=schedule.to(dtype), denoiser=net.to(dtype), event_shape=(2,), T=T,
                             time_input=time_input)


@pytest.mark.parametrize("loss, guide", [
    (Trace_ELBO(), "guide"), (TraceMeanField_ELBO(), "posterior_guide"),
    (StochasticTimestepELBO(timesteps="importance", sampler_kwargs={"history": 1}), "guide"),
    (StochasticTimestepELBO(timesteps="low-discrepancy", step_term="mc"), "guide"),
    (RenyiELBO(alpha=0, num_particles=3, vectorize_particles=True, max_plate_nesting=1), "guide"),
], ids=["trace", "meanfield", "stochastic-kl-is", "stochastic-mc-ld", "iwae"])
def test_svi_trains_the_schedule_with_the_denoiser(loss, guide):
    diffusion = _learned(dtype=torch.float32)
    x0 = torch.randn(16, 2)
    before = {n: p.detach().clone() for n, p in diffusion.named_parameters()}
    svi = pyro.infer.SVI(diffusion.model, getattr(diffusion, guide), pyro.optim.Adam({"lr": 1e-2}), loss)
    for _ in range(3):
        assert math.isfinite(svi.step(x0))
    moved = {n for n, p in diffusion.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert {"schedule.ends.gamma_0", "schedule.ends.log_range", "schedule.l2.weight", "schedule.l3.weight"} <= moved
    assert "denoiser.out.2.weight" in moved
    assert any(k.startswith("schedule$$$") for k in pyro.get_param_store().keys())


def test_the_guide_registers_the_schedule():
    """The forward process is the guide's: tracing the guide alone shows the schedule's parameters."""
    diffusion = _learned()
    x0 = torch.randn(3, 2, dtype=torch.float64)
    for guide in (diffusion.guide, diffusion.posterior_guide):
        trace = pyro.poutine.trace(guide).get_trace(x0)
        params = {n for n, s in trace.nodes.items() if s["type"] == "param"}
        assert params == {f"schedule$$${n}" for n, _ in diffusion.schedule.named_parameters()}


def test_discrete_bound_gradient_in_the_endpoints_is_central_differences():
    """d(bound)/d(γ_0, log range) by autodiff equals central differences, on the same counter-based noise."""
    diffusion = _learned(T=6, schedule=ScalarGamma(-6.0, 5.0))
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def bound():
        return variational_bound(diffusion, x0, seed=1).nll.sum()

    params = [diffusion.schedule.gamma_0, diffusion.schedule.log_range]
    grads = torch.autograd.grad(bound(), params)
    for p, g in zip(params, grads):
        assert float(g) == pytest.approx(central_difference(bound, p), rel=1e-7, abs=1e-9)


def test_learned_schedule_round_trips_through_the_state_dict():
    a = _learned()
    with torch.no_grad():
        a.schedule.ends.gamma_0 += 0.3
    b = _learned()
    assert {k for k in a.state_dict() if k.startswith("schedule.")} == {
        "schedule.linear", "schedule.ends.gamma_0", "schedule.ends.log_range", "schedule.l2.weight",
        "schedule.l2.bias", "schedule.l3.weight"}
    b.load_state_dict(a.state_dict())
    x0 = torch.randn(3, 2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(variational_bound(b, x0, seed=0).terms, variational_bound(a, x0, seed=0).terms,
                                   rtol=0, atol=0)


def test_hybrid_and_plain_read_the_chain():
    from ppl_diffusion.infer import HybridELBO
    from ppl_diffusion.infer.plain import plain_stochastic_elbo

    today, gamma = _pair("cosine", "learned", learn_sigma=True)
    x0 = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    values = []
    for diffusion in (today, gamma):
        pyro.set_rng_seed(3)
        values.append([HybridELBO().loss(diffusion.model, diffusion.guide, x0)])
    np.testing.assert_allclose(values[1], values[0], rtol=1e-10)
    today, gamma = _pair("linear", "beta")
    plain = []
    for diffusion in (today, gamma):
        pyro.set_rng_seed(3)
        plain.append(plain_stochastic_elbo(diffusion, x0).detach().numpy())
    np.testing.assert_allclose(plain[1], plain[0], rtol=1e-10)
