"""The probability-flow ODE (torchdiffeq): exact against Gaussian closed forms, Hutchinson against exact,
ProbabilityFlow as a Pyro distribution, deterministic sampling, and bad input."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_diffusion import GaussianDiffusion, NoiseSchedule
from ppl_diffusion.continuous import ContinuousTime
from ppl_diffusion.nets import MLPDenoiser
from ppl_diffusion.ode import ProbabilityFlow, log_likelihood, make_probes, sample_ode
from ppl_diffusion.respace import respace
from tests.common import GaussianOracle, mean_se, random_gaussian

D = 3


def oracle_diffusion(kind="grid", *, exact_prior=True, T=1000, cov=None, seed=0):
    """A diffusion whose ε̂ is the exact one for N(m, Σ), and (``exact_prior``) whose prior is the marginal at s = 1,
    so that the ODE's density at ε is the data's marginal there, N(√ᾱ(ε) m, ᾱ(ε)Σ + (1 − ᾱ(ε))I)."""
    schedule = NoiseSchedule.linear(T)
    ct = ContinuousTime(schedule, kind)
    m, c = random_gaussian(D, seed)
    net = GaussianOracle(ct, m, c if cov is None else cov)
    prior = dist.MultivariateNormal(*net.marginal(1.0)) if exact_prior else None
    return GaussianDiffusion(schedule=schedule, denoiser=net, event_shape=(D,), prior=prior), net, ct


def points(n=4, seed=1):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kind", ["grid", "vp-linear"])
def test_exact_trace_gives_the_gaussian_log_density(kind):
    diffusion, net, ct = oracle_diffusion(kind)
    x = points()
    res = log_likelihood(diffusion, x, rtol=1e-8, atol=1e-8, time_map=kind)
    ref = dist.MultivariateNormal(*net.marginal(ct.default_eps)).log_prob(x)
    # The solver's global error at rtol = atol = 1e-8 over an O(1) path: ~1e-6 (measured 1.2e-6 and 3.3e-6).
    torch.testing.assert_close(res.log_prob, ref, rtol=0, atol=2e-5)
    assert 50 < res.nfe < 1000 and res.eps == ct.default_eps


def test_with_a_standard_normal_prior_the_flow_is_the_closed_form_linear_map():
    diffusion, net, ct = oracle_diffusion(exact_prior=False)
    x = points()
    res = log_likelihood(diffusion, x, rtol=1e-8, atol=1e-8)
    (m1, c1), (me, ce) = net.marginal(1.0), net.marginal(ct.default_eps)

    def sqrtm(c):
        w, v = torch.linalg.eigh(c)
        return v @ torch.diag(w.sqrt()) @ v.T

    a = sqrtm(c1) @ torch.linalg.inv(sqrtm(ce))  # x(1) − μ_1 = A (x(ε) − μ_ε): C_s share Σ's eigenvectors
    x1 = m1 + (x - me) @ a.T
    torch.testing.assert_close(res.x1, x1, rtol=0, atol=1e-5)
    ref = dist.Normal(0.0, 1.0).log_prob(x1).sum(-1) + torch.logdet(a)
    torch.testing.assert_close(res.log_prob, ref, rtol=0, atol=2e-5)


def test_hutchinson_is_unbiased_and_its_variance_falls_as_one_over_k():
    diffusion, _, _ = oracle_diffusion()
    x = points(2)
    with torch.no_grad():  # evaluation only: no graph through the solver
        exact = log_likelihood(diffusion, x, rtol=1e-7, atol=1e-7).log_prob
        draws = {k: torch.stack([log_likelihood(diffusion, x, trace="hutchinson", probes=k, probe="gaussian", seed=r,
                                                rtol=1e-5, atol=1e-5).log_prob for r in range(40)]) for k in (1, 4)}
    for i in range(len(x)):
        m, se = mean_se(draws[1][:, i].numpy())
        assert abs(m - exact[i].item()) < 5 * se, (m, se, exact[i].item())
    # Var(K = 1) / Var(K = 4) = 4; with 40 replicates each the F(39, 39) ratio of sample variances lies in
    # [0.4, 2.5] × 4 with probability > 0.99.
    ratio = draws[1].var(0) / draws[4].var(0)
    assert torch.all((ratio > 1.6) & (ratio < 10.0)), ratio


def test_rademacher_probes_are_exact_for_a_diagonal_jacobian():
    diffusion, _, _ = oracle_diffusion(cov=torch.diag(torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)))
    x = points()
    exact = log_likelihood(diffusion, x, rtol=1e-8, atol=1e-8).log_prob
    hutch = log_likelihood(diffusion, x, trace="hutchinson", probes=1, seed=3, rtol=1e-8, atol=1e-8).log_prob
    torch.testing.assert_close(hutch, exact, rtol=0, atol=1e-6)  # vᵀ diag(j) v = Σ j_i when v_i² = 1


def test_counter_probes_depend_on_seed_index_and_probe_alone():
    diffusion, _, _ = oracle_diffusion()
    kw = dict(probes=3, probe="gaussian", seed=7, device="cpu", dtype=torch.float64)
    whole = make_probes(diffusion, 5, indices=np.arange(10, 15), **kw)
    part = make_probes(diffusion, 2, indices=np.array([13, 14]), **kw)
    torch.testing.assert_close(whole[3:], part)
    signs = make_probes(diffusion, 5, indices=np.arange(10, 15), **dict(kw, probe="rademacher"))
    torch.testing.assert_close(signs, torch.where(whole >= 0, 1.0, -1.0).double())


def test_the_result_does_not_depend_on_how_the_batch_is_split():
    diffusion, _, _ = oracle_diffusion()
    x = points(6)
    kw = dict(trace="hutchinson", seed=0, rtol=1e-9, atol=1e-9)
    whole = log_likelihood(diffusion, x, indices=np.arange(6), **kw).log_prob
    parts = torch.cat([log_likelihood(diffusion, x[i:i + 2], indices=np.arange(i, i + 2), **kw).log_prob
                       for i in (0, 2, 4)])
    # The same probes; the batches take different steps (the largest example error controls them), so the values
    # agree to the solver's global error, ~1e-6 relative here.
    torch.testing.assert_close(whole, parts, rtol=1e-6, atol=1e-6)


def test_sampling_inverts_the_likelihood_map_and_starts_from_ancestral_samplings_x_T():
    diffusion, _, _ = oracle_diffusion(exact_prior=False)
    x = points()
    res = log_likelihood(diffusion, x, rtol=1e-9, atol=1e-9)
    back, nfe = sample_ode(diffusion, x_T=res.x1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-6)
    assert nfe > 10

    from ppl_diffusion import noise

    z = noise.normal(5, np.arange(3), diffusion.T, (D,), stream=noise.SAMPLE, dtype=np.float64)
    via_seed, _ = sample_ode(diffusion, 3, seed=5, rtol=1e-9, atol=1e-9)
    via_x_T, _ = sample_ode(diffusion, x_T=torch.from_numpy(z), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(via_seed, via_x_T)


def test_probability_flow_is_a_pyro_distribution_in_a_plate():
    diffusion, _, _ = oracle_diffusion()
    flow = ProbabilityFlow(diffusion, rtol=1e-7, atol=1e-7)
    x = points(5)
    assert flow.event_shape == (D,) and flow.batch_shape == ()
    torch.testing.assert_close(flow.log_prob(x), log_likelihood(diffusion, x, rtol=1e-7, atol=1e-7).log_prob)
    assert flow.log_prob(x.reshape(5, 1, D)).shape == (5, 1)
    assert flow.nfe > 0

    def model(data):
        with pyro.plate("data", len(data)):
            pyro.sample("x", flow, obs=data)

    trace = pyro.poutine.trace(model).get_trace(x)
    trace.compute_log_prob()
    torch.testing.assert_close(trace.nodes["x"]["log_prob"], flow.log_prob(x))
    assert flow.sample((4, 2)).shape == (4, 2, D)
    assert flow.support.check(x).all()


def test_probability_flow_samples_are_reparameterized():
    torch.manual_seed(0)
    net = MLPDenoiser(dim=2, width=16, depth=1, emb_dim=8).double()
    diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(50), denoiser=net, event_shape=(2,))
    z = ProbabilityFlow(diffusion, rtol=1e-4, atol=1e-4).rsample((3,))
    z.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_a_learned_variance_net_uses_its_eps_half():
    torch.manual_seed(0)
    net = MLPDenoiser(dim=2, width=16, depth=1, emb_dim=8, learn_sigma=True).double()
    learned = GaussianDiffusion(schedule=NoiseSchedule.linear(50), denoiser=net, event_shape=(2,), variance="learned")

    class EpsHalf(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, t):
            return self.inner(x, t)[:, :2]

    fixed = GaussianDiffusion(schedule=NoiseSchedule.linear(50), denoiser=EpsHalf(net), event_shape=(2,))
    x = torch.randn(3, 2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(log_likelihood(learned, x).log_prob, log_likelihood(fixed, x).log_prob)


@pytest.mark.parametrize("kwargs,match", [
    (dict(rtol=0.0), r"rtol = 0.0; pass a positive finite tolerance"),
    (dict(atol=float("nan")), r"atol = nan; pass a positive finite tolerance"),
    (dict(trace="hutchinsons"), r"unknown trace 'hutchinsons'; choose one of \('exact', 'hutchinson'\)"),
    (dict(probe="normal"), r"unknown probe 'normal'"),
    (dict(probes=0), r"probes = 0; pass a positive number of Hutchinson probes"),
    (dict(eps=1e-5), r"eps = 1e-05 is outside \[1/T = 0.001"),
    (dict(time_map="cosine"), r"unknown continuous-time map 'cosine'"),
], ids=["rtol", "atol", "trace", "probe", "probes", "eps", "map"])
def test_bad_options_are_one_line(kwargs, match):
    diffusion, _, _ = oracle_diffusion()
    with pytest.raises(ValueError, match=match) as e:
        log_likelihood(diffusion, points(1), **kwargs)
    assert "\n" not in str(e.value)


def test_a_respaced_model_is_refused():
    net = MLPDenoiser(dim=2, width=8, depth=1, emb_dim=8)
    diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(50), denoiser=net, event_shape=(2,))
    with pytest.raises(ValueError, match="respaced: .* pass the model it was respaced from"):
        log_likelihood(respace(diffusion, 10), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="respaced"):
        ProbabilityFlow(respace(diffusion, 10))


# ---------------------------------------------------------------------------------------- γ-schedule models
def gamma_oracle_diffusion(*, exact_prior: bool):
    """A continuous-time model (T = 0) of a non-linear MonotoneNetGamma whose ε̂ is the exact one for data
    N(m, diag s²) given γ (tests/common.py GammaGaussianOracle), and (``exact_prior``) whose prior is the data's
    marginal at γ_1, N(α_1 m, α_1² s² + σ_1²)."""
    from ppl_diffusion.gamma import MonotoneNetGamma
    from tests.common import GammaGaussianOracle

    m, s2, lo_hi = np.array([0.5, -0.3, 1.0]), np.array([0.05, 0.2, 1.5]), (-8.0, 6.0)
    schedule = MonotoneNetGamma(*lo_hi, features=8).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a visibly non-linear interior
        for p in schedule.interior_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 2.0)
    prior = None
    if exact_prior:
        a2 = 1.0 / (1.0 + math.exp(lo_hi[1]))
        prior = dist.Normal(torch.tensor(math.sqrt(a2) * m), torch.tensor(np.sqrt(a2 * s2 + 1 - a2))).to_event(1)
    net = GammaGaussianOracle(m, s2, lo_hi, trainable=False)
    diffusion = GaussianDiffusion(schedule=schedule, denoiser=net, event_shape=(D,), T=0, gamma_range=lo_hi,
                                  prior=prior)
    return diffusion, torch.tensor(m), torch.tensor(s2), lo_hi


def _gamma_marginal(m, s2, gamma):
    """(mean, sd) of the data's marginal at γ: α m and √(α² s² + σ²)."""
    a2 = torch.sigmoid(-torch.as_tensor(gamma, dtype=torch.float64))
    return a2.sqrt() * m, (a2 * s2 + 1 - a2).sqrt()


def test_gamma_time_beta_is_the_derivative_of_minus_log_alpha_bar():
    """β(s) = σ²(s) γ'(s) (γ' by autodiff) against a central difference of −log ᾱ(s) = log(1 + e^{γ(s)})."""
    from ppl_diffusion.continuous import GammaTime

    diffusion, *_ = gamma_oracle_diffusion(exact_prior=False)
    ct = GammaTime(diffusion)
    s, h = np.linspace(0.05, 0.95, 7), 1e-5
    fd = (np.log(ct.alpha_bar(s - h)) - np.log(ct.alpha_bar(s + h))) / (2 * h)
    np.testing.assert_allclose(ct.beta(s), fd, rtol=1e-6)
    g0, g1 = (float(v.detach()) for v in diffusion.schedule.endpoints())
    np.testing.assert_allclose(ct.alpha_bar(np.array([0.0, 1.0])), [1 / (1 + math.exp(g0)), 1 / (1 + math.exp(g1))],
                               rtol=1e-12)


def test_ode_of_a_gamma_model_gives_the_gaussian_log_density():
    """With the exact ε̂ and the exact marginal at γ_1 as prior, the ODE (on γ's own time, map "gamma", ε = 0) gives
    the data's marginal density at γ_0: N(α_0 m, α_0² s² + σ_0²), in closed form."""
    diffusion, m, s2, (lo, _) = gamma_oracle_diffusion(exact_prior=True)
    x = points()
    res = log_likelihood(diffusion, x, rtol=1e-8, atol=1e-8)
    mean, sd = _gamma_marginal(m, s2, lo)
    ref = dist.Normal(mean, sd).log_prob(x).sum(-1)
    torch.testing.assert_close(res.log_prob, ref, rtol=0, atol=2e-5)
    assert res.eps == 0.0 and 20 < res.nfe < 2000


def test_ode_of_a_gamma_model_with_a_standard_normal_prior_is_the_closed_form_linear_map():
    """N(0, I) prior: x(1) = μ_1 + (sd_1/sd_0)(x − μ_0) per dimension (the flow of the exact marginals), and
    log p(x) = log N(x(1); 0, I) + Σ_d log(sd_1/sd_0)."""
    diffusion, m, s2, (lo, hi) = gamma_oracle_diffusion(exact_prior=False)
    x = points()
    res = log_likelihood(diffusion, x, rtol=1e-8, atol=1e-8)
    (m0, sd0), (m1, sd1) = _gamma_marginal(m, s2, lo), _gamma_marginal(m, s2, hi)
    x1 = m1 + sd1 / sd0 * (x - m0)
    torch.testing.assert_close(res.x1, x1, rtol=0, atol=1e-5)
    ref = dist.Normal(0.0, 1.0).log_prob(x1).sum(-1) + torch.log(sd1 / sd0).sum()
    torch.testing.assert_close(res.log_prob, ref, rtol=0, atol=2e-5)
    # Sampling runs the same map backwards: from x(1) it returns x.
    back, _ = sample_ode(diffusion, x_T=res.x1.detach(), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-5)
