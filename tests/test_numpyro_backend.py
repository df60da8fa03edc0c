"""The NumPyro backend agrees with the Pyro backend: same weights, schedule, inputs and noise fed in.

float32 comparisons use a relative tolerance of 1e-5 on each quantity's scale (the issue asks 1e-4);
float64 ones (``jax.enable_x64``) 1e-10.
"""

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
from numpyro import handlers  # noqa: E402
from pyro import poutine  # noqa: E402

import ppl_diffusion.numpyro as npd  # noqa: E402
from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule  # noqa: E402
from ppl_diffusion import closed_forms as tcf  # noqa: E402
from ppl_diffusion.infer.trace_terms import per_example_elbo, trace_pair  # noqa: E402
from ppl_diffusion.numpyro import closed_forms as jcf  # noqa: E402

T = 10


def close(a, b, rtol=1e-5, atol=0.0):
    """|a − b| ≤ rtol · max|a| + atol (against the quantity's scale; ``atol`` for terms like the prior KL, a
    difference of O(1) numbers whose float32 rounding is absolute, not relative to the small result)."""
    a = a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)
    b = np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(np.abs(a).max(), 1e-30)
    err = np.abs(a - b).max()
    assert err <= rtol * scale + atol, f"max |diff| {err:.3g} > {rtol:g} × {scale:.3g} + {atol:g}"


def pair(decoder="gaussian", variance="beta", event_shape=(2,), seed=0):
    torch.manual_seed(seed)
    dim = int(np.prod(event_shape))
    tnet = MLPDenoiser(dim, zero_init=False)
    jnet = npd.MLPDenoiser(dim, zero_init=False)
    npd.mlp_from_torch(jnet, tnet)
    s = NoiseSchedule.linear(T)
    td = GaussianDiffusion(schedule=s, denoiser=tnet, event_shape=event_shape, decoder=decoder, variance=variance)
    jd = npd.GaussianDiffusion(schedule=s, denoiser=jnet, event_shape=event_shape, decoder=decoder, variance=variance)
    return td, jd


# ---------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("x64", [False, True])
def test_closed_forms_agree(x64):
    s = NoiseSchedule.cosine(50)
    rng = np.random.default_rng(0)
    dtype = np.float64 if x64 else np.float32
    x0, x_t, eps = (rng.normal(size=(6, 3)).astype(dtype) for _ in range(3))
    t = rng.integers(1, 51, size=6)
    tt = [torch.from_numpy(a) for a in (x0, x_t, eps)]
    with jax.enable_x64(x64):
        jj = [jnp.asarray(a) for a in (x0, x_t, eps)]
        rtol = 1e-12 if x64 else 1e-6
        tT, jT = torch.from_numpy(t), jnp.asarray(t)
        for a, b in zip(tcf.q_mean_variance(s, tt[0], tT), jcf.q_mean_variance(s, jj[0], jT)):
            close(a, b, rtol)
        for a, b in zip(tcf.q_posterior_mean_variance(s, tt[0], tt[1], tT), jcf.q_posterior_mean_variance(s, jj[0], jj[1], jT)):
            close(a, b, rtol)
        close(tcf.p_mean_from_eps(s, tt[1], tT, tt[2]), jcf.p_mean_from_eps(s, jj[1], jT, jj[2]), rtol)
        close(tcf.predict_x0_from_eps(s, tt[1], tT, tt[2]), jcf.predict_x0_from_eps(s, jj[1], jT, jj[2]), rtol)
        close(tcf.q_step_mean_variance(s, tt[0], tT)[0], jcf.q_step_mean_variance(s, jj[0], jT)[0], rtol)
        close(tcf.normal_kl(tt[0], tt[1], tt[2], tt[0]), jcf.normal_kl(jj[0], jj[1], jj[2], jj[0]), 1e-10 if x64 else 1e-5)


@pytest.mark.parametrize("x64", [False, True])
def test_discretized_likelihood_agrees_in_the_tails(x64):
    dtype = np.float64 if x64 else np.float32
    x = (np.round(np.linspace(0, 255, 64)) / 127.5 - 1).astype(dtype)
    mean = np.linspace(-3, 3, 64).astype(dtype)[::-1].copy()
    log_scale = np.linspace(-9, 1, 64).astype(dtype)
    a = tcf.discretized_gaussian_log_likelihood(*(torch.from_numpy(v) for v in (x, mean, log_scale)))
    with jax.enable_x64(x64):
        b = jcf.discretized_gaussian_log_likelihood(*(jnp.asarray(v) for v in (x, mean, log_scale)))
        assert np.isfinite(np.asarray(b)).all()
        close(a, b, 1e-10 if x64 else 1e-5)


# ---------------------------------------------------------------------------------------- nets
def test_mlp_converts_both_ways_and_computes_the_same():
    torch.manual_seed(1)
    tnet = MLPDenoiser(5, width=32, depth=2, zero_init=False)
    jnet = npd.MLPDenoiser(5, width=32, depth=2, zero_init=False, rngs=None)
    npd.mlp_from_torch(jnet, tnet)
    x, t = torch.randn(7, 5), torch.randint(1, 1000, (7,))
    close(tnet(x, t), jnet(jnp.asarray(x.numpy()), jnp.asarray(t.numpy())), 1e-5)
    back = MLPDenoiser(5, width=32, depth=2)
    npd.mlp_to_torch(jnet, back)
    for (k, a), b in zip(tnet.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
    assert np.all(np.asarray(npd.MLPDenoiser(5, width=32, depth=2)(jnp.ones((3, 5)), jnp.ones(3, int))) == 0)
    with pytest.raises(ValueError, match="same dim, width and depth"):
        npd.mlp_from_torch(npd.MLPDenoiser(4, width=32, depth=2), tnet)


# ---------------------------------------------------------------------------------------- programs
@pytest.mark.parametrize("decoder, variance", [("gaussian", "beta"), ("discretized", "posterior")])
def test_step_program_terms_agree(decoder, variance):
    td, jd = pair(decoder, variance, event_shape=(1, 2, 2))
    torch.manual_seed(2)
    x0 = torch.round(torch.rand(12, 1, 2, 2) * 255) / 127.5 - 1  # bin centres of 8-bit data
    t = torch.randint(1, T + 1, (12,))
    t[:3] = torch.tensor([1, 2, T])
    mt, gt = trace_pair(td.step_model, td.step_guide, x0, t)
    values = {k: jnp.asarray(gt.nodes[k]["value"].numpy()) for k in ("x_T", "x_t", "x_prev")}
    guide = handlers.substitute(jd.step_guide, data=values)
    jmt, jgt = npd.trace_pair(jd.step_model, guide, jax.random.PRNGKey(0), jnp.asarray(x0.numpy()),
                              jnp.asarray(t.numpy()))
    for analytic in (True, False):
        a, b = per_example_elbo(mt, gt, analytic), npd.per_example_elbo(jmt, jgt, analytic)
        for k in ("x_T", "x_t", "x_prev", "x_0"):
            close(a[k], b[k], atol=1e-5)


@pytest.mark.parametrize("guide_name, analytic", [("guide", False), ("posterior_guide", True)])
def test_full_chain_terms_agree(guide_name, analytic):
    td, jd = pair()
    x0 = torch.randn(9, 2)
    gt = poutine.trace(getattr(td, guide_name)).get_trace(x0)
    mt = poutine.trace(poutine.replay(td.model, trace=gt)).get_trace(x0)
    values = {k: jnp.asarray(v["value"].numpy()) for k, v in gt.nodes.items()
              if v["type"] == "sample" and k.startswith("x_")}
    jmt, jgt = npd.trace_pair(jd.model, handlers.substitute(getattr(jd, guide_name), data=values),
                              jax.random.PRNGKey(0), jnp.asarray(x0.numpy()))
    a, b = per_example_elbo(mt, gt, analytic), npd.per_example_elbo(jmt, jgt, analytic)
    assert set(b) == {f"x_{t}" for t in range(T + 1)}  # the same site names
    for k in b:
        close(a[k], b[k], atol=1e-5)
    close(sum(a[k] for k in b), sum(b[k] for k in b), atol=1e-5)


def test_step_elbo_gradient_agrees():
    td, jd = pair()
    x0 = torch.randn(10, 2)
    t = torch.randint(1, T + 1, (10,))
    mt, gt = trace_pair(td.step_model, td.step_guide, x0, t)
    values = {k: gt.nodes[k]["value"] for k in ("x_T", "x_t", "x_prev")}
    # PyTorch: the analytic step ELBO at these x_t, summed; its gradient in the net's weights.
    loss = -sum(per_example_elbo(mt, gt, True)[k].sum() for k in ("x_T", "x_t", "x_prev", "x_0"))
    td.denoiser.zero_grad()
    loss.backward()
    # NumPyro: the same function of the param map.
    from flax import nnx

    params = {"denoiser$params": nnx.to_pure_dict(nnx.state(jd.denoiser, nnx.Param))}
    jvalues = {k: jnp.asarray(v.numpy()) for k, v in values.items()}
    jx0, jt = jnp.asarray(x0.numpy()), jnp.asarray(t.numpy())

    def jloss(p):
        model = handlers.substitute(jd.step_model, data=p)
        m, g = npd.trace_pair(model, handlers.substitute(jd.step_guide, data=jvalues), jax.random.PRNGKey(0), jx0, jt)
        terms = npd.per_example_elbo(m, g, True)
        return -sum(terms[k].sum() for k in ("x_T", "x_t", "x_prev", "x_0"))

    close(loss, jloss(params))
    grads = jax.grad(jloss)(params)["denoiser$params"]
    back = MLPDenoiser(2, zero_init=False)
    grad_net = npd.MLPDenoiser(2, zero_init=False)
    nnx.update(grad_net, _as_state(grad_net, grads))
    npd.mlp_to_torch(grad_net, back)  # gradients laid out as torch weights
    for (name, p), g in zip(td.denoiser.named_parameters(), back.state_dict().values()):
        close(p.grad, g.numpy(), 1e-4)


def _as_state(module, pure):
    from flax import nnx

    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, pure)
    return state


def test_svi_trains_with_the_stochastic_elbo():
    import optax
    from numpyro.infer import SVI

    _, jd = pair()
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32) * 0.5)
    svi = SVI(jd.model, jd.guide, optax.adam(1e-3), loss=npd.StochasticTimestepELBO())
    state = svi.init(jax.random.PRNGKey(0), x0)
    step = jax.jit(svi.update)
    losses = []
    for _ in range(300):
        state, loss = step(state, x0)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-50:]) < np.mean(losses[:50])  # the one-step estimator's noise is far smaller than this
    with pytest.raises(ValueError, match="step_term"):
        npd.StochasticTimestepELBO(step_term="exact")


# ---------------------------------------------------------------------------------------- compiled chain
def _trajectory(schedule, x0, noise, analytic):
    """The guide's sites from the noise, in float64 numpy, independently of the backend's code."""
    b, a, ab = schedule.betas, schedule.alphas, schedule.alphas_cumprod
    T, x = schedule.T, x0.astype(np.float64)
    values = {}
    if not analytic:
        for t in range(1, T + 1):
            x = np.sqrt(a[t - 1]) * x + np.sqrt(b[t - 1]) * noise[t - 1]
            values[f"x_{t}"] = x
        return values
    x = np.sqrt(ab[-1]) * x0 + np.sqrt(1 - ab[-1]) * noise[0]
    values[f"x_{T}"] = x
    for k, t in enumerate(range(T, 1, -1), start=1):
        mean = schedule.posterior_mean_coef1[t - 1] * x0 + schedule.posterior_mean_coef2[t - 1] * x
        x = mean + np.sqrt(schedule.posterior_variance[t - 1]) * noise[k]
        values[f"x_{t - 1}"] = x
    return values


@pytest.mark.parametrize("analytic", [False, True])
def test_compiled_full_chain_equals_the_named_site_programs(analytic):
    from flax import nnx

    from ppl_diffusion.numpyro.chain import full_chain_elbo

    _, jd = pair()
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=(6, 2)).astype(np.float32)
    noise = rng.normal(size=(T, 6, 2)).astype(np.float32)
    params = nnx.to_pure_dict(nnx.state(jd.denoiser, nnx.Param))
    elbo = jax.jit(lambda p, x, e: full_chain_elbo(jd, p, x, e, analytic=analytic))(params, jnp.asarray(x0),
                                                                                    jnp.asarray(noise))
    values = {k: jnp.asarray(v.astype(np.float32)) for k, v in _trajectory(jd.schedule, x0, noise, analytic).items()}
    guide = jd.posterior_guide if analytic else jd.guide
    m, g = npd.trace_pair(jd.model, handlers.substitute(guide, data=values), jax.random.PRNGKey(0), jnp.asarray(x0))
    ref = sum(npd.per_example_elbo(m, g, analytic).values())
    close(ref, elbo, 1e-5, atol=1e-4)
    # It is differentiable through the scan.
    grads = jax.grad(lambda p: full_chain_elbo(jd, p, jnp.asarray(x0), jnp.asarray(noise), analytic=analytic).sum())(params)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(grads))


def test_compiled_sampling_equals_the_pytorch_chain_with_the_same_noise():
    from flax import nnx

    from ppl_diffusion.numpyro.chain import sample_from_noise

    td, jd = pair(variance="posterior")
    rng = np.random.default_rng(4)
    noise = rng.normal(size=(T, 5, 2)).astype(np.float32)
    params = nnx.to_pure_dict(nnx.state(jd.denoiser, nnx.Param))
    out = jax.jit(lambda p, e: sample_from_noise(jd, p, e))(params, jnp.asarray(noise))
    with torch.no_grad():  # the PyTorch backend's reverse step, fed the same noise
        x = torch.from_numpy(noise[0])
        for k, t in enumerate(range(T, 1, -1), start=1):
            mean, log_var = td.p_mean_variance(x, torch.full((5,), t))
            x = mean + torch.exp(0.5 * log_var) * torch.from_numpy(noise[k])
        mean, _ = td.p_mean_variance(x, torch.full((5,), 1))
    close(mean, out, 1e-5)


@pytest.mark.parametrize("decoder", ["gaussian", "discretized"])
def test_compiled_bound_equals_the_step_programs(decoder):
    from flax import nnx

    from ppl_diffusion.numpyro.chain import variational_bound

    _, jd = pair(decoder=decoder)
    rng = np.random.default_rng(5)
    x0 = (np.round(rng.uniform(0, 255, size=(4, 2))) / 127.5 - 1).astype(np.float32)
    noise = rng.normal(size=(T, 4, 2)).astype(np.float32)
    params = nnx.to_pure_dict(nnx.state(jd.denoiser, nnx.Param))
    terms = jax.jit(lambda p, x, e: variational_bound(jd, p, x, e, batch_size=3))(params, jnp.asarray(x0),
                                                                                  jnp.asarray(noise))
    assert terms.shape == (4, T + 1)
    s = jd.schedule
    for t in range(1, T + 1):  # the named-site one-step programs at x_t from the same noise
        x_t = np.sqrt(s.alphas_cumprod[t - 1]) * x0 + np.sqrt(1 - s.alphas_cumprod[t - 1]) * noise[t - 1]
        guide = handlers.substitute(jd.step_guide, data={"x_t": jnp.asarray(x_t.astype(np.float32))})
        m, g = npd.trace_pair(jd.step_model, guide, jax.random.PRNGKey(t), jnp.asarray(x0), jnp.full((4,), t))
        site = npd.per_example_elbo(m, g, True)
        close(-(site["x_t"] + site["x_prev"] + site["x_0"]), terms[:, t - 1], 1e-5, atol=1e-4)
        close(-site["x_T"], terms[:, T], 1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------- float64
def test_programs_and_gradient_agree_in_float64():
    """With jax_enable_x64 and float64 weights on both sides, the step terms, the full-chain terms and the
    step ELBO's gradient agree to 1e-10 (relative), where float32 allows 1e-5. (The embedding of t is then
    computed in float64 on both sides; in float32 the libraries' sin/cos differ in the last bit.)"""
    from flax import nnx

    td, jd = pair(event_shape=(2,))
    td.denoiser.double()
    with jax.enable_x64(True):
        params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64),
                              nnx.to_pure_dict(nnx.state(jd.denoiser, nnx.Param)))
        nnx.update(jd.denoiser, _as_state(jd.denoiser, params))
        torch.manual_seed(3)
        x0 = torch.randn(8, 2, dtype=torch.float64)
        t = torch.tensor([1, 2, 3, 5, 7, 9, 10, 10])
        mt, gt = trace_pair(td.step_model, td.step_guide, x0, t)
        values = {k: jnp.asarray(gt.nodes[k]["value"].numpy()) for k in ("x_T", "x_t", "x_prev")}
        jx0, jt = jnp.asarray(x0.numpy()), jnp.asarray(t.numpy())
        jmt, jgt = npd.trace_pair(jd.step_model, handlers.substitute(jd.step_guide, data=values),
                                  jax.random.PRNGKey(0), jx0, jt)
        for analytic in (True, False):
            a, b = per_example_elbo(mt, gt, analytic), npd.per_example_elbo(jmt, jgt, analytic)
            assert b["x_prev"].dtype == jnp.float64
            for k in ("x_T", "x_t", "x_prev", "x_0"):
                close(a[k], b[k], rtol=1e-10, atol=1e-10)
        # The full chain, forward order, Monte-Carlo terms.
        gt = poutine.trace(td.guide).get_trace(x0)
        mt = poutine.trace(poutine.replay(td.model, trace=gt)).get_trace(x0)
        chain_values = {k: jnp.asarray(v["value"].numpy()) for k, v in gt.nodes.items()
                        if v["type"] == "sample" and k.startswith("x_")}
        jmt, jgt = npd.trace_pair(jd.model, handlers.substitute(jd.guide, data=chain_values),
                                  jax.random.PRNGKey(0), jx0)
        a, b = per_example_elbo(mt, gt, False), npd.per_example_elbo(jmt, jgt, False)
        for k in b:
            close(a[k], b[k], rtol=1e-10, atol=1e-10)
        # The gradient of the analytic step ELBO.
        mt, gt = trace_pair(td.step_model, td.step_guide, x0, t)
        values = {k: gt.nodes[k]["value"] for k in ("x_T", "x_t", "x_prev")}
        loss = -sum(per_example_elbo(mt, gt, True)[k].sum() for k in ("x_T", "x_t", "x_prev", "x_0"))
        td.denoiser.zero_grad()
        loss.backward()
        jvalues = {k: jnp.asarray(v.numpy()) for k, v in values.items()}

        def jloss(p):
            model = handlers.substitute(jd.step_model, data={"denoiser$params": p})
            m, g = npd.trace_pair(model, handlers.substitute(jd.step_guide, data=jvalues), jax.random.PRNGKey(0),
                                  jx0, jt)
            terms = npd.per_example_elbo(m, g, True)
            return -sum(terms[k].sum() for k in ("x_T", "x_t", "x_prev", "x_0"))

        grads = jax.grad(jloss)(params)
        # (torch_state_from_params casts to float32: compare in float64 through the layer names instead.)
        for (name, p) in td.denoiser.named_parameters():
            g = _torch_layout(grads, name)
            close(p.grad, g, rtol=1e-10)


def _torch_layout(grads, name: str):
    """The float64 gradient of torch parameter ``name`` from the Flax MLP's pure gradient dict."""
    table = {"time.0": ("time_in",), "time.2": ("time_out",), "inp": ("inp",), "out.0": ("out_norm",), "out.2": ("out",)}
    prefix, leaf = name.rsplit(".", 1)
    if prefix.startswith("blocks."):
        _, i, layer = prefix.split(".")
        path = ("blocks", int(i), layer)
    else:
        path = table[prefix]
    node = grads
    for k in path:
        node = node[k]
    if leaf == "weight":
        value = np.asarray(node["kernel"] if "kernel" in node else node["scale"])
        return value.T if "kernel" in node else value
    return np.asarray(node["bias"])


# ---------------------------------------------------------------------------------------- bad input
class WrongShapeNet:
    """A net returning [B x 1] for [B x 2] data (JAX would broadcast it into the mean, silently)."""

    def __call__(self, x, t):
        return x[..., :1]


@pytest.mark.parametrize("variance", ["beta", "learned"])
def test_denoiser_output_of_wrong_shape_is_one_line_as_on_pyro(variance):
    jd = npd.GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=WrongShapeNet(), event_shape=2,
                               variance=variance)
    x = jnp.zeros((4, 2))
    fix = "stacked on the channel axis" if variance == "learned" else r"2 values per example .*Linear\(width, 2\)"
    for call in (lambda: jd.p_mean_variance(WrongShapeNet(), x, jnp.ones(4, jnp.int32)),
                 lambda: jax.jit(lambda x: jd.predict_eps(WrongShapeNet(), x, jnp.ones(4, jnp.int32)))(x)):
        with pytest.raises(ValueError, match=rf"^denoiser returned \(4, 1\) for x_t of shape \(4, 2\); .*{fix}") as e:
            call()
        assert "\n" not in str(e.value)
