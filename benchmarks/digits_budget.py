"""Digits at the peer's budget: test bits/dim after 2,270 steps of batch 128 with the 4.3M-parameter U-Net.

The peer (improved-diffusion: learned-range variance, hybrid loss, Adam 2e-4, EMA 0.999) reached 4.49
bits/dim on the 360 test digits with this budget. Our run (``CONFIG``):

- the bound itself as the objective (``stochastic-kl-is``: one step t per example, analytic KL,
  t importance-sampled from the loss history), fixed σ_t² = β_t during training;
- Adam 5e-4 after a 100-step warm-up (DDPM's 2e-4 with a 1000-step warm-up spends half of a
  2,270-step budget warming up), gradient clipping at 1, EMA 0.998 (a ~500-step horizon suits 2,270 steps);
- after training, the reverse variances σ_t² and the decoder's are fitted in closed form to the
  trained mean on 128 *training* digits (:mod:`ppl_diffusion.variance`, Analytic-DPM); no optimizer
  steps, reported with its time.

Outputs (``--out``, default ``benchmarks/results``): ``digits_budget.json`` (``test_bpd``,
``test_bpd_ema``, ``steps``, ``batch_size``, ``parameters``, ``minutes``, ``command``, ``machine``, the
curve, the final per-part breakdown), ``digits_budget_curve.png`` (bits/dim against step) and
``digits_budget_samples.png`` (64 samples of the EMA weights with the fitted variances).

The curve's points estimate the full bound from a subset of its terms: every term for
t = 1..20, and one step drawn uniformly in each of the 49 strata of 20 steps above (weight 20), the
same draw for all checkpoints: an unbiased estimate of the full bound (its standard error over the test
digits is shown). The final point is the full bound, every one of the T terms (``evaluate_run``).

Rerun (on 2 CPU cores: about 37 min of training, 35 min of evaluation)::

    python benchmarks/digits_budget.py --run-dir runs/digits_budget
    python benchmarks/digits_budget.py --quick --out /tmp/q     # seconds: an MLP, for the test suite
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from estimators import machine_info  # noqa: E402

from ppl_diffusion import plots  # noqa: E402
from ppl_diffusion.checkpoint import list_checkpoints  # noqa: E402
from ppl_diffusion.data import load_dataset, to_uint8  # noqa: E402
from ppl_diffusion.evaluate import evaluate_run, per_example_terms  # noqa: E402
from ppl_diffusion.sampling import draw_samples, load_run  # noqa: E402
from ppl_diffusion.train import TrainConfig, train  # noqa: E402
from ppl_diffusion.variance import FittedVariance, fit_variance  # noqa: E402

CONFIG = dict(data="digits", net="digits", estimator="stochastic-kl-is", schedule="linear", T=1000,
              variance="beta", batch_size=128, lr=5e-4, warmup_steps=100, grad_clip=1.0, ema_decay=0.998,
              steps=2270, checkpoint_every=250, keep_checkpoints=20, seed=0)
QUICK = dict(CONFIG, net="mlp", T=40, steps=30, checkpoint_every=10, warmup_steps=5, lr=1e-3)
PEER_BPD, BAR_BPD = 4.49, 3.8


def stratified_steps(T: int, exact: int, width: int, seed: int = 0) -> tuple[list[int], np.ndarray]:
    """Steps 1..exact, then one step drawn uniformly in each stratum of ``width`` steps above; weights [T]."""
    rng = np.random.default_rng(seed)
    steps, weights = list(range(1, min(exact, T) + 1)), np.zeros(T)
    weights[: len(steps)] = 1.0
    for lo in range(exact + 1, T + 1, width):
        hi = min(lo + width - 1, T)
        t = int(rng.integers(lo, hi + 1))
        steps.append(t)
        weights[t - 1] = hi - lo + 1
    return steps, weights


def curve_point(checkpoint: Path, data, steps, weights, fit_examples: int, seed: int) -> dict:
    """Stratified estimate of the test bound of the EMA weights at ``checkpoint``: trained and fitted variance."""
    loaded = load_run(checkpoint, ema=True, device="cpu")
    d = loaded.diffusion
    fitted = fit_variance(d, data.train[:fit_examples], timesteps=steps, seed=seed)
    to_bpd = 1.0 / (d.num_dims * math.log(2.0))
    point = {"step": loaded.step}
    for name, model in (("trained", d), ("fitted", d.with_variance(fitted))):
        terms = per_example_terms(model, data.test, timesteps=steps, seed=seed)  # [N x (T + 1)], NaN off steps
        w = torch.as_tensor(np.append(weights, 1.0))
        bpd = (torch.nan_to_num(terms) * w).sum(-1) * to_bpd
        point[f"bpd_{name}"] = bpd.mean().item()
        point[f"bpd_{name}_stderr"] = bpd.std().item() / math.sqrt(len(bpd))
    print(f"step {point['step']:5d}: {point['bpd_trained']:.3f} (trained variance), "
          f"{point['bpd_fitted']:.3f} (fitted) bits/dim, estimate", flush=True)
    return point


def plot_curve(curve: list[dict], final: dict, path: Path, quick: bool) -> Path:
    plt = plots._figures()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    steps = [p["step"] for p in curve]
    for name, label in (("trained", "σ_t² = β_t (trained)"), ("fitted", "σ_t² fitted in closed form")):
        ax.errorbar(steps, [p[f"bpd_{name}"] for p in curve], yerr=[2 * p[f"bpd_{name}_stderr"] for p in curve],
                    marker="o", ms=4, capsize=2, label=f"EMA, {label} (stratified estimate)")
    ax.errorbar([final["step"]], [final["test_bpd_ema"]], yerr=[2 * final["test_bpd_ema_stderr"]], marker="*",
                ms=12, color="k", capsize=2, label=f"EMA, fitted, full bound: {final['test_bpd_ema']:.3f}")
    if not quick:
        ax.axhline(PEER_BPD, color="tab:red", ls="--", lw=1, label=f"peer (improved-diffusion) {PEER_BPD}")
        ax.axhline(BAR_BPD, color="tab:green", ls=":", lw=1, label=f"bar {BAR_BPD}")
    ax.set_xlabel("optimizer step (batch 128)")
    ax.set_ylabel("test bits/dim (360 digits)")
    ax.set_title("digits, 4.3M-parameter U-Net, T = 1000")
    ax.legend(fontsize=7)
    return plots._save(fig, path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/digits_budget", help="run folder (trained here, or reused)")
    p.add_argument("--curve-steps", default="250,500,1000,1500,2000,2270", help="checkpoints of the curve")
    p.add_argument("--fit-examples", type=int, default=128, help="training digits of the variance fit")
    p.add_argument("--quick", action="store_true", help="a tiny MLP run, for the test suite")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    config = TrainConfig(**(QUICK if args.quick else CONFIG))
    curve_steps = [10, 20] if args.quick else [int(s) for s in args.curve_steps.split(",")]
    fit_examples = 16 if args.quick else args.fit_examples
    run_dir = Path(args.run_dir)

    final_ckpt = run_dir / f"ckpt-{config.steps:08d}.pt"
    if not final_ckpt.exists():
        train(config, run_dir, resume=run_dir.exists() and bool(list_checkpoints(run_dir)), progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    minutes = rows[-1]["elapsed"] / 60

    data = load_dataset("digits")
    steps, weights = stratified_steps(config.T, 20, 20)
    by_step = {int(c.stem.split("-")[1]): c for c in list_checkpoints(run_dir)}
    curve = [curve_point(by_step[s], data, steps, weights, fit_examples, seed=0) for s in curve_steps if s in by_step]

    evaluation = run_dir / "eval-fitted.json"
    result = json.loads(evaluation.read_text()) if evaluation.exists() else None
    if result is None or result["step"] != config.steps or result["num_examples"] != len(data.test):
        result = evaluate_run(final_ckpt, fit_variance=fit_examples, fd_samples=0, device="cpu", progress=False)
    to_bpd = 1.0 / (64 * math.log(2.0))
    final = {"step": result["step"], "test_bpd": result["bpd"], "test_bpd_stderr": result["bpd_stderr"],
             "test_bpd_ema": result["bpd_ema"], "test_bpd_ema_stderr": result["bpd_ema_stderr"]}
    parts = {k: {"decoder": v[0] * to_bpd, "kl_terms": sum(v[1:-1]) * to_bpd, "prior": v[-1] * to_bpd}
             for k, v in result["terms"].items()}

    fitted = FittedVariance.from_dict(result["fitted_variance"]["ema"])
    model = load_run(final_ckpt, ema=True, device="cpu").diffusion.with_variance(fitted)
    samples = to_uint8(draw_samples(model, 64, seed=0)).numpy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "digits_budget_quick" if args.quick else "digits_budget"
    plots.image_grid(samples, out / f"{stem}_samples.png",
                     title=f"64 samples, EMA, fitted variance, step {config.steps}")
    plot_curve(curve, final, out / f"{stem}_curve.png", args.quick)

    parameters = sum(p.numel() for p in model.denoiser.parameters())
    info = machine_info()
    record = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(argv or sys.argv[1:])),
        "machine": f"{info['machine']} ({info['cpu_model']}), torch {info['torch']}, pyro {info['pyro']}",
        **final, "steps": config.steps, "batch_size": config.batch_size, "parameters": parameters,
        "minutes": round(minutes, 2), "evaluation_seconds": result["seconds"],
        "variance_fit": {k: {"num_examples": v["num_examples"], "seconds": v["seconds"],
                             "decoder_scale": math.exp(v["decoder_log_variance"] / 2)}
                         for k, v in result["fitted_variance"].items()},
        "bits_per_dim_parts": parts, "num_test_examples": result["num_examples"], "T": result["T"],
        "config": config.to_dict(), "curve": curve,
        "curve_estimator": "t = 1..20 exactly, one t per stratum of 20 steps above (weight 20), EMA weights",
        "peer_bpd": PEER_BPD, "bar_bpd": BAR_BPD,
    }
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"test bits/dim {final['test_bpd']:.3f} ± {final['test_bpd_stderr']:.3f} (raw), "
          f"{final['test_bpd_ema']:.3f} ± {final['test_bpd_ema_stderr']:.3f} (EMA); {config.steps} steps, "
          f"{parameters:,} parameters, {minutes:.1f} min of training; wrote {out / (stem + '.json')}")
    return record


if __name__ == "__main__":
    main()
