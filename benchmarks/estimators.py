"""Cost and variance of the diffusion ELBO estimators at a fixed θ.

For each T (default 100 and 1000) and each estimator

    (a) trace             Trace_ELBO on (model, guide): one forward trajectory, Monte Carlo over the chain
    (b) meanfield         TraceMeanField_ELBO on (model, posterior_guide): one trajectory, analytic KL per step
    (c) stochastic-kl     StochasticTimestepELBO, one uniform t per example, analytic step term
        stochastic-mc     ... Monte-Carlo step term
        stochastic-kl-is  ... t importance-sampled (improved DDPM), analytic step term
        stochastic-mc-is  ... importance-sampled t, Monte-Carlo step term
    (d) bound c=1         variational_bound: all T + 1 terms, one step per denoiser call
        bound c=T/10      ... T/10 steps per denoiser call (the batch tiled)

on one batch of 128 two-dimensional examples (8-component Gaussian mixture on a circle of radius 2,
std 0.1, scaled by 1/2; seeded) and an MLPDenoiser(2, zero_init=False) with seeded random weights
(so ε̂ ≠ 0), it measures

* the mean wall time of one loss estimate (``.loss``, or ``variational_bound`` under ``torch.no_grad``);
* the mean wall time of one gradient (``differentiable_loss`` + ``backward``; grads cleared between);
* the mean ELBO per example (nats), the standard deviation across independent replicates of the
  per-example ELBO estimate ``-loss / 128``, and the standard error of the mean;
* the gradient of the per-example loss ``loss / 128`` with respect to θ over independent replicates:
  total variance tr Cov = Σ over parameter components of the variance across replicates, and the
  norm of the mean gradient;
* efficiency 1 / (variance × seconds per estimate) for the ELBO and for the gradient, and the ratio
  of each variance to that of stochastic-kl at the same T.

The ELBO statistics pool the loss replicates and the loss values of the gradient replicates (both
are independent draws of the same estimator at the same θ). For the importance-sampled rows the
sampler is first warmed up (``differentiable_loss`` called, untimed, until every t has its 10
recorded losses), so their t is drawn non-uniformly; ``.loss`` does not update the sampler, the
gradient replicates do (as in training). Every call is timed with ``time.perf_counter`` after one
untimed warm-up call; ``torch.get_num_threads()`` is left at its default unless ``--threads`` is
given, and reported either way. On a small shared machine pass ``--threads 1``: with torch's default
of one thread per core, another busy process makes the threads wait on each other and the timings
of this script grew up to 80-fold on 2 cores. The MLP is small: in a two-thread probe on the same
machine, one thread was as fast or faster for every row.

Rerun (from the repository root)::

    python benchmarks/estimators.py --threads 1         # full run: T = 100 and 1000 (about 11 min on 2 cores)
    python benchmarks/estimators.py --quick             # smoke test: T = 10, few replicates, 1 thread (< 30 s)
    python benchmarks/estimators.py --T 100 --reps 500 --full-reps 50 --out /tmp/bench

Results go to ``<out>/estimators.json`` and ``<out>/estimators.md`` (default ``benchmarks/results``);
``--quick`` writes ``estimators_quick.*`` so that it never overwrites a full run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere, without installing the package
    sys.path.insert(0, str(REPO))

import pyro  # noqa: E402

from ppl_diffusion import (  # noqa: E402
    GaussianDiffusion, MLPDenoiser, NoiseSchedule, make_estimator, variational_bound,
)

BATCH = 128
PYRO_ESTIMATORS = ["trace", "meanfield", "stochastic-kl", "stochastic-mc", "stochastic-kl-is", "stochastic-mc-is"]
LABELS = {"trace": "(a)", "meanfield": "(b)", "stochastic-kl": "(c)", "stochastic-mc": "(c)",
          "stochastic-kl-is": "(c)", "stochastic-mc-is": "(c)", "bound": "(d)"}
REFERENCE = "stochastic-kl"


# ---------------------------------------------------------------------------------------- setup
def make_data(n: int = BATCH, seed: int = 0) -> torch.Tensor:
    """n draws of an 8-component Gaussian mixture on a circle of radius 2 (std 0.1), scaled by 1/2."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    angle = 2 * math.pi * k.double() / 8
    centres = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    x = centres + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return (x / 2).float()


def make_diffusion(T: int, seed: int = 0) -> GaussianDiffusion:
    """The model at the fixed θ: the same seeded random MLP weights for every estimator and T."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    net = MLPDenoiser(2, zero_init=False)
    return GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=net, event_shape=(2,))


@dataclass
class Method:
    """One row's estimator: ``loss_fn(x0) -> float`` (−ELBO summed over the batch, no grad) and
    ``grad_loss_fn(x0) -> Tensor`` (the same, differentiable in θ)."""

    name: str
    loss_fn: object
    grad_loss_fn: object
    setup_fn: object = None  # untimed preparation (importance-sampler warm-up); returns a note
    full_chain: bool = False


def pyro_method(name: str, diffusion: GaussianDiffusion, x0: torch.Tensor) -> Method:
    est = make_estimator(name)
    guide = est.guide(diffusion)

    def loss_fn(x):
        with torch.no_grad():
            return est.loss.loss(diffusion.model, guide, x)

    def grad_loss_fn(x):
        return est.loss.differentiable_loss(diffusion.model, guide, x)

    setup_fn = None
    if name.endswith("-is"):
        def setup_fn(x, max_calls: int = 100_000):
            calls = 0
            # The sampler is created on first use; each call records B step losses (uniform t until warm).
            while calls == 0 or not est.loss.sampler.warmed_up:
                with torch.no_grad():
                    est.loss.differentiable_loss(diffusion.model, guide, x)
                calls += 1
                if calls >= max_calls:
                    raise RuntimeError(f"{name}: importance sampler not warmed up after {calls} calls")
            return f"importance sampler warmed up by {calls} untimed differentiable_loss calls"

    return Method(name, loss_fn, grad_loss_fn, setup_fn, full_chain=name in ("trace", "meanfield"))


def bound_method(c: int, diffusion: GaussianDiffusion) -> Method:
    def loss_fn(x):
        with torch.no_grad():
            return variational_bound(diffusion, x, timesteps_per_batch=c).nll.sum().item()

    def grad_loss_fn(x):
        return variational_bound(diffusion, x, timesteps_per_batch=c).nll.sum()

    return Method(f"bound c={c}", loss_fn, grad_loss_fn, full_chain=True)


# ---------------------------------------------------------------------------------------- measuring
@dataclass
class Row:
    """The measurements of one (estimator, T). ELBO and gradients are per example (batch-mean)."""

    T: int
    estimator: str
    family: str
    n_loss: int  # timed .loss replicates
    n_grad: int  # timed gradient replicates
    n_elbo: int  # ELBO estimates pooled for the ELBO statistics (n_loss + n_grad)
    loss_time_s: float  # mean seconds per loss estimate
    grad_time_s: float  # mean seconds per gradient
    loss_time_median_s: float  # median seconds per loss estimate (robust to load from other processes)
    grad_time_median_s: float
    elbo_mean: float  # nats per example
    elbo_std: float  # std across replicates of the per-example ELBO estimate
    elbo_sem: float  # elbo_std / sqrt(n_elbo)
    grad_total_var: float  # Σ_i Var[g_i] across replicates, g = ∇θ (loss / B)
    grad_mean_norm: float  # ‖mean gradient‖
    elbo_eff: float = float("nan")  # 1 / (elbo_std² × loss_time_s)
    grad_eff: float = float("nan")  # 1 / (grad_total_var × grad_time_s)
    elbo_var_ratio: float = float("nan")  # elbo_std² / that of stochastic-kl at this T
    grad_var_ratio: float = float("nan")  # grad_total_var / that of stochastic-kl at this T
    z_vs_pooled: float = float("nan")  # (mean − inverse-variance pooled mean) / its std
    cpu_per_wall: float = float("nan")  # process CPU s / wall s over the timed calls
    grad_dev_ratio: float = float("nan")  # ‖ḡ − pooled ḡ‖² / its expectation if all unbiased (≈ 1)
    loadavg_1min: float = float("nan")  # os.getloadavg()[0] when the row finished (> ~2: machine shared)
    notes: list[str] = field(default_factory=list)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _mean_var(xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance along dim 0 (float64)."""
    return xs.mean(0), xs.var(0, unbiased=True) if xs.shape[0] > 1 else torch.full_like(xs[0], float("nan"))


def measure(method: Method, diffusion: GaussianDiffusion, x0: torch.Tensor, T: int,
            n_loss: int, n_grad: int, seed: int) -> tuple[Row, torch.Tensor]:
    """Measure one row; return it and the mean gradient (float64, flattened over θ)."""
    params = [p for p in diffusion.denoiser.parameters() if p.requires_grad]
    batch = x0.shape[0]
    pyro.set_rng_seed(seed)
    notes = []
    if method.setup_fn is not None:
        notes.append(method.setup_fn(x0))

    def one_grad():
        for p in params:
            p.grad = None
        loss = method.grad_loss_fn(x0)
        loss.backward()
        return loss.item()

    # Untimed warm-up of each path (allocator, lazy init), then the timed replicates.
    method.loss_fn(x0)
    one_grad()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    elbos, loss_times = [], []
    for _ in range(n_loss):
        loss, dt = _timed(lambda: method.loss_fn(x0))
        elbos.append(-loss / batch)
        loss_times.append(dt)

    grads, grad_times = [], []
    for _ in range(n_grad):
        loss, dt = _timed(one_grad)
        grad_times.append(dt)
        elbos.append(-loss / batch)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        grads.append(flat.double() / batch)  # gradient of the per-example loss
    for p in params:
        p.grad = None
    # Process CPU seconds per wall second over the timed calls: ≈ threads in use when the machine is
    # otherwise idle; clearly below that when other processes took the cores.
    cpu_per_wall = (time.process_time() - cpu0) / (time.perf_counter() - wall0)

    e = torch.tensor(elbos, dtype=torch.float64)
    e_mean, e_var = _mean_var(e)
    g_mean, g_var = _mean_var(torch.stack(grads))
    elbo_std = math.sqrt(e_var.item())
    return Row(
        T=T, estimator=method.name, family=LABELS[method.name.split(" ")[0]],
        n_loss=n_loss, n_grad=n_grad, n_elbo=len(elbos),
        loss_time_s=sum(loss_times) / len(loss_times), grad_time_s=sum(grad_times) / len(grad_times),
        loss_time_median_s=statistics.median(loss_times), grad_time_median_s=statistics.median(grad_times),
        elbo_mean=e_mean.item(), elbo_std=elbo_std, elbo_sem=elbo_std / math.sqrt(len(elbos)),
        grad_total_var=g_var.sum().item(), grad_mean_norm=g_mean.norm().item(), cpu_per_wall=cpu_per_wall,
        notes=notes,
    ), g_mean


def add_derived(rows: list[Row], mean_grads: list[torch.Tensor]) -> dict:
    """Efficiencies, variance ratios to stochastic-kl, and the agreement checks of the means at this T."""
    ref = next((r for r in rows if r.estimator == REFERENCE), None)
    for r in rows:
        var = r.elbo_std ** 2
        r.elbo_eff = 1.0 / (var * r.loss_time_s) if var > 0 else float("inf")
        r.grad_eff = 1.0 / (r.grad_total_var * r.grad_time_s) if r.grad_total_var > 0 else float("inf")
        if ref is not None:
            r.elbo_var_ratio = var / ref.elbo_std ** 2
            r.grad_var_ratio = r.grad_total_var / ref.grad_total_var
    # All estimators are unbiased for the same ELBO: compare each mean to the inverse-variance pooled
    # mean. Var(m_i − m̄) = sem_i² − sem_pooled² for independent means.
    w = [1.0 / r.elbo_sem ** 2 for r in rows]
    pooled = sum(wi * r.elbo_mean for wi, r in zip(w, rows)) / sum(w)
    pooled_sem = math.sqrt(1.0 / sum(w))
    chi2 = 0.0
    for r in rows:
        r.z_vs_pooled = (r.elbo_mean - pooled) / math.sqrt(max(r.elbo_sem ** 2 - pooled_sem ** 2, 1e-300))
        chi2 += ((r.elbo_mean - pooled) / r.elbo_sem) ** 2
    dof = len(rows) - 1
    check = {"T": rows[0].T, "pooled_elbo": pooled, "pooled_sem": pooled_sem, "chi2": chi2, "dof": dof,
             "max_abs_z": max(abs(r.z_vs_pooled) for r in rows)}
    try:
        from scipy.stats import chi2 as _chi2

        check["p_value"] = float(_chi2.sf(chi2, dof))
    except ImportError:
        check["p_value"] = None
    check["agree"] = check["max_abs_z"] < 3.5 and (check["p_value"] is None or check["p_value"] > 1e-3)
    # The same for the mean gradients: with w_i = n_i / tr Cov_i and ḡ the w-weighted pooled mean,
    # E‖ḡ_i − ḡ‖² = 1/w_i − 1/Σw exactly (only traces enter), so the ratio below is about 1 for unbiased
    # gradients (spread like χ²_k / k, k the effective number of noisy directions, which may be small).
    wg = [r.n_grad / r.grad_total_var for r in rows]
    pooled_g = sum(wi * g for wi, g in zip(wg, mean_grads)) / sum(wg)
    for r, wi, g in zip(rows, wg, mean_grads):
        expected = 1.0 / wi - 1.0 / sum(wg)
        r.grad_dev_ratio = (g - pooled_g).pow(2).sum().item() / expected if expected > 0 else float("nan")
    check["max_grad_dev_ratio"] = max(r.grad_dev_ratio for r in rows)
    return check


# ---------------------------------------------------------------------------------------- reporting
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info() -> dict:
    cores = os.cpu_count()
    gpu = torch.cuda.is_available()
    return {
        "machine": f"{cores}-core {platform.machine()} CPU, " + (f"GPU {torch.cuda.get_device_name(0)} (unused)"
                                                                  if gpu else "no GPU"),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "platform_machine": platform.machine(),
        "cpu_count": cores,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "torch_num_threads": torch.get_num_threads(),
    }


def _fmt(x: float, spec: str) -> str:
    return "nan" if x != x else format(x, spec)


ELBO_COLUMNS = [
    ("T", lambda r: str(r.T)), ("estimator", lambda r: f"{r.family} {r.estimator}"),
    ("n", lambda r: str(r.n_elbo)),
    ("ms / loss", lambda r: _fmt(1e3 * r.loss_time_s, ".1f")),
    ("(median)", lambda r: _fmt(1e3 * r.loss_time_median_s, ".1f")),
    ("ELBO (nats/ex)", lambda r: _fmt(r.elbo_mean, ".3f")),
    ("SE", lambda r: _fmt(r.elbo_sem, ".3f")),
    ("std", lambda r: _fmt(r.elbo_std, ".3f")),
    ("var / var(stoch-kl)", lambda r: _fmt(r.elbo_var_ratio, ".3g")),
    ("eff 1/(var·s)", lambda r: _fmt(r.elbo_eff, ".3g")),
    ("z vs pooled", lambda r: _fmt(r.z_vs_pooled, "+.2f")),
    ("CPU/wall", lambda r: _fmt(r.cpu_per_wall, ".2f")),
]
GRAD_COLUMNS = [
    ("T", lambda r: str(r.T)), ("estimator", lambda r: f"{r.family} {r.estimator}"),
    ("n", lambda r: str(r.n_grad)),
    ("ms / grad", lambda r: _fmt(1e3 * r.grad_time_s, ".1f")),
    ("(median)", lambda r: _fmt(1e3 * r.grad_time_median_s, ".1f")),
    ("tr Cov(grad)", lambda r: _fmt(r.grad_total_var, ".4g")),
    ("sqrt tr Cov", lambda r: _fmt(math.sqrt(r.grad_total_var), ".4g")),
    ("‖mean grad‖", lambda r: _fmt(r.grad_mean_norm, ".4g")),
    ("var / var(stoch-kl)", lambda r: _fmt(r.grad_var_ratio, ".3g")),
    ("eff 1/(trCov·s)", lambda r: _fmt(r.grad_eff, ".3g")),
    ("‖ḡ−ḡ_pool‖²/E", lambda r: _fmt(r.grad_dev_ratio, ".2f")),
]


def markdown_table(rows: list[Row], columns) -> str:
    head = "| " + " | ".join(c for c, _ in columns) + " |"
    rule = "|" + "|".join("---:" if c not in ("estimator",) else ":---" for c, _ in columns) + "|"
    body = ["| " + " | ".join(f(r) for _, f in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def text_table(rows: list[Row], columns) -> str:
    cells = [[c for c, _ in columns]] + [[f(r) for _, f in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for k, row in enumerate(cells):
        lines.append("  ".join(s.ljust(w) if columns[i][0] == "estimator" else s.rjust(w)
                               for i, (s, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def check_lines(checks: list[dict]) -> list[str]:
    out = []
    for c in checks:
        p = "n/a" if c["p_value"] is None else f"{c['p_value']:.3g}"
        verdict = "agree" if c["agree"] else "DISAGREE"
        out.append(f"T={c['T']}: pooled ELBO {c['pooled_elbo']:.3f} ± {c['pooled_sem']:.3f} nats/ex; "
                   f"χ² = {c['chi2']:.2f} on {c['dof']} dof (p = {p}), max |z| = {c['max_abs_z']:.2f} → "
                   f"means {verdict}; mean gradients: max ‖ḡ_i − ḡ_pool‖² / E = {c['max_grad_dev_ratio']:.2f} "
                   "(≈ 1 if unbiased)")
    return out


def _load(avg) -> str:
    return ", ".join(f"{x:.2f}" for x in avg)


def write_markdown(path: Path, meta: dict, rows: list[Row], checks: list[dict]) -> None:
    m = meta["machine"]
    notes = [f"T={r.T} {r.estimator}: {n}" for r in rows for n in r.notes]
    lines = [
        "# ELBO estimators: time and variance at a fixed θ",
        "",
        f"- Date: {meta['date']}",
        f"- Command: `{meta['command']}`",
        f"- Machine: {m['machine']} (CPU model {m.get('cpu_model', '?')!r}, platform.processor() "
        f"{m['processor']!r}, {m['platform_machine']}, "
        f"os.cpu_count() = {m['cpu_count']}); torch {m['torch']} with torch.get_num_threads() = "
        f"{m['torch_num_threads']} (torch's default here: {meta['torch_default_num_threads']}), pyro {m['pyro']}, "
        f"Python {m['python']}",
        f"- Setup: batch {meta['batch']} of 2-D data (8-Gaussian ring, radius 2, std 0.1, scaled by 1/2, "
        f"seed {meta['seed']}); MLPDenoiser(2, zero_init=False) with seeded random θ (same θ for every row); "
        "linear β schedule; Gaussian decoder; σ_t² = β_t.",
        f"- Total wall time of the run: {meta['wall_time_s']:.0f} s; load average (1, 5, 15 min) at start "
        f"{_load(meta['loadavg_start'])}, at end {_load(meta['loadavg_end'])} (other processes on the "
        "machine slow the timings)",
        "",
        "## ELBO estimate",
        "",
        "Time per `.loss` (or `variational_bound` under `torch.no_grad`): mean, and median in brackets; ELBO per example (nats), its std "
        "across independent replicates of the batch-mean estimate `-loss/128`, and the standard error. "
        "`n` pools the `.loss` replicates and the loss values of the gradient replicates. "
        "Efficiency = 1 / (variance × seconds per estimate); the ratio is to stochastic-kl at the same T. "
        "`z vs pooled`: distance of the mean from the inverse-variance pooled mean of all rows at that T, in "
        "standard errors. `CPU/wall`: process CPU seconds per wall second over the row's timed calls "
        "(about the thread count on an idle machine, lower when other processes held the cores).",
        "",
        markdown_table(rows, ELBO_COLUMNS),
        "",
        "## Gradient",
        "",
        "Time per `differentiable_loss` + `backward()` (grads cleared between): mean and median. Gradient g = ∇θ(loss/128) "
        "over the MLP's parameters; tr Cov = Σ over components of the variance across replicates. "
        "`‖ḡ−ḡ_pool‖²/E`: squared distance of the row's mean gradient from the (n/tr Cov)-weighted pooled "
        "mean gradient of all rows at that T, divided by its expectation when every row is unbiased "
        "(about 1; it spreads like χ²_k/k with k possibly small, so values up to ~5 are unremarkable).",
        "",
        markdown_table(rows, GRAD_COLUMNS),
        "",
        "## Agreement of the means",
        "",
        "All rows are unbiased estimators of the same ELBO at the same θ, so their means should agree "
        "within a few standard errors.",
        "",
        *[f"- {line}" for line in check_lines(checks)],
        "",
        "## Notes",
        "",
        "- `-is` rows: improved DDPM's importance-sampled t. The sampler was warmed up first (untimed) "
        "until every t had its 10 recorded losses, so t is drawn non-uniformly in every timed call; "
        "`.loss` does not update the sampler, the gradient replicates do.",
        *[f"- {n}" for n in notes],
        "",
    ]
    path.write_text("\n".join(lines))


# ---------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, nargs="+", default=[100, 1000], help="chain lengths (default 100 1000)")
    p.add_argument("--reps", type=int, default=1000,
                   help="replicates (of .loss and of the gradient, each) for the stochastic estimators "
                        "(default 1000: their ELBO estimates are heavy-tailed at T = 1000)")
    p.add_argument("--full-reps", type=int, default=None,
                   help="replicates (each) for the full-chain rows (a), (b), (d); default 30 for T <= 100, "
                        "else 8")
    p.add_argument("--bound-c", type=int, default=None,
                   help="timesteps_per_batch of the second bound row (default T // 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) before measuring (default: leave torch's default)")
    p.add_argument("--quick", action="store_true", help="smoke test: T = 10, 10 and 4 replicates, one thread unless --threads (< 30 s)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output directory")
    args = p.parse_args(argv)
    if args.quick:
        args.T, args.reps, args.full_reps = [10], 10, 4
        if args.threads is None:  # a smoke test: keep it fast even when the machine is shared
            args.threads = 1
    return args


def full_reps_for(T: int, args) -> int:
    if args.full_reps is not None:
        return args.full_reps
    return 30 if T <= 100 else 8


def run(args) -> tuple[dict, list[Row], list[dict]]:
    x0 = make_data(BATCH, seed=args.seed)
    rows, checks = [], []
    for T in args.T:
        diffusion = make_diffusion(T, seed=args.seed)
        c = args.bound_c or max(1, T // 10)
        methods = [pyro_method(name, diffusion, x0) for name in PYRO_ESTIMATORS]
        methods += [bound_method(1, diffusion)] + ([bound_method(c, diffusion)] if c != 1 else [])
        t_rows, t_grads = [], []
        for i, method in enumerate(methods):
            n = full_reps_for(T, args) if method.full_chain else args.reps
            t0 = time.perf_counter()
            row, mean_grad = measure(method, diffusion, x0, T, n_loss=n, n_grad=n, seed=args.seed + 1000 * T + i)
            print(f"  T={T:<5d} {method.name:<18s} n={n:<4d} ELBO {row.elbo_mean:9.3f} ± {row.elbo_sem:.3f}  "
                  f"{1e3 * row.loss_time_s:9.1f} ms/loss {1e3 * row.grad_time_s:9.1f} ms/grad  "
                  f"CPU/wall {row.cpu_per_wall:.2f} load {os.getloadavg()[0]:.2f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            row.loadavg_1min = os.getloadavg()[0]
            t_rows.append(row)
            t_grads.append(mean_grad)
        checks.append(add_derived(t_rows, t_grads))
        rows += t_rows
    return rows, checks


def main(argv=None) -> None:
    args = parse_args(argv)
    default_threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in ([os.path.relpath(__file__, Path.cwd())]
                                                            + list(sys.argv[1:] if argv is None else argv)))
    meta = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command,
            "cwd": str(Path.cwd()), "machine": machine_info(), "batch": BATCH, "seed": args.seed,
            "T": args.T, "reps": args.reps, "torch_default_num_threads": default_threads, "full_reps": {T: full_reps_for(T, args) for T in args.T}}
    print(f"{meta['machine']['machine']}; torch {meta['machine']['torch']}, "
          f"{meta['machine']['torch_num_threads']} threads; {command}", flush=True)
    meta["loadavg_start"] = os.getloadavg()
    t0 = time.perf_counter()
    rows, checks = run(args)
    meta["wall_time_s"] = time.perf_counter() - t0
    meta["loadavg_end"] = os.getloadavg()

    print("\nELBO estimate (per example, nats)\n" + text_table(rows, ELBO_COLUMNS))
    print("\nGradient of loss/128 w.r.t. θ\n" + text_table(rows, GRAD_COLUMNS))
    print("\nAgreement of the means (all unbiased for the same ELBO):")
    for line in check_lines(checks):
        print("  " + line)
    print("  (-is rows: importance sampler warmed up before timing; see notes in the markdown)")

    args.out.mkdir(parents=True, exist_ok=True)
    stem = "estimators_quick" if args.quick else "estimators"
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"meta": meta, "rows": [asdict(r) for r in rows], "agreement": checks}, indent=2, allow_nan=True) + "\n")
    write_markdown(args.out / f"{stem}.md", meta, rows, checks)
    print(f"\nload average at start {_load(meta['loadavg_start'])}, at end {_load(meta['loadavg_end'])}")
    print(f"wall time {meta['wall_time_s']:.0f} s; wrote {args.out / stem}.json and .md")


if __name__ == "__main__":
    main()
