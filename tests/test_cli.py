"""The ``ppl-diffusion`` command: every subcommand on a tiny run, the files it writes, and one-line errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_diffusion.cli import main
from ppl_diffusion.train import TrainConfig

TINY = ["--net", "mlp", "--T", "10", "--batch-size", "16", "--warmup-steps", "2", "--log-every", "1",
        "--checkpoint-every", "2", "--no-progress"]


def run(argv) -> int:
    """``main(argv)``'s exit status, argparse's SystemExit included."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def nonempty(path) -> bool:
    return Path(path).is_file() and Path(path).stat().st_size > 0


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "digits"
    assert run(["train", "--data", "digits", *TINY, "--steps", "4", "--metrics", "csv", "--run-dir", run_dir]) == 0
    return run_dir


def test_help_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "ppl_diffusion", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    for command in ("train", "evaluate", "sample", "demo"):
        assert command in out.stdout


def test_train_writes_config_metrics_checkpoints(digits_run):
    config = TrainConfig.from_dict(json.loads((digits_run / "config.json").read_text()))
    assert (config.data, config.net, config.T, config.steps, config.metrics_format) == ("digits", "mlp", 10, 4, "csv")
    assert config.lr == TrainConfig().lr  # unset flags take the dataclass defaults
    assert len((digits_run / "metrics.csv").read_text().splitlines()) == 1 + 4  # header + a row per step
    assert sorted(p.name for p in digits_run.glob("ckpt-*.pt")) == ["ckpt-00000002.pt", "ckpt-00000004.pt"]


def test_train_resume_extends_the_run(tmp_path, capsys):
    args = ["train", "--data", "eight_gaussians", *TINY, "--run-dir", tmp_path / "r"]
    assert run([*args, "--steps", "2"]) == 0
    assert run([*args, "--steps", "4", "--resume"]) == 0
    assert "trained 4 steps" in capsys.readouterr().out
    assert (tmp_path / "r" / "ckpt-00000004.pt").is_file()


def test_resume_keeps_the_thread_count_of_the_run(tmp_path, capsys):
    """train --resume without --threads computes on the thread count its checkpoint was written with (another
    count rounds differently, so the resume would not be exact), and says so; --threads still overrides it."""
    before = torch.get_num_threads()
    try:
        args = ["train", "--data", "eight_gaussians", *TINY, "--run-dir", tmp_path / "r"]
        assert run([*args, "--steps", "2", "--threads", "1"]) == 0
        torch.set_num_threads(2)
        assert run([*args, "--steps", "3", "--resume"]) == 0
        assert "resuming on 1 thread, as ckpt-00000002.pt was written" in capsys.readouterr().out
        assert torch.load(tmp_path / "r" / "ckpt-00000003.pt", weights_only=False)["threads"] == 1
        assert run([*args, "--steps", "4", "--resume", "--threads", "2"]) == 0
        assert "resuming on" not in capsys.readouterr().out
        assert torch.load(tmp_path / "r" / "ckpt-00000004.pt", weights_only=False)["threads"] == 2
    finally:
        torch.set_num_threads(before)


def test_evaluate_writes_json_and_figure(digits_run, capsys):
    assert run(["evaluate", digits_run, "--max-examples", "8", "--timesteps-per-batch", "4",
                "--fd-samples", "20", "--no-progress"]) == 0
    assert "bits/dim" in capsys.readouterr().out
    result = json.loads((digits_run / "eval.json").read_text())
    assert {"bpd", "bpd_ema", "terms"} <= set(result)
    assert result["num_examples"] == 8 and result["step"] == 4
    for weights in ("raw", "ema"):
        assert len(result["terms"][weights]) == 10 + 1  # L_0 .. L_T
    # bits/dim is the sum of the terms over D ln 2
    assert result["bpd"] == pytest.approx(sum(result["terms"]["raw"]) / (64 * np.log(2)), rel=1e-9)
    assert np.isfinite(result["digits_fd_ema"])
    assert nonempty(result["figure"])


def test_sample_images_npz_png_and_seed(digits_run, tmp_path):
    def sample(name, *extra):
        assert run(["sample", digits_run, "-n", "6", "--out", tmp_path / f"{name}.png", *extra]) == 0
        assert nonempty(tmp_path / f"{name}.png")
        images = np.load(tmp_path / f"{name}.npz")["images"]
        assert images.dtype == np.uint8 and images.shape == (6, 1, 8, 8)
        return images

    a, b, c = sample("a", "--seed", "3"), sample("b", "--seed", "3"), sample("c", "--seed", "4")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    sample("respaced", "--steps", "3")
    sample("raw", "--raw")


def test_sample_steps_outside_the_run_names_the_flag(digits_run, tmp_path, capsys):
    T = json.loads((digits_run / "config.json").read_text())["T"]
    for bad in (0, T + 1):
        assert run(["sample", digits_run, "-n", "2", "--steps", bad, "--out", tmp_path / "s.png"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"ppl-diffusion: error: --steps {bad} is outside 1..T = 1..{T}; a respaced sampler keeps "
                       "between 1 and T of the original steps; pass --steps in that range or drop it (all of the "
                       "run's steps)"]
    assert not (tmp_path / "s.png").exists()


def test_fourier_features_auto_and_the_vdm_decoder_are_recorded_resumed_and_loaded(tmp_path, capsys):
    """--fourier-features auto becomes the digits' exponents [2, 3] in net_config (it shapes the net), --decoder
    vdm-categorical the config's decoder; a resume with the same flags continues, and a loaded run has both."""
    from ppl_diffusion.distributions import VDMCategoricalDecoder
    from ppl_diffusion.sampling import load_run

    run_dir = tmp_path / "ff"
    flags = ["train", "--data", "digits", "--net", "auto", "--channels", "8", "--channel-mult", "1,2", "--res-blocks",
             "1", "--T", "10", "--batch-size", "8", "--warmup-steps", "1", "--checkpoint-every", "2", "--no-progress",
             "--fourier-features", "auto", "--decoder", "vdm-categorical", "--run-dir", run_dir]
    assert run([*flags, "--steps", "2"]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["net_config"]["fourier_features"] == [2, 3] and config["decoder"] == "vdm-categorical"
    assert run([*flags, "--steps", "3", "--resume"]) == 0
    loaded = load_run(run_dir)
    assert loaded.step == 3 and loaded.diffusion.denoiser.fourier_features == (2, 3)
    assert isinstance(loaded.diffusion.decoder, VDMCategoricalDecoder)
    assert run(["sample", run_dir, "-n", "4", "--out", tmp_path / "s.png"]) == 0


def test_sample_vectors_and_default_out(tmp_path):
    run_dir = tmp_path / "toy"
    assert run(["train", "--data", "eight_gaussians", *TINY, "--steps", "2", "--run-dir", run_dir]) == 0
    assert run(["sample", run_dir, "-n", "5", "--steps", "4"]) == 0
    samples = np.load(run_dir / "samples-ema-K4.npz")["samples"]
    assert samples.dtype == np.float32 and samples.shape == (5, 2)
    assert nonempty(run_dir / "samples-ema-K4.png")


def test_val_examples_then_evaluate_and_sample_take_best_pt_or_the_last(tmp_path, capsys):
    run_dir = tmp_path / "val"
    assert run(["train", "--data", "digits", *TINY, "--steps", "4", "--val-examples", "8", "--run-dir", run_dir]) == 0
    out = capsys.readouterr().out
    assert f"best {run_dir / 'best.pt'} (step " in out and "validation bits/dim" in out
    assert json.loads((run_dir / "config.json").read_text())["val_examples"] == 8
    best_step = torch.load(run_dir / "best.pt", weights_only=True)["step"]
    for extra, weights_from, step in (([], "best", best_step), (["--last"], "checkpoint", 4)):
        assert run(["evaluate", run_dir, "--max-examples", "4", "--fd-samples", "0", "--no-progress", *extra]) == 0
        out = capsys.readouterr().out
        assert ("best by validation" in out) == (weights_from == "best")
        result = json.loads((run_dir / "eval.json").read_text())
        assert (result["weights_from"], result["step"]) == (weights_from, step)
        assert run(["sample", run_dir, "-n", "2", *extra]) == 0
        assert f"step {step}" in capsys.readouterr().out


def test_demo_quick(tmp_path, capsys):
    assert run(["demo", "--quick", "--no-progress", "--run-dir", tmp_path / "demo"]) == 0
    out = capsys.readouterr().out
    assert "bits/dim" in out and "samples-ema.png" in out and "best by validation" in out
    assert nonempty(tmp_path / "demo" / "eval.json") and nonempty(tmp_path / "demo" / "samples-ema.png")
    assert nonempty(tmp_path / "demo" / "best.pt")
    assert json.loads((tmp_path / "demo" / "eval.json").read_text())["weights_from"] == "best"


# The validation figure and the bits/dim the demo prints (the ± standard errors aside).
DEMO_FIGURES = re.compile(r"validation bits/dim (\d+\.\d+)|bits/dim  raw (\d+\.\d+) ± \S+   EMA (\d+\.\d+)")


def test_demo_prints_the_same_figures_with_1_and_2_threads(tmp_path):
    """The demo's printout depends on its steps and seed, not on the machine: two fresh processes, one and two
    threads, print the same bits/dim up to float rounding.

    The thread count changes the order of float32 sums inside the network's matrix products (relative
    differences ~1e-7 per operation); over the quick demo's 20 Adam steps they grow a little. Measured here: the
    raw bits/dim 6.8e-6 apart at 288 (relative 2.3e-8), the EMA's 2e-8 apart, the validation figure equal. The
    figures must agree to a relative 1e-6 (40x that): a change of the data, batches, noise or held-out
    examples moves them by orders of magnitude more."""
    outs = {}
    for threads in (1, 2):  # one after the other; OpenMP threads that wait passively (no spinning on a busy CPU)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "OMP_WAIT_POLICY": "PASSIVE"}
        done = subprocess.run([sys.executable, "-m", "ppl_diffusion", "demo", "--quick", "--no-progress", "--run-dir",
                               str(tmp_path / f"threads{threads}")], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        outs[threads] = [float(x) for m in DEMO_FIGURES.finditer(done.stdout) for x in m.groups() if x is not None]
    assert len(outs[1]) == 3, outs  # the validation figure, raw and EMA bits/dim
    assert outs[1] == pytest.approx(outs[2], rel=1e-6, abs=0)


# ---------------------------------------------------------------------------------------- where the data is
QUICK_EVAL = ["--max-examples", "2", "--timesteps-per-batch", "5", "--no-progress"]


def test_a_run_and_its_data_moved_elsewhere_evaluate_with_data_root(tmp_path, monkeypatch, capsys):
    """Trained on a PNG folder named relative to one folder, the run evaluates from another (the root is stored
    absolute); moved with its data, every command that reads the data takes --data-root (and gives the same
    figure), sample needs none, and without it the error names the stored folder and the fix."""
    from .test_data import write_pngs

    write_pngs(tmp_path / "work" / "pngs", np.random.default_rng(0).integers(0, 256, (20, 8, 8)))
    monkeypatch.chdir(tmp_path / "work")
    assert run(["train", "--data", "image_folder", "--data-root", "pngs", *TINY, "--steps", "2",
                "--run-dir", "runs/a"]) == 0
    config = json.loads(Path("runs/a/config.json").read_text())
    assert config["data_root"] == str(tmp_path / "work" / "pngs")
    monkeypatch.chdir(tmp_path)
    assert run(["evaluate", "work/runs/a", *QUICK_EVAL]) == 0
    first = json.loads(Path("work/runs/a/eval.json").read_text())

    Path("work").rename("elsewhere")
    capsys.readouterr()
    assert run(["evaluate", "elsewhere/runs/a", *QUICK_EVAL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "work" / "pngs") in err and "--data-root" in err, err
    moved = ["--data-root", "elsewhere/pngs"]
    assert run(["evaluate", "elsewhere/runs/a", *QUICK_EVAL, *moved]) == 0
    again = json.loads(Path("elsewhere/runs/a/eval.json").read_text())
    assert (again["bpd"], again["bpd_ema"], again["num_examples"]) == (first["bpd"], first["bpd_ema"], 2)
    assert (first["data_root"], again["data_root"]) == (str(tmp_path / "work" / "pngs"), str(tmp_path / "elsewhere" / "pngs"))
    write_pngs(tmp_path / "other", np.random.default_rng(1).integers(0, 256, (6, 12, 12)))  # another size
    capsys.readouterr()
    assert run(["evaluate", "elsewhere/runs/a", *QUICK_EVAL, "--data-root", "other"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"ppl-diffusion: error: the image_folder data under {tmp_path / 'other'} has examples of shape "
                   "[1, 12, 12] but the run elsewhere/runs/a was trained on [1, 8, 8]; pass --data-root the folder "
                   "it trained on"), err
    assert json.loads(Path("elsewhere/runs/a/eval.json").read_text()) == again  # not overwritten
    assert run(["compare", "elsewhere/runs/a", "--out", "study-other", "--data-root", "other", "--no-progress"]) == 2
    assert "has examples of shape [1, 12, 12] but the run elsewhere/runs/a was trained on [1, 8, 8]" in \
        capsys.readouterr().err
    assert not Path("study-other").exists()
    for extra, name in ((["--bound", "estimate", "--full-steps", "2", "--strata", "2", "--pilot-examples", "2"],
                         "eval-estimate.json"),
                        (["--fit-variance", "4"], "eval-fitted.json"),
                        (["--likelihood", "ode", "--rtol", "1e-3", "--atol", "1e-3", "--trace", "hutchinson"],
                         "eval-ode.json")):
        assert run(["evaluate", "elsewhere/runs/a", *QUICK_EVAL, *moved, *extra]) == 0, extra
        assert json.loads(Path(f"elsewhere/runs/a/{name}").read_text())["num_examples"] == 2
    assert run(["sample", "elsewhere/runs/a", "-n", "2"]) == 0
    assert np.load("elsewhere/runs/a/samples-ema.npz")["images"].shape == (2, 1, 8, 8)
    assert run(["compare", "elsewhere/runs/a", "--out", "study", *moved, "--estimators", "meanfield,stochastic-kl",
                "--batch-size", "2", "--replicates", "4", "--full-chain-replicates", "4", "--no-progress"]) == 0
    assert json.loads(Path("study/study.json").read_text())["meta"]["batch"] == 2


def test_an_older_run_with_a_relative_data_root_reads_it_from_the_current_folder(tmp_path, monkeypatch, capsys):
    """Runs written before the root was stored absolute keep working where they did (from the folder they were
    trained in); elsewhere the error says the path is relative and where it was looked for."""
    from ppl_diffusion.checkpoint import load_checkpoint, save_checkpoint

    from .test_data import write_pngs

    write_pngs(tmp_path / "pngs", np.random.default_rng(1).integers(0, 256, (20, 8, 8)))
    assert run(["train", "--data", "image_folder", "--data-root", tmp_path / "pngs", *TINY, "--steps", "2",
                "--run-dir", tmp_path / "run"]) == 0
    for ckpt in (tmp_path / "run").glob("ckpt-*.pt"):  # as an older version wrote it
        state = load_checkpoint(ckpt)
        state["config"]["data_root"] = "pngs"
        save_checkpoint(ckpt, state)
    monkeypatch.chdir(tmp_path)
    assert run(["evaluate", "run", *QUICK_EVAL]) == 0
    monkeypatch.chdir(tmp_path / "run")
    capsys.readouterr()
    assert run(["evaluate", ".", *QUICK_EVAL]) == 2
    err = capsys.readouterr().err
    assert "pngs (a relative path, read from the current folder" in err and "--data-root" in err, err


def test_threads_sets_torch_and_xla_and_is_recorded(digits_run, tmp_path):
    """--threads N: torch's threads and PJRT_NPROC (XLA's pool), recorded in eval.json (conftest puts both back)."""
    assert run(["evaluate", digits_run, *QUICK_EVAL, "--fd-samples", "0", "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1 and os.environ["PJRT_NPROC"] == "1"
    assert json.loads((digits_run / "eval.json").read_text())["threads"] == 1
    assert run(["sample", digits_run, "-n", "2", "--out", tmp_path / "s.png", "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2 and os.environ["PJRT_NPROC"] == "2"


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_sizes_xla_cpu_pool(threads):
    """In a fresh process, set_threads(N) before JAX's first computation sizes XLA's CPU pool: one thread does all
    of a large matrix product's work with N = 1, several share it with N = 2 (per-thread CPU time from /proc; the
    dispatching thread then takes a share too)."""
    pytest.importorskip("jax")
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc (Linux)")
    code = f"""
import os
from ppl_diffusion.cli import set_threads
set_threads({threads})
import jax, jax.numpy as jnp

def ticks():
    out = {{}}
    for t in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{{t}}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[t] = int(fields[11]) + int(fields[12])
    return out

f = jax.jit(lambda a: (a @ a @ a).sum())
x = jnp.ones((1000, 1000), jnp.float32)
f(x).block_until_ready()
before = ticks()
for _ in range(6):
    f(x).block_until_ready()
after = ticks()
busy = sorted((after[t] - before.get(t, 0) for t in after), reverse=True)
print(sum(b > 0.2 * busy[0] for b in busy))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PJRT_NPROC": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    busy = int(out.stdout.split()[-1])
    assert busy == 1 if threads == 1 else busy >= 2, out.stdout


# ---------------------------------------------------------------------------------------- bad input
def _bad_runs(root: Path, good: Path) -> dict[str, Path]:
    """Copies of the good run with a corrupt / truncated newest checkpoint, and an empty folder."""
    made = {}
    for name in ("corrupt", "truncated"):
        made[name] = root / name
        shutil.copytree(good, made[name])
        ckpt = made[name] / "ckpt-00000004.pt"
        data = ckpt.read_bytes()
        ckpt.write_bytes(b"not a checkpoint" * 10 if name == "corrupt" else data[: len(data) // 2])
    made["empty"] = root / "empty"
    made["empty"].mkdir()
    images = root / "images"
    images.mkdir()
    from PIL import Image

    for i, size in enumerate([(8, 8), (8, 8), (6, 6)]):
        Image.fromarray(np.zeros(size[::-1], np.uint8)).save(images / f"{i}.png")
    made["images"] = images
    unreadable = root / "unreadable"
    unreadable.mkdir()
    for name in ("0.png", "1.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(unreadable / name)
    (unreadable / "2.png").write_bytes(b"not an image")
    made["unreadable"] = unreadable
    made["file"] = root / "notes.txt"
    made["file"].write_text("a file, not a run folder\n")
    return made


BAD = {  # id: (argv with {placeholders}, a string the one-line message must contain)
    "unknown-data": (["train", "--data", "nosuch", "--steps", "1"], "nosuch"),
    "missing-files": (["train", "--data", "mnist", "--data-root", "{empty}", "--steps", "1"], "{empty}"),
    "net-shape": (["train", "--data", "digits", "--net", "mnist", "--steps", "1"], "[1, 28, 28]"),
    "net-setting-of-another-net": (["train", "--data", "digits", "--net", "mlp", "--channel-mult", "1,2", "--steps",
                                    "1"], "net 'mlp' has no setting channel_mult (--channel-mult)"),
    "unknown-net": (["train", "--net", "nosuch", "--steps", "1"], "unknown net 'nosuch'"),
    "net-not-importable": (["train", "--net", "nosuch_module:build", "--steps", "1"], "cannot import module"),
    "net-config-not-json": (["train", "--net-config", "{{width: 3}}", "--steps", "1"], "is not JSON"),
    "channel-mult-not-ints": (["train", "--channel-mult", "1,x", "--steps", "1"], "comma-separated list of integers"),
    "unet-setting-misspelled": (["train", "--data", "digits", "--net-config", '{{"chanels": 8}}', "--steps", "1"],
                                "no setting chanels"),
    # VDM's Fourier features and categorical decoder are for 8-bit data only
    "fourier-features-on-continuous-data": (["train", "--data", "eight_gaussians", "--fourier-features", "auto",
                                             "--steps", "1"], "fourier_features = 'auto' on the continuous data"),
    "fourier-exponent-too-high": (["train", "--data", "digits", "--fourier-features", "2,20", "--steps", "1"],
                                  "got 20"),
    "fourier-features-of-the-mlp": (["train", "--data", "digits", "--net", "mlp", "--fourier-features", "2,3",
                                     "--steps", "1"], "net 'mlp' has no setting fourier_features (--fourier-features)"),
    "vdm-decoder-on-continuous-data": (["train", "--data", "two_moons", "--decoder", "vdm-categorical", "--steps",
                                        "1"], "the data 'two_moons' are continuous"),
    "unknown-decoder": (["train", "--decoder", "categorical", "--steps", "1"], "unknown decoder 'categorical'"),
    "image-sizes": (["train", "--data", "image_folder", "--data-root", "{images}", "--steps", "1"], "2.png"),
    "unreadable-image": (["train", "--data", "image_folder", "--data-root", "{unreadable}", "--steps", "1"],
                         "{unreadable}/2.png is not a readable image"),
    "run-dir-is-a-file": (["train", "--steps", "1", "--run-dir", "{file}"], "{file} is an existing file"),
    "run-dir-under-a-file": (["train", "--steps", "1", "--resume", "--run-dir", "{file}/run"], "under {file}"),
    "evaluate-a-file": (["evaluate", "{file}", "--no-progress"], "{file} is neither a run folder nor a checkpoint"),
    "sample-a-file": (["sample", "{file}"], "{file} is neither a run folder nor a checkpoint"),
    "zero-steps": (["train", "--steps", "0"], "steps = 0"),
    "negative-val-examples": (["train", "--steps", "1", "--val-examples", "-1"], "val_examples = -1"),
    "val-examples-all-of-train": (["train", "--data", "digits", *TINY, "--steps", "1", "--val-examples", "1437"],
                                  "val_examples = 1437, but the training split has 1437 examples"),
    "negative-batch": (["train", "--steps", "1", "--batch-size", "-1"], "batch_size = -1"),
    "unknown-estimator": (["train", "--steps", "1", "--estimator", "foo"], "'foo'"),
    "unknown-device": (["train", "--steps", "1", "--device", "tpu"], "'tpu'"),
    "not-a-number": (["train", "--steps", "abc"], "abc"),
    "resume-nothing": (["train", "--steps", "1", "--resume", "--run-dir", "{empty}"], "{empty}"),
    "other-config": (["train", "--data", "digits", *TINY, "--T", "12", "--steps", "6", "--resume",
                      "--run-dir", "{good}"], "now 12"),
    "corrupt-ckpt": (["evaluate", "{corrupt}", "--no-progress"], "ckpt-00000004.pt"),
    "truncated-ckpt": (["sample", "{truncated}"], "ckpt-00000004.pt"),
    "no-checkpoints": (["evaluate", "{empty}"], "{empty}"),
    "missing-run": (["sample", "{empty}/nowhere"], "nowhere"),
    "zero-samples": (["sample", "{good}", "-n", "0"], "n = 0"),
    "respace-too-many": (["sample", "{good}", "--steps", "11"], "11"),
    "unknown-eval-device": (["evaluate", "{good}", "--device", "gpu"], "'gpu'"),
    "cuda-without-gpu": (["train", "--steps", "1", "--device", "cuda"], "CUDA is not available"),
    "negative-fit": (["evaluate", "{good}", "--fit-variance", "-1", "--no-progress"], "fit_variance = -1"),
    # --likelihood ode and sample --ode (the continuous-data case is in tests/test_likelihood.py)
    "ode-rtol-zero": (["evaluate", "{good}", "--likelihood", "ode", "--rtol", "0", "--no-progress"], "rtol = 0.0"),
    "ode-unknown-trace": (["evaluate", "{good}", "--likelihood", "ode", "--trace", "diagonal", "--no-progress"],
                          "unknown trace 'diagonal'"),
    "ode-no-dequantization-on-images": (["evaluate", "{good}", "--likelihood", "ode", "--dequantization", "none",
                                         "--no-progress"], "not a likelihood"),
    "ode-flag-with-elbo": (["evaluate", "{good}", "--trace", "hutchinson", "--no-progress"],
                           "--trace given with --likelihood elbo"),
    "ode-fit-variance": (["evaluate", "{good}", "--likelihood", "ode", "--fit-variance", "10", "--no-progress"],
                         "--fit-variance with --likelihood ode"),
    "ode-zero-draws": (["evaluate", "{good}", "--likelihood", "ode", "--dequantization-draws", "0", "--no-progress"],
                       "draws = 0"),
    "ode-eps-below-first-step": (["evaluate", "{good}", "--likelihood", "ode", "--eps", "0.01", "--no-progress"],
                                 "eps = 0.01"),
    "ode-steps": (["sample", "{good}", "--ode", "--steps", "5"], "--steps 5 with --ode"),
    "ode-solver-flag-without-ode": (["sample", "{good}", "--rtol", "1e-3"], "--rtol given without --ode"),
    # --data-root: where a run's data is now, for the data sets read from files only; sampling reads none
    "data-root-of-digits": (["evaluate", "{good}", "--data-root", "{images}", "--no-progress"],
                            "'digits', reads no files"),
    "ode-data-root-of-digits": (["evaluate", "{good}", "--likelihood", "ode", "--data-root", "{images}",
                                 "--no-progress"], "'digits', reads no files"),
    "compare-data-root-of-digits": (["compare", "{good}", "--out", "{empty}/study", "--data-root", "{images}",
                                     "--no-progress"], "'digits', reads no files"),
    "sample-data-root": (["sample", "{good}", "--data-root", "{images}"], "sample reads no data"),
    "train-data-root-of-digits": (["train", "--data", "digits", "--data-root", "{images}", "--steps", "1"],
                                  "needs no files"),
    "missing-data-root": (["evaluate", "{good}", "--data-root", "{empty}/gone", "--no-progress"], "{empty}/gone"),
    # --threads, one helper for every command
    **{f"{command}-zero-threads": ([command, *where, "--threads", "0"], "threads = 0") for command, where in (
        ("train", ["--steps", "1"]), ("evaluate", ["{good}"]), ("sample", ["{good}"]),
        ("compare", ["--out", "{empty}/study"]))},
}
if not torch.cuda.is_available():
    BAD["cuda-missing"] = (["train", "--steps", "1", "--device", "cuda"], "'cuda'")


@pytest.mark.parametrize("argv, expected", list(BAD.values()), ids=list(BAD))
def test_bad_input_exits_2_with_one_line(argv, expected, digits_run, tmp_path, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    places = {"good": str(digits_run), **{k: str(v) for k, v in _bad_runs(tmp_path, digits_run).items()}}
    argv = [a.format(**places) for a in argv]
    if argv[0] == "train" and "--run-dir" not in argv:
        argv += ["--run-dir", str(tmp_path / "new"), "--no-progress"]
    assert run(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ppl-diffusion: error: "), err
    assert expected.format(**places) in lines[0], lines[0]
    assert Path(places["file"]).read_text() == "a file, not a run folder\n"  # nothing lost
    assert not (tmp_path / "new").exists()  # a train refused leaves no folder behind


def test_diverged_training_exits_1_with_one_line(tmp_path, monkeypatch, capsys):
    import warnings

    from ppl_diffusion.train import pyro_trainer as train_mod

    from .common import nan_after

    monkeypatch.setattr(train_mod, "build_diffusion", nan_after(train_mod.build_diffusion, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pyro's warn_if_nan
        status = main(["train", "--data", "eight_gaussians", "--net", "mlp", "--T", "20", "--steps", "10",
                       "--checkpoint-every", "2", "--run-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1
    assert err[0].startswith("ppl-diffusion: error: ") and "at step 4" in err[0] and "ckpt-00000002.pt" in err[0]


def test_resume_takes_the_saved_settings_of_every_flag_not_given(tmp_path, capsys):
    """`train --run-dir RUN --resume --steps 4` after a start with non-default flags continues that run: the same
    weights as the same flags trained straight to 4 steps; a flag given that the run cannot change is refused."""
    import torch

    flags = ["--data", "digits", *TINY, "--lr", "3e-3", "--ema-decay", "0.5", "--seed", "7"]
    assert run(["train", *flags, "--steps", "4", "--run-dir", tmp_path / "straight"]) == 0
    assert run(["train", *flags, "--steps", "2", "--run-dir", tmp_path / "resumed"]) == 0
    assert run(["train", "--run-dir", tmp_path / "resumed", "--resume", "--steps", "4"]) == 0
    a = torch.load(tmp_path / "straight" / "ckpt-00000004.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "ckpt-00000004.pt", weights_only=False)
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    capsys.readouterr()
    assert run(["train", "--run-dir", tmp_path / "resumed", "--resume", "--steps", "6", "--lr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert "lr: saved 0.003, now 0.001" in err and "drop the flags that change it" in err


def test_an_estimate_no_cheaper_than_the_full_bound_says_so(digits_run, capsys):
    """At T = 10 the default estimate (20 steps exactly) is the full bound: the summary says to pass --bound full."""
    assert run(["evaluate", digits_run, "--bound", "estimate", "--max-examples", "2", "--fd-samples", "0",
                "--no-progress"]) == 0
    assert "the estimate costs at least the full bound's denoiser inputs: pass --bound full" in capsys.readouterr().out
