"""The NumPyro backend data-parallel over JAX devices (issue 13): 2 simulated CPU devices give the numbers of 1.

JAX fixes its device count when it starts, so the 2-device half runs in one subprocess,
``XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m tests.test_numpyro_sharding OUT`` (this file;
:func:`two_device_run`), with the test session's persistent compilation cache; the 1-device half runs in the
test process. Compared: (a) the weights, EMA and Adam moments after training (and after resuming a 1-device
checkpoint on 2 devices), (b) the compiled bound per example, (c) the samples, (d) the error for a global
batch that does not split over the devices. Marked slow: the same with 2 JAX processes of one device each (a
multi-host job simulated on this machine). Also: the sharded step compiles once; ``initialize()`` without a
multi-host launcher is a no-op.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")
pytest.importorskip("flax")

from ppl_diffusion.checkpoint import latest_checkpoint, load_checkpoint  # noqa: E402
from ppl_diffusion.data import load_dataset  # noqa: E402
from ppl_diffusion.train import TrainConfig, load_trained, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(data="eight_gaussians", net="mlp", T=20, batch_size=32, lr=1e-3, warmup_steps=3, steps=12,
              checkpoint_every=6, keep_checkpoints=5, estimator="stochastic-kl-is", backend="numpyro")
WEIGHTS_ATOL = 1e-5  # 1 vs N devices: the same draws, the batch mean and gradient summed in another order


def bound_and_samples(run_dir: Path) -> dict:
    """(b) the per-example bound of 13 examples (a chunk of 8, sharded, and a ragged one of 5, unsplit) and (c) 10
    samples in chunks of 4, of the EMA weights of ``run_dir``."""
    from ppl_diffusion.numpyro.sampling import draw_samples, per_example_terms

    diffusion = load_trained(run_dir, backend="numpyro")
    x = load_dataset(CONFIG["data"]).test.numpy()[:13]
    return {"terms": per_example_terms(diffusion, x, batch_size=8, timesteps_per_batch=4, seed=1),
            "samples": draw_samples(diffusion, 10, chunk=4, seed=2)}


def two_device_run(out: Path, one: Path) -> None:
    """The 2-device half: train from scratch, resume ``one``'s step-6 checkpoint, bound and samples of ``one``."""
    import shutil

    from ppl_diffusion.numpyro.train import NumPyroTrainer

    assert jax.device_count() == 2, jax.devices()
    trainers = []
    init = NumPyroTrainer.__init__

    def keep(self, *args, **kwargs):
        init(self, *args, **kwargs)
        trainers.append(self)

    NumPyroTrainer.__init__ = keep
    train(TrainConfig(**CONFIG), out / "two", progress=False)
    t = trainers[0]
    hlo = t._step.lower(t.svi_state, t.ema, t.sampler_state, t.key, t.train_x[:CONFIG["batch_size"]]).as_text()
    resumed = out / "resumed"
    resumed.mkdir()
    shutil.copy(one / "config.json", resumed)
    shutil.copy(one / "ckpt-00000006.pt", resumed)
    train(TrainConfig(**CONFIG), resumed, resume=True, progress=False)
    np.savez(out / "two.npz", **bound_and_samples(one))
    try:
        train(TrainConfig(**{**CONFIG, "batch_size": 31}), out / "odd", progress=False)
        error = None
    except ValueError as e:
        error = str(e)
    facts = {"error": error, "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
             "partitions": re.findall(r"num_partitions\s*=\s*(\d+)", hlo)}
    (out / "facts.json").write_text(json.dumps(facts))


def max_diff(a: dict, b: dict) -> float:
    """The largest |a − b| over the weights, the EMA and Adam's moments of two checkpoints."""
    pairs = [(a[p][k], b[p][k]) for p in ("model", "ema") for k in a[p]]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        pairs += [(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq")]
    return max(float((x.double() - y.double()).abs().max()) for x, y in pairs)


def assert_same_sampler(a: dict, b: dict) -> None:
    """The importance sampler's history: the same steps t and counts, the losses (up to ~1e3 nats, computed with
    weights 1e-7 apart) to float32 rounding of their scale."""
    for k, v in a["sampler"].items():
        v = torch.as_tensor(v).double()
        torch.testing.assert_close(torch.as_tensor(b["sampler"][k]).double(), v, rtol=1e-6,
                                   atol=1e-6 * float(v.abs().max()), msg=k)


@pytest.mark.slow  # 20-60 s; out of the default run to keep it under 12 minutes
def test_two_devices_give_the_one_device_numbers(tmp_path):
    if jax.device_count() != 1:
        pytest.skip("the 1-device reference runs in the test process, which sees several JAX devices")
    assert jax.config.jax_threefry_partitionable  # random draws inside jit split over devices without changing
    one = tmp_path / "one"
    train(TrainConfig(**CONFIG), one, progress=False)
    reference = bound_and_samples(one)

    env = _subprocess_env(XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, "-m", "tests.test_numpyro_sharding", str(tmp_path), str(one)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch sharded over 2 JAX devices" in proc.stderr, proc.stderr[-3000:]
    facts = json.loads((tmp_path / "facts.json").read_text())
    assert facts["threefry_partitionable"] and facts["partitions"] and set(facts["partitions"]) == {"2"}, facts

    # (a) training: from scratch on 2 devices, and a 1-device checkpoint resumed on 2 devices
    a = load_checkpoint(latest_checkpoint(one))
    for run in ("two", "resumed"):
        b = load_checkpoint(latest_checkpoint(tmp_path / run))
        assert b["step"] == a["step"] == CONFIG["steps"]
        assert max_diff(a, b) <= WEIGHTS_ATOL, (run, max_diff(a, b))
        assert_same_sampler(a, b)
    # (b), (c): no sum runs across devices, so the bound and the samples are the 1-device ones to rounding
    two = np.load(tmp_path / "two.npz")
    for k, v in reference.items():
        np.testing.assert_allclose(two[k], v, rtol=1e-6, atol=1e-6 * np.abs(v).max(), err_msg=k)
    # (d) a global batch that does not split over the devices: one line naming the value and the fix
    assert facts["error"] is not None and "\n" not in facts["error"], facts["error"]
    assert "global batch size 31" in facts["error"] and "--batch-size 30 or 32" in facts["error"], facts["error"]


def test_the_step_compiles_once():
    """The replicated state is typed as the step's own outputs, after construction and after a restore: one
    compile (a second one would land inside the training clock)."""
    from ppl_diffusion.numpyro.train import NumPyroTrainer
    from ppl_diffusion.train.config import build_diffusion

    trainer = NumPyroTrainer(TrainConfig(**CONFIG), load_dataset(CONFIG["data"]), build_diffusion)
    index = torch.arange(CONFIG["batch_size"])
    trainer.step(index, 1e-3)
    trainer.step(index, 1e-3)
    trainer.load(trainer.state())
    trainer.set_rng_state(trainer.rng_state())
    trainer.step(index, 1e-3)
    assert trainer._step._cache_size() == 1


def test_initialize_is_a_no_op_for_one_process_and_names_missing_variables(monkeypatch):
    from ppl_diffusion.numpyro import distributed as dp

    launchers = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_STEP_NUM_TASKS", "OMPI_MCA_orte_hnp_uri")
    for k in [*dp.COORDINATOR_ENV, *launchers]:
        monkeypatch.delenv(k, raising=False)
    assert dp.initialize() is False and not jax.distributed.is_initialized()
    # the batch script of a SLURM allocation is one process: not a multi-host job (it would wait for the others)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[1-2]")
    assert dp._auto_detected_job() is None
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")  # an srun step of two tasks
    assert dp._auto_detected_job() == "slurm"
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID is not; set all of JAX_COORDINATOR_ADDRESS"):
        dp.initialize()
    monkeypatch.setenv("JAX_PROCESS_ID", "one")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID = 'one'; set both to integers"):
        dp.initialize()
    assert not jax.distributed.is_initialized()


def process_run(out: Path, one: Path) -> None:
    """One process of a simulated 2-host job: train from scratch (its own folder), bound and samples of ``one``."""
    pid = os.environ["JAX_PROCESS_ID"]
    train(TrainConfig(**CONFIG), out / f"process-{pid}", progress=False)
    np.savez(out / f"process-{pid}.npz", **bound_and_samples(one))
    assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1


def _subprocess_env(**extra) -> dict:
    """This interpreter's environment for a JAX subprocess on CPU, with the session's compilation cache."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **extra,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cache = jax.config.jax_compilation_cache_dir  # the session's (tests/conftest.py)
    if cache:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


@pytest.mark.slow
def test_two_processes_give_the_one_process_numbers(tmp_path):
    """Several hosts, simulated: 2 JAX processes on this machine (one CPU device each, gloo collectives) joined
    through JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; each feeds its half of every batch."""
    import socket

    if jax.device_count() != 1:
        pytest.skip("the 1-process reference runs in the test process, which sees several JAX devices")
    one = tmp_path / "one"
    train(TrainConfig(**CONFIG), one, progress=False)
    reference = bound_and_samples(one)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.test_numpyro_sharding", "process", str(tmp_path), str(one)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_subprocess_env(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                                                  JAX_PROCESS_ID=str(i), JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo"))
             for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    assert "batch sharded over 2 JAX devices (cpu, 2 processes)" in logs[0] and "sharded" not in logs[1], logs
    a = load_checkpoint(latest_checkpoint(one))
    b = load_checkpoint(latest_checkpoint(tmp_path / "process-0"))  # JAX's process 0 writes the run folder
    assert latest_checkpoint(tmp_path / "process-1") is None  # the others write nothing
    assert max_diff(a, b) <= WEIGHTS_ATOL, max_diff(a, b)
    assert_same_sampler(a, b)
    for i in range(2):  # every process holds the bound and the samples
        got = np.load(tmp_path / f"process-{i}.npz")
        for k, v in reference.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-6 * np.abs(v).max(), err_msg=k)


if __name__ == "__main__":
    if sys.argv[1] == "process":
        process_run(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        two_device_run(Path(sys.argv[1]), Path(sys.argv[2]))
