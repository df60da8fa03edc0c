"""Runs with a learnable forward process (γ schedules, T = 0 and finite T) from the command line: config.json, exact
resume (also after SIGKILL), validation, evaluation (the continuous-time bound; a fixed γ read from a NoiseSchedule
is that schedule's run), sampling, export, and every bad combination refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ppl_diffusion.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ppl_diffusion.cli import main
from ppl_diffusion.data import load_dataset
from ppl_diffusion.evaluate import evaluate_run, paired_difference, summary
from ppl_diffusion.infer.continuous_bound import estimate_continuous_bound, plan_continuous_uniform
from ppl_diffusion.sampling import draw_samples, sample_run
from ppl_diffusion.train import TrainConfig, load_trained, train
from ppl_diffusion.train.validation import VALIDATION_CONTINUOUS_PLAN, holdout_split

from .common import Z, mean_se
from .test_train import assert_same_best, assert_same_training_state, final_state, killed_and_resumed, metric_rows

TOY = dict(data="eight_gaussians", net="mlp", batch_size=32, lr=1e-3, warmup_steps=3, log_every=1)
CONTINUOUS = dict(T=0, schedule="learned-net", estimator="continuous-is")


def toy(**kw) -> TrainConfig:
    return TrainConfig(**{**TOY, **kw})


def run(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def error_line(capsys, argv) -> str:
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ppl-diffusion: error: "), err
    return err


@pytest.fixture(scope="module")
def continuous_run(tmp_path_factory):
    """A learned-net schedule trained in continuous time (T = 0), importance-sampled t, with validation."""
    run_dir = tmp_path_factory.mktemp("vdm") / "continuous"
    train(toy(**CONTINUOUS, steps=6, checkpoint_every=3, val_examples=16), run_dir, progress=False)
    return run_dir


# ---------------------------------------------------------------------------------------- run folders
@pytest.mark.parametrize("process", [dict(CONTINUOUS), dict(T=100, schedule="learned-net", estimator="stochastic-kl-is")],
                         ids=["T0", "T100"])
def test_resume_is_exact_with_a_learned_schedule(tmp_path, process):
    # With validation (the continuous bound's estimate at T = 0, the chain's at T = 100) and its best.pt.
    config = lambda steps: toy(steps=steps, checkpoint_every=2, val_examples=8, **process)  # noqa: E731
    train(config(8), tmp_path / "full", progress=False)
    part = tmp_path / "part"
    train(config(4), part, progress=False)  # stopped at a validation step (a stop at 5 would validate at 5 too)
    train(config(8), part, resume=True, progress=False)
    a, b = final_state(tmp_path / "full"), final_state(part)
    assert_same_training_state(a, b)
    assert metric_rows(tmp_path / "full") == metric_rows(part)
    assert_same_best(tmp_path / "full", part)
    assert [h["step"] for h in a["validation"]["history"]] == [2, 4, 6, 8]
    best_a, best_b = load_checkpoint(tmp_path / "full" / "best.pt"), load_checkpoint(part / "best.pt")
    for key in ("schedule", "schedule_ema"):  # best.pt keeps the schedule the best weights were scored with
        assert best_a[key].keys() == a[key].keys()
        assert all(torch.equal(best_a[key][k], best_b[key][k]) for k in best_a[key])
    # The schedule trained (its parameters and their EMA are in the checkpoint) and the sampler kept its history.
    init = load_trained(part, ema=True).schedule.state_dict().keys()
    assert set(a["schedule"]) == set(a["schedule_ema"]) == set(init)
    assert any(not torch.equal(a["schedule"][k], a["schedule_ema"][k]) for k in a["schedule"])
    assert a["sampler"]["loss_counts"].sum() > 0 and a["sampler"]["T"] == process["T"]
    assert len(a["optimizer"]["state"]) == len(a["model"]) + len(a["schedule"])


@pytest.mark.parametrize("backend", ["pyro", pytest.param("numpyro", marks=pytest.mark.slow)])
def test_schedule_objective_reaches_the_interior_only(tmp_path, backend):
    """--schedule-objective variance (learned-net's default at T = 0) against elbo, same seed and draws: after one
    step Adam's first moment (0.1 x the gradient) of the denoiser and of the endpoints is the same under both, and
    the interior's is not, so the objective changes the interior's gradient alone."""
    if backend == "numpyro":
        pytest.importorskip("numpyro")
    states = {}
    for objective in ("variance", "elbo"):
        run_dir = tmp_path / objective
        train(toy(**CONTINUOUS, steps=1, schedule_objective=objective, backend=backend), run_dir, progress=False)
        states[objective] = final_state(run_dir)
    assert json.loads((tmp_path / "variance" / "config.json").read_text())["schedule_objective"] == "variance"
    d = load_trained(tmp_path / "elbo")
    names = [f"model.{n}" for n, _ in d.denoiser.named_parameters()]
    names += [f"schedule.{n}" for n, _ in d.schedule.named_parameters()]  # the optimizer's order, both backends
    moments = {o: dict(zip(names, (v["exp_avg"] for v in states[o]["optimizer"]["state"].values()), strict=True))
               for o in states}
    ends = {f"schedule.{n}" for n, p in d.schedule.named_parameters()
            if any(p is q for q in d.schedule.endpoint_parameters())}
    interior = {n for n in names if n.startswith("schedule.")} - ends
    assert ends and interior
    tol = dict(rtol=0, atol=0) if backend == "pyro" else dict(rtol=1e-5, atol=1e-9)  # XLA may fuse the two differently
    for n in names:
        a, b = moments["variance"][n], moments["elbo"][n]
        if n in interior:
            continue
        torch.testing.assert_close(a, b, **tol, msg=n)
    assert any((moments["variance"][n] - moments["elbo"][n]).abs().max() > 1e-3 * moments["elbo"][n].abs().max()
               for n in interior)


def test_config_records_the_forward_process_and_a_fresh_process_rebuilds_the_model(tmp_path):
    run_dir = tmp_path / "run"
    train(toy(T=0, schedule="learned-net", estimator="continuous-ld", gamma_min=-10.0, steps=3), run_dir,
          progress=False)
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["T"], saved["gamma_min"], saved["gamma_max"], saved["time_input"], saved["schedule_objective"]) == \
        (0, -10.0, 5.0, "gamma", "variance")  # the defaults written out
    assert TrainConfig.from_dict(saved).resolved() == TrainConfig.from_dict(saved)
    code = """
import json, sys, numpy as np, torch
from ppl_diffusion.train import load_trained
from ppl_diffusion.infer.continuous_bound import estimate_continuous_bound, plan_continuous_uniform
d = load_trained(sys.argv[1])
x = torch.tensor([[0.5, -1.0], [1.5, 0.25]])
est = estimate_continuous_bound(d, x, plan_continuous_uniform(strata=3, draws=2), seed=4)
print(json.dumps({"nll": est.nll.tolist(), "ends": [float(g) for g in d.schedule.endpoints()],
                  "range": list(d.gamma_range), "T": d.T}))
"""
    out = subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    fresh = json.loads(out.stdout)
    d = load_trained(run_dir)
    est = estimate_continuous_bound(d, torch.tensor([[0.5, -1.0], [1.5, 0.25]]), plan_continuous_uniform(strata=3, draws=2),
                                    seed=4)
    assert fresh["nll"] == est.nll.tolist() and fresh["T"] == 0 and fresh["range"] == [-10.0, 5.0]
    assert fresh["ends"] == [float(g.detach()) for g in d.schedule.endpoints()] and fresh["ends"][0] != -10.0  # trained


@pytest.mark.slow  # ~27 s on 2 shared cores (three processes); the in-process resume tests above stay in the default run
def test_sigkill_at_random_moments_then_resume_is_exact_in_continuous_time(tmp_path):
    """As the chain's test in test_train.py: a learned-net schedule at T = 0 with importance-sampled t (the
    sampler's history) and validation (the continuous bound's estimate), killed at random, ends bit for bit as the
    uninterrupted run."""
    config = toy(**CONTINUOUS, steps=24, checkpoint_every=1, keep_checkpoints=2, val_examples=16)
    run = killed_and_resumed(config, tmp_path, seed=99, tries=2, pause=0.3, wait=120, timeout=900)
    best, reference = load_checkpoint(run / "best.pt"), load_checkpoint(tmp_path / "reference" / "best.pt")
    for key in ("schedule", "schedule_ema"):  # best.pt's schedule too (assert_same_best compares the nets)
        assert best[key].keys() == reference[key].keys() and len(best[key]) > 0
        assert all(torch.equal(v, reference[key][k]) for k, v in best[key].items()), key


def test_validation_in_continuous_time_is_the_bounds_estimate_of_the_ema_weights(continuous_run):
    state = load_checkpoint(latest_checkpoint(continuous_run))
    history = state["validation"]["history"]
    assert [h["step"] for h in history] == [3, 6]
    data = load_dataset("eight_gaussians")
    _, held = holdout_split(len(data.train), 16, 0)
    d = load_trained(latest_checkpoint(continuous_run), ema=True)
    est = estimate_continuous_bound(d, data.train[torch.from_numpy(held)], plan_continuous_uniform(
        **VALIDATION_CONTINUOUS_PLAN), seed=0, indices=held)
    assert est.bits_per_dim().mean().item() == pytest.approx(history[-1]["val_bpd"], rel=1e-6)
    assert load_checkpoint(continuous_run / "best.pt")["schedule_ema"].keys() == state["schedule_ema"].keys()


# ---------------------------------------------------------------------------------------- evaluation
def test_evaluate_on_a_continuous_run_is_the_estimate_of_its_weights(continuous_run):
    """eval.json is :func:`estimate_continuous_bound` of the run's weights (raw and EMA), its terms and SEs."""
    result = evaluate_run(continuous_run, max_examples=6, fd_samples=0, seed=3, progress=False, proposal="uniform",
                          strata=4, draws=2)
    assert result["bound"] == "continuous" and result["T"] == 0 and result["t_draws"] == 8
    assert set(result["terms"]["ema"]) == {"reconstruction", "diffusion", "prior"} and result["bpd_ema_t_stderr"] > 0
    assert "reconstruction" in result["what"] and (continuous_run / "eval_integrand.png").stat().st_size > 1000
    x = load_dataset("eight_gaussians").test[:6]
    plan = plan_continuous_uniform(strata=4, draws=2)
    for ema, key in ((False, "bpd"), (True, "bpd_ema")):
        est = estimate_continuous_bound(load_trained(continuous_run, ema=ema), x, plan, seed=3)
        bpd = est.bits_per_dim()
        assert bpd.mean().item() == pytest.approx(result[key], rel=1e-6)
        assert bpd.std().item() / len(bpd) ** 0.5 == pytest.approx(result[f"{key}_stderr"], rel=1e-6)
        assert est.summary()["bpd_t_stderr"] == pytest.approx(result[f"{key}_t_stderr"], rel=1e-6)
        for name, value in est.terms.items():
            assert value.mean().item() == pytest.approx(result["terms"]["ema" if ema else "raw"][name], rel=1e-6)
        np.testing.assert_allclose(result["bpd_per_example"]["ema" if ema else "raw"], bpd.numpy(), rtol=1e-6)
        # the learned endpoints of these weights, as the schedule has them
        g0, g1 = (float(v.detach()) for v in load_trained(continuous_run, ema=ema).schedule.endpoints())
        assert result["schedule"]["ema" if ema else "raw"] == pytest.approx({"gamma_0": g0, "gamma_1": g1})
    assert "learned γ_0 → γ_1: raw " in summary(result)


def test_paired_difference_of_two_evaluations_is_the_per_example_difference(continuous_run, linear_and_its_gamma):
    """The paired difference of two eval.json is the mean and SE of the per-example differences of their weights; a
    run against itself is exactly 0 ± 0; evaluations of different examples are refused."""
    linear, gamma = linear_and_its_gamma
    a, b = (evaluate_run(r, max_examples=12, fd_samples=0, progress=False, seed=1) for r in (linear, gamma))
    d = paired_difference(a, b, weights="raw")
    diff = np.subtract(a["bpd_per_example"]["raw"], b["bpd_per_example"]["raw"])
    assert d["num_examples"] == 12 and d["difference"] == pytest.approx(diff.mean())
    assert d["stderr"] == pytest.approx(diff.std(ddof=1) / np.sqrt(12))
    assert d["a"] == pytest.approx(a["bpd"]) and d["b"] == pytest.approx(b["bpd"])
    same = paired_difference(linear / "eval.json", a)  # a path or a dict
    assert same["difference"] == 0.0 and same["stderr"] == 0.0
    fewer = evaluate_run(linear, max_examples=6, fd_samples=0, progress=False)
    with pytest.raises(ValueError, match="different test examples"):
        paired_difference(a, fewer)
    assert "schedule" not in a  # a fixed forward process has no learned endpoints to report


@pytest.mark.slow  # ~80 s on 2 shared cores: the reference quadrature (576,000 denoiser inputs)
def test_evaluate_on_a_continuous_run_estimates_the_models_bound_without_bias(continuous_run):
    """The estimate's mean over many replicates agrees with the trained model's bound computed independently: the
    prior in closed form, the reconstruction by 20,000 draws of x_1, the diffusion term by 48-node Gauss–Legendre in
    t with 2,000 draws of ε per node."""
    d = load_trained(continuous_run, ema=True)
    x = load_dataset("eight_gaussians").test[:6]
    plan = plan_continuous_uniform(strata=4, draws=2)
    R, N = 400, len(x)
    reps = estimate_continuous_bound(d, x.repeat(R, 1), plan, seed=3, indices=np.arange(R * N)).nll.reshape(R, N)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        g0, g1 = (float(v) for v in d.schedule.endpoints())
        a1, s1 = 1 / (1 + np.exp(g1)), 1 / (1 + np.exp(-g1))  # α_1², σ_1²
        prior = 0.5 * (s1 + a1 * x.double() ** 2 - 1 - np.log(s1)).sum(-1)
        chain = d.with_steps(2)  # its decoder at step 1 is the continuous model's
        a0, s0 = torch.sigmoid(-torch.tensor(g0)).sqrt(), torch.sigmoid(torch.tensor(g0)).sqrt()
        K = 20_000
        x1 = a0 * x.repeat(K, 1) + s0 * torch.randn(K * N, 2, generator=g)
        mean, log_var = chain.p_mean_variance(x1, torch.ones(K * N, dtype=torch.long))
        rec_draws = -chain.decoder(mean, log_var).to_event(1).log_prob(x.repeat(K, 1)).double().reshape(K, N)
        u, w = np.polynomial.legendre.leggauss(48)
        E = 2_000
        diff_nodes = []
        for tk in (u + 1) / 2:
            t = torch.full((E * N,), float(tk), dtype=torch.float64)
            L = d.diffusion_integrand(x.repeat(E, 1), t, torch.randn(E * N, 2, generator=g)).double().reshape(E, N)
            diff_nodes.append(L)
        diff_nodes = torch.stack(diff_nodes)  # [nodes x E x N]
        ww = torch.from_numpy(w / 2)[:, None]
        diffusion = (ww * diff_nodes.mean(1)).sum(0)
        diff_var = (ww ** 2 * diff_nodes.var(1) / E).sum(0)
    reference = prior + rec_draws.mean(0) + diffusion
    ref_se = (rec_draws.var(0) / K + diff_var).sqrt()
    for i in range(N):
        m, se = mean_se(reps[:, i].numpy())
        assert abs(m - reference[i].item()) < Z * (se ** 2 + ref_se[i].item() ** 2) ** 0.5, (i, m, se, reference[i])


@pytest.fixture(scope="module")
def linear_and_its_gamma(tmp_path_factory):
    """A digits run on the linear NoiseSchedule (T = 10), and the same weights as a run of the γ read from it at
    its steps with step labels (schedule interpolated-linear, time_input step)."""
    root = tmp_path_factory.mktemp("fixed")
    linear = root / "linear"
    train(TrainConfig(data="digits", net="mlp", T=10, batch_size=16, warmup_steps=2, steps=2, checkpoint_every=2),
          linear, progress=False)
    gamma = root / "gamma"
    gamma.mkdir()
    config = {**json.loads((linear / "config.json").read_text()), "schedule": "interpolated-linear", "time_input": "step",
              "schedule_objective": "elbo"}
    (gamma / "config.json").write_text(json.dumps(config))
    state = load_checkpoint(latest_checkpoint(linear))
    save_checkpoint(gamma / latest_checkpoint(linear).name, {**state, "config": config})
    return linear, gamma


@pytest.mark.parametrize("bound", ["full", "estimate"])
def test_evaluate_a_fixed_gamma_read_from_a_noise_schedule_is_the_noise_schedule_run(linear_and_its_gamma, bound):
    linear, gamma = linear_and_its_gamma
    a, b = (evaluate_run(r, max_examples=12, fd_samples=0, progress=False, bound=bound) for r in (linear, gamma))
    assert a["T"] == b["T"] == 10
    for key in ("bpd", "bpd_ema"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(b["terms"]["ema"], a["terms"]["ema"], rtol=1e-4, atol=1e-5)


def test_fitted_variances_of_a_fixed_gamma_read_from_a_noise_schedule_are_the_noise_schedule_runs(linear_and_its_gamma):
    """evaluate --fit-variance on the γ read from a NoiseSchedule (the same net at the same step labels) fits the
    NoiseSchedule run's variances and gives its bound: the fit and the fitted model read the γ chain's coefficients
    (the closed forms of the fit are tested against Monte Carlo on NoiseSchedules in test_variance.py)."""
    linear, gamma = linear_and_its_gamma
    a, b = (evaluate_run(r, max_examples=12, fd_samples=0, progress=False, fit_variance=16) for r in (linear, gamma))
    for name in ("raw", "ema"):
        want, got = a["fitted_variance"][name], b["fitted_variance"][name]
        np.testing.assert_allclose(got["x0_mse"], want["x0_mse"], rtol=1e-5)
        assert got["decoder_log_variance"] == pytest.approx(want["decoder_log_variance"], rel=1e-5)
    assert b["bpd_ema"] == pytest.approx(a["bpd_ema"], rel=1e-5) and b["variance"] == "fitted"
    assert b["bpd_ema"] != evaluate_run(gamma, max_examples=12, fd_samples=0, progress=False)["bpd_ema"]


# ---------------------------------------------------------------------------------------- sampling, ODE, export
def test_sample_a_continuous_run_with_any_chain_and_the_ode(continuous_run):
    d = load_trained(continuous_run)
    got = sample_run(continuous_run, n=4, steps=7, seed=2)
    torch.testing.assert_close(got.samples, draw_samples(d.with_steps(7), 4, seed=2))
    assert got.png.name == "samples-ema-K7.png"
    default = sample_run(continuous_run, n=2, seed=2)  # the 1000-step chain of the same γ
    assert default.png.name == "samples-ema-K1000.png" and default.samples.shape == (2, 2)
    ode = sample_run(continuous_run, n=2, seed=2, ode=True, rtol=1e-3, atol=1e-3)
    assert ode.nfe > 0 and torch.isfinite(ode.samples).all()


def test_ode_likelihood_of_a_continuous_run(continuous_run):
    from ppl_diffusion.likelihood import evaluate_ode_run

    result = evaluate_ode_run(continuous_run, max_examples=3, rtol=1e-3, atol=1e-3, progress=False)
    assert result["time_map"] == "gamma" and result["eps"] == 0.0 and np.isfinite(result["bpd"])
    assert result["T"] == 0 and "continuous-time variational bound" in result["what"]["elbo_bpd"]


def test_the_ode_of_a_gamma_model_does_not_depend_on_its_steps(continuous_run):
    """The probability-flow ODE of a γ model is the VP-SDE of γ(t) with the net at γ: the same density in continuous
    time and as a chain of 10 steps (the finite-T path of evaluate --likelihood ode), and not the density of another
    γ."""
    from ppl_diffusion.likelihood import ode_log_prob

    d = load_trained(continuous_run)
    y = load_dataset("eight_gaussians").test[:4].numpy()
    opts = dict(indices=np.arange(4), trace="exact", probes=1, probe="rademacher", rtol=1e-6, atol=1e-6, eps=None,
                time_map="gamma", seed=0)
    continuous, _, _ = ode_log_prob(d, y, **opts)
    chain, _, _ = ode_log_prob(d.with_steps(10), y, **opts)
    np.testing.assert_allclose(chain, continuous, rtol=1e-9)
    with torch.no_grad():
        d.schedule.ends.gamma_0 += 1.0  # another forward process (its γ_0 moved): another ODE
    other, _, _ = ode_log_prob(d.with_steps(10), y, **opts)
    assert np.abs(other - continuous).min() > 1e-3


def test_safetensors_export_keeps_the_schedule_and_others_refuse(continuous_run, tmp_path, capsys):
    from ppl_diffusion.interop import from_safetensors

    assert run(["export", continuous_run, "--to", "safetensors", "--out", tmp_path / "st"]) == 0
    back = from_safetensors(tmp_path / "st")
    d = load_trained(continuous_run)
    for k, v in d.schedule.state_dict().items():
        assert torch.equal(back.schedule.state_dict()[k], v)
    assert run(["import", "safetensors", tmp_path / "st", "--run-dir", tmp_path / "imported"]) == 0
    assert load_checkpoint(latest_checkpoint(tmp_path / "imported"))["schedule"].keys() == d.schedule.state_dict().keys()
    capsys.readouterr()
    err = error_line(capsys, ["export", continuous_run, "--to", "improved-diffusion", "--out", tmp_path / "id"])
    assert "γ schedule 'learned-net' (T = ∞)" in err and "--to safetensors" in err


def test_train_prints_the_learned_endpoints_and_a_fixed_schedule_none(tmp_path, capsys):
    assert run(["train", "--data", "eight_gaussians", "--net", "mlp", "--steps", "2", "--batch-size", "8",
                "--no-progress", "--warmup-steps", "0", "--ema-decay", "0.5", "--T", "0", "--schedule",
                "learned-scalar", "--estimator", "continuous", "--run-dir", tmp_path / "learned"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    for name, ema in (("raw", False), ("EMA", True)):
        g0, g1 = (float(v.detach()) for v in load_trained(tmp_path / "learned", ema=ema).schedule.endpoints())
        assert f"{name} {g0:.3f} → {g1:.3f}" in line, line
    assert run(["train", "--data", "eight_gaussians", "--net", "mlp", "--steps", "1", "--batch-size", "8",
                "--no-progress", "--run-dir", tmp_path / "fixed"]) == 0
    assert "γ" not in capsys.readouterr().out


def test_train_at_t0_without_an_estimator_takes_the_continuous_default(tmp_path, capsys):
    """--estimator defaults to a chain's estimator, and with --T 0 to continuous-ld (a chain's would be refused)."""
    from ppl_diffusion.cli import CONTINUOUS_DEFAULT

    flags = ["train", "--data", "eight_gaussians", "--net", "mlp", "--steps", "1", "--batch-size", "8", "--no-progress",
             "--schedule", "learned-net"]
    assert run([*flags, "--T", "0", "--run-dir", tmp_path / "t0"]) == 0
    assert run([*flags, "--T", "10", "--run-dir", tmp_path / "t10"]) == 0
    estimators = [json.loads((tmp_path / r / "config.json").read_text())["estimator"] for r in ("t0", "t10")]
    assert estimators == [CONTINUOUS_DEFAULT, TrainConfig().estimator] == ["continuous-ld", "stochastic-kl-is"]


# ---------------------------------------------------------------------------------------- bad input
TRAIN = ["train", "--data", "eight_gaussians", "--net", "mlp", "--steps", "1", "--batch-size", "8", "--no-progress"]


@pytest.mark.parametrize("flags, match", [
    (["--schedule", "learned-net", "--T", "0", "--estimator", "stochastic-kl-is"],
     "estimator 'stochastic-kl-is' scores a chain of steps, and T = 0 is continuous time: pass --estimator one of "
     "continuous"),
    (["--schedule", "learned-net", "--T", "inf", "--estimator", "trace"], "estimator 'trace' scores a chain"),
    (["--schedule", "learned-net", "--T", "0", "--estimator", "meanfield"], "estimator 'meanfield' scores a chain"),
    (["--schedule", "learned-net", "--T", "20", "--estimator", "continuous"], "estimator 'continuous' scores continuous"),
    (["--T", "0", "--estimator", "continuous"], "T = 0 with schedule 'linear': a NoiseSchedule has T >= 1 steps"),
    (["--gamma-min", "-5"], "--gamma-min set with schedule 'linear', a NoiseSchedule"),
    (["--schedule", "fixed-linear", "--gamma-min", "5", "--gamma-max", "-13.3", "--T", "20"],
     "gamma_min = 5.0 >= gamma_max = -13.3"),
    (["--schedule", "learned-scalar", "--T", "0", "--estimator", "continuous", "--schedule-objective", "variance"],
     "--schedule-objective variance with schedule 'learned-scalar', which has no interior"),
    (["--schedule", "learned-net", "--T", "20", "--schedule-objective", "variance"],
     "--schedule-objective variance with T = 20"),
    (["--schedule", "learned-net", "--T", "0", "--estimator", "continuous", "--time-input", "step"],
     "--time-input step labels the net by the chain's steps"),
    (["--schedule", "learned-net", "--T", "0", "--estimator", "continuous", "--variance", "posterior"],
     "variance 'posterior' with T = 0"),
    (["--schedule", "interpolated-cosine", "--T", "0", "--estimator", "continuous"],
     "schedule 'interpolated-cosine' reads a NoiseSchedule at its T steps"),
    (["--schedule", "interpolated-linear", "--T", "20", "--gamma-max", "3"], "--gamma-max with schedule"),
    (["--schedule", "learned-net", "--T", "1"], "T = 1; with a γ schedule pass T >= 2"),
    (["--schedule", "learned", "--T", "20"], "unknown schedule 'learned'"),
    (["--schedule", "fixed-linear", "--T", "20", "--time-input", "noise"], "unknown time_input 'noise'"),
    (["--schedule", "learned-net", "--T", "0", "--estimator", "continuous", "--schedule-objective", "kl"],
     "unknown schedule_objective 'kl'"),
    (["--T", "many"], "'many' is not a number of steps"),
], ids=["T0-step-estimator", "inf-trace", "T0-meanfield", "continuous-at-T20", "T0-noise-schedule", "gamma-with-linear",
        "reversed-endpoints", "variance-no-interior", "variance-finite-T", "step-input-T0", "posterior-T0",
        "interpolated-T0", "interpolated-endpoints", "T1", "unknown-schedule", "unknown-time-input",
        "unknown-objective", "T-not-a-number"])
def test_bad_train_combinations_are_one_line_each(tmp_path, capsys, flags, match):
    err = error_line(capsys, [*TRAIN, *flags, "--run-dir", tmp_path / "r"])
    assert match in err, err
    assert not (tmp_path / "r").exists()


def test_bad_evaluate_and_sample_flags_on_gamma_runs_are_one_line_each(continuous_run, linear_and_its_gamma, capsys):
    _, gamma = linear_and_its_gamma
    for argv, match in [
        (["evaluate", continuous_run, "--bound", "full"], "--bound full on a run in continuous time"),
        (["evaluate", continuous_run, "--full-steps", "5"], "--full-steps 5 on a run in continuous time"),
        (["evaluate", continuous_run, "--fit-variance", "8"], "--fit-variance 8 on a run in continuous time"),
        (["evaluate", continuous_run, "--likelihood", "ode", "--time-map", "grid"], "time map 'grid' with a γ-schedule"),
        (["evaluate", continuous_run, "--likelihood", "ode", "--dequantization", "decoder", "--eps", "0.1"],
         "pass --eps 0"),
        (["evaluate", gamma, "--strata", "3"], "--strata given without --bound estimate"),
        (["sample", continuous_run, "--steps", "1"], "--steps 1: the chain of a γ schedule has K >= 2 steps"),
        (["sample", gamma, "--steps", "5"], "--steps 5 on a γ-schedule model whose net is conditioned on its 10 step"),
        (["evaluate", continuous_run, "--backend", "numpyro"], "evaluates and samples on --backend pyro"),
    ]:
        err = error_line(capsys, argv)
        assert match in err, err


def test_the_studys_race_refuses_continuous_time_estimators():
    """The study's models are NoiseSchedule chains: its race takes the estimators of steps only."""
    from ppl_diffusion.study.estimators import check_estimators

    assert check_estimators(["stochastic-kl-is", "trace"], trainable=True) == ("stochastic-kl-is", "trace")
    with pytest.raises(ValueError, match="unknown race \\(training\\) estimator 'continuous-is'; choose from trace"):
        check_estimators(["stochastic-kl", "continuous-is"], trainable=True)
