"""Training, evaluation and sampling on the NumPyro backend: exact resume, the shared checkpoint format (a run
trained on one backend evaluates, samples and resumes on the other), the optimizer and the timestep samplers
against their PyTorch twins."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import ppl_diffusion.numpyro as npd  # noqa: E402
from ppl_diffusion.checkpoint import (checkpoint_path, latest_checkpoint, list_checkpoints,  # noqa: E402
                                      load_checkpoint)
from ppl_diffusion.cli import main  # noqa: E402
from ppl_diffusion.evaluate import evaluate_run  # noqa: E402
from ppl_diffusion.infer import timesteps as torch_timesteps  # noqa: E402
from ppl_diffusion.numpyro import timesteps as jax_timesteps  # noqa: E402
from ppl_diffusion.numpyro.train import NumPyroTrainer, clip_by_global_norm  # noqa: E402
from ppl_diffusion.sampling import sample_run  # noqa: E402
from ppl_diffusion.train import TrainConfig, TrainingDiverged, load_trained, train  # noqa: E402

from .test_train import SCRIPT, TWO_THREADS, assert_same_best, assert_same_training_state, final_state, metric_rows  # noqa: E402,E501

TOY = dict(data="eight_gaussians", net="mlp", T=20, batch_size=32, lr=1e-3, warmup_steps=3, log_every=1,
           backend="numpyro")


def toy(**kw) -> TrainConfig:
    return TrainConfig(**{**TOY, **kw})


def assert_same_jax_keys(a: dict, b: dict) -> None:
    ja, jb = a["rng"]["numpyro"], b["rng"]["numpyro"]
    assert torch.equal(ja["key"], jb["key"]) and torch.equal(ja["svi"], jb["svi"])
    assert all(torch.equal(x, y) for x, y in zip(ja["dropout"], jb["dropout"], strict=True))


# ---------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("estimator", ["stochastic-kl-is", "trace"])
def test_resume_is_exact(tmp_path, estimator):
    full = train(toy(estimator=estimator, steps=8, checkpoint_every=2), tmp_path / "full", progress=False)
    part = tmp_path / "part"
    train(toy(estimator=estimator, steps=5, checkpoint_every=2), part, progress=False)
    resumed = train(toy(estimator=estimator, steps=8, checkpoint_every=2), part, resume=True, progress=False)
    assert full.step == resumed.step == 8
    a, b = final_state(tmp_path / "full"), final_state(part)
    assert_same_training_state(a, b)
    assert_same_jax_keys(a, b)
    assert metric_rows(tmp_path / "full") == metric_rows(part)
    assert a["optimizer"]["state"][0]["step"].item() == 8.0  # torch.optim.Adam's format
    if estimator == "stochastic-kl-is":
        counts = b["sampler"]["loss_counts"]  # the importance sampler's history took part (capped at 10 per t)
        assert counts.sum() > 0 and counts.max() <= 10


def test_validation_keeps_the_best_weights_and_resumes_exactly(tmp_path):
    # The trainer is shared with the Pyro backend: the held-out examples, the estimate (of the EMA weights, in
    # the checkpoint's torch format) and best.pt are the same code on either backend.
    from ppl_diffusion.data import load_dataset
    from ppl_diffusion.infer.estimate import estimate_bound, plan_uniform
    from ppl_diffusion.train.validation import VALIDATION_PLAN, holdout_split

    config = lambda steps: toy(steps=steps, checkpoint_every=2, keep_checkpoints=10, val_examples=16)  # noqa: E731
    full = train(config(6), tmp_path / "full", progress=False)
    part = tmp_path / "part"
    train(config(4), part, progress=False)
    train(config(6), part, resume=True, progress=False)
    assert_same_training_state(final_state(tmp_path / "full"), final_state(part))
    assert_same_best(tmp_path / "full", part)
    history = final_state(part)["validation"]["history"]
    assert [h["step"] for h in history] == [2, 4, 6] and full.best_step in (2, 4, 6)
    data, (_, held) = load_dataset("eight_gaussians"), holdout_split(10_000, 16, seed=0)
    for h in history:
        ema = load_trained(tmp_path / "full" / f"ckpt-{h['step']:08d}.pt")
        est = estimate_bound(ema, data.train[held], plan_uniform(20, **VALIDATION_PLAN), seed=0, indices=held)
        assert est.bits_per_dim().mean().item() == pytest.approx(h["val_bpd"], rel=1e-6, abs=0)
@pytest.mark.slow  # three processes that each start JAX (~15 s of CPU each on 2 cores)
def test_stopped_and_resumed_in_new_processes_is_the_uninterrupted_run_of_another(tmp_path):
    """The 8-Gaussians toy trained to step 5 in one new process and resumed to 8 in another ends bit for bit as
    the uninterrupted run in a third (every tensor of the state, the JAX keys, the metrics). The processes share
    the session's compilation cache (conftest.py): the same executables, compiled once."""
    env = {**TWO_THREADS, "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "",
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    cmd = [sys.executable, "-c", SCRIPT]
    reference = subprocess.Popen([*cmd, json.dumps(toy(steps=8, checkpoint_every=2).to_dict()),
                                  str(tmp_path / "reference")], env=env, stderr=subprocess.PIPE, text=True)
    for steps in (5, 8):
        config = json.dumps(toy(steps=steps, checkpoint_every=2).to_dict())
        done = subprocess.run([*cmd, config, str(tmp_path / "part")], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-2000:]
    a, b = final_state(tmp_path / "reference"), final_state(tmp_path / "part")
    assert a["step"] == 8 and checkpoint_path(tmp_path / "part", 5).is_file()  # stopped at 5, resumed from there
    assert_same_training_state(a, b)
    assert metric_rows(tmp_path / "reference") == metric_rows(tmp_path / "part")


def test_initial_weights_and_batches_are_the_pyro_backends(tmp_path):
    """Same seed: the same initial net (converted) and the same batch order as the Pyro backend; one step of
    each from there lands close (different t and noise, same data)."""
    runs = {b: train(toy(steps=1, backend=b, estimator="stochastic-kl"), tmp_path / b, progress=False)
            for b in ("pyro", "numpyro")}
    a, b = final_state(tmp_path / "pyro"), final_state(tmp_path / "numpyro")
    assert torch.equal(a["batches"]["perm"], b["batches"]["perm"]) and a["batches"]["pos"] == b["batches"]["pos"]
    assert list(a["model"]) == list(b["model"])
    for k in a["model"]:  # one Adam step of lr / 3 (warm-up) moves each weight by at most ~lr / 3
        assert torch.allclose(a["model"][k], b["model"][k], atol=2.1 * 1e-3 / 3), k
    assert runs["numpyro"].ema.keys() == runs["pyro"].ema.keys()


def test_clip_and_adam_match_torch():
    """optax chain(clip_by_global_norm, adam with the warm-up schedule) = clip_grad_norm_ + torch.optim.Adam."""
    rng = np.random.default_rng(0)
    shapes = {"a": (3, 4), "b": (5,)}
    p0 = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads = [{k: (rng.normal(size=s) * scale).astype(np.float32) for k, s in shapes.items()}
             for scale in (0.1, 10.0, 3.0, 0.01)]
    lr, warmup, max_norm = 1e-2, 3, 1.0
    tparams = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in p0.items()}
    opt = torch.optim.Adam(tparams.values(), lr=lr)
    tx = optax.chain(clip_by_global_norm(max_norm), optax.adam(lambda c: lr * jnp.minimum(1.0, (c + 1) / warmup)))
    jparams = {k: jnp.asarray(v) for k, v in p0.items()}
    state = tx.init(jparams)
    for step, g in enumerate(grads, start=1):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / warmup)
        for k, p in tparams.items():
            p.grad = torch.from_numpy(g[k].copy())
        norm = torch.nn.utils.clip_grad_norm_(tparams.values(), max_norm)
        opt.step()
        updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, jparams)
        jparams = optax.apply_updates(jparams, updates)
        assert float(state[0].norm) == pytest.approx(norm.item(), rel=1e-6)
        for k in shapes:
            np.testing.assert_allclose(np.asarray(jparams[k]), tparams[k].detach().numpy(), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------- shared checkpoints
def test_a_run_of_either_backend_evaluates_samples_and_resumes_on_the_other(tmp_path):
    pyro_run, jax_run = tmp_path / "pyro", tmp_path / "numpyro"
    digits = dict(data="digits", T=10, batch_size=16, checkpoint_every=3, estimator="stochastic-kl-is")
    train(toy(steps=3, backend="pyro", **digits), pyro_run, progress=False)
    train(toy(steps=3, **digits), jax_run, progress=False)
    # Either run loads on either backend with the same weights.
    for run in (pyro_run, jax_run):
        twin = load_trained(run, backend="numpyro")
        torch_net = load_trained(run).denoiser
        x = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
        t = np.array([1, 3, 7, 10])
        with torch.no_grad():
            want = torch_net(torch.from_numpy(x), torch.from_numpy(t)).numpy()
        np.testing.assert_allclose(np.asarray(twin.denoiser(jnp.asarray(x), jnp.asarray(t))), want, atol=1e-5)
    # The bound on both backends: the same model and the same (counter-based) noise: the same bits/dim (float32).
    results = {b: evaluate_run(jax_run, max_examples=40, fd_samples=50, backend=b, progress=False)
               for b in ("pyro", "numpyro")}
    for key in ("bpd", "bpd_ema"):
        assert results["numpyro"][key] == pytest.approx(results["pyro"][key], rel=1e-4), key
    assert results["numpyro"]["backend"] == "numpyro" and results["numpyro"]["digits_fd_ema"] > 0
    assert json.loads((jax_run / "eval.json").read_text())["backend"] == "numpyro"
    sampled = sample_run(pyro_run, n=10, steps=5, backend="numpyro")
    images = np.load(sampled.npz)["images"]
    assert images.shape == (10, 1, 8, 8) and images.dtype == np.uint8 and sampled.png.exists()
    # Resume across backends: Pyro → NumPyro and NumPyro → Pyro.
    train(toy(steps=5, **digits), pyro_run, resume=True, progress=False)
    train(toy(steps=5, backend="pyro", **digits), jax_run, resume=True, progress=False)
    for run in (pyro_run, jax_run):
        state = final_state(run)
        assert state["step"] == 5 and state["optimizer"]["state"][0]["step"].item() == 5.0
        assert all(torch.isfinite(v).all() for v in state["model"].values())
        assert 5 * 16 - 10 * 10 <= state["sampler"]["loss_counts"].sum() <= 5 * 16


GAMMA = dict(T=0, schedule="learned-net", estimator="continuous-is")  # VDM's learned schedule in continuous time


@pytest.mark.slow  # three runs that each compile (~40-55 s on 2 shared cores)
def test_a_gamma_run_resumes_exactly_and_loads_on_pyro(tmp_path):
    """A learned γ schedule in continuous time trains on the NumPyro backend: its parameters (and EMA, and Adam's
    moments after the denoiser's, the Pyro trainer's order) are the checkpoint's schedule.*, a stopped run resumes bit
    for bit with the importance sampler's history, and the run loads on Pyro as the model whose bound it estimates."""
    from ppl_diffusion.data import load_dataset
    from ppl_diffusion.infer.continuous_bound import estimate_continuous_bound, plan_continuous_uniform

    config = lambda steps: toy(steps=steps, checkpoint_every=2, **GAMMA)  # noqa: E731
    train(config(5), tmp_path / "full", progress=False)
    part = tmp_path / "part"
    train(config(3), part, progress=False)
    train(config(5), part, resume=True, progress=False)
    a, b = final_state(tmp_path / "full"), final_state(part)
    assert_same_training_state(a, b)
    assert_same_jax_keys(a, b)
    assert metric_rows(tmp_path / "full") == metric_rows(part)
    assert a["sampler"]["loss_counts"].sum() > 0 and a["sampler"]["T"] == 0
    pyro_model = load_trained(part)  # the Pyro model, EMA weights
    assert list(a["schedule"]) == list(pyro_model.schedule.state_dict())
    assert any(not torch.equal(a["schedule"][k], a["schedule_ema"][k]) for k in a["schedule"])  # it trained
    assert len(a["optimizer"]["state"]) == len(a["model"]) + len(a["schedule"])
    for k, v in pyro_model.schedule.state_dict().items():
        assert torch.equal(v, a["schedule_ema"][k]), k
    x = load_dataset("eight_gaussians").test[:8]
    est = estimate_continuous_bound(pyro_model, x, plan_continuous_uniform(strata=2, draws=2), seed=0)
    assert torch.isfinite(est.nll).all()


@pytest.mark.slow  # two backends' runs, one compiling (~20 s on 2 shared cores)
def test_a_gamma_runs_first_step_matches_the_pyro_backend(tmp_path):
    """Same seed, both backends: the same initial denoiser and schedule (converted), the same batches; one Adam step
    (lr / 3 in the warm-up) from there moves every weight by at most ~lr / 3 on each, so they land close. (Their t and
    noise differ; the ELBOs' terms and gradients for the same t and noise agree: test_numpyro_gamma.py.)"""
    for b in ("pyro", "numpyro"):
        train(toy(steps=1, backend=b, estimator="continuous", T=0, schedule="learned-net"), tmp_path / b,
              progress=False)
    a, b = final_state(tmp_path / "pyro"), final_state(tmp_path / "numpyro")
    assert torch.equal(a["batches"]["perm"], b["batches"]["perm"])
    for part in ("model", "schedule"):
        assert list(a[part]) == list(b[part])
        for k in a[part]:
            assert torch.allclose(a[part][k], b[part][k], atol=2.1 * 1e-3 / 3), (part, k)


def test_cli_train_evaluate_sample_with_backend_numpyro(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--backend", "numpyro", "--data", "eight_gaussians", "--net", "mlp", "--T", "10",
                 "--steps", "4", "--batch-size", "16", "--run-dir", str(run), "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["backend"] == "numpyro"
    assert main(["evaluate", str(run), "--backend", "numpyro", "--max-examples", "20", "--no-progress"]) == 0
    assert main(["sample", str(run), "--backend", "numpyro", "-n", "8"]) == 0
    assert np.load(run / "samples-ema.npz")["samples"].shape == (8, 2)
    capsys.readouterr()
    assert main(["train", "--backend", "numpyro", "--device", "cuda:0", "--steps", "1", "--run-dir",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "device = 'cuda:0' with backend numpyro" in err
    assert main(["evaluate", str(run), "--backend", "numpyro", "--fit-variance", "10"]) == 2
    assert "runs on the Pyro backend only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error, one line
        main(["train", "--backend", "jax", "--steps", "1", "--run-dir", str(tmp_path / "y")])
    assert exit_.value.code == 2 and "invalid choice: 'jax'" in capsys.readouterr().err


def test_nan_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real = NumPyroTrainer.step
    calls = {"n": 0}

    def step(self, index, lr):
        calls["n"] += 1
        loss, norm = real(self, index, lr)
        return (float("nan"), norm) if calls["n"] == 6 else (loss, norm)

    monkeypatch.setattr(NumPyroTrainer, "step", step)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 6 .*last good one is .*ckpt-00000004\.pt"):
        train(toy(steps=10, checkpoint_every=2), tmp_path, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "ckpt-00000004.pt"
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 4


@pytest.mark.parametrize("estimator", ["meanfield", "stochastic-mc-is", pytest.param("stochastic-kl-ld", marks=pytest.mark.slow),
                                       pytest.param("stochastic-mc", marks=pytest.mark.slow)])
def test_other_estimators_train(estimator, tmp_path):
    result = train(toy(estimator=estimator, steps=3, T=5), tmp_path, progress=False)
    assert result.step == 3 and np.isfinite(result.loss)


# ---------------------------------------------------------------------------------------- timestep samplers
def test_importance_sampler_history_matches_torch():
    T, history = 7, 3
    ts, js = torch_timesteps.ImportanceTimesteps(T, history=history), jax_timesteps.ImportanceTimesteps(T, history=history)
    state = js.init()
    rng = np.random.default_rng(0)
    update = jax.jit(js.update)
    for _ in range(12):  # batches with repeated t, more than `history` of one t in a batch
        t = rng.integers(1, T + 1, size=9)
        losses = rng.exponential(size=9).astype(np.float32)
        ts.update(torch.from_numpy(t), torch.from_numpy(losses.astype(np.float64)))
        state = update(state, jnp.asarray(t), jnp.asarray(losses))
        saved = js.to_torch_state(state)
        assert torch.equal(saved["loss_counts"], ts.loss_counts) and torch.equal(saved["write_pos"], ts.write_pos)
        np.testing.assert_allclose(saved["loss_history"].numpy(), ts.loss_history.numpy(), rtol=1e-7)
    assert ts.warmed_up
    np.testing.assert_allclose(np.asarray(js.probabilities(state)), ts.probabilities().numpy(), rtol=1e-5)
    restored = js.from_torch_state(ts.state_dict())
    np.testing.assert_allclose(np.asarray(restored["loss_history"]), np.asarray(state["loss_history"]))


def test_importance_sampler_draws_from_its_probabilities():
    """Counts of 40 000 draws against P(t): Pearson's chi-square below its 0.999 quantile; weights are 1/P(t)."""
    T, n = 6, 40_000
    sampler = jax_timesteps.ImportanceTimesteps(T, history=1)
    state = sampler.update(sampler.init(), jnp.arange(1, T + 1), jnp.asarray([1.0, 2, 3, 4, 5, 30]))
    p = np.asarray(sampler.probabilities(state), np.float64)
    t, w = sampler.sample(jax.random.PRNGKey(0), state, n)
    counts = np.bincount(np.asarray(t) - 1, minlength=T)
    chi2 = ((counts - n * p) ** 2 / (n * p)).sum()
    assert chi2 < 20.5  # chi-square with 5 degrees of freedom, 0.999 quantile
    np.testing.assert_allclose(np.asarray(w), 1.0 / p[np.asarray(t) - 1], rtol=1e-5)


def test_low_discrepancy_steps_are_stratified_and_uniform():
    T, n = 100, 10
    sampler = jax_timesteps.LowDiscrepancyTimesteps(T)
    draws = np.stack([np.asarray(sampler.sample(jax.random.PRNGKey(i), {}, n)[0]) for i in range(400)])
    assert all(len(np.unique((d - 1) // (T // n))) == n for d in draws)  # one step per stratum of width T/n
    mean, se = draws.mean(), draws.std() / math.sqrt(draws.size / n)  # batches are the independent units
    assert abs(mean - (T + 1) / 2) < 5 * se


# ---------------------------------------------------------------------------------------- ELBO objects
def test_stochastic_elbo_with_given_steps_and_step_losses_in_svi():
    from numpyro.infer import SVI

    net = npd.MLPDenoiser(2, zero_init=False)
    diffusion = npd.GaussianDiffusion(schedule=npd_schedule(), denoiser=net, event_shape=(2,))
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(8, 2)), jnp.float32)
    t, w = jnp.arange(1, 9, dtype=jnp.int32), jnp.full((8,), 10.0)
    svi = SVI(diffusion.step_model, diffusion.step_guide, optax.adam(1e-3), loss=npd.StochasticTimestepELBO())
    state = svi.init(jax.random.PRNGKey(0), x0, t, w)
    state = state._replace(mutable_state={**state.mutable_state, "step_losses": jnp.zeros(8)})
    params = svi.get_params(state)
    key = jax.random.PRNGKey(1)
    loss = npd.StochasticTimestepELBO().loss_with_mutable_state(key, {**params, **state.mutable_state},
                                                                diffusion.step_model, None, x0, t, w)
    elbo, _, step = npd.stochastic_elbo_terms(diffusion, jax.random.split(key)[1], x0, params=params, t=t, weight=w)
    assert float(loss["loss"]) == pytest.approx(-float(elbo.sum()), rel=1e-6)
    np.testing.assert_allclose(np.asarray(loss["mutable_state"]["step_losses"]), -np.asarray(step), rtol=1e-6)
    new_state, _ = jax.jit(svi.update)(state, x0, t, w)
    assert new_state.mutable_state["step_losses"].shape == (8,)
    with pytest.raises(ValueError, match="for importance sampling pass"):
        npd.StochasticTimestepELBO(timesteps="importance")


def test_chain_elbo_is_the_compiled_chain_with_the_keys_noise():
    net = npd.MLPDenoiser(2, zero_init=False)
    diffusion = npd.GaussianDiffusion(schedule=npd_schedule(), denoiser=net, event_shape=(2,))
    net.eval()
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(8, 2)), jnp.float32)
    params = npd.chain.denoiser_apply  # noqa: F841 - the module is importable as npd.chain
    from ppl_diffusion.numpyro.chain import full_chain_elbo
    from ppl_diffusion.numpyro.sampling import params_of

    p = {"denoiser$params": params_of(diffusion)}
    key = jax.random.PRNGKey(3)
    k_noise, _ = jax.random.split(key)
    for analytic in (False, True):
        loss = npd.ChainELBO(analytic=analytic, reduction="mean").loss_with_mutable_state(
            key, p, diffusion.model, diffusion.guide, x0)["loss"]
        noise = jax.random.normal(k_noise, (diffusion.T,) + x0.shape)
        want = -full_chain_elbo(diffusion, p["denoiser$params"], x0, noise, analytic=analytic).mean()
        assert float(loss) == pytest.approx(float(want), rel=1e-6)


def npd_schedule():
    from ppl_diffusion import NoiseSchedule

    return NoiseSchedule.linear(10)
