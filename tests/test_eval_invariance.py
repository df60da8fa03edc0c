"""The bound and the samples with counter-based noise: each example's numbers are a function of (seed, its index)
alone, so batch sizes, subsets, the backend and the number of processes (torchrun) do not change them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import pytest
import torch

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule, noise, variational_bound
from ppl_diffusion import closed_forms as cf
from ppl_diffusion.data import to_uint8
from ppl_diffusion.evaluate import per_example_terms
from ppl_diffusion.priors import make_prior
from ppl_diffusion.sampling import draw_samples

T = 20


def diffusion(prior=None, decoder="gaussian", shape=(2,)) -> GaussianDiffusion:
    torch.manual_seed(0)
    return GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=MLPDenoiser(dim=int(np.prod(shape))),
                             event_shape=shape, prior=prior, decoder=decoder).eval()


@pytest.fixture(scope="module")
def x0():
    return torch.randn(9, 2, generator=torch.Generator().manual_seed(1))


def test_bound_noise_is_the_counter_noise_of_each_example(x0):
    """An independent computation of L_{t−1} at one step t from ε = noise.normal(seed, index, t, XT): x_t by
    Statement 1, the closed-form KL of q(x_{t−1}|x_t, x_0) against p(x_{t−1}|x_t) from the denoiser."""
    d, seed, index, t = diffusion(), 7, np.array([4, 0, 11]), 6
    x = x0[:3]
    got = variational_bound(d, x, seed=seed, indices=index).terms[:, t - 1]
    eps = torch.from_numpy(noise.normal(seed, index, t, (2,), stream=noise.XT))
    tt = torch.full((3,), t)
    x_t = cf.q_sample(d.schedule, x, tt, eps)
    q_mean, _, q_log_var = cf.q_posterior_mean_variance(d.schedule, x, x_t, tt)
    with torch.no_grad():
        p_mean, p_log_var = d.p_mean_variance(x_t, tt)
    want = cf.normal_kl(q_mean, q_log_var, p_mean, p_log_var).sum(-1)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("analytic", [True, False], ids=["kl", "monte-carlo"])
def test_bound_per_example_does_not_depend_on_batching(x0, analytic):
    d = diffusion()
    with torch.no_grad():
        full = variational_bound(d, x0, seed=3, analytic=analytic, timesteps_per_batch=4).terms
        part = variational_bound(d, x0[2:7], seed=3, analytic=analytic, indices=range(2, 7),
                                 timesteps_per_batch=T).terms
        flipped = variational_bound(d, x0.flip(0), seed=3, analytic=analytic, indices=np.arange(9)[::-1].copy()).terms
        other = variational_bound(d, x0, seed=4, analytic=analytic).terms
    torch.testing.assert_close(part, full[2:7], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(flipped.flip(0), full, rtol=1e-6, atol=1e-6)
    assert (other - full).abs().max() > 1e-3  # the seed matters
    by_batch = per_example_terms(d, x0, seed=3, batch_size=2, timesteps_per_batch=3)
    torch.testing.assert_close(by_batch, per_example_terms(d, x0, seed=3, batch_size=9), rtol=1e-6, atol=1e-6)
    if analytic:
        torch.testing.assert_close(by_batch, full.double(), rtol=1e-6, atol=1e-6)


def test_prior_monte_carlo_draw_is_the_prior_stream(x0):
    """A prior without closed-form KL (Student-t) is scored by one draw x_T = mean_T + √var_T · ε, ε the PRIOR
    stream at t = 0: the term equals log q(x_T) − log p(x_T) computed here."""
    prior = dist.StudentT(4.0, torch.zeros(2), torch.ones(2)).to_event(1)
    d, index = diffusion(prior), np.arange(9) + 100
    got = variational_bound(d, x0, seed=2, indices=index).prior_term
    mean, var = cf.q_mean_variance(d.schedule, x0, torch.full((9,), T))
    x_T = mean + var.sqrt() * torch.from_numpy(noise.normal(2, index, 0, (2,), stream=noise.PRIOR))
    want = dist.Normal(mean, var.sqrt()).to_event(1).log_prob(x_T) - prior.log_prob(x_T)
    torch.testing.assert_close(got, want)


def test_backends_give_the_same_bound(x0):
    """The same weights and seed: Pyro and NumPyro per-example terms agree (float32), including a prior scored
    by Monte Carlo, on batchings that differ."""
    pytest.importorskip("numpyro")
    import jax.numpy as jnp
    import numpyro.distributions as ndist

    from ppl_diffusion.numpyro import GaussianDiffusion as JaxDiffusion
    from ppl_diffusion.numpyro.train import from_torch

    d = diffusion(dist.StudentT(4.0, torch.zeros(2), torch.ones(2)).to_event(1))
    twin = from_torch(diffusion())
    jd = JaxDiffusion(schedule=twin.schedule, denoiser=twin.denoiser, event_shape=(2,),
                      prior=ndist.StudentT(4.0, jnp.zeros(2), jnp.ones(2)).to_event(1), decoder=twin.decoder,
                      variance=twin.variance)
    pyro_terms = per_example_terms(d, x0, seed=5, batch_size=4)
    jax_terms = per_example_terms(jd, x0, seed=5, batch_size=9, timesteps_per_batch=7)
    np.testing.assert_allclose(jax_terms.numpy(), pyro_terms.numpy(), rtol=1e-4, atol=1e-5)
    nll = pyro_terms.sum(-1)
    np.testing.assert_allclose(jax_terms.sum(-1).numpy(), nll.numpy(), rtol=1e-5)
    assert (per_example_terms(d, x0, seed=6) - pyro_terms).abs().max() > 1e-3


@pytest.mark.parametrize("prior", [None, "student-t"])
def test_samples_do_not_depend_on_batching(prior):
    d = diffusion(None if prior is None else make_prior(prior, (2,)))
    full = draw_samples(d, 7, seed=3)
    torch.testing.assert_close(draw_samples(d, 3, seed=3, indices=[4, 5, 6]), full[4:], rtol=1e-6, atol=1e-6)
    assert (draw_samples(d, 7, seed=4) - full).abs().min() > 0
    respaced = draw_samples(d, 7, seed=3, steps=5)
    torch.testing.assert_close(draw_samples(d, 2, seed=3, steps=5, indices=[1, 2]), respaced[1:3])


def test_backends_give_the_same_samples():
    """Images through the discretized decoder: the same pixels on both backends for the same seed (the counter
    noise for x_T, every step and the decoder's draw). (An untrained net: most pixels clip, hence also the
    Gaussian decoder's values, relative to float32.)"""
    pytest.importorskip("numpyro")
    from ppl_diffusion.numpyro.train import from_torch

    d = diffusion(decoder="discretized", shape=(1, 2, 2))
    jd = from_torch(d)
    a, b = draw_samples(d, 6, seed=1, steps=10), draw_samples(jd, 6, seed=1, steps=10)
    np.testing.assert_array_equal(to_uint8(b).numpy(), to_uint8(a).numpy())  # the pixels written
    d = diffusion()
    np.testing.assert_allclose(draw_samples(from_torch(d), 6, seed=1).numpy(), draw_samples(d, 6, seed=1).numpy(),
                               rtol=1e-5)
    # A prior without location-scale form: x_T of sample i from a JAX key made of (seed, i) alone.
    import jax.numpy as jnp
    import numpyro.distributions as ndist

    from ppl_diffusion.numpyro import GaussianDiffusion as JaxDiffusion

    twin = from_torch(d)
    jd = JaxDiffusion(schedule=twin.schedule, denoiser=twin.denoiser, event_shape=(2,), decoder=twin.decoder,
                      prior=ndist.StudentT(3.0, jnp.zeros(2), 1.0).to_event(1), variance=twin.variance)
    full = draw_samples(jd, 6, seed=2, steps=5)
    torch.testing.assert_close(draw_samples(jd, 2, seed=2, steps=5, indices=[3, 4]), full[3:5])
    assert (draw_samples(jd, 6, seed=3, steps=5) - full).abs().min() > 0


# ---------------------------------------------------------------------------------------- torchrun
def _torchrun(args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              "-m", "ppl_diffusion", *map(str, args), "--dist-backend", "gloo"]
    return subprocess.run(runner, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from ppl_diffusion.cli import main

    run_dir = tmp_path_factory.mktemp("inv") / "digits"
    assert main(["train", "--data", "digits", "--net", "mlp", "--T", str(T), "--batch-size", "16", "--steps", "4",
                 "--warmup-steps", "2", "--checkpoint-every", "4", "--no-progress", "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_evaluate_under_torchrun_equals_one_process(digits_run, capsys):
    """`evaluate` on 2 processes (7 test digits: shares of 4 and 3, 6 FD samples split 3 + 3) prints the
    numbers of 1 process: bits/dim, every term, digits_fd."""
    from ppl_diffusion.cli import main

    argv = ["evaluate", digits_run, "--json", "--seed", "5", "--max-examples", "7", "--fd-samples", "6",
            "--no-progress"]
    assert main(list(map(str, argv))) == 0
    one = json.loads(capsys.readouterr().out)
    out = _torchrun(argv, digits_run.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    two = json.loads(out.stdout)  # rank 0 alone prints
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for key in ("bpd", "bpd_ema", "digits_fd_ema"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
    for weights in ("raw", "ema"):
        np.testing.assert_allclose(two["terms"][weights], one["terms"][weights], rtol=1e-6)
    assert json.loads((digits_run / "eval.json").read_text())["world_size"] == 2  # written by rank 0


@pytest.mark.slow  # a training run and a 2-process evaluate (~30 s on 2 shared cores)
def test_continuous_time_evaluate_under_torchrun_equals_one_process(tmp_path, capsys):
    """A run in continuous time (learned γ, T = 0) evaluated on 2 processes (7 digits: shares of 4 and 3, the pilot
    on rank 0) prints the numbers of 1 process: bits/dim, both SEs and the three terms (counter-based noise of
    (seed, example, draw))."""
    from ppl_diffusion.cli import main

    run_dir = tmp_path / "vdm"
    assert main(["train", "--data", "digits", "--net", "mlp", "--T", "0", "--schedule", "learned-net", "--estimator",
                 "continuous-ld", "--batch-size", "16", "--steps", "2", "--warmup-steps", "1", "--no-progress",
                 "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()  # train's lines
    argv = ["evaluate", run_dir, "--json", "--seed", "5", "--max-examples", "7", "--fd-samples", "0", "--strata", "3",
            "--draws", "2", "--no-progress"]
    assert main(list(map(str, argv))) == 0
    one = json.loads(capsys.readouterr().out)
    out = _torchrun(argv, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    two = json.loads(out.stdout)
    assert (one["world_size"], two["world_size"], one["bound"]) == (1, 2, "continuous")
    for key in ("bpd", "bpd_ema", "bpd_stderr", "bpd_ema_stderr", "bpd_t_stderr", "bpd_ema_t_stderr"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
    for weights in ("raw", "ema"):
        for term, value in one["terms"][weights].items():
            assert two["terms"][weights][term] == pytest.approx(value, rel=1e-6, abs=1e-9), (weights, term)


def test_evaluate_backends_agree(digits_run, capsys):
    """`evaluate --backend numpyro` prints Pyro's bits/dim and terms for the same weights and seed (float32)."""
    pytest.importorskip("numpyro")
    from ppl_diffusion.cli import main

    argv = ["evaluate", str(digits_run), "--json", "--seed", "5", "--max-examples", "7", "--fd-samples", "0",
            "--no-progress"]
    results = {}
    for backend in ("pyro", "numpyro"):
        assert main(argv + ["--backend", backend]) == 0
        results[backend] = json.loads(capsys.readouterr().out)
    for key in ("bpd", "bpd_ema"):
        assert results["numpyro"][key] == pytest.approx(results["pyro"][key], rel=1e-4), key
    np.testing.assert_allclose(results["numpyro"]["terms"]["ema"], results["pyro"]["terms"]["ema"], rtol=1e-4)


def test_sample_under_torchrun_equals_one_process(digits_run, tmp_path):
    from ppl_diffusion.cli import main

    assert main(["sample", str(digits_run), "-n", "5", "--seed", "3", "--steps", "10",
                 "--out", str(tmp_path / "one.png")]) == 0
    out = _torchrun(["sample", digits_run, "-n", "5", "--seed", "3", "--steps", "10", "--out", tmp_path / "two.png"],
                    tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("5 samples") == 1  # rank 0 alone prints
    np.testing.assert_array_equal(np.load(tmp_path / "two.npz")["images"], np.load(tmp_path / "one.npz")["images"])



def test_ode_evaluate_under_torchrun_equals_one_process(digits_run, capsys):
    """`evaluate --likelihood ode` on 2 processes (3 digits: shares of 2 and 1) prints the numbers of 1 process.
    With --batch-size 1 every example is its own solve, so the solver takes the same steps either way and the
    dequantization draws and Hutchinson probes are those of (seed, test index): equal to float rounding."""
    from ppl_diffusion.cli import main

    argv = ["evaluate", digits_run, "--likelihood", "ode", "--trace", "hutchinson", "--rtol", "1e-3", "--atol", "1e-3",
            "--batch-size", "1", "--dequantization-draws", "2", "--max-examples", "3", "--seed", "5", "--json",
            "--no-progress"]
    assert main(list(map(str, argv))) == 0
    one = json.loads(capsys.readouterr().out)
    out = _torchrun(argv, digits_run.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    two = json.loads(out.stdout)
    assert (one["world_size"], two["world_size"], two["solves"]) == (1, 2, 6)
    for key in ("bpd", "bpd_stderr", "dequantization_sd", "elbo_bpd", "nfe_mean", "nfe_max"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
