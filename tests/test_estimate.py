"""The estimate of the full bound (ppl_diffusion.infer.estimate): unbiased for the full bound of the same seed, its
t-sampling variance as reported, exact with every step, a function of (seed, example index) alone, and the
``evaluate --bound estimate`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
from ppl_diffusion.data import load_dataset
from ppl_diffusion.evaluate import per_example_terms
from ppl_diffusion.infer.estimate import estimate_bound, pilot_profile, plan_from_profile, plan_uniform

from .common import Z

T = 60


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def model(digits):
    torch.manual_seed(0)
    return GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=MLPDenoiser(dim=64),
                             event_shape=digits.event_shape, decoder="discretized").eval()


@pytest.fixture(scope="module")
def full(model, digits):
    """The full bound's terms of 8 test digits, seed 3: ``[8 x (T + 1)]``."""
    return per_example_terms(model, digits.test[:8], seed=3)


@pytest.fixture(scope="module")
def plans(model, digits):
    profile, _ = pilot_profile(model, digits.train[:8], seed=3, grid=12, full_steps=4)
    return {"uniform": plan_uniform(T, full_steps=4, strata=4, draws=2),
            "pilot": plan_from_profile(profile, full_steps=4, strata=4, draws=2)}


@pytest.mark.parametrize("make", [lambda p: plan_uniform(T, full_steps=T),
                                  lambda p: plan_from_profile(np.ones(T), full_steps=T + 5, strata=3)],
                         ids=["uniform", "profile"])
def test_every_step_is_the_full_bound(model, digits, full, make):
    est = estimate_bound(model, digits.test[:8], make(None), seed=3)
    torch.testing.assert_close(est.nll, full.sum(-1), rtol=0, atol=1e-9)
    torch.testing.assert_close(est.terms, full, rtol=0, atol=1e-9)
    assert est.calls == 8 * T and (est.t_variance == 0).all()


@pytest.mark.parametrize("name", ["uniform", "pilot"])
def test_estimate_is_the_weighted_sum_of_the_full_bounds_terms(model, digits, full, plans, name):
    """Recomputed from plan.draw and the full bound's own terms: the drawn terms are the full bound's numbers."""
    plan = plans[name]
    est = estimate_bound(model, digits.test[:8], plan, seed=3, draw_seed=11)
    steps, weights = plan.draw(11, np.arange(8))
    f = full.numpy()
    want = f[:, :4].sum(1) + f[:, T] + (f[np.arange(8)[:, None, None], steps - 1] * weights).sum((1, 2))
    np.testing.assert_allclose(est.nll.numpy(), want, rtol=1e-9)
    assert est.calls <= 8 * plan.calls_per_example


@pytest.mark.parametrize("name", ["uniform", "pilot"])
def test_unbiased_for_the_full_bound_and_its_reported_t_variance(model, digits, full, plans, name):
    """Over 150 independent draws of t the mean estimate of each example equals its full bound within 5 SE, and
    the reported t-sampling variance (from the draws within strata) matches the draws' empirical variance."""
    plan, R = plans[name], 150
    runs = [estimate_bound(model, digits.test[:8], plan, seed=3, draw_seed=r, inputs_per_call=4096) for r in range(R)]
    nll = torch.stack([e.nll for e in runs]).numpy()  # [R x 8]
    se = nll.std(0, ddof=1) / np.sqrt(R)
    z = np.abs(nll.mean(0) - full.sum(-1).numpy()) / se
    assert z.max() < Z, z
    reported = torch.stack([e.t_variance for e in runs]).numpy().mean(0)  # unbiased for each example's variance
    ratio = reported.sum() / nll.var(0, ddof=1).sum()
    assert 0.75 < ratio < 1.33, ratio
    summary = runs[0].summary()  # the t-sampling's SE of the mean is √(Σ v̂_i) / N in bits/dim
    to_bpd = 1 / (64 * np.log(2))
    assert summary["bpd_t_stderr"] == pytest.approx(np.sqrt(runs[0].t_variance.sum().item()) / 8 * to_bpd)


def test_pilot_is_better_than_uniform_here(model, digits, plans):
    """Not a law, but a check that the pilot's proposal is used: on this model it has the smaller t-variance."""
    x = digits.test[:8]
    spread = {k: np.var([estimate_bound(model, x, p, seed=3, draw_seed=r, inputs_per_call=4096).nll.numpy()
                         for r in range(40)], 0).sum() for k, p in plans.items()}
    assert spread["pilot"] < spread["uniform"], spread


def test_per_example_draws_do_not_depend_on_batching(model, digits, plans):
    x, plan = digits.test[:8], plans["pilot"]
    whole = estimate_bound(model, x, plan, seed=3, inputs_per_call=7)
    part = estimate_bound(model, x[2:6], plan, seed=3, indices=range(2, 6), inputs_per_call=1000)
    torch.testing.assert_close(part.nll, whole.nll[2:6], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(part.t_variance, whole.t_variance[2:6], rtol=1e-6, atol=1e-6)
    other = estimate_bound(model, x, plan, seed=3, draw_seed=4)
    assert (other.nll - whole.nll).abs().max() > 1e-3  # the draw seed matters


def test_draws_follow_each_strata_proposal(plans):
    """Over 20,000 examples the frequency of each step in its stratum is P_k(t) within 5 SE; weights 1/(m P_k)."""
    plan = plans["pilot"]
    steps, weights = plan.draw(0, np.arange(20000))
    for k, (s, p) in enumerate(zip(plan.strata, plan.probs)):
        drawn = steps[:, k].ravel()
        assert np.isin(drawn, s).all()
        freq = (drawn[:, None] == s[None]).mean(0)
        se = np.sqrt(p * (1 - p) / drawn.size)
        assert (np.abs(freq - p) <= Z * se + 1e-12).all()
        lookup = dict(zip(s.tolist(), p.tolist()))
        np.testing.assert_allclose(weights[:, k].ravel(), [1 / (2 * lookup[t]) for t in drawn.tolist()])


def test_plan_from_profile_cuts_the_tail_into_contiguous_strata():
    g = np.r_[np.full(10, 100.0), np.linspace(1, 0, 90)]
    plan = plan_from_profile(g, full_steps=3, strata=7, draws=1)
    assert np.array_equal(np.concatenate(plan.strata), np.arange(4, 101))
    assert len(plan.strata) == 7 and all(len(s) for s in plan.strata)
    for p in plan.probs:
        assert p.min() > 0 and p.sum() == pytest.approx(1)
    assert len(plan.strata[0]) < len(plan.strata[-1])  # the heavy steps get narrow strata
    assert len(plan_uniform(100, full_steps=97, strata=10).strata) == 3  # capped at the steps left


@pytest.mark.parametrize("call, match", [
    (lambda: plan_uniform(100, full_steps=-1), "full_steps = -1"),
    (lambda: plan_uniform(100, strata=0), "strata = 0"),
    (lambda: plan_uniform(100, draws=1.5), "draws = 1.5"),
    (lambda: plan_from_profile([1.0, -1.0]), "profile"),
    (lambda: plan_from_profile(np.ones(10), floor=0), "floor = 0"),
], ids=["full-steps", "strata", "draws", "profile", "floor"])
def test_bad_settings_are_one_line(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_plan_of_another_T_is_refused(model, digits):
    with pytest.raises(ValueError, match="T = 50"):
        estimate_bound(model, digits.test[:2], plan_uniform(50), seed=0)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from ppl_diffusion.cli import main

    run_dir = tmp_path_factory.mktemp("est") / "digits"
    assert main(["train", "--data", "digits", "--net", "mlp", "--T", "20", "--batch-size", "16", "--steps", "4",
                 "--warmup-steps", "2", "--checkpoint-every", "4", "--no-progress", "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_evaluate_bound_estimate(digits_run, capsys):
    """`evaluate --bound estimate` writes eval-estimate.json with the eval.json keys, calls and the plan; with every
    step (--full-steps >= T) its bits/dim are the full bound's."""
    from ppl_diffusion.cli import main

    common = [str(digits_run), "--max-examples", "12", "--fd-samples", "0", "--no-progress"]
    assert main(["evaluate", *common]) == 0
    full = json.loads((digits_run / "eval.json").read_text())
    assert full["bound"] == "full" and full["calls"] == {"raw": 12 * 20, "ema": 12 * 20}
    assert main(["evaluate", *common, "--bound", "estimate", "--full-steps", "20"]) == 0
    same = json.loads((digits_run / "eval-estimate.json").read_text())
    assert same["bpd_ema"] == pytest.approx(full["bpd_ema"], abs=1e-9) and same["bpd_ema_t_stderr"] == 0
    assert main(["evaluate", *common, "--bound", "estimate", "--full-steps", "2", "--strata", "3", "--draws", "2",
                 "--pilot-examples", "4"]) == 0
    out = capsys.readouterr().out
    est = json.loads((digits_run / "eval-estimate.json").read_text())
    assert set(full) - {"bpd_t_stderr"} <= set(est)
    assert est["bound"] == "estimate" and est["estimate"]["ema"]["calls_per_example"] == 2 + 3 * 2
    assert est["calls"]["ema"] <= 12 * 8 + est["estimate"]["ema"]["pilot"]["calls"]
    assert est["bpd_ema_t_stderr"] > 0 and est["bpd_ema_stderr"] > 0
    assert abs(est["bpd_ema"] - full["bpd_ema"]) < Z * est["bpd_ema_t_stderr"]
    assert "t-sampling SE" in out
    pytest.importorskip("numpyro")
    assert main(["evaluate", *common, "--bound", "estimate", "--full-steps", "2", "--strata", "3", "--draws", "2",
                 "--pilot-examples", "4", "--backend", "numpyro"]) == 0
    jax_est = json.loads((digits_run / "eval-estimate.json").read_text())
    assert jax_est["bpd_ema"] == pytest.approx(est["bpd_ema"], rel=1e-4) and jax_est["calls"] == est["calls"]


@pytest.mark.parametrize("flags, match", [
    (["--strata", "3"], "--strata given without --bound estimate"),
    (["--bound", "estimate", "--likelihood", "ode"], "with --likelihood ode"),
    (["--bound", "estimate", "--proposal", "sobol"], "proposal = 'sobol'"),
    (["--bound", "estimate", "--draws", "0"], "draws = 0"),
], ids=["without-estimate", "ode", "proposal", "draws"])
def test_evaluate_estimate_bad_flags_are_one_line(digits_run, capsys, flags, match):
    from ppl_diffusion.cli import main

    assert main(["evaluate", str(digits_run), "--max-examples", "2", "--fd-samples", "0", "--no-progress",
                 *flags]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # two torchrun processes start: ~50 s on a shared 2-core machine
def test_evaluate_estimate_under_torchrun_equals_one_process(digits_run, capsys):
    """2 processes (7 digits: shares of 4 and 3) print 1 process's estimate, t-sampling SE and calls: the draws
    are per example, the pilot is run once and shared."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from ppl_diffusion.cli import main

    argv = ["evaluate", str(digits_run), "--json", "--seed", "5", "--max-examples", "7", "--fd-samples", "0",
            "--no-progress", "--bound", "estimate", "--full-steps", "2", "--strata", "3", "--pilot-examples", "4"]
    assert main(argv) == 0
    one = json.loads(capsys.readouterr().out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "ppl_diffusion", *argv, "--dist-backend", "gloo"],
                         capture_output=True, text=True, timeout=300, cwd=digits_run.parent, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    two = json.loads(out.stdout)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for key in ("bpd", "bpd_ema", "bpd_t_stderr", "bpd_ema_t_stderr"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key
    assert two["calls"] == one["calls"] and two["estimate"] == one["estimate"]


def test_numpyro_backend_gives_pyros_estimate(model, digits, plans):
    """The same plan, seed and weights on the NumPyro backend (the compiled step_terms on the same rows, the same
    counter noise) give the Pyro backend's estimate and pilot, to float32 rounding."""
    pytest.importorskip("numpyro")
    from ppl_diffusion.numpyro.train import from_torch

    twin = from_torch(model)
    x = digits.test[:8]
    for name, plan in plans.items():
        want = estimate_bound(model, x, plan, seed=3, inputs_per_call=30)
        got = estimate_bound(twin, x, plan, seed=3, inputs_per_call=30)
        torch.testing.assert_close(got.nll, want.nll, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(got.t_variance, want.t_variance, rtol=1e-3, atol=1e-2)
        assert got.calls == want.calls
    want, _ = pilot_profile(model, digits.train[:4], seed=3, grid=12, full_steps=4)
    got, _ = pilot_profile(twin, digits.train[:4], seed=3, grid=12, full_steps=4)
    np.testing.assert_allclose(got, want, rtol=1e-4)
