"""What the Pyro formulation costs: an SVI training step and ancestral sampling against plain PyTorch.

(i)  training step, digits U-Net preset, batch 128 of digits, T = 1000:
     ``pyro.infer.SVI(diffusion.model, diffusion.guide, optim, StochasticTimestepELBO()).step(x0)`` with
     ``optim`` = ``pyro.optim.Adam`` (one torch Adam per parameter tensor) and with
     :func:`ppl_diffusion.optim.JointAdam` (one torch Adam for all), each against ``torch.optim.Adam`` on :func:`ppl_diffusion.infer.plain.plain_stochastic_elbo` (the same
     loss from the closed forms; equal to float rounding with the same seed, see
     ``tests/test_plain_reference.py``).
(ii) ancestral sampling of n images: ``diffusion.sample(n)`` (the Pyro model run without data) against a
     plain loop x_{t−1} = μ_θ(x_t, t) + σ_t ε over the same closed forms. Both cost T denoiser calls
     plus a per-step overhead, so their ratio does not depend on T; sampling runs a T = 100 chain
     (``--sample-T``) of the same net so that enough repetitions fit in a few minutes.

The two sides alternate within one run (A, B, A, B, ...) so that drift in the machine's load hits both;
the ratio of medians is reported. Rerun::

    python benchmarks/pyro_overhead.py                 # full: writes benchmarks/results/pyro_overhead.{json,md}
    python benchmarks/pyro_overhead.py --quick         # MLP on 2-D data, seconds; writes *_quick.*
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI

from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule, StochasticTimestepELBO
from ppl_diffusion import closed_forms as cf
from ppl_diffusion.data import load_digits, toy_2d
from ppl_diffusion.infer.plain import plain_stochastic_elbo
from ppl_diffusion.optim import JointAdam
from ppl_diffusion.nets import unet_preset


def make(quick: bool, T: int):
    if quick:
        data = toy_2d("eight_gaussians", n_train=512, n_test=16)
        net = MLPDenoiser(2)
    else:
        data = load_digits()
        net = unet_preset("digits")
    diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=net, event_shape=data.event_shape,
                                  decoder=data.decoder)
    return diffusion, data


@torch.no_grad()
def plain_sample(diffusion, n):
    """Ancestral sampling without Pyro: the model's distributions, drawn by hand."""
    device, dtype = diffusion._device_dtype()
    x = torch.randn((n,) + tuple(diffusion.event_shape), device=device, dtype=dtype)
    for t in range(diffusion.T, 1, -1):
        mean, log_var = diffusion.p_mean_variance(x, torch.full((n,), t, dtype=torch.long))
        x = mean + torch.exp(0.5 * log_var) * torch.randn_like(x)
    mean, log_var = diffusion.p_mean_variance(x, torch.ones(n, dtype=torch.long))
    return diffusion.decoder(mean, log_var).sample()


def alternate(a, b, reps):
    """Time a() and b() alternately, reps times each, after one warm-up call of each."""
    a(), b()
    ta, tb = [], []
    for _ in range(reps):
        for fn, out in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return ta, tb


def summary(name, ta, tb):
    ma, mb = statistics.median(ta), statistics.median(tb)
    pairs = sorted(a / b for a, b in zip(ta, tb))  # each rep's Pyro time over the plain time right after it
    return {"what": name, "pyro_s_median": ma, "plain_s_median": mb, "ratio": ma / mb,
            "pair_ratio_quartiles": [statistics.quantiles(pairs, n=4)[i] for i in (0, 2)] if len(pairs) > 1 else None,
            "pyro_s_mean": statistics.fmean(ta), "plain_s_mean": statistics.fmean(tb), "reps": len(ta)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--step-reps", type=int, default=20)
    p.add_argument("--sample-n", type=int, default=16)
    p.add_argument("--sample-reps", type=int, default=12)
    p.add_argument("--sample-T", type=int, default=100)
    p.add_argument("--sampling-only", action="store_true", help="skip the training-step rows")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.T, args.step_reps, args.sample_reps, args.sample_T = 50, 10, 2, 50
    pyro.set_rng_seed(0)
    diffusion, data = make(args.quick, args.T)
    x = data.train
    gen = torch.Generator().manual_seed(0)

    def batch():
        return x[torch.randint(0, len(x), (args.batch,), generator=gen)]

    opt = torch.optim.Adam(diffusion.denoiser.parameters(), lr=1e-4)

    def plain_step():
        opt.zero_grad()
        (-plain_stochastic_elbo(diffusion, batch()).sum()).backward()
        opt.step()

    rows = []
    optims = () if args.sampling_only else (("pyro.optim.Adam", pyro.optim.Adam({"lr": 1e-4})),
                                            ("JointAdam", JointAdam({"lr": 1e-4})))
    for label, optim in optims:
        svi = SVI(diffusion.model, diffusion.guide, optim, loss=StochasticTimestepELBO())
        rows.append(summary(f"training step, SVI with {label} (batch {args.batch})",
                            *alternate(lambda svi=svi: svi.step(batch()), plain_step, args.step_reps)))
    sampler = GaussianDiffusion(schedule=NoiseSchedule.linear(args.sample_T), denoiser=diffusion.denoiser,
                                event_shape=data.event_shape, decoder=data.decoder)
    rows.append(summary(f"ancestral sampling (n = {args.sample_n}, T = {args.sample_T})",
                        *alternate(lambda: sampler.sample(args.sample_n), lambda: plain_sample(sampler, args.sample_n),
                                   args.sample_reps)))
    machine = f"{os.cpu_count()}-core {platform.machine()} CPU, no GPU; torch {torch.__version__} " \
              f"({torch.get_num_threads()} threads), pyro {pyro.__version__}"
    net = "MLPDenoiser(2) on 8 Gaussians" if args.quick else "unet_preset('digits') on digits"
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(argv or sys.argv[1:])),
              "machine": machine, "net": net, "T": args.T, "load_average": os.getloadavg(), "rows": rows}
    lines = [f"# Pyro's cost against plain PyTorch ({net})", "",
             f"- {result['date']}, `{result['command']}`", f"- {machine}; load average at end {os.getloadavg()}", "",
             "| what | Pyro (median s) | plain (median s) | ratio Pyro / plain | per-rep ratios, quartiles | reps |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        q = r["pair_ratio_quartiles"]
        q = f"{q[0]:.3f} – {q[1]:.3f}" if q else "—"
        lines.append(f"| {r['what']} | {r['pyro_s_median']:.4f} | {r['plain_s_median']:.4f} | {r['ratio']:.3f} | {q} | "
                     f"{r['reps']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "pyro_overhead_quick" if args.quick else "pyro_overhead_sampling" if args.sampling_only else "pyro_overhead"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.md").write_text(text)
    return result


if __name__ == "__main__":
    main()
