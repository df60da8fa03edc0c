"""The record of benchmarks/gpu.py: the machine it ran on (:func:`machine`) and its markdown (:func:`markdown`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import platform
import re
import subprocess


def _run_text(cmd: list[str]) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return done.stdout.strip() or None if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine(args_line: str, budget_s: float, device) -> dict:
    """The record's header: date, command, the device the sections ran on (a GPU's name, memory, CUDA, cuDNN and
    driver versions), the CPU and the library versions."""
    import pyro
    import torch
    from pyro.infer.util import is_validation_enabled

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.lower().startswith("model name"))
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": args_line,
            "cpu": f"{os.cpu_count()}-core {cpu}", "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "pyro": pyro.__version__, "budget_s": budget_s,
            "pyro_validation": is_validation_enabled()}  # Pyro's default (on): what a user trains with
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta.update(device=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                    device_memory_gb=round(props.total_memory / 2 ** 30, 1),
                    compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    driver=_run_text(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    else:
        meta.update(device="cpu", device_count=0, cuda_devices_present=torch.cuda.device_count())
    for module in ("jax", "numpyro", "flax"):
        try:
            meta[module] = __import__(module).__version__
        except ImportError:
            meta[module] = "not installed"
    with contextlib.suppress(Exception):
        import jax

        meta["jax_devices"] = str(jax.devices())
    return meta


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower().split("(")[0]).strip("-") or "device"


def _f(x, spec=".3g") -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def markdown(result: dict) -> str:
    m, s = result["meta"], result["sections"]
    lines = [f"# ppl_diffusion on {m['device']}", "", f"- Command: `{m['command']}` ({m['date']}, "
             f"{m['seconds']:.0f} s of a {m['budget_s']:.0f} s budget)",
             f"- Device: {m['device']}" + (
                 f", {m['device_memory_gb']} GiB, compute capability {m['compute_capability']}, CUDA {m['cuda']}, "
                 f"cuDNN {m['cudnn']}, driver {m['driver']}, {m['device_count']} device(s); TF32 matmul "
                 f"{m['tf32_matmul']}, cuDNN {m['tf32_cudnn']}" if m["device_count"] else ""),
             f"- Host: {m['cpu']}; Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), pyro "
             f"{m['pyro']} (validation {'on' if m['pyro_validation'] else 'off'}), jax {m['jax']} "
             f"({m.get('jax_devices', '?')}), numpyro {m['numpyro']}, flax {m['flax']}", ""]

    def head(name, title):
        sec = s.get(name)
        if sec is None:
            return None
        lines.extend([f"## {title}", ""])
        if sec["status"] != "ok":
            lines.extend([f"**{sec['status']}**: {sec.get('error') or sec.get('reason')}", ""])
        return sec if sec.get("rows") else None  # what it measured before failing is still shown

    sec = head("train_step", "Training step")
    if sec:
        lines += [f"{sec.get('preset')} preset, batch {sec.get('batch')}, T = 1000, stochastic-kl-is; "
                  f"{sec.get('data')}.",
                  "", "| precision | images/s | ms/step (median) | quartiles (ms) | reps | first call (s) | "
                  "peak memory (GiB) | loss first → last |", "|:---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sec["rows"]:
            if r.get("status") != "ok":
                why = r.get("reason") or r.get("error") or ""
                lines.append(f"| {r['precision']} | {r['status']}{': ' + why if why else ''} | | | | | | |")
                continue
            q = r["quartiles_s"]
            lines.append(f"| {r['precision']} | {r['images_per_s']:.1f} | {1e3 * r['median_s']:.1f} | "
                         f"{'—' if q is None else f'{1e3 * q[0]:.1f}–{1e3 * q[2]:.1f}'} | {r['reps']} | "
                         f"{r['first_call_s']:.1f} | {_f(r['peak_memory_gb'], '.2f')} | "
                         f"{r['loss_first']:.4g} → {r['loss_last']:.4g} |")
        lines.append("")
    sec = head("estimators", "Estimators at a fixed θ")
    if sec:
        lines += [f"{sec.get('theta')}, T = {sec.get('T')}, batch {sec.get('batch')} ({sec.get('batch_from')}), "
                  f"checkpoint_activations {sec.get('checkpoint_activations', 'none')!r}; ELBO "
                  "in nats per example.", "",
                  "| estimator | ELBO mean | sd | se | estimates | s/estimate | gradients | s/gradient | grad tr Cov | "
                  "SNR | peak GiB | notes |", "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|"]
        for r in sec["rows"]:
            if r["status"] != "ok":
                why = "; ".join([*r["notes"], *filter(None, [r.get("error")])])
                lines.append(f"| {r['estimator']} | {r['status']} | | | | | | | | | | {why} |")
                continue
            lines.append(f"| {r['estimator']} | {r['elbo_mean']:.3f} | {r['elbo_sd']:.3g} | {r['elbo_se']:.2g} | "
                         f"{r['replicates_estimate']} | {r['seconds_per_estimate']:.3g} | {r['replicates_gradient']} | "
                         f"{r['seconds_per_gradient']:.3g} | {_f(r.get('grad_total_variance'))} | "
                         f"{_f(r.get('grad_snr'))} | {_f(r['peak_memory_gb'], '.2f')} | {'; '.join(r['notes'])} |")
        lines.append("")
    sec = head("backends_unet", "Backends, rows (iv)")
    if sec:
        lines += [f"Pyro on the device above, NumPyro (jit) on {sec.get('jax_device')}; one process.", "",
                  "| case | Pyro (ms) | NumPyro (ms) | speed-up | NumPyro set-up + first call (s) | reps |",
                  "|:---|---:|---:|---:|---:|---:|"]
        for r in sec["rows"]:
            p, n = r.get("pyro", {}), r.get("numpyro", {})
            cell = lambda d: f"{1e3 * d['median_s']:.1f}" if "median_s" in d else d.get("error", "—")  # noqa: E731
            lines.append(f"| {r['case']} | {cell(p)} | {cell(n)} | {_f(r.get('speedup'), '.2f')} | "
                         f"{_f(n.get('setup_s', math.nan) + n.get('first_call_s', math.nan), '.1f')} | "
                         f"{p.get('reps', '—')} / {n.get('reps', '—')} |")
        lines.append("")
    sec = head("processes", "1 against N processes")
    if sec:
        lines += [f"`ppl-diffusion train`, {sec.get('preset')} preset on {sec.get('data')}, global batch "
                  f"{sec.get('global_batch')}; ratio {_f(sec.get('ratio'), '.2f')}, efficiency "
                  f"{_f(sec.get('efficiency'), '.2f')}.", "",
                  "| processes | steps/s | images/s | steps | wall (s) | error |",
                  "|---:|---:|---:|---:|---:|:---|"]
        for r in sec["rows"]:
            lines.append(f"| {r['processes']} | {_f(r.get('steps_per_s'))} | {_f(r.get('images_per_s'), '.1f')} | "
                         f"{r.get('steps_measured', '—')} | {_f(r.get('wall_s'), '.0f')} | {r.get('error', '')} |")
        lines.append("")
    return "\n".join(lines)
