"""Priors and the learned variance on the NumPyro backend: against the Pyro backend and independent
computations (grid integrals, Monte Carlo with standard-error tolerances)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
from numpyro import handlers  # noqa: E402
from numpyro.infer import SVI  # noqa: E402

import ppl_diffusion.numpyro as npd  # noqa: E402
from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule  # noqa: E402
from ppl_diffusion.infer.trace_terms import per_example_elbo, trace_pair  # noqa: E402
from ppl_diffusion.numpyro import priors as jp  # noqa: E402
from ppl_diffusion.numpyro.chain import variational_bound  # noqa: E402
from ppl_diffusion.numpyro.sampling import params_of  # noqa: E402

from .common import Z, mean_se  # noqa: E402
from .test_numpyro_backend import close  # noqa: E402

T = 10


def test_learned_variance_step_terms_agree_with_pyro():
    torch.manual_seed(0)
    tnet = MLPDenoiser(2, zero_init=False, learn_sigma=True)
    s = NoiseSchedule.linear(T)
    td = GaussianDiffusion(schedule=s, denoiser=tnet, event_shape=(2,), variance="learned")
    jd = npd.GaussianDiffusion(schedule=s, denoiser=npd.flax_twin(tnet), event_shape=(2,), variance="learned")
    x0 = torch.randn(12, 2)
    t = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 10])
    mt, gt = trace_pair(td.step_model, td.step_guide, x0, t)
    values = {k: jnp.asarray(gt.nodes[k]["value"].numpy()) for k in ("x_T", "x_t", "x_prev")}
    jmt, jgt = npd.trace_pair(jd.step_model, handlers.substitute(jd.step_guide, data=values), jax.random.PRNGKey(0),
                              jnp.asarray(x0.numpy()), jnp.asarray(t.numpy()))
    for analytic in (True, False):
        a, b = per_example_elbo(mt, gt, analytic), npd.per_example_elbo(jmt, jgt, analytic)
        for k in ("x_T", "x_prev", "x_0"):
            close(a[k], b[k], atol=1e-5)
    # The compiled bound with the learned variance = the Pyro one on the same noise.
    noise = torch.randn(T, 12, 2)
    from ppl_diffusion.infer import variational_bound as torch_bound

    with torch.no_grad():
        want = []
        for ti in range(1, T + 1):  # the Pyro bound, step by step with this noise
            tt = torch.full((12,), ti)
            x_t = td.q_sample(x0, tt, noise[ti - 1])
            mean, log_var = td.p_mean_variance(x_t, tt)
            q_mean, _, q_log_var = td.q_posterior_mean_variance(x0, x_t, tt)
            from ppl_diffusion import closed_forms as tcf

            kl = tcf.normal_kl(q_mean, q_log_var, mean, log_var).sum(-1)
            nll = -td.decoder(mean, log_var).to_event(1).log_prob(x0)
            want.append(torch.where(tt == 1, nll, kl))
        want = torch.stack(want, -1)
    got = variational_bound(jd, params_of(jd), jnp.asarray(x0.numpy()), jnp.asarray(noise.numpy()))[:, :T]
    close(want, got, rtol=1e-5, atol=1e-5)
    assert torch_bound(td, x0).terms.shape == (12, T + 1)


def grid(lim=14.0, n=561):
    x = np.linspace(-lim, lim, n)
    xx, yy = np.meshgrid(x, x, indexing="ij")
    return np.stack([xx, yy], -1).reshape(-1, 2), x[1] - x[0]


def perturbed(prior, scale, seed=0):
    """The prior's distribution with its params drawn at init + scale · N(0, 1)."""
    with handlers.seed(rng_seed=seed):
        tr = handlers.trace(prior).get_trace()
    rng = np.random.default_rng(seed)
    params = {k: jax.tree.map(lambda v: v + scale * rng.normal(size=np.shape(v)), site["value"])
              for k, site in tr.items() if site["type"] == "param"}
    with handlers.seed(rng_seed=seed):
        return handlers.substitute(prior, data=params)()


@pytest.mark.parametrize("make", [lambda: jp.FlowPrior((2,)), lambda: jp.GaussianMixture((2,), components=3),
                                  lambda: jp.StudentT((2,), df=4.0, learn_df=True)], ids=["flow", "mixture", "student-t"])
def test_numpyro_prior_densities_integrate_to_one_and_match_their_samples(make):
    with jax.enable_x64(True):
        p = perturbed(make(), 0.3)
        pts, h = grid()
        dens = np.exp(np.asarray(p.log_prob(jnp.asarray(pts))))
        assert dens.sum() * h * h == pytest.approx(1.0, abs=5e-3)
        w = dens / dens.sum()
        grid_mean = (w[:, None] * pts).sum(0)
        s = np.asarray(p.sample(jax.random.PRNGKey(1), (200000,)))
        for j in range(2):
            m, se = mean_se(s[:, j])
            assert abs(m - grid_mean[j]) <= Z * se + 2e-3, (j, m, se, grid_mean[j])


def test_monte_carlo_prior_term_is_unbiased_and_analytic_where_registered():
    net = npd.MLPDenoiser(2, zero_init=False)
    s = NoiseSchedule.linear(T, beta_start=0.05, beta_end=0.5)
    x0 = jnp.tile(jnp.asarray([[0.4, -0.3]]), (4000, 1))
    student = dist.StudentT(jnp.full(2, 4.0), jnp.zeros(2), jnp.ones(2)).to_event(1)
    gauss = dist.Normal(jnp.asarray([0.2, -0.1]), jnp.asarray([1.3, 0.8])).to_event(1)
    terms = {}
    for name, prior in (("student", student), ("gauss", gauss)):
        d = npd.GaussianDiffusion(schedule=s, denoiser=net, event_shape=(2,), prior=prior)
        terms[name] = np.asarray(variational_bound(d, params_of(d), x0, key=jax.random.PRNGKey(0))[:, -1])
    assert np.ptp(terms["gauss"]) < 1e-5  # closed form: the same for every copy of the example
    q_mean = np.sqrt(s.alphas_cumprod[-1]) * np.array([0.4, -0.3])
    q = dist.Normal(jnp.asarray(q_mean, jnp.float32), float(np.sqrt(1 - s.alphas_cumprod[-1]))).to_event(1)
    z = q.sample(jax.random.PRNGKey(5), (400000,))
    ref = float(jnp.mean(q.log_prob(z) - student.log_prob(z)))
    m, se = mean_se(terms["student"])
    assert abs(m - ref) <= Z * se, (m, se, ref)


def test_learned_prior_trains_with_numpyro_svi():
    net = npd.MLPDenoiser(2)
    d = npd.GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=net, event_shape=(2,),
                              prior=jp.DiagonalGaussian((2,)))
    x0 = jnp.asarray(3.0 + 0.3 * np.random.default_rng(0).normal(size=(128, 2)), jnp.float32)
    svi = SVI(d.step_model, d.step_guide, optax.adam(5e-2), loss=npd.StochasticTimestepELBO())
    state = svi.init(jax.random.PRNGKey(0), x0, jnp.ones(128, jnp.int32), jnp.ones(128))  # init runs the step programs
    update = jax.jit(svi.update)
    for _ in range(60):
        state, loss = update(state, x0)
    loc = np.asarray(svi.get_params(state)["prior$loc"])
    target = np.sqrt(NoiseSchedule.linear(T).alphas_cumprod[-1]) * 3.0  # the mean of q(x_T|x_0)
    assert np.all(np.abs(loc - target) < np.abs(0.0 - target))  # moved towards it from 0


def test_bad_numpyro_priors():
    net = npd.MLPDenoiser(2)
    learned = npd.GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=net, event_shape=(2,),
                                    prior=jp.DiagonalGaussian((2,)))
    with pytest.raises(ValueError, match="the compiled chain takes a fixed prior"):  # not silently the initial one
        variational_bound(learned, params_of(learned), jnp.zeros((3, 2)), key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"event shape \(3,\) but the data's event shape is \(2,\)"):
        npd.GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=net, event_shape=(2,),
                              prior=dist.Normal(jnp.zeros(3), 1.0).to_event(1))
    with pytest.raises(TypeError, match="prior must be a NumPyro distribution"):
        npd.GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=net, event_shape=(2,), prior="normal")
    with pytest.raises(TypeError, match=r"^prior is the class DiagonalGaussian; pass an instance, e\.g\. "
                                        r"prior=DiagonalGaussian\(event_shape\)$"):
        npd.GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=net, event_shape=(2,),
                              prior=jp.DiagonalGaussian)
    assert jp.DiagonalGaussian(2).event_shape == (2,)  # an int event shape is a vector's
