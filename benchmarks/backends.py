"""The two backends on one CPU: Pyro/PyTorch against NumPyro/JAX (jit-compiled), same models, same sizes.

(i)   training step of the 2-D MLP model (8 Gaussians, batch 128, T = 1000, stochastic-kl: analytic step
      term, uniform t): what ``ppl-diffusion train`` runs, i.e. :class:`ppl_diffusion.train.PyroTrainer`
      (``differentiable_loss`` + ``backward`` + clipping + Adam + EMA) against
      :class:`ppl_diffusion.numpyro.train.NumPyroTrainer` (one jitted step: ``svi.update`` with optax).
(ii)  the full-chain estimators' gradient, T = 100 and 1000, batch 128: Pyro ``Trace_ELBO`` on (model,
      guide) and ``TraceMeanField_ELBO`` on (model, posterior_guide), against ``jax.jit(jax.grad(...))`` of
      :func:`ppl_diffusion.numpyro.chain.full_chain_elbo` (trajectory by ``lax.scan``, its scores by
      ``lax.map`` under ``jax.checkpoint``; noise drawn inside).
(iii) ancestral sampling of 128 points at T = 1000 (2-D MLP): ``diffusion.sample`` against the jitted
      ``lax.scan`` sampler.
(iv)  the digits U-Net preset, batch 128, T = 1000, stochastic-kl-is: a training step of each trainer, and
      sampling 128 digits with 50 respaced steps.

Each backend runs in its own process (``--worker``), so that the two runtimes' thread pools never meet
(in one process, torch's spinning OpenMP threads slowed JAX ~2× at T = 1000); the processes alternate
(Pyro, NumPyro, Pyro, NumPyro: two rounds, reps pooled). In each, every case is warmed up untimed
(JAX's compile time is reported apart), then timed; the ratio of medians is reported. Threads: torch's
default (one per core) and XLA's default CPU client. Rerun::

    python benchmarks/backends.py            # about 15 minutes; writes benchmarks/results/backends.{json,md}
    python benchmarks/backends.py --quick    # T = 20, few reps, no U-Net: a smoke test (backends_quick.*)
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BATCH = 128
NOTES = """Where the U-Net's time goes (2-core CPU, digits preset, batch 128). The Flax twin computes the PyTorch
net's numbers (max abs error 2e-6) in channels-last layout (one transpose at each end). Measured apart,
forward only: Flax 283 ms, PyTorch 185 ms (1.5×); forward + backward (value_and_grad, eval mode): 1.32 s
against 0.89 s (1.48×, repeat runs 1.42–1.55). XLA's CPU convolution backward costs 3.7× its forward
(PyTorch's oneDNN about 2×); GroupNorm's backward about 2× PyTorch's. Tried, none closing the gap beyond
noise: NCHW convolutions through dimension numbers (1.61×, worse), einsum / dot_general /
jax.nn.dot_product_attention for attention (1.45–1.52×), a hand-written GroupNorm and a custom-VJP one
(slower), highest matmul precision (1.52×), XLA flags (oneDNN 1.44×, XNNPACK 1.35–1.54× across runs,
ynn reduce 1.51×; --xla_cpu_use_thunk_runtime=false is no longer accepted by jax 0.10), im2col and
shifted-matmul convolutions (slower). Dropout is not the cost (trainer step 1147 ms with dropout 0.1,
1154 ms without). jax.checkpoint does not apply to one step (it trades compute for memory; it is what
made (ii) 2× faster, where T steps' activations were kept). The ratio stands as measured: on CPU the
U-Net is PyTorch's case; the MLP models and the full chain are JAX's. (Ad hoc scripts of these
measurements: benchmarks/unet_jax_cpu.py.) No GPU was lent to this task, so there is no GPU table.
"""


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _trainer(backend: str, device: str = "cpu", **config):
    from ppl_diffusion.data import load_dataset
    from ppl_diffusion.train import TrainConfig, make_trainer, resolve_device

    cfg = TrainConfig(batch_size=BATCH, lr=1e-4, warmup_steps=0, steps=1, backend=backend, **config).validate()
    dataset = load_dataset(cfg.data)
    trainer = make_trainer(cfg, dataset, resolve_device(device))  # NumPyro: JAX's own device
    import torch

    g = torch.Generator().manual_seed(0)
    return lambda: trainer.step(torch.randperm(len(dataset.train), generator=g)[:BATCH], cfg.lr)


def _mlp_pair(T: int):
    import torch

    import ppl_diffusion.numpyro as npd
    from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule

    torch.manual_seed(0)
    tnet = MLPDenoiser(2, zero_init=False)
    td = GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=tnet, event_shape=(2,))
    jd = npd.GaussianDiffusion(schedule=td.schedule, denoiser=npd.flax_twin(tnet), event_shape=(2,))
    return td, jd


def case_callables(backend: str, quick: bool):
    """(name, T, reps, make) for every case; ``make()`` returns the callable to time on ``backend``."""
    big = 20 if quick else 1000
    cases = [("(i) train step, 2-D MLP, stochastic-kl", big, 10 if quick else 100,
              lambda: _trainer(backend, data="eight_gaussians", net="mlp", T=big, estimator="stochastic-kl"))]
    for T in ([10] if quick else [100, 1000]):
        reps = 2 if quick else (6 if T == 100 else 2)
        for analytic in (False, True):
            name = "TraceMeanField_ELBO" if analytic else "Trace_ELBO"
            cases.append((f"(ii) full-chain gradient, {name}", T, reps,
                          lambda T=T, a=analytic: _full_chain(backend, T, a)))
    cases.append(("(iii) ancestral sampling, 128 points, 2-D MLP", big, 3 if quick else 5,
                  lambda: _sampling(backend, big)))
    if not quick:
        cases += unet_cases(backend)
    return cases


def unet_cases(backend: str, device: str = "cpu", net: str = "digits"):
    """The (iv) rows, (name, T, reps, make) as in :func:`case_callables`: the digits U-Net's training step at
    batch 128 and 128 samples at 50 respaced steps. ``device`` is the Pyro side's (JAX uses its default device);
    ``net="mlp"`` puts the MLP denoiser in the same rows (benchmarks/gpu.py's ``--quick``)."""
    label = "U-Net" if net == "digits" else f"{net} denoiser"
    return [(f"(iv) train step, digits {label}, stochastic-kl-is", 1000, 8,
             lambda: _trainer(backend, device, data="digits", net=net, T=1000, estimator="stochastic-kl-is")),
            (f"(iv) sampling, 128 digits, 50 respaced steps, {label}", 1000, 2,
             lambda: _unet_sampling(backend, device, net))]


def _full_chain(backend: str, T: int, analytic: bool):
    from ppl_diffusion.data import eight_gaussians

    td, jd = _mlp_pair(T)
    x0 = eight_gaussians(BATCH, seed=0)
    if backend == "pyro":
        from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

        loss_fn = TraceMeanField_ELBO() if analytic else Trace_ELBO()
        guide = td.posterior_guide if analytic else td.guide

        def torch_grad():
            td.denoiser.zero_grad(set_to_none=True)
            loss_fn.differentiable_loss(td.model, guide, x0).backward()

        return torch_grad
    import jax
    import jax.numpy as jnp

    from ppl_diffusion.numpyro.chain import full_chain_elbo
    from ppl_diffusion.numpyro.sampling import params_of

    params, jx = params_of(jd), jnp.asarray(x0.numpy())

    @jax.jit
    def grad(p, key):
        noise = jax.random.normal(key, (T,) + jx.shape)
        return jax.grad(lambda q: -full_chain_elbo(jd, q, jx, noise, analytic=analytic).sum())(p)

    key = {"k": jax.random.PRNGKey(0)}

    def jax_grad():
        key["k"], sub = jax.random.split(key["k"])
        jax.block_until_ready(grad(params, sub))

    return jax_grad


def _sampling(backend: str, T: int):
    td, jd = _mlp_pair(T)
    if backend == "pyro":
        return lambda: td.sample(BATCH)
    import jax

    from ppl_diffusion.numpyro.chain import ancestral_sample
    from ppl_diffusion.numpyro.sampling import params_of

    params = params_of(jd.eval())
    fn = jax.jit(lambda p, k: ancestral_sample(jd, p, k, BATCH))
    return lambda: jax.block_until_ready(fn(params, jax.random.PRNGKey(1)))


def _unet_sampling(backend: str, device: str = "cpu", net: str = "digits"):
    import pyro

    from ppl_diffusion.data import load_dataset
    from ppl_diffusion.sampling import draw_samples
    from ppl_diffusion.train import TrainConfig, build_diffusion

    pyro.set_rng_seed(0)
    cfg = TrainConfig(data="digits", net=net, T=1000, steps=1)
    td = build_diffusion(cfg, load_dataset("digits")).eval()
    for p in td.denoiser.parameters():  # non-zero output: the zero-initialised last layers get weights
        p.data.normal_(0, 0.02)
    if backend == "pyro":
        td = td.to(device)
        return lambda: draw_samples(td, BATCH, steps=50, seed=0)
    from ppl_diffusion.numpyro.train import from_torch

    jd = from_torch(td).eval()
    return lambda: draw_samples(jd, BATCH, steps=50, seed=0)


def worker(backend: str, quick: bool) -> list[dict]:
    """Every case on one backend, in this process: warm-up (first call timed apart), then the reps."""
    import torch

    rows = []
    for name, T, reps, make in case_callables(backend, quick):
        t0 = time.perf_counter()
        fn = make()
        fn()  # the first call compiles (JAX; the trainers compile when built)
        first = time.perf_counter() - t0  # building, compiling and the first call
        timed(fn)  # a second untimed call: allocations settle
        times = [timed(fn) for _ in range(reps)]
        rows.append({"case": name, "T": T, "backend": backend, "times_s": times, "first_call_s": first})
        print(f"  {backend:8s} {name:52s} T={T:5d} median {1e3 * statistics.median(times):9.1f} ms "
              f"(set-up and first call {first:.1f} s)", file=sys.stderr, flush=True)
    return [dict(r, torch_threads=torch.get_num_threads()) for r in rows]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None, help="alternating process pairs (default 2; --quick 1)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--worker", choices=("pyro", "numpyro"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.quick)))
        return {}
    rounds = args.rounds or (1 if args.quick else 2)
    runs = []
    for r in range(rounds):
        for backend in ("pyro", "numpyro"):
            print(f"round {r + 1}/{rounds}: {backend} in its own process", flush=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", backend] + (["--quick"] if args.quick else [])
            done = subprocess.run(cmd, capture_output=True, text=True)
            sys.stdout.write(done.stderr if done.returncode else "".join(
                ln + "\n" for ln in done.stderr.splitlines() if ln.startswith("  ")))
            if done.returncode:
                raise SystemExit(f"the {backend} worker failed (exit {done.returncode})")
            runs.extend(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    for name, T in dict.fromkeys((r["case"], r["T"]) for r in runs):
        times = {b: [t for r in runs if (r["case"], r["T"], r["backend"]) == (name, T, b) for t in r["times_s"]]
                 for b in ("pyro", "numpyro")}
        first = [r["first_call_s"] for r in runs if (r["case"], r["T"], r["backend"]) == (name, T, "numpyro")]
        mp, mn = statistics.median(times["pyro"]), statistics.median(times["numpyro"])
        rows.append({"case": name, "T": T, "pyro_s": mp, "numpyro_s": mn, "speedup": mp / mn,
                     "reps": len(times["pyro"]), "numpyro_first_call_s": statistics.median(first),
                     "pyro_quartiles_s": statistics.quantiles(times["pyro"], n=4) if len(times["pyro"]) > 1 else None,
                     "numpyro_quartiles_s": statistics.quantiles(times["numpyro"], n=4)
                     if len(times["numpyro"]) > 1 else None})
        print(f"{name:52s} T={T:5d}  pyro {1e3 * mp:9.1f} ms  numpyro {1e3 * mn:9.1f} ms  speed-up {mp / mn:6.2f}×",
              flush=True)

    import jax
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.lower().startswith("model name")), cpu)
    except OSError:
        pass
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
            "machine": f"{os.cpu_count()}-core {cpu}, no GPU", "torch": torch.__version__,
            "torch_threads": runs[0]["torch_threads"], "jax": jax.__version__, "jax_devices": str(jax.devices()),
            "batch": BATCH, "rounds": rounds}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "backends_quick" if args.quick else "backends"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# Pyro/PyTorch against NumPyro/JAX on one CPU", "", f"- Command: `{meta['command']}`",
             f"- Machine: {meta['machine']}; torch {meta['torch']} ({meta['torch_threads']} threads), jax "
             f"{meta['jax']} ({meta['jax_devices']}); {meta['date']}",
             f"- Each backend in its own process, {rounds} alternating round(s), reps pooled; ratio of medians.", "",
             "| case | T | Pyro (ms, median) | NumPyro jit (ms, median) | speed-up | NumPyro set-up + compile (s) | reps |",
             "|:---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['T']} | {1e3 * r['pyro_s']:.1f} | {1e3 * r['numpyro_s']:.1f} | "
                     f"{r['speedup']:.2f}× | {r['numpyro_first_call_s']:.1f} | {r['reps']} |")
    if not args.quick:
        lines += ["", NOTES.strip()]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
