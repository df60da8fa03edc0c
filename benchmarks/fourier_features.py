"""Fourier features of x_t on the digits: the digits U-Net preset with and without them, a short training each.

Both rows train under the recipe of ``benchmarks/digits_budget.py`` (``stochastic-kl-is``, T = 1000, σ_t² = β_t,
batch 128, Adam 5e-4 after a 100-step warm-up, clipping 1, EMA 0.998, seed 0) for ``--steps`` steps (300), the
only difference the net setting ``fourier_features``: none, or the rule's exponents for the digits' 17 grey levels
(spacing Δ = 0.125 in model space: 2^n·Δ = 1 at n = 3, so n ∈ {2, 3}; ``ppl_diffusion.nets.embedding.
fourier_exponents``), sin and cos of 2^n·2π·x_t, four extra input channels. Each is then scored on the first
``--examples`` (64) test digits by ``evaluate --bound estimate`` (steps 1..20 exactly, 20 strata × 2 draws above,
pilot proposal; its SE includes the t-sampling's), raw and EMA weights. At 300 steps the EMA (horizon ~500 steps)
still carries the initial weights: the raw row is the comparison. The full-budget figure (2,270 steps, the full
bound) belongs to the issue's ablation.

Outputs (``--out``, default ``benchmarks/results``): ``fourier_features.json`` and ``fourier_features.md``.
Timings are wall time on a shared machine: compare the two rows' ratio only.

Rerun (2 CPU cores: about 2 × 6 min of training, 2 × 1 min of evaluation)::

    python benchmarks/fourier_features.py --run-dir runs/fourier_features
    python benchmarks/fourier_features.py --quick --out /tmp/q       # seconds: a tiny U-Net, for the test suite
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from estimators import machine_info  # noqa: E402

from ppl_diffusion.data import load_dataset  # noqa: E402
from ppl_diffusion.evaluate import evaluate_run  # noqa: E402
from ppl_diffusion.nets.embedding import fourier_exponents  # noqa: E402
from ppl_diffusion.train import TrainConfig, train  # noqa: E402

RECIPE = dict(data="digits", net="digits", estimator="stochastic-kl-is", schedule="linear", T=1000, variance="beta",
              batch_size=128, lr=5e-4, warmup_steps=100, grad_clip=1.0, ema_decay=0.998, seed=0, log_every=50)
QUICK = dict(RECIPE, net="auto", T=20, batch_size=16, warmup_steps=2,
             net_config=dict(model_channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4]))


def row(name: str, exponents: list[int], base: dict, steps: int, run_dir: Path, examples: int, quick: bool) -> dict:
    net_config = dict(base.pop("net_config", None) or {})
    if exponents:
        net_config["fourier_features"] = exponents
    config = TrainConfig(**base, net_config=net_config or None, steps=steps, checkpoint_every=steps)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    started = time.monotonic()
    result = train(config, run_dir, progress=False)
    train_seconds = time.monotonic() - started
    ev = evaluate_run(result.checkpoint, bound="estimate", max_examples=examples, fd_samples=0, device="cpu",
                      progress=False, **(dict(full_steps=5, strata=5, pilot_examples=4) if quick else {}))
    to_bpd = 1.0 / (64 * math.log(2.0))
    low = 5 if quick else 20  # the steps scored exactly for every example: L_1 .. L_{low − 1}
    out = {"row": name, "fourier_features": exponents, "steps": steps, "train_seconds": round(train_seconds, 1),
           "seconds_per_step": round(train_seconds / steps, 3),
           "parameters": sum(p.numel() for p in result.diffusion.denoiser.parameters()),
           "eval_seconds": ev["seconds"], "config": config.to_dict()}
    for key, w in (("bpd", "raw"), ("bpd_ema", "ema")):
        terms = ev["terms"][w]
        out[w] = {"bpd": ev[key], "se": ev[f"{key}_stderr"], "t_se": ev.get(f"{key}_t_stderr"),
                  "L0_bpd": terms[0] * to_bpd, f"L1_L{low - 1}_bpd": sum(terms[1:low]) * to_bpd,
                  "rest_bpd": sum(terms[low:]) * to_bpd}
    print(f"{name}: {out['raw']['bpd']:.3f} ± {out['raw']['se']:.3f} (raw), {out['ema']['bpd']:.3f} ± "
          f"{out['ema']['se']:.3f} (EMA) bits/dim, {train_seconds / steps:.2f} s/step", flush=True)
    return out


def markdown(record: dict) -> str:
    rows, low = record["rows"], record["exact_steps"]
    lines = [
        "# Fourier features of x_t on the digits (a short training)",
        "",
        f"Date {record['date']}. Machine: {record['machine']}. Command: `{record['command']}`.",
        "",
        f"The digits U-Net preset ({rows[0]['parameters']:,} parameters; {rows[1]['parameters']:,} with the features, "
        f"whose first conv reads 5 channels) trained {record['steps']} steps of batch {record['batch_size']} under "
        "the budget recipe of `benchmarks/digits_budget.py`, once without and once with sin and cos of "
        f"2^n·2π·x_t for n ∈ {{{', '.join(map(str, record['exponents']))}}} (the rule's for the digits' grey-level "
        f"spacing {record['spacing']:.4f}: 2^n·Δ = 1 at n = {record['exponents'][-1]}). Bound: `evaluate --bound "
        f"estimate` on the first {record['examples']} test digits (its SE counts the examples and the t-sampling); "
        f"L_0 and L_1..L_{low - 1} are exact per example, the rest is the estimate's. bits/dim; ± one SE.",
        "",
        "| features | weights | bits/dim | SE | L_0 | L_1..L_%d | L_%d..L_T | s/step |" % (low - 1, low),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for w in ("raw", "ema"):
            v = r[w]
            feats = "none" if not r["fourier_features"] else "n = " + ",".join(map(str, r["fourier_features"]))
            lines.append(f"| {feats} | {w} | {v['bpd']:.3f} | {v['se']:.3f} | {v['L0_bpd']:.3f} | "
                         f"{v[f'L1_L{low - 1}_bpd']:.3f} | {v['rest_bpd']:.3f} | {r['seconds_per_step']:.2f} |")
    a, b = rows
    lines += ["", f"With the features the raw weights' bound moves by {b['raw']['bpd'] - a['raw']['bpd']:+.3f} bits/dim "
              f"(L_0 {b['raw']['L0_bpd'] - a['raw']['L0_bpd']:+.3f}, L_1..L_{low - 1} "
              f"{b['raw'][f'L1_L{low - 1}_bpd'] - a['raw'][f'L1_L{low - 1}_bpd']:+.3f}); a training step costs "
              f"{b['seconds_per_step'] / a['seconds_per_step']:.2f}× (wall time, shared machine, one run). At "
              f"{record['steps']} steps the EMA (decay 0.998) still holds "
              f"{0.998 ** record['steps']:.0%} of the initial weights, so its rows lag the raw ones; the "
              "full-budget comparison (2,270 steps, the full bound) is the issue's ablation.", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/fourier_features", help="scratch folder of the two runs")
    p.add_argument("--steps", type=int, default=300, help="training steps of each row (default 300)")
    p.add_argument("--examples", type=int, default=64, help="test digits scored (default 64)")
    p.add_argument("--quick", action="store_true", help="a tiny U-Net and a few steps, for the test suite")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    steps, examples = (4, 8) if args.quick else (args.steps, args.examples)
    spacing = load_dataset("digits").level_spacing  # (max − min)/(levels − 1) of the training digits
    exponents = list(fourier_exponents(spacing))
    run_root = Path(args.run_dir)
    rows = [row(name, e, dict(QUICK if args.quick else RECIPE), steps, run_root / name, examples, args.quick)
            for name, e in (("none", []), ("fourier", exponents))]
    info = machine_info()
    record = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(argv or sys.argv[1:])),
        "machine": f"{info['machine']} ({info['cpu_model']}), torch {info['torch']}, "
                   f"{info['torch_num_threads']} thread(s)",
        "steps": steps, "batch_size": rows[0]["config"]["batch_size"], "examples": examples, "spacing": spacing,
        "exponents": exponents, "exact_steps": 5 if args.quick else 20, "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "fourier_features_quick" if args.quick else "fourier_features"
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(record))
    print(f"wrote {out / (stem + '.md')}")
    return record


if __name__ == "__main__":
    main()
