"""Peak memory and time of one full-chain gradient with and without activation checkpointing
(``GaussianDiffusion(checkpoint_activations=...)``, ``--checkpoint-activations``), on the digits U-Net preset.

Each configuration (batch, T, level) runs in a fresh process: it builds the digits U-Net (``--net digits``, seed 0,
training mode, as a training step has it), takes a warm-up gradient at T = 2 (one-time costs: allocation, the
first checkpoint call), then one ``Trace_ELBO`` gradient of the full chain over the first ``batch`` test digits
(``differentiable_loss`` and ``backward``, what ``--estimator trace`` does per step). Memory:

- CPU: the process's peak resident set (``getrusage(RUSAGE_SELF).ru_maxrss``) minus its resident set just before
  the gradient (weights, data, Python and torch already in): what the gradient itself added at its peak;
- the bytes autograd saved for the backward pass (``torch.autograd.graph.saved_tensors_hooks`` counting every
  tensor packed): the activations kept, exact and independent of the allocator;
- CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated`` over the gradient.

Levels: ``none`` (every activation kept), ``steps`` (each step's net call recomputed in the backward pass),
``blocks`` (``steps`` and each U-Net block). A full chain at T = 1000 takes about an hour per gradient at
batch 128 on this 2-core CPU (and the stored path would need ~270 GB), so on a CPU the script measures at small T
and extrapolates each quantity linearly in T (memory and time are a + b·T: T calls, each keeping its activations
or only its inputs; the fit uses the two T values, and the table says so); on a GPU pass ``--T 1000``. The
configurations of one (batch, T) run back to back (interleaved), so the time ratios compare like with like.

Run (about 7 minutes on 2 shared cores, at nice 10)::

    nice -n 10 python benchmarks/memory.py          # writes benchmarks/results/memory.{md,json}
    python benchmarks/memory.py --quick             # a smoke test (tiny: batch 4, T 2 and 3)
    python benchmarks/memory.py --device cuda --T 1000 --batches 32 128
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from distributed import cpu_name  # noqa: E402  (benchmarks/distributed.py: the CPU's model name)

LEVELS = ("none", "steps", "blocks")
TARGET_T = 1000
TARGET_GB = 2.0  # the bar: batch 128 at T = 1000 in at most 2 GB, under 1.5x the time
TARGET_RATIO = 1.5


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def one_config(batch: int, T: int, level: str, device: str, net: str) -> dict:
    """In this fresh process: one full-chain gradient's peak memory, saved bytes and seconds."""
    import pyro
    import torch
    from pyro.infer import Trace_ELBO

    sys.path.insert(0, str(REPO))
    from ppl_diffusion.data import load_dataset
    from ppl_diffusion.train import TrainConfig, build_diffusion

    dataset = load_dataset("digits")
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    tc = TrainConfig(data="digits", net=net, T=T, steps=1, seed=0, estimator="trace",
                     checkpoint_activations=level).validate()
    diffusion = build_diffusion(tc, dataset).to(device).train()
    x0 = dataset.test[:batch].to(device)
    cuda = device.startswith("cuda")

    def gradient(model, count: bool) -> tuple[float, int]:
        saved = [0]

        def pack(x):
            saved[0] += x.numel() * x.element_size()
            return x

        pyro.clear_param_store()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x) if count else None
        if hooks is not None:
            with hooks:
                loss = Trace_ELBO().differentiable_loss(model.model, model.guide, x0)
        else:
            loss = Trace_ELBO().differentiable_loss(model.model, model.guide, x0)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        for p in model.parameters():
            p.grad = None
        return seconds, saved[0]

    gradient(diffusion.with_steps(2) if diffusion.gamma_schedule else _short(diffusion, 2), count=False)  # warm-up
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = _rss_bytes()
    seconds, saved = gradient(diffusion, count=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    row = {"batch": batch, "T": T, "level": level, "seconds": seconds, "saved_bytes": saved,
           "rss_before_bytes": before, "peak_rss_bytes": peak, "gradient_peak_bytes": max(0, peak - before),
           "threads": torch.get_num_threads(), "parameters": sum(p.numel() for p in diffusion.denoiser.parameters())}
    if cuda:
        row["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return row


def interleaved_times(batch: int, T: int, reps: int, levels, device: str, net: str) -> dict:
    """In one process: ``reps`` rounds of one gradient per level, the levels alternating (the same process, the
    same moment of a shared machine's load); the median seconds per level and their ratios to ``none``."""
    import statistics

    import pyro
    import torch
    from pyro.infer import Trace_ELBO

    sys.path.insert(0, str(REPO))
    from ppl_diffusion.data import load_dataset
    from ppl_diffusion.train import TrainConfig, build_diffusion

    dataset = load_dataset("digits")
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    diffusion = build_diffusion(TrainConfig(data="digits", net=net, T=T, steps=1, seed=0).validate(), dataset)
    diffusion = diffusion.to(device).train()
    x0 = dataset.test[:batch].to(device)
    times = {level: [] for level in levels}
    for rep in range(reps + 1):  # round 0 warms every level up, not reported
        for level in levels:
            diffusion.checkpoint_activations = level
            pyro.clear_param_store()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            Trace_ELBO().differentiable_loss(diffusion.model, diffusion.guide, x0).backward()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if rep:
                times[level].append(time.perf_counter() - t0)
            for p in diffusion.parameters():
                p.grad = None
    median = {level: statistics.median(v) for level, v in times.items()}
    return {"batch": batch, "T": T, "reps": reps, "seconds": times, "median_s": median,
            "ratio_to_none": {level: median[level] / median["none"] for level in levels}}


def _short(diffusion, T: int):
    """The same denoiser in a T-step linear chain (the warm-up's)."""
    from ppl_diffusion import GaussianDiffusion, NoiseSchedule

    return GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=diffusion.denoiser,
                             event_shape=tuple(diffusion.event_shape), decoder=diffusion.decoder,
                             checkpoint_activations=diffusion.checkpoint_activations)


def fit(rows: list[dict], key: str, T: int) -> float | None:
    """``key`` extrapolated linearly in T to ``T`` from the rows' two (or more: least squares) T values."""
    import numpy as np

    ts = np.array([r["T"] for r in rows], float)
    ys = np.array([r[key] for r in rows], float)
    if len(set(ts)) < 2:
        return float(ys.mean()) if ts[0] == T else None
    b, a = np.polyfit(ts, ys, 1)
    return float(a + b * T)


def summarize(rows: list[dict], batches, levels) -> list[dict]:
    """Per (batch, level): every quantity at T = 1000 (measured there, or extrapolated from the rows)."""
    summary = []
    for batch in batches:
        base = [r for r in rows if r["batch"] == batch and r["level"] == "none"]
        for level in levels:
            mine = [r for r in rows if r["batch"] == batch and r["level"] == level]
            entry = {"batch": batch, "level": level, "T": TARGET_T, "measured_T": sorted({r["T"] for r in mine}),
                     "extrapolated": any(r["T"] != TARGET_T for r in mine)}
            for key in ("seconds", "saved_bytes", "gradient_peak_bytes", "peak_rss_bytes",
                        *(["cuda_max_allocated_bytes"] if "cuda_max_allocated_bytes" in mine[0] else [])):
                entry[key] = fit(mine, key, TARGET_T)
            # The RSS of two small T differs by little more than the allocator's noise when the path keeps only
            # the calls' inputs; the saved bytes grow exactly. So also: the peak at the largest T measured plus
            # the saved bytes' growth per step times the steps still to come.
            top = max(mine, key=lambda r: r["T"])
            entry["peak_by_saved_bytes"] = top["gradient_peak_bytes"] + max(
                0.0, fit(mine, "saved_bytes", TARGET_T) - top["saved_bytes"])
            # The time ratio to the stored path at the sizes measured (same T, back to back), and at T = 1000.
            if base:
                entry["time_ratio_measured"] = {r["T"]: r["seconds"] / b["seconds"] for r in mine for b in base
                                                if b["T"] == r["T"]}
                entry["time_ratio"] = entry["seconds"] / fit(base, "seconds", TARGET_T)
            summary.append(entry)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--T", type=int, nargs="+", default=None, help="chain lengths measured (default 4 12)")
    parser.add_argument("--levels", nargs="+", default=list(LEVELS), choices=LEVELS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--net", default="digits", help="the --net preset (default digits)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each process (default 1)")
    parser.add_argument("--quick", action="store_true", help="smoke test: batch 4, T 2 and 3, written as memory_quick")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--time-batches", type=int, nargs="+", default=None,
                        help="batches of the interleaved timing (default: --batches)")
    parser.add_argument("--time-T", type=int, default=None, help="T of the interleaved timing (default 4)")
    parser.add_argument("--time-reps", type=int, default=3, help="rounds of the interleaved timing (default 3)")
    parser.add_argument("--report", default=None, help="re-render this results JSON (and its .md) and exit")
    parser.add_argument("--child", nargs=3, metavar=("BATCH", "T", "LEVEL"), help=argparse.SUPPRESS)
    parser.add_argument("--time-child", nargs=3, metavar=("BATCH", "T", "REPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_config(int(args.child[0]), int(args.child[1]), args.child[2], args.device, args.net)))
        return
    if args.report:  # re-render a results JSON (summary recomputed from its rows)
        result = json.loads(Path(args.report).read_text())
        result["at_T1000"] = summarize(result["rows"], sorted({r["batch"] for r in result["rows"]}),
                                       [lv for lv in LEVELS if any(r["level"] == lv for r in result["rows"])])
        Path(args.report).write_text(json.dumps(result, indent=1) + "\n")
        Path(args.report).with_suffix(".md").write_text(report(result))
        return
    if args.time_child:
        b, T, reps = map(int, args.time_child)
        print(json.dumps(interleaved_times(b, T, reps, args.levels, args.device, args.net)))
        return
    batches = [4] if args.quick else args.batches
    ts = args.T or ([2, 3] if args.quick else [4, 12])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    rows, started = [], time.monotonic()
    for batch in batches:
        for T in ts:
            for level in args.levels:  # interleaved: the levels of one (batch, T) back to back
                cmd = [sys.executable, __file__, "--device", args.device, "--net", args.net, "--child", str(batch),
                       str(T), level]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"{shlex.join(cmd)} failed:\n{done.stderr[-3000:]}")
                row = json.loads(done.stdout.splitlines()[-1])
                rows.append(row)
                print(f"batch {batch:4d}  T {T:5d}  {level:6s}  {row['seconds']:8.2f} s  "
                      f"peak +{row['gradient_peak_bytes'] / 2**20:8.1f} MiB  saved {row['saved_bytes'] / 2**20:8.1f} MiB",
                      flush=True)
    timing = []
    time_T = args.time_T or (2 if args.quick else 4)
    for batch in ([4] if args.quick else args.time_batches or batches):
        cmd = [sys.executable, __file__, "--device", args.device, "--net", args.net, "--levels", *args.levels,
               "--time-child", str(batch), str(time_T), str(1 if args.quick else args.time_reps)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed:\n{done.stderr[-3000:]}")
        timing.append(json.loads(done.stdout.splitlines()[-1]))
        print(f"interleaved, batch {batch}, T {time_T}: " + ", ".join(
            f"{k} {v:.2f} s ({timing[-1]['ratio_to_none'][k]:.2f}x)" for k, v in timing[-1]["median_s"].items()),
            flush=True)
    summary = summarize(rows, batches, args.levels)
    load = os.getloadavg()
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join(["python", "benchmarks/memory.py", *sys.argv[1:]]),
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads_per_process": args.threads,
                          "device": args.device, "load_average_at_end": load,
                          "note": "the CPU was shared with other jobs (run at nice 10): times are noisy, ratios "
                                  "within one (batch, T) were measured back to back"},
              "net": args.net, "parameters": rows[0]["parameters"], "wall_s": time.monotonic() - started,
              "rows": rows, "interleaved_timing": timing, "at_T1000": summary}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "memory_quick" if args.quick else "memory"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{name}.md").write_text(report(result))
    print(report(result))


def _gib(x: float | None) -> str:
    return "—" if x is None else f"{x / 2**30:.2f}"


def report(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Full-chain gradient memory with and without activation checkpointing ({result['net']} U-Net, "
             f"{result['parameters']:,} parameters)", "",
             f"{result['date']} · `{result['command']}` · {m['cpu']}, {m['cores']} cores, {m['threads_per_process']} "
             f"thread per process, device {m['device']} · load average at the end {m['load_average_at_end'][0]:.1f} "
             f"(shared with other jobs: times are noisy; the levels of one row group ran back to back) · "
             f"wall {result['wall_s']:.0f} s", "",
             "One `Trace_ELBO` gradient of the full chain (`differentiable_loss` + `backward`), each configuration in "
             "a fresh process after a warm-up gradient at T = 2. *peak*: the process's peak RSS minus its RSS just "
             "before the gradient; *saved*: the bytes autograd kept for the backward pass (a tensor counted each time an operation saves it: an upper "
             "bound on what is kept).", "",
             "## Measured", "",
             "| batch | T | level | seconds | time / none | peak (MiB) | saved (MiB) |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    rows = result["rows"]
    for r in rows:
        base = next((b for b in rows if b["batch"] == r["batch"] and b["T"] == r["T"] and b["level"] == "none"), None)
        ratio = f"{r['seconds'] / base['seconds']:.2f}" if base else "—"
        lines.append(f"| {r['batch']} | {r['T']} | {r['level']} | {r['seconds']:.2f} | {ratio} | "
                     f"{r['gradient_peak_bytes'] / 2**20:.1f} | {r['saved_bytes'] / 2**20:.2f} |")
    lines += ["", "## Time, interleaved", "",
              "One process per batch, the levels alternating gradient by gradient (after a warm-up round): the "
              "time ratio to the stored path measured at the same moment of the machine's load (median of the "
              "rounds). The ratio does not depend on T (every step is one call, stored or recomputed).", "",
              "| batch | T | rounds | " + " | ".join(f"{k} (s)" for k in result["interleaved_timing"][0]["median_s"])
              + " | " + " | ".join(f"{k} / none" for k in result["interleaved_timing"][0]["median_s"]) + " |",
              "|---:|---:|---:|" + "---:|" * (2 * len(result["interleaved_timing"][0]["median_s"]))]
    for t in result["interleaved_timing"]:
        lines.append(f"| {t['batch']} | {t['T']} | {t['reps']} | "
                     + " | ".join(f"{v:.2f}" for v in t["median_s"].values()) + " | "
                     + " | ".join(f"{v:.2f}" for v in t["ratio_to_none"].values()) + " |")
    lines += ["", f"## At T = {TARGET_T}", ""]
    if any(e["extrapolated"] for e in result["at_T1000"]):
        lines += ["Extrapolated linearly in T from the measured T values (a + b·T through them): a full chain at "
                  f"T = {TARGET_T} was not run here. Target: batch 128 in at most {TARGET_GB:g} GB at under "
                  f"{TARGET_RATIO:g}× the stored path's time.", ""]
    lines += ["*seconds* extrapolates the fresh processes' times (noisy); *time / none* is the interleaved ratio; "
              "*peak, fit*: the peak RSS increase fitted a + b·T; *peak, saved*: the peak at the largest T measured "
              "plus the growth of the saved bytes from there to T = 1000 (where the stored bytes per step are small, "
              "the fit's slope is mostly the allocator's noise between two runs).", "",
              "| batch | level | seconds | time / none | peak, fit (GiB) | peak, saved (GiB) | saved (GiB) | from T |",
              "|---:|---|---:|---:|---:|---:|---:|---|"]
    for e in result["at_T1000"]:
        inter = next((t for t in result["interleaved_timing"] if t["batch"] == e["batch"]), None)
        ratio = f"{inter['ratio_to_none'][e['level']]:.2f}" if inter else "—"
        lines.append(f"| {e['batch']} | {e['level']} | {e['seconds']:.0f} | {ratio} | {_gib(e['gradient_peak_bytes'])} "
                     f"| {_gib(e.get('peak_by_saved_bytes'))} | {_gib(e['saved_bytes'])} | "
                     f"{', '.join(map(str, e['measured_T']))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
