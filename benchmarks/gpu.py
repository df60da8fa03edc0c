"""The GPU figures, in one call of at most 8 minutes: run it once on a CUDA machine and commit what it writes.

Sections (each runs under its own time share and alarm; one that fails or runs out of time is recorded as
such, with what it had measured, and the others still run):

``train_step``     the cifar10 U-Net preset's training step (35.7M parameters, T = 1000, stochastic-kl-is,
                   batch 128) through ``make_trainer(TrainConfig(...), dataset, device).step``, in fp32 and
                   bf16 (``TrainConfig.precision``; recorded as not available where this build lacks it);
                   images/s. The data are random uint8 images of CIFAR-10's shape (no download): a training
                   step's cost does not depend on the pixels.
``estimators``     fixed-θ replicates of ``stochastic-kl-is``, ``trace`` (``Trace_ELBO``, full chain) and
                   ``meanfield`` (``TraceMeanField_ELBO``, full chain) on the digits U-Net at T = 1000, through
                   :mod:`ppl_diffusion.study`'s ``StudyEstimator`` (Pyro's own ``loss`` / ``loss_and_grads``)
                   and ``RunningMoments`` (not ``run_study``: it needs arviz, and its gradient replicates
                   equal its estimates). θ: freshly initialised (seed 0, output layers zero as for training:
                   the θ of ``ppl-diffusion compare --net digits`` without a run). Batch: the first 128 test
                   digits, the batch of the other rows, with activation checkpointing (``checkpoint_activations=
                   "steps"``: each step's net call recomputed in the backward pass; stored, a full-chain gradient
                   would keep T U-Net activations, about 0.27 GB per step at batch 128, ~270 GB at T = 1000;
                   benchmarks/memory.py measures both). At least 16 ELBO estimates each (mean, sd, seconds
                   per estimate); gradients as many as the share allows (at least 2; 16 and more where they
                   fit): seconds per gradient, tr Cov, SNR.
``backends_unet``  the backends table's rows (iv) (:func:`benchmarks.backends.unet_cases`): the digits U-Net's
                   training step at batch 128 and 128 samples at 50 respaced steps, Pyro (on the GPU) against
                   NumPyro (jit, on JAX's default device, recorded), one process.
``processes``      ``ppl-diffusion train`` (cifar10 preset, synthetic CIFAR-10 binary batches written to a
                   temporary folder) in 1 process against ``torchrun --standalone --nproc-per-node N`` with the
                   same global batch: steps/s from the runs' ``metrics.jsonl`` (first steps dropped) and the
                   ratio. Skipped, with the reason, when there is one GPU.

Every timing is bracketed by ``torch.cuda.synchronize()``; a case's first call (allocation, cuDNN's choice
of kernels, JAX's compile) is timed apart; the reps that follow are sized by the first ones to fit the share.
Outputs ``<out>/gpu-<device>.{json,md}`` (``<out>/gpu-<device>-quick.*`` with ``--quick``) naming the GPU, the
CUDA, cuDNN and driver versions, torch / pyro / jax / numpyro versions and the CPU (benchmarks/gpu_report.py writes
them). Run::

    python benchmarks/gpu.py            # on a CUDA machine, about 7.5 minutes; --budget-s to change
    python benchmarks/gpu.py --quick    # the same sections on CPU with tiny sizes (digits, MLP, T = 10): a test
    python benchmarks/gpu.py --sections train_step,estimators --procs 2   # a subset; force N processes
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

STARTED = time.monotonic()
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX shares the GPU with torch in this process

REPO = Path(__file__).resolve().parents[1]
for _path in (str(REPO), str(REPO / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)
from gpu_report import machine, markdown, slug  # noqa: E402

SECTIONS = ("train_step", "estimators", "backends_unet", "processes")
# Estimator and its weight in the section's share: the cheap one first (its max replicates take seconds on a GPU),
# the full chains share what it leaves.
ESTIMATORS = {"stochastic-kl-is": 1.0, "trace": 4.5, "meanfield": 4.5}


@dataclass(frozen=True)
class Plan:
    """Sizes and time shares (seconds) of one run."""

    budget_s: float  # the whole run, start-up included; the sections' shares are cut to what is left
    shares: dict = field(default_factory=dict)
    grace_s: float = 10.0  # a section's alarm fires this long after its share (its own loops stop within it)
    train_data: str = "cifar10"  # random images of this data set's shape
    train_net: str = "cifar10"
    train_batch: int = 128
    train_reps: tuple = (5, 50)  # (min, max) timed steps per precision
    est_net: str = "digits"
    est_T: int = 1000
    est_batch: int = 128
    est_checkpoint: str = "steps"  # the full chains' activations recomputed in the backward pass (memory, not numbers)
    est_reps: tuple = (16, 200)  # (min, max) replicates per estimator
    unet_net: str = "digits"
    unet_max_reps: int = 32  # timed reps per case and backend: backends.py's count at least, 4× at most, capped
    proc_data: str = "cifar10"
    proc_net: str = "cifar10"
    proc_T: int = 1000
    proc_batch: int = 128
    proc_steps: int = 200  # at most; each run also stops at its share of the time (--minutes)


# With one GPU the processes share goes to the estimators. Backends: JAX's compiles (U-Net step, sampler) count.
FULL = Plan(budget_s=450.0, shares=dict(train_step=50, estimators=190, backends_unet=130, processes=80))
QUICK = Plan(budget_s=300.0, shares=dict(train_step=10, estimators=10, backends_unet=30, processes=40), grace_s=120.0,
             train_data="digits", train_net="digits", train_batch=8, train_reps=(2, 3), est_net="mlp", est_T=10,
             est_batch=8, est_reps=(8, 8), unet_net="mlp", unet_max_reps=2, proc_data="digits",
             proc_net="mlp", proc_T=10, proc_batch=16, proc_steps=12)


# ---------------------------------------------------------------------------------------- timing
class SectionTimeout(Exception):
    """A section ran past its share and its grace."""


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise :class:`SectionTimeout` in the main thread after ``seconds`` (a backstop; no-op off the main thread)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise SectionTimeout(f"ran past its share ({seconds:.0f} s with the grace)")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> tuple[float, object]:
    """(seconds, result) of ``fn()``, the GPU's queue drained before and after."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def time_calls(fn, share_s: float, min_reps: int, max_reps: int) -> dict:
    """``fn``'s first call (timed apart), then timed reps until ``max_reps`` or until the next would pass
    ``share_s`` (counted from the first call); at least one timed rep."""
    start = time.perf_counter()
    first, _ = timed(fn)
    times = []
    while len(times) < max_reps:
        typical = statistics.median(times) if times else first
        if times and time.perf_counter() - start + typical > share_s:
            break
        times.append(timed(fn)[0])
    out = {"first_call_s": first, "reps": len(times), "median_s": statistics.median(times), "times_s": times,
           "quartiles_s": statistics.quantiles(times, n=4) if len(times) > 1 else None}
    if len(times) < min_reps:
        out["note"] = f"{len(times)} timed reps fitted the {share_s:.0f} s share ({min_reps} planned)"
    return out


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:400]}" if text else type(e).__name__


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_memory_gb(reset: bool = False) -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return torch.cuda.max_memory_allocated() / 2 ** 30


# ---------------------------------------------------------------------------------------- sections
def image_dataset(name: str, n_train: int = 1024, n_test: int = 128, seed: int = 0):
    """Random uint8 images of data set ``name``'s shape as a :class:`ppl_diffusion.data.Dataset`."""
    import numpy as np

    from ppl_diffusion.data import PIXEL_BINS, Dataset, load_dataset, to_model_space

    if name == "digits":
        return load_dataset("digits")
    shape = {"cifar10": (3, 32, 32), "mnist": (1, 28, 28)}[name]
    rng = np.random.default_rng(seed)
    train, test = (to_model_space(rng.integers(0, 256, (n, *shape), dtype=np.uint8)) for n in (n_train, n_test))
    return Dataset(name, train, test, shape, PIXEL_BINS, "discretized")


def section_train_step(ctx: dict, out: dict, share: float) -> None:
    from ppl_diffusion.train import TrainConfig

    plan, device = ctx["plan"], ctx["device"]
    has_precision = "precision" in TrainConfig.__dataclass_fields__
    dataset = image_dataset(plan.train_data)
    out.update(preset=plan.train_net, batch=plan.train_batch, T=1000, estimator="stochastic-kl-is",
               data=f"random uint8 images of {plan.train_data}'s shape {list(dataset.event_shape)}" +
               (" (the bundled digits)" if plan.train_data == "digits" else " (no download)"))
    start = time.monotonic()
    precisions = ("fp32", "bf16")
    for k, precision in enumerate(precisions):
        if precision != "fp32" and not has_precision:
            out["rows"].append({"precision": precision, "status": "not available in this build",
                                "reason": "TrainConfig has no field 'precision'"})
            continue
        row = {"precision": precision, "status": "failed"}
        out["rows"].append(row)
        left = (share - (time.monotonic() - start)) / (len(precisions) - k)
        try:
            row.update(_time_train_step(plan, dataset, device, precision if has_precision else None, left))
        except SectionTimeout:
            raise
        except Exception as e:  # recorded; the other precision still runs
            row["error"] = one_line(e)
        free_memory()


def _time_train_step(plan: Plan, dataset, device, precision: str | None, share: float) -> dict:
    import torch

    from ppl_diffusion.train import TrainConfig, make_trainer

    extra = {} if precision is None else {"precision": precision}
    try:
        cfg = TrainConfig(data=plan.train_data, net=plan.train_net, T=1000, batch_size=plan.train_batch, lr=2e-4,
                          warmup_steps=0, steps=1, seed=0, device=str(device), **extra).validate()
    except ValueError as e:  # e.g. bf16 refused on this device: the build's own one-line reason
        return {"status": "refused by TrainConfig", "reason": str(e)}
    peak_memory_gb(reset=True)
    trainer = make_trainer(cfg, dataset, device)
    g = torch.Generator().manual_seed(0)
    losses = []

    def step():
        loss, _ = trainer.step(torch.randperm(len(dataset.train), generator=g)[:cfg.batch_size], cfg.lr)
        losses.append(loss)

    t = time_calls(step, share, *plan.train_reps)
    return {"status": "ok", "images_per_s": cfg.batch_size / t["median_s"], **t, "loss_first": losses[0],
            "loss_last": losses[-1], "peak_memory_gb": peak_memory_gb()}


def section_estimators(ctx: dict, out: dict, share: float) -> None:
    import pyro

    from ppl_diffusion.data import load_dataset
    from ppl_diffusion.study.estimators import make_study_estimator
    from ppl_diffusion.train import TrainConfig, build_diffusion

    plan, device = ctx["plan"], ctx["device"]
    tc = TrainConfig(data="digits", net=plan.est_net, T=plan.est_T, steps=1, seed=0, estimator="trace",
                     checkpoint_activations=plan.est_checkpoint).validate()
    dataset = load_dataset("digits")
    pyro.set_rng_seed(0)
    diffusion = build_diffusion(tc, dataset).to(device).eval()
    x0 = dataset.test[:plan.est_batch].to(device)
    batch = len(x0)
    out.update(net=plan.est_net, T=plan.est_T, batch=batch, checkpoint_activations=diffusion.checkpoint_activations,
               theta=f"freshly initialised {plan.est_net} denoiser (seed 0), eval mode",
               batch_from="the first test digits")
    start = time.monotonic()
    for k, (name, weight) in enumerate(ESTIMATORS.items()):
        left = (share - (time.monotonic() - start)) * weight / sum(list(ESTIMATORS.values())[k:])
        t0 = time.monotonic()
        row = {"estimator": name, "status": "failed", "notes": []}
        out["rows"].append(row)
        try:
            _measure_estimator(make_study_estimator(name, diffusion), x0, k, left, plan.est_reps, row)
        except SectionTimeout:
            raise
        except Exception as e:  # e.g. out of memory in a full chain: recorded, the next estimator still runs
            row["error"] = one_line(e)
        row["seconds"] = time.monotonic() - t0
        free_memory()
    del diffusion
    free_memory()


def _measure_estimator(est, x0, k: int, left: float, reps: tuple, row: dict) -> None:
    """Replicates of ``est`` at the fixed θ into ``row``, sized by its first calls to fit ``left`` seconds."""
    import numpy as np

    from ppl_diffusion.study.fixed import RunningMoments

    t0, (min_reps, max_reps), batch = time.monotonic(), reps, len(x0)
    peak_memory_gb(reset=True)
    row["description"] = est.description
    est.reseed(k)
    row["warmup_calls"] = est.warm_up(x0)
    # The first calls (allocation, kernels chosen) are not reported; they size the replicates.
    first_e, _ = timed(lambda: est.estimate(x0))
    first_g, _ = timed(lambda: est.gradient(x0))
    row.update(first_estimate_s=first_e, first_gradient_s=first_g)
    room = left - (time.monotonic() - t0)
    both = int(room / (first_e + first_g))
    if both >= min_reps:
        n_est = n_grad = min(both, max_reps)
    else:
        n_est = min(min_reps, max(4, int((room - 2 * first_g) / first_e)))
        n_grad = max(2, min(min_reps, int((room - n_est * first_e) / first_g)))
        row["notes"].append(f"gradient replicates cut to {n_grad} by the time share" if n_est >= min_reps else
                            f"replicates cut to {n_est} estimates and {n_grad} gradients by the time share")
    elbo, est_s = [], []
    for _ in range(n_est):
        if len(elbo) >= 4 and time.monotonic() - t0 > left:  # slower than the first call said: stop in time
            row["notes"].append(f"estimates stopped at {len(elbo)} by the time share")
            break
        s, value = timed(lambda: est.estimate(x0))
        elbo.append(value / batch)
        est_s.append(s)
    moments = RunningMoments(est.num_params)
    grad_s = []
    for _ in range(n_grad):
        if len(grad_s) >= 2 and time.monotonic() - t0 > left:
            row["notes"].append(f"gradients stopped at {len(grad_s)} by the time share")
            break
        s, (_, g) = timed(lambda: est.gradient(x0))
        moments.add(g / batch)
        grad_s.append(s)
    n_est, n_grad = len(elbo), len(grad_s)
    sd = float(np.std(elbo, ddof=1))
    row.update(status="ok", replicates_estimate=n_est, replicates_gradient=n_grad,
               elbo_mean=float(np.mean(elbo)), elbo_sd=sd, elbo_se=sd / math.sqrt(n_est),
               seconds_per_estimate=float(np.mean(est_s)), seconds_per_gradient=float(np.mean(grad_s)),
               peak_memory_gb=peak_memory_gb())
    if n_grad >= 2:
        tv, mean_sq = moments.total_variance(), moments.mean_norm_sq()
        row.update(grad_total_variance=tv, grad_snr=math.sqrt(max(mean_sq, 0.0) / tv) if tv > 0 else None)


def _backends_module():
    name = "ppl_diffusion_benchmarks_backends"
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "backends.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def section_backends_unet(ctx: dict, out: dict, share: float) -> None:
    plan, device = ctx["plan"], ctx["device"]
    bk = _backends_module()
    try:
        import jax

        out["jax_device"] = str(jax.devices()[0])
    except ImportError as e:
        out["jax_device"] = f"jax not importable ({e.name} is missing)"
    cases = {b: bk.unet_cases(b, str(device), plan.unet_net) for b in ("pyro", "numpyro")}
    start, todo = time.monotonic(), 2 * len(cases["pyro"])
    for i, (name, T, reps, _) in enumerate(cases["pyro"]):
        row = {"case": name, "T": T}
        out["rows"].append(row)
        for backend in ("pyro", "numpyro"):
            left = (share - (time.monotonic() - start)) / todo
            todo -= 1
            try:
                t0 = time.monotonic()
                fn = cases[backend][i][3]()  # builds the model (NumPyro: and jit-compiles the trainer's step)
                setup = time.monotonic() - t0
                cap = plan.unet_max_reps
                t = time_calls(fn, left - setup, min(reps, cap), min(4 * reps, cap))
                row[backend] = {"setup_s": setup, **{k: v for k, v in t.items() if k != "times_s"}}
            except SectionTimeout:
                raise
            except Exception as e:  # one backend failing (say, jax missing) leaves the other's number
                row[backend] = {"error": one_line(e)}
            free_memory()
        if "median_s" in row["pyro"] and "median_s" in row["numpyro"]:
            row["speedup"] = row["pyro"]["median_s"] / row["numpyro"]["median_s"]


def write_cifar10_batches(root: Path, n_per_batch: int, seed: int = 0) -> Path:
    """Random CIFAR-10 binary batches (label byte + 3072 pixel bytes per record) for ``--data cifar10``."""
    import numpy as np

    from ppl_diffusion.data import CIFAR10_DIR, CIFAR10_FILES, CIFAR10_RECORD

    folder = root / CIFAR10_DIR
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in CIFAR10_FILES["train"] + CIFAR10_FILES["test"]:
        records = rng.integers(0, 256, (n_per_batch, CIFAR10_RECORD), dtype=np.uint8)
        records[:, 0] %= 10
        records.tofile(folder / name)
    return root


def steps_per_second(metrics: Path, skip: int = 3) -> tuple[float, int]:
    """(steps/s, steps measured) from a run's ``metrics.jsonl``, its first ``skip`` steps (or tenth of the steps, if
    more) dropped: the first steps build Pyro's traces, allocate, and pick cuDNN's kernels."""
    rows = {}
    for line in metrics.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError):
            r = json.loads(line)
            rows[int(r["step"])] = float(r["elapsed"])
    steps = sorted(rows)
    if len(steps) < skip + 2:
        raise RuntimeError(f"{metrics} has {len(steps)} steps; {skip + 2} are needed for a rate")
    a, b = steps[max(skip, len(steps) // 10)], steps[-1]
    return (b - a) / (rows[b] - rows[a]), b - a


def run_killable(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` in its own process group, the whole group killed on timeout or interruption."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kwargs)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, None)


def section_processes(ctx: dict, out: dict, share: float) -> None:
    import torch

    plan, on_gpu = ctx["plan"], ctx["device"].type == "cuda"
    n = _processes(ctx["procs"], on_gpu)
    if n < 2:
        here = f"{torch.cuda.device_count()} CUDA device(s) here" if on_gpu else "a CPU run (--quick)"
        out.update(status="skipped", reason=f"{here}: 1 against N processes needs N > 1 GPUs; --procs N forces N "
                   "processes (on CPU with gloo)")
        return
    device = "auto" if on_gpu and torch.cuda.device_count() >= n else "cpu"
    out.update(processes=n, preset=plan.proc_net, data=plan.proc_data, global_batch=plan.proc_batch, T=plan.proc_T,
               device=device)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        tmp = Path(tmp)
        data = ["--data", plan.proc_data]
        if plan.proc_data == "cifar10":
            data += ["--data-root", str(write_cifar10_batches(tmp / "data", 1000))]
        paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))  # the package of this checkout, installed or not
        start = time.monotonic()
        for k, procs in enumerate((1, n)):
            left = (share - (time.monotonic() - start)) / (2 - k)
            minutes = max(left - 30.0, 0.25 * left) / 60.0  # start-up (imports, CUDA, process group) not counted
            args = ["train", *data, "--net", plan.proc_net, "--T", str(plan.proc_T), "--batch-size",
                    str(plan.proc_batch), "--steps", str(plan.proc_steps), "--minutes", f"{minutes:.3f}",
                    "--warmup-steps", "0", "--log-every", "1", "--checkpoint-every", "1000000",
                    "--keep-checkpoints", "1", "--device", device, "--no-progress",
                    "--run-dir", str(tmp / f"run{procs}")]
            launcher = ([sys.executable, "-m", "ppl_diffusion"] if procs == 1 else
                        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
                         "-m", "ppl_diffusion"])
            row = {"processes": procs, "command": " ".join(shlex.quote(a) for a in launcher + args)}
            out["rows"].append(row)
            t0 = time.monotonic()
            try:
                done = run_killable(launcher + args, timeout=left, cwd=REPO, env=env)
                if done.returncode:
                    tail = [ln for ln in done.stdout.splitlines() if ln.strip()][-1:] or ["(no output)"]
                    row["error"] = f"exit {done.returncode}: {tail[0][:400]}"
            except subprocess.TimeoutExpired:
                row["error"] = f"killed after {left:.0f} s; the rate is from the steps it logged"
            row["wall_s"] = time.monotonic() - t0
            metrics = tmp / f"run{procs}" / "metrics.jsonl"
            if metrics.exists():
                with contextlib.suppress(RuntimeError):
                    rate, measured = steps_per_second(metrics)
                    row.update(steps_per_s=rate, steps_measured=measured, images_per_s=rate * plan.proc_batch)
    rates = [r.get("steps_per_s") for r in out["rows"]]
    if None in rates:
        out.update(status="failed", error="a run logged too few steps for a rate: " +
                   "; ".join(r.get("error", "") for r in out["rows"] if "steps_per_s" not in r))
        return
    out.update(ratio=rates[1] / rates[0], efficiency=rates[1] / rates[0] / n)


def _processes(procs: int | None, on_gpu: bool) -> int:
    """N of the processes section: ``--procs``, else the number of GPUs (none in a CPU run)."""
    import torch

    return procs or (torch.cuda.device_count() if on_gpu else 0)


SECTION_FUNCTIONS = {"train_step": section_train_step, "estimators": section_estimators,
                     "backends_unet": section_backends_unet, "processes": section_processes}


def run_section(name: str, ctx: dict, deadline: float) -> dict:
    """One section under its share (cut to the time left) and an alarm; failures recorded, never raised."""
    out = {"status": "running", "rows": []}
    left = deadline - time.monotonic()
    if left < 5.0:
        return {"status": "skipped", "reason": f"the run's {ctx['plan'].budget_s:.0f} s budget was spent", "rows": []}
    share = min(float(ctx["plan"].shares[name]), left)
    t0 = time.monotonic()
    print(f"[{time.monotonic() - STARTED:6.1f} s] {name}: share {share:.0f} s", flush=True)
    try:
        with alarm(share + ctx["plan"].grace_s):
            SECTION_FUNCTIONS[name](ctx, out, share)
        if out["status"] == "running":
            out["status"] = "ok"
    except (Exception, SectionTimeout) as e:
        out.update(status="failed", error=one_line(e), traceback=traceback.format_exc(limit=-4).splitlines()[-6:])
    with contextlib.suppress(Exception):
        free_memory()
    out["share_s"], out["seconds"] = share, time.monotonic() - t0
    print(f"[{time.monotonic() - STARTED:6.1f} s] {name}: {out['status']}" +
          (f" ({out.get('error') or out.get('reason')})" if out["status"] != "ok" else ""), flush=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the same sections on CPU with tiny sizes (a test)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="results folder")
    p.add_argument("--budget-s", type=float, default=None,
                   help="the whole run's seconds (default 450; --quick 300, a cap)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    p.add_argument("--procs", type=int, default=None,
                   help="N of the processes section (default: the number of GPUs; 2 runs it on CPU with gloo)")
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad or not sections:
        p.error(f"unknown section {bad[0] if bad else '(none)'!r}; choose from {', '.join(SECTIONS)}")
    if args.procs is not None and args.procs < 1:
        p.error(f"--procs {args.procs}; pass a positive number of processes")
    import torch

    if not args.quick and not torch.cuda.is_available():
        p.error("no CUDA device here; run this on a GPU machine, or pass --quick for the CPU smoke test")
    plan = QUICK if args.quick else FULL
    device = torch.device("cpu" if args.quick else "cuda")
    shares = dict(plan.shares)
    if _processes(args.procs, device.type == "cuda") < 2:  # the processes section will only record why it skips
        shares["estimators"] += shares["processes"]
        shares["processes"] = 0
    plan = Plan(**{**plan.__dict__, "shares": shares,
                   **({} if args.budget_s is None else {"budget_s": args.budget_s})})
    if args.quick:
        torch.set_num_threads(1)  # tiny sizes: one thread is as fast, and immune to other processes' load
    ctx = {"plan": plan, "device": device, "procs": args.procs}
    deadline = STARTED + plan.budget_s
    results = {name: run_section(name, ctx, deadline) for name in sections}

    line = " ".join(shlex.quote(a) for a in ["python", "benchmarks/gpu.py", *(sys.argv[1:] if argv is None else argv)])
    meta = machine(line, plan.budget_s, device)
    meta["seconds"] = time.monotonic() - STARTED
    result = {"meta": meta, "sections": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"gpu-{slug(meta['device'])}" + ("-quick" if args.quick else "")
    if tuple(sections) != SECTIONS:  # a subset never overwrites the whole run's record
        stem += "-" + "-".join(sections)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = markdown(result)
    (out / f"{stem}.md").write_text(text + "\n")
    print(text)
    print(f"wrote {out / stem}.json and .md")
    return result


if __name__ == "__main__":
    main()
