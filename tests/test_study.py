"""The estimator study: its estimators against exact values, its statistics against independent
computations, and ``ppl-diffusion compare`` end to end on a tiny configuration.

The exact values come from the linear-Gaussian chain (``tests/common.py``): with ε̂ linear in x_t
the ELBO and log p(x_0) are known in closed form.
"""

import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from pyro.infer import RenyiELBO

from ppl_diffusion import GaussianDiffusion, NoiseSchedule
from ppl_diffusion.cli import main
from ppl_diffusion.infer import LowDiscrepancyTimesteps, StochasticTimestepELBO
from ppl_diffusion.study import STUDY_ESTIMATORS, make_study_estimator, measure, per_t_moments, time_to_reach
from ppl_diffusion.study.estimators import CONTINUOUS
from ppl_diffusion.study.fixed import ESS_RANGE, RunningMoments, ess_flag, independent_ess, pooled_agreement
from ppl_diffusion.study.race import budgets, speedups

from .common import (Z, LinearDenoiser, linear_gaussian_elbo, linear_gaussian_log_marginal, mean_se,
                     optimal_linear_coefficients)

T = 8


def linear_gaussian(batch=4, seed=0, shrink=0.7):
    """A linear-Gaussian diffusion at a deliberately imperfect θ (a shrunk optimal denoiser), its batch,
    and the exact per-example ELBO and log p(x_0)."""
    s = NoiseSchedule.linear(T, beta_start=0.02, beta_end=0.4)
    m, s2 = np.array([0.3, -0.2]), np.array([0.5, 0.8])
    a, b = optimal_linear_coefficients(s, m, s2)
    a = a * shrink
    d = GaussianDiffusion(schedule=s, denoiser=LinearDenoiser(T, 2, a, b), event_shape=(2,))
    rng = np.random.default_rng(seed)
    x0 = rng.normal(m, np.sqrt(s2), (batch, 2))
    elbo, _ = linear_gaussian_elbo(s, a, b, d.p_log_variance, x0)
    logp = linear_gaussian_log_marginal(s, a, b, d.p_log_variance, x0)
    return d, torch.tensor(x0), elbo, logp


# ---------------------------------------------------------------------------------------- fixed θ
def test_every_unbiased_estimator_centres_on_the_exact_elbo():
    d, x0, elbo, _ = linear_gaussian()
    x0 = x0.repeat(50, 1)  # 200 examples, 4 distinct: the same per-example ELBO, estimated more precisely
    rows, R = [], 150
    for k, name in enumerate(n for n in STUDY_ESTIMATORS if n != "iwae" and n not in CONTINUOUS):  # a chain's
        row, idata = measure(make_study_estimator(name, d), x0, R, seed=k)
        rows.append(row)
        # The replicates are independent draws: MCSE = sd / √R exactly (sd with ddof = 1, computed here apart);
        # arviz's ESS is only a diagnostic, within the range independent draws give.
        draws = [float(v) for v in idata.posterior["elbo"].values.reshape(-1)]
        assert row.elbo_mcse == pytest.approx(statistics.stdev(draws) / math.sqrt(R), rel=1e-12)
        assert row.elbo_sd == pytest.approx(statistics.stdev(draws), rel=1e-12)
        assert ess_flag(row.elbo_ess, R) is None, f"{name}: replicates should be independent, ESS {row.elbo_ess}"
        assert abs(row.elbo_mean - elbo.mean()) <= Z * row.elbo_mcse, (name, row.elbo_mean, row.elbo_mcse, elbo.mean())
        assert row.elbo_mcse < 0.05 * abs(elbo.mean()), f"{name}: too noisy to test"
        assert idata.posterior["elbo"].size == R and idata.sample_stats["loss_seconds"].size == R
        assert row.grad_total_variance > 0 and row.loss_seconds > 0 and row.grad_seconds > 0
    agree = pooled_agreement(rows)
    assert agree["p_value"] > 1e-4, agree
    by = {r.estimator: r for r in rows}
    # Given t and x_t the Monte-Carlo step term is the analytic one plus zero-mean noise (Rao–Blackwell).
    # (Not so for the full chain: near the optimum Trace_ELBO's log-weight is nearly constant, see the study.)
    assert by["stochastic-kl"].elbo_sd <= by["stochastic-mc"].elbo_sd * 1.2


def test_the_ess_flag_is_rare_for_independent_draws_and_says_which_way():
    """The rule behind ESS_RANGE, rechecked on fewer simulations than its 10,000: arviz's ESS of R independent
    draws leaves [R/4, 2R] rarely (0.21 % at R = 40, 0.1 % at R = 200)."""
    for R, sims in ((40, 1000), (200, 400)):
        ratio = independent_ess(R, sims, seed=R)
        outside = np.mean((ratio < ESS_RANGE[0]) | (ratio > ESS_RANGE[1]))
        assert outside < 0.01, (R, outside, np.quantile(ratio, [0, 1]))
        assert 0.9 < np.median(ratio) < 1.3  # ≈ R, as it should be
    assert ess_flag(0.6 * 40, 40) is None and ess_flag(1.6 * 40, 40) is None
    assert ess_flag(9, 40).startswith("ESS 9 < R/4 = 10: the replicates look correlated")
    assert ess_flag(401, 200).startswith("ESS 401 > 2R = 400")


def test_iwae_lies_between_the_elbo_and_log_likelihood_and_tightens_with_k():
    d, x0, elbo, logp = linear_gaussian(batch=2, shrink=0.3)
    assert logp.mean() - elbo.mean() > 0.2  # a gap worth closing

    def iwae(k, reps=300):
        loss = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
        return mean_se([-loss.loss(d.model, d.guide, x0) / len(x0) for _ in range(reps)])

    k2, k32 = iwae(2), iwae(32)
    for m, se in (k2, k32):
        assert elbo.mean() - Z * se <= m <= logp.mean() + Z * se
    # Per example: K particles close a clear part of the gap (a batch-joint weight would not, at B = 2 already).
    assert k32[0] - k2[0] > Z * math.hypot(k2[1], k32[1])
    assert k32[0] - elbo.mean() > 0.5 * (logp.mean() - elbo.mean())


def test_running_moments_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 7)) * np.arange(1, 8) + 3.0
    mom = RunningMoments(7)
    for row in x:
        mom.add(torch.tensor(row))
    np.testing.assert_allclose(mom.mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(mom.variance.numpy(), x.var(0, ddof=1), rtol=1e-10)
    assert mom.total_variance() == pytest.approx(x.var(0, ddof=1).sum(), rel=1e-10)
    assert mom.mean_norm_sq() == pytest.approx((x.mean(0) ** 2).sum() - x.var(0, ddof=1).sum() / 50, rel=1e-10)


def test_running_moments_merge_is_the_moments_of_all():
    """Moments fed to separate accumulators (processes) and merged equal those of one accumulator."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(23, 5)) * np.arange(1, 6) - 1.0
    parts = [RunningMoments(5) for _ in range(3)]
    for i, row in enumerate(x):
        parts[min(i // 8, 2)].add(torch.tensor(row))
    merged = RunningMoments(5).merge(parts[0]).merge(parts[1]).merge(parts[2]).merge(RunningMoments(5))
    assert merged.count == 23
    np.testing.assert_allclose(merged.mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.variance.numpy(), x.var(0, ddof=1), rtol=1e-10)


@pytest.mark.parametrize("name", ["meanfield", "stochastic-kl-is"])
def test_replicate_draws_depend_on_seed_and_index_alone(name):
    """measure's replicate r is the estimator reseeded with seed_of(seed, r, phase): the same draw in any order
    or subset (so processes can share the replicates), different for different r."""
    from ppl_diffusion import noise
    from ppl_diffusion.study import make_study_estimator, measure

    d, x0, _, _ = linear_gaussian()
    est = make_study_estimator(name, d)
    row, idata = measure(est, x0, 6, seed=3)
    draws = idata.posterior["elbo"].values.reshape(-1)
    for r in (4, 1):
        est.reseed(noise.seed_of(3, r, 0))
        assert est.estimate(x0) / len(x0) == pytest.approx(draws[r], rel=1e-12)
    assert len(set(draws.tolist())) == 6
    est.reseed(noise.seed_of(3, 2, 1))
    _, g = est.gradient(x0)
    assert g.norm().item() / len(x0) == pytest.approx(idata.posterior["grad_norm"].values.reshape(-1)[2], rel=1e-9)


# ---------------------------------------------------------------------------------------- low-discrepancy t
def test_low_discrepancy_steps_are_uniform_and_stratified():
    s = LowDiscrepancyTimesteps(12)
    torch.manual_seed(0)
    t, w = s.sample(12)
    assert sorted(t.tolist()) == list(range(1, 13))  # n = T: every step exactly once
    assert torch.all(w == 12.0)
    draws = torch.stack([s.sample(4)[0] for _ in range(6000)])  # [6000 x 4]
    strata = (draws - 1) // 3  # n = 4 strata of width T / n = 3
    assert all(len(set(row)) == 4 for row in strata.tolist())
    for i in range(4):  # each position on its own is uniform on 1..12
        counts = torch.bincount(draws[:, i] - 1, minlength=12).double()
        se = math.sqrt(6000 * (1 / 12) * (11 / 12))
        assert (counts - 500).abs().max() <= Z * se, counts


def test_low_discrepancy_t_removes_between_t_variance():
    d, x0, elbo, _ = linear_gaussian(batch=T)
    x0 = x0.repeat(4, 1)  # 32 examples: 4 per stratum

    def spread(timesteps):
        est = StochasticTimestepELBO(timesteps=timesteps)
        v = [est.loss(d.model, d.guide, x0) for _ in range(400)]
        return np.var(v, ddof=1)

    # F-test at 5 sigma: log of a variance ratio of 400 draws each has sd ≈ sqrt(2/399 · 2) ≈ 0.1 (more with
    # heavy tails); the measured reduction is far larger.
    assert spread("low-discrepancy") < 0.5 * spread("uniform")


# ---------------------------------------------------------------------------------------- per t
@pytest.mark.parametrize("kind", ["kl", "mc"])
def test_per_t_moments_predict_the_measured_variance(kind):
    d, x0, _, _ = linear_gaussian()
    pt = per_t_moments(d, x0, repeats=5000, seed=1)  # the prediction's own noise: ~1%, against ~5% below
    assert pt.full_grid
    pred = pt.predicted_variance(kind)
    assert pred["within_t"] > 0 and pred["total"] > 0
    est = StochasticTimestepELBO(step_term=kind)
    v = np.array([-est.loss(d.model, d.guide, x0) / len(x0) for _ in range(1500)])
    var = v.var(ddof=1)
    m4 = ((v - v.mean()) ** 4).mean()
    se = math.sqrt(max(m4 - var ** 2, 0) / len(v))  # standard error of the sample variance
    assert abs(var - pred["total"]) <= Z * se, (var, se, pred)
    assert se < 0.2 * var  # power


def test_per_t_grid_and_importance_probabilities():
    d, x0, _, _ = linear_gaussian()
    pt = per_t_moments(d, x0, steps=4, repeats=4)
    assert not pt.full_grid and pt.t[0] == 1 and pt.t[-1] == T
    with pytest.raises(ValueError, match="every t"):
        pt.predicted_variance("kl")
    full = per_t_moments(d, x0, repeats=50)
    p = full.importance_probabilities()
    assert p.shape == (T,) and p.sum() == pytest.approx(1.0)
    # The ideal importance distribution never predicts more variance than uniform t.
    assert full.predicted_variance("kl", p)["total"] <= full.predicted_variance("kl")["total"] * 1.05


# ---------------------------------------------------------------------------------------- race bookkeeping
def test_time_to_reach_interpolates_the_first_crossing():
    rows = [{"estimator": "a", "point": k, "train_seconds": s, "step": n, "bpd": b}
            for k, (s, n, b) in enumerate([(0, 0, 10.0), (1, 10, 8.0), (2, 20, 4.0), (4, 40, 5.0)])]
    rows += [{"estimator": "b", "point": k, "train_seconds": s, "step": n, "bpd": b}
             for k, (s, n, b) in enumerate([(0, 0, 10.0), (8, 5, 9.0), (16, 10, 7.0)])]
    hit = time_to_reach(rows, "a", 6.0)  # between (1 s, 8.0) and (2 s, 4.0): halfway
    assert hit == {"seconds": 1.5, "step": 15.0, "bound": "exact"}
    # Already reached at the first trained point: that point's time is an upper bound, not interpolated.
    assert time_to_reach(rows, "a", 9.0) == {"seconds": 1.0, "step": 10.0, "bound": "at most"}
    assert time_to_reach(rows, "a", 3.0) == {"seconds": None, "step": None, "bound": "not reached"}
    s = speedups(rows, "a", "b")  # b's final 7.0: b at 16 s, a at 1 + (8 − 7)/4 = 1.25 s
    assert s["target_bpd"] == 7.0 and s["ratio"] == pytest.approx(16 / 1.25) and s["ratio_kind"] == "measured"
    rows[1]["bpd"] = 6.5  # now a is below 7.0 at its first point: the ratio is a lower bound
    s = speedups(rows, "a", "b")
    assert s["ratio"] == pytest.approx(16 / 1.0) and s["ratio_kind"] == "at least"
    assert budgets(8, 4) == [1.0, 2.0, 4.0, 8.0]


# ---------------------------------------------------------------------------------------- end to end
TINY = ["--data", "eight_gaussians", "--T", "10", "--batch-size", "8", "--replicates", "8",
        "--full-chain-replicates", "8", "--iwae-particles", "2", "--eval-examples", "16", "--threads", "1",
        "--no-progress"]


def test_compare_writes_the_whole_report(tmp_path, capsys):
    import arviz as az

    out = tmp_path / "study"
    assert main(["compare", "--out", str(out), *TINY, "--race-seconds", "1", "--race-points", "2",
                 "--race-estimators", "trace,stochastic-mc,stochastic-kl,stochastic-kl-is", "--race-target", "50"]) == 0
    for f in ("report.md", "study.json", "fixed_theta.csv", "per_t.csv", "race.csv", "race_targets.csv",
              "fixed_theta.png", "per_t.png", "race.png"):
        assert (out / f).stat().st_size > 0, f
    study = json.loads((out / "study.json").read_text())
    names = [r["estimator"] for r in study["fixed_theta"]["rows"]]
    assert names == ["trace", "meanfield", "stochastic-kl", "stochastic-kl-is", "stochastic-kl-ld", "stochastic-mc",
                     "iwae"]
    assert study["fixed_theta"]["rows"][-1]["bound"] == "IWAE-2"
    assert "iwae" not in study["fixed_theta"]["agreement"]["estimators"]  # a different bound: never pooled
    assert set(study["per_t"]["predicted"]) >= {"stochastic-kl", "stochastic-mc", "stochastic-kl-is"}
    idata = az.from_netcdf(out / "draws" / "stochastic-kl.nc")
    assert idata.posterior["elbo"].shape == (2, 4) and idata.posterior["grad_proj"].shape == (2, 4, 8)
    race = study["race"]
    assert [r["point"] for r in race["rows"] if r["estimator"] == "trace"] == [0, 1, 2]
    assert {t["label"] for t in race["targets"]} == {"final of trace", "final of stochastic-mc", "stated target"}
    assert len(race["speedups"]) == 4
    report = (out / "report.md").read_text()
    for heading in ("## At a fixed θ", "Reported apart", "## Per t", "## Training race", "Speed-ups"):
        assert heading in report
    assert "report.md" in capsys.readouterr().out
    # Everything presented is rendered from study.json alone.
    from ppl_diffusion.study.report import render

    before = (out / "report.md").read_text()
    (out / "report.md").unlink()
    (out / "race.png").unlink()
    render(study, out)
    assert (out / "report.md").read_text() == before and (out / "race.png").stat().st_size > 0
    # What derives from stored draws is re-derived from them.
    from ppl_diffusion.study.report import refresh

    kept = [r.pop("elbo_var_se") for r in study["fixed_theta"]["rows"]]
    mcse, agreement = [r["elbo_mcse"] for r in study["fixed_theta"]["rows"]], study["fixed_theta"]["agreement"]
    for r in study["fixed_theta"]["rows"]:
        r["elbo_mcse"] = 123.0  # e.g. a study written when the MCSE came from arviz's ESS
    study["fixed_theta"]["agreement"] = {}
    refresh(study, out)
    assert [r["elbo_var_se"] for r in study["fixed_theta"]["rows"]] == pytest.approx(kept, rel=1e-9)
    assert [r["elbo_mcse"] for r in study["fixed_theta"]["rows"]] == pytest.approx(mcse, rel=1e-12)
    again = study["fixed_theta"]["agreement"]
    assert again["estimators"] == agreement["estimators"] and again["z"] == pytest.approx(agreement["z"], rel=1e-9)
    assert (again["chi2"], again["p_value"]) == pytest.approx((agreement["chi2"], agreement["p_value"]), rel=1e-9)


def test_compare_on_a_trained_run_uses_its_weights(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", "eight_gaussians", "--net", "mlp", "--T", "10", "--steps", "3",
                 "--batch-size", "8", "--run-dir", str(run), "--no-progress"]) == 0
    out = tmp_path / "study"
    assert main(["compare", str(run), "--out", str(out), "--estimators", "meanfield,stochastic-kl",
                 *TINY[TINY.index("--batch-size"):]]) == 0
    study = json.loads((out / "study.json").read_text())
    assert "EMA weights of" in study["meta"]["theta"] and "step 3" in study["meta"]["theta"]
    assert "race" not in study and "## Training race" not in (out / "report.md").read_text()


@pytest.mark.parametrize("flags, words", [
    (["--estimators", "trace,nope"], ["'nope'", "choose from"]),
    (["--replicates", "2"], ["replicates = 2", "at least 4"]),
    (["--race-seconds", "5", "--race-estimators", "iwae"], ["'iwae'", "race"]),
    (["--iwae-particles", "1"], ["iwae_particles = 1", "--iwae-particles"]),
    (["--estimators", "continuous"], ["'continuous'", "T = 5"]),
    (["--schedule-steps", "-1"], ["schedule_steps = -1", "--schedule-steps"]),
])
def test_compare_bad_input_is_one_line(tmp_path, capsys, flags, words):
    assert main(["compare", "--out", str(tmp_path / "x"), "--data", "eight_gaussians", "--T", "5", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ppl-diffusion: error:"), err
    for w in words:
        assert w in err, err


def test_compare_race_under_torchrun_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    from ppl_diffusion import distributed

    monkeypatch.setattr(distributed, "_WORLD", distributed.World(rank=0, world_size=2, backend="gloo"))
    monkeypatch.setattr(distributed, "init", lambda *a, **k: distributed._WORLD)
    monkeypatch.setattr(distributed, "shutdown", lambda: None)
    assert main(["compare", "--out", str(tmp_path / "x"), *TINY, "--race-seconds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--race-seconds 0" in err and "torchrun" in err


@pytest.mark.slow
def test_compare_under_torchrun_equals_one_process(tmp_path):
    """The fixed-θ replicates split over 2 gloo processes (8 = 4 + 4, and 5 = 3 + 2 for the full chain) give
    the draws and gradient moments of 1 process; rank 0 alone writes."""
    import os
    import subprocess
    import sys

    import arviz as az

    args = ["compare", *TINY, "--estimators", "meanfield,stochastic-kl-is", "--full-chain-replicates", "5",
            "--race-seconds", "0"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "ppl_diffusion", *args, "--out", str(tmp_path / "two"), "--dist-backend", "gloo"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    one, two = (json.loads((tmp_path / k / "study.json").read_text())["fixed_theta"]["rows"] for k in ("one", "two"))
    for a, b in zip(one, two):
        for key in ("elbo_mean", "elbo_sd", "grad_total_variance", "grad_mean_norm_sq", "replicates"):
            assert b[key] == pytest.approx(a[key], rel=1e-9), (a["estimator"], key)
    for name in ("meanfield", "stochastic-kl-is"):
        da, db = (az.from_netcdf(tmp_path / k / "draws" / f"{name}.nc").posterior for k in ("one", "two"))
        np.testing.assert_array_equal(db["elbo"].values, da["elbo"].values)
        np.testing.assert_allclose(db["grad_proj"].values, da["grad_proj"].values, rtol=1e-12)


# ---------------------------------------------------------------------------------------- continuous time
def _oracle_continuous(features=16):
    """A model in continuous time at a fixed θ: the exact ε̂ of 2-D Gaussian data (a scale parameter at 1 for the
    gradients), VDM's monotone net schedule from −10 to 8 with fixed endpoints; its data and a batch."""
    from ppl_diffusion.gamma import MonotoneNetGamma

    from .common import GammaGaussianOracle

    m, s2, lims = np.array([0.5, -0.3]), np.array([0.01, 0.2]), (-10.0, 8.0)
    torch.manual_seed(0)
    schedule = MonotoneNetGamma(*lims, learn_endpoints=False, features=features).double()
    d = GaussianDiffusion(schedule=schedule, denoiser=GammaGaussianOracle(m, s2, lims), event_shape=(2,), T=0,
                          gamma_range=lims)
    rng = np.random.default_rng(8)

    def data(n):
        return torch.from_numpy(m + np.sqrt(s2) * rng.standard_normal((n, 2)))

    return d, data(8), data(512), (m, s2, lims), data


def test_continuous_estimators_centre_on_the_closed_form_elbo():
    """Every continuous-time study estimator (the prior term analytic or Monte Carlo, t uniform, low-discrepancy or
    importance-sampled) is unbiased for the exact Gaussian case's ELBO at T = ∞, within Z MCSEs."""
    from .common import gaussian_continuous_terms

    d, _, _, (m, s2, lims), data = _oracle_continuous()
    x0 = data(32)  # 32 examples: the importance sampler's history (100 bins) fills in a few calls
    exact = -sum(gaussian_continuous_terms(m, s2, x0.numpy(), *lims).values()).mean()
    rows = []
    for k, name in enumerate(CONTINUOUS):
        row, _ = measure(make_study_estimator(name, d), x0, 50, seed=k)
        rows.append(row)
        assert row.family == "continuous time" and row.grad_total_variance > 0
        assert abs(row.elbo_mean - exact) <= Z * row.elbo_mcse, (name, row.elbo_mean, row.elbo_mcse, exact)
    assert pooled_agreement(rows)["dof"] == 3
    # The prior's KL in closed form has no variance; one draw of x_T adds some.
    var = {r.estimator: r.elbo_sd ** 2 for r in rows}
    assert var["continuous-mc"] > var["continuous"] - Z * math.hypot(rows[0].elbo_var_se, rows[3].elbo_var_se)


@pytest.mark.slow  # ~20 s of CPU (70 s on a loaded machine); test_continuous_elbo checks the variance objective fast
def test_learned_schedule_row_lowers_the_variance_at_the_same_elbo():
    """The learned-schedule row on the toy: with the interior trained for variance (θ and the endpoints fixed) the
    uniform-t estimator's variance falls far beyond its SE, and the ELBO's mean does not move."""
    from ppl_diffusion.study.schedule import learned_schedule_rows

    d, _, train, _, data = _oracle_continuous()
    x0 = data(32)  # a batch mean of 32 examples: near-normal draws, so the variances' SEs are near √(2/R)
    before = [p.detach().clone() for p in d.parameters()]
    section = learned_schedule_rows(d, x0, train, estimators=("continuous",), replicates=400, steps=80, lr=0.1,
                                    batch_size=64, seed=0)
    assert [(r["stage"], r["estimator"]) for r in section["rows"]] == [("initial", "continuous"),
                                                                       ("trained", "continuous")]
    (c,) = section["comparison"]
    assert c["var_trained"] < c["var_initial"] - Z * math.hypot(c["var_initial_se"], c["var_trained_se"]), c
    assert c["ratio"] < 0.7 and abs(c["z"]) < Z, c
    names = [n for n, _ in d.named_parameters()]
    moved = {n for n, p, q in zip(names, d.parameters(), before) if not torch.equal(p.detach(), q)}
    assert moved and all(n.startswith("schedule.l") for n in moved), moved  # the interior alone


def test_compare_a_continuous_time_run_with_the_learned_schedule_row(tmp_path, capsys):
    """compare on a learned-net run at T = 0: the continuous-time estimators by default, no per-t picture, and the
    learned-schedule row (tiny settings: that it runs and reports, not what it finds; the toy test above does)."""
    run = tmp_path / "run"
    assert main(["train", "--data", "eight_gaussians", "--net", "mlp", "--width", "16", "--depth", "1",
                 "--schedule", "learned-net", "--T", "0", "--estimator", "continuous", "--steps", "3",
                 "--batch-size", "8", "--run-dir", str(run), "--no-progress"]) == 0
    out = tmp_path / "study"
    assert main(["compare", str(run), "--out", str(out), "--estimators", "continuous,continuous-ld,continuous-mc",
                 "--schedule-steps", "2", *TINY[TINY.index("--batch-size"):]]) == 0
    study = json.loads((out / "study.json").read_text())
    assert [r["estimator"] for r in study["fixed_theta"]["rows"]] == ["continuous", "continuous-ld", "continuous-mc"]
    assert study["meta"]["T"] == 0 and "per_t" not in study and "race" not in study
    section = study["learned_schedule"]
    assert [c["estimator"] for c in section["comparison"]] == ["continuous", "continuous-ld", "continuous-mc"]
    assert section["steps"] == 2 and len(section["losses"]) == 2
    assert all(math.isfinite(c["ratio"]) and c["var_initial"] > 0 for c in section["comparison"])
    assert (out / "draws" / "schedule-trained-continuous.nc").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "T = ∞" in report and "## Learned schedule" in report and "## Per t" not in report
    assert "Ratios are to `continuous`" in report
    files = [f for f in re.findall(r"`([^`]+)`", report.split("## Files")[1]) if not f.startswith("az.")]
    assert "race.csv" not in files and all(list(out.glob(name)) for name in files), files  # named ones exist
    capsys.readouterr()
    # A chain's estimators on it, a race, or the row on a model without an interior: one line each.
    for flags, words in ((["--estimators", "stochastic-kl"], "continuous time (T = 0)"),
                         (["--race-seconds", "1"], "--race-seconds 0")):
        assert main(["compare", str(run), "--out", str(tmp_path / "x"), *flags, *TINY[TINY.index("--batch-size"):]]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert main(["compare", "--out", str(tmp_path / "y"), *TINY, "--schedule-steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--schedule learned-net --T 0" in err, err
