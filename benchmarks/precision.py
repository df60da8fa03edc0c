"""Mixed precision on a CPU: what ``--precision bf16`` does to the digits U-Net's speed and to the digits bound.

(1) One forward of the digits U-Net preset on 512 noised training digits (x_t = q_sample(x_0, t), t uniform),
    through ``GaussianDiffusion.predict_eps`` (what every program calls): fp32 against bf16 autocast,
    alternating reps, median and ratio of medians. With ``--jax``, the same for the Flax twin (jitted; bf16 as
    the layers' compute dtype), compile time apart.
(2) The full bound (L_0 … L_T, every t, analytic KLs) of a trained run's weights on the first ``--examples``
    test digits, with the SAME weights and the SAME noise (same seed, same draws) at fp32 and at bf16:
    bits/dim of each, the paired difference per example (mean and its standard error over examples) beside
    the bound's own standard error over examples, the difference by range of t, and the time of each
    full-bound evaluation (one each; they alternate with the forward reps in time, not with each other).

Weights: runs of ``ppl-diffusion train`` on the digits (``--run-dir``, several allowed), their raw weights
(the EMA, at decay 0.999 after a short run, still holds much of the initialisation): the digits U-Net preset
trained briefly, and the MLP denoiser trained for more steps (a better fit, where bf16's error weighs more:
see the results file). Rerun::

    ppl-diffusion train --net digits --data digits --T 1000 --batch-size 64 --lr 1e-3 --warmup-steps 100 \\
        --minutes 22 --checkpoint-every 200 --run-dir runs/unet-digits
    ppl-diffusion train --net mlp --data digits --T 1000 --batch-size 128 --lr 1e-3 --warmup-steps 200 \\
        --minutes 10 --checkpoint-every 1000 --run-dir runs/mlp-digits
    python benchmarks/precision.py --run-dir runs/unet-digits runs/mlp-digits --examples 64 --jax --threads 1
    python benchmarks/precision.py --quick      # a fresh MLP, T = 20: a smoke test (precision_quick.*)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from ppl_diffusion.data import load_dataset  # noqa: E402
from ppl_diffusion.evaluate import per_example_terms  # noqa: E402
from ppl_diffusion.precision import cpu_has_bf16  # noqa: E402
from ppl_diffusion.sampling import load_run  # noqa: E402


# The decision drawn from the committed run (written after it; ``--render`` rewrites the .md from the .json).
NOTES = """**Default: fp32 everywhere (train, evaluate, sample); bf16 is opt-in.** On the digits, bf16's bias of the
bound is below the bound's standard error: the U-Net's paired difference is +0.0030 ± 0.0004 bits/dim against
an SE of 0.045 over these 64 test digits (about 0.019 over all 360), the MLP's +0.0001 ± 0.0001. So
`--precision bf16` is safe for digits runs of the PyTorch U-Net on a CPU with AVX-512-BF16, where it is 1.6×
faster per forward and 1.35× per full-bound evaluation. It is not the default, because: (i) the bias is
systematic and one-sided (bf16 loosens the bound; the U-Net's difference is 8 of its own SEs from zero, 80 %
of it in L_0 … L_10, where ε̂ must be most precise), so it does not shrink with more test examples while the
SE does: they meet at about 64 · (0.045 / 0.0030)² ≈ 14,000 examples of this spread, the size of MNIST's and
CIFAR-10's test splits; (ii) it was measured on briefly trained weights only (318 and 412 steps); (iii) the
gain depends on the machine and the net: the MLP (the demo's net, small matrix products) gains nothing (0.91×,
one 2-second evaluation each), the JAX backend's U-Net forward runs at 0.91× (XLA emulates bfloat16 on CPUs; the package warns
once), and a CPU without AVX-512-BF16 / AMX emulates it too (warned once). A default that depends on the
machine and on the test split's size would make the same command report different numbers."""


def machine() -> dict:
    model, flags = "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "cpu_has_bf16": cpu_has_bf16(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "loadavg_start": os.getloadavg(),
            "shared": "yes: 2 cores shared with other engineers' jobs; timings are noisy, compare the ratios"}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def alternate(cases: dict, reps: int) -> dict:
    """Median seconds of each case, the cases alternating within every rep (each warmed up once, untimed)."""
    for fn in cases.values():
        fn()
    times = {k: [] for k in cases}
    for _ in range(reps):
        for k, fn in cases.items():
            times[k].append(timed(fn))
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "reps": v} for k, v in times.items()}


def noised_inputs(diffusion, x0, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(1, diffusion.T + 1, (len(x0),), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    return diffusion.q_sample(x0, t, eps), t


def forward_torch(models: dict, x_t, t, reps: int) -> dict:
    def case(d):
        def fn():
            with torch.no_grad():
                d.predict_eps(x_t, t)
        return fn

    return alternate({p: case(d) for p, d in models.items()}, reps)


def forward_jax(torch_model, x_t, t, reps: int) -> dict:
    import jax
    from flax import nnx

    from ppl_diffusion.numpyro.train import from_torch

    apply = nnx.jit(lambda net, x, s: net(x, s))
    xj, tj = jax.numpy.asarray(x_t.numpy()), jax.numpy.asarray(t.numpy())
    nets, compile_s = {}, {}
    for p in ("fp32", "bf16"):
        nets[p] = from_torch(torch_model, precision=p).denoiser
        nets[p].eval()
        compile_s[p] = timed(lambda: apply(nets[p], xj, tj).block_until_ready())
    out = alternate({p: (lambda n=n: apply(n, xj, tj).block_until_ready()) for p, n in nets.items()}, reps)
    for p in out:
        out[p]["first_call_s"] = compile_s[p]
    return out


def bound(models: dict, x, seed: int) -> dict:
    """bits/dim per example of each precision (same seed: same noise), and the seconds of each evaluation."""
    res = {}
    for p, d in models.items():
        t0 = time.perf_counter()
        terms = per_example_terms(d, x, seed=seed)  # [N x (T + 1)] nats, float64
        res[p] = {"seconds": time.perf_counter() - t0, "terms": terms}
    return res


def summarise_bound(res: dict, num_dims: int, T: int) -> dict:
    to_bpd = 1.0 / (num_dims * math.log(2.0))
    bpd = {p: r["terms"].sum(-1) * to_bpd for p, r in res.items()}
    n = len(bpd["fp32"])
    d = bpd["bf16"] - bpd["fp32"]
    se = lambda v: (v.std().item() / math.sqrt(n)) if n > 1 else float("nan")  # noqa: E731
    diff_terms = (res["bf16"]["terms"] - res["fp32"]["terms"]).mean(0) * to_bpd  # [T + 1] bits/dim
    edges = [(0, 0), (1, min(10, T - 1)), (11, min(100, T - 1)), (101, T - 1), (T, T)]  # L_0, L_1..10, …, L_T
    by_t = {f"L_{a}" if a == b else f"L_{a}..L_{b}": diff_terms[a:b + 1].sum().item() for a, b in edges if a <= b}
    return {"num_examples": n, "bpd_fp32": bpd["fp32"].mean().item(), "bpd_fp32_se": se(bpd["fp32"]),
            "bpd_bf16": bpd["bf16"].mean().item(), "bpd_bf16_se": se(bpd["bf16"]),
            "diff_mean": d.mean().item(), "diff_se": se(d), "diff_abs_max": d.abs().max().item(),
            "diff_by_t": by_t,
            "bias_below_bound_se": abs(d.mean().item()) + 2 * se(d) < se(bpd["fp32"]),
            "seconds_fp32": res["fp32"]["seconds"], "seconds_bf16": res["bf16"]["seconds"],
            "time_ratio_fp32_over_bf16": res["fp32"]["seconds"] / res["bf16"]["seconds"]}


def render(r: dict) -> str:
    m, f = r["machine"], r["forward"]
    lines = ["# Mixed precision (bf16) on the digits", "",
             f"{r['date']}. Command: `{r['command']}`", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, avx512_bf16 {m['avx512_bf16']}, amx_bf16 {m['amx_bf16']}, "
             f"torch {m['torch']} ({m['torch_cpu_capability']}), {m['torch_threads']} torch threads, load average "
             f"{m['loadavg_start'][0]:.1f} at start and {m['loadavg_end'][0]:.1f} at the end; {m['shared']}.", "",
             f"## (1) One forward of the {r['forward_net']}, {r['forward_batch']} noised digits", "",
             "| backend | fp32 median (ms) | bf16 median (ms) | fp32 / bf16 | reps |", "|---|---|---|---|---|"]
    for name, v in f.items():
        lines.append(f"| {name} | {1e3 * v['fp32']['median_s']:.0f} | {1e3 * v['bf16']['median_s']:.0f} | "
                     f"{v['fp32']['median_s'] / v['bf16']['median_s']:.2f}× | {len(v['fp32']['reps'])} |")
    if "jax" in f:
        lines += ["", f"JAX first call (compile + run): fp32 {f['jax']['fp32']['first_call_s']:.1f} s, "
                      f"bf16 {f['jax']['bf16']['first_call_s']:.1f} s."]
    lines += ["", "## (2) The full bound: same weights, same noise, fp32 against bf16", "",
              "| weights | test digits | T | bits/dim fp32 | bits/dim bf16 | bound's SE | bf16 − fp32 (paired) "
              "| SE of the difference | max abs difference | evaluation fp32 / bf16 (s) | ratio |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in r["bounds"]:
        lines.append(f"| {b['name']} | {b['num_examples']} | {b['T']} | {b['bpd_fp32']:.5f} | {b['bpd_bf16']:.5f} | "
                     f"{b['bpd_fp32_se']:.5f} | {b['diff_mean']:+.5f} | {b['diff_se']:.5f} | {b['diff_abs_max']:.5f} "
                     f"| {b['seconds_fp32']:.0f} / {b['seconds_bf16']:.0f} | {b['time_ratio_fp32_over_bf16']:.2f}× |")
    lines.append("")
    for b in r["bounds"]:
        lines += [f"- {b['name']}: {b['weights']}. Mean difference by term (bits/dim): "
                  + ", ".join(f"{k} {v:+.2e}" for k, v in b["diff_by_t"].items()) + f". {b['verdict']}"]
    lines += ["", "Each full-bound evaluation ran once (fp32 then bf16), so its time ratio is noisier than (1)'s. "
                  "JAX: XLA's default CPU thread pool (not --threads).", "", "## Default", "", NOTES, ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", nargs="+", help="runs of ppl-diffusion train on the digits (required unless "
                    "--quick): the bound of each; the forward of the first U-Net among them")
    ap.add_argument("--examples", type=int, default=64, help="first N test digits for the bound (default 64)")
    ap.add_argument("--forward-batch", type=int, default=512)
    ap.add_argument("--reps", type=int, default=7, help="alternating reps of each forward (default 7)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jax", action="store_true", help="also time the Flax twin's forward")
    ap.add_argument("--quick", action="store_true", help="a fresh MLP at T = 20 and few reps: a smoke test")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default torch's, one per core; pass 1 on a shared machine: spinning OpenMP "
                         "threads then slow everything several-fold)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--render", action="store_true", help="only rewrite OUT/precision.md from OUT/precision.json")
    args = ap.parse_args(argv)
    if args.render:
        out = Path(args.out)
        (out / "precision.md").write_text(render(json.loads((out / "precision.json").read_text())))
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    info = machine()

    data = load_dataset("digits")
    runs = {}  # name -> (models by precision, description)
    if args.quick:
        from ppl_diffusion.train import TrainConfig, build_diffusion

        models = {}
        for p in ("fp32", "bf16"):
            torch.manual_seed(0)
            models[p] = build_diffusion(TrainConfig(net="mlp", T=20, steps=1, precision=p), data).eval()
        runs["mlp (fresh)"] = (models, "a fresh MLP (quick smoke test)")
        args.examples, args.forward_batch, args.reps = 8, 64, 2
    else:
        if not args.run_dir:
            ap.error("pass --run-dir (trained digits runs) or --quick")
        for run_dir in args.run_dir:
            loaded = {p: load_run(run_dir, ema=False, device="cpu", precision=p) for p in ("fp32", "bf16")}
            c = loaded["fp32"].config
            if c.data != "digits":
                ap.error(f"{run_dir} was trained on {c.data!r}; pass digits runs")
            runs[f"{c.net} ({Path(run_dir).name})"] = (
                {p: r.diffusion for p, r in loaded.items()},
                f"{run_dir}, raw weights after {loaded['fp32'].step} steps ({c.net} net, batch {c.batch_size}, lr "
                f"{c.lr}, {c.estimator}, trained at {c.precision})")

    name = next((k for k in runs if k.startswith(("digits", "mnist", "cifar10"))), next(iter(runs)))
    models = runs[name][0]
    x0 = data.train[:args.forward_batch]
    x_t, t = noised_inputs(models["fp32"], x0, args.seed)
    forward = {"torch": forward_torch(models, x_t, t, args.reps)}
    print(f"forward torch: fp32 {forward['torch']['fp32']['median_s'] * 1e3:.0f} ms, bf16 "
          f"{forward['torch']['bf16']['median_s'] * 1e3:.0f} ms", flush=True)
    if args.jax:
        forward["jax"] = forward_jax(models["fp32"], x_t, t, args.reps)
        print(f"forward jax: fp32 {forward['jax']['fp32']['median_s'] * 1e3:.0f} ms, bf16 "
              f"{forward['jax']['bf16']['median_s'] * 1e3:.0f} ms", flush=True)

    bounds = []
    x = data.test[:args.examples]
    for run_name, (models, description) in runs.items():
        b = summarise_bound(bound(models, x, args.seed), models["fp32"].num_dims, models["fp32"].T)
        b.update(name=run_name, weights=description, T=models["fp32"].T)
        b["verdict"] = (f"|mean difference| + 2 SE = {abs(b['diff_mean']) + 2 * b['diff_se']:.5f} bits/dim "
                        f"{'<' if b['bias_below_bound_se'] else '>='} the bound's SE {b['bpd_fp32_se']:.5f}.")
        print(json.dumps(b, indent=2), flush=True)
        bounds.append(b)
    info["loadavg_end"] = os.getloadavg()
    result = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
              "machine": info, "forward_net": name, "forward_batch": args.forward_batch, "forward": forward,
              "bounds": bounds}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "precision_quick" if args.quick else "precision"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
