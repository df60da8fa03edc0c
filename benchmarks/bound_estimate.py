"""The full bound against its unbiased estimate (``evaluate --bound estimate``), and what a CIFAR-10 bound costs.

(1) Digits U-Net (``--run``, EMA weights, the trained variance, seed 0) on the test digits: the full bound (every
    one of the T = 1000 terms per example: bits/dim, SE over examples, calls = denoiser inputs, seconds), computed
    in chunks of 20 examples cached under ``--cache`` (a rerun reuses them; their seconds are those of the run that
    computed them), against the estimate (:mod:`ppl_diffusion.infer.estimate`) in several settings, each run for
    real: bits/dim, SE over examples (includes the t-sampling), the reported t-sampling SE, calls (the pilot's
    included), seconds, and the difference from the full bound of the same examples and seed. Because the
    estimate's terms ARE the full bound's terms at the drawn steps (same noise; tested in tests/test_estimate.py),
    the spread of the estimate over ``--replicates`` independent draw seeds is also computed exactly from the
    cached full terms, without the network: the empirical t-sampling SE to set beside the reported one.
(2) The ``cifar10`` U-Net preset (DDPM's, ~35.7M parameters): its parameter count, FLOPs per input
    (torch.utils.flop_counter, one forward at batch 1; a multiply-add is 2 FLOPs), and the time of one forward at
    batch 1..64 on this CPU (``--threads``); from those, the full bound's cost for 10,000 test images x 1,000 steps
    on this CPU (measured per-input time x inputs) and on a GPU (FLOPs / an ASSUMED sustained throughput: an
    estimate, not a measurement), and the estimate's cost for the same plans.

Rerun (2 shared CPU cores; ~12 min for the full digits bound, ~6 min for the estimates, ~3 min for the CIFAR
section)::

    python benchmarks/bound_estimate.py --run /work/main/runs/ode-unet-digits --cache /tmp/full-digits
    python benchmarks/bound_estimate.py --quick --out /tmp/q     # seconds: a fresh MLP at T = 40, for the tests
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from estimators import machine_info  # noqa: E402

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule  # noqa: E402
from ppl_diffusion.data import load_dataset  # noqa: E402
from ppl_diffusion.evaluate import per_example_terms  # noqa: E402
from ppl_diffusion.infer.estimate import estimate_bound, pilot_profile, plan_from_profile, plan_uniform  # noqa: E402
from ppl_diffusion.nets import unet_preset  # noqa: E402
from ppl_diffusion.sampling import load_run  # noqa: E402

# (name, proposal, full_steps t_0, strata K, draws m)
SETTINGS = [("uniform 20+20x2", "uniform", 20, 20, 2), ("pilot 20+20x2 (default)", "pilot", 20, 20, 2),
            ("pilot 10+10x2", "pilot", 10, 10, 2), ("pilot 5+5x2", "pilot", 5, 5, 2),
            ("pilot 20+40x2", "pilot", 20, 40, 2), ("curve's: uniform 20+49x1", "uniform", 20, 49, 1)]
QUICK_SETTINGS = [("uniform 4+4x2", "uniform", 4, 4, 2), ("pilot 4+4x2", "pilot", 4, 4, 2)]
# Sustained throughput ASSUMED for a conv U-Net forward at 32x32 (not measured here): a fraction of the datasheet's
# dense peak (A100 SXM: 19.5 TFLOP/s fp32, 156 tf32, 312 bf16; H100 SXM: 989 bf16). A small-resolution U-Net with
# GroupNorm and attention is partly memory-bound, so the tensor-core rows assume a quarter of peak; the truth may
# be 2x either way. (short name, description, FLOP/s)
GPU_ASSUMPTIONS = [("A100 fp32", "A100, fp32 without TF32, 70% of 19.5 TFLOP/s", 0.70 * 19.5e12),
                   ("A100 tf32", "A100, fp32 with TF32 convs/matmuls, 25% of 156 TFLOP/s", 0.25 * 156e12),
                   ("A100 bf16", "A100, bf16 autocast, 25% of 312 TFLOP/s", 0.25 * 312e12),
                   ("H100 bf16", "H100 SXM, bf16 autocast, 25% of 989 TFLOP/s", 0.25 * 989e12)]
CIFAR_IMAGES, CIFAR_T = 10_000, 1000
REUSED: list[int] = []  # the full bound's chunks read from --cache


def full_bound(diffusion, x, cache: Path | None, chunk: int = 20) -> tuple[np.ndarray, float]:
    """Every term of every example (``[N x (T + 1)]``) and the seconds it took, in chunks cached under ``cache``."""
    parts, seconds = [], 0.0
    times = {}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        if (cache / "times.jsonl").exists():
            times = {r["start"]: r["seconds"] for r in map(json.loads, (cache / "times.jsonl").read_text().splitlines())}
    for start in range(0, len(x), chunk):
        f = None if cache is None else cache / f"terms-{start:03d}.npy"
        n = min(chunk, len(x) - start)
        if f is not None and f.exists() and start in times:
            parts.append(np.load(f)[:n])
            seconds += times[start]
            REUSED.append(start)
            continue
        t0 = time.perf_counter()
        terms = per_example_terms(diffusion, x[start:start + n], batch_size=n, timesteps_per_batch=max(1, 500 // n),
                                  seed=0, indices=np.arange(start, start + n)).numpy()
        took = time.perf_counter() - t0
        seconds += took
        parts.append(terms)
        if f is not None:
            np.save(f, terms)
            with open(cache / "times.jsonl", "a") as fh:
                fh.write(json.dumps({"start": start, "n": n, "seconds": took}) + "\n")
        print(f"  full bound: examples {start}..{start + n - 1} in {took:.1f} s", flush=True)
    return np.concatenate(parts), seconds


def make_plan(diffusion, train, proposal, t0, K, m):
    if proposal == "uniform":
        return plan_uniform(diffusion.T, full_steps=t0, strata=K, draws=m), 0, 0.0
    start = time.perf_counter()
    profile, calls = pilot_profile(diffusion, train[:16], seed=0, full_steps=t0)
    return plan_from_profile(profile, full_steps=t0, strata=K, draws=m), calls, time.perf_counter() - start


def replicate_spread(plan, full: np.ndarray, replicates: int, to_bpd: float) -> float:
    """SD over ``replicates`` draw seeds of the mean bits/dim, from the full bound's own terms (no network)."""
    n, t0 = len(full), plan.full_steps
    fixed = full[:, :t0].sum(1) + full[:, -1]
    means = []
    for r in range(replicates):
        steps, weights = plan.draw(1000 + r, np.arange(n))
        means.append(((fixed + (full[np.arange(n)[:, None, None], steps - 1] * weights).sum((1, 2))) * to_bpd).mean())
    return float(np.std(means, ddof=1))


def digits_section(args, quick: bool) -> dict:
    data = load_dataset("digits")
    if quick:
        torch.manual_seed(0)
        d = GaussianDiffusion(schedule=NoiseSchedule.linear(40), denoiser=MLPDenoiser(dim=64),
                              event_shape=data.event_shape, decoder="discretized").eval()
        x, what = data.test[:24], "a fresh MLP denoiser, T = 40 (smoke test)"
    else:
        run = load_run(args.run, ema=True, device="cpu")
        d = run.diffusion
        x = data.test if args.examples is None else data.test[:args.examples]
        what = f"{run.checkpoint} (EMA weights, step {run.step}, trained variance {run.config.variance})"
    params = sum(p.numel() for p in d.denoiser.parameters())
    to_bpd = 1.0 / (d.num_dims * math.log(2.0))
    print(f"digits: {what}, {params:,} parameters, {len(x)} test digits, T = {d.T}", flush=True)
    full, full_seconds = full_bound(d, x, None if args.cache is None else Path(args.cache))
    bpd = full.sum(1) * to_bpd
    rows = [{"name": "full bound", "bpd": float(bpd.mean()), "stderr": float(bpd.std(ddof=1) / math.sqrt(len(x))),
             "t_stderr": 0.0, "t_stderr_empirical": 0.0, "calls": len(x) * d.T, "seconds": round(full_seconds, 1),
             "diff_from_full": 0.0}]
    for name, proposal, t0, K, m in (QUICK_SETTINGS if quick else SETTINGS):
        plan, pilot_calls, pilot_seconds = make_plan(d, data.train, proposal, t0, K, m)
        start = time.perf_counter()
        est = estimate_bound(d, x, plan, seed=0)
        seconds = time.perf_counter() - start + pilot_seconds
        s = est.summary()
        rows.append({"name": name, "plan": plan.to_dict(), "bpd": s["bpd"], "stderr": s["bpd_stderr"],
                     "t_stderr": s["bpd_t_stderr"],
                     "t_stderr_empirical": replicate_spread(plan, full, args.replicates, to_bpd),
                     "calls": s["calls"] + pilot_calls, "pilot_calls": pilot_calls, "seconds": round(seconds, 1),
                     "diff_from_full": s["bpd"] - rows[0]["bpd"]})
        r = rows[-1]
        print(f"  {name}: {r['bpd']:.4f} ± {r['stderr']:.4f} (t-sampling {r['t_stderr'] or float('nan'):.4f}, "
              f"empirical {r['t_stderr_empirical']:.4f}), {r['calls']:,} calls, {seconds:.1f} s", flush=True)
    for r in rows:
        r["fewer_calls"] = rows[0]["calls"] / r["calls"]
        r["ms_per_call"] = 1000 * r["seconds"] / r["calls"]
    return {"model": what, "parameters": params, "examples": len(x), "T": d.T, "rows": rows,
            "replicates": args.replicates, "alternating": alternating(args, d, data, x, quick)}


def alternating(args, d, data, x, quick: bool) -> dict:
    """Seconds per denoiser input of the full bound (on the first ``--alternate-examples`` digits) and of the
    default estimate (all digits), measured alternately in ``--alternate-rounds`` rounds: the fair time ratio."""
    n = min(args.alternate_examples, len(x))
    plan, _, _ = make_plan(d, data.train, "pilot", *((4, 4, 2) if quick else (20, 20, 2)))
    times = {"full": [], "estimate": []}
    calls = {"full": n * d.T}
    for _ in range(1 if quick else args.alternate_rounds):
        start = time.perf_counter()
        per_example_terms(d, x[:n], batch_size=n, timesteps_per_batch=max(1, 500 // n), seed=0)
        times["full"].append(time.perf_counter() - start)
        start = time.perf_counter()
        calls["estimate"] = estimate_bound(d, x, plan, seed=0, inputs_per_call=500).calls
        times["estimate"].append(time.perf_counter() - start)
    ms = {k: 1000 * statistics.median(v) / calls[k] for k, v in times.items()}
    print(f"  alternating: {ms['full']:.2f} ms per input (full bound, {n} digits) against {ms['estimate']:.2f} "
          f"(default estimate, {len(x)} digits)", flush=True)
    return {"full_examples": n, "calls": calls, "seconds": times, "ms_per_input": ms,
            "ratio_estimate_to_full": ms["estimate"] / ms["full"],
            "full_bound_seconds_at_this_speed": len(x) * d.T * ms["full"] / 1000}


def cifar_section(args, quick: bool) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    net = unet_preset("cifar10").eval()
    params = sum(p.numel() for p in net.parameters())
    size = 32
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.randn(1, 3, size, size), torch.tensor([500]))
    flops = counter.get_total_flops()  # per input, forward
    batches = [1, 2] if quick else [int(b) for b in args.batches.split(",")]
    times = {b: [] for b in batches}
    with torch.no_grad():
        net(torch.randn(2, 3, size, size), torch.tensor([1, 2]))  # warm-up
        for _ in range(1 if quick else args.reps):  # alternate the batch sizes in each round
            for b in batches:
                x, t = torch.randn(b, 3, size, size), torch.randint(1, 1001, (b,))
                start = time.perf_counter()
                net(x, t)
                times[b].append(time.perf_counter() - start)
    per_batch = {b: {"seconds_per_call": statistics.median(v), "ms_per_input": 1000 * statistics.median(v) / b,
                     "reps": len(v)} for b, v in times.items()}
    best = min(per_batch.values(), key=lambda r: r["ms_per_input"])["ms_per_input"] / 1000
    inputs = CIFAR_IMAGES * CIFAR_T
    cpu_seconds = inputs * best
    out = {"parameters": params, "flops_per_input": flops, "per_batch": per_batch,
           "threads": torch.get_num_threads(), "full_bound_inputs": inputs,
           "full_bound_cpu_seconds": cpu_seconds,
           "gpu_assumptions": {k: {"what": what, "flops_per_second": v} for k, what, v in GPU_ASSUMPTIONS},
           "full_bound_gpu_seconds_estimate": {k: inputs * flops / v for k, _, v in GPU_ASSUMPTIONS}}
    print(f"cifar10 U-Net: {params:,} parameters, {flops / 1e9:.2f} GFLOP per input; best {1000 * best:.0f} ms per "
          f"input on {out['threads']} thread(s): full bound {cpu_seconds / 86400:.1f} days on this CPU", flush=True)
    return out


def cifar_estimates(digits: dict, cifar: dict) -> list[dict]:
    """Each digits plan's cost on 10,000 CIFAR-10 images (calls per image x images, + a pilot of 16 images at 50
    steps), and its t-sampling SE there IF an image's t-sampling SD in bits/dim is the digits' (an extrapolation:
    the SD per image is measured on the digits only, and the SE of a mean over N images falls as 1/√N)."""
    best = min(r["ms_per_input"] for r in cifar["per_batch"].values()) / 1000
    rows = []
    for r in digits["rows"][1:]:
        plan = r["plan"]
        pilot = 16 * 50 if plan["proposal"] == "pilot" else 0
        inputs = CIFAR_IMAGES * plan["calls_per_example"] + pilot
        sd = r["t_stderr_empirical"] * math.sqrt(digits["examples"])  # one image's t-sampling SD, bits/dim
        rows.append({"name": r["name"], "inputs": inputs, "fewer_calls": cifar["full_bound_inputs"] / inputs,
                     "t_sd_per_image_digits": sd, "t_stderr_if_as_digits": sd / math.sqrt(CIFAR_IMAGES),
                     "cpu_seconds": inputs * best,
                     "gpu_seconds_estimate": {k: inputs * cifar["flops_per_input"] / v for k, _, v in GPU_ASSUMPTIONS}})
    return rows


def render(record: dict) -> str:
    dg, cf = record["digits"], record["cifar10"]
    lines = ["# The full bound against its estimate (`evaluate --bound estimate`)", "",
             f"Date {record['date']}. Machine: {record['machine']}. Command: `{record['command']}`.", "",
             f"## Digits: {dg['model']}", "",
             f"{dg['parameters']:,} parameters, the first {dg['examples']} test digits, T = {dg['T']}, seed 0. "
             "Calls are denoiser inputs (the pilot's included: 16 training digits at 50 steps); seconds are wall "
             "time on the shared machine (chunks of ~500 inputs per call). *t-SE* is the t-sampling's standard "
             "error as the estimate reports it (from its 2 draws per stratum; n/a with 1 draw), *t-SE emp.* the "
             f"standard deviation of the figure over {dg['replicates']} independent draw seeds (computed from the "
             "full bound's terms, which are the estimate's terms at the drawn steps), and *diff* the estimate minus "
             "the full bound of the same examples and seed (the t-sampling's error alone).", "",
             "| bound | bits/dim | SE (examples + t) | t-SE | t-SE emp. | diff | calls | fewer calls | seconds | ms/call |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in dg["rows"]:
        t_se = "n/a" if r["t_stderr"] is None else f"{r['t_stderr']:.4f}"
        lines.append(f"| {r['name']} | {r['bpd']:.4f} | {r['stderr']:.4f} | {t_se} | {r['t_stderr_empirical']:.4f} | "
                     f"{r['diff_from_full']:+.4f} | {r['calls']:,} | {r['fewer_calls']:.1f}x | {r['seconds']:.1f} | "
                     f"{r['ms_per_call']:.2f} |")
    a = dg["alternating"]
    lines += ["", f"Measured alternately ({len(a['seconds']['full'])} rounds): the full bound on {a['full_examples']} "
              f"digits ({a['calls']['full']:,} inputs) at {a['ms_per_input']['full']:.2f} ms per input, the default "
              f"estimate on all {dg['examples']} ({a['calls']['estimate']:,} inputs) at "
              f"{a['ms_per_input']['estimate']:.2f} ms per input (ratio {a['ratio_estimate_to_full']:.2f}): at that "
              f"speed the full bound of the {dg['examples']} digits takes "
              f"{a['full_bound_seconds_at_this_speed']:.0f} s, the estimate "
              f"{a['calls']['estimate'] * a['ms_per_input']['estimate'] / 1000:.0f} s."]
    lines += ["", "## CIFAR-10: the `cifar10` U-Net preset", "",
              f"{cf['parameters']:,} parameters; {cf['flops_per_input'] / 1e9:.2f} GFLOP per input (forward, "
              f"torch.utils.flop_counter, a multiply-add = 2 FLOPs). One forward on this CPU, {cf['threads']} "
              "thread(s), median of the reps, batch sizes alternated:", "",
              "| batch | s per call | ms per input |", "|---|---|---|"]
    for b, r in cf["per_batch"].items():
        lines.append(f"| {b} | {r['seconds_per_call']:.3f} | {r['ms_per_input']:.1f} |")
    inputs = cf["full_bound_inputs"]
    lines += ["", f"The full bound of {CIFAR_IMAGES:,} test images x {CIFAR_T:,} steps is {inputs:,} inputs: "
              f"**{cf['full_bound_cpu_seconds'] / 86400:.1f} days** on this CPU at the best per-input time "
              "(measured per call, multiplied out). On a GPU, an **estimate, not a measurement**: FLOPs / an "
              "assumed sustained throughput:", "", "| GPU (assumed sustained throughput) | full bound |", "|---|---|"]
    for k, v in cf["full_bound_gpu_seconds_estimate"].items():
        lines.append(f"| {cf['gpu_assumptions'][k]['what']} | {v / 3600:.1f} h |")
    lines += ["", f"The estimate on the same {CIFAR_IMAGES:,} images with the digits' plans (calls counted exactly; "
              "the t-sampling SE assumes an image's t-sampling SD in bits/dim is what it is on the digits, an "
              "extrapolation to be checked on a trained CIFAR-10 model with `--bound estimate` itself, which reports "
              "it):", "",
              "| plan | inputs | fewer calls | t-SD per image (digits) | t-SE on 10,000 images | this CPU | "
              + " | ".join(f"{k} (est.)" for k, _, _ in GPU_ASSUMPTIONS) + " |",
              "|---|---|---|---|---|---|" + "---|" * len(GPU_ASSUMPTIONS)]
    for r in cf.get("estimates", []):
        gpu = " | ".join(f"{v:.0f} s" if v < 600 else f"{v / 60:.0f} min" for v in r["gpu_seconds_estimate"].values())
        lines.append(f"| {r['name']} | {r['inputs']:,} | {r['fewer_calls']:.0f}x | {r['t_sd_per_image_digits']:.3f} | "
                     f"{r['t_stderr_if_as_digits']:.4f} | {r['cpu_seconds'] / 86400:.1f} days | {gpu} |")
    for line in record.get("notes", []):
        lines += ["", line]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="/work/main/runs/ode-unet-digits", help="trained digits run (read only)")
    p.add_argument("--examples", type=int, default=None, help="first N test digits (default all 360)")
    p.add_argument("--cache", default=None, help="folder for the full bound's chunks (reused when present)")
    p.add_argument("--replicates", type=int, default=400, help="draw seeds for the empirical t-sampling SE")
    p.add_argument("--alternate-rounds", type=int, default=2, help="rounds of the alternating time measurement")
    p.add_argument("--alternate-examples", type=int, default=20, help="digits of the full bound in that measurement")
    p.add_argument("--batches", default="1,2,4,8,16,32,64", help="cifar10 U-Net batch sizes")
    p.add_argument("--reps", type=int, default=3, help="cifar10 U-Net timing rounds")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    p.add_argument("--skip-cifar", action="store_true")
    p.add_argument("--quick", action="store_true", help="a fresh MLP at T = 40 and batch 1, 2: a smoke test")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.replicates = min(args.replicates, 50)
    info = machine_info()
    record = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(argv or sys.argv[1:])),
              "machine": f"{info['machine']} ({info['cpu_model']}), torch {info['torch']}, {args.threads} thread(s), "
                         f"load average at start {os.getloadavg()[0]:.2f}",
              "digits": digits_section(args, args.quick)}
    if REUSED:
        record["notes"] = [f"The full bound's {len(REUSED)} chunks of 20 digits were read from `--cache`: computed "
                           "earlier by the same code and chunking (per_example_terms, 500 inputs per call), its "
                           "seconds the sum of their recorded times; the estimates ran after it, not alternately, "
                           "on a machine shared with other work, so compare ms/call as well as seconds."]
    record["cifar10"] = None if args.skip_cifar else cifar_section(args, args.quick)
    if record["cifar10"] is not None:
        record["cifar10"]["estimates"] = cifar_estimates(record["digits"], record["cifar10"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bound_estimate_quick" if args.quick else "bound_estimate"
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    if record["cifar10"] is not None:
        (out / f"{stem}.md").write_text(render(record))
    print(f"wrote {out / (stem + '.json')}")
    return record


if __name__ == "__main__":
    main()
