"""``evaluate --likelihood ode`` and ``sample --ode`` (ppl_diffusion.likelihood, sampling.draw_ode_samples): the JSON,
an independent recomputation of its numbers, invariance to batching, deterministic ODE samples, one-line errors.

Tiny runs (T = 20, a few steps of the MLP) and loose tolerances: each solve takes a second or two."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule, noise
from ppl_diffusion.cli import main
from ppl_diffusion.data import load_dataset
from ppl_diffusion.evaluate import per_example_terms
from ppl_diffusion.likelihood import evaluate_ode_run, per_example_ode
from ppl_diffusion.ode import log_likelihood
from ppl_diffusion.sampling import draw_ode_samples, draw_samples, load_run

T = 20
TINY = ["--net", "mlp", "--T", str(T), "--batch-size", "32", "--warmup-steps", "2", "--no-progress"]
LOOSE = dict(rtol=1e-3, atol=1e-3)


def run(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ode") / "digits"
    assert run(["train", "--data", "digits", *TINY, "--steps", "4", "--checkpoint-every", "4", "--run-dir",
                run_dir]) == 0
    return run_dir


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ode") / "toy"
    assert run(["train", "--data", "eight_gaussians", *TINY, "--steps", "100", "--lr", "3e-3", "--checkpoint-every",
                "100", "--run-dir", run_dir]) == 0
    return run_dir


KEYS = {"bpd", "bpd_stderr", "elbo_bpd", "elbo_bpd_stderr", "nfe_mean", "nfe_max", "seconds", "trace", "probes", "rtol",
        "atol", "eps", "time_map", "dequantization", "offset_bits", "draws", "num_examples", "num_dims", "weights",
        "backend", "world_size", "threads", "checkpoint", "step", "json", "what", "dequantization_sd"}


def test_eval_ode_json_equals_an_independent_recomputation(digits_run, capsys):
    """Digits, Hutchinson, 2 dequantization draws: bpd is the mean over examples of the mean over draws of
    −log p(y)/(D ln 2) + log2(127.5), y = x + (2/255)(u − ½) with u the DEQUANT stream of (seed, i, r), log p from
    ode.log_likelihood with the probes of (seed, i); the ELBO beside is per_example_terms' on the discrete x."""
    n, seed = 5, 3
    assert run(["evaluate", digits_run, "--likelihood", "ode", "--trace", "hutchinson", "--rtol", "1e-3", "--atol",
                "1e-3", "--max-examples", n, "--dequantization-draws", 2, "--seed", seed, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ODE" in out and "ELBO" in out and "different models" in out
    got = json.loads((digits_run / "eval-ode.json").read_text())
    assert KEYS <= set(got)
    assert (got["dequantization"], got["draws"], got["num_examples"], got["num_dims"]) == ("uniform", 2, n, 64)
    assert got["offset_bits"] == pytest.approx(math.log2(127.5)) and got["weights"] == "ema"

    d = load_run(digits_run).diffusion
    x = load_dataset("digits").test[:n]
    index = np.arange(n)
    bpd = []
    for r in range(2):
        u = noise.uniform(seed, index, r, (1, 8, 8), stream=noise.DEQUANT)
        y = (x.double() + (2 / 255) * (torch.from_numpy(u) - 0.5)).float()
        with torch.no_grad():
            lp = log_likelihood(d, y, trace="hutchinson", seed=seed, indices=index, **LOOSE).log_prob
        bpd.append(-lp.double().numpy() / (64 * math.log(2)) + math.log2(127.5))
    bpd = np.stack(bpd, 1)  # [n x R]
    per_example = bpd.mean(1)
    assert got["bpd"] == pytest.approx(per_example.mean(), abs=1e-4)  # y rounded to float32 either way
    assert got["bpd_stderr"] == pytest.approx(per_example.std(ddof=1) / math.sqrt(n), rel=1e-2, abs=1e-5)
    assert got["dequantization_sd"] == pytest.approx(np.sqrt(bpd.var(1, ddof=1).mean()), rel=0.05, abs=1e-5)
    elbo = per_example_terms(d, x, seed=seed).sum(-1).numpy() / (64 * math.log(2))
    assert got["elbo_bpd"] == pytest.approx(elbo.mean(), rel=1e-6)
    assert got["elbo_bpd_stderr"] == pytest.approx(elbo.std(ddof=1) / math.sqrt(n), rel=1e-6)


def test_result_does_not_depend_on_the_batch_size(toy_run):
    """Each example's noise depends on its index alone; only the solver's steps are shared by a batch, so batch
    sizes 12 and 5 agree per example within the solver's global error (at rtol = atol = 1e-7 on the float32 state,
    measured ≤ 2e-4 nats; at 1e-5 it is ~4e-3), far below the spread between examples (~0.1 bits/dim)."""
    opts = dict(max_examples=12, trace="exact", rtol=1e-7, atol=1e-7, progress=False)
    one = evaluate_ode_run(toy_run, batch_size=12, **opts)
    five = evaluate_ode_run(toy_run, batch_size=5, **opts)
    assert (one["dequantization"], one["offset_bits"], one["solves"], five["solves"]) == ("none", 0.0, 1, 3)
    assert five["bpd"] == pytest.approx(one["bpd"], abs=1e-3)
    assert five["elbo_bpd"] == pytest.approx(one["elbo_bpd"], rel=1e-9)
    d, x = load_run(toy_run).diffusion, load_dataset("eight_gaussians").test[:12]
    options = dict(trace="exact", probes=1, probe="rademacher", rtol=1e-7, atol=1e-7, eps=None, time_map="grid")
    a, _, _ = per_example_ode(d, x, dequantization="none", batch_size=12, **options)
    b, _, _ = per_example_ode(d, x, dequantization="none", batch_size=5, **options)
    assert a.mean() == pytest.approx(one["bpd"], rel=1e-12)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-3)
    assert np.abs(a - a.mean()).max() > 2e-2  # the examples differ: the comparison per example means something


def test_hutchinson_with_basis_probes_is_the_exact_trace_on_images():
    """√D e_i as the D probes: (1/D) Σ_i D e_iᵀ J e_i = tr J, so the Hutchinson path on an image-shaped model
    ([1 x 2 x 2]) gives the exact trace's log p (up to the solver: the same steps to rounding)."""
    torch.manual_seed(0)
    d = GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=MLPDenoiser(dim=4), event_shape=(1, 2, 2),
                          decoder="discretized").eval()
    x = torch.rand(3, 1, 2, 2) * 2 - 1
    probes = (2.0 * torch.eye(4)).reshape(1, 4, 1, 2, 2).expand(3, 4, 1, 2, 2)
    with torch.no_grad():
        exact = log_likelihood(d, x, trace="exact", **LOOSE).log_prob
        hutch = log_likelihood(d, x, trace="hutchinson", probe_values=probes, **LOOSE).log_prob
    torch.testing.assert_close(hutch, exact, rtol=1e-5, atol=1e-4)


def test_sample_ode_writes_files_and_is_deterministic(digits_run, tmp_path, capsys):
    def sample(name, *extra):
        assert run(["sample", digits_run, "-n", 4, "--ode", "--rtol", "1e-3", "--atol", "1e-3", "--out",
                    tmp_path / f"{name}.png", *extra]) == 0
        assert "function evaluations" in capsys.readouterr().out
        images = np.load(tmp_path / f"{name}.npz")["images"]
        assert images.dtype == np.uint8 and images.shape == (4, 1, 8, 8)
        return images

    a, b, c = sample("a", "--seed", 2), sample("b", "--seed", 2), sample("c", "--seed", 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert run(["sample", digits_run, "-n", 2, "--ode", "--rtol", "1e-3", "--atol", "1e-3"]) == 0
    assert (digits_run / "samples-ema-ode.png").is_file() and (digits_run / "samples-ema-ode.npz").is_file()


def test_ode_samples_start_from_ancestral_x_T_and_do_not_depend_on_batching(toy_run):
    """Sample i's x_T is ancestral sampling's for (seed, i): a share of the samples gives the same points up to the
    solver's tolerance; from s = 1 to s = 1 − tiny, x barely moves from that x_T."""
    d = load_run(toy_run).diffusion
    full, nfe = draw_ode_samples(d, 6, seed=4, rtol=1e-5, atol=1e-5)
    part, _ = draw_ode_samples(d, 3, seed=4, indices=[3, 4, 5], rtol=1e-5, atol=1e-5)
    assert nfe > 0
    torch.testing.assert_close(part, full[3:], rtol=1e-3, atol=1e-3)  # an untrained flow spreads x(ε) widely
    x_T = torch.from_numpy(noise.normal(4, np.arange(6), T, (2,), stream=noise.SAMPLE))
    near, _ = draw_ode_samples(d, 6, seed=4, eps=1 - 1e-6, **LOOSE)
    torch.testing.assert_close(near, x_T, rtol=0, atol=1e-3)
    assert (draw_samples(d, 6, seed=4) - full).abs().max() > 1e-3  # the chain's samples are not the ODE's


# The one-line errors on the digits run are in tests/test_cli.py (BAD); continuous data needs this run.
def test_dequantizing_continuous_data_exits_2(toy_run, capsys):
    assert run(["evaluate", toy_run, "--likelihood", "ode", "--dequantization", "uniform", "--no-progress"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no discrete cells" in lines[0], lines


def test_numpyro_backend_agrees(toy_run):
    """The NumPyro twin (diffrax, dopri5) against torchdiffeq's dopri5 on the same weights, through the dispatch
    that ``--backend numpyro`` takes: the same density within the two solvers' global error (at rtol = atol = 1e-7
    ~2e-4 nats, see the batch-size test; at 1e-5 the two differ by 5e-3 nats here), and the same ODE samples."""
    pytest.importorskip("ppl_diffusion.numpyro.ode")
    x = load_dataset("eight_gaussians").test[:8]
    options = dict(trace="exact", probes=1, probe="rademacher", rtol=1e-7, atol=1e-7, eps=None, time_map="grid")
    runs = {backend: load_run(toy_run, backend=backend).diffusion for backend in ("pyro", "numpyro")}
    bpd = {b: per_example_ode(d, x, dequantization="none", **options)[0] for b, d in runs.items()}
    np.testing.assert_allclose(bpd["numpyro"], bpd["pyro"], rtol=0, atol=1e-3)
    a, _ = draw_ode_samples(runs["pyro"], 4, seed=1, rtol=1e-5, atol=1e-5)
    b, _ = draw_ode_samples(runs["numpyro"], 4, seed=1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-3, atol=1e-3)


def test_the_decoder_bound_has_the_gaussian_closed_form_mean():
    """E_q[log p_ε(x_1) + log p(x_0|x_1) − log q(x_1|x_0)] for Gaussian data with its exact ε̂, the marginal as prior
    and the Gaussian decoder N(μ_θ(x_1, 1), β_1 I), whose mean is linear in x_1: every term in closed form."""
    from tests.test_ode import oracle_diffusion

    diffusion, net, ct = oracle_diffusion()
    s = diffusion.schedule
    d, ab, beta = 3, float(s.alphas_cumprod[0]), float(s.betas[0])
    m1, c1 = net.marginal(1.0 / s.T)  # the ODE's density at ε = 1/T is the marginal at step 1
    ci = torch.linalg.inv(c1)
    # μ_θ(x_1, 1) = (x_1 − β_1/σ_1 ε̂)/√α_1 with ε̂ = σ_1 C⁻¹(x_1 − m_1): A x_1 + b
    a = (torch.eye(d, dtype=torch.float64) - beta * ci) / math.sqrt(1 - beta)
    b = beta * ci @ m1 / math.sqrt(1 - beta)
    x0 = torch.tensor([0.3, -0.5, 1.2], dtype=torch.float64)
    mq, vq = math.sqrt(ab) * x0, 1 - ab  # q(x_1|x_0)
    r = x0 - a @ mq - b
    decoder = -0.5 * d * math.log(2 * math.pi * beta) - (r @ r + vq * torch.trace(a.T @ a)) / (2 * beta)
    dm = mq - m1
    prior = -0.5 * (d * math.log(2 * math.pi) + torch.logdet(c1) + dm @ ci @ dm + vq * torch.trace(ci))
    entropy = 0.5 * d * math.log(2 * math.pi * math.e * vq)
    exact = (decoder + prior + entropy).item()

    n = 60
    bpd, _, _ = per_example_ode(diffusion, x0.expand(n, d).numpy(), indices=np.arange(n), dequantization="decoder",
                                seed=0, batch_size=n, rtol=1e-7, atol=1e-7, trace="exact", probes=1,
                                probe="rademacher", eps=None, time_map="grid")
    nats = -bpd[:, 0] * d * math.log(2.0)
    m, se = nats.mean(), nats.std(ddof=1) / math.sqrt(n)
    assert abs(m - exact) < 5 * se, (m, se, exact)


def test_the_decoder_bound_needs_the_ode_to_stop_at_step_1(digits_run):
    with pytest.raises(ValueError, match=r"the decoder bound decodes x_1 .* pass --time-map grid and --eps"):
        evaluate_ode_run(digits_run, max_examples=2, dequantization="decoder", eps=0.5, progress=False)
