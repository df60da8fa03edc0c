"""Training: the loop behind ``ppl-diffusion train``, with exact resume.

:func:`~ppl_diffusion.train.loop.train` minimises ``estimator.differentiable_loss(diffusion.model, guide, x0) / B`` (−ELBO in
nats per example) with Adam, a linear learning-rate warm-up, gradient-norm clipping and an
exponential moving average (EMA) of the weights. The run folder holds

=======================  ===================================================================
``config.json``          the full :class:`~ppl_diffusion.train.config.TrainConfig`
``metrics.jsonl``        one JSON object per logged step (or ``metrics.csv``): ``step``, ``loss``
                         (nats/example), ``bpd`` (loss / (D ln 2)), ``running_bpd``, ``lr``,
                         ``grad_norm``, ``elapsed`` (seconds)
``ckpt-{step:08d}.pt``   checkpoints every ``checkpoint_every`` steps and at the end; the last
                         ``keep_checkpoints`` are kept (:mod:`ppl_diffusion.checkpoint`)
``best.pt``              with ``val_examples``: the weights of the checkpoint with the lowest
                         validation bits/dim so far (:mod:`~ppl_diffusion.train.validation`);
                         the metrics rows of the checkpoint steps then carry ``val_bpd``
=======================  ===================================================================

A checkpoint holds the denoiser, the optimizer, the EMA, the step, the importance sampler's loss
history, the batch order and every random generator, so on CPU a run interrupted (even by SIGKILL)
and resumed with ``resume=True`` ends with exactly the weights of an uninterrupted run (at the same thread
count: torch's CPU kernels round differently with another, so each checkpoint records ``threads``). On resume the
metrics file is cut back to the restored step. If the newest checkpoint is unreadable, resume warns
and falls back to the newest readable one (it is then overwritten when training passes its step).

A non-finite loss or gradient norm stops training with :class:`~ppl_diffusion.train.loop.TrainingDiverged` before the
optimizer step; no checkpoint is written, so the last good one stays intact.

A call that fails before the folder holds a checkpoint (a bad data folder, a net that does not fit the data,
an exception or ``KeyboardInterrupt`` in the first steps, a divergence) leaves the folder as it found it: the
folders it made are removed, and ``config.json`` and the metrics file are put back as they were (removed if
they were not there). A run without a checkpoint can be neither resumed nor evaluated, and the error says what
went wrong. Only a SIGKILL leaves them behind; the next start overwrites them.

``config.data_root`` is stored absolute (``run_dir.absolute_data_root``), so the run evaluates from any
current folder; it may change on resume (the data moved).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import (BEST_NAME, checkpoint_path, list_checkpoints, prune_checkpoints, remove_stale_temporaries,
                          rng_state, save_checkpoint)
from .. import distributed
from ..data import load_dataset
from ..diffusion import GaussianDiffusion
from ..nets import NetWarning
from ..nets.build import describe_net
from .batches import BatchStream
from .config import (FORMAT, BudgetWarning, TrainConfig, budget_warnings, lr_at, resolve_device,
                     with_data_settings)
from .pyro_trainer import _NonFiniteOutput, make_trainer
from .run_dir import (FreshStart, MetricsLog, NullMetricsLog, _apply, _config_diff, _find_resume_point, _last,
                      _restore, _write_json, absolute_data_root, check_run_dir)
from .validation import Validation

__all__ = ["TrainResult", "TrainingDiverged", "train"]

RUNNING_DECAY = 0.98  # smoothing of the running loss shown in the progress bar


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN or infinite.

    Raised by :func:`~ppl_diffusion.train.loop.train` before the optimizer step; no checkpoint is written, and a run folder without one is
    left as it was found.

    Example:

    >>> import tempfile
    >>> from ppl_diffusion.train import TrainConfig, TrainingDiverged, train
    >>> config = TrainConfig(data="gaussian", net="mlp", net_config={"width": 16, "depth": 1}, T=10, batch_size=4,
    ...                      steps=3, warmup_steps=0, ema_decay=0.0, lr=1e30, grad_clip=None)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     try:
    ...         train(config, f"{folder}/run", progress=False)
    ...     except TrainingDiverged as error:
    ...         print(str(error).split(";")[0])
    loss is inf at step 2 (lr 1e+30)
    """



@dataclass
class TrainResult:
    """What :func:`~ppl_diffusion.train.loop.train` returns.

    :ivar pathlib.Path run_dir: the run folder.
    :ivar int step: optimizer steps taken in all (resumed ones included).
    :ivar loss: the last step's loss, nats per example (``None`` if no step ran in this call).
    :ivar running_bpd: the smoothed bits/dim.
    :ivar str stopped_by: ``"steps"`` or ``"minutes"``.
    :ivar pathlib.Path checkpoint: the final checkpoint.
    :ivar diffusion: the model with the trained (not averaged) weights (the NumPyro twin with backend numpyro).
    :ivar dict ema: the EMA of the denoiser's ``state_dict``.
    :ivar float elapsed: seconds spent training, resumed time included.
    :ivar best_step: with ``val_examples``, the best checkpoint's step (else ``None``).
    :ivar best_val_bpd: with ``val_examples``, its validation bits/dim.
    :ivar best: with ``val_examples``, ``RUN/best.pt``.

    Example (one optimizer step of an MLP on a 2-D Gaussian, no validation):

    >>> import tempfile
    >>> from ppl_diffusion.train import TrainConfig, train
    >>> config = TrainConfig(data="gaussian", net="mlp", net_config={"width": 16, "depth": 1}, T=10,
    ...                      batch_size=4, steps=1, warmup_steps=0, ema_decay=0.0)
    >>> with tempfile.TemporaryDirectory() as run:
    ...     result = train(config, run, progress=False, log=lambda line: None)
    >>> result.step, result.stopped_by, result.loss > 0, result.best_step, result.best
    (1, 'steps', True, None, None)
    >>> type(result.diffusion).__name__, sorted(result.ema) == sorted(result.diffusion.denoiser.state_dict())
    ('GaussianDiffusion', True)
    """

    run_dir: Path
    step: int  # optimizer steps taken in all (resumed ones included)
    loss: float | None  # the last step's loss, nats per example (None if no step ran in this call)
    running_bpd: float | None  # smoothed bits/dim
    stopped_by: str  # "steps" or "minutes"
    checkpoint: Path  # the final checkpoint
    # the model with the trained (not averaged) weights (the NumPyro twin with backend numpyro); not in the repr
    diffusion: GaussianDiffusion = dataclasses.field(repr=False)
    ema: dict = dataclasses.field(repr=False)  # EMA of the denoiser's state_dict
    elapsed: float = 0.0  # seconds spent training, resumed time included (startup and checkpoint loading excluded)
    # with config.val_examples: the best checkpoint's step and validation bits/dim, and RUN/best.pt (else None)
    best_step: int | None = None
    best_val_bpd: float | None = None
    best: Path | None = None


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool | str = False, progress: bool = True,
          allow_inexact_resume: bool = False, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train the diffusion model of ``config``, writing config, metrics and checkpoints to ``run_dir``.

    Under ``torchrun`` (after :func:`ppl_diffusion.distributed.init`) the run is data-parallel:
    ``config.batch_size`` is the global batch, split evenly over the ranks, and the result equals the 1-process
    run up to float32 reduction order (see :mod:`ppl_diffusion.train.pyro_trainer`); rank 0 writes the files.

    :param TrainConfig config: the run's settings (validated here); ``config.backend`` picks Pyro or NumPyro.
        ``config.world_size`` is set here from the job.
    :param run_dir: the run folder; created if missing.
    :param bool resume: continue from the newest checkpoint in ``run_dir`` (an error if there is none,
        or if the saved configuration differs in a key other than :data:`~ppl_diffusion.train.config.RESUMABLE_KEYS`). Without it,
        a folder that already holds checkpoints is refused. The backend may change on resume (the
        checkpoint format is shared); exactness is promised on the same backend and device. ``"auto"``
        resumes when the folder holds a checkpoint and starts otherwise (for requeued jobs). The number of
        processes may change too (same global batch): exact where every draw is sliced from the global batch,
        otherwise refused unless ``allow_inexact_resume`` (see ``run_dir.world_size_change_is_exact``).
    :param bool progress: show a tqdm bar with the loss and the running bits/dim (rank 0).
    :param bool allow_inexact_resume: resume on another world size even where it cannot be exact (a warning).
    :param log: called (rank 0) with one line before the first step: the net and its settings as built
        (``ppl_diffusion.nets.build.describe_net``), its parameters, and the examples it trains on; the CLI
        passes ``print``.
    :raises TrainingDiverged: on a NaN or infinite loss or gradient norm (no checkpoint written).

    A call that fails before ``run_dir`` holds a checkpoint leaves it as it found it (see the module).

    Example (one optimizer step of an MLP on a 2-D Gaussian):

    >>> import os
    >>> import tempfile
    >>> from ppl_diffusion.train import TrainConfig, train
    >>> config = TrainConfig(data="gaussian", net="mlp", net_config={"width": 16, "depth": 1}, T=10,
    ...                      batch_size=4, steps=1, warmup_steps=0, ema_decay=0.0)
    >>> with tempfile.TemporaryDirectory() as run:
    ...     result = train(config, run, progress=False)
    ...     files = sorted(os.listdir(run))
    >>> result.step, result.stopped_by, result.checkpoint.name
    (1, 'steps', 'ckpt-00000001.pt')
    >>> files
    ['ckpt-00000001.pt', 'config.json', 'metrics.jsonl']
    """
    # The process that prepares the folder (rank 0) notes what it is like now, to put it back on failure.
    fresh = FreshStart(check_run_dir(run_dir)) if distributed.world().is_main else None
    try:
        return _train(config, run_dir, resume=resume, progress=progress, allow_inexact_resume=allow_inexact_resume,
                      log=log)
    except BaseException:
        if fresh is not None:
            fresh.undo()
        raise


def _train(config: TrainConfig, run_dir: str | Path, *, resume: bool | str, progress: bool,
           allow_inexact_resume: bool, log: Callable[[str], None] | None) -> TrainResult:
    world = distributed.world()
    config = dataclasses.replace(config, world_size=world.world_size,
                                 data_root=absolute_data_root(config.data_root)).resolved()  # config.json's values
    config.validate()
    if world.distributed and config.backend == "numpyro":
        raise ValueError("backend numpyro runs data-parallel over JAX devices in one process per host, not under "
                         "torchrun; start it without torchrun (see docs/backends.md, Scaling out)")
    world.local_batch(config.batch_size)  # a one-line error unless the global batch splits evenly
    run_dir = check_run_dir(run_dir)
    dataset = load_dataset(config.data, config.data_root) if config.data_root else load_dataset(config.data)
    config, auto_choice = with_data_settings(config, dataset)  # fourier_features "auto" → the data's exponents
    device = resolve_device(distributed.local_device(config.device))
    if resume == "auto":  # decided on rank 0, whose file system holds the run folder
        resume = world.on_main(lambda: bool(list_checkpoints(run_dir)))

    def prepare():
        if resume:
            cfg_path = run_dir / "config.json"
            if cfg_path.exists():
                diff = _config_diff(json.loads(cfg_path.read_text()), config)
                if diff:
                    raise ValueError(f"--resume with a configuration that differs from {cfg_path} "
                                     f"({'; '.join(diff)}); drop the flags that change it (ppl-diffusion train "
                                     "--resume takes the saved settings of every flag not given) or start a new run "
                                     "folder")
            elif not list_checkpoints(run_dir):
                raise ValueError(f"nothing to resume in {run_dir}: no config.json and no checkpoint; start without "
                                 "--resume")
        elif list_checkpoints(run_dir):
            raise ValueError(f"run folder {run_dir} already holds checkpoints; pass --resume to continue it "
                             "or choose a new folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)

    world.on_main(prepare)

    # The process that writes files: rank 0 of a torchrun job; with NumPyro on several hosts, JAX's process 0.
    writer = world.is_main
    if config.backend == "numpyro":
        from ..numpyro.distributed import initialize, is_main as jax_is_main

        initialize()  # before any JAX computation: a multi-host job is joined first
        writer = jax_is_main()
    data_meta = {"event_shape": list(dataset.event_shape), "decoder": dataset.decoder}
    validation = None
    if config.val_examples:  # the trainer sees the training split less the held-out examples
        validation = Validation(config, dataset, device)
        dataset = validation.dataset
    trainer = make_trainer(config, dataset, device, world)
    batches = BatchStream(len(dataset.train), config.seed)

    def write_best() -> None:
        """RUN/best.pt from the validation's best weights (removed while there are none)."""
        best = None if validation is None else validation.best_checkpoint(fmt=FORMAT, config=config.to_dict(),
                                                                          data=data_meta)
        if best is not None:
            save_checkpoint(run_dir / BEST_NAME, best)
        else:
            (run_dir / BEST_NAME).unlink(missing_ok=True)
    step, elapsed, running = 0, 0.0, None

    if resume:
        # Rank 0 finds and reads the checkpoint (no shared file system needed) and hands it to the others.
        found = world.on_main(lambda: _find_resume_point(
            run_dir, lambda p: (p, _restore(p, config, trainer, batches, world, allow_inexact_resume))))
        if not world.is_main:
            _apply(found[0], found[1], config, trainer, batches, world, allow_inexact_resume)
        state = found[1]
        step, elapsed, running = int(state["step"]), float(state["elapsed"]), state["running_loss"]
        if validation is not None:
            validation.load_state_dict(state.get("validation"))
    if writer:
        _write_json(run_dir / "config.json", config.to_dict())
        metrics = MetricsLog(run_dir, config.metrics_format, step, validation=validation is not None)
        # best.pt as the restored (or fresh) state has it: one written after the checkpoint resumed from goes
        write_best()
    else:
        metrics = NullMetricsLog()
    num_dims = math.prod(dataset.event_shape)
    bpd = lambda nats: nats / (num_dims * math.log(2))  # noqa: E731

    def validate(at_step: int) -> float | None:
        """The validation bits/dim of the EMA weights now (rank 0's, sent to all), best.pt rewritten when it is
        the best so far; ``None`` without validation."""
        if validation is None:
            return None
        weights = trainer.state()
        val_bpd = world.on_main(lambda: validation.estimate(weights))
        if validation.record(at_step, val_bpd, weights) and writer:
            write_best()
        return val_bpd

    def save(at_step: int) -> Path:
        metrics.file.flush()
        rng = rng_state()
        backend_rng = trainer.rng_state()
        if backend_rng is not None:
            rng[config.backend] = backend_rng
        ranks = world.gather_objects(rng) if world.distributed else None  # every rank's own generators
        path = checkpoint_path(run_dir, at_step)
        if writer:
            save_checkpoint(path, {
                "format": FORMAT, "step": at_step, "elapsed": elapsed, "running_loss": running,
                "config": config.to_dict(), "world_size": world.world_size, "data": data_meta, **trainer.state(),
                "threads": torch.get_num_threads(),  # provenance: float rounding may depend on it, the model does not
                "batches": batches.state_dict(), "rng": rng, "rank_rng": ranks,
                **({} if validation is None else {"validation": validation.state_dict()}),
            })
            prune_checkpoints(run_dir, config.keep_checkpoints)
        return path

    if writer:
        if log is not None:
            held = f" ({config.val_examples} more held out for validation)" if validation is not None else ""
            log(f"{describe_net(config.net, dataset.event_shape, config.net_config, parameters=trainer.num_parameters)}"
                f"; {len(dataset.train):,} {config.data} training examples of shape {list(dataset.event_shape)}{held}")
        if auto_choice is not None:  # fourier_features "auto": (exponents, reason, warning)
            _, reason, uneven = auto_choice
            if log is not None:
                log(reason)
            if uneven:
                warnings.warn(uneven, NetWarning, stacklevel=3)  # the CLI prints it as one line
        for message in budget_warnings(config, len(dataset.train)):
            warnings.warn(message, BudgetWarning, stacklevel=3)

    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=step, disable=not (progress and writer), unit="step",
               dynamic_ncols=True)
    if world.distributed and world.is_main and progress:
        bar.write(f"data-parallel on {world.world_size} processes ({world.backend}): global batch "
                  f"{config.batch_size}, {config.batch_size // world.world_size} per rank")
    last_saved = step if resume else None
    loss_value, stopped_by, row = None, "steps", None
    started = time.monotonic() - elapsed
    try:
        while True:
            elapsed = time.monotonic() - started
            if config.steps is not None and step >= config.steps:
                break
            if config.minutes is not None and world.any(elapsed >= 60.0 * config.minutes):
                stopped_by = "minutes"
                break
            step += 1
            lr = lr_at(config, step)
            try:
                loss_value, grad_norm = trainer.step(batches.next(config.batch_size), lr)
            except _NonFiniteOutput as e:
                raise TrainingDiverged(
                    f"the denoiser produced non-finite values at step {step} (lr {lr:.3g}); stopped without a "
                    f"checkpoint, the last good one is {_last(run_dir)}; lower --lr, set --grad-clip or check "
                    "the data") from e.__cause__
            if not math.isfinite(loss_value):
                raise TrainingDiverged(
                    f"loss is {loss_value} at step {step} (lr {lr:.3g}); stopped without a checkpoint, the last "
                    f"good one is {_last(run_dir)}; lower --lr, set --grad-clip or check the data")
            if not math.isfinite(grad_norm):
                raise TrainingDiverged(
                    f"gradient norm is {grad_norm} at step {step} (loss {loss_value:.4g}); stopped without "
                    f"a checkpoint, the last good one is {_last(run_dir)}; lower --lr or set --grad-clip")
            running = loss_value if running is None else RUNNING_DECAY * running + (1 - RUNNING_DECAY) * loss_value
            elapsed = time.monotonic() - started
            row = {"step": step, "loss": loss_value, "bpd": bpd(loss_value), "running_bpd": bpd(running),
                   "lr": lr, "grad_norm": grad_norm, "elapsed": round(elapsed, 3)}
            checkpoint_now = step % config.checkpoint_every == 0
            val_bpd = validate(step) if checkpoint_now else None
            if step % config.log_every == 0 or val_bpd is not None:
                metrics.write(row if val_bpd is None else {**row, "val_bpd": val_bpd})
                bar.set_postfix(loss=f"{loss_value:.4g}", bpd=f"{bpd(running):.4g}", refresh=False,
                                **({} if validation is None or validation.best is None
                                   else {"best_val": f"{validation.best['val_bpd']:.4g}"}))
            bar.update(1)
            if checkpoint_now:
                save(step)
                last_saved = step
        if last_saved != step:  # the final checkpoint, between the regular ones: validated too
            val_bpd = validate(step)
            if val_bpd is not None and row is not None:
                metrics.write({**row, "val_bpd": val_bpd})
            save(step)
    finally:
        bar.close()
        metrics.close()
    diffusion, ema = trainer.result()
    best = None if validation is None else validation.best
    return TrainResult(run_dir=run_dir, step=step, loss=loss_value,
                       running_bpd=None if running is None else bpd(running), stopped_by=stopped_by,
                       checkpoint=checkpoint_path(run_dir, step), diffusion=diffusion, ema=ema, elapsed=elapsed,
                       best_step=None if best is None else best["step"],
                       best_val_bpd=None if best is None else best["val_bpd"],
                       best=None if best is None else run_dir / BEST_NAME)
