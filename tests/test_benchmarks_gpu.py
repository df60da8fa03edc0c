"""benchmarks/gpu.py --quick: every section of the GPU benchmark runs on CPU and writes its numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _jax_cache_env() -> dict:
    """The session's JAX compilation cache (tests/conftest.py) for the subprocess: the NumPyro trainer's compile
    is most of the run's time."""
    try:
        import jax
    except ImportError:
        return {}
    cache = jax.config.jax_compilation_cache_dir
    return {"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"} if cache else {}


@pytest.mark.slow  # 35-55 s; moved out of the default run to keep it under 12 minutes
def test_gpu_benchmark_quick_writes_every_section_with_numbers(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, **_jax_cache_env()})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-cpu-quick.json").read_text())
    assert (tmp_path / "gpu-cpu-quick.md").read_text().startswith("# ppl_diffusion on cpu")
    meta, sections = result["meta"], result["sections"]
    assert meta["device"] == "cpu" and meta["torch"] and _number(meta["seconds"])
    assert set(sections) == {"train_step", "estimators", "backends_unet", "processes"}
    for name in ("train_step", "estimators", "backends_unet"):
        assert sections[name]["status"] == "ok", (name, sections[name])

    fp32, bf16 = sections["train_step"]["rows"]
    assert fp32["precision"] == "fp32" and _number(fp32["images_per_s"]) and fp32["images_per_s"] > 0
    assert fp32["reps"] >= 1 and _number(fp32["loss_last"])
    assert bf16["precision"] == "bf16"
    # bf16 is measured where TrainConfig has it, else recorded as missing (or refused on a CPU, with the reason)
    assert bf16["status"] in ("not available in this build", "refused by TrainConfig") or (
        bf16["status"] == "ok" and _number(bf16["images_per_s"])), bf16

    assert sections["estimators"]["checkpoint_activations"] == "steps"  # the GPU path's full chains recompute
    rows = {r["estimator"]: r for r in sections["estimators"]["rows"]}
    assert set(rows) == {"trace", "meanfield", "stochastic-kl-is"}
    for r in rows.values():
        assert r["status"] == "ok" and r["replicates_estimate"] >= 4 and r["replicates_gradient"] >= 2, r
        for key in ("elbo_mean", "elbo_sd", "seconds_per_estimate", "seconds_per_gradient", "grad_total_variance"):
            assert _number(r[key]) and (key == "elbo_mean" or r[key] > 0), (r["estimator"], key, r[key])
    assert rows["stochastic-kl-is"]["warmup_calls"] > 0  # its importance sampler was filled before the replicates
    # All three estimate the same ELBO at the same θ: their means agree within a few standard errors.
    means = [r["elbo_mean"] for r in rows.values()]
    se = math.sqrt(sum(r["elbo_se"] ** 2 for r in rows.values()))
    assert max(means) - min(means) < 6 * se, (means, se)

    cases = sections["backends_unet"]["rows"]
    assert len(cases) == 2
    for row in cases:
        for backend in ("pyro", "numpyro"):
            assert _number(row[backend]["median_s"]) and row[backend]["reps"] >= 1, row
        assert _number(row["speedup"])

    procs = sections["processes"]
    assert procs["status"] == "skipped" and "--procs N" in procs["reason"]  # a CPU run: the reason is recorded


def _gpu_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmarks_gpu", REPO / "benchmarks" / "gpu.py")
    module = sys.modules["benchmarks_gpu"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_processes_helpers_rate_and_synthetic_cifar10(tmp_path):
    """The 1-against-N section runs only where N GPUs are: its helpers are checked here."""
    from ppl_diffusion.data import load_cifar10

    gpu = _gpu_module()
    # 40 logged steps: 1 s each for the first 4 (set-up), then 0.25 s each; duplicates (two writers) keep the last
    elapsed = [float(s) if s <= 4 else 4 + 0.25 * (s - 4) for s in range(1, 41)]
    lines = [json.dumps({"step": s, "elapsed": e}) for s, e in zip(range(1, 41), elapsed)]
    (tmp_path / "metrics.jsonl").write_text("\n".join([*lines, "torn {", lines[-1]]) + "\n")
    rate, measured = gpu.steps_per_second(tmp_path / "metrics.jsonl")
    assert measured == 35 and math.isclose(rate, 4.0)  # from step 5 to 40: the first max(3, 40 // 10) = 4 dropped

    root = gpu.write_cifar10_batches(tmp_path / "data", 7)
    data = load_cifar10(root)
    assert data.train.shape == (35, 3, 32, 32) and data.test.shape == (7, 3, 32, 32)
    assert int(data.train_labels.max()) <= 9
