"""A run folder written before the learnable forward process (γ schedules, continuous time, Fourier features and the
VDM decoder) keeps working with today's code: it evaluates to the same bits, samples the same numbers (to float rounding), resumes, and
exports and imports.

The fixture ``fixtures/run_before_gamma`` was written by ppl_diffusion at 8d04f8b (main before issue 20) with

    ppl-diffusion train --data eight_gaussians --net mlp --width 16 --depth 1 --T 10 --steps 2 --batch-size 8
        --warmup-steps 0 --ema-decay 0.5 --no-progress --run-dir run_before_gamma

and its ``expected.json`` holds what that code gave for ``evaluate RUN --max-examples 40 --seed 3`` and
``sample RUN -n 5 --seed 3``. Its config.json and checkpoint lack every key added since (``gamma_min``,
``time_input``, ``schedule_objective``, the schedule's weights, ...).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ppl_diffusion.cli import main
from ppl_diffusion.evaluate import evaluate_run

FIXTURE = Path(__file__).parent / "fixtures" / "run_before_gamma"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture
def old_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    (run / "expected.json").unlink()
    return run


def test_the_fixture_predates_the_gamma_settings():
    config = json.loads((FIXTURE / "config.json").read_text())
    assert not {"gamma_min", "gamma_max", "time_input", "schedule_objective"} & set(config)


def test_an_old_run_evaluates_to_the_same_bits_and_samples_the_same_numbers(old_run, tmp_path, capsys):
    result = evaluate_run(old_run, max_examples=40, seed=3, fd_samples=0, progress=False)
    want = EXPECTED["evaluate --max-examples 40 --seed 3"]
    # the same bits on the machine that wrote it; float rounding may differ on another CPU (AVX2 vs AVX-512)
    assert (result["bpd"], result["bpd_ema"]) == pytest.approx((want["bpd"], want["bpd_ema"]), rel=1e-6)
    assert "schedule" not in result  # a NoiseSchedule: nothing learned to report
    assert main(["sample", str(old_run), "-n", "5", "--seed", "3", "--out", str(tmp_path / "s.png")]) == 0
    samples = np.load(tmp_path / "s.npz")["samples"]
    np.testing.assert_allclose(samples, np.asarray(EXPECTED["sample -n 5 --seed 3"], dtype=samples.dtype), rtol=1e-5)


def test_an_old_run_resumes_and_exports_and_imports(old_run, tmp_path, capsys):
    flags = ["--data", "eight_gaussians", "--net", "mlp", "--width", "16", "--depth", "1", "--T", "10", "--batch-size",
             "8", "--warmup-steps", "0", "--ema-decay", "0.5", "--no-progress", "--run-dir", str(old_run)]
    assert main(["train", *flags, "--steps", "3", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "trained 3 steps" in out and "γ" not in out, out
    assert (old_run / "ckpt-00000003.pt").exists()
    assert main(["export", str(old_run), "--to", "safetensors", "--out", str(tmp_path / "st")]) == 0
    assert main(["import", "safetensors", str(tmp_path / "st"), "--run-dir", str(tmp_path / "back")]) == 0
    a = evaluate_run(old_run, max_examples=8, seed=1, fd_samples=0, progress=False)
    b = evaluate_run(tmp_path / "back", max_examples=8, seed=1, fd_samples=0, progress=False)
    assert b["bpd_ema"] == a["bpd_ema"]
