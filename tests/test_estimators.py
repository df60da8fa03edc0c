"""All estimators estimate the same ELBO, and the same gradient, at a fixed random θ.

(a) Trace_ELBO on (model, guide), (b) TraceMeanField_ELBO on (model, posterior_guide) (also with
Pyro's vectorized particles), (c) the stochastic-timestep estimator (analytic or Monte-Carlo step
term; uniform, importance-sampled or low-discrepancy t; k steps per example) and (d) the full evaluator summed. Each is replicated; every mean must agree
with the reference's within Z combined standard errors, and the test checks it has the power to see
a bias (the standard errors are small against the ELBO).
"""

import math

import numpy as np
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule, StochasticTimestepELBO, variational_bound

from .common import Z, assert_mc_close, mean_se

T = 6
R = 500  # copies of the data inside one batch: one estimate averages R independent draws
CONFIGS = [
    pytest.param("linear", "beta", id="linear-beta"),
    # the two mixed pairs run with -m slow (each ~15 s): the default run keeps a schedule and a variance each twice
    pytest.param("linear", "posterior", id="linear-posterior", marks=pytest.mark.slow),
    pytest.param("cosine", "beta", id="cosine-beta", marks=pytest.mark.slow),
    pytest.param("cosine", "posterior", id="cosine-posterior"),
]


# Short chains with every step's term of comparable size: β_T is kept well below 1, since at
# β_T = 0.999 the reverse mean divides ε̂ by √α_T ≈ 0.03 and, at a random θ, one heavy-tailed term
# would dominate the bound.
SCHEDULES = {
    "linear": lambda: NoiseSchedule.linear(T, beta_start=0.02, beta_end=0.4),
    "cosine": lambda: NoiseSchedule.cosine(T, max_beta=0.6),
}


def setup(schedule, variance, decoder="gaussian"):
    torch.manual_seed(123)
    net = MLPDenoiser(2, width=16, depth=1, zero_init=False)  # a fixed random θ, ε̂ ≠ 0
    s = SCHEDULES[schedule]()
    d = GaussianDiffusion(schedule=s, denoiser=net, event_shape=(2,), variance=variance, decoder=decoder)
    x0 = torch.tensor([[0.5, -0.25], [-0.8, 0.9], [0.1, 0.0]])
    if decoder == "discretized":
        x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1
    return d, x0.repeat(R, 1)


def warmed_importance_elbo(d, x0, **kw):
    """An importance-sampled estimator whose t-distribution is far from uniform."""
    elbo = StochasticTimestepELBO(timesteps="importance", **kw)
    while not elbo.get_sampler(d.T).warmed_up:
        elbo.differentiable_loss(d.model, d.guide, x0[:60])
    p = elbo.sampler.probabilities()
    assert p.max() / p.min() > 1.3, p  # importance sampling is really on
    return elbo


def estimators(d, x0):
    """name -> function returning −ELBO summed over the batch, as a differentiable tensor."""
    kl_is = warmed_importance_elbo(d, x0)
    mc_is = warmed_importance_elbo(d, x0, step_term="mc")
    return {
        "a trace(model, guide)": lambda: Trace_ELBO().differentiable_loss(d.model, d.guide, x0),
        "a trace(model, posterior_guide)": lambda: Trace_ELBO().differentiable_loss(d.model, d.posterior_guide, x0),
        "b meanfield": lambda: TraceMeanField_ELBO().differentiable_loss(d.model, d.posterior_guide, x0),
        "c kl uniform": lambda: StochasticTimestepELBO().differentiable_loss(d.model, d.guide, x0),
        "c mc uniform": lambda: StochasticTimestepELBO(step_term="mc").differentiable_loss(d.model, d.guide, x0),
        "c kl importance": lambda: kl_is.differentiable_loss(d.model, d.guide, x0),
        "c mc importance": lambda: mc_is.differentiable_loss(d.model, d.guide, x0),
        "c kl k=3": lambda: StochasticTimestepELBO(timesteps_per_example=3).differentiable_loss(d.model, d.guide, x0),
        "c kl low-discrepancy": lambda: StochasticTimestepELBO(timesteps="low-discrepancy").differentiable_loss(
            d.model, d.guide, x0),
        "c mc low-discrepancy": lambda: StochasticTimestepELBO(step_term="mc", timesteps="low-discrepancy")
        .differentiable_loss(d.model, d.guide, x0),
        # Pyro's particle vectorization runs the programs on [K x B x ...] values: 4 trajectories, averaged.
        "a trace, 4 vectorized particles": lambda: Trace_ELBO(
            num_particles=4, vectorize_particles=True, max_plate_nesting=1).differentiable_loss(d.model, d.guide, x0),
        "b meanfield, 4 vectorized particles": lambda: TraceMeanField_ELBO(
            num_particles=4, vectorize_particles=True, max_plate_nesting=1).differentiable_loss(
            d.model, d.posterior_guide, x0),
        "d bound kl": lambda: variational_bound(d, x0).nll.sum(),
        "d bound mc": lambda: variational_bound(d, x0, analytic=False, timesteps_per_batch=3).nll.sum(),
    }


def replicate_values(fn, reps):
    with torch.no_grad():
        return [fn().item() / R for _ in range(reps)]


def replicate_gradients(d, fn, reps, directions):
    out = []
    for _ in range(reps):
        d.denoiser.zero_grad()
        fn().backward()
        g = torch.cat([p.grad.flatten() for p in d.denoiser.parameters()]) / R
        out.append((directions @ g).numpy())
    return np.array(out)  # (reps, directions)


@pytest.mark.parametrize("schedule, variance", CONFIGS)
def test_estimators_agree_on_the_elbo(schedule, variance):
    d, x0 = setup(schedule, variance)
    est = estimators(d, x0)
    ref = mean_se(replicate_values(est["d bound kl"], 60))
    for name, fn in est.items():
        m = mean_se(replicate_values(fn, 40))
        print(f"{schedule}-{variance} {name:32s} −ELBO = {m[0]:.4f} ± {m[1]:.4f}")
        assert m[1] < 0.02 * abs(ref[0]), f"{name}: too noisy to test ({m})"
        assert_mc_close(m, ref, what=name)


@pytest.mark.parametrize("schedule, variance", CONFIGS)
def test_estimators_agree_on_the_gradient(schedule, variance):
    d, x0 = setup(schedule, variance)
    est = estimators(d, x0)
    n = sum(p.numel() for p in d.denoiser.parameters())
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(4, n, generator=gen)
    ref_g = replicate_gradients(d, est["d bound kl"], 40, directions)
    ref = [mean_se(ref_g[:, j]) for j in range(4)]
    for name, fn in est.items():
        if name.startswith("a trace(model, posterior"):
            continue
        g = replicate_gradients(d, fn, 25, directions)
        for j in range(4):
            m = mean_se(g[:, j])
            assert_mc_close(m, ref[j], what=f"{name} direction {j}")
        # Power: the reference gradient is resolved well beyond its noise in some direction.
    assert max(abs(r[0]) / r[1] for r in ref) > 10


def test_discretized_decoder_estimators_agree():
    d, x0 = setup("linear", "beta", decoder="discretized")
    est = estimators(d, x0)
    ref = mean_se(replicate_values(est["d bound kl"], 40))
    for name in ["a trace(model, guide)", "b meanfield", "c kl importance", "c mc uniform"]:
        assert_mc_close(mean_se(replicate_values(est[name], 30)), ref, what=name)


def test_step_programs_under_stock_pyro_elbos():
    """Trace_ELBO / TraceMeanField_ELBO on (step_model, step_guide) with weight 1/P(t) are unbiased too."""
    d, x0 = setup("cosine", "beta")
    ref = mean_se(replicate_values(lambda: variational_bound(d, x0).nll.sum(), 40))
    n = x0.shape[0]
    weight = torch.full((n,), float(T))

    def stock(elbo):
        return lambda: elbo.differentiable_loss(d.step_model, d.step_guide, x0, torch.randint(1, T + 1, (n,)), weight)

    assert_mc_close(mean_se(replicate_values(stock(TraceMeanField_ELBO()), 60)), ref, what="meanfield on the step pair")
    assert_mc_close(mean_se(replicate_values(stock(Trace_ELBO()), 60)), ref, what="trace on the step pair")


def test_analytic_bound_has_less_variance_than_monte_carlo():
    d, x0 = setup("linear", "beta")
    kl = np.std(replicate_values(lambda: variational_bound(d, x0).nll.sum(), 20))
    mc = np.std(replicate_values(lambda: variational_bound(d, x0, analytic=False).nll.sum(), 20))
    assert kl < mc
    assert math.isfinite(kl)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_estimators_agree_with_the_default_schedules_at_T_100(schedule):
    """The same agreement with the library's own schedules (β_T up to 0.999 for cosine) at T = 100."""
    torch.manual_seed(7)
    d = GaussianDiffusion(schedule=getattr(NoiseSchedule, schedule)(100), denoiser=MLPDenoiser(2, width=32),
                          event_shape=(2,))
    with torch.no_grad():  # a θ near a trained one: ε̂ small but not zero
        for p in d.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x0 = torch.tensor([[0.5, -0.25], [-0.8, 0.9]]).repeat(200, 1)
    n = x0.shape[0]
    is_elbo = warmed_importance_elbo(d, x0, timesteps_per_example=4)
    runs = {
        "trace": lambda: Trace_ELBO().loss(d.model, d.guide, x0),
        "meanfield": lambda: TraceMeanField_ELBO().loss(d.model, d.posterior_guide, x0),
        "stochastic kl importance": lambda: is_elbo.loss(d.model, d.guide, x0),
        "stochastic mc k=4": lambda: StochasticTimestepELBO(step_term="mc", timesteps_per_example=4).loss(d.model, d.guide, x0),
    }
    with torch.no_grad():
        ref = mean_se([variational_bound(d, x0, timesteps_per_batch=20).nll.sum().item() / n for _ in range(30)])
        for name, fn in runs.items():
            m = mean_se([fn() / n for _ in range(30)])
            print(f"{schedule} T=100 {name}: {m[0]:.4f} ± {m[1]:.4f} (bound {ref[0]:.4f} ± {ref[1]:.4f})")
            assert_mc_close(m, ref, what=name)
