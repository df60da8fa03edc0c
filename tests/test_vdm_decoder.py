"""VDM's factorised categorical decoder p(x_0|x_1) ("vdm-categorical"): its probabilities against a brute-force
normalisation over the 256 values, its draws against its probabilities, its reconstruction term against quadrature
and its limit 0 as γ_0 → −∞, no denoiser call, the chain's L_0 and the continuous-time term alike, gradients, and
both backends."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
from ppl_diffusion import noise as counter
from ppl_diffusion.distributions import VDMCategorical, VDMCategoricalDecoder, make_decoder
from ppl_diffusion.gamma import LinearGamma, ScalarGamma
from ppl_diffusion.infer import continuous_time_terms, per_example_elbo, trace_pair, variational_bound
from ppl_diffusion.infer.draws import FeedNoiseMessenger

from .common import Z, central_difference

CENTRES = np.arange(256) * (2 / 255) - 1  # the values of 8-bit data in model space


def brute_log_prob(x, loc, scale):
    """log P(x) = log N(x; loc, scale²) − log Σ_k N(c_k; loc, scale²), float64 NumPy/SciPy, elementwise."""
    x, loc, scale = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (x, loc, scale)))
    every = norm.logpdf(CENTRES, loc[..., None], scale[..., None])
    return norm.logpdf(x, loc, scale) - logsumexp(every, axis=-1)


def pixels(shape, seed=0):
    """8-bit data in model space, every value used when the shape allows."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    v = np.concatenate([np.arange(256), rng.integers(0, 256, max(0, n - 256))])[:n] if n >= 256 else \
        rng.integers(0, 256, n)
    return torch.from_numpy(CENTRES[rng.permutation(v)].reshape(shape))


class Counting(torch.nn.Module):
    """A denoiser that counts its calls."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x_t, t):
        self.calls += 1
        return self.net(x_t, t)


def gamma_model(g0, T=0, decoder="vdm-categorical", schedule=None, dim=4, seed=0):
    torch.manual_seed(seed)
    net = MLPDenoiser(dim, width=16, depth=1, emb_dim=16, zero_init=False).double()
    schedule = LinearGamma(g0, 6.0) if schedule is None else schedule
    return GaussianDiffusion(schedule=schedule, denoiser=Counting(net), event_shape=(dim,), T=T, decoder=decoder,
                             gamma_range=(-30.0, 6.0))


# ---------------------------------------------------------------------------------------- the distribution
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)], ids=["f64", "f32"])
def test_log_prob_is_the_density_normalised_over_the_256_values(dtype, tol):
    rng = np.random.default_rng(1)
    loc = np.concatenate([rng.uniform(-1.4, 1.4, 60), [-1.0, 1.0, 3.0, -5.0]])
    scale = np.exp(rng.uniform(math.log(2e-3), math.log(3.0), loc.shape))
    x = CENTRES[rng.integers(0, 256, loc.shape)]
    x[:20] = CENTRES[np.clip(np.round((np.clip(loc[:20], -1, 1) + 1) * 127.5).astype(int), 0, 255)]  # the likely ones
    d = VDMCategorical(torch.tensor(loc, dtype=dtype), torch.tensor(scale, dtype=dtype))
    got = d.log_prob(torch.tensor(x, dtype=dtype)).double().numpy()
    want = brute_log_prob(x, loc, scale)
    assert np.abs(got - want).max() <= tol * max(1.0, np.abs(want).max())
    # Every value's probability, summed over the 256: 1.
    every = d.log_prob(torch.tensor(CENTRES, dtype=dtype)[:, None].expand(256, len(loc)))
    assert torch.allclose(every.double().exp().sum(0), torch.ones(len(loc), dtype=torch.float64), atol=tol)
    assert torch.allclose(d.mean.double(), (every.double().exp() * torch.tensor(CENTRES)[:, None]).sum(0), atol=tol)


def test_validation_refuses_values_off_the_256_centres():
    d = VDMCategorical(torch.zeros(3), torch.ones(3), validate_args=True)
    with pytest.raises(ValueError, match="is not a centre of a 256-value categorical decoder"):
        d.log_prob(torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="bins = 1"):
        VDMCategoricalDecoder(1)
    assert isinstance(make_decoder("vdm-categorical"), VDMCategoricalDecoder)


def test_draws_have_its_probabilities():
    """sample() and the draw from given normal noise (the sampler's counter-based path: the inverse CDF at Φ(ε)) fall
    on each value with its probability, within Z standard errors of a binomial count."""
    loc, scale = torch.tensor([0.1, -0.97, 0.5]), torch.tensor([0.01, 0.02, 0.3])
    d = VDMCategorical(loc, scale)
    probs = d.probs.double()
    n = 40_000
    torch.manual_seed(0)
    for draws in (d.sample((n,)), d.from_normal(torch.randn(n, 3))):
        k = torch.round((draws.double() + 1) * 127.5).long()
        assert torch.allclose(draws.double(), torch.tensor(CENTRES)[k], atol=1e-6)  # on the centres
        for j in range(3):
            counts = torch.bincount(k[:, j], minlength=256).double()
            se = (n * probs[j] * (1 - probs[j])).sqrt()
            assert ((counts - n * probs[j]).abs() <= Z * se + 1).all()


# ---------------------------------------------------------------------------------------- the model's terms
def test_reconstruction_term_is_the_expected_categorical_and_falls_to_zero_as_gamma_0_goes_to_minus_infinity():
    """The continuous model's reconstruction −log p(x_0|x_1), x_1 = α_0 x_0 + σ_0 ε, fed Gauss–Hermite nodes as ε, is
    the expectation E_ε Σ_d −log P(x_0d | x_0d + e^{γ_0/2} ε) by brute force; as γ_0 → −∞ (noise far below the
    spacing 2/255) it falls to 0 for 8-bit data, with no denoiser call."""
    x0 = pixels((64, 4))  # all 256 values
    nodes, weights = np.polynomial.hermite_e.hermegauss(20)
    weights = weights / weights.sum()
    means = []
    for g0 in (-4.0, -8.0, -12.0, -16.0, -20.0):
        d = gamma_model(g0)
        k = len(nodes)
        eps = torch.from_numpy(np.repeat(nodes, 64))[:, None].expand(-1, 4).contiguous()  # every pixel the same node
        with torch.no_grad():
            rec = continuous_time_terms(d, x0.repeat(k, 1), torch.full((64 * k,), 0.5, dtype=torch.float64),
                                        noise={"x_1": eps})["reconstruction"].reshape(k, 64)
        expected = (torch.from_numpy(weights)[:, None] * rec).sum(0)
        s = math.exp(g0 / 2)
        x = x0.numpy()
        brute = -brute_log_prob(x, x + s * nodes[:, None, None], s).sum(-1)  # [nodes x 64]
        assert np.allclose(expected.numpy(), weights @ brute, rtol=1e-9, atol=1e-12)
        assert d.denoiser.calls == 1  # the diffusion term's call only: the decoder makes none
        means.append(expected.mean().item() / 4)  # nats per dimension
    # strictly falling until it underflows to 0 (γ_0 = −16: the nearest other value is 11 σ_0 away)
    assert means[0] > 1.0 and all(a > b for a, b in zip(means, means[1:]) if a > 0) and means[-1] < 1e-12, means


def test_the_chain_decodes_without_the_denoiser_and_its_L0_is_the_categorical_at_x_1():
    """In the chain (a NoiseSchedule of 10 steps) L_0 of the bound, with counter-based noise, is −log of the
    categorical at x_1/√ᾱ_1, scale² (1 − ᾱ_1)/ᾱ_1, computed by hand; the model program calls the denoiser T − 1 times
    (the discretized decoder: T)."""
    s = NoiseSchedule.linear(10)
    torch.manual_seed(0)
    net = Counting(MLPDenoiser(4, width=16, depth=1, zero_init=False).double())
    d = GaussianDiffusion(schedule=s, denoiser=net, event_shape=(4,), decoder="vdm-categorical")
    x0 = pixels((5, 4), seed=2)
    with torch.no_grad():
        L0 = variational_bound(d, x0, seed=3, indices=[7, 1, 2, 9, 4], timesteps=[1]).terms[:, 0]
    eps = counter.normal(3, np.array([7, 1, 2, 9, 4]), 1, (4,), stream=counter.XT, dtype=np.float64)
    a = s.alphas_cumprod[0]
    x1 = math.sqrt(a) * x0.numpy() + math.sqrt(1 - a) * eps
    want = -brute_log_prob(x0.numpy(), x1 / math.sqrt(a), math.sqrt((1 - a) / a)).sum(1)
    assert np.allclose(L0.numpy(), want, rtol=1e-10)
    for decoder, calls in (("vdm-categorical", 9), ("discretized", 10)):
        net.calls = 0
        model = GaussianDiffusion(schedule=s, denoiser=net, event_shape=(4,), decoder=decoder)
        with torch.no_grad():
            model.model(x0)
        assert net.calls == calls, decoder


def test_L0_of_a_gamma_chain_is_the_continuous_reconstruction_at_every_T():
    """With a γ schedule the decoder's latent sits at γ_0 for every T: the chain's L_0 from the same noise equals the
    continuous-time reconstruction term."""
    x0 = pixels((6, 4), seed=4)
    eps = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        rec = continuous_time_terms(gamma_model(-9.0), x0, torch.full((6,), 0.3, dtype=torch.float64),
                                    noise={"x_1": eps})["reconstruction"]
        for T in (2, 7, 50):
            chain = gamma_model(-9.0, T=T)
            guide = FeedNoiseMessenger({"x_t": eps})(chain.step_guide)
            m, g = trace_pair(chain.step_model, guide, x0, torch.ones(6, dtype=torch.long))
            site = per_example_elbo(m, g, analytic=True)
            assert torch.allclose(-(site["x_t"] + site["x_prev"] + site["x_0"]), rec, rtol=1e-10), T


def test_reconstruction_gradient_in_the_learned_endpoint_is_a_central_difference():
    """d/dγ_0 of the reconstruction term (through x_1 = α_0 x_0 + σ_0 ε and the decoder's scale e^{γ_0/2}) by autograd
    against a central difference, the noise fixed; float64."""
    x0 = pixels((8, 4), seed=6)
    eps = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    schedule = ScalarGamma(-7.0, 5.0).double()
    d = gamma_model(-7.0, schedule=schedule)
    t = torch.full((8,), 0.5, dtype=torch.float64)

    def rec():
        return continuous_time_terms(d, x0, t, noise={"x_1": eps})["reconstruction"].sum()

    rec().backward()
    want = central_difference(rec, schedule.gamma_0, h=1e-4)
    assert abs(want) > 1e-3
    assert schedule.gamma_0.grad.item() == pytest.approx(want, rel=1e-6)


def test_fit_variance_keeps_beta_1_at_the_categorical_decoder():
    from ppl_diffusion.variance import fit_variance

    s = NoiseSchedule.linear(8)
    d = GaussianDiffusion(schedule=s, denoiser=MLPDenoiser(4, width=16, depth=1), event_shape=(4,),
                          decoder="vdm-categorical")
    fitted = fit_variance(d, pixels((16, 4)).float(), seed=0)
    assert fitted.decoder_log_variance == pytest.approx(math.log(s.betas[0]))


# ---------------------------------------------------------------------------------------- both backends
jax = pytest.importorskip("jax")


def test_both_backends_give_the_same_probabilities_terms_and_draws():
    pytest.importorskip("numpyro")
    pytest.importorskip("flax")
    import jax.numpy as jnp

    import ppl_diffusion.numpyro as npd
    from ppl_diffusion.numpyro.distributions import VDMCategorical as JaxCategorical
    from ppl_diffusion.numpyro.train import from_torch
    from ppl_diffusion.sampling import draw_samples

    rng = np.random.default_rng(8)
    loc, scale = rng.uniform(-1.2, 1.2, 40), np.exp(rng.uniform(-6, 0.5, 40))
    x = CENTRES[rng.integers(0, 256, 40)]
    with jax.enable_x64(True):
        got = np.asarray(JaxCategorical(jnp.asarray(loc), jnp.asarray(scale)).log_prob(jnp.asarray(x)))
    assert np.abs(got - brute_log_prob(x, loc, scale)).max() < 1e-10
    eps = rng.standard_normal(40)
    a = VDMCategorical(torch.from_numpy(loc), torch.from_numpy(scale)).from_normal(torch.from_numpy(eps))
    with jax.enable_x64(True):
        b = JaxCategorical(jnp.asarray(loc), jnp.asarray(scale)).from_normal(jnp.asarray(eps))
    assert np.array_equal(a.numpy(), np.asarray(b))
    # A chain model: the bound's terms (L_0 included) and the counter-based samples agree.
    torch.manual_seed(1)
    td = GaussianDiffusion(schedule=NoiseSchedule.linear(6), denoiser=MLPDenoiser(4, width=16, depth=1,
                           zero_init=False), event_shape=(4,), decoder="vdm-categorical")
    jd = from_torch(td)
    assert jd.decoder.name == "vdm-categorical"
    x0 = pixels((5, 4), seed=9).float()
    with torch.no_grad():
        want = variational_bound(td, x0, seed=2).terms
    from flax import nnx

    from ppl_diffusion.numpyro.chain import variational_bound as jax_bound

    params = nnx.to_pure_dict(nnx.state(jd.denoiser, nnx.Param))
    got = np.asarray(jax_bound(jd, params, jnp.asarray(x0.numpy()), seed=2))
    assert np.abs(got - want.numpy()).max() <= 1e-4 * np.abs(want.numpy()).max()
    assert np.array_equal(draw_samples(td, 6, seed=4).numpy(), draw_samples(jd, 6, seed=4).numpy())
    # The continuous model: its reconstruction from the same noise.
    with jax.enable_x64(True):
        tg = gamma_model(-8.0)
        jg = npd.GaussianDiffusion(schedule=npd.gamma_twin(tg.schedule), denoiser=_flax_mlp(tg.denoiser.net),
                                   event_shape=(4,), T=0, decoder="vdm-categorical", gamma_range=tg.gamma_range)
        x0 = pixels((6, 4), seed=10)
        t = torch.full((6,), 0.4, dtype=torch.float64)
        noise = {k: torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
                 for k in ("x_T", "x_1", "x_t")}
        with torch.no_grad():
            want = continuous_time_terms(tg, x0, t, noise=noise)
        got = npd.continuous_time_terms(jg, jax.random.PRNGKey(0), jnp.asarray(x0.numpy()), jnp.asarray(t.numpy()),
                                        noise={k: jnp.asarray(v.numpy()) for k, v in noise.items()})
        for k in want:
            assert np.allclose(np.asarray(got[k]), want[k].numpy(), rtol=1e-10, atol=1e-12), k


def _flax_mlp(tnet):
    """The Flax twin of a float64 PyTorch MLPDenoiser, its parameters float64 (under jax_enable_x64)."""
    import jax.numpy as jnp
    from flax import nnx

    from ppl_diffusion.numpyro.convert import flax_twin

    jnet = flax_twin(tnet.float())
    tnet.double()
    nnx.update(jnet, jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), nnx.state(jnet, nnx.Param)))
    return jnet


# ---------------------------------------------------------------------------------------- from the command line
def test_a_continuous_digits_run_with_the_categorical_decoder_evaluates_its_reconstruction_by_brute_force(tmp_path):
    """train --T 0 --schedule fixed-linear --decoder vdm-categorical --fourier-features auto on the digits, then
    evaluate: the reconstruction term of eval.json is the mean over the test digits of Σ_pixels −log P(x_0|x_1) by
    the brute-force normalisation over the 256 values, x_1/α_0 = x_0 + e^{γ_0/2} ε with the bound's own noise ε
    (counter-based, (seed, i, 1, XT)). γ_0 = −7 puts e^{γ_0/2} ≈ 0.03, four grey values: a term of many nats."""
    from ppl_diffusion.cli import main
    from ppl_diffusion.data import load_dataset
    from ppl_diffusion.evaluate import evaluate_run

    run_dir = tmp_path / "run"
    argv = ["train", "--data", "digits", "--net", "auto", "--channels", "8", "--channel-mult", "1,2", "--res-blocks",
            "1", "--T", "0", "--schedule", "fixed-linear", "--gamma-min", "-7", "--gamma-max", "5", "--estimator",
            "continuous", "--batch-size", "8", "--warmup-steps", "1", "--steps", "2", "--no-progress",
            "--decoder", "vdm-categorical", "--fourier-features", "auto", "--run-dir", str(run_dir)]
    assert main(argv) == 0
    n, seed = 5, 3
    result = evaluate_run(run_dir, max_examples=n, fd_samples=0, seed=seed, progress=False, strata=2, draws=1,
                          proposal="uniform")
    assert result["bound"] == "continuous"
    x0 = load_dataset("digits").test[:n].reshape(n, -1).double().numpy()
    eps = counter.normal(seed, np.arange(n), 1, (1, 8, 8), stream=counter.XT, dtype=np.float32)
    s = math.exp(-7.0 / 2)
    brute = -brute_log_prob(x0, x0 + s * eps.reshape(n, -1).astype(np.float64), s).sum(-1)
    assert brute.mean() > 20.0
    # float32 model: x_1 = α_0 x_0 + σ_0 ε and x_1/α_0 are rounded, ~1e-7 of 1, ~3e-6 of the scale 0.03 per pixel
    for w in ("raw", "ema"):
        assert result["terms"][w]["reconstruction"] == pytest.approx(brute.mean(), rel=1e-4), w
