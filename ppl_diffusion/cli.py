"""The ``ppl-diffusion`` command (also ``python -m ppl_diffusion``): train, evaluate, sample, compare, import, export,
demo.

A thin argparse layer: each subcommand parses its flags, calls one function of the Python API
(:func:`ppl_diffusion.train.train`, :func:`ppl_diffusion.evaluate.evaluate_run`,
:func:`ppl_diffusion.likelihood.evaluate_ode_run`, :func:`ppl_diffusion.sampling.sample_run`,
:func:`ppl_diffusion.study.run_study`, :data:`ppl_diffusion.interop.IMPORTERS` / ``EXPORTERS``) and prints what it
returned. Bad input exits with status 2 and one line
``ppl-diffusion: error: <what and the fix>`` on stderr; a diverged run exits with 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from . import distributed
from .checkpoint import CheckpointError
from .distributed import DIST_BACKENDS
from .nets import NetWarning
from .nets.remat import CHECKPOINTING
from .precision import PrecisionWarning
from .train import METRICS_FORMATS, BudgetWarning, TrainConfig, TrainingDiverged, train

PROG = "ppl-diffusion"
DEFAULTS = TrainConfig()  # argparse defaults come from the dataclass, never restated here

# The demo: 8x8 digits on 2 CPU cores, a fixed number of steps (so the same printout on any machine, up to float
# rounding). Its net and settings live here alone. benchmarks/demo_recipe.py measured the candidates
# (benchmarks/results/demo_recipe.md): this U-Net (the digits preset at a quarter of its width, 272k parameters)
# scored 4.07 EMA bits/dim and digits_fd 9.1 after these 2,000 steps (today's MLP demo: 5.06 and 31.7); T = 200
# because the full bound on the 360 test digits and 1000 samples for digits_fd cost T network calls each (T = 1000
# would take longer than the training); the held-out figure still fell at step 2000, so the best is the last.
# The U-Net the size rule picks for 8x8 images (the digits preset's levels, attention and dropout) at 16 channels.
DEMO_NET = dict(net="auto", net_config=dict(model_channels=16))
DEMO_CONFIG = dict(data="digits", **DEMO_NET, T=200, estimator="stochastic-kl-is", batch_size=64, lr=1e-3,
                   warmup_steps=100, ema_decay=0.998, steps=2000, checkpoint_every=400, val_examples=128)
DEMO_EVAL = dict(max_examples=360, fd_samples=1000, n=64)  # the whole 360-image test split
QUICK_CONFIG = dict(DEMO_CONFIG, T=20, steps=20, warmup_steps=5, ema_decay=0.85, checkpoint_every=10, log_every=5,
                    val_examples=32)
QUICK_EVAL = dict(max_examples=16, fd_samples=0, n=16)


#: ``train --T 0``'s estimator when none is given: low-discrepancy times, VDM's choice (docs/variational.md).
CONTINUOUS_DEFAULT = "continuous-ld"

_format_warning = warnings.formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """PrecisionWarning (bf16 emulated), NetWarning (e.g. an MLP narrower than the data) and BudgetWarning (a
    warm-up or EMA longer than the run) as one line ``ppl-diffusion: warning: ...``; other warnings as Python does."""
    if issubclass(category, (PrecisionWarning, NetWarning, BudgetWarning)):
        return f"{PROG}: warning: {message}\n"
    return _format_warning(message, category, filename, lineno, line)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (exit status 2) instead of usage + error."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _add_backend_flag(p: argparse.ArgumentParser, note: str) -> None:
    p.add_argument("--backend", default="pyro", choices=("pyro", "numpyro"),
                   help=f"pyro (PyTorch) or numpyro (JAX, jit-compiled; needs the jax extra); {note} (default pyro)")


def _add_dist_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dist-backend", default="auto", choices=DIST_BACKENDS,
                   help="under torchrun: the torch.distributed backend, gloo (CPU) or nccl (GPUs) (default auto: "
                        "nccl on CUDA, else gloo)")


def _add_precision_flag(p: argparse.ArgumentParser, default: str, note: str) -> None:
    p.add_argument("--precision", default=default,
                   help=f"the denoiser's arithmetic: fp32, or bf16 (bfloat16 autocast of the network call only; fast "
                        f"on GPUs and on CPUs with AVX-512-BF16 / AMX); {note} (default {default})")


def _add_memory_flags(p: argparse.ArgumentParser, microbatch: bool = True) -> None:
    p.add_argument("--checkpoint-activations", nargs="?", const="steps", default="none", choices=CHECKPOINTING,
                   metavar="{none,steps,blocks}",
                   help="recompute activations in the backward pass instead of storing them (memory for time; the "
                        "numbers do not change): steps (also the bare flag) each full-chain step's net call "
                        "(trace, meanfield, iwae), blocks also each block of a U-Net (default none)")
    if microbatch:
        p.add_argument("--microbatch", type=int, default=None, metavar="M",
                       help="score each process's batch M examples at a time, their gradients summed before one "
                            "optimizer step (the same step to float rounding; M must divide the per-process batch)")


def _none_or_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _add_threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads: torch's, and XLA's thread pool with --backend numpyro (default: one per core; "
                        "on a busy machine 1 can be much faster). Float rounding may differ with N; the number is "
                        "recorded in checkpoints and eval JSON")


def set_threads(threads: int) -> None:
    """Compute on ``threads`` CPU threads: ``torch.set_num_threads(threads)`` and ``PJRT_NPROC=threads``, the size of
    XLA's CPU thread pool, which JAX reads once, when its CPU backend starts: :func:`main` calls this first, before
    any JAX computation (later in a process that has run JAX it changes torch's threads only). XLA_FLAGS has no
    thread count, and ``--xla_cpu_multi_thread_eigen=false`` leaves today's XLA CPU runtime multi-threaded.
    A one-line ``ValueError`` for ``threads < 1``."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads = {threads!r}; pass a positive number of threads (--threads N)")
    import torch

    torch.set_num_threads(threads)
    os.environ["PJRT_NPROC"] = str(threads)


# ---------------------------------------------------------------------------------------- train
def _add_train_flags(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument("--data", default=d.data, help=f"data set name (default {d.data}); see ppl_diffusion.data.DATASETS")
    p.add_argument("--data-root", default=d.data_root,
                   help="folder of the data files (mnist, cifar10, image_folder); stored absolute, so evaluate and "
                        "compare find it from any folder (on --resume: where the data is now)")
    p.add_argument("--estimator", default=None, help=f"ELBO estimator (default {d.estimator}; with --T 0 "
                   f"{CONTINUOUS_DEFAULT}): trace, meanfield, stochastic-kl, stochastic-mc, stochastic-kl-is, "
                   "stochastic-mc-is, stochastic-kl-ld, stochastic-mc-ld, hybrid (with --variance learned); with --T 0: "
                   "continuous, continuous-ld (low-discrepancy t), continuous-is (importance-sampled t)")
    p.add_argument("--schedule", default=d.schedule,
                   help=f"forward process: linear or cosine (noise schedules of T steps), or a γ schedule (VDM): "
                        "fixed-linear, learned-scalar (learned endpoints), learned-net (VDM's monotone net), "
                        f"interpolated-linear / interpolated-cosine (that schedule's γ at its steps) (default {d.schedule})")
    p.add_argument("--T", type=_steps, default=d.T,
                   help=f"diffusion steps (default {d.T}); 0 (or inf) with a γ schedule: continuous time, T = ∞")
    g = p.add_argument_group("γ schedules (docs/variational.md; each refused with a noise schedule)")
    g.add_argument("--gamma-min", type=float, default=d.gamma_min, metavar="G0",
                   help="γ_0 = log(σ²/α²) at t = 0: fixed, or where a learned one starts (default -13.3, VDM's)")
    g.add_argument("--gamma-max", type=float, default=d.gamma_max, metavar="G1",
                   help="γ_1 at t = 1 (default 5.0, VDM's); the net's γ label is rescaled over [G0, G1]")
    g.add_argument("--time-input", default=d.time_input,
                   help="what the net is conditioned on: gamma (γ(t) rescaled; the default, and needed at T = 0) or "
                        "step (the step label, finite T)")
    g.add_argument("--schedule-objective", default=d.schedule_objective,
                   help="with --T 0: what trains learned-net's interior, variance (the estimate's variance; its "
                        "endpoints by the ELBO: the default) or elbo (default: variance for learned-net, else elbo)")
    p.add_argument("--variance", default=d.variance,
                   help=f"reverse variance: beta, posterior or learned (improved DDPM) (default {d.variance})")
    p.add_argument("--decoder", default=d.decoder, metavar="discretized|vdm-categorical",
                   help="p(x_0|x_1) of 8-bit data: discretized (DDPM's exact discretized Gaussian at the denoiser's "
                        "x̂_0, one denoiser call) or vdm-categorical (VDM's categorical over the 256 values from "
                        "x_1/α_1, no call); refused on continuous data, which the Gaussian density scores (default: "
                        "discretized)")
    p.add_argument("--prior", default=d.prior, help=f"p(x_T): normal, gaussian (learned mean and scale), student-t, "
                   f"student-t-learned-df, mixture, flow (default {d.prior}); see ppl_diffusion.priors")
    p.add_argument("--net", default=d.net,
                   help="denoiser: auto (a U-Net sized for images, the MLP for vectors), unet, a U-Net preset (digits, "
                        "mnist, cifar10), mlp, or package.module:builder, an importable function builder(event_shape, "
                        f"**net_config) -> torch.nn.Module (default {d.net})")
    n = p.add_argument_group("net settings (recorded in config.json as net_config; each refused where the net "
                             "has no such setting)")
    n.add_argument("--channels", type=int, default=None, metavar="C",
                   help="U-Net: channels of the first level, model_channels (default: 128 from 32 pixels up, else 64)")
    n.add_argument("--channel-mult", type=_ints, default=None, metavar="M1,M2,...",
                   help="U-Net: channel multiplier per level, one level per entry, each halving the size (default by "
                        "size, improved-diffusion's: 1,2,2,2 at 32 px, 1,2,3,4 at 64; smaller: 1 then 2 per halving "
                        "down to 4 px)")
    n.add_argument("--res-blocks", type=int, default=None, metavar="N",
                   help="U-Net: residual blocks per level, num_res_blocks (default 2)")
    n.add_argument("--attention", type=_ints, default=None, metavar="R1,R2,...",
                   help="U-Net: resolutions in pixels with self-attention, or none (default: half the image size "
                        "below 64 px, 16,8 from 64 up; the middle block always attends)")
    n.add_argument("--fourier-features", type=_fourier, default=None, metavar="N1,N2,...|auto",
                   help="U-Net: sin and cos of 2^n·2π·x_t for each exponent n as extra input channels (VDM's Fourier "
                        "features); auto: from the mean spacing Δ of the training data's grey levels, n = "
                        "round(log2(1/Δ)) and n − 1 (6,7 for images that use all 256 levels, 2,3 for the digits' 17, "
                        "0,1 for 4 levels), recorded as numbers; train prints the levels and Δ, and warns where "
                        "the levels are uneven; refused on continuous data (default: none)")
    n.add_argument("--dropout", type=float, default=None, help="U-Net or MLP: dropout (default 0.1 U-Net, 0 MLP)")
    n.add_argument("--width", type=int, default=None, help="MLP: hidden width (default 128; warned below D)")
    n.add_argument("--depth", type=int, default=None, help="MLP: residual blocks (default 3)")
    n.add_argument("--net-config", type=_json_object, default=None, metavar="JSON",
                   help="any other settings of the net as a JSON object, e.g. '{\"num_heads\": 4}' (the U-Net's "
                        "keyword arguments, or your builder's)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate after warm-up (default {d.lr})")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help=f"steps of linear learning-rate warm-up; for a short run about 5%% of --steps (default "
                        f"{d.warmup_steps}: warned when over half the run)")
    p.add_argument("--grad-clip", type=_none_or_float, default=d.grad_clip,
                   help=f"max gradient norm, or none (default {d.grad_clip})")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay,
                   help=f"decay of the EMA of the weights, which evaluate and sample use; it starts at the initial "
                        f"weights and keeps decay^steps of them, so for a short run take at most 1 - 3/steps, "
                        f"e.g. 0.998 for 1,500 steps (default {d.ema_decay}: warned when it keeps over 5%%)")
    p.add_argument("--steps", type=int, default=d.steps, help="budget in optimizer steps (total, resumed ones included)")
    p.add_argument("--minutes", type=float, default=d.minutes, help="budget in wall-clock minutes (total)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help=f"default {d.checkpoint_every}")
    p.add_argument("--val-examples", type=int, default=d.val_examples, metavar="N",
                   help="hold N examples out of the training split (chosen by --seed; the test split is untouched), "
                        "estimate the bound of the EMA weights on them at every checkpoint and keep the best in "
                        f"RUN/best.pt, which evaluate and sample then use (default {d.val_examples}: off)")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help=f"default {d.keep_checkpoints}")
    p.add_argument("--log-every", type=int, default=d.log_every, help=f"steps between metric lines (default {d.log_every})")
    p.add_argument("--metrics", dest="metrics_format", default=d.metrics_format,
                   help=f"metrics file format: {' or '.join(METRICS_FORMATS)} (default {d.metrics_format})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    p.add_argument("--device", default=d.device, help=f"auto, cpu, cuda or cuda:N (default {d.device})")
    _add_threads_flag(p)
    _add_backend_flag(p, "the run's checkpoints load on either backend")
    _add_precision_flag(p, DEFAULTS.precision, "weights, Adam and the EMA stay float32")
    _add_memory_flags(p)
    _add_dist_flag(p)
    p.add_argument("--run-dir", required=True, help="run folder for config.json, metrics and checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --run-dir")
    p.add_argument("--auto-resume", action="store_true",
                   help="continue from the newest checkpoint if --run-dir has one, else start (for requeued jobs)")
    p.add_argument("--allow-inexact-resume", action="store_true",
                   help="with --resume on another number of processes: continue even where the run cannot equal "
                        "the uninterrupted one (a warning instead of an error)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


# The net flags and the net_config key each sets.
NET_FLAGS = {"channels": "model_channels", "channel_mult": "channel_mult", "res_blocks": "num_res_blocks",
             "attention": "attention_resolutions", "dropout": "dropout", "width": "width", "depth": "depth",
             "fourier_features": "fourier_features"}


def _steps(text: str) -> int:
    """``--T``: an integer, or ``inf`` / ``continuous`` for 0 (continuous time)."""
    if text.strip().lower() in ("inf", "continuous"):
        return 0
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of steps; pass an integer, or 0 (inf) for "
                                         "continuous time") from None


def _ints(text: str) -> list[int]:
    """``"1,2,2"`` → ``[1, 2, 2]``; ``"none"`` → ``[]``."""
    if text.strip().lower() == "none":
        return []
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 1,2,2") from None


def _fourier(text: str) -> list[int] | str:
    """``"6,7"`` → ``[6, 7]``; ``"none"`` → ``[]``; ``"auto"`` (resolved from the data by train)."""
    return "auto" if text.strip().lower() == "auto" else _ints(text)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({e.msg}); pass an object, e.g. '{{\"num_heads\": 4}}'"
                                         ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object; pass one, e.g. '{{\"num_heads\": 4}}'")
    return value


def net_config_from_args(args: argparse.Namespace) -> dict | None:
    """``--net-config`` with the net flags given (``--channels``, ``--width``, ...) set on top; None if neither."""
    config = dict(args.net_config or {})
    for flag, key in NET_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if key in config:
            raise ValueError(f"{_flag(flag)} and --net-config both set {key}; pass it once")
        config[key] = value
    return config or None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of the parsed ``train`` flags (one flag per field, the net's settings gathered in
    ``net_config``; ``world_size`` comes from the job)."""
    fields = {f: getattr(args, f) for f in DEFAULTS.to_dict() if hasattr(args, f) and f != "net_config"}
    if fields.get("estimator") is None:  # not given: the default of a chain, or of continuous time (T = 0)
        fields["estimator"] = CONTINUOUS_DEFAULT if fields.get("T") == 0 else DEFAULTS.estimator
    return TrainConfig(**fields, net_config=net_config_from_args(args))


def _print_trained(result) -> None:
    bpd = "n/a" if result.running_bpd is None else f"{result.running_bpd:.4f}"
    print(f"trained {result.step} steps (stopped by {result.stopped_by}); running train bits/dim {bpd}")
    print(f"checkpoint {result.checkpoint}")
    if result.best is not None:
        print(f"best {result.best} (step {result.best_step}, validation bits/dim {result.best_val_bpd:.4f}, EMA "
              "weights on the held-out examples)")


def given_flags(argv: list[str], command: str) -> set[str]:
    """The destinations of the flags of ``command`` that ``argv`` sets (not left at their defaults)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command", "func"}


def resume_with_saved_settings(args: argparse.Namespace, given: set[str]) -> None:
    """``--resume`` (or ``--auto-resume``) of a run folder with a config.json: every train flag not given takes the
    run's saved value, so ``train --run-dir RUN --resume`` continues the run as it was started. A flag given is
    used as given (and refused by :func:`~ppl_diffusion.train.train` where the run cannot change it)."""
    path = Path(args.run_dir) / "config.json"
    if not (args.resume or args.auto_resume) or not path.is_file():
        return
    saved = json.loads(path.read_text())
    for field in DEFAULTS.to_dict():
        if field != "net_config" and hasattr(args, field) and field not in given and field in saved:
            setattr(args, field, saved[field])
    if "net_config" not in given and saved.get("net_config"):
        flagged = {NET_FLAGS[flag] for flag in given & set(NET_FLAGS)}
        args.net_config = {k: v for k, v in saved["net_config"].items() if k not in flagged} or None


def saved_threads(args: argparse.Namespace) -> int | None:
    """On ``--resume`` / ``--auto-resume`` without ``--threads``: the thread count the run's newest checkpoint was
    written with, so the resumed run computes as it did (torch's CPU kernels round differently with another count,
    and the resume would no longer be exact). Said in one line; None for a fresh run or an old checkpoint."""
    if not (args.resume or args.auto_resume):
        return None
    from .checkpoint import latest_checkpoint, load_checkpoint

    path = latest_checkpoint(args.run_dir) if Path(args.run_dir).is_dir() else None
    if path is None:
        return None
    try:
        threads = load_checkpoint(path).get("threads")
    except Exception:  # an unreadable newest checkpoint: train() warns and falls back; keep the default count
        return None
    if isinstance(threads, int) and threads >= 1:
        if distributed.world().is_main:
            print(f"resuming on {threads} thread{'s' * (threads > 1)}, as {path.name} was written "
                  "(pass --threads N to change it; the resume is then not bit-exact)")
        return threads
    return None


def cmd_train(args) -> None:
    if args.resume and args.auto_resume:
        raise ValueError("--resume and --auto-resume both given; pass one (--auto-resume also starts a new run)")
    resume = "auto" if args.auto_resume else args.resume
    result = train(config_from_args(args), args.run_dir, resume=resume, progress=args.progress,
                   allow_inexact_resume=args.allow_inexact_resume, log=print)
    if distributed.world().is_main:
        _print_trained(result)
        _print_learned_schedule(result.checkpoint)


def _print_learned_schedule(checkpoint) -> None:
    """The learned γ schedule's endpoints in the final checkpoint (raw and EMA weights); nothing for a fixed one.
    Only the schedule is built from the checkpoint and loaded, not the model."""
    from .checkpoint import load_checkpoint
    from .evaluate import schedule_line
    from .train.config import TrainConfig
    from .train.schedules import build_schedule

    state = load_checkpoint(checkpoint)
    if state.get("schedule") is None:  # a NoiseSchedule or a fixed γ: nothing was learned
        return
    config, learned = TrainConfig.from_dict(state["config"]), {}
    for name, key in (("raw", "schedule"), ("ema", "schedule_ema")):
        schedule = build_schedule(config)
        schedule.load_state_dict(state[key])
        learned[name] = schedule.describe()
    print(schedule_line(learned))


# ---------------------------------------------------------------------------------------- evaluate, sample
RUN_HELP = ("run folder (its best.pt, the best weights by validation of a run trained with --val-examples, else "
            "its newest checkpoint) or a checkpoint file")
LAST_HELP = "the run folder's newest checkpoint even where it has a best.pt"


def _add_eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("--last", action="store_true", help=LAST_HELP)
    p.add_argument("--max-examples", type=int, default=None, help="first N test examples only (default: all)")
    p.add_argument("--timesteps-per-batch", type=int, default=None,
                   help="steps t per denoiser call (default: about 512 inputs per call)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="test examples per call (default 500 for the ELBO, 64 per ODE solve)")
    p.add_argument("--fd-samples", type=int, default=None,
                   help="digits only: samples of the EMA weights scored by digits_fd (default 1000; 0 disables)")
    p.add_argument("--fit-variance", type=int, default=None, metavar="N",
                   help="fit the reverse variances in closed form on N training examples and evaluate that model "
                        "(writes eval-fitted.json; default 0: the trained variance)")
    p.add_argument("--likelihood", default="elbo", choices=("elbo", "ode"),
                   help="elbo: the variational bound of the raw and EMA weights (eval.json); ode: the exact "
                        "likelihood by the probability-flow ODE (eval-ode.json), beside the ELBO of the same "
                        "weights (default elbo)")
    p.add_argument("--bound", default=None, choices=("full", "estimate"),
                   help="with --likelihood elbo: full (every one of the T terms per example) or estimate (an unbiased "
                        "estimate from a few terms per example, its SE including the t-sampling; "
                        "eval-estimate.json) (default full); a run in continuous time (T = 0) is always estimated: its "
                        "reconstruction and prior terms per example and its diffusion term from K x M draws of t")
    e = p.add_argument_group("--bound estimate, and a continuous-time run's bound")
    e.add_argument("--full-steps", type=int, default=None, metavar="T0",
                   help="steps t = 1..T0 computed for every example, where the bound concentrates (default 20)")
    e.add_argument("--strata", type=int, default=None, metavar="K",
                   help="strata of the steps above T0, or of [0, 1] in continuous time (default 20)")
    e.add_argument("--draws", type=int, default=None, metavar="M",
                   help="steps (times) drawn per stratum and example; M >= 2 also reports the t-sampling's SE "
                        "(default 2)")
    e.add_argument("--proposal", default=None,
                   help="pilot (strata and importance proposal from the terms' RMS on training examples) or "
                        "uniform (equal strata, uniform t) (default pilot)")
    e.add_argument("--pilot-examples", type=int, default=None, metavar="N",
                   help="training examples of the pilot (default 16)")
    g = p.add_argument_group("--likelihood ode")
    _add_ode_flags(g)
    g.add_argument("--trace", default=None, help="exact (D copies of each example per evaluation: about a minute per 8x8 digit for the digits "
                        "U-Net on one CPU core) or hutchinson (one per probe, about a second; unbiased) (default exact)")
    g.add_argument("--probes", type=int, default=None, help="Hutchinson probes per example (default 1)")
    g.add_argument("--probe", default=None, help="rademacher or gaussian Hutchinson probes (default rademacher)")
    g.add_argument("--dequantization", default=None,
                   help="auto (uniform for 8-bit images, none for continuous data), uniform (cells centred on the "
                        "pixel values, +log2(127.5) bits/dim), score-sde (score_sde's cells, +7), none, or decoder (no "
                        "cells: x_1 ~ q(x_1|x_0) scored by the ODE at eps = 1/T and decoded by the trained p(x_0|x_1), "
                        "a variational bound with its entropy term) (default auto)")
    g.add_argument("--dequantization-draws", type=int, default=None, metavar="R",
                   help="dequantization draws per example (default 1; R >= 2 also reports their SD)")
    g.add_argument("--raw", action="store_true", default=None, help="raw weights instead of the EMA (the default)")
    p.add_argument("--data-root", default=None,
                   help="where the run's data is now, if it moved (mnist, cifar10, image_folder; default: the folder "
                        "the run stored)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    _add_threads_flag(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the bound's noise and the samples (default 0)")
    _add_backend_flag(p, "a run trained on either backend evaluates on both")
    _add_precision_flag(p, "fp32", "the bound's arithmetic outside the network stays float32 / float64")
    _add_dist_flag(p)
    p.add_argument("--json", action="store_true", help="print the whole JSON instead of the summary")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--restart", action="store_true",
                   help="discard the saved progress of an unfinished evaluation of another configuration "
                        "(RUN/eval*.progress, also --likelihood ode's) instead of refusing it; by default the same "
                        "command continues its own")


def _add_ode_flags(p) -> None:
    """The solver's flags, shared by ``evaluate --likelihood ode`` and ``sample --ode`` (default ``None``: unset)."""
    p.add_argument("--rtol", type=float, default=None, help="the adaptive solver's relative tolerance (default 1e-5)")
    p.add_argument("--atol", type=float, default=None, help="the adaptive solver's absolute tolerance (default 1e-5)")
    p.add_argument("--eps", type=float, default=None,
                   help="the ODE's small-time end (default: the map's, 1/T for grid, 1e-5 for vp-linear)")
    p.add_argument("--time-map", default=None,
                   help="continuous time of the chain: grid (spline through the steps), grid-linear (k-diffusion's) "
                        "or vp-linear (score_sde's, linear schedules) (default grid); a γ schedule's ODE runs on its "
                        "own time (gamma, the only map there)")


ODE_EVAL_FLAGS = ("rtol", "atol", "eps", "time_map", "trace", "probes", "probe", "dequantization",
                  "dequantization_draws", "raw")
ESTIMATE_FLAGS = ("full_steps", "strata", "draws", "proposal", "pilot_examples")
ODE_DEFAULTS = dict(rtol=1e-5, atol=1e-5, eps=None, time_map=None, trace="exact", probes=1, probe="rademacher",
                    dequantization="auto", dequantization_draws=1, raw=False)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _ode_options(args, names) -> dict:
    """The ODE flags ``names`` of ``args``, unset ones at their defaults."""
    return {k: ODE_DEFAULTS[k] if getattr(args, k) is None else getattr(args, k) for k in names}


def cmd_evaluate(args) -> None:
    estimate = [_flag(k) for k in ESTIMATE_FLAGS if getattr(args, k) is not None]
    if args.likelihood == "ode" and (args.bound is not None or estimate):
        raise ValueError(f"{', '.join(estimate) or '--bound ' + args.bound} with --likelihood ode: the estimate is of "
                         "the ELBO's terms; drop them (or use --likelihood elbo)")
    if args.likelihood == "ode":
        return _evaluate_ode(args)
    given = [_flag(k) for k in ODE_EVAL_FLAGS if getattr(args, k) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} given with --likelihood elbo; these flags are for the ODE's likelihood: "
                         "add --likelihood ode or drop them")
    from .evaluate import evaluate_run, summary

    result = evaluate_run(args.run, max_examples=args.max_examples, timesteps_per_batch=args.timesteps_per_batch,
                          batch_size=500 if args.batch_size is None else args.batch_size,
                          fd_samples=1000 if args.fd_samples is None else args.fd_samples,
                          fit_variance=args.fit_variance or 0, device=args.device,
                          seed=args.seed, progress=args.progress, backend=args.backend, precision=args.precision,
                          bound=args.bound, data_root=args.data_root, last=args.last, restart=args.restart,
                          **{k: getattr(args, k) for k in ESTIMATE_FLAGS})
    if distributed.world().is_main:
        print(json.dumps(result, indent=2) if args.json else summary(result))


def _evaluate_ode(args) -> None:
    from .likelihood import evaluate_ode_run, summary

    for name in ("fd_samples", "fit_variance"):
        if getattr(args, name) is not None:
            raise ValueError(f"{_flag(name)} with --likelihood ode: the ODE uses neither samples nor the reverse "
                             f"variances; drop {_flag(name)} (or use --likelihood elbo)")
    if args.precision != "fp32":
        raise ValueError(f"--precision {args.precision} with --likelihood ode: the ODE is solved in fp32 (an adaptive "
                         "solver's error control needs it); drop --precision")
    o = _ode_options(args, ODE_EVAL_FLAGS)
    result = evaluate_ode_run(args.run, max_examples=args.max_examples,
                              batch_size=64 if args.batch_size is None else args.batch_size,
                              trace=o["trace"], probes=o["probes"], probe=o["probe"], rtol=o["rtol"], atol=o["atol"],
                              eps=o["eps"], time_map=o["time_map"], dequantization=o["dequantization"],
                              draws=o["dequantization_draws"], ema=not o["raw"], seed=args.seed, device=args.device,
                              backend=args.backend, timesteps_per_batch=args.timesteps_per_batch,
                              progress=args.progress, data_root=args.data_root, last=args.last,
                              restart=args.restart)
    if distributed.world().is_main:
        print(json.dumps(result, indent=2) if args.json else summary(result))


def _add_sample_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("--last", action="store_true", help=LAST_HELP)
    p.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--steps", type=int, default=None,
                   help="sample with K respaced steps (default: all T), or with a γ schedule the K-step chain of the "
                        "same γ (any K >= 2; a continuous-time run's default is 1000)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same samples (default 0)")
    p.add_argument("--raw", action="store_true", help="raw weights instead of the EMA (the default)")
    p.add_argument("--out", default=None, help="PNG path (default RUN/samples-ema.png); the .npz goes beside it")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    _add_threads_flag(p)
    p.add_argument("--data-root", default=None, help=argparse.SUPPRESS)  # refused in one line: sampling reads no data
    _add_backend_flag(p, "a run trained on either backend samples on both")
    _add_precision_flag(p, "fp32", "whatever the run trained at")
    _add_dist_flag(p)
    p.add_argument("--ode", action="store_true",
                   help="deterministic samples by the probability-flow ODE (x_T as ancestral sampling's for the seed; "
                        "default name RUN/samples-ema-ode.png)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="samples per call, each call's saved as it finishes (OUT.progress) so that the same command "
                        "continues after a kill (default: all samples in one call)")
    p.add_argument("--restart", action="store_true",
                   help="discard the saved progress of an unfinished call of another configuration instead of "
                        "refusing it")
    _add_ode_flags(p.add_argument_group("--ode"))


def cmd_sample(args) -> None:
    from .sampling import sample_run

    if args.data_root is not None:
        raise ValueError(f"--data-root {args.data_root}: sample reads no data (the checkpoint holds the data's shape "
                         "and decoder, so a moved run samples as it is); drop --data-root")
    names = ("rtol", "atol", "eps", "time_map")
    given = [_flag(k) for k in names if getattr(args, k) is not None]
    if given and not args.ode:
        raise ValueError(f"{', '.join(given)} given without --ode; these flags set the ODE's solver: add --ode or "
                         "drop them")
    o = _ode_options(args, names)
    try:
        result = sample_run(args.run, n=args.n, steps=args.steps, seed=args.seed, ema=not args.raw,
                            device=args.device, out=args.out, backend=args.backend, precision=args.precision,
                            ode=args.ode, last=args.last, batch_size=args.batch_size,
                            restart=args.restart, **o)
    except ValueError as error:  # the API names its argument K; here it is the flag
        prefix = f"K = {args.steps!r} steps is "
        if args.steps is None or not str(error).startswith(prefix):
            raise
        raise ValueError(f"--steps {args.steps} is " + str(error)[len(prefix):] + "; pass --steps in that range or "
                         "drop it (all of the run's steps)") from None
    if distributed.world().is_main:
        how = f", ODE: {result.nfe} function evaluations" if args.ode else ""
        if result.resumed_calls:
            how += f"; continued an interrupted run: {result.resumed_calls} saved calls read back"
        best = " (best.pt)" if result.run.weights_from == "best" else ""
        print(f"{args.n} samples ({'raw' if args.raw else 'EMA'} weights, step {result.run.step}{best}{how}) -> "
              f"{result.png} and {result.npz}")


# ---------------------------------------------------------------------------------------- compare
def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _none_or_int(text: str) -> int | None:
    return None if text.lower() in ("none", "all") else int(text)


def _add_compare_flags(p: argparse.ArgumentParser) -> None:
    from .study import StudyConfig
    from .study.estimators import DEFAULT_CONTINUOUS_ESTIMATORS, DEFAULT_ESTIMATORS

    d = StudyConfig()
    p.add_argument("run", nargs="?", default=None,
                   help="a run folder or checkpoint: its weights are the fixed θ and its settings the model "
                        "(default: a freshly initialised net built from --data/--net/--T)")
    p.add_argument("--out", required=True, help="output folder: report.md, CSV tables, PNG figures, draws/*.nc")
    p.add_argument("--raw", action="store_true", help="with a run: its raw weights instead of the EMA")
    p.add_argument("--data", default=d.data, help=f"without a run: data set (default {d.data})")
    p.add_argument("--data-root", default=d.data_root,
                   help="folder of the data files (mnist, cifar10, image_folder); with a run: where its data is now, "
                        "if it moved (default: the folder the run stored)")
    p.add_argument("--net", default=d.net, help=f"without a run: denoiser (default {d.net})")
    p.add_argument("--T", type=_steps, default=d.T,
                   help=f"without a run: diffusion steps (default {d.T}); 0 (or inf) with a γ schedule: continuous time")
    p.add_argument("--schedule", default=d.schedule,
                   help=f"without a run: linear, cosine or a γ schedule such as learned-net (default {d.schedule})")
    p.add_argument("--variance", default=d.variance, help=f"without a run: beta or posterior (default {d.variance})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"examples in the fixed batch and in the race's batches (default {d.batch_size})")
    p.add_argument("--estimators", type=_names, default=d.estimators,
                   help=f"comma-separated (default {','.join(DEFAULT_ESTIMATORS)}; in continuous time "
                        f"{','.join(DEFAULT_CONTINUOUS_ESTIMATORS)}); see ppl_diffusion.study.estimators")
    p.add_argument("--replicates", type=int, default=d.replicates,
                   help=f"replicates of each estimate and gradient at the fixed θ (default {d.replicates})")
    p.add_argument("--full-chain-replicates", type=_none_or_int, default=d.full_chain_replicates,
                   help=f"replicates for trace, meanfield and iwae (default {d.full_chain_replicates}; all: --replicates)")
    p.add_argument("--iwae-particles", type=int, default=d.iwae_particles,
                   help=f"K trajectories of the IWAE bound (default {d.iwae_particles})")
    p.add_argument("--iwae-examples", type=_none_or_int, default=d.iwae_examples,
                   help=f"IWAE on the first N examples of the batch only (default {d.iwae_examples}; all: the whole "
                        "batch; its calls cost K times more)")
    p.add_argument("--per-t-steps", type=_none_or_int, default=d.per_t_steps,
                   help="steps in the per-t picture (default all: needed for the predicted variances)")
    p.add_argument("--per-t-repeats", type=int, default=d.per_t_repeats,
                   help=f"draws per example and t in the per-t picture (default {d.per_t_repeats})")
    p.add_argument("--race-seconds", type=float, default=d.race_seconds,
                   help="training budget per estimator in the race, in seconds (default 0: no race)")
    p.add_argument("--race-points", type=int, default=d.race_points,
                   help=f"evaluations per race curve, at doubling budgets (default {d.race_points})")
    p.add_argument("--race-estimators", type=_names, default=d.race_estimators,
                   help=f"comma-separated (default {','.join(d.race_estimators)})")
    p.add_argument("--race-lr", type=float, default=d.race_lr, help=f"Adam learning rate in the race (default {d.race_lr})")
    p.add_argument("--race-target", type=float, default=d.race_target,
                   help="a bits/dim whose time-to-reach is reported for every race estimator")
    p.add_argument("--eval-examples", type=int, default=d.eval_examples,
                   help=f"test examples scored by the full bound at each race point (default {d.eval_examples})")
    p.add_argument("--schedule-steps", type=int, default=d.schedule_steps,
                   help="continuous time with learned-net: the learned-schedule row, the continuous estimators with the "
                        "schedule's interior as initialised and after this many Adam steps training it alone for the "
                        "estimate's variance, at the same θ (default 0: no row)")
    p.add_argument("--schedule-lr", type=float, default=d.schedule_lr,
                   help=f"learning rate of those steps (default {d.schedule_lr:g})")
    _add_threads_flag(p)
    p.add_argument("--device", default=d.device, help=f"auto, cpu, cuda or cuda:N (default {d.device})")
    _add_backend_flag(p, "measures that backend's estimators and trains the race on it; a run of either backend "
                         "is a valid θ")
    _add_memory_flags(p, microbatch=False)
    _add_dist_flag(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--restart", action="store_true",
                   help="discard the saved fixed-θ replicates of an unfinished study of another configuration "
                        "(OUT/fixed-theta.progress) instead of refusing them; by default the same command continues")


def cmd_compare(args) -> None:
    from .study import StudyConfig, command_line, run_study

    skip = {"out", "threads", "progress", "func", "command", "dist_backend", "restart"}
    config = StudyConfig(**{k: v for k, v in vars(args).items() if k not in skip}, command=command_line())
    run_study(config, args.out, progress=args.progress, log=print if distributed.world().is_main else lambda *a: None,
              restart=args.restart)
    if distributed.world().is_main:
        print(f"wrote {Path(args.out) / 'report.md'}")


# ---------------------------------------------------------------------------------------- import, export
def _add_import_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", help="what SOURCE is: diffusers (a DDPM/DDIM pipeline folder), improved-diffusion, "
                        "guided-diffusion (a .pt state dict of theirs) or "
                        "safetensors (a folder of ppl-diffusion export --to safetensors)")
    p.add_argument("source", help="the checkpoint file or folder")
    p.add_argument("--run-dir", required=True, help="the run folder to write (config.json and ckpt-00000000.pt)")
    p.add_argument("--flags", default="", help="their flags, as their scripts take them, e.g. \"--image_size 32 "
                   "--num_channels 128 --num_res_blocks 3 --learn_sigma True --diffusion_steps 4000 --noise_schedule "
                   "cosine\" (see ppl_diffusion.interop.improved_diffusion)")
    p.add_argument("--data", default=None, help="the data set to evaluate on, e.g. cifar10 or digits (default cifar10; "
                                                "safetensors: its own)")
    p.add_argument("--data-root", default=None, help="folder of the data files (cifar10, mnist, image_folder)")


def cmd_import(args) -> None:
    from .interop import IMPORTERS

    if args.kind not in IMPORTERS:
        raise ValueError(f"unknown import kind {args.kind!r}; choose one of {sorted(IMPORTERS)}")
    data = args.data if args.data is not None or args.kind == "safetensors" else "cifar10"
    path = IMPORTERS[args.kind](args.source, args.run_dir, flags=args.flags, data=data, data_root=args.data_root)
    print(f"imported {args.kind} {args.source} -> {path} (evaluate, sample and compare take {args.run_dir})")
    flags = (TrainConfig.from_dict(json.loads((Path(args.run_dir) / "config.json").read_text()))
             .source or {}).get("flags", {})
    if flags.get("timestep_respacing"):
        print(f"note: timestep_respacing {flags['timestep_respacing']!r} is their sampler's setting; the run is the "
              f"{flags['diffusion_steps']}-step model (sample --steps K respaces it)")


def _add_export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder (its newest checkpoint) or a ckpt-*.pt file")
    p.add_argument("--to", required=True, dest="kind", help="safetensors, improved-diffusion or diffusers")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--raw", action="store_true", help="raw weights instead of the EMA (the default)")


def cmd_export(args) -> None:
    from .interop import EXPORTERS

    if args.kind not in EXPORTERS:
        raise ValueError(f"unknown export kind {args.kind!r}; choose one of {sorted(EXPORTERS)}")
    result = EXPORTERS[args.kind](args.run, args.out, ema=not args.raw)
    print(f"exported {args.run} ({'raw' if args.raw else 'EMA'} weights) -> {args.out}")
    if isinstance(result, dict):  # improved-diffusion: the flags to run it with, and what differs
        line = result["command_line"]["improved-diffusion"] or result["command_line"]["guided-diffusion"]
        print(f"their flags: {line}" if line else "their scripts cannot take these flags as they are: "
              f"{'; '.join(result['command_line']['why_not']['guided-diffusion'])}")
        for what in result["differences"]:
            print(f"differs: {what}")


# ---------------------------------------------------------------------------------------- demo
def cmd_demo(args) -> None:
    from .evaluate import evaluate_run, summary
    from .sampling import sample_run

    base = QUICK_CONFIG if args.quick else DEMO_CONFIG
    config = TrainConfig(**{**base, **({} if args.steps is None else {"steps": args.steps})},
                         seed=args.seed, device=args.device)
    plan = QUICK_EVAL if args.quick else DEMO_EVAL
    run_dir = Path(args.run_dir)
    print(f"demo: {config.data}, T = {config.T}, {config.estimator}, {config.steps} steps of batch {config.batch_size}, "
          f"best EMA weights by the bound estimated on {config.val_examples} held-out training digits every "
          f"{config.checkpoint_every} steps; run folder {run_dir}", flush=True)
    t0 = time.monotonic()
    trained = train(config, run_dir, resume=args.resume, progress=args.progress, log=print)  # log: the net as built
    t1 = time.monotonic()
    _print_trained(trained)
    result = evaluate_run(run_dir, max_examples=plan["max_examples"], fd_samples=plan["fd_samples"],
                          device=args.device, seed=args.seed, progress=args.progress)
    t2 = time.monotonic()
    sampled = sample_run(run_dir, n=plan["n"], seed=args.seed, device=args.device)
    t3 = time.monotonic()
    print(summary(result))
    print(f"samples (EMA weights, step {sampled.run.step}): {sampled.png}")
    print(f"time: train {(t1 - t0) / 60:.1f} min, evaluate {t2 - t1:.0f} s, sample {t3 - t2:.0f} s")


# ---------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Gaussian diffusion models (DDPM) as Pyro programs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("train", help="train a diffusion model into a run folder")
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="bits/dim on the test split: the ELBO (raw and EMA, per-term figure, eval.json) "
                                        "or the probability-flow ODE's likelihood (--likelihood ode, eval-ode.json)")
    _add_eval_flags(p)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("sample", help="draw samples: PNG grid (or scatter) and .npz")
    _add_sample_flags(p)
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("compare", help="the estimator study: fixed-θ replicates, per-t variances, training race",
                       description="Compare the ELBO estimators (Monte-Carlo Trace_ELBO, analytic-KL, stochastic t "
                                   "with uniform / importance / low-discrepancy t, IWAE) at a fixed θ and in a "
                                   "training race; writes a markdown report, CSV tables, PNG figures and the "
                                   "draws as arviz InferenceData (netCDF).")
    _add_compare_flags(p)
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("import", help="a model trained elsewhere (improved-diffusion, guided-diffusion, diffusers, safetensors) "
                                      "as a run folder that every command takes")
    _add_import_flags(p)
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("export", help="a run's model as safetensors + JSON, an improved-diffusion checkpoint or a diffusers pipeline")
    _add_export_flags(p)
    p.set_defaults(func=cmd_export)
    c = DEMO_CONFIG
    p = sub.add_parser("demo", help="train on digits for a fixed number of steps, evaluate, sample, summarise",
                       description=f"Train a small U-Net denoiser on the 8x8 digits (T = {c['T']}) for {c['steps']} "
                                   f"steps of batch {c['batch_size']}, holding {c['val_examples']} training digits out "
                                   f"to keep the best EMA weights by the estimated bound every {c['checkpoint_every']} "
                                   "steps (best.pt); then evaluate the full bound of those weights on the whole "
                                   "360-image test split and digits_fd on 1000 of their samples, and draw 64 samples. "
                                   "A fixed number of steps and seeded, counter-based noise: the same printout on any "
                                   "machine, up to float rounding (about 9 minutes on 2 CPU cores).")
    p.add_argument("--run-dir", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimizer steps (default {DEMO_CONFIG['steps']}; --quick: {QUICK_CONFIG['steps']})")
    p.add_argument("--quick", action="store_true",
                   help=f"a seconds-long version (T = {QUICK_CONFIG['T']}, {QUICK_CONFIG['steps']} steps, "
                        f"{QUICK_EVAL['max_examples']} test digits), for tests")
    p.add_argument("--resume", action="store_true", help="continue the demo run in --run-dir")
    _add_dist_flag(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--seed", type=int, default=0, help="the run's seed, and the bound's and the samples' (default 0)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def _join_jax_job() -> None:
    """A multi-host JAX job must be joined before any JAX computation: do it first (a no-op on one host)."""
    try:
        from .numpyro.distributed import initialize
    except ImportError:  # jax is not installed: the command itself says what to install
        return
    initialize()


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a scheduler's stop), raised where the process is, so that a run stopped before
    its first checkpoint leaves its folder as it found it, as Ctrl-C does."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status.

    A process of a several-process job (torchrun) ends here with ``os._exit`` once its output is flushed: a gloo
    process group's threads can still be joinable when the interpreter tears down, which aborts the process
    ("terminate called without an active exception", seen once in ~20 runs, after every file was written)."""
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _one_line_warning
    several = False
    status = 0
    # Signal handlers live in the main thread; under torchrun SIGTERM keeps its default (the launcher stops the ranks
    # it stops at once, and a rank would otherwise wait on a process group whose peer is gone).
    on_term = threading.current_thread() is threading.main_thread() and os.environ.get("WORLD_SIZE", "1") == "1"
    previous = signal.signal(signal.SIGTERM, _terminate) if on_term else None
    try:
        if args.command == "train" and args.threads is None:
            args.threads = saved_threads(args)
        if getattr(args, "threads", None) is not None:  # first: XLA reads its thread count when JAX starts
            set_threads(args.threads)
        if hasattr(args, "dist_backend"):  # under torchrun: join the job's process group (a no-op otherwise)
            distributed.init(args.dist_backend, getattr(args, "device", "auto"))
            several = distributed.world().world_size > 1 and distributed.joined()
        if getattr(args, "backend", "pyro") == "numpyro":
            _join_jax_job()
        if args.command == "train":
            resume_with_saved_settings(args, given_flags(list(sys.argv[1:] if argv is None else argv), "train"))
        args.func(args)
        # Every rank finishes before any leaves the group: a rank tearing gloo down while another still talks to it
        # can abort.
        distributed.world().barrier()
    except TrainingDiverged as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        status = 1
    except (ValueError, FileNotFoundError, CheckpointError) as e:  # CheckpointError is a ValueError
        # Bad input is found alike on every rank of a torchrun job (or decided on rank 0 and shared): say it once.
        if distributed.world().is_main:
            print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt as e:
        how = {"train": "a train run continues from its last checkpoint with --resume (one stopped before its first "
                        "left its folder as it found it)",
               "demo": "the demo continues from its last checkpoint with --resume"}.get(
            args.command, "the same command continues from the work it saved")
        print(f"{PROG}: {'terminated' if isinstance(e, Terminated) else 'interrupted'}; {how}", file=sys.stderr)
        status = 143 if isinstance(e, Terminated) else 130
    finally:
        if on_term:
            signal.signal(signal.SIGTERM, previous)
        distributed.shutdown()
    if several:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
