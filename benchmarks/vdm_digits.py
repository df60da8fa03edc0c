"""Variational diffusion on the digits at the peer's budget: issue 20's result and its ablation.

Every row trains the digits U-Net preset (4.30M parameters; 4,304,833 with Fourier features, whose four
input channels add 2,304 weights) with the same recipe as ``digits_budget.py``: 2,270 steps of batch 128,
Adam 5e-4 after a 100-step warm-up, gradient clipping at 1, EMA 0.998, seed 0. The rows differ only in
the forward process, the input features and the decoder:

==================  =====  =====================================================  ========  ===========
row                 T      forward process (``--schedule``) / estimator           features  decoder
==================  =====  =====================================================  ========  ===========
t1000-fixed         1000   linear β (today's recipe) / stochastic-kl-is           none      discretized
t1000-fixed-ff      1000   linear β / stochastic-kl-is                            2^2, 2^3  discretized
t1000-learned       1000   learned-net γ (every step by the ELBO) / stochastic-kl-is  none  discretized
t1000-learned-ff    1000   learned-net γ / stochastic-kl-is                       2^2, 2^3  discretized
inf-fixed           ∞      fixed-linear γ from −13.3 to 5 / continuous-ld         none      discretized
inf-fixed-ff        ∞      fixed-linear γ / continuous-ld                         2^2, 2^3  discretized
inf-learned         ∞      learned-net γ (endpoints: ELBO, interior: variance)    none      discretized
inf-learned-ff      ∞      learned-net γ / continuous-ld                          2^2, 2^3  discretized
inf-learned-ff-cat  ∞      learned-net γ / continuous-ld                          2^2, 2^3  vdm-categorical
==================  =====  =====================================================  ========  ===========

Evaluation: the bound of the EMA (and raw) weights on all 360 test digits with every term: at T = ∞ the
continuous-time bound (reconstruction and prior per digit, the diffusion term by 20 strata × 4 draws of t
per digit, unbiased, its SE over digits covers the t-draws, and the t-integral's own Monte-Carlo SE is
reported beside it); at T = 1000 ``--bound estimate`` (steps 1..20 exactly, 20 strata × 4 draws above:
an unbiased estimate of the full bound, SE likewise). Each is an ``ppl-diffusion`` command, printed and stored.

VDM's own code (google-research/vdm) is run beside it by ``benchmarks/vdm_peer.py``; ``report --peer
RUN/result.json`` puts its figure in the same table.

Every row resumes where it stopped (``--auto-resume``; evaluation reruns only when its JSON is missing),
so the script can be run again after a kill or in pieces::

    python benchmarks/vdm_digits.py run inf-learned-ff --runs runs/vdm_digits       # ~90 min on one core
    python benchmarks/vdm_digits.py run all --runs runs/vdm_digits                   # every row, ~14 h
    python benchmarks/vdm_digits.py report --runs runs/vdm_digits --peer PEER/result.json
    python benchmarks/vdm_digits.py run inf-learned-ff --runs /tmp/q --quick         # seconds: the test suite
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from estimators import machine_info  # noqa: E402

RECIPE = ["--data", "digits", "--net", "digits", "--batch-size", "128", "--lr", "5e-4", "--warmup-steps", "100",
          "--grad-clip", "1.0", "--ema-decay", "0.998", "--steps", "2270", "--checkpoint-every", "250",
          "--keep-checkpoints", "2", "--seed", "0", "--log-every", "10"]
QUICK = ["--data", "digits", "--net", "auto", "--channels", "8", "--res-blocks", "1", "--batch-size", "16",
         "--lr", "1e-3", "--warmup-steps", "1", "--ema-decay", "0.5", "--steps", "3", "--checkpoint-every", "3",
         "--seed", "0", "--log-every", "1"]
FF = ["--fourier-features", "auto"]
T1000_FIXED = ["--T", "1000", "--schedule", "linear", "--estimator", "stochastic-kl-is"]
T1000_LEARNED = ["--T", "1000", "--schedule", "learned-net", "--estimator", "stochastic-kl-is"]
INF_FIXED = ["--T", "0", "--schedule", "fixed-linear", "--estimator", "continuous-ld"]
INF_LEARNED = ["--T", "0", "--schedule", "learned-net", "--estimator", "continuous-ld"]
ROWS: dict[str, tuple[list[str], str]] = {
    "t1000-fixed": (T1000_FIXED, "T = 1000, fixed linear β (today's recipe)"),
    "t1000-fixed-ff": (T1000_FIXED + FF, "T = 1000, fixed linear β, Fourier features"),
    "t1000-learned": (T1000_LEARNED, "T = 1000, learned γ"),
    "t1000-learned-ff": (T1000_LEARNED + FF, "T = 1000, learned γ, Fourier features"),
    "inf-fixed": (INF_FIXED, "T = ∞, fixed linear γ"),
    "inf-fixed-ff": (INF_FIXED + FF, "T = ∞, fixed linear γ, Fourier features"),
    "inf-learned": (INF_LEARNED, "T = ∞, learned γ"),
    "inf-learned-ff": (INF_LEARNED + FF, "T = ∞, learned γ, Fourier features"),
    "inf-learned-ff-cat": (INF_LEARNED + FF + ["--decoder", "vdm-categorical"],
                           "T = ∞, learned γ, Fourier features, VDM's categorical decoder"),
}
HEADLINE, BAR_BPD, TODAY_BPD = "inf-learned-ff", 2.3, 3.61
EVAL = ["--fd-samples", "0", "--strata", "20", "--draws", "4", "--no-progress"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ppl_diffusion", *args]


def eval_json(run_dir: Path, T: str) -> Path:
    return run_dir / ("eval.json" if T == "0" else "eval-estimate.json")


def run_row(name: str, runs: Path, threads: int, quick: bool) -> None:
    row, _ = ROWS[name]
    run_dir = runs / name
    T = row[row.index("--T") + 1]
    train = cli("train", *(QUICK if quick else RECIPE), *row, "--threads", str(threads), "--no-progress",
                "--run-dir", str(run_dir), "--auto-resume")
    evaluate = cli("evaluate", str(run_dir), *EVAL, "--threads", str(threads),
                   *([] if T == "0" else ["--bound", "estimate"]), *(["--max-examples", "8"] if quick else []))
    if eval_json(run_dir, T).exists():  # written only after the training ended
        print(f"{name}: {eval_json(run_dir, T)} exists, not trained or evaluated again", flush=True)
    else:
        for cmd in (train, evaluate):
            print("$ " + shlex.join(cmd), flush=True)
            subprocess.run(cmd, check=True)
    commands = {"train": shlex.join(["ppl-diffusion", *train[3:]]),
                "evaluate": shlex.join(["ppl-diffusion", *evaluate[3:]])}
    (run_dir / "vdm_digits_row.json").write_text(json.dumps({"row": name, "commands": commands}, indent=1))


def row_result(name: str, run_dir: Path) -> dict | None:
    row, what = ROWS[name]
    T = row[row.index("--T") + 1]
    path = eval_json(run_dir, T)
    if not path.exists():
        return None
    ev = json.loads(path.read_text())
    config = json.loads((run_dir / "config.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [m for m in metrics if "elapsed" in m]
    parts = {key: ev[f"{key}_bpd"]["ema"] for key in ("decoder", "diffusion", "prior") if f"{key}_bpd" in ev}
    commands = json.loads((run_dir / "vdm_digits_row.json").read_text())["commands"]
    return {"row": name, "what": what, "T": int(T) or "inf", "schedule": config.get("schedule"),
            "fourier_features": list((config.get("net_config") or {}).get("fourier_features") or []),
            "decoder": config.get("decoder") or "discretized", "estimator": config.get("estimator"),
            "bpd_ema": ev["bpd_ema"], "bpd_ema_stderr": ev["bpd_ema_stderr"],
            "bpd_ema_t_stderr": ev.get("bpd_ema_t_stderr"), "bpd": ev["bpd"], "bpd_stderr": ev["bpd_stderr"],
            "parts_ema": parts, **gamma_endpoints(run_dir), "num_examples": ev["num_examples"], "step": ev["step"],
            "train_minutes": round(steps[-1]["elapsed"] / 60, 1) if steps else None,
            "eval_seconds": ev.get("seconds"), "threads": ev.get("threads"), "commands": commands}


def gamma_endpoints(run_dir: Path) -> dict:
    """γ at the two ends of the trained forward process (EMA weights; γ = log σ²/α²): t = 0 and 1 for a γ
    schedule, steps 1 and T for a NoiseSchedule (γ_t = log (1 − ᾱ_t)/ᾱ_t), so the rows compare directly."""
    import numpy as np

    from ppl_diffusion.train.load import load_trained

    diffusion = load_trained(run_dir, last=True)
    if diffusion.gamma_schedule:
        return diffusion.schedule.describe()
    abar = np.asarray(diffusion.schedule.alphas_cumprod, dtype=np.float64)
    gamma = np.log1p(-abar) - np.log(abar)
    return {"gamma_0": float(gamma[0]), "gamma_1": float(gamma[-1])}


def fmt(x: float | None, se: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f} ± {se:.{digits}f}"


def report(runs: Path, peer: Path | None, out: Path) -> dict:
    rows = [r for name in ROWS if (r := row_result(name, runs / name)) is not None]
    peer_result = json.loads(peer.read_text()) if peer and peer.exists() else None
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "python " + shlex.join(sys.argv), "machine": machine_info(), "recipe": shlex.join(RECIPE),
              "evaluate": shlex.join(EVAL), "headline": HEADLINE, "bar_bpd": BAR_BPD, "today_bpd": TODAY_BPD,
              "rows": rows, "missing_rows": [n for n in ROWS if n not in {r["row"] for r in rows}],
              "peer": None if peer_result is None else {
                  k: peer_result[k] for k in ("command", "machine", "vdm_commit", "changes", "config", "parameters",
                                              "train_seconds", "gamma_0_ema", "gamma_1_ema", "eval")}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "vdm_digits.json").write_text(json.dumps(result, indent=1, default=str))
    m = result["machine"]
    lines = ["# Variational diffusion on the digits at the peer's budget", "",
             f"`{result['command']}`, {result['date']}; trained and scored on {m['cpu_model']} ({m['cpu_count']} cores, "
             f"torch {m['torch']}, one thread a run, the machine shared: the minutes are noisy, the bits are not).", "",
             "Recipe of every row (`ppl-diffusion train`): `" + result["recipe"] + "` plus the row's settings; "
             "bits/dim of the bound with every term on the 360 test digits (EMA weights; raw beside), "
             "± the SE over digits (it includes the draws of t); [t-SE] is the t-integral's own Monte-Carlo SE; "
             "γ_0 → γ_1: log σ²/α² at the two ends of the trained forward process (EMA; steps 1 and T at T = 1000).",
             "", "| row | T | schedule | γ_0 → γ_1 | features | decoder | EMA bits/dim [t-SE] | raw | train min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tse = f" [{r['bpd_ema_t_stderr']:.3f}]" if r["bpd_ema_t_stderr"] is not None else ""
        lines.append(f"| {r['row']} | {r['T']} | {r['schedule']} | {r['gamma_0']:.2f} → {r['gamma_1']:.2f} | "
                     f"{','.join(map(str, r['fourier_features'])) or 'none'} | "
                     f"{r['decoder']} | **{fmt(r['bpd_ema'], r['bpd_ema_stderr'])}**{tse} | "
                     f"{fmt(r['bpd'], r['bpd_stderr'])} | {r['train_minutes']} |")
    if peer_result is not None:
        e = peer_result["eval"]["ema"]["total"]
        lines.append(f"| VDM's own code | ∞ | learned scalar | {peer_result['gamma_0_ema']:.2f} → "
                     f"{peer_result['gamma_1_ema']:.2f} | 2^6, 2^7 | vdm-categorical | "
                     f"**{fmt(e['bpd'], e['se_over_digits'])}** [{e['se_monte_carlo']:.3f}] | – | "
                     f"{peer_result['train_seconds'] / 60:.1f} |")
    if result["missing_rows"]:
        lines += ["", "Not yet run: " + ", ".join(result["missing_rows"]) + "."]
    lines += ["", "Commands of each row:", ""]
    for r in rows:
        lines += [f"- {r['row']}: `{r['commands']['train']}`; `{r['commands']['evaluate']}`"]
    if peer_result is not None:
        lines += [f"- VDM's own code: `{peer_result['command']}`"]
    (out / "vdm_digits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and evaluate rows (resuming)")
    r.add_argument("rows", nargs="+", help="row names, or all: " + ", ".join(ROWS))
    r.add_argument("--runs", required=True, help="folder of the rows' run folders")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--quick", action="store_true", help="a tiny net and 3 steps, for the test suite")
    q = sub.add_parser("report", help="gather the rows into vdm_digits.{md,json}")
    q.add_argument("--runs", required=True)
    q.add_argument("--peer", type=Path, help="result.json of benchmarks/vdm_peer.py (VDM's own code)")
    q.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if args.command == "run":
        names = list(ROWS) if args.rows == ["all"] else args.rows
        unknown = [n for n in names if n not in ROWS]
        if unknown:
            p.error(f"unknown rows {unknown}; the rows are {', '.join(ROWS)} or all")
        for name in names:
            run_row(name, Path(args.runs), args.threads, args.quick)
    else:
        report(Path(args.runs), args.peer, args.out)


if __name__ == "__main__":
    main()
