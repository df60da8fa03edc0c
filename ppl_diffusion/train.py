"""Training: the loop behind ``ppl-diffusion train``, with exact resume.

:func:`train` minimises ``estimator.differentiable_loss(diffusion.model, guide, x0) / B`` (−ELBO in
nats per example) with Adam, a linear learning-rate warm-up, gradient-norm clipping and an
exponential moving average (EMA) of the weights. The run folder holds

=======================  ===================================================================
``config.json``          the full :class:`TrainConfig`
``metrics.jsonl``        one JSON object per logged step (or ``metrics.csv``): ``step``, ``loss``
                         (nats/example), ``bpd`` (loss / (D ln 2)), ``running_bpd``, ``lr``,
                         ``grad_norm``, ``elapsed`` (seconds)
``ckpt-{step:08d}.pt``   checkpoints every ``checkpoint_every`` steps and at the end; the last
                         ``keep_checkpoints`` are kept (:mod:`ppl_diffusion.checkpoint`)
=======================  ===================================================================

A checkpoint holds the denoiser, the optimizer, the EMA, the step, the importance sampler's loss
history, the batch order and every random generator, so on CPU a run interrupted (even by SIGKILL)
and resumed with ``resume=True`` ends with exactly the weights of an uninterrupted run. On resume the
metrics file is cut back to the restored step. If the newest checkpoint is unreadable, resume warns
and falls back to the newest readable one (it is then overwritten when training passes its step).

A non-finite loss or gradient norm stops training with :class:`TrainingDiverged` before the
optimizer step; no checkpoint is written, so the last good one stays intact.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pyro
import torch

from .checkpoint import (CheckpointError, atomic_write_bytes, checkpoint_path, list_checkpoints, load_checkpoint,
                         prune_checkpoints, remove_stale_temporaries, rng_state, save_checkpoint, set_rng_state)
from .data import DATASETS, load_dataset
from .diffusion import VARIANCES, GaussianDiffusion
from .infer import ESTIMATORS, make_estimator
from .nets import UNET_PRESETS, MLPDenoiser, unet_preset
from .priors import PRIORS, make_prior
from .schedule import NoiseSchedule

FORMAT = "ppl_diffusion.train/1"
SCHEDULES = {"linear": NoiseSchedule.linear, "cosine": NoiseSchedule.cosine}
DEVICES = ("auto", "cpu", "cuda")
METRICS_FORMATS = {"jsonl": "metrics.jsonl", "csv": "metrics.csv"}
METRIC_FIELDS = ("step", "loss", "bpd", "running_bpd", "lr", "grad_norm", "elapsed")
# Keys that may change between a run and its resume: the budget and bookkeeping, not the model or the
# optimisation (changing ``device`` is allowed, but exactness is promised only on the same device).
RESUMABLE_KEYS = ("steps", "minutes", "checkpoint_every", "keep_checkpoints", "log_every", "device",
                  "metrics_format", "backend")
BACKENDS = ("pyro", "numpyro")
_NON_FINITE = re.compile(r"\b(nan|inf)\b")
RUNNING_DECAY = 0.98  # smoothing of the running loss shown in the progress bar


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN or infinite."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run folder."""

    data: str = "digits"  # a name in ppl_diffusion.data.DATASETS
    data_root: str | None = None  # folder for the datasets read from files (mnist, cifar10, image_folder)
    estimator: str = "stochastic-kl-is"  # a name in ppl_diffusion.infer.ESTIMATORS
    schedule: str = "linear"  # "linear" (DDPM, scaled by 1000/T) or "cosine" (improved DDPM)
    T: int = 1000  # diffusion steps
    variance: str = "beta"  # reverse variance σ_t²: "beta", "posterior" or "learned" (improved DDPM)
    prior: str = "normal"  # p(x_T): a name in ppl_diffusion.priors.PRIORS (learned ones train with the net)
    net: str = "digits"  # a U-Net preset name (digits, mnist, cifar10) or "mlp" for vector data
    batch_size: int = 128  # examples per optimizer step
    lr: float = 2e-4  # Adam learning rate after warm-up (DDPM's)
    warmup_steps: int = 1000  # linear warm-up of the learning rate from lr / warmup_steps; 0 for none
    grad_clip: float | None = 1.0  # max global gradient norm (DDPM); None for no clipping
    ema_decay: float = 0.999  # EMA of the weights; DDPM uses 0.9999 for 800k steps, 0.999 suits short runs
    steps: int | None = None  # budget in optimizer steps (total, counting resumed ones) ...
    minutes: float | None = None  # ... and/or in wall-clock minutes (total); training stops at the first
    checkpoint_every: int = 1000  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept in the run folder
    log_every: int = 10  # steps between metric lines
    metrics_format: str = "jsonl"  # "jsonl" (metrics.jsonl) or "csv" (metrics.csv)
    seed: int = 0  # seeds torch, numpy, random (pyro.set_rng_seed) and the batch order
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda" or "cuda:N"
    backend: str = "pyro"  # "pyro" (PyTorch) or "numpyro" (JAX, jit-compiled); checkpoints are shared

    def validate(self) -> "TrainConfig":
        """Check every field; raise a one-line ``ValueError`` naming the value and the fix."""
        def positive_int(name, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} = {v!r}; pass a positive integer (--{name.replace('_', '-')})")

        def choice(name, known):
            v = getattr(self, name)
            if v not in known:
                raise ValueError(f"unknown {name} {v!r}; choose one of {sorted(known)}")

        choice("data", DATASETS)
        choice("estimator", ESTIMATORS)
        choice("schedule", SCHEDULES)
        choice("variance", [*VARIANCES, "learned"])
        choice("prior", PRIORS)
        if self.estimator == "hybrid" and self.variance != "learned":
            raise ValueError("estimator 'hybrid' trains a learned variance; pass --variance learned (or another "
                             "--estimator)")
        choice("net", [*UNET_PRESETS, "mlp"])
        choice("metrics_format", METRICS_FORMATS)
        choice("backend", BACKENDS)
        for name in ("T", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            positive_int(name)
        positive_int("steps", allow_none=True)
        if self.minutes is not None and not (isinstance(self.minutes, (int, float)) and self.minutes > 0):
            raise ValueError(f"minutes = {self.minutes!r}; pass a positive number of minutes (--minutes)")
        if self.steps is None and self.minutes is None:
            raise ValueError("no training budget; pass steps (--steps N) or minutes (--minutes M)")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr = {self.lr!r}; pass a positive learning rate (--lr), e.g. 2e-4")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps = {self.warmup_steps!r}; pass an integer >= 0 (--warmup-steps)")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise ValueError(f"grad_clip = {self.grad_clip!r}; pass a positive max gradient norm or None (--grad-clip)")
        if not (isinstance(self.ema_decay, (int, float)) and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"ema_decay = {self.ema_decay!r}; pass a decay in [0, 1), e.g. 0.999 (--ema-decay)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed = {self.seed!r}; pass an integer (--seed)")
        if self.backend == "numpyro":
            if self.prior != "normal" or self.estimator == "hybrid":
                what = f"prior {self.prior!r}" if self.prior != "normal" else "estimator 'hybrid'"
                raise ValueError(f"{what} trains on --backend pyro only (so far); drop --backend numpyro")
            if self.device not in ("auto", "cpu"):
                raise ValueError(f"device = {self.device!r} with backend numpyro: JAX picks its own device (a GPU "
                                 "when jax has CUDA support); pass --device auto or cpu")
            _require_jax()
        resolve_device(self.device)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    run_dir: Path
    step: int  # optimizer steps taken in all (resumed ones included)
    loss: float | None  # the last step's loss, nats per example (None if no step ran in this call)
    running_bpd: float | None  # smoothed bits/dim
    stopped_by: str  # "steps" or "minutes"
    checkpoint: Path  # the final checkpoint
    diffusion: GaussianDiffusion  # the model with the trained (not averaged) weights (the NumPyro twin with backend numpyro)
    ema: dict  # EMA of the denoiser's state_dict
    elapsed: float = 0.0  # seconds spent training, resumed time included (startup and checkpoint loading excluded)


def _require_jax() -> None:
    try:
        import flax  # noqa: F401
        import jax  # noqa: F401
        import numpyro  # noqa: F401
    except ImportError as e:
        raise ValueError(f"backend numpyro needs jax, numpyro and flax ({e.name} is missing); install them with "
                         "pip install -c constraints.txt -e '.[jax]'") from None


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → cuda if available else cpu; checks that cuda is there when asked for."""
    if not isinstance(device, str) or not (device in DEVICES or device.startswith("cuda:")):
        raise ValueError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s); "
                             f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return dev


def build_diffusion(config: TrainConfig, dataset) -> GaussianDiffusion:
    """The :class:`GaussianDiffusion` of ``config`` for data of ``dataset.event_shape`` and ``dataset.decoder``."""
    event_shape = tuple(dataset.event_shape)
    learn_sigma = config.variance == "learned"
    if config.net == "mlp":
        net = MLPDenoiser(dim=math.prod(event_shape), learn_sigma=learn_sigma)
    else:
        preset = UNET_PRESETS[config.net]
        expected = (preset["in_channels"], preset["image_size"], preset["image_size"])
        if event_shape != expected:
            fits = [n for n, p in UNET_PRESETS.items()
                    if (p["in_channels"], p["image_size"], p["image_size"]) == event_shape]
            fix = f"use --net {fits[0]}" if fits else ("use --net mlp" if len(event_shape) == 1 else
                                                        "choose a preset of that image size")
            raise ValueError(f"net preset {config.net!r} expects examples of shape {list(expected)} but data "
                             f"{config.data!r} has {list(event_shape)}; {fix}")
        net = unet_preset(config.net, learn_sigma=learn_sigma)
    prior = None if config.prior == "normal" else make_prior(config.prior, event_shape)
    return GaussianDiffusion(schedule=SCHEDULES[config.schedule](config.T), denoiser=net, event_shape=event_shape,
                             decoder=dataset.decoder, variance=config.variance, prior=prior)


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step ``step`` (1-based): linear warm-up, then constant."""
    if config.warmup_steps <= 0:
        return config.lr
    return config.lr * min(1.0, step / config.warmup_steps)


# ---------------------------------------------------------------------------------------- run folder
def _config_diff(saved: dict, config: TrainConfig) -> list[str]:
    now = config.to_dict()
    keys = sorted((set(saved) | set(now)) - set(RESUMABLE_KEYS))
    return [f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


class MetricsLog:
    """Metric rows appended to ``metrics.jsonl`` or ``metrics.csv``, cut back to a step on resume."""

    def __init__(self, run_dir: Path, fmt: str, upto_step: int) -> None:
        self.path = run_dir / METRICS_FORMATS[fmt]
        self.fmt = fmt
        rows = self._read(upto_step)
        buf = io.StringIO()
        if fmt == "csv":
            writer = csv.DictWriter(buf, METRIC_FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        else:
            buf.writelines(json.dumps(r) + "\n" for r in rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())
        self.file = open(self.path, "a", newline="")

    def _read(self, upto_step: int) -> list[dict]:
        """The rows of the existing file with step <= ``upto_step``; torn or unparsable lines dropped."""
        if upto_step == 0 or not self.path.exists():
            return []
        rows = []
        with open(self.path, newline="") as f:
            lines = list(csv.DictReader(f)) if self.fmt == "csv" else f.read().splitlines()
        for line in lines:
            try:
                row = line if self.fmt == "csv" else json.loads(line)
                if int(row["step"]) <= upto_step and all(row.get(k) not in (None, "") for k in METRIC_FIELDS):
                    rows.append({k: row[k] for k in METRIC_FIELDS})
            except (ValueError, KeyError, TypeError):
                continue
        return rows

    def write(self, row: dict) -> None:
        if self.fmt == "csv":
            csv.DictWriter(self.file, METRIC_FIELDS, lineterminator="\n").writerow(row)
        else:
            self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# ---------------------------------------------------------------------------------------- batches
class BatchStream:
    """Minibatch indices from successive random permutations of 0..N−1, with a checkpointable state."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.generator)
        self.pos = 0

    def next(self, batch_size: int) -> torch.Tensor:
        parts, need = [], batch_size
        while need > 0:
            if self.pos == self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.generator), 0
            take = min(need, self.n - self.pos)
            parts.append(self.perm[self.pos:self.pos + take])
            self.pos, need = self.pos + take, need - take
        return torch.cat(parts)

    def state_dict(self) -> dict:
        return {"n": self.n, "generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        if int(state["n"]) != self.n:
            raise ValueError(f"batch order saved for {state['n']} training examples, the data has {self.n}")
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])


# ---------------------------------------------------------------------------------------- backends
class _NonFiniteOutput(Exception):
    """The denoiser produced NaN or inf (Pyro's validation refused a distribution's parameters)."""


class PyroTrainer:
    """One training step at a time on the Pyro backend: ``estimator.differentiable_loss / B``, backward,
    gradient-norm clipping, Adam and the EMA update. :class:`ppl_diffusion.numpyro.train.NumPyroTrainer`
    is its twin on JAX; :func:`train` drives either."""

    def __init__(self, config: TrainConfig, dataset, device: torch.device) -> None:
        self.train_x = dataset.train.to(device)
        self.device = device
        pyro.clear_param_store()
        pyro.set_rng_seed(config.seed)
        self.diffusion = build_diffusion(config, dataset).to(device)
        self.net = self.diffusion.denoiser
        self.estimator = make_estimator(config.estimator)
        self.guide = self.estimator.guide(self.diffusion)
        loss = self.estimator.loss
        self.sampler = loss.get_sampler(config.T) if hasattr(loss, "get_sampler") else None
        prior = self.diffusion.prior
        self.prior = prior if isinstance(prior, torch.nn.Module) and next(prior.parameters(), None) is not None else None
        self.params = list(self.net.parameters()) + ([] if self.prior is None else list(self.prior.parameters()))
        self.optimizer = torch.optim.Adam(self.params, lr=lr_at(config, 1))
        self.ema = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.prior_ema = None if self.prior is None else {k: v.detach().clone() for k, v in self.prior.state_dict().items()}
        self.config = config
        self.net.train()

    def step(self, index: torch.Tensor, lr: float) -> tuple[float, float]:
        """One optimizer step on the examples ``index``: (loss in nats per example, gradient norm); no update
        when either is not finite."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x0 = self.train_x[index.to(self.device)]
        try:
            loss = self.estimator.loss.differentiable_loss(self.diffusion.model, self.guide, x0) / x0.shape[0]
        except ValueError as e:  # Pyro's validation refuses a distribution with NaN / inf parameters
            if "invalid values" not in str(e) or not _NON_FINITE.search(str(e)):
                raise
            raise _NonFiniteOutput() from e
        if not torch.isfinite(loss):
            return loss.item(), float("nan")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if not torch.isfinite(grad_norm):
            return loss.item(), grad_norm.item()
        self.optimizer.step()
        with torch.no_grad():
            for module, ema in ((self.net, self.ema), (self.prior, self.prior_ema)):
                if module is None:
                    continue
                for k, v in module.state_dict().items():
                    if v.is_floating_point():
                        ema[k].lerp_(v, 1.0 - self.config.ema_decay)
                    else:
                        ema[k].copy_(v)
        return loss.item(), grad_norm.item()

    def state(self) -> dict:
        state = {"model": self.net.state_dict(), "ema": self.ema, "optimizer": self.optimizer.state_dict(),
                 "sampler": None if self.sampler is None else self.sampler.state_dict()}
        if self.prior is not None:
            state.update(prior=self.prior.state_dict(), prior_ema=self.prior_ema)
        return state

    def load(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        for k, v in state["ema"].items():
            self.ema[k].copy_(v)
        if self.prior is not None:
            self.prior.load_state_dict(state["prior"])
            for k, v in state["prior_ema"].items():
                self.prior_ema[k].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])

    def rng_state(self) -> None:
        return None  # torch's generator is in the checkpoint's global "rng"

    def set_rng_state(self, saved) -> None:
        pass

    def result(self) -> tuple[GaussianDiffusion, dict]:
        return self.diffusion, self.ema


def _make_trainer(config: TrainConfig, dataset, device: torch.device):
    if config.backend == "numpyro":
        from .numpyro.train import NumPyroTrainer

        return NumPyroTrainer(config, dataset, build_diffusion)
    return PyroTrainer(config, dataset, device)


# ---------------------------------------------------------------------------------------- the loop
def _restore(path: Path, config: TrainConfig, trainer, batches) -> dict:
    state = load_checkpoint(path)
    if state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state.get('format')!r}, expected {FORMAT!r}; "
                              "it was not written by this version of ppl_diffusion.train")
    diff = _config_diff(state.get("config", {}), config)
    if diff:
        raise CheckpointError(f"checkpoint {path} is from a different configuration ({'; '.join(diff)}); "
                              "resume with the saved settings or start a new run folder")
    try:
        trainer.load(state)
        batches.load_state_dict(state["batches"])
        rng = state["rng"]
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} does not fit this model ({reason}); "
                              "resume with the configuration that wrote it or start a new run folder") from None
    set_rng_state(rng)
    # The backend's own generators (JAX keys); None when the checkpoint was written by the other backend.
    saved_backend = state.get("config", {}).get("backend", "pyro")
    trainer.set_rng_state(rng.get(config.backend) if saved_backend == config.backend else None)
    return state


def _find_resume_point(run_dir: Path, restore) -> dict:
    """Restore the newest readable checkpoint; warn about unreadable newer ones."""
    found = list_checkpoints(run_dir)
    if not found:
        raise ValueError(f"nothing to resume in {run_dir}: it holds no ckpt-*.pt checkpoint; "
                         "start without --resume (or point to the run folder that has them)")
    errors = []
    for path in reversed(found):
        try:
            return restore(path)
        except CheckpointError as e:
            if "different configuration" in str(e) or "does not fit" in str(e):
                raise
            errors.append(str(e))
            warnings.warn(f"{e}; trying the previous checkpoint", UserWarning, stacklevel=3)
    raise CheckpointError(f"no readable checkpoint in {run_dir}: {errors[0]} (and {len(errors) - 1} more)")


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train the diffusion model of ``config``, writing config, metrics and checkpoints to ``run_dir``.

    :param TrainConfig config: the run's settings (validated here); ``config.backend`` picks Pyro or NumPyro.
    :param run_dir: the run folder; created if missing.
    :param bool resume: continue from the newest checkpoint in ``run_dir`` (an error if there is none,
        or if the saved configuration differs in a key other than :data:`RESUMABLE_KEYS`). Without it,
        a folder that already holds checkpoints is refused. The backend may change on resume (the
        checkpoint format is shared); exactness is promised on the same backend and device.
    :param bool progress: show a tqdm bar with the loss and the running bits/dim.
    :raises TrainingDiverged: on a NaN or infinite loss or gradient norm (no checkpoint written).
    """
    config.validate()
    run_dir = Path(run_dir)
    device = resolve_device(config.device)
    if resume:
        cfg_path = run_dir / "config.json"
        if cfg_path.exists():
            diff = _config_diff(json.loads(cfg_path.read_text()), config)
            if diff:
                raise ValueError(f"--resume with a configuration that differs from {cfg_path} ({'; '.join(diff)}); "
                                 "pass the saved settings or start a new run folder")
        elif not list_checkpoints(run_dir):
            raise ValueError(f"nothing to resume in {run_dir}: no config.json and no checkpoint; start without --resume")
    elif list_checkpoints(run_dir):
        raise ValueError(f"run folder {run_dir} already holds checkpoints; pass --resume to continue it "
                         "or choose a new folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)

    dataset = load_dataset(config.data, config.data_root) if config.data_root else load_dataset(config.data)
    data_meta = {"event_shape": list(dataset.event_shape), "decoder": dataset.decoder}
    trainer = _make_trainer(config, dataset, device)
    batches = BatchStream(len(dataset.train), config.seed)
    step, elapsed, running = 0, 0.0, None

    if resume:
        state = _find_resume_point(run_dir, lambda p: _restore(p, config, trainer, batches))
        step, elapsed, running = int(state["step"]), float(state["elapsed"]), state["running_loss"]
    _write_json(run_dir / "config.json", config.to_dict())
    metrics = MetricsLog(run_dir, config.metrics_format, step)
    num_dims = math.prod(dataset.event_shape)
    bpd = lambda nats: nats / (num_dims * math.log(2))  # noqa: E731

    def save(at_step: int) -> Path:
        metrics.file.flush()
        rng = rng_state()
        backend_rng = trainer.rng_state()
        if backend_rng is not None:
            rng[config.backend] = backend_rng
        path = save_checkpoint(checkpoint_path(run_dir, at_step), {
            "format": FORMAT, "step": at_step, "elapsed": elapsed, "running_loss": running,
            "config": config.to_dict(), "data": data_meta, **trainer.state(),
            "batches": batches.state_dict(), "rng": rng,
        })
        prune_checkpoints(run_dir, config.keep_checkpoints)
        return path

    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    last_saved = step if resume else None
    loss_value, stopped_by = None, "steps"
    started = time.monotonic() - elapsed
    try:
        while True:
            elapsed = time.monotonic() - started
            if config.steps is not None and step >= config.steps:
                break
            if config.minutes is not None and elapsed >= 60.0 * config.minutes:
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
            if step % config.log_every == 0:
                metrics.write({"step": step, "loss": loss_value, "bpd": bpd(loss_value), "running_bpd": bpd(running),
                               "lr": lr, "grad_norm": grad_norm, "elapsed": round(elapsed, 3)})
                bar.set_postfix(loss=f"{loss_value:.4g}", bpd=f"{bpd(running):.4g}", refresh=False)
            bar.update(1)
            if step % config.checkpoint_every == 0:
                save(step)
                last_saved = step
        if last_saved != step:
            save(step)
    finally:
        bar.close()
        metrics.close()
    diffusion, ema = trainer.result()
    return TrainResult(run_dir=run_dir, step=step, loss=loss_value,
                       running_bpd=None if running is None else bpd(running), stopped_by=stopped_by,
                       checkpoint=checkpoint_path(run_dir, step), diffusion=diffusion, ema=ema, elapsed=elapsed)


def _last(run_dir: Path) -> str:
    found = list_checkpoints(run_dir)
    return str(found[-1]) if found else "none (no checkpoint was written yet)"


def load_trained(path: str | Path, *, ema: bool = True, device="cpu", backend: str = "pyro"):
    """The trained model from a run folder (its newest checkpoint) or a checkpoint file, on either backend
    (the checkpoint format is shared): a :class:`GaussianDiffusion`, or with ``backend="numpyro"`` its
    :class:`ppl_diffusion.numpyro.GaussianDiffusion` twin holding the same weights.

    :param bool ema: load the EMA weights (default, as DDPM samples with) rather than the raw ones.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"no ckpt-*.pt checkpoint in {path}; train first or pass a checkpoint file")
        path = found[-1]
    state = load_checkpoint(path)
    if state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state.get('format')!r}, expected {FORMAT!r}")
    config = TrainConfig.from_dict(state["config"])
    meta = SimpleNamespace(event_shape=tuple(state["data"]["event_shape"]), decoder=state["data"]["decoder"])
    diffusion = build_diffusion(config, meta)
    diffusion.denoiser.load_state_dict(state["ema"] if ema else state["model"])
    if state.get("prior") is not None:
        diffusion.prior.load_state_dict(state["prior_ema"] if ema else state["prior"])
    if backend == "numpyro":
        _require_jax()
        from .numpyro.train import from_torch

        twin = from_torch(diffusion)
        twin.denoiser.eval()
        return twin
    return diffusion.to(device).eval()
