"""Test bits/dim on the 8×8 digits for each prior p(x_T) and for fixed and learned reverse variances, at the
same training budget (issue 7's table).

Every run: ``ppl-diffusion train --data digits --net mlp --T 1000 --lr 1e-3 --warmup-steps 200 --minutes M``
with its ``--prior`` / ``--variance`` / ``--estimator``, then ``ppl-diffusion evaluate`` (the full bound on all
360 test digits, EMA and raw weights, the prior term by Monte Carlo where no KL is registered). Runs go two
at a time, one torch thread each (``--jobs``), so each gets one of the 2 cores. Rerun::

    python benchmarks/priors_digits.py --minutes 3          # ~15 minutes on 2 cores; writes results/priors_digits.*
    python benchmarks/priors_digits.py --quick              # seconds-long smoke test (priors_digits_quick.*)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RUNS = [  # (label, prior, variance, estimator)
    ("N(0, I), σ² = β (baseline)", "normal", "beta", "stochastic-kl-is"),
    ("learned diagonal Gaussian", "gaussian", "beta", "stochastic-kl-is"),
    ("Student-t, learned ν", "student-t-learned-df", "beta", "stochastic-kl-is"),
    ("mixture of 4 Gaussians", "mixture", "beta", "stochastic-kl-is"),
    ("flow (2 affine autoregressive)", "flow", "beta", "stochastic-kl-is"),
    ("N(0, I), σ² = β̃", "normal", "posterior", "stochastic-kl-is"),
    ("N(0, I), learned σ², bound (L_vlb)", "normal", "learned", "stochastic-kl-is"),
    ("N(0, I), learned σ², hybrid", "normal", "learned", "hybrid"),
]


def one(run_dir: Path, prior: str, variance: str, estimator: str, minutes: float, T: int, quick: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "ppl_diffusion"]
    train = ["train", "--data", "digits", "--net", "mlp", "--T", str(T), "--lr", "1e-3", "--warmup-steps", "200",
             "--prior", prior, "--variance", variance, "--estimator", estimator, "--checkpoint-every", "1000",
             "--run-dir", str(run_dir), "--no-progress"] + (["--steps", "20"] if quick else ["--minutes", str(minutes)])
    t0 = time.monotonic()
    done = subprocess.run(cli + train, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"train failed: {done.stderr[-1500:]}")
    evaluate = ["evaluate", str(run_dir), "--fd-samples", "0", "--json", "--no-progress"] + (
        ["--max-examples", "16"] if quick else [])
    done = subprocess.run(cli + evaluate, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"evaluate failed: {done.stderr[-1500:]}")
    result = json.loads(done.stdout)
    steps = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    return {"bpd_ema": result["bpd_ema"], "bpd_ema_stderr": result["bpd_ema_stderr"], "bpd": result["bpd"],
            "bpd_stderr": result["bpd_stderr"], "prior_bpd_ema": result["prior_bpd"]["ema"],
            "decoder_bpd_ema": result["decoder_bpd"]["ema"], "steps": steps, "seconds": round(time.monotonic() - t0, 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per run (default 3)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each (default 2)")
    p.add_argument("--runs-dir", default=str(REPO / "runs" / "priors_digits"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", type=int, nargs="+", default=None,
                   help="rerun only these rows (0-based) and merge them into the existing results file")
    args = p.parse_args(argv)
    runs_dir = Path(args.runs_dir)
    T = 20 if args.quick else 1000
    todo = RUNS[:2] + RUNS[-1:] if args.quick else RUNS
    if args.only:
        todo = [RUNS[i] for i in args.only]
    planned = [runs_dir / f"{RUNS.index(r) if not args.quick else i}-{r[1]}-{r[2]}-{r[3]}" for i, r in enumerate(todo)]
    busy = [d for d in planned if d.exists()]
    if busy:
        raise SystemExit(f"{busy[0]} exists; remove it or pass another --runs-dir")

    def job(i_run):
        i, (label, prior, variance, estimator) = i_run
        r = one(planned[i], prior, variance, estimator, args.minutes, T, args.quick)
        print(f"{label:38s} {r['bpd_ema']:.4f} ± {r['bpd_ema_stderr']:.4f} bits/dim (EMA), {r['steps']} steps",
              flush=True)
        return {"label": label, "prior": prior, "variance": variance, "estimator": estimator, **r}

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(job, enumerate(todo)))
    stem = "priors_digits_quick" if args.quick else "priors_digits"
    out = Path(args.out)
    previous = None
    if args.only:  # merge into the earlier full run, row by label, in the table's order
        previous = json.loads((out / f"{stem}.json").read_text())
        earlier = {r["label"]: r for r in previous["rows"]}
        earlier.update({r["label"]: dict(r, rerun=True) for r in rows})
        rows = [earlier[label] for label, *_ in RUNS if label in earlier]
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.lower().startswith("model name")), cpu)
    except OSError:
        pass
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
            "machine": f"{os.cpu_count()}-core {cpu}, no GPU", "minutes": args.minutes, "jobs": args.jobs, "T": T}
    if previous is not None:
        meta["command"] = f"{previous['meta']['command']}`, then `{meta['command']}"
        meta["date"] = f"{previous['meta']['date']}, then {meta['date']}"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# Priors and reverse variances on the 8×8 digits, same training budget", "",
             f"- Command: `{meta['command']}`", f"- Machine: {meta['machine']}; {meta['date']}",
             f"- Each run: MLP denoiser, T = {T}, Adam lr 1e-3 (200 warm-up steps), batch 128, "
             f"{'20 steps' if args.quick else f'{args.minutes:g} minutes'} of training with one torch thread "
             f"({args.jobs} runs at a time on the {os.cpu_count()} cores); the full bound on "
             f"{'16' if args.quick else 'all 360'} test digits (EMA weights; raw beside). Rows marked (rerun) were "
             "measured by a later `--only` run after a change to that configuration.", "",
             "| p(x_T) / σ_t² | estimator | test bits/dim (EMA) | raw | L_T (bits/dim) | L_0 (bits/dim) | steps |",
             "|:---|:---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']}{' (rerun)' if r.get('rerun') else ''} | {r['estimator']} | {r['bpd_ema']:.4f} ± {r['bpd_ema_stderr']:.4f} | "
                     f"{r['bpd']:.4f} | {r['prior_bpd_ema']:.2e} | {r['decoder_bpd_ema']:.3f} | {r['steps']} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
