"""Data-parallel scale-out on this machine: 1 process against N under ``torchrun`` (gloo on CPU, NCCL on GPUs).

Cases, each launched exactly as a user would (``torchrun --standalone --nproc-per-node N -m ppl_diffusion ...``):

(i)   training, the digits MLP (T = 1000, stochastic-kl-is, global batch 128) and the digits U-Net preset
      (global batch 64): steps/s from the run's own ``metrics.jsonl`` clock (training only; start-up, imports and
      the first logged interval excluded), for 1 process × ``--threads`` threads, and N processes × 1 thread;
(ii)  ``ppl-diffusion evaluate`` of the digits U-Net's full bound (T = 1000) on ``--eval-examples`` test digits: its own
      ``seconds`` from eval.json (loading and start-up excluded) and the bits/dim, which must agree.

Configurations alternate (1, N, 1, N, ...: ``--rounds`` rounds) and the median is reported, with the ratio.
On a 2-core CPU the honest expectation is little: two processes of one thread do the work of one process of
two threads, plus the all-reduce. On a machine with GPUs the same script measures N GPUs (``--device cuda``).
Rerun::

    python benchmarks/distributed.py                 # ~10 minutes on 2 cores; results/distributed.{md,json}
    python benchmarks/distributed.py --quick         # T = 50, few steps: a smoke test (distributed_quick.*)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def launch(nproc: int, threads: int, args: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    if nproc == 1:
        cmd = [sys.executable, "-m", "ppl_diffusion", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "ppl_diffusion", *args]
    t0 = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - t0


def steps_per_second(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]  # the first logged interval holds warm-up effects: measured from its end
    return (last["step"] - first["step"]) / (last["elapsed"] - first["elapsed"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, default=2, help="processes of the parallel runs (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the 1-process reference run (default 2)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--eval-examples", type=int, default=32)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    T = 50 if args.quick else 1000
    cases = {
        "digits MLP, batch 128": dict(net="mlp", batch_size=128, lr=1e-3, steps=40 if args.quick else 600,
                                      log_every=10 if args.quick else 50),
        "digits U-Net, batch 64": dict(net="digits", batch_size=64, lr=2e-4, steps=6 if args.quick else 40,
                                       log_every=2 if args.quick else 5),
    }
    configs = [(1, args.threads), (args.nproc, 1)]
    results = {"train": {}, "evaluate": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, case in cases.items():
            rates = {c: [] for c in configs}
            for r in range(args.rounds):
                for nproc, threads in configs:
                    run = tmp / f"{case['net']}-{nproc}-{r}"
                    flags = [f"--{k.replace('_', '-')}={v}" for k, v in case.items()]
                    launch(nproc, threads, ["train", "--data=digits", f"--T={T}", "--estimator=stochastic-kl-is",
                                            *flags, "--checkpoint-every=100000", f"--device={args.device}",
                                            f"--run-dir={run}", "--no-progress"])
                    rates[(nproc, threads)].append(steps_per_second(run))
                    print(f"  {name}: {nproc} proc x {threads} thr round {r}: {rates[(nproc, threads)][-1]:.2f} steps/s",
                          flush=True)
            med = {f"{n}x{t}": statistics.median(v) for (n, t), v in rates.items()}
            results["train"][name] = {"steps_per_s": med, "reps": {f"{n}x{t}": v for (n, t), v in rates.items()},
                                      "ratio": med[f"{args.nproc}x1"] / med[f"1x{args.threads}"]}
        # (ii) evaluation of the U-Net run trained last on 1 process (its bound is the one worth splitting)
        run = tmp / f"digits-1-{args.rounds - 1}"
        secs = {c: [] for c in configs}
        bpd = {}
        for r in range(args.rounds):
            for nproc, threads in configs:
                launch(nproc, threads, ["evaluate", str(run), f"--max-examples={args.eval_examples}", "--fd-samples=0",
                                        f"--device={args.device}", "--no-progress", "--seed=0"])
                ev = json.loads((run / "eval.json").read_text())
                secs[(nproc, threads)].append(ev["seconds"])
                bpd[f"{nproc}x{threads}"] = ev["bpd_ema"]
                print(f"  evaluate: {nproc} proc x {threads} thr round {r}: {ev['seconds']:.1f} s, "
                      f"{ev['bpd_ema']:.6f} bits/dim (world size {ev.get('world_size', 1)})", flush=True)
        med = {f"{n}x{t}": statistics.median(v) for (n, t), v in secs.items()}
        results["evaluate"] = {"examples": args.eval_examples, "T": T, "seconds": med, "bpd_ema": bpd,
                               "ratio": med[f"1x{args.threads}"] / med[f"{args.nproc}x1"]}

    import torch

    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python " + shlex.join(["benchmarks/distributed.py", *(argv or sys.argv[1:])]),
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                        "loadavg": os.getloadavg()},
            "T": T}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "distributed_quick" if args.quick else "distributed"
    (out / f"{stem}.json").write_text(json.dumps({**meta, **results}, indent=2) + "\n")
    n, t = args.nproc, args.threads
    lines = [f"# Data-parallel: 1 process × {t} threads against {n} processes × 1 thread", "",
             f"{meta['date']}, `{meta['command']}`; {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
             f"torch {meta['machine']['torch']}, device {args.device}, T = {T}; load average at the end "
             f"{', '.join(f'{x:.2f}' for x in meta['machine']['loadavg'])}.", "",
             f"| case | 1 × {t} | {n} × 1 | {n}-process / 1-process |", "|---|---:|---:|---:|"]
    for name, r in results["train"].items():
        lines.append(f"| train {name} (steps/s) | {r['steps_per_s'][f'1x{t}']:.2f} | {r['steps_per_s'][f'{n}x1']:.2f} "
                     f"| {r['ratio']:.2f}× |")
    ev = results["evaluate"]
    lines.append(f"| evaluate the U-Net, {ev['examples']} digits × T = {T} (s) | {ev['seconds'][f'1x{t}']:.1f} | "
                 f"{ev['seconds'][f'{n}x1']:.1f} | {ev['ratio']:.2f}× faster |")
    lines += ["", "Bits/dim of the evaluations (the same on 1 and N processes by construction): "
              + ", ".join(f"{k}: {v:.6f}" for k, v in ev["bpd_ema"].items())]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
