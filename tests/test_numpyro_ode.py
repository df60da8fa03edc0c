"""The probability-flow ODE on the NumPyro backend (diffrax): exact Gaussian references, the NFE count, adjoint
against backpropagation, and agreement with the PyTorch backend (torchdiffeq) at the same weights and probes.

The Gaussian tests use data N(m, Σ) (full covariance, D = 3) and the oracle ε̂ = σ (ᾱΣ + σ²I)⁻¹ (x − √ᾱ m) at the
map's own ᾱ(s): the ODE then carries N(√ᾱ(ε) m, C_ε), C_s = ᾱ(s)Σ + (1 − ᾱ(s))I, to N(√ᾱ(1) m, C_1) exactly, its
Jacobian ∂f/∂x = −½β(s)(I − C_s⁻¹) does not depend on x, and ∫_ε^1 ∂f/∂x ds = M = ½ (log C_1 − log C_ε) (C_s all
commute; substitute a = ᾱ(s), β ds = −da/a). So Hutchinson's estimate for probes v_k is exactly mean_k v_kᵀ M v_k.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")
pytest.importorskip("flax")
pytest.importorskip("diffrax")

import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

import ppl_diffusion.numpyro as npd  # noqa: E402
from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule  # noqa: E402
from ppl_diffusion import ode as tode  # noqa: E402
from ppl_diffusion.continuous import ContinuousTime  # noqa: E402
from ppl_diffusion.numpyro import ode  # noqa: E402

D = 3
M_DATA = np.array([0.5, -1.0, 0.3])
_A = np.array([[1.0, 0.6, -0.3], [0.0, 0.8, 0.5], [0.0, 0.0, 0.6]])
SIGMA = _A @ _A.T  # full covariance, eigenvalues ~0.1..1.9


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """torchdiffeq's small solves are dominated by per-call overhead; with two intra-op threads on a shared
    2-core machine they run ~30x slower (OpenMP spinning)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sym(fn, c):
    w, u = np.linalg.eigh(c)
    return (u * fn(w)) @ u.T


class GaussianOracle:
    """ε̂(x, t) of data N(m, Σ) at the continuous time of the label t (s = t/T on the grid maps, (t − 1)/(T − 1)
    for vp-linear), with ᾱ(s) from :func:`ode.coefficients` (the solve's own)."""

    def __init__(self, ct):
        self.ct = ct

    def __call__(self, x, t):
        ct = self.ct
        s = t[0] / ct.T if ct.kind != "vp-linear" else (t[0] - 1.0) / (ct.T - 1)
        _, sigma, _ = ode.coefficients(ct, s, x.dtype)
        ab = 1.0 - sigma ** 2
        cov = ab * jnp.asarray(SIGMA) + sigma ** 2 * jnp.eye(D)
        return sigma * jnp.linalg.solve(cov, (x - jnp.sqrt(ab) * jnp.asarray(M_DATA)).T).T


def gaussian_case(kind, exact_prior=True):
    ct = ContinuousTime(NoiseSchedule.linear(1000), kind)
    a1 = float(ct.alpha_bar(1.0))
    c1 = a1 * SIGMA + (1 - a1) * np.eye(D)
    prior = dist.MultivariateNormal(jnp.asarray(np.sqrt(a1) * M_DATA), jnp.asarray(c1)) if exact_prior else None
    diffusion = npd.GaussianDiffusion(schedule=ct.schedule, denoiser=GaussianOracle(ct), event_shape=(D,),
                                      prior=prior)
    return diffusion, ct


def marginal(ct, s):
    a = float(ct.alpha_bar(s))
    return a, np.sqrt(a) * M_DATA, a * SIGMA + (1 - a) * np.eye(D)


def mvn_logpdf(x, mean, cov):
    r = x - mean
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (np.einsum("bi,ij,bj->b", r, np.linalg.inv(cov), r) + logdet + D * np.log(2 * np.pi))


def data(n, seed=0):
    z = np.random.default_rng(seed).normal(size=(n, D))
    return M_DATA + z @ np.linalg.cholesky(SIGMA).T


# ------------------------------------------------------------------------------- time coefficients
@pytest.mark.parametrize("kind", ["grid", "grid-linear", "vp-linear"])
def test_coefficients_match_the_numpy_reference(kind):
    ct = ContinuousTime(NoiseSchedule.cosine(50) if kind != "vp-linear" else NoiseSchedule.linear(50), kind)
    s = np.concatenate([np.linspace(0.02, 1.0, 37), np.arange(1, 51) / 50])  # between and at the steps
    with jax.enable_x64(True):
        t, sigma, beta = jax.vmap(lambda u: ode.coefficients(ct, u, jnp.float64))(jnp.asarray(s))
        np.testing.assert_allclose(np.asarray(t), ct.step(s), rtol=1e-14)
        np.testing.assert_allclose(np.asarray(sigma) ** 2, 1 - ct.alpha_bar(s), rtol=1e-12)
        np.testing.assert_allclose(1 - np.asarray(sigma) ** 2, ct.alpha_bar(s), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(np.asarray(beta), ct.beta(s), rtol=1e-10)


# ------------------------------------------------------------------------------- Gaussian references
@pytest.mark.parametrize("kind", ["grid", "vp-linear"])
def test_exact_trace_equals_the_gaussian_log_density(kind):
    """rtol = atol = 1e-8 in float64: log p within 2e-6 nats of log N(x; √ᾱ_ε m, C_ε) (measured ~1e-7; the error
    scales with the tolerance: at 1e-5 it is ~1e-4)."""
    with jax.enable_x64(True):
        diffusion, ct = gaussian_case(kind)
        x = data(6)
        res = ode.log_likelihood(diffusion, jnp.asarray(x), rtol=1e-8, atol=1e-8, time_map=kind)
        _, mean, cov = marginal(ct, res.eps)
        np.testing.assert_allclose(np.asarray(res.log_prob), mvn_logpdf(x, mean, cov), atol=2e-6, rtol=0)
        assert res.nfe > 0 and res.eps == ct.default_eps
        again = ode.log_likelihood(diffusion, jnp.asarray(x[::-1].copy()), rtol=1e-8, atol=1e-8, time_map=kind)
        (fn,) = diffusion._compiled.values()  # compiled once, kept on the diffusion, not retraced
        assert fn._cache_size() == 1
        np.testing.assert_allclose(np.asarray(again.log_prob)[::-1], np.asarray(res.log_prob), rtol=1e-6)


def test_standard_normal_prior_closed_form():
    """With p(x_T) = N(0, I) (the default) the flow of the oracle is affine: x1 = √ᾱ_1 m + A (x − √ᾱ_ε m), A =
    C_1^{1/2} C_ε^{-1/2}, and log p = log N(x1; 0, I) + log |det A|."""
    with jax.enable_x64(True):
        diffusion, ct = gaussian_case("grid", exact_prior=False)
        x = data(5, seed=1)
        res = ode.log_likelihood(diffusion, jnp.asarray(x), rtol=1e-8, atol=1e-8)
        a1, m1, c1 = marginal(ct, 1.0)
        ae, me, ce = marginal(ct, res.eps)
        A = _sym(np.sqrt, c1) @ _sym(lambda w: w ** -0.5, ce)
        x1 = m1 + (x - me) @ A.T
        np.testing.assert_allclose(np.asarray(res.x1), x1, atol=2e-6)
        np.testing.assert_allclose(np.asarray(res.delta), np.linalg.slogdet(A)[1], atol=2e-6)
        want = mvn_logpdf(x1, np.zeros(D), np.eye(D)) + np.linalg.slogdet(A)[1]
        np.testing.assert_allclose(np.asarray(res.log_prob), want, atol=2e-6, rtol=0)


def test_hutchinson_is_exact_per_probe_unbiased_and_its_variance_falls_as_1_over_K():
    """Per example, the Hutchinson Δ is mean_k v_kᵀ M v_k for its own probes (closed-form M, see the module): that
    is exact, to the solver. Over R = 2000 examples (one batch, independent counter-based probes) the mean is
    within 5 SE of tr M (the exact Δ) for Rademacher and Gaussian probes, and the Gaussian probes'
    variance ratio K = 1 to K = 4 is 4 within 5 SD of its log: SD(log s²) ≈ √((2 + κ)/R), κ the estimate's excess
    kurtosis, 12 Σλ⁴/(Σλ²)² for K = 1 and a quarter of it for K = 4 (λ the eigenvalues of M)."""
    R = 2000
    with jax.enable_x64(True):
        diffusion, ct = gaussian_case("grid")
        x = jnp.asarray(np.broadcast_to(data(1, seed=2), (R, D)).copy())  # J does not depend on x: one row suffices
        _, _, c1 = marginal(ct, 1.0)
        _, _, ce = marginal(ct, ct.default_eps)
        M = 0.5 * (_sym(np.log, c1) - _sym(np.log, ce))  # tr M = log |det A|, the exact trace's Δ (tested above)
        var = {}
        for probe, K in (("rademacher", 1), ("gaussian", 1), ("gaussian", 4)):
            res = ode.log_likelihood(diffusion, x, trace="hutchinson", probes=K, probe=probe, seed=3, rtol=1e-8,
                                     atol=1e-8)
            v = np.asarray(ode.make_probes(diffusion, R, probes=K, probe=probe, seed=3, dtype=jnp.float64))
            want = np.einsum("bki,ij,bkj->b", v, M, v) / K
            delta = np.asarray(res.delta)
            np.testing.assert_allclose(delta, want, atol=1e-6)
            se = delta.std(ddof=1) / np.sqrt(R)
            assert abs(delta.mean() - np.trace(M)) < 5 * se, (probe, K, delta.mean(), np.trace(M), se)
            var[K] = delta.var(ddof=1)
        lam = np.linalg.eigvalsh(M)
        kurt = 12 * (lam ** 4).sum() / ((lam ** 2).sum()) ** 2
        sd = np.sqrt((2 + kurt) / R + (2 + kurt / 4) / R)
        assert abs(np.log(var[1] / var[4]) - np.log(4)) < 5 * sd, (var, sd)
        assert abs(var[1] - 2 * (M ** 2).sum()) < 5 * sd * var[1]  # the Gaussian probe's variance 2 ||M||_F²


# ------------------------------------------------------------------------------- NFE
@pytest.mark.parametrize("solver", ["tsit5", pytest.param("dopri8", marks=pytest.mark.slow)])  # dopri8: not FSAL
def test_nfe_counts_every_evaluation(solver):
    """NFE from diffrax's step statistics (nfe_of) equals a vector field that counts its calls (a host callback
    per evaluation), with rejected steps (the oracle at a tight tolerance rejects some) and in both directions."""
    diffusion, ct = gaussian_case("grid")
    apply, params = ode._apply_of(diffusion)
    field = ode._trace_field(diffusion, ct, apply, "exact")
    calls = [0]

    def counting(s, y, args):
        jax.debug.callback(lambda: calls.__setitem__(0, calls[0] + 1))
        return field(s, y, args)

    x = jnp.asarray(data(4), jnp.float32)
    y0 = jnp.concatenate([x, jnp.zeros((4, 1))], 1)
    for t0, t1 in ((1e-3, 1.0), (1.0, 1e-3)):
        calls[0] = 0
        run = jax.jit(lambda y: ode.solve(counting, y, t0, t1, ({}, jnp.zeros((4, 0))), rtol=1e-6, atol=1e-6,
                                          solver=solver))
        _, nfe, result = run(y0)
        jax.effects_barrier()
        assert int(result) == 0 and calls[0] == int(nfe) > 0, (t0, calls[0], int(nfe))


# ------------------------------------------------------------------------------- gradients
def tiny_mlp_diffusion(T=20, dim=2, seed=0):
    torch.manual_seed(seed)
    tnet = MLPDenoiser(dim, width=16, depth=1, emb_dim=8, zero_init=False).eval()
    with torch.no_grad():  # ε̂ of a random net scaled to a trained one's size near the data: a less stiff ODE
        tnet.out[-1].weight.mul_(0.1)
        tnet.out[-1].bias.mul_(0.1)
    schedule = NoiseSchedule.linear(T)
    td = GaussianDiffusion(schedule=schedule, denoiser=tnet, event_shape=(dim,))
    jd = npd.GaussianDiffusion(schedule=schedule, denoiser=npd.flax_twin(tnet), event_shape=(dim,)).eval()
    return td, jd


@pytest.mark.slow  # two gradient compilations through the solver: ~40 s on a shared 2-core machine
def test_adjoint_gradient_equals_backpropagation():
    """d log p / dθ by the continuous adjoint (BacksolveAdjoint) and by backpropagation through the solver
    (RecursiveCheckpointAdjoint) agree to 1e-5 relative in float64 at rtol = atol = 1e-9 (each is the gradient of
    the solution up to the solver's error; measured 3.1e-6 of the largest component, 46)."""
    with jax.enable_x64(True):
        _, jd = tiny_mlp_diffusion()
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), ode._apply_of(jd)[1])
        x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2)))

        def loss(p, adjoint):
            flow = ode.ProbabilityFlow(jd, params=p, rtol=1e-9, atol=1e-9, adjoint=adjoint)
            return flow.log_prob(x).sum()

        g_bp = jax.grad(loss)(params, False)
        g_adj = jax.grad(loss)(params, True)
        a, b = jax.flatten_util.ravel_pytree(g_bp)[0], jax.flatten_util.ravel_pytree(g_adj)[0]
        assert float(jnp.abs(a).max()) > 1e-3
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-5 * float(jnp.abs(a).max()))


# ------------------------------------------------------------------------------- both backends
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_agrees_with_the_pytorch_backend(trace):
    """The same MLP weights (the Flax twin), the same counter-based probes (seed 0): log p of torchdiffeq's dopri5
    and diffrax's dopri5, both at rtol = atol = 1e-6 in float32, agree to 1e-4 relative."""
    td, jd = tiny_mlp_diffusion()
    x = np.random.default_rng(1).normal(size=(5, 2)).astype(np.float32)
    opts = dict(trace=trace, probes=2, seed=0, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        want = tode.log_likelihood(td, torch.from_numpy(x), method="dopri5", **opts)
    got = ode.log_likelihood(jd, jnp.asarray(x), solver="dopri5", **opts)
    lp = want.log_prob.numpy()
    np.testing.assert_allclose(np.asarray(got.log_prob), lp, rtol=0, atol=1e-4 * np.abs(lp).max())
    np.testing.assert_allclose(np.asarray(got.x1), want.x1.numpy(), rtol=0, atol=1e-3)


def test_sample_ode_agrees_with_the_pytorch_backend():
    """x_T of a seed is the PyTorch twin's (the SAMPLE stream at t = T), and so is the sample, to the solvers'
    tolerance (rtol = atol = 1e-6, float32)."""
    td, jd = tiny_mlp_diffusion()
    with torch.no_grad():
        want, _ = tode.sample_ode(td, 4, seed=7, indices=[3, 4, 5, 6], rtol=1e-6, atol=1e-6)
        x_T = tode.prior_draws_normal(td, 7, np.arange(3, 7), "cpu", torch.float32)
    np.testing.assert_array_equal(np.asarray(ode.prior_draws_normal(jd, 7, np.arange(3, 7))), x_T.numpy())
    got, nfe = ode.sample_ode(jd, 4, seed=7, indices=[3, 4, 5, 6], rtol=1e-6, atol=1e-6, solver="dopri5")
    assert nfe > 0
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=0, atol=1e-3 * np.abs(want.numpy()).max())


# ------------------------------------------------------------------------------- NumPyro likelihood
@pytest.mark.slow  # 20-60 s; out of the default run to keep it under 12 minutes
def test_maximum_likelihood_with_plain_svi():
    """ProbabilityFlow as the likelihood of a NumPyro model, the denoiser registered with nnx_module and an empty
    guide: plain SVI (Trace_ELBO is −log p, no latent sites) lowers −log p of 2-D data in a few steps. Then the
    trained weights as a distribution (event shape, samples, log_prob)."""
    import optax
    from numpyro.contrib.module import nnx_module
    from numpyro.infer import SVI, Trace_ELBO

    _, jd = tiny_mlp_diffusion(T=10)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 2)) * np.array([0.3, 1.5]) + 1.0, jnp.float32)

    def model(x):
        net = nnx_module("denoiser", jd.denoiser)
        numpyro.sample("x", ode.ProbabilityFlow(jd, net=net, rtol=1e-3, atol=1e-3, max_steps=64), obs=x)

    svi = SVI(model, lambda x: None, optax.adam(3e-2), Trace_ELBO())
    result = svi.run(jax.random.PRNGKey(0), 6, x, progress_bar=False)
    losses = np.asarray(result.losses)
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 1.0, losses

    # the trained weights as a distribution: samples, and log_prob = log_likelihood(params=…)
    params = result.params["denoiser$params"]
    flow = ode.ProbabilityFlow(jd, params=params, rtol=1e-3, atol=1e-3)
    assert flow.event_shape == (2,) and flow.batch_shape == ()
    xs = flow.sample(jax.random.PRNGKey(1), (2, 3))
    assert xs.shape == (2, 3, 2) and np.isfinite(np.asarray(xs)).all()
    res = ode.log_likelihood(jd, xs.reshape(6, 2), params=params, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np.asarray(flow.log_prob(xs)).reshape(6), np.asarray(res.log_prob), rtol=1e-6)


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(rtol=0.0), "rtol = 0.0"),
    (dict(atol=-1e-5), "atol = -1e-05"),
    (dict(trace="hutch"), "unknown trace 'hutch'"),
    (dict(solver="rk4"), "unknown solver 'rk4'"),
    (dict(eps=1e-4), "eps = 0.0001 is outside"),
    (dict(trace="hutchinson"), "seed= .* or key="),
])
def test_bad_input_is_one_line(kwargs, match):
    _, jd = tiny_mlp_diffusion()
    x = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match=match) as e:
        ode.log_likelihood(jd, x, **kwargs)
    assert "\n" not in str(e.value)


def test_learned_prior_and_respaced_model_are_refused_in_one_line():
    from ppl_diffusion.numpyro.priors import DiagonalGaussian
    from ppl_diffusion.numpyro.sampling import respace

    _, jd = tiny_mlp_diffusion()
    learned = npd.GaussianDiffusion(schedule=jd.schedule, denoiser=jd.denoiser, event_shape=(2,),
                                    prior=DiagonalGaussian((2,)))
    for model, match in ((learned, "fixed prior"), (respace(jd, 5), "respaced")):
        with pytest.raises(ValueError, match=match) as e:
            ode.log_likelihood(model, jnp.zeros((2, 2)))
        assert "\n" not in str(e.value)
