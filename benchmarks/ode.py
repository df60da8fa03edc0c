"""Exact likelihood through the probability-flow ODE, beside the ELBO: two backends, and k-diffusion on the same nets.

For each trained run (``--toy-run`` 8 Gaussians, ``--mlp-run`` digits MLP, ``--unet-run`` digits U-Net; EMA
weights; the first ``--examples`` test examples):

1. the ELBO in bits/dim (all T terms, closed-form KLs, ``evaluate.per_example_terms``), and for the 2-D toy the
   IWAE bound with K trajectories (Pyro's ``RenyiELBO(alpha=0)``, vectorized particles);
2. the ODE (``likelihood.per_example_ode``): continuous data as they are; digits both with uniform dequantization
   (cells centred on the pixel values, +log2 127.5) and with the decoder bound (x_1 ~ q(x_1|x_0) scored by the ODE
   and decoded by the trained p(x_0|x_1)); the exact trace for the MLPs, Hutchinson (1 Rademacher probe) for the
   U-Net; rtol = atol = ``--tol``; NFE per batch solve and seconds per example;
3. torchdiffeq (dopri5) against diffrax (dopri5, jit-compiled, the compile apart): the same weights and options,
   each run twice in alternation (the second run's time is reported), their per-example |Δ log p|;
4. k-diffusion's ``log_likelihood`` (``benchmarks/kdiffusion_peer.py``) on the same net, with our Hutchinson trace
   fed k-diffusion's Rademacher probe: on our default ODE (σ̃ → t by our spline) and on k-diffusion's own
   ``DiscreteEpsDDPMDenoiser`` (log-linear in t, our ``grid-linear``), at ``--tol`` and at two tighter tolerances.

Results: ``results/ode.md`` and ``results/ode.json`` (command, machine, threads). The runs (the U-Net is the committed
budget recipe of ``benchmarks/digits_budget.py``, 2,270 steps; the MLP and the toy are short)::

    ppl-diffusion train --data eight_gaussians --net mlp --T 1000 --estimator stochastic-kl-is --batch-size 256 \\
        --lr 1e-3 --warmup-steps 100 --ema-decay 0.999 --steps 4000 --checkpoint-every 1000 --run-dir runs/ode-8gauss
    ppl-diffusion train --data digits --net mlp --T 1000 --estimator stochastic-kl-is --batch-size 128 --lr 1e-3 \\
        --warmup-steps 200 --ema-decay 0.999 --steps 15000 --checkpoint-every 1000 --run-dir runs/ode-mlp-digits
    ppl-diffusion train --data digits --net digits --estimator stochastic-kl-is --schedule linear --T 1000 \\
        --variance beta --batch-size 128 --lr 5e-4 --warmup-steps 100 --grad-clip 1.0 --ema-decay 0.998 \\
        --steps 2270 --checkpoint-every 100 --run-dir runs/ode-unet-digits
    python benchmarks/ode.py --toy-run runs/ode-8gauss --mlp-run runs/ode-mlp-digits --unet-run runs/ode-unet-digits
    python benchmarks/ode.py --quick --out /tmp/q    # seconds: fresh T = 20 nets, for the test suite
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ppl_diffusion.data import load_dataset  # noqa: E402
from ppl_diffusion.evaluate import per_example_terms  # noqa: E402
from ppl_diffusion.likelihood import per_example_ode  # noqa: E402
from ppl_diffusion.sampling import is_images, load_run  # noqa: E402
from distributed import cpu_name  # noqa: E402  (benchmarks/distributed.py: the CPU's model name)

LN2 = math.log(2.0)


def mean_se(v) -> tuple[float, float]:
    v = np.asarray(v, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def elbo_bpd(diffusion, x) -> tuple[list, float]:
    t0 = time.monotonic()
    terms = per_example_terms(diffusion, x, seed=0)
    return (terms.sum(-1) / (diffusion.num_dims * LN2)).tolist(), time.monotonic() - t0


def iwae_bpd(diffusion, x, particles: int, chunk: int = 16) -> tuple[float, float, float]:
    """The IWAE bound (K trajectories of the forward chain) in bits/dim: mean and SE over chunks of examples."""
    import pyro
    from pyro.infer import RenyiELBO

    elbo = RenyiELBO(alpha=0, num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    t0, per_chunk = time.monotonic(), []
    pyro.set_rng_seed(0)
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            xb = x[start:start + chunk]
            per_chunk.append(elbo.loss(diffusion.model, diffusion.guide, xb) / (len(xb) * diffusion.num_dims * LN2))
    m, se = mean_se(per_chunk)
    return m, se, time.monotonic() - t0


def ode_row(diffusion, x, *, kind: str, trace: str, tol: float, batch: int) -> dict:
    t0 = time.monotonic()
    bpd, nfes, eps = per_example_ode(diffusion, x, indices=np.arange(len(x)), dequantization=kind, seed=0,
                                     batch_size=batch, trace=trace, probes=1, probe="rademacher", rtol=tol, atol=tol,
                                     eps=None, time_map="grid")
    seconds = time.monotonic() - t0
    m, se = mean_se(bpd[:, 0])
    return dict(bpd=m, se=se, per_example=bpd[:, 0].tolist(), nfe_mean=float(np.mean(nfes)), nfe_max=int(max(nfes)),
                seconds=seconds, s_per_example=seconds / len(x), eps=eps)


def both_backends(run, x, *, kind: str, trace: str, tol: float, batch: int, log) -> dict:
    """torchdiffeq and diffrax on the same weights, alternating twice; the second of each is reported."""
    jax_run = load_run(run, device="cpu", backend="numpyro")
    torch_run = load_run(run, device="cpu")
    rows = {}
    for rep in range(2):
        for name, diffusion in (("torchdiffeq", torch_run.diffusion), ("diffrax", jax_run.diffusion)):
            row = ode_row(diffusion, x, kind=kind, trace=trace, tol=tol, batch=batch)
            if rep == 0:
                rows[name + "_first_seconds"] = row["seconds"]
            else:
                rows[name] = row
            log(f"    {name} ({'first' if rep == 0 else 'second'} run): {row['bpd']:.4f} ± {row['se']:.4f} bits/dim, "
                f"NFE {row['nfe_mean']:.0f}, {row['seconds']:.1f} s")
    a, b = np.asarray(rows["torchdiffeq"]["per_example"]), np.asarray(rows["diffrax"]["per_example"])
    d = diffusion_dims(torch_run.diffusion)
    rows["max_abs_diff_nats"] = float(np.abs(a - b).max() * d * LN2)
    rows["speedup"] = rows["torchdiffeq"]["seconds"] / rows["diffrax"]["seconds"]
    rows["diffrax_compile_seconds"] = rows["diffrax_first_seconds"] - rows["diffrax"]["seconds"]
    return rows


def diffusion_dims(diffusion) -> int:
    return int(np.prod(diffusion.event_shape))


def kdiffusion_rows(run, x, *, tols, log) -> list[dict]:
    import kdiffusion_peer as kp

    from ppl_diffusion import GaussianDiffusion
    from ppl_diffusion.ode import log_likelihood

    diffusion = load_run(run, device="cpu").diffusion
    same = GaussianDiffusion(schedule=diffusion.schedule, denoiser=diffusion.denoiser,
                             event_shape=tuple(diffusion.event_shape), prior=kp.matching_prior(diffusion),
                             decoder=diffusion.decoder)
    d, rows = diffusion_dims(diffusion), []
    for spline in (True, False):
        for tol in tols:
            t0 = time.monotonic()
            ll_kd, nfe_kd, v = kp.log_likelihood(same, x, rtol=tol, atol=tol, spline=spline)
            t_kd = time.monotonic() - t0
            t0 = time.monotonic()
            with torch.no_grad():
                ours = log_likelihood(same, x, trace="hutchinson", probe_values=v[:, None], rtol=tol, atol=tol,
                                      time_map="grid" if spline else "grid-linear")
            t_ours = time.monotonic() - t0
            diff = (ours.log_prob - ll_kd).abs()
            row = dict(map="grid (our spline)" if spline else "grid-linear (k-diffusion's own)", tol=tol,
                       kd_bpd=float(-ll_kd.mean() / (d * LN2)), ours_bpd=float(-ours.log_prob.mean() / (d * LN2)),
                       max_abs_diff_nats=float(diff.max()), mean_abs_diff_nats=float(diff.mean()),
                       kd_nfe=nfe_kd, ours_nfe=ours.nfe, kd_seconds=t_kd, ours_seconds=t_ours)
            rows.append(row)
            log(f"    k-diffusion, {row['map']}, tol {tol:g}: max |Δ log p| {row['max_abs_diff_nats']:.2e} nats, NFE "
                f"{nfe_kd} vs ours {ours.nfe}, {t_kd:.1f} s vs {t_ours:.1f} s")
    return rows


def evaluate_model(name: str, run, args, log) -> dict:
    loaded = load_run(run, device="cpu")
    diffusion = loaded.diffusion
    data = load_dataset(loaded.config.data)
    n = args.examples_unet if name == "unet" else args.examples
    x = data.test[:n].float()
    images = is_images(diffusion)
    out = dict(run=str(run), data=loaded.config.data, net=loaded.config.net, T=loaded.config.T, step=loaded.step,
               examples=len(x), num_dims=diffusion_dims(diffusion))
    log(f"== {name}: {run} ({loaded.config.data}, {loaded.config.net}, step {loaded.step}), {len(x)} test examples")
    per, secs = elbo_bpd(diffusion, x)
    out["elbo"] = dict(zip(("bpd", "se"), mean_se(per)), seconds=secs, s_per_example=secs / len(x))
    log(f"  ELBO {out['elbo']['bpd']:.4f} ± {out['elbo']['se']:.4f} bits/dim ({secs:.1f} s)")
    if not images and args.iwae_particles:
        m, se, secs = iwae_bpd(diffusion, x, args.iwae_particles)
        out["iwae"] = dict(bpd=m, se=se, particles=args.iwae_particles, seconds=secs)
        log(f"  IWAE (K = {args.iwae_particles}) {m:.4f} ± {se:.4f} bits/dim ({secs:.1f} s)")
    trace = "hutchinson" if name == "unet" else "exact"
    kinds = ("uniform", "decoder") if images else ("none",)
    out["trace"], out["ode"] = trace, {}
    for kind in kinds:
        log(f"  ODE, {kind}, {trace} trace, tol {args.tol:g}")
        if name == "unet" and not args.unet_jax:
            row = ode_row(diffusion, x, kind=kind, trace=trace, tol=args.tol, batch=args.batch)
            out["ode"][kind] = dict(torchdiffeq=row)
            log(f"    torchdiffeq: {row['bpd']:.4f} ± {row['se']:.4f} bits/dim, NFE {row['nfe_mean']:.0f}, "
                f"{row['seconds']:.1f} s")
        else:
            out["ode"][kind] = both_backends(run, x, kind=kind, trace=trace, tol=args.tol, batch=args.batch, log=log)
    if name == "mlp":  # Hutchinson on the same weights: its noise, and the two backends with it
        log(f"  ODE, {kinds[0]}, hutchinson trace (1 probe), tol {args.tol:g}")
        out["ode_hutchinson"] = both_backends(run, x, kind=kinds[0], trace="hutchinson", tol=args.tol,
                                              batch=args.batch, log=log)
    if name in args.kdiffusion:
        log("  k-diffusion side by side (Hutchinson with k-diffusion's probe, no dequantization)")
        xk = x.double() if args.kd_float64 else x
        if args.kd_float64:
            diffusion.denoiser.double()
        out["kdiffusion"] = kdiffusion_rows(run, xk[:args.kd_examples], tols=args.kd_tols, log=log)
    return out


def render(result: dict) -> str:
    lines = ["# Probability-flow ODE likelihood beside the ELBO", "",
             f"Command: `{result['command']}`  ", f"Machine: {result['machine']}, {result['threads']} torch threads; "
             f"{result['date']}. The CPU was shared with other work, so compare times within a row.", ""]
    lines += ["| model | D | examples | ELBO | ODE (trace) | what the ODE number is | NFE | s / example |",
              "|---|---|---|---|---|---|---|---|"]
    for name, m in result["models"].items():
        for kind, rows in m["ode"].items():
            r = rows.get("torchdiffeq")
            what = {"none": "−log2 p_ε(x)/D, continuous data", "uniform": "uniform dequantization, +log2 127.5",
                    "decoder": "decoder bound (x_1 ~ q, trained p(x_0|x_1))"}[kind]
            lines.append(f"| {name} ({m['net']}, step {m['step']}) | {m['num_dims']} | {m['examples']} | "
                         f"{m['elbo']['bpd']:.4f} ± {m['elbo']['se']:.4f} | {r['bpd']:.4f} ± {r['se']:.4f} "
                         f"({m['trace']}) | {what} | {r['nfe_mean']:.0f} | {r['s_per_example']:.3f} |")
        if "iwae" in m:
            i = m["iwae"]
            lines.append(f"| {name}: IWAE K = {i['particles']} | | | {i['bpd']:.4f} ± {i['se']:.4f} | | the importance-"
                         f"weighted bound | | |")
    lines += ["", "## torchdiffeq (dopri5) against diffrax (dopri5, jit-compiled), same weights and options", "",
              "| model | trace | ODE kind | torchdiffeq s | diffrax s | speed-up | diffrax compile s | NFE torch / JAX | "
              "max abs diff log p (nats) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, m in result["models"].items():
        pairs = [(m["trace"], k, rows) for k, rows in m["ode"].items()]
        if "ode_hutchinson" in m:
            pairs.append(("hutchinson", list(m["ode"])[0], m["ode_hutchinson"]))
        for trace, kind, rows in pairs:
            if "diffrax" not in rows:
                continue
            a, b = rows["torchdiffeq"], rows["diffrax"]
            lines.append(f"| {name} | {trace} | {kind} | {a['seconds']:.2f} | {b['seconds']:.2f} | "
                         f"{rows['speedup']:.1f}× | {rows['diffrax_compile_seconds']:.1f} | {a['nfe_mean']:.0f} / "
                         f"{b['nfe_mean']:.0f} | {rows['max_abs_diff_nats']:.2e} |")
    kd = [(name, r) for name, m in result["models"].items() for r in m.get("kdiffusion", [])]
    if kd:
        lines += ["", "## k-diffusion's `log_likelihood` on the same net (Hutchinson, its Rademacher probe fed to ours)",
                  "", "| model | map | tol | k-diffusion bits/dim | ours bits/dim | max abs diff (nats) | NFE k-diff / ours "
                  "| s k-diff / ours |", "|---|---|---|---|---|---|---|---|"]
        for name, r in kd:
            lines.append(f"| {name} | {r['map']} | {r['tol']:g} | {r['kd_bpd']:.4f} | {r['ours_bpd']:.4f} | "
                         f"{r['max_abs_diff_nats']:.2e} | {r['kd_nfe']} / {r['ours_nfe']} | {r['kd_seconds']:.1f} / "
                         f"{r['ours_seconds']:.1f} |")
    if result.get("notes"):
        lines += ["", "## What it says", "", result["notes"]]
    return "\n".join(lines) + "\n"


def quick_runs(tmp: Path) -> dict:
    from ppl_diffusion.train import TrainConfig, train

    runs = {}
    for name, cfg in (("toy", dict(data="eight_gaussians", net="mlp")), ("mlp", dict(data="digits", net="mlp"))):
        config = TrainConfig(**cfg, T=20, steps=5, batch_size=32, warmup_steps=1, checkpoint_every=5, log_every=5)
        train(config, tmp / name, progress=False)
        runs[name] = tmp / name
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--toy-run", default=None)
    p.add_argument("--mlp-run", default=None)
    p.add_argument("--unet-run", default=None)
    p.add_argument("--examples", type=int, default=64, help="test examples of the toy and the MLP (default 64)")
    p.add_argument("--examples-unet", type=int, default=32, help="test examples of the U-Net (default 32)")
    p.add_argument("--batch", type=int, default=64, help="examples per ODE solve (default 64)")
    p.add_argument("--tol", type=float, default=1e-5, help="rtol = atol (default 1e-5)")
    p.add_argument("--iwae-particles", type=int, default=16)
    p.add_argument("--unet-jax", action="store_true", help="also diffrax on the U-Net (compiles for minutes)")
    p.add_argument("--kdiffusion", default="toy,mlp", help="models with the k-diffusion side-by-side")
    p.add_argument("--kd-examples", type=int, default=16)
    p.add_argument("--kd-tols", default="1e-5,1e-6,1e-7")
    p.add_argument("--kd-float64", action="store_true", help="the side-by-side in float64 (default float32)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="fresh T = 20 nets, few examples: a smoke test")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    args.kdiffusion = [s for s in args.kdiffusion.split(",") if s]
    args.kd_tols = [float(s) for s in args.kd_tols.split(",") if s]
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {"toy": args.toy_run, "mlp": args.mlp_run, "unet": args.unet_run}
    if args.quick:
        import tempfile

        runs = quick_runs(Path(tempfile.mkdtemp()))
        args.examples, args.batch, args.kd_examples, args.kd_tols, args.iwae_particles = 4, 4, 2, [1e-4], 2
        args.tol = 1e-4
        try:
            import kdiffusion_peer

            kdiffusion_peer.load()
        except ImportError:
            args.kdiffusion = []
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        p.error("pass at least one of --toy-run, --mlp-run, --unet-run (or --quick)")
    log = print
    result = dict(command="python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
                  machine=cpu_name(), threads=args.threads, date=dt.datetime.now(dt.timezone.utc).isoformat(),
                  tol=args.tol, models={})
    for name, run in runs.items():
        result["models"][name] = evaluate_model(name, run, args, log)
    stem = "ode_quick" if args.quick else "ode"
    previous = out / f"{stem}.json"
    if previous.exists():
        result["notes"] = json.loads(previous.read_text()).get("notes", "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(render(result))
    log(f"wrote {out / (stem + '.md')} and {out / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
