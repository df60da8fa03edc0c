"""The NumPyro twin of the learnable forward process: γ schedules, their chain and the continuous-time ELBO agree
with the PyTorch backend on every term and gradient for the same parameters and noise."""

import contextlib

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from numpyro import handlers  # noqa: E402
from pyro import poutine  # noqa: E402

import ppl_diffusion.numpyro as npd  # noqa: E402
from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule  # noqa: E402
from ppl_diffusion.diffusion import VARIANCES  # noqa: E402
from ppl_diffusion import gamma as tg  # noqa: E402
from ppl_diffusion.infer import continuous_time_terms, per_example_elbo, trace_pair  # noqa: E402
from ppl_diffusion.numpyro import gamma as jg  # noqa: E402
from ppl_diffusion.numpyro.convert import _flatten  # noqa: E402
from ppl_diffusion.numpyro.timesteps import ImportanceTimes, LowDiscrepancyTimes  # noqa: E402

from .test_numpyro_backend import _torch_layout, close  # noqa: E402


def _torch_schedules():
    """One of each family, float32 values (so that the Flax twin's float32 parameters hold them exactly)."""
    torch.manual_seed(0)
    net = tg.MonotoneNetGamma(-7.0, 6.0, features=8)
    with torch.no_grad():
        for p in net.interior_parameters():
            p.copy_(torch.randn(p.shape))
    return {"fixed-linear": tg.LinearGamma(-7.0, 6.0), "learned-scalar": tg.ScalarGamma(-7.0, 6.0),
            "learned-net": net, "fixed-interpolated": tg.InterpolatedGamma.from_noise_schedule(NoiseSchedule.cosine(30))}


@pytest.mark.parametrize("name", sorted(tg.GAMMA_SCHEDULES))
def test_schedules_and_chains_agree(name):
    ts = _torch_schedules()[name].double()
    js = npd.gamma_twin(ts)
    assert type(js).__name__ == type(ts).__name__ and set(tg.GAMMA_SCHEDULES) == set(jg.GAMMA_SCHEDULES)
    with jax.enable_x64(True):
        t = np.linspace(0.013, 0.987, 9)
        a, b = ts.gamma_and_derivative(torch.from_numpy(t)), js.gamma_and_derivative(jnp.asarray(t))
        close(a[0], b[0], rtol=1e-13)
        close(a[1], b[1], rtol=1e-12)
        c1, c2 = tg.GammaChain.of(ts, 20), jg.GammaChain.of(js, 20)
        for key in ("betas", "alphas", "alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2", "log_betas", "sqrt_alphas"):
            close(getattr(c1, key), getattr(c2, key), rtol=1e-12)


def test_schedule_weights_convert_both_ways():
    ts = _torch_schedules()["learned-net"]
    js = npd.gamma_twin(ts)
    back = tg.MonotoneNetGamma(-1.0, 1.0, features=8)
    back.load_state_dict(npd.torch_state_from_gamma_params(js, nnx.to_pure_dict(nnx.state(js, nnx.Param))))
    for (k, a), b in zip(ts.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="shape") as e:
        npd.gamma_params_from_torch_state(jg.MonotoneNetGamma(features=4), ts.state_dict())
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="lacks") as e:
        npd.gamma_params_from_torch_state(jg.MonotoneNetGamma(learn_endpoints=False, features=8), ts.state_dict())
    assert "\n" not in str(e.value)


def _pair(T, time_input="gamma", x64=True, schedule="learned-net", variance="beta"):
    ts = _torch_schedules()[schedule]
    torch.manual_seed(1)
    tnet = MLPDenoiser(2, width=16, depth=1, emb_dim=16, zero_init=False)
    jnet = npd.MLPDenoiser(2, width=16, depth=1, emb_dim=16, zero_init=False)
    npd.mlp_from_torch(jnet, tnet)
    js = npd.gamma_twin(ts)
    if x64:
        ts, tnet = ts.double(), tnet.double()
        for module in (jnet, js):
            nnx.update(module, jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), nnx.state(module, nnx.Param)))
    td = GaussianDiffusion(schedule=ts, denoiser=tnet, event_shape=(2,), T=T, time_input=time_input,
                           variance=variance)
    jd = npd.GaussianDiffusion(schedule=js, denoiser=jnet, event_shape=(2,), T=T, time_input=time_input,
                               variance=variance, gamma_range=td.gamma_range)
    return td, jd


def _np(x):
    return jnp.asarray(x.detach().numpy())


@pytest.mark.parametrize("x64, tol", [(True, 1e-10), pytest.param(False, 2e-4, marks=pytest.mark.slow)],
                         ids=["f64", "f32"])
@pytest.mark.parametrize("time_input", ["gamma", "step"])
def test_chain_programs_agree_per_site(time_input, x64, tol):
    with jax.enable_x64(x64):
        td, jd = _pair(8, time_input, x64, variance="posterior")
        dtype = torch.float64 if x64 else torch.float32
        x0 = torch.randn(5, 2, dtype=dtype, generator=torch.Generator().manual_seed(2))
        jx0 = _np(x0)
        for guide_name, analytic in (("guide", False), ("posterior_guide", True)):
            gt = poutine.trace(getattr(td, guide_name)).get_trace(x0)
            mt = poutine.trace(poutine.replay(td.model, trace=gt)).get_trace(x0)
            values = {k: _np(v["value"]) for k, v in gt.nodes.items() if v["type"] == "sample"}
            jmt, jgt = npd.trace_pair(jd.model, handlers.substitute(getattr(jd, guide_name), data=values),
                                      jax.random.PRNGKey(0), jx0)
            assert {k for k in jmt if "$" in k} >= {"schedule$params", "denoiser$params"}
            assert "schedule$params" in jgt  # the guide has the forward process's parameters
            a, b = per_example_elbo(mt, gt, analytic), npd.per_example_elbo(jmt, jgt, analytic)
            assert set(b) == {f"x_{k}" for k in range(9)}  # the same site names
            for k in b:
                close(a[k], b[k], rtol=tol, atol=tol)
        t = torch.tensor([1, 2, 4, 7, 8])
        mt, gt = trace_pair(td.step_model, td.step_guide, x0, t)
        values = {k: _np(gt.nodes[k]["value"]) for k in ("x_T", "x_t", "x_prev")}
        jmt, jgt = npd.trace_pair(jd.step_model, handlers.substitute(jd.step_guide, data=values),
                                  jax.random.PRNGKey(0), jx0, jnp.asarray(t.numpy()))
        a, b = per_example_elbo(mt, gt, True), npd.per_example_elbo(jmt, jgt, True)
        for k in ("x_T", "x_t", "x_prev", "x_0"):
            close(a[k], b[k], rtol=tol, atol=tol)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("variance", list(VARIANCES))
def test_fixed_gamma_of_a_schedule_is_the_numpyro_chain(schedule, variance):
    """On the NumPyro side too, a γ read from a NoiseSchedule with step labels is that schedule's chain: every
    term, with the posterior-order guide (analytic KL) and with the forward chain (Monte Carlo, the same draws)."""
    s = getattr(NoiseSchedule, schedule)(12)
    with jax.enable_x64(True):
        jnet = npd.MLPDenoiser(2, width=16, depth=1, zero_init=False)
        nnx.update(jnet, jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), nnx.state(jnet, nnx.Param)))
        today = npd.GaussianDiffusion(schedule=s, denoiser=jnet, event_shape=(2,), variance=variance)
        gamma = npd.GaussianDiffusion(schedule=jg.InterpolatedGamma.from_noise_schedule(s), T=12, time_input="step",
                                      denoiser=jnet, event_shape=(2,), variance=variance)
        x0 = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2)))
        for guide, analytic in (("posterior_guide", True), ("guide", False)):
            out = []
            for d in (today, gamma):
                m, g = npd.trace_pair(d.model, getattr(d, guide), jax.random.PRNGKey(3), x0)
                out.append(npd.per_example_elbo(m, g, analytic))
            assert out[0].keys() == out[1].keys()
            for k in out[0]:
                close(out[0][k], out[1][k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("x64, tol", [(True, 1e-10), pytest.param(False, 1e-4, marks=pytest.mark.slow)],
                         ids=["f64", "f32"])
def test_continuous_terms_and_gradients_agree(x64, tol):
    """The continuous-time terms per example, the ELBO's gradient in every parameter, and the variance objective's
    routed interior gradient, on the same parameters, times, weights and noise."""
    with jax.enable_x64(x64):
        td, jd = _pair(0, x64=x64)
        dtype = torch.float64 if x64 else torch.float32
        g = torch.Generator().manual_seed(4)
        B = 6
        x0 = torch.randn(B, 2, dtype=dtype, generator=g)
        t = torch.rand(B, dtype=torch.float64, generator=g)
        w = (torch.rand(B, dtype=torch.float64, generator=g) + 0.5).to(dtype)
        noise = {k: torch.randn(B, 2, dtype=dtype, generator=g) for k in ("x_T", "x_1", "x_t")}
        pm = {"denoiser$params": nnx.to_pure_dict(nnx.state(jd.denoiser, nnx.Param)),
              "schedule$params": nnx.to_pure_dict(nnx.state(jd.schedule, nnx.Param))}
        jargs = (_np(x0), jnp.asarray(t.numpy()), _np(w))
        jnoise = {k: _np(v) for k, v in noise.items()}
        for objective in ("elbo", "variance"):
            td.zero_grad()
            scale = tg.InteriorGradientScale()
            context = td.schedule.scale_interior(scale) if objective == "variance" else contextlib.nullcontext()
            with context:
                parts = continuous_time_terms(td, x0, t, noise=noise)
            scale.scale = 2 * (w * parts["diffusion"]).detach()
            loss = (parts["prior"] + parts["reconstruction"] + w * parts["diffusion"]).sum()
            loss.backward()

            def jloss(p):
                return npd.continuous_time_loss(jd, jax.random.PRNGKey(0), p, *jargs, noise=jnoise,
                                                schedule_objective=objective)

            value, jparts, _ = jax.jit(jloss)(pm)
            grads = jax.jit(jax.grad(lambda p: jloss(p)[0]))(pm)
            for k in parts:
                close(parts[k], jparts[k], rtol=tol, atol=tol)
            close(loss, value, rtol=tol)
            flat = _flatten(grads["schedule$params"])
            for name, p in td.schedule.named_parameters():
                close(p.grad, flat[name], rtol=10 * tol, atol=10 * tol)
            for name, p in td.denoiser.named_parameters():
                close(p.grad, _torch_layout(grads["denoiser$params"], name), rtol=10 * tol if x64 else 1e-3,
                      atol=10 * tol)
        # The prior term by one draw of x_T (the same noise) instead of its closed form: prior_term="mc".
        mc = continuous_time_terms(td, x0, t, noise=noise, analytic=False)
        _, jmc, _ = jax.jit(lambda p: npd.continuous_time_loss(jd, jax.random.PRNGKey(0), p, *jargs, noise=jnoise,
                                                               prior_term="mc"))(pm)
        close(mc["prior"], jmc["prior"], rtol=tol, atol=tol)
        assert not np.allclose(np.asarray(jmc["prior"]), np.asarray(jparts["prior"]))


@pytest.mark.parametrize("objective, timesteps", [
    ("variance", "low-discrepancy"),  # ~20 s each on a loaded 2-core machine (one jit of SVI.update): the rest slow
    *(pytest.param(o, t, marks=pytest.mark.slow) for o, t in [("variance", "uniform"), ("variance", "importance"),
                                                                ("elbo", "uniform"), ("elbo", "low-discrepancy"),
                                                                ("elbo", "importance")])])
def test_svi_trains_denoiser_and_schedule(timesteps, objective):
    import optax
    from numpyro.infer import SVI

    _, jd = _pair(0, x64=False)
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32) * 0.5)
    elbo = npd.ContinuousTimeELBO(timesteps="uniform" if timesteps == "importance" else timesteps,
                                  schedule_objective=objective)
    svi = SVI(jd.continuous_model, jd.continuous_guide, optax.adam(1e-2), loss=elbo)
    t0 = jnp.full((32,), 0.5)
    state = svi.init(jax.random.PRNGKey(0), x0, t0, None, None)
    sched0 = svi.get_params(state)["schedule$params"]
    update = jax.jit(svi.update)
    sampler, sampler_state = ImportanceTimes(bins=4, history=1), None
    if timesteps == "importance":
        sampler_state = sampler.init()
    for i in range(3):
        if timesteps == "importance":
            t, weight = sampler.sample(jax.random.PRNGKey(i), sampler_state, 32)
            state, loss = update(state, x0, t, weight)
            sampler_state = sampler.update(sampler_state, t, jnp.ones(32))
        else:
            state, loss = update(state, x0)
        assert np.isfinite(float(loss))
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), svi.get_params(state)["schedule$params"], sched0)
    assert all(jax.tree.leaves(moved))


def test_time_samplers_share_the_pytorch_state_format():
    from ppl_diffusion.infer import ImportanceTimes as TorchImportance

    t, w = LowDiscrepancyTimes().sample(jax.random.PRNGKey(0), {}, 8)
    assert np.array_equal(np.sort(np.floor(np.asarray(t) * 8)), np.arange(8.0)) and np.all(np.asarray(w) == 1)
    sampler = ImportanceTimes(bins=5, history=1)
    state = sampler.update(sampler.init(), jnp.asarray([0.1, 0.3, 0.5, 0.7, 0.9]), jnp.asarray([1., 2., 4., 8., 16.]))
    torch_sampler = TorchImportance(bins=5, history=1)
    torch_sampler.load_state_dict(sampler.to_torch_state(state))
    grid = np.linspace(0.05, 0.95, 10)
    close(torch_sampler.density(torch.from_numpy(grid)), sampler.density(state, jnp.asarray(grid)), rtol=1e-6)
    back = sampler.from_torch_state(torch_sampler.state_dict())
    close(np.asarray(back["loss_history"]), state["loss_history"])
    t, w = sampler.sample(jax.random.PRNGKey(1), state, 1000)
    close(1 / sampler.density(state, t), w, rtol=1e-6)


def test_compiled_chain_refuses_a_gamma_schedule():
    _, jd = _pair(8, x64=False)
    with pytest.raises(ValueError, match="named-site programs") as e:
        npd.chain.variational_bound(jd, {}, jnp.zeros((2, 2)), key=jax.random.PRNGKey(0))
    assert "\n" not in str(e.value)
