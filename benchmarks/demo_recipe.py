"""The demo's recipe: which denoiser, and how many steps, make ``ppl-diffusion demo`` draw digits in ~8 minutes.

Two phases, each a subcommand:

``speed``  seconds per optimizer step of every candidate, measured in short bursts *interleaved* across the
           candidates (the machine is shared: a slow spell hits every candidate alike), min and median over the
           bursts. The digits U-Net preset is the anchor: its quiet 2-core figure, 0.86 s/step at batch 64
           (``ppl_diffusion/cli.py``'s measurement), scales the others' ratios to a quiet machine, and the steps
           that fit ``--budget-minutes`` follow.
``run``    trains candidates to their step budget (:data:`CANDIDATES`), then scores each as the demo does:
           the full bound on the 360 test digits (raw and EMA weights; the best by validation where the
           candidate holds digits out), ``digits_fd`` of 1000 EMA samples, and a grid of 64 samples.

Every figure goes to ``--out`` (default ``benchmarks/results``): ``demo_recipe.json`` (merged across calls)
and ``demo_recipe.md`` (the table), and the sample grids to ``demo_recipe-<name>.png``.

Rerun::

    python benchmarks/demo_recipe.py speed --rounds 3
    python benchmarks/demo_recipe.py run unet32 unet32-attn --run-root runs/demo_recipe
    python benchmarks/demo_recipe.py speed --quick && python benchmarks/demo_recipe.py run mlp --quick   # seconds
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from estimators import machine_info  # noqa: E402

from ppl_diffusion.data import load_dataset  # noqa: E402
from ppl_diffusion.evaluate import evaluate_run  # noqa: E402
from ppl_diffusion.sampling import sample_run  # noqa: E402
from ppl_diffusion.train import BatchStream, TrainConfig, make_trainer, train  # noqa: E402

COMMON = dict(data="digits", T=1000, estimator="stochastic-kl-is", schedule="linear", variance="beta",
              grad_clip=1.0, seed=0)


def _unet(channels: int, res_blocks: int, attention: tuple, dropout: float = 0.1, **extra) -> dict:
    return dict(net="unet", net_config=dict(in_channels=1, image_size=8, model_channels=channels, channel_mult=(1, 2),
                                            num_res_blocks=res_blocks, attention_resolutions=attention,
                                            dropout=dropout, use_scale_shift_norm=True, **extra))


# Candidates: the net and its optimisation; ``steps`` is the budget of the ``run`` phase (from the speed phase:
# about 7 minutes on 2 quiet cores by the scaled figure). T sets the evaluation's cost (T calls per test digit for
# the full bound, T per sample for digits_fd), not the training's.
UNET = dict(batch_size=64, lr=1e-3, warmup_steps=100, ema_decay=0.998, val_examples=128)
CANDIDATES = {
    # today's demo: the 191k-parameter MLP on the 64 flattened pixels (8 minutes: ~24,000 steps)
    "mlp": dict(net="mlp", batch_size=128, lr=1e-3, warmup_steps=200, ema_decay=0.999, steps=24000,
                checkpoint_every=1000, val_examples=128),
    # the digits preset's U-Net (2 levels, attention at 4x4, scale-shift norm) at a quarter of its width (64) ...
    "unet16": dict(**_unet(16, 2, (4,)), **UNET, steps=2000, checkpoint_every=400),
    "unet16-T200": dict(**_unet(16, 2, (4,)), **UNET, T=200, steps=2000, checkpoint_every=400),
    "unet16-T100": dict(**_unet(16, 2, (4,)), **UNET, T=100, steps=2000, checkpoint_every=400),
    # ... at half its width, one residual block per level and no attention ...
    "unet32": dict(**_unet(32, 1, ()), **UNET, steps=1800, checkpoint_every=300),
    "unet32-T100": dict(**_unet(32, 1, ()), **UNET, T=100, steps=1800, checkpoint_every=300),
    # ... at half and three quarters of its width, with attention
    "unet32-attn": dict(**_unet(32, 2, (4,)), **UNET, steps=1100, checkpoint_every=275),
    "unet48": dict(**_unet(48, 1, (4,)), **UNET, steps=1000, checkpoint_every=250),
    # the anchor of the speed phase (the committed budget recipe's net)
    "preset64": dict(net="digits", batch_size=64, lr=5e-4, warmup_steps=100, ema_decay=0.998, steps=550,
                     checkpoint_every=250, val_examples=128),
}
ANCHOR, ANCHOR_QUIET_S = "preset64", 0.86  # s/step of the preset at batch 64 on 2 quiet cores (cli.py's note)
EVAL = dict(max_examples=360, fd_samples=1000)  # as the demo (cli.DEMO_EVAL)


def config_of(name: str, **overrides) -> TrainConfig:
    return TrainConfig(**{**COMMON, **CANDIDATES[name], **overrides})


def speed(names: list[str], rounds: int, burst: int) -> dict:
    """s/step of each candidate: ``rounds`` bursts of ``burst`` steps, interleaved across the candidates."""
    data = load_dataset("digits")
    trainers = {}
    for name in names:
        config = config_of(name, steps=burst * rounds + 1).validate()
        trainer = make_trainer(config, data, torch.device("cpu"))
        batches = BatchStream(len(data.train), config.seed)
        trainer.step(batches.next(config.batch_size), config.lr)  # first step: allocation, warm caches
        params = sum(p.numel() for p in trainer.params)
        trainers[name] = (trainer, batches, config, params)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name, (trainer, batches, config, _) in trainers.items():
            start = time.perf_counter()
            for _ in range(burst):
                trainer.step(batches.next(config.batch_size), config.lr)
            times[name].append((time.perf_counter() - start) / burst)
            print(f"round {r + 1}/{rounds} {name:12s} {times[name][-1]:.4f} s/step", flush=True)
    out = {}
    for name in names:
        out[name] = {"parameters": trainers[name][3], "batch_size": trainers[name][2].batch_size,
                     "s_per_step_min": min(times[name]), "s_per_step_median": statistics.median(times[name]),
                     "bursts": times[name]}
    if ANCHOR in out:
        scale = ANCHOR_QUIET_S / out[ANCHOR]["s_per_step_min"]
        for row in out.values():
            row["quiet_s_per_step"] = row["s_per_step_min"] * scale
    return out


def run(name: str, run_root: Path, out: Path, quick: bool) -> dict:
    """Train candidate ``name`` to its budget (resuming a run cut short), evaluate and sample it as the demo does."""
    overrides = dict(T=20, steps=20, checkpoint_every=10, warmup_steps=5, val_examples=32) if quick else {}
    config = config_of(name, **overrides)
    run_dir = run_root / name
    started = time.monotonic()
    if not (run_dir / f"ckpt-{config.steps:08d}.pt").exists():
        train(config, run_dir, resume="auto", progress=False)
    trained = time.monotonic()
    evaluation = evaluate_run(run_dir, **(dict(max_examples=16, fd_samples=16) if quick else EVAL), device="cpu",
                              progress=False)
    evaluated = time.monotonic()
    samples = sample_run(run_dir, n=64, seed=0, device="cpu")
    grid = out / f"demo_recipe-{name}{'_quick' if quick else ''}.png"
    shutil.copy(samples.png, grid)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    row = {
        "name": name, "config": {k: v for k, v in config.to_dict().items()},
        "command": f"python benchmarks/demo_recipe.py run {name}" + (" --quick" if quick else ""),
        "steps": config.steps, "train_seconds_here": round(metrics[-1]["elapsed"], 1),
        "seconds_this_call": round(trained - started, 1), "evaluate_seconds_here": round(evaluated - trained, 1),
        "s_per_step_here": metrics[-1]["elapsed"] / config.steps,
        "weights_from": evaluation["weights_from"], "eval_step": evaluation["step"], "val_bpd": evaluation["val_bpd"],
        "test_bpd": evaluation["bpd"], "test_bpd_stderr": evaluation["bpd_stderr"],
        "test_bpd_ema": evaluation["bpd_ema"], "test_bpd_ema_stderr": evaluation["bpd_ema_stderr"],
        "digits_fd_ema": evaluation["digits_fd_ema"], "fd_samples": evaluation["fd_samples"],
        "validation": [{"step": r["step"], "val_bpd": r["val_bpd"]} for r in metrics if "val_bpd" in r],
        "samples_png": grid.name,  # beside the JSON
    }
    print(f"{name}: {config.steps} steps, EMA {row['test_bpd_ema']:.4f} bits/dim ({row['weights_from']} weights, "
          f"step {row['eval_step']}), digits_fd {row['digits_fd_ema']}", flush=True)
    return row


def _merge(out: Path, key: str, rows: dict, quick: bool) -> dict:
    path = out / ("demo_recipe_quick.json" if quick else "demo_recipe.json")
    doc = json.loads(path.read_text()) if path.exists() else {"speed": {}, "runs": {}}
    doc[key].update(rows)
    doc.setdefault("calls", []).append({"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                        "command": "python benchmarks/demo_recipe.py " + shlex.join(sys.argv[1:]),
                                        **machine_info()})
    path.write_text(json.dumps(doc, indent=2) + "\n")
    _write_table(doc, path.with_suffix(".md"))
    return doc


def _fmt(x, spec):
    return "–" if x is None else format(x, spec)


def _write_table(doc: dict, path: Path) -> None:
    lines = ["# The demo's recipe (benchmarks/demo_recipe.py)", "",
             "Timings were taken on a 2-core CPU shared with other jobs: compare them only within one `speed` call "
             "(interleaved bursts); `quiet s/step` scales each ratio to the digits preset's quiet "
             f"{ANCHOR_QUIET_S} s/step at batch 64. Bits/dim: the full bound on the 360 test digits; digits_fd: "
             "1000 samples of the EMA weights (lower is better; the committed budget recipe's U-Net scores about 1).",
             "", "## Speed", "",
             "| candidate | parameters | batch | s/step (min of bursts, here) | median | quiet s/step (scaled) |",
             "|---|---|---|---|---|---|"]
    for name, r in doc["speed"].items():
        lines.append(f"| {name} | {r['parameters']:,} | {r['batch_size']} | {r['s_per_step_min']:.4f} | "
                     f"{r['s_per_step_median']:.4f} | {_fmt(r.get('quiet_s_per_step'), '.3f')} |")
    lines += ["", "## Full budgets", "",
              "| candidate | steps | s/step here | weights (step) | val bits/dim | test bits/dim raw | EMA | digits_fd |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in doc["runs"].items():
        lines.append(f"| {name} | {r['steps']} | {r['s_per_step_here']:.3f} | {r['weights_from']} ({r['eval_step']}) | "
                     f"{_fmt(r['val_bpd'], '.4f')} | {r['test_bpd']:.4f} ± {r['test_bpd_stderr']:.4f} | "
                     f"{r['test_bpd_ema']:.4f} ± {r['test_bpd_ema_stderr']:.4f} | {_fmt(r['digits_fd_ema'], '.2f')} |")
    lines += ["", *(f"- {note}" for note in doc.get("notes", [])), "",
              "Commands: " + "; ".join(f"`{c['command']}`" for c in doc.get("calls", [])), ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="phase", required=True)
    s = sub.add_parser("speed", help="s/step of the candidates, interleaved bursts")
    s.add_argument("names", nargs="*", default=list(CANDIDATES))
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--burst", type=int, default=5, help="steps per burst")
    r = sub.add_parser("run", help="train candidates to their budgets, evaluate and sample as the demo does")
    r.add_argument("names", nargs="+", choices=list(CANDIDATES))
    r.add_argument("--run-root", default="runs/demo_recipe")
    for q in (s, r):
        q.add_argument("--quick", action="store_true", help="seconds: T = 20, a few steps (for the test suite)")
        q.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
        q.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.phase == "speed":
        rows = speed(args.names, 1 if args.quick else args.rounds, 1 if args.quick else args.burst)
        return _merge(out, "speed", rows, args.quick)
    rows = {name: run(name, Path(args.run_root), out, args.quick) for name in args.names}
    return _merge(out, "runs", rows, args.quick)


if __name__ == "__main__":
    main()
