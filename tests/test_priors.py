"""Priors p(x_T) and the learned reverse variance: against independent computations (grid integrals,
Monte Carlo with standard-error tolerances, the default model), and their errors."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
from ppl_diffusion.infer import HybridELBO, make_estimator, per_example_elbo, trace_pair, variational_bound
from ppl_diffusion.priors import (PRIORS, DiagonalGaussian, FlowPrior, GaussianMixture, StandardNormal, StudentT,
                                  TorchPrior, make_prior, prior_kl)
from ppl_diffusion.train import TrainConfig, load_trained, train

from .common import Z, mean_se
from .test_train import assert_same_training_state, final_state

T = 10


def diffusion(prior=None, variance="beta", dim=2, seed=0):
    torch.manual_seed(seed)
    net = MLPDenoiser(dim, zero_init=False, learn_sigma=variance == "learned")
    return GaussianDiffusion(schedule=NoiseSchedule.linear(T, beta_start=0.05, beta_end=0.5), denoiser=net,
                             event_shape=(dim,), prior=prior, variance=variance)


def perturb(module, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module


# ---------------------------------------------------------------------------------------- the default
def numbers_of(prior, x0, t) -> tuple:
    """What a prior decides, each under its own seed: the step pair's per-site terms, the full bound, the
    stochastic-kl-is loss, and 5 samples of the model."""
    d = diffusion(prior)
    pyro.set_rng_seed(5)
    m, g = trace_pair(d.step_model, d.step_guide, x0, t)
    terms = per_example_elbo(m, g, analytic=True)
    pyro.set_rng_seed(6)
    bound = variational_bound(d, x0, analytic=True).terms
    pyro.set_rng_seed(7)
    loss = make_estimator("stochastic-kl-is").loss.differentiable_loss(d.model, d.guide, x0)
    pyro.set_rng_seed(8)
    return terms, bound, loss, d.sample(5)


def assert_same_numbers(a: tuple, b: tuple) -> None:
    (a_terms, a_bound, a_loss, a_x), (b_terms, b_bound, b_loss, b_x) = a, b
    assert all(torch.equal(a_terms[k], b_terms[k]) for k in a_terms)
    assert torch.equal(a_bound, b_bound) and torch.equal(a_loss, b_loss)
    assert a_x.shape == b_x.shape and torch.equal(a_x, b_x)


def test_standard_normal_passed_explicitly_gives_exactly_the_default_results():
    x0 = torch.randn(16, 2)
    t = torch.randint(1, T + 1, (16,))
    assert_same_numbers(numbers_of(None, x0, t), numbers_of(StandardNormal((2,)), x0, t))


def test_a_torch_distribution_is_wrapped_and_gives_the_pyro_priors_numbers():
    """torch's Independent(Normal(0, 1), 1) (not Pyro's): wrapped in TorchPrior, the same terms, bound, loss and
    samples bit for bit as Pyro's Normal(0, 1).to_event(1), and its KL stays analytic."""
    x0 = torch.randn(16, 2)
    t = torch.randint(1, T + 1, (16,))
    torch_normal = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), torch.ones(2)), 1)
    pyro_normal = numbers_of(dist.Normal(torch.zeros(2), 1.0).to_event(1), x0, t)
    assert_same_numbers(pyro_normal, numbers_of(torch_normal, x0, t))
    assert pyro_normal[3].shape == (5, 2)
    assert isinstance(diffusion(torch_normal).prior, TorchPrior)
    q = dist.Normal(torch.randn(3, 2), torch.rand(3, 2) + 0.5).to_event(1)
    kl, analytic = prior_kl(q, TorchPrior(torch_normal).expand([3]))
    assert analytic and torch.equal(kl, prior_kl(q, dist.Normal(torch.zeros(2), 1.0).to_event(1).expand([3]))[0])


def test_a_torch_prior_keeps_its_closed_form_kl_or_is_scored_by_monte_carlo():
    """torch's MultivariateNormal: L_T is the closed-form KL to it (Pyro's Independent-MVN rule) for every example.
    torch's Independent(StudentT(3)): no KL is registered, so L_T is one draw of log q − log p per example, whose
    mean over 4000 draws matches the KL by quadrature (a sum of 1-D integrals) within its standard error. The model
    samples from both."""
    x0 = torch.randn(1, 2).expand(4000, 2)
    t = torch.full((4000,), 3)
    cov = torch.tensor([[1.0, 0.6], [0.6, 2.0]])
    mvn = torch.distributions.MultivariateNormal(torch.tensor([0.5, -0.5]), cov)
    student = torch.distributions.Independent(torch.distributions.StudentT(3.0 * torch.ones(2)), 1)
    for prior in (mvn, student):
        d = diffusion(prior)
        m, g = trace_pair(d.step_model, d.step_guide, x0, t)
        draws = -per_example_elbo(m, g, analytic=True)["x_T"].detach().double()
        q = g.nodes["x_T"]["fn"].base_dist
        loc, scale = q.loc[0].double().numpy(), q.scale[0].double().numpy()
        if prior is mvn:
            exact, analytic = prior_kl(dist.Normal(q.loc[:1], q.scale[:1]).to_event(1), dist.MultivariateNormal(
                torch.tensor([0.5, -0.5]), cov))
            assert analytic and (draws - exact.item()).abs().max() < 1e-5
        else:
            z = np.linspace(-12, 12, 200_001)[:, None]  # KL(N(m, s²) || t_3) per dimension by the trapezoid rule
            log_q = -0.5 * ((z - loc) / scale) ** 2 - np.log(scale * math.sqrt(2 * math.pi))
            log_p = torch.distributions.StudentT(3.0).log_prob(torch.from_numpy(z)).numpy()
            exact = np.trapezoid(np.exp(log_q) * (log_q - log_p), z, axis=0).sum()
            mean, se = mean_se(draws)
            assert se > 0 and abs(mean - exact) < Z * se
        assert d.sample(3).shape == (3, 2)


# ---------------------------------------------------------------------------------------- the prior's KL
@pytest.mark.parametrize("make", [lambda: StandardNormal((3,)), lambda: perturb(DiagonalGaussian((3,)))],
                         ids=["standard", "learned-diagonal"])
def test_monte_carlo_kl_agrees_with_the_analytic_kl(make):
    with torch.no_grad():
        prior = make()()
    q = dist.Normal(torch.tensor([[0.3, -1.0, 2.0], [0.0, 0.5, -0.2]]), torch.tensor([[0.9, 1.1, 0.7], [1.0, 1.3, 0.8]])
                    ).to_event(1)
    analytic, is_analytic = prior_kl(q, prior)
    assert is_analytic
    z = q.sample((20000,))
    draws = (q.log_prob(z) - prior.log_prob(z)).detach()  # [N x 2]
    for j in range(2):
        m, se = mean_se(draws[:, j].numpy())
        assert abs(m - analytic[j].item()) <= Z * se, (m, se, analytic[j].item())
    # The estimators' per-site rule: the same term by one draw (analytic=False) centres on it too.
    d = diffusion(make(), dim=3)
    x0 = torch.tensor([[0.4, -0.3, 1.0]]).repeat(4000, 1)
    t = torch.full((4000,), 3)
    m_, g_ = trace_pair(d.step_model, d.step_guide, x0, t)
    mc, exact = per_example_elbo(m_, g_, analytic=False)["x_T"], per_example_elbo(m_, g_, analytic=True)["x_T"]
    mm, se = mean_se(mc.detach().numpy())
    assert abs(mm - exact[0].item()) <= Z * se


@pytest.mark.parametrize("name", ["student-t", "mixture", "flow"])
def test_priors_without_a_closed_form_are_scored_by_monte_carlo_without_bias(name):
    """L_T by one draw in every estimator: its mean over draws equals prior_kl's many-draw value within SE."""
    prior = perturb(make_prior(name, (2,)), 0.2)
    d = diffusion(prior)
    x0 = torch.tensor([[0.4, -0.3]]).repeat(4000, 1)
    m_, g_ = trace_pair(d.step_model, d.step_guide, x0, torch.full((4000,), 2))
    site = per_example_elbo(m_, g_, analytic=True)["x_T"]  # no KL registered: one draw, even when analytic
    q = g_.nodes["x_T"]["fn"]
    with torch.no_grad():
        ref, analytic = prior_kl(dist.Normal(q.base_dist.loc[:1], q.base_dist.scale[:1]).to_event(1), prior(),
                                 draws=200000)
    assert not analytic
    m, se = mean_se(-site.detach().numpy())
    assert abs(m - ref.item()) <= Z * se + 1e-3, (m, se, ref.item())


# ---------------------------------------------------------------------------------------- densities
def grid(lim=14.0, n=561):
    x = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(x, x, indexing="ij")
    return torch.stack([xx, yy], -1).reshape(-1, 2), (x[1] - x[0]).item()


# The flow's perturbation is kept moderate: in the MAF direction larger random weights give tails far beyond any
# grid (at 0.2, 1% of the samples lie beyond |x| = 200), which a grid integral cannot check.
@pytest.mark.parametrize("make", [lambda: perturb(FlowPrior((2,)), 0.15),
                                  lambda: perturb(GaussianMixture((2,), components=3), 0.8),
                                  lambda: perturb(StudentT((2,), df=4.0, learn_df=True), 0.3)],
                         ids=["flow", "mixture", "student-t"])
def test_prior_densities_integrate_to_one_and_match_their_samples(make):
    torch.set_default_dtype(torch.float64)  # Pyro's autoregressive inverse allocates in the default dtype
    prior = make().double()
    with torch.no_grad():
        p = prior()
        pts, h = grid()
        dens = p.log_prob(pts).exp()
        mass = dens.sum().item() * h * h
        # Student-t tails beyond the grid hold a little mass: P(|x| > 14) per dimension is ~1e-3 at ν ≈ 4.
        assert mass == pytest.approx(1.0, abs=5e-3), mass
        w = dens / dens.sum()
        grid_mean = (w[:, None] * pts).sum(0)
        clip = pts.abs().max(-1).values < 6  # second moments on the bulk (heavy tails: the grid truncates)
        wc = dens * clip / (dens * clip).sum()
        grid_m2 = (wc[:, None] * pts ** 2).sum(0)
        s = p.sample((200000,))
        for j in range(2):
            m, se = mean_se(s[:, j].numpy())
            assert abs(m - grid_mean[j].item()) <= Z * se + 2e-3, (j, m, se, grid_mean[j].item())
            inside = s[(s.abs().max(-1).values < 6)]
            m2, se2 = mean_se((inside[:, j] ** 2).numpy())
            assert abs(m2 - grid_m2[j].item()) <= Z * se2 + 2e-3, (j, m2, se2, grid_m2[j].item())


def test_flow_prior_on_image_events_reshapes():
    prior = FlowPrior((1, 2, 2))
    p = prior()
    assert tuple(p.event_shape) == (1, 2, 2) and tuple(p.batch_shape) == ()
    x = p.sample((5,))
    assert x.shape == (5, 1, 2, 2) and p.log_prob(x).shape == (5,)


# ---------------------------------------------------------------------------------------- bad priors
class NoLogProb(dist.TorchDistribution):
    arg_constraints = {}
    support = dist.constraints.real_vector

    def __init__(self):
        super().__init__(event_shape=torch.Size([2]))

    def sample(self, sample_shape=torch.Size()):
        return torch.zeros(sample_shape + (2,))


class TorchDistributionPrior(DiagonalGaussian):
    def forward(self):
        return torch.distributions.Independent(torch.distributions.Normal(self.loc, self.log_scale.exp()), 1)


@pytest.mark.parametrize("prior, err, words", [
    (dist.Normal(torch.zeros(3), 1.0).to_event(1), ValueError, "event shape (3,) but the data's event shape is (2,)"),
    (dist.Normal(torch.zeros(2), 1.0), ValueError, "batch shape (2,)"),
    (NoLogProb(), TypeError, "has no log_prob"),
    ("normal", TypeError, "prior must be a distribution over x_T (Pyro's, or torch's: it is wrapped) or a "
                          "ppl_diffusion.priors.Prior module, got str; for a density of your own, subclass "
                          "pyro.distributions.TorchDistribution"),
    (DiagonalGaussian, TypeError, "prior is the class DiagonalGaussian; pass an instance, e.g. "
                                  "prior=DiagonalGaussian(event_shape)"),
    (dist.Normal, TypeError, "prior is the class Normal; pass an instance, e.g. prior=Normal(...)"),
    (TorchDistributionPrior((2,)), TypeError, "TorchDistributionPrior.forward() returned the torch distribution "
                                               "Independent; return Pyro's (pyro.distributions.Independent"),
])
def test_bad_priors_are_one_line_errors(prior, err, words):
    with pytest.raises(err) as info:
        diffusion(prior)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_priors_event_shape_may_be_an_int():
    assert tuple(DiagonalGaussian(2)().event_shape) == (2,)
    with pytest.raises(ValueError, match=r"^DiagonalGaussian: event_shape = 0; pass the shape of one example"):
        DiagonalGaussian(0)


def test_make_prior_names():
    for name in PRIORS:
        assert tuple(make_prior(name, (2,))().event_shape) == (2,)
    with pytest.raises(ValueError, match="unknown prior 'cauchy'"):
        make_prior("cauchy", (2,))


# ---------------------------------------------------------------------------------------- training
TOY = dict(data="eight_gaussians", net="mlp", T=20, batch_size=32, lr=1e-2, warmup_steps=0, log_every=1)


@pytest.mark.parametrize("prior", ["gaussian", "mixture"])
def test_learned_prior_trains_resumes_exactly_and_loads(tmp_path, prior):
    cfg = dict(TOY, prior=prior, estimator="stochastic-kl-is")
    full = train(TrainConfig(**cfg, steps=6, checkpoint_every=2), tmp_path / "full", progress=False)
    train(TrainConfig(**cfg, steps=3, checkpoint_every=2), tmp_path / "part", progress=False)
    train(TrainConfig(**cfg, steps=6, checkpoint_every=2), tmp_path / "part", resume=True, progress=False)
    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "part")
    assert_same_training_state(a, b)
    for part in ("prior", "prior_ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    start = make_prior(prior, (2,)).state_dict() if prior == "gaussian" else None
    if start is not None:  # it moved from N(0, I)
        assert not torch.equal(a["prior"]["log_scale"], start["log_scale"])
    loaded = load_trained(tmp_path / "full")
    assert all(torch.equal(v, a["prior_ema"][k]) for k, v in loaded.prior.state_dict().items())
    assert full.step == 6


def test_training_options_that_need_each_other(tmp_path):
    with pytest.raises(ValueError, match="estimator 'hybrid' trains a learned variance; pass --variance learned"):
        TrainConfig(**TOY, steps=1, estimator="hybrid").validate()
    with pytest.raises(ValueError, match="prior 'flow' trains on --backend pyro only"):
        TrainConfig(**TOY, steps=1, prior="flow", backend="numpyro").validate()
    with pytest.raises(ValueError, match="unknown prior 'laplace'"):
        TrainConfig(**TOY, steps=1, prior="laplace").validate()


# ---------------------------------------------------------------------------------------- learned variance
def test_learned_variance_stays_between_the_posterior_and_the_forward_variance():
    d = diffusion(variance="learned")
    x_t = torch.randn(64, 2)
    t = torch.arange(1, T + 1).repeat(7)[:64]
    with torch.no_grad():
        for scale in (0.0, 1.0, 30.0):  # extreme outputs included
            v = scale * torch.randn(64, 2)
            log_var = d.learned_log_variance(v, t)
            lo = torch.as_tensor(d.schedule.posterior_log_variance_clipped, dtype=torch.float32)[t - 1, None]
            hi = torch.as_tensor(np.log(d.schedule.betas), dtype=torch.float32)[t - 1, None]
            assert (log_var >= lo - 1e-6).all() and (log_var <= hi + 1e-6).all()
        _, log_var = d.p_mean_variance(x_t, t)
        assert torch.allclose(d.learned_log_variance(torch.zeros(1, 2), torch.tensor([4])),
                              (hi.new_tensor(np.log(d.schedule.betas[3])) + float(d.schedule.posterior_log_variance_clipped[3])) / 2)
    with pytest.raises(ValueError, match="stacked on the channel axis"):
        GaussianDiffusion(schedule=d.schedule, denoiser=MLPDenoiser(2), event_shape=(2,), variance="learned").predict_eps(
            x_t, t)


def test_hybrid_value_is_the_elbo_estimate_and_its_gradient_the_hybrid_one():
    d = diffusion(variance="learned")
    x0 = torch.randn(32, 2)
    loss = HybridELBO(lam=0.25)
    pyro.set_rng_seed(3)
    value = loss.differentiable_loss(d.model, d.guide, x0)
    value.backward()
    got = {n: p.grad.clone() for n, p in d.denoiser.named_parameters()}
    d.denoiser.zero_grad()
    pyro.set_rng_seed(3)
    parts = loss.parts(d.model, x0)
    assert value.item() == pytest.approx(-parts["elbo"].sum().item(), rel=1e-6)
    (parts["simple"] + 0.25 * parts["vlb"]).sum().backward()
    for n, p in d.denoiser.named_parameters():
        assert torch.allclose(got[n], p.grad, rtol=1e-5, atol=1e-7), n
    # The stop-gradient: the bound term moves only the variance output v, not ε̂.
    d.denoiser.zero_grad()
    pyro.set_rng_seed(3)
    loss.parts(d.model, x0)["vlb"].sum().backward()
    out_w = d.denoiser.out[-1].weight.grad  # rows 0..1: ε̂, rows 2..3: v
    assert out_w[:2].abs().max() == 0 and out_w[2:].abs().max() > 0


def test_hybrid_value_is_unbiased_for_the_bound():
    d = diffusion(variance="learned")
    x0 = torch.randn(8, 2).repeat(64, 1)
    with torch.no_grad():
        pyro.set_rng_seed(0)
        ref = variational_bound(d, x0, analytic=True).nll  # every t, one x_t each
        loss = HybridELBO()
        vals = [loss.loss(d.model, d.guide, x0) / len(x0) for _ in range(200)]
    m, se = mean_se(vals)
    ref_m, ref_se = ref.mean().item(), ref.std().item() / math.sqrt(len(ref))
    assert abs(m - ref_m) <= Z * math.hypot(se, ref_se), (m, se, ref_m, ref_se)


def test_learned_variance_trains_with_hybrid_and_with_the_bound(tmp_path):
    for est in ("hybrid", "stochastic-kl"):
        r = train(TrainConfig(**TOY, steps=3, variance="learned", estimator=est), tmp_path / est, progress=False)
        assert np.isfinite(r.loss)
    d = load_trained(tmp_path / "hybrid")
    assert d.learned_variance and d.denoiser.learn_sigma
