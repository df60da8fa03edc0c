"""GaussianDiffusion's Pyro programs: site names, the two guides' joint, generation, bad input."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from ppl_diffusion import (DiscretizedGaussian, GaussianDiffusion, MLPDenoiser, NoiseSchedule, StochasticTimestepELBO,
                           variational_bound)
from ppl_diffusion import closed_forms as cf
from ppl_diffusion.priors import FlowPrior

from .common import Z, mean_se


def make(T=5, dim=2, **kw):
    kw.setdefault("event_shape", (dim,))
    return GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=MLPDenoiser(dim, width=16, depth=1, zero_init=False), **kw)


def sample_sites(trace):
    return [n for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)]


def test_site_names_and_plate():
    d = make(T=4)
    x0 = torch.randn(3, 2)
    model_trace = poutine.trace(d.model).get_trace(x0)
    assert sample_sites(model_trace) == ["x_4", "x_3", "x_2", "x_1", "x_0"]
    assert model_trace.nodes["x_0"]["is_observed"] and torch.equal(model_trace.nodes["x_0"]["value"], x0)
    for name in ["x_4", "x_1", "x_0"]:
        site = model_trace.nodes[name]
        assert [f.name for f in site["cond_indep_stack"]] == ["data"]
        assert site["fn"].batch_shape == (3,) and site["fn"].event_shape == (2,)
    assert sample_sites(poutine.trace(d.guide).get_trace(x0)) == ["x_1", "x_2", "x_3", "x_4"]
    assert sample_sites(poutine.trace(d.posterior_guide).get_trace(x0)) == ["x_4", "x_3", "x_2", "x_1"]
    params = [n for n, s in model_trace.nodes.items() if s["type"] == "param"]
    assert params and all(n.startswith("denoiser$$$") for n in params)


def test_image_event_shape():
    net = MLPDenoiser(64, width=16, depth=1)
    d = GaussianDiffusion(schedule=NoiseSchedule.linear(3), denoiser=net, event_shape=(1, 8, 8), decoder="discretized")
    x0 = torch.randint(0, 256, (2, 1, 8, 8)).float() / 127.5 - 1
    tr = poutine.trace(d.model).get_trace(x0)
    assert tr.nodes["x_0"]["fn"].event_shape == (1, 8, 8)
    assert tr.log_prob_sum().isfinite()
    s = d.sample(4)
    assert s.shape == (4, 1, 8, 8)
    torch.testing.assert_close(s, torch.round((s + 1) * 127.5) / 127.5 - 1)  # on the 8-bit grid


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(6), NoiseSchedule.cosine(6)], ids=["linear", "cosine"])
def test_both_guides_define_the_same_joint(schedule):
    """log q(z|x_0) is the same number under the forward and the posterior factorisation."""
    d = GaussianDiffusion(schedule=schedule, denoiser=MLPDenoiser(2), event_shape=(2,))
    x0 = torch.randn(4, 2, dtype=torch.float64)
    for sampler in (d.guide, d.posterior_guide):
        z = poutine.trace(sampler).get_trace(x0)
        fwd = poutine.trace(poutine.replay(d.guide, trace=z)).get_trace(x0).log_prob_sum()
        post = poutine.trace(poutine.replay(d.posterior_guide, trace=z)).get_trace(x0).log_prob_sum()
        torch.testing.assert_close(fwd, post, rtol=1e-10, atol=1e-9)


def test_both_guides_have_the_same_sampled_marginals():
    """Means, variances and lag-one covariances of (x_t, x_{t−1}) | x_0 agree under both guides."""
    T, n = 8, 40_000
    s = NoiseSchedule.cosine(T)
    d = GaussianDiffusion(schedule=s, denoiser=MLPDenoiser(1), event_shape=(1,))
    x0 = torch.full((n, 1), 0.6, dtype=torch.float64)
    draws = {}
    for name, g in (("forward", d.guide), ("posterior", d.posterior_guide)):
        tr = poutine.trace(g).get_trace(x0)
        draws[name] = torch.stack([tr.nodes[f"x_{t}"]["value"][:, 0] for t in range(1, T + 1)], -1)  # (n, T)
    for t in range(1, T + 1):
        mean, var = cf.q_mean_variance(s, x0[:1], torch.tensor([t]))
        for name, x in draws.items():
            xt = x[:, t - 1]
            assert abs(xt.mean() - mean.item()) < Z * math.sqrt(var.item() / n), (name, t)
            assert abs(xt.var() - var.item()) < Z * var.item() * math.sqrt(2 / n), (name, t)
        if t > 1:  # Cov(x_{t−1}, x_t | x_0) = √α_t (1 − ᾱ_{t−1})
            expected = math.sqrt(s.alphas[t - 1]) * (1 - s.alphas_cumprod[t - 2])
            for name, x in draws.items():
                prod = (x[:, t - 2] - x[:, t - 2].mean()) * (x[:, t - 1] - x[:, t - 1].mean())
                m, se = mean_se(prod.numpy())
                assert abs(m - expected) < Z * se, (name, t, m, expected)


@pytest.mark.filterwarnings("ignore:Failed to verify mean field restriction")
def test_meanfield_with_forward_guide_is_refused():
    d = make(T=3)
    x0 = torch.randn(2, 2)
    with pytest.raises(ValueError, match="posterior_guide"):
        TraceMeanField_ELBO().loss(d.model, d.guide, x0)
    with pyro.validation_enabled(False):  # refused even where Pyro's own order check is off
        with pytest.raises(ValueError, match="forward-order guide"):
            TraceMeanField_ELBO().differentiable_loss(d.model, d.guide, x0)
    # the valid pairs run
    assert math.isfinite(TraceMeanField_ELBO().loss(d.model, d.posterior_guide, x0))
    assert math.isfinite(Trace_ELBO().loss(d.model, d.guide, x0))
    assert math.isfinite(Trace_ELBO().loss(d.model, d.posterior_guide, x0))


def test_generation():
    d = make(T=4)
    assert d.sample(7).shape == (7, 2)
    assert d.model(None, n=3).shape == (3, 2)
    tr = poutine.trace(d.model).get_trace(None, n=5)
    assert not tr.nodes["x_0"]["is_observed"] and tr.nodes["x_0"]["value"].shape == (5, 2)


def test_svi_trains_with_stock_pyro():
    pyro.set_rng_seed(1)
    d = make(T=10)
    x0 = torch.randn(64, 2) * 0.3 + 0.5
    svi = SVI(d.model, d.posterior_guide, pyro.optim.Adam({"lr": 1e-2}), TraceMeanField_ELBO())
    before = [p.detach().clone() for p in d.denoiser.parameters()]
    losses = [svi.step(x0) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, d.denoiser.parameters()))
    assert set(pyro.get_param_store().keys()) == {f"denoiser$$${n}" for n, _ in d.denoiser.named_parameters()}


def test_custom_prior_and_decoder_are_used():
    prior = dist.StudentT(4.0, torch.zeros(2), torch.ones(2)).to_event(1)
    d = make(T=3, prior=prior, decoder="discretized")
    x0 = torch.tensor([[-1.0, 1.0], [1 / 255, 2 / 255 - 1]])  # bin centres (2 v / 255 - 1)
    tr = poutine.trace(d.model).get_trace(x0)
    assert isinstance(tr.nodes["x_3"]["fn"].base_dist, dist.StudentT)
    assert isinstance(tr.nodes["x_0"]["fn"].base_dist, DiscretizedGaussian)
    assert tr.log_prob_sum().isfinite()


# ---------------------------------------------------------------- bad input: one clear line each
@pytest.mark.parametrize("x0, err, match", [
    (torch.randn(3, 5), ValueError, r"x0 has shape \(3, 5\); expected \[B, 2\]"),
    (torch.randn(2), ValueError, r"x0 has shape \(2,\)"),
    (torch.tensor([[0.0, float("nan")]]), ValueError, r"x0\[0, 1\] = nan"),
    (torch.tensor([[0.0, 1.0], [float("inf"), 0.0]]), ValueError, r"x0\[1, 0\] = inf"),
    (torch.zeros(2, 2, dtype=torch.long), TypeError, r"x0 has dtype torch.int64; pass float data .*x0\.float\(\)"),
    ([[0.0, 1.0]], TypeError, "must be a tensor"),
])
@pytest.mark.parametrize("program", ["model", "guide", "posterior_guide"])
def test_bad_data(x0, err, match, program):
    d = make(T=3)
    with pytest.raises(err, match=match):
        getattr(d, program)(x0)


def test_data_outside_the_discretized_range():
    d = make(T=3, decoder="discretized")
    with pytest.raises(ValueError, match=r"x0\[0, 1\] = 255.0 lies outside \[-1, 1\]"):
        d.model(torch.tensor([[0.0, 255.0]]))


class WrongShape(torch.nn.Module):
    def forward(self, x, t):
        return x[..., :1]


@pytest.mark.parametrize("run", ["model", "Trace_ELBO", "StochasticTimestepELBO"])
def test_denoiser_output_of_wrong_shape_is_one_line_naming_shapes_and_fix(run):
    """An MLP returning [B x 1] for [B x 2] data: one line (also inside Pyro's traces, which append their shape
    table to a ValueError) naming both shapes and the output layer it needs."""
    d = GaussianDiffusion(schedule=NoiseSchedule.linear(3), denoiser=WrongShape(), event_shape=(2,))
    x0 = torch.zeros(4, 2)
    call = {"model": lambda: d.model(x0), "Trace_ELBO": lambda: Trace_ELBO().loss(d.model, d.guide, x0),
            "StochasticTimestepELBO": lambda: StochasticTimestepELBO().loss(d.step_model, d.step_guide, x0)}[run]
    with pytest.raises(ValueError, match=r"^denoiser returned \(4, 1\) for x_t of shape \(4, 2\); .* 2 values per "
                                         r"example .*nn\.Linear\(width, 2\)") as e:
        call()
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- dtypes: refused where the denoiser meets them
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("run", ["model", "Trace_ELBO", "StochasticTimestepELBO", "variational_bound"])
def test_data_of_another_dtype_than_the_net_is_one_line_naming_the_conversion(dtype, run):
    """Today's failure was torch's "mat1 and mat2 must have the same dtype" under a Pyro trace dump."""
    d = make(T=3)
    x0 = torch.randn(4, 2).to(dtype)
    call = {"model": lambda: d.model(x0), "Trace_ELBO": lambda: Trace_ELBO().loss(d.model, d.guide, x0),
            "StochasticTimestepELBO": lambda: StochasticTimestepELBO().loss(d.step_model, d.step_guide, x0),
            "variational_bound": lambda: variational_bound(d, x0)}[run]
    whole = ", or the model to the data's with diffusion.double()" if dtype == torch.float64 else ""
    with pytest.raises(TypeError) as e:
        call()
    assert str(e.value) == (f"the data have dtype {dtype} but the denoiser's parameters are torch.float32; "
                            f"convert the data: x0.float(){whole}")
    assert math.isfinite(Trace_ELBO().loss(d.model, d.guide, x0.float()))  # the conversion it names works


def test_float64_end_to_end_works_and_float32_data_for_a_float64_net_names_double():
    d = make(T=3).double()
    x64 = torch.randn(4, 2, dtype=torch.float64)
    assert math.isfinite(StochasticTimestepELBO().loss(d.step_model, d.step_guide, x64))
    assert variational_bound(d, x64).terms.dtype == torch.float64
    with pytest.raises(TypeError, match=r"^the data have dtype torch.float32 but the denoiser's parameters are "
                                        r"torch.float64; convert the data: x0.double\(\), or the model to the "
                                        r"data's with diffusion.float\(\)$"):
        Trace_ELBO().loss(d.model, d.guide, x64.float())
    d.guide(x64.float())  # the guides have no parameters: any floating dtype


def test_a_learned_prior_of_another_dtype_is_named():
    d = GaussianDiffusion(schedule=NoiseSchedule.linear(3), denoiser=MLPDenoiser(2).double(),
                          prior=FlowPrior((2,)))
    with pytest.raises(TypeError, match=r"the prior's parameters are torch.float32; convert the data: x0.float\(\)"):
        Trace_ELBO().loss(d.model, d.guide, torch.randn(4, 2, dtype=torch.float64))
    d.double()
    assert math.isfinite(Trace_ELBO().loss(d.model, d.guide, torch.randn(4, 2, dtype=torch.float64)))


# ---------------------------------------------------------------- event_shape
@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_an_int_event_shape_is_a_vector_and_bad_ones_are_one_line(backend):
    if backend == "numpyro":
        pytest.importorskip("numpyro")
        from ppl_diffusion.numpyro import MLPDenoiser as Net
        from ppl_diffusion.numpyro.diffusion import GaussianDiffusion as Diffusion
    else:
        Net, Diffusion = MLPDenoiser, GaussianDiffusion
    make_d = lambda shape: Diffusion(schedule=NoiseSchedule.linear(3), denoiser=Net(2), event_shape=shape)  # noqa: E731
    assert tuple(make_d(2).event_shape) == (2,)
    for bad in (0, -1, 2.5, "ab", True, (2, 0), [2.0]):
        with pytest.raises(ValueError, match=r"^event_shape = .*; pass the shape of one example as positive integers") \
                as e:
            make_d(bad)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(variance="learned-typo"), ValueError, r"unknown variance 'learned-typo'; choose one of \['beta', 'fixed-large', 'learned', 'learned-range', 'posterior'\]"),
    (dict(decoder="bernoulli"), ValueError, r"unknown decoder 'bernoulli'"),
    (dict(prior=dist.Normal(torch.zeros(3), 1.0).to_event(1)), ValueError, r"prior has event shape \(3,\) but the data's event shape is \(2,\)"),
    (dict(prior=dist.Normal(torch.zeros(2), 1.0)), ValueError, r"prior has batch shape \(2,\).*use \.to_event\(1\)"),
    (dict(prior="normal"), TypeError, "prior must be a distribution over x_T"),
])
def test_bad_construction(kwargs, err, match):
    with pytest.raises(err, match=match):
        make(T=3, **kwargs)


def test_bad_schedule_and_denoiser_types():
    with pytest.raises(TypeError, match="NoiseSchedule"):
        GaussianDiffusion(schedule=[0.1, 0.2], denoiser=MLPDenoiser(2), event_shape=(2,))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        GaussianDiffusion(schedule=NoiseSchedule.linear(3), denoiser=lambda x, t: x, event_shape=(2,))
    with pytest.raises(ValueError, match="event_shape"):
        GaussianDiffusion(schedule=NoiseSchedule.linear(3), denoiser=MLPDenoiser(2))


def test_bad_generation_size_and_timesteps():
    d = make(T=3)
    with pytest.raises(ValueError, match="n = 0"):
        d.model(None, n=0)
    with pytest.raises(ValueError, match=r"timestep t = 4 is outside 1..T = 1..3"):
        d.step_model(torch.zeros(2, 2), torch.tensor([1, 4]))
