"""The estimator study behind ``ppl-diffusion compare``: what scoring each step analytically buys.

:func:`run_study` takes a trained run (its weights are the fixed θ) or, without one, a freshly
initialised net, and writes into one folder:

1. **At a fixed θ** (:mod:`.fixed`): R replicates of every estimator's ELBO estimate and gradient on
   one batch — mean, sd and MCSE sd/√R of the independent replicates, arviz's ESS as a diagnostic of their
   independence (draws saved as ``InferenceData`` in netCDF), the
   gradient's total variance and signal-to-noise ratio, seconds per call and efficiency
   1 / (variance × time). The importance-weighted bound (``RenyiELBO``, α = 0) is reported apart.
2. **Per t** (:mod:`.per_t`): the variance of the analytic and the Monte-Carlo step term at each t,
   and from those moments the predicted variance of each stochastic-t estimator, set beside the
   measured one.
3. **Training race** (``ppl_diffusion.study.race``): the same initial net trained with each estimator for the same
   wall time; test bits/dim (full bound) against time; times to reach the Monte-Carlo estimators'
   final bits/dim and the speed-up ratios.
4. **Learned schedule** (:mod:`.schedule`, a model in continuous time with VDM's learned-net schedule,
   ``schedule_steps > 0``): the continuous-time estimators at the same θ with the schedule's interior as
   initialised and after training it alone for the estimate's variance.

A model in continuous time (a γ schedule with T = 0: ``--schedule learned-net --T 0``, or a run of one) is measured
with the continuous-time estimators (:mod:`.estimators`); the per-t picture and the race are of a chain's steps and
are skipped there (the race is refused in one line).

Outputs: ``report.md``, ``study.json``, ``fixed_theta.csv``, ``per_t.csv``, ``race.csv``,
``race_targets.csv``, ``fixed_theta.png``, ``per_t.png``, ``race.png``, ``draws/<estimator>.nc``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch

from ..nets.remat import check_checkpointing
from .estimators import (DEFAULT_ESTIMATORS, FULL_CHAIN, STUDY_ESTIMATORS, check_estimators, default_estimators,
                         make_study_estimator)
from .fixed import FixedThetaRow, ess_flag, measure, pooled_agreement
from .per_t import PerTResult, per_t_moments
from . import race as race_module  # the module stays ppl_diffusion.study.race (its function is race_module.race)
from .race import budgets, speedups, summarise, time_to_reach

#: The estimators the training race compares by default (``--race-estimators``).
RACE_ESTIMATORS = ("trace", "meanfield", "stochastic-mc", "stochastic-kl", "stochastic-kl-is", "stochastic-kl-ld")


@dataclass
class StudyConfig:
    """Everything that defines a study (the ``compare`` flags, one per field; each field is commented in the source).

    Example:

    >>> from ppl_diffusion.study import StudyConfig
    >>> config = StudyConfig(data="eight_gaussians", T=10, batch_size=4, replicates=4).validate()
    >>> config.race_seconds, config.estimators  # no race; the model's default estimators
    (0.0, None)
    """

    run: str | None = None  # run folder or checkpoint: its weights are θ, its config the model; None: fresh init
    raw: bool = False  # with a run: its raw weights instead of the EMA
    data: str = "digits"  # without a run: the model, as for ``ppl-diffusion train``
    data_root: str | None = None  # the data's folder (mnist, cifar10, image_folder); with a run: where it is now
    net: str = "mlp"
    T: int = 1000  # 0: continuous time (with a γ schedule)
    schedule: str = "linear"  # a NoiseSchedule or a γ schedule (ppl_diffusion.train.schedules)
    variance: str = "beta"
    seed: int = 0
    batch_size: int = 128  # the fixed batch (first test examples) and the race's batch
    estimators: tuple | None = None  # None: the model's defaults (DEFAULT_ESTIMATORS; continuous time: the
    # continuous-time estimators)
    replicates: int = 200  # R per estimator at the fixed θ (ELBO and gradient each)
    full_chain_replicates: int | None = 16  # R for trace / meanfield / iwae (None: same as replicates); at
    # T = 1000 each of their calls is ~1000 denoiser calls (10 s and more for a gradient on a CPU)
    iwae_particles: int = 8
    iwae_examples: int | None = 16  # IWAE on the first N examples of the batch only (its calls cost K×); None: all
    per_t_steps: int | None = None  # None: every t (needed for the predicted variances)
    per_t_repeats: int = 4
    race_seconds: float = 0.0  # training budget per estimator; 0 skips the race
    race_points: int = 8
    race_estimators: tuple = RACE_ESTIMATORS
    race_lr: float = 1e-3
    race_grad_clip: float | None = 1.0
    eval_examples: int = 100
    race_target: float | None = None  # an extra bits/dim whose time-to-reach is reported
    device: str = "auto"
    backend: str = "pyro"  # "pyro" or "numpyro": the backend whose estimators (and race training) are measured
    schedule_steps: int = 0  # learned-schedule row: Adam steps training the interior for variance (0: no row)
    schedule_lr: float = 1e-2  # their learning rate
    # "none", "steps" or "blocks": activations recomputed in the backward pass (ppl_diffusion.nets.remat), for the
    # full-chain gradients of a large net; the numbers do not change
    checkpoint_activations: str = "none"
    command: str = field(default="", repr=False)

    def validate(self) -> "StudyConfig":
        """The config itself, if every field is valid; a one-line ``ValueError`` naming the field and the flag
        otherwise."""
        if self.backend not in ("pyro", "numpyro"):
            raise ValueError(f"unknown backend {self.backend!r}; choose pyro or numpyro (--backend)")
        if self.backend == "numpyro" and self.device not in ("auto", "cpu"):
            raise ValueError(f"device = {self.device!r} with backend numpyro: JAX picks its own device; pass "
                             "--device auto or cpu")
        check_checkpointing(self.checkpoint_activations)
        if self.estimators is not None:
            check_estimators(self.estimators)
        if isinstance(self.schedule_steps, bool) or not isinstance(self.schedule_steps, int) or self.schedule_steps < 0:
            raise ValueError(f"schedule_steps = {self.schedule_steps!r}; pass a number of steps >= 0 (--schedule-steps; "
                             "0 skips the learned-schedule row)")
        if not (isinstance(self.schedule_lr, (int, float)) and math.isfinite(self.schedule_lr) and self.schedule_lr > 0):
            raise ValueError(f"schedule_lr = {self.schedule_lr!r}; pass a positive learning rate (--schedule-lr)")
        if self.race_seconds:
            check_estimators(self.race_estimators, trainable=True)
            budgets(self.race_seconds, self.race_points)
        for name in ("batch_size", "replicates", "iwae_particles", "per_t_repeats", "eval_examples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} = {v!r}; pass a positive integer (--{name.replace('_', '-')})")
        if self.iwae_particles < 2:
            raise ValueError(f"iwae_particles = {self.iwae_particles!r}; the IWAE bound needs K >= 2 trajectories "
                             "(--iwae-particles)")
        if self.iwae_examples is not None and (isinstance(self.iwae_examples, bool) or self.iwae_examples < 1):
            raise ValueError(f"iwae_examples = {self.iwae_examples!r}; pass a positive number of examples "
                             "(--iwae-examples)")
        if self.replicates < 4 or (self.full_chain_replicates is not None and self.full_chain_replicates < 4):
            raise ValueError(f"replicates = {self.replicates!r} / full_chain_replicates = {self.full_chain_replicates!r}: "
                             "pass at least 4 (--replicates, --full-chain-replicates)")
        if not (isinstance(self.race_seconds, (int, float)) and self.race_seconds >= 0):
            raise ValueError(f"race_seconds = {self.race_seconds!r}; pass seconds >= 0 (--race-seconds; 0 skips)")
        return self


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.lower().startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()}-core {cpu}{gpu}"


def _model(config: StudyConfig):
    """(diffusion at θ on the study's backend, its Pyro twin (the same θ), the TrainConfig of its model,
    dataset, description of θ)."""
    from ..data import load_dataset
    from ..sampling import find_checkpoint, load_run
    from ..train import TrainConfig, build_diffusion, resolve_device
    from ..train.run_dir import absolute_data_root, load_run_data

    from ..distributed import local_device

    device = resolve_device(local_device(config.device))
    if config.run is not None:
        checkpoint = find_checkpoint(config.run)
        loaded = load_run(checkpoint, ema=not config.raw, device=str(device))
        tc = loaded.config
        theta = f"{'raw' if config.raw else 'EMA'} weights of {checkpoint} (step {loaded.step})"
        diffusion = loaded.diffusion
        dataset = load_run_data(tc, config.data_root, run=config.run, event_shape=diffusion.event_shape)
        if config.data_root is not None:  # the data moved: the race trains on it where it is now
            tc = dataclasses.replace(tc, data_root=absolute_data_root(config.data_root))
    else:
        tc = TrainConfig(data=config.data, data_root=config.data_root, net=config.net, T=config.T,
                         schedule=config.schedule, variance=config.variance, seed=config.seed, steps=1,
                         batch_size=config.batch_size,
                         **({"estimator": "continuous"} if config.T == 0 else {})).validate().resolved()
        diffusion = None
        theta = f"freshly initialised {config.net} denoiser (seed {config.seed})"
        dataset = load_dataset(tc.data, tc.data_root) if tc.data_root else load_dataset(tc.data)
    if diffusion is None:
        pyro.set_rng_seed(config.seed)
        diffusion = build_diffusion(tc, dataset).to(device)
    twin = diffusion
    if config.backend == "numpyro":
        from ..numpyro.train import from_torch

        diffusion = from_torch(diffusion)
        tc = dataclasses.replace(tc, backend="numpyro", device="auto")
    return diffusion, twin, tc, dataset, theta


def _device_name(backend: str, device) -> str:
    if backend == "numpyro":
        import jax

        return f"jax {jax.__version__}: {jax.devices()[0].platform}"
    return str(device)


def _elbo_of(diffusion, x, *, seed: int, draws: int = 8) -> dict:
    """The ELBO per example of the fixed examples ``x`` (mean over them) from the full bound, ``draws`` noise
    draws each, and its standard error over the noise."""
    from ..evaluate import per_example_terms

    nll = per_example_terms(diffusion, x.repeat((draws,) + (1,) * (x.dim() - 1)), seed=seed).sum(-1)
    elbo = -nll.reshape(draws, len(x))  # [draws x N]
    # The examples are fixed (the IWAE rows use the same ones): only the noise of the draws is uncertain,
    # so the SE of the mean over examples comes from the within-example variance of the draws.
    se = float((elbo.var(0, unbiased=True).sum() / draws).sqrt() / len(x))
    return {"examples": len(x), "elbo": float(elbo.mean()), "se": se}


def run_study(config: StudyConfig, out_dir: str | Path, *, progress: bool = True, log=print,
              restart: bool = False) -> dict:
    """Run the study of ``config``, write its outputs to ``out_dir`` and return ``study.json``'s dict.

    The fixed-θ replicates are saved as they finish (``out_dir/fixed-theta.progress``, :mod:`ppl_diffusion.resume`):
    the same call after a kill continues them to the same draws (the per-t moments and the race run again);
    progress of another configuration is refused in one line (``restart``: discard it).

    Under ``torchrun`` the fixed-θ replicates of each estimator are split across the processes
    (:func:`~ppl_diffusion.study.fixed.measure`); rank 0 then computes the per-t moments, writes every file and
    returns the dict, the other ranks return ``{}`` as soon as their replicates are in. The training race
    stays one process (its runs are timed on one machine's clock): under ``torchrun`` it is refused with one
    line unless ``race_seconds = 0``.

    :param StudyConfig config: the study's settings.
    :param out_dir: the folder written (``report.md``, ``study.json``, CSV tables, figures, ``draws/``).
    :param bool progress: show progress bars.
    :param log: called with each line of progress.
    :param bool restart: discard the saved progress of another configuration instead of refusing it.

    Example (a fresh net on eight Gaussians; seconds, mostly arviz's import):

    >>> import tempfile
    >>> from ppl_diffusion.study import StudyConfig, run_study
    >>> config = StudyConfig(data="eight_gaussians", T=10, batch_size=4, replicates=4, full_chain_replicates=4,
    ...                      estimators=("stochastic-kl", "stochastic-mc"), per_t_repeats=2)
    >>> with tempfile.TemporaryDirectory() as out:  # doctest: +SKIP
    ...     study = run_study(config, out, progress=False, log=lambda line: None)
    ...     sorted(study)
    ['fixed_theta', 'meta', 'per_t']
    """
    try:
        import arviz as az
        import h5netcdf  # noqa: F401  (arviz writes netCDF through it)
    except ImportError as e:
        raise ValueError(f"the study needs arviz and h5netcdf ({e.name} is missing); install them with "
                         "pip install -c constraints.txt -e '.[study]'") from None

    from . import report

    from ..distributed import world

    config.validate()
    w = world()
    if w.distributed and config.race_seconds:
        raise ValueError(f"compare under torchrun splits the fixed-θ replicates across {w.world_size} processes; the "
                         f"training race runs on one process: pass --race-seconds 0 here, or run the race without "
                         "torchrun")
    progress = progress and w.is_main
    out = Path(out_dir)
    started = time.monotonic()
    diffusion, twin, tc, dataset, theta = _model(config)
    continuous = tc.T == 0
    estimators = check_estimators(config.estimators or default_estimators(tc.T), T=tc.T)
    if continuous and config.race_seconds:
        raise ValueError("the training race scores a chain's full bound, and this model is in continuous time (T = 0): "
                         "pass --race-seconds 0")
    if continuous and config.backend == "numpyro":
        raise ValueError("a model in continuous time (T = 0) is measured on the Pyro backend only: pass --backend pyro")
    if config.schedule_steps:
        from .schedule import check_interior

        check_interior(twin)
    diffusion.checkpoint_activations = config.checkpoint_activations  # a net without blocks: refused here
    if w.is_main:  # after every check of the model: a refused study leaves no folder behind
        (out / "draws").mkdir(parents=True, exist_ok=True)
    device = next(twin.parameters()).device
    x0 = dataset.test[:config.batch_size].to(device)
    pyro.clear_param_store()
    meta = {"data": tc.data, "net": tc.net, "T": tc.T, "schedule": tc.schedule, "variance": tc.variance,
            "estimators": list(estimators),
            "theta": theta, "batch": len(x0), "batch_from": f"(the first test examples of {tc.data})",
            "num_parameters": sum(p.numel() for p in twin.denoiser.parameters()), "backend": config.backend,
            "machine": _machine(), "device": _device_name(config.backend, device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "pyro": pyro.__version__, "arviz": az.__version__,
            "python": platform.python_version(), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": config.command or "ppl_diffusion.study.run_study", "config": dataclasses.asdict(config)}
    study = {"meta": meta}
    from ..resume import Progress, file_sha256
    from ..sampling import find_checkpoint

    fingerprint = lambda: {  # noqa: E731 - what the replicates depend on, computed on rank 0 alone
        **{k: v for k, v in dataclasses.asdict(config).items() if k != "command"},
        "checkpoint_sha256": None if config.run is None else file_sha256(find_checkpoint(config.run)),
        "device": str(device.type), "threads": torch.get_num_threads()}
    saved = Progress(out / "fixed-theta.progress", w.on_main(fingerprint))  # rank 0's, on every rank
    w.on_main(lambda: saved.open(restart=restart))

    # 1. fixed θ
    rows: list[FixedThetaRow] = []
    samplers, reference = {}, {}
    diffusion.eval()
    for k, name in enumerate(estimators):
        est = make_study_estimator(name, diffusion, iwae_particles=config.iwae_particles)
        r = config.replicates if name not in (*FULL_CHAIN, "iwae") else (config.full_chain_replicates or config.replicates)
        xs = x0[:config.iwae_examples] if name == "iwae" and config.iwae_examples else x0
        row, idata = measure(est, xs, r, seed=config.seed + k, progress=progress, chunk=saved.scoped(name))
        if not w.is_main:  # the other processes only run their share of the replicates
            continue
        if name == "iwae":
            reference[name] = _elbo_of(diffusion, xs, seed=config.seed)
            row.notes.append(f"on the first {len(xs)} examples of the batch; their ELBO (full bound, 8 draws each): "
                             f"{reference[name]['elbo']:.3f} ± {reference[name]['se']:.3f}")
        idata.to_netcdf(str(out / "draws" / f"{name}.nc"))
        if est.sampler_probabilities() is not None:
            samplers[name] = est.sampler_probabilities()
        rows.append(row)
        flag = ess_flag(row.elbo_ess, row.replicates)
        log(f"fixed θ {name:17s} ELBO {row.elbo_mean:10.3f} ± {row.elbo_mcse:.3f} (sd {row.elbo_sd:.3g}, "
            f"ESS {row.elbo_ess:.0f} of R = {row.replicates}{'; ' + flag if flag else ''}), "
            f"{1e3 * row.loss_seconds:.1f} ms/estimate, grad tr Cov {row.grad_total_variance:.3g}, "
            f"{1e3 * row.grad_seconds:.1f} ms/grad")
    if not w.is_main:  # per-t moments, the report and the files: rank 0
        return {}
    fixed_rows = [dataclasses.asdict(r) for r in rows]
    study["fixed_theta"] = {"replicates": config.replicates,
                            "full_chain_replicates": config.full_chain_replicates or config.replicates,
                            "rows": fixed_rows, "agreement": pooled_agreement(rows), "iwae_reference": reference}

    # 2. per t (on the Pyro twin at the same θ: the step terms' distribution, not a backend's speed); a chain's only
    twin.eval()
    per_t: PerTResult | None = None if continuous else per_t_moments(twin, x0, steps=config.per_t_steps, repeats=config.per_t_repeats,
                                                  seed=config.seed, progress=progress)
    if per_t is not None:
        study["per_t"] = {"repeats": config.per_t_repeats, "steps": len(per_t.t), "rows": per_t.rows()}
    if per_t is not None and per_t.full_grid:
        measured = {r.estimator: (r.elbo_sd ** 2, r.elbo_var_se) for r in rows}
        pred = {}
        for name, kind, probs in (("stochastic-kl", "kl", None), ("stochastic-mc", "mc", None),
                                  *((n, n.split("-")[1], samplers[n]) for n in samplers)):
            p = per_t.predicted_variance(kind, probs)
            if name in measured:
                p["measured"], p["measured_se"] = measured[name]
                p["ratio"] = p["measured"] / p["total"] if p["total"] > 0 else None
            pred[name] = p
        ideal = per_t.importance_probabilities("kl")
        pred["stochastic-kl, ideal P(t) ∝ sqrt E[L²]"] = per_t.predicted_variance("kl", ideal)
        study["per_t"]["predicted"] = pred
    if per_t is not None:
        log(f"per-t moments on {len(per_t.t)} steps done")

    # 3. race
    if config.race_seconds:
        race_tc = dataclasses.replace(tc, lr=config.race_lr, warmup_steps=0, grad_clip=config.race_grad_clip,
                                      batch_size=config.batch_size, device=config.device, log_every=10,
                                      metrics_format="jsonl", backend=config.backend,
                                      checkpoint_activations=config.checkpoint_activations)
        race_rows = race_module.race(race_tc, config.race_estimators, config.race_seconds, out / "race_runs",
                         points=config.race_points, eval_examples=config.eval_examples, eval_seed=config.seed,
                         progress=progress, log=log)
        names = list(config.race_estimators)
        study["race"] = {"seconds": config.race_seconds, "points": config.race_points, "lr": config.race_lr,
                         "grad_clip": config.race_grad_clip, "batch_size": config.batch_size,
                         "eval_examples": min(config.eval_examples, len(dataset.test)), "estimators": names,
                         "target": config.race_target, "rows": race_rows,
                         **summarise(race_rows, names, config.race_target)}

    # 4. the learned schedule's interior, as initialised and trained for variance, at the same θ
    if config.schedule_steps:
        from .schedule import learned_schedule_rows

        def save(stage, name, idata):
            idata.to_netcdf(str(out / "draws" / f"schedule-{stage}-{name}.nc"))

        section = learned_schedule_rows(twin, x0, dataset.train, estimators=estimators, replicates=config.replicates,
                                        steps=config.schedule_steps, lr=config.schedule_lr,
                                        batch_size=config.batch_size, seed=config.seed, progress=progress,
                                        on_draws=save)
        study["learned_schedule"] = section
        for c in section["comparison"]:
            log(f"learned schedule {c['estimator']:15s} variance trained / initial {c['ratio']:.3g} ± "
                f"{c['ratio_se']:.2g} (ELBO means differ by {c['mean_difference']:.3g} ± {c['mean_difference_se']:.2g})")

    meta["seconds"] = round(time.monotonic() - started, 1)
    (out / "study.json").write_text(json.dumps(study, indent=2, default=float) + "\n")
    report.render(study, out)
    saved.finish()  # the study is written: its progress is no longer needed
    return study


def command_line() -> str:
    """The command line of this process as ``ppl-diffusion ...``, quoted for a shell (for the report)."""
    return "ppl-diffusion " + " ".join(shlex.quote(a) for a in sys.argv[1:])


__all__ = ["DEFAULT_ESTIMATORS", "RACE_ESTIMATORS", "STUDY_ESTIMATORS", "StudyConfig", "make_study_estimator",
           "measure", "per_t_moments", "run_study", "speedups", "time_to_reach"]
