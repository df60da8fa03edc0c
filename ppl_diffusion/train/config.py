"""The run's settings: :class:`~ppl_diffusion.train.config.TrainConfig` (saved as ``config.json``), its validation, the device, and the
model a configuration builds (:func:`~ppl_diffusion.train.config.build_diffusion`) with its learning-rate schedule (:func:`~ppl_diffusion.train.config.lr_at`)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import torch

from ..data import DATASETS
from ..diffusion import LEARNED_VARIANCES, VARIANCES, GaussianDiffusion
from ..distributed import check_microbatch
from ..distributions import IMAGE_DECODERS
from ..infer import ESTIMATORS
from ..nets import (NET_BUILDERS, build_net, check_net_config, check_net_name, register_net,  # noqa: F401 (re-exported)
                    resolve_builder)
from ..nets.build import BUILTIN_NETS
from ..nets.remat import check_checkpointing
from ..precision import check_precision
from ..priors import PRIORS, make_prior
from . import schedules
from .schedules import SCHEDULES, build_schedule  # noqa: F401 (re-exported)

__all__ = ["BACKENDS", "DEVICES", "FORMAT", "METRICS_FORMATS", "RESUMABLE_KEYS", "BudgetWarning", "TrainConfig",
           "budget_warnings", "build_diffusion", "fourier_choice", "grey_levels", "lr_at", "resolve_device"]

#: The format tag of a training checkpoint (``state["format"]``).
FORMAT = "ppl_diffusion.train/1"
#: The devices ``TrainConfig.device`` names (besides ``cuda:N``).
DEVICES = ("auto", "cpu", "cuda")
#: The metrics file of each ``metrics_format``.
METRICS_FORMATS = {"jsonl": "metrics.jsonl", "csv": "metrics.csv"}
# Keys that may change between a run and its resume: the budget and bookkeeping, not the model or the
# optimisation (changing ``device`` or ``precision`` is allowed, but exactness is promised only on the same
# device and precision: the weights, Adam and the EMA are float32 at either precision, so a checkpoint does not
# depend on it). ``data_root`` is where the data is, not what it is: a run whose data moved resumes with the new one.
# ``checkpoint_activations`` and ``microbatch`` trade memory for time (a job requeued on a smaller GPU resumes with
# them): recomputing activations changes no number; another micro-batch size changes float rounding only.
#: The config keys that may change between a run and its resume (see the comment above in the source).
RESUMABLE_KEYS = ("steps", "minutes", "checkpoint_every", "keep_checkpoints", "log_every", "device",
                  "metrics_format", "backend", "precision", "world_size", "data_root", "checkpoint_activations",
                  "microbatch")
#: The training backends, ``pyro`` (PyTorch) and ``numpyro`` (JAX).
BACKENDS = ("pyro", "numpyro")


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run folder.

    A dataclass of keyword fields, each commented with its meaning and default in the source; ``ppl-diffusion
    train`` sets one from its flags (``--batch-size`` is ``batch_size``, and so on). :meth:`validate` checks them
    all; :meth:`to_dict` and :meth:`from_dict` are the JSON round trip of ``config.json``.

    Example:

    >>> from ppl_diffusion.train import TrainConfig
    >>> config = TrainConfig(data="gaussian", net="mlp", net_config={"width": 16}, T=10, steps=1)
    >>> config.validate() is config
    True
    >>> TrainConfig.from_dict(config.to_dict()) == config
    True
    >>> TrainConfig(steps=1, lr=-1).validate()
    Traceback (most recent call last):
    ...
    ValueError: lr = -1; pass a positive learning rate (--lr), e.g. 2e-4
    """

    data: str = "digits"  # a name in ppl_diffusion.data.DATASETS
    data_root: str | None = None  # folder of the file data sets (mnist, cifar10, image_folder); stored absolute
    estimator: str = "stochastic-kl-is"  # a name in ppl_diffusion.infer.ESTIMATORS
    # the forward process: a NoiseSchedule, "linear" (DDPM, scaled by 1000/T) or "cosine" (improved DDPM), or a γ
    # schedule (ppl_diffusion.train.schedules): "fixed-linear", "learned-scalar", "learned-net", "interpolated-linear",
    # "interpolated-cosine"
    schedule: str = "linear"
    T: int = 1000  # diffusion steps; 0 with a γ schedule: continuous time (T = ∞)
    # γ schedules only (None otherwise; train() writes their defaults): γ_0 and γ_1 (fixed, or where learned ones
    # start; VDM's -13.3 and 5.0), the net's time input ("gamma": γ rescaled over [gamma_min, gamma_max]; "step") and,
    # at T = 0, what trains the interior ("variance" of the estimate, the default for learned-net; "elbo")
    gamma_min: float | None = None
    gamma_max: float | None = None
    time_input: str | None = None
    schedule_objective: str | None = None
    # reverse variance σ_t²: "beta", "posterior", "learned" (improved DDPM), or for imported models "fixed-large" and
    # "learned-range" (improved DDPM's own FIXED_LARGE and LEARNED_RANGE)
    variance: str = "beta"
    prior: str = "normal"  # p(x_T): a name in ppl_diffusion.priors.PRIORS (learned ones train with the net)
    # the denoiser (ppl_diffusion.nets.build): "auto" (a U-Net sized for images, the MLP for vectors), "unet", a U-Net
    # preset (digits, mnist, cifar10), "mlp", "package.module:builder" (any importable builder), or a register_net name
    net: str = "auto"
    # the net's settings, passed to its builder: the U-Net's (model_channels, channel_mult, num_res_blocks,
    # attention_resolutions, dropout, ...: nets.UNET_SETTINGS), the MLP's (width, depth, emb_dim, dropout), or a
    # builder's keyword arguments; None for the defaults. JSON values (tuples are kept as lists).
    net_config: dict | None = None
    # p(x_0|x_1) of 8-bit data: None (the data's own: "discretized", DDPM's exact discretized Gaussian), "discretized"
    # or "vdm-categorical" (VDM's categorical over the 256 values, no denoiser call); continuous data: None only
    decoder: str | None = None
    betas: list | None = None  # β_1..β_T of schedule "custom" (an imported model's own schedule), else None
    source: dict | None = None  # where an imported model's weights came from (ppl-diffusion import); None if trained
    batch_size: int = 128  # examples per optimizer step
    lr: float = 2e-4  # Adam learning rate after warm-up (DDPM's)
    warmup_steps: int = 1000  # linear warm-up of the learning rate from lr / warmup_steps; 0 for none
    grad_clip: float | None = 1.0  # max global gradient norm (DDPM); None for no clipping
    # EMA of the weights, from the initial ones (it keeps ema_decay ** steps of them): DDPM uses 0.9999 for 800k steps;
    # 0.999 suits runs of 3,000 steps and more, a shorter run at most 1 - 3/steps (budget_warnings)
    ema_decay: float = 0.999
    steps: int | None = None  # budget in optimizer steps (total, counting resumed ones) ...
    minutes: float | None = None  # ... and/or in wall-clock minutes (total); training stops at the first
    checkpoint_every: int = 1000  # steps between checkpoints (one is always written at the end)
    # examples held out of the training split (chosen by the seed) whose estimated bound is computed at every
    # checkpoint; the best EMA weights by it are kept in best.pt (ppl_diffusion.train.validation); 0: off
    val_examples: int = 0
    keep_checkpoints: int = 3  # newest checkpoints kept in the run folder
    log_every: int = 10  # steps between metric lines
    metrics_format: str = "jsonl"  # "jsonl" (metrics.jsonl) or "csv" (metrics.csv)
    seed: int = 0  # seeds torch, numpy, random (pyro.set_rng_seed) and the batch order
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda" or "cuda:N"
    backend: str = "pyro"  # "pyro" (PyTorch) or "numpyro" (JAX, jit-compiled); checkpoints are shared
    precision: str = "fp32"  # the denoiser's arithmetic: "fp32" or "bf16" (autocast; weights, Adam, EMA stay float32)
    # memory against time (ppl_diffusion.nets.remat): "none"; "steps" recomputes each full-chain step's net call in the
    # backward pass (trace, meanfield); "blocks" also each block of a U-Net (any estimator). Changes no number.
    checkpoint_activations: str = "none"
    microbatch: int | None = None  # examples per micro-batch: each process's batch in chunks, one optimizer step
    # Processes the global batch_size is split over: set by train() from the torchrun job (recorded, not a flag).
    world_size: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.net_config, dict):  # as config.json holds it, so that a resume compares equal
            self.net_config = _as_json(self.net_config)

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
        choice("schedule", [*SCHEDULES, "custom"])
        if (self.schedule == "custom") != (self.betas is not None):
            raise ValueError(f"schedule {self.schedule!r} with betas {'given' if self.betas is not None else 'None'}: "
                             "schedule 'custom' takes its β_t from betas, the named schedules from T; pass both or neither")
        choice("variance", [*VARIANCES, *LEARNED_VARIANCES])
        choice("prior", PRIORS)
        schedules.check(self)  # T, the γ settings and the estimator against the forward process
        if self.estimator == "hybrid" and self.variance not in LEARNED_VARIANCES:
            raise ValueError("estimator 'hybrid' trains a learned variance; pass --variance learned (or another "
                             "--estimator)")
        check_net_name(self.net)
        if self.net not in NET_BUILDERS:
            resolve_builder(self.net)  # an import path is imported now: a missing module is found before the run starts
        try:
            json.dumps(self.net_config, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"net_config = {self.net_config!r}; config.json records it: pass numbers, strings, "
                             "booleans, lists and dicts only") from None
        check_net_config(self.net, self.net_config)
        check_checkpointing(self.checkpoint_activations)
        if self.checkpoint_activations == "steps" and self.estimator not in ("trace", "meanfield"):
            raise ValueError(f"--checkpoint-activations steps recomputes the network calls along the full chain, which "
                             f"the estimator {self.estimator} does not walk (it calls the net once per example): "
                             "drop it, or pass --checkpoint-activations blocks to recompute the U-Net's blocks")
        if self.batch_size % max(self.world_size, 1) == 0:  # else train() names the batch that splits
            check_microbatch(self.microbatch, self.batch_size // self.world_size, self.world_size)
        if self.decoder is not None:
            choice("decoder", IMAGE_DECODERS)
        choice("metrics_format", METRICS_FORMATS)
        choice("backend", BACKENDS)
        check_precision(self.precision)
        for name in ("batch_size", "checkpoint_every", "keep_checkpoints", "log_every", "world_size"):
            positive_int(name)
        positive_int("steps", allow_none=True)
        if isinstance(self.val_examples, bool) or not isinstance(self.val_examples, int) or self.val_examples < 0:
            raise ValueError(f"val_examples = {self.val_examples!r}; pass 0 (no validation) or a number of training "
                             "examples to hold out (--val-examples)")
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
            if self.net not in BUILTIN_NETS:
                raise ValueError(f"net {self.net!r} trains on --backend pyro only: the NumPyro backend has Flax twins "
                                 "of the built-in nets (auto, unet, the presets, mlp); drop --backend numpyro")
            if self.prior != "normal" or self.estimator == "hybrid":
                what = f"prior {self.prior!r}" if self.prior != "normal" else "estimator 'hybrid'"
                raise ValueError(f"{what} trains on --backend pyro only (so far); drop --backend numpyro")
            if schedules.is_gamma(self.schedule) and self.estimator in ("trace", "meanfield"):
                raise ValueError(f"estimator {self.estimator!r} with a γ schedule trains on --backend pyro only (the "
                                 "compiled chain of the NumPyro backend reads NoiseSchedules); drop --backend numpyro "
                                 "or pass a stochastic or continuous estimator")
            if self.device not in ("auto", "cpu"):
                raise ValueError(f"device = {self.device!r} with backend numpyro: JAX picks its own device (a GPU "
                                 "when jax has CUDA support); pass --device auto or cpu")
            _require_jax()
        resolve_device(self.device)
        return self

    def to_dict(self) -> dict:
        """Every field by name, as ``config.json`` holds it."""
        return dataclasses.asdict(self)

    def resolved(self) -> "TrainConfig":
        """The config with a γ schedule's unset settings at their defaults (``schedules.resolve``), as
        config.json records it."""
        return schedules.resolve(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config of a ``config.json`` dict; a one-line ``ValueError`` for a key that is not a field."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    @classmethod
    def defaults(cls) -> dict:
        """Every field at its default, as in ``config.json`` (the values of keys an older ``config.json`` lacks)."""
        return dataclasses.asdict(cls())



def _require_jax() -> None:
    try:
        import flax  # noqa: F401
        import jax  # noqa: F401
        import numpyro  # noqa: F401
    except ImportError as e:
        raise ValueError(f"backend numpyro needs jax, numpyro and flax ({e.name} is missing); install them with "
                         "pip install -c constraints.txt -e '.[jax]'") from None


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → cuda if available else cpu; checks that cuda is there when asked for.

    :param str device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    :rtype: torch.device

    Example:

    >>> from ppl_diffusion.train import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    ...
    ValueError: unknown device 'tpu'; choose auto, cpu, cuda or cuda:N
    """
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


def _as_json(value):
    """``value`` with tuples as lists, recursively (what a JSON round trip gives)."""
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    return value


def decoder_of(config: TrainConfig, dataset) -> str:
    """The decoder's name for ``config`` on ``dataset``: ``config.decoder``, or the data's own (``dataset.decoder``:
    discretized for 8-bit data, gaussian for continuous data). An 8-bit decoder on continuous data is refused in one
    line."""
    if config.decoder is None:
        return dataset.decoder
    if dataset.decoder not in IMAGE_DECODERS:
        raise ValueError(f"decoder {config.decoder!r} scores 8-bit data on their 256 values; the data {config.data!r} "
                         "are continuous (scored by the Gaussian density): drop --decoder")
    return config.decoder


def with_data_settings(config: TrainConfig, dataset) -> tuple[TrainConfig, tuple | None]:
    """``(config, choice)``: ``config`` with the settings that depend on the data resolved (before it is recorded),
    and, where the net setting ``fourier_features = "auto"`` was resolved, :func:`fourier_choice`'s
    ``(exponents, reason, warning)`` for the log (else ``None``). ``"auto"`` becomes the exponents of the data's
    grey-level spacing (:func:`~ppl_diffusion.nets.embedding.fourier_exponents` of ``dataset.level_spacing``).
    Fourier features on continuous data, which have no grey levels for them to resolve, and an 8-bit decoder on
    them are refused in one line."""
    decoder_of(config, dataset)
    features = (config.net_config or {}).get("fourier_features")
    if not features:
        return config, None
    if dataset.bins is None:
        raise ValueError(f"fourier_features = {features!r} on the continuous data {config.data!r}: the features read "
                         "x_t against the spacing of 8-bit data's grey levels, which continuous data do not have; drop "
                         "--fourier-features")
    if features != "auto":
        return config, None
    choice = fourier_choice(dataset)
    return dataclasses.replace(config, net_config={**config.net_config, "fourier_features": choice[0]}), choice


def grey_levels(dataset) -> dict | None:
    """The grey levels of ``dataset``'s training split, which ``--fourier-features auto`` reads: their number, their
    mean spacing in model space (``dataset.level_spacing``, the rule's Δ) and the smallest gap between two
    neighbouring levels; ``None`` for continuous data or a split of one value.

    Example (the digits' 17 levels; rint(v·255/16) puts 15 or 16 of 255 between neighbours):

    >>> from ppl_diffusion.data import load_digits
    >>> from ppl_diffusion.train.config import grey_levels
    >>> levels = grey_levels(load_digits())
    >>> levels["levels"], levels["spacing"], round(levels["closest"] * 127.5)
    (17, 0.125, 15)
    """
    spacing = dataset.level_spacing
    if spacing is None:
        return None
    values = torch.unique(dataset.train).double()
    return {"levels": len(values), "spacing": spacing, "closest": float(torch.diff(values).min())}


#: Levels whose closest two are nearer than this share of their mean spacing are called uneven by
#: :func:`fourier_choice`, and it names the exponents that would resolve the closest pair.
UNEVEN_LEVELS = 0.5


def fourier_choice(dataset) -> tuple[list[int], str, str | None]:
    """What ``--fourier-features auto`` picks for ``dataset``, why, and a warning where the rule is a poor fit:
    ``(exponents, reason, warning or None)``. The rule reads the mean spacing Δ of the training split's grey levels
    (:func:`~ppl_diffusion.nets.embedding.fourier_exponents`); for levels unevenly spaced (the closest two nearer
    than half of Δ) the warning names the exponents of the closest pair, which the user may pass instead.

    :raises ValueError: on continuous data (no grey levels).

    Example:

    >>> from ppl_diffusion.data import load_digits
    >>> from ppl_diffusion.train.config import fourier_choice
    >>> exponents, reason, warning = fourier_choice(load_digits())
    >>> exponents, warning
    ([2, 3], None)
    >>> print(reason)
    fourier_features auto = 2,3: 17 grey levels in the training data, mean spacing Δ = 0.125 in model space, n = round(log2(1/Δ)) = 3 and n − 1
    """
    from ..nets.embedding import fourier_exponents

    levels = grey_levels(dataset)
    if levels is None:
        raise ValueError(f"fourier_features = 'auto' on {dataset.name!r}, which has no grey levels (continuous data, "
                         "or a single value): drop --fourier-features")
    exponents = list(fourier_exponents(levels["spacing"]))
    reason = (f"fourier_features auto = {exponents[0]},{exponents[1]}: {levels['levels']} grey levels in the "
              f"training data, mean spacing Δ = {levels['spacing']:.4g} in model space, n = round(log2(1/Δ)) = "
              f"{exponents[1]} and n − 1")
    warning = None
    if levels["closest"] < UNEVEN_LEVELS * levels["spacing"]:
        try:
            closest = ",".join(map(str, fourier_exponents(levels["closest"])))
        except ValueError:
            closest = None
        warning = (f"--fourier-features auto: the {levels['levels']} grey levels are unevenly spaced (mean "
                   f"{levels['spacing']:.4g}, the closest two {levels['closest']:.4g} apart in model space) and auto "
                   f"follows the mean, {exponents[0]},{exponents[1]}"
                   + (f"; to resolve the closest pair pass --fourier-features {closest}" if closest else ""))
    return exponents, reason, warning


def build_diffusion(config: TrainConfig, dataset) -> GaussianDiffusion:
    """The :class:`~ppl_diffusion.diffusion.GaussianDiffusion` of ``config`` for data of ``dataset.event_shape``, with ``config.decoder`` or
    the data's own decoder (``dataset.decoder``; ``decoder_of``).

    :param TrainConfig config: the run's settings: schedule, net, variance, prior, precision.
    :param dataset: a :class:`~ppl_diffusion.data.Dataset`, or anything with its ``event_shape`` and ``decoder``.
    :returns: an untrained :class:`~ppl_diffusion.diffusion.GaussianDiffusion`.

    Example:

    >>> from types import SimpleNamespace
    >>> from ppl_diffusion.train import TrainConfig, build_diffusion
    >>> digits = SimpleNamespace(event_shape=(1, 8, 8), decoder="discretized")  # what the model needs of the data
    >>> diffusion = build_diffusion(TrainConfig(T=10, net_config={"model_channels": 8}), digits)
    >>> diffusion.T, type(diffusion.denoiser).__name__, diffusion.denoiser.num_parameters
    (10, 'UNet', 69209)
    """
    event_shape = tuple(dataset.event_shape)
    decoder = decoder_of(config, dataset)
    net = build_net(config.net, event_shape, config.net_config, learn_sigma=config.variance in LEARNED_VARIANCES)
    prior = None if config.prior == "normal" else make_prior(config.prior, event_shape)
    return GaussianDiffusion(schedule=build_schedule(config), denoiser=net, event_shape=event_shape,
                             decoder=decoder, variance=config.variance, prior=prior,
                             precision=config.precision, checkpoint_activations=config.checkpoint_activations,
                             **schedules.process_kwargs(config))


class BudgetWarning(UserWarning):
    """Settings that do not suit the run's number of steps (a warm-up or an EMA longer than the run); the CLI prints
    it as one line.

    :func:`~ppl_diffusion.train.loop.train` warns with it, once for each message of :func:`~ppl_diffusion.train.config.budget_warnings`.

    Example:

    >>> from ppl_diffusion.train import BudgetWarning
    >>> issubclass(BudgetWarning, UserWarning)
    True
    """


#: The share of the untrained initial weights the EMA may still hold at the end of a run before it is warned.
EMA_INITIAL_SHARE = 0.05


def budget_warnings(config: TrainConfig, num_train: int | None = None) -> list[str]:
    """What ``config``'s warm-up and EMA leave undone in a run of ``config.steps`` steps (none for a budget in minutes
    only): a warm-up over half the run, and an EMA that still holds more than ``EMA_INITIAL_SHARE`` (5%) of the
    initial weights at the end. The EMA starts at the initial weights and keeps ``ema_decay ** steps`` of them, so
    the suggested decay is at most 1 − 3/steps (e^−3 ≈ 0.05 of them kept): it averages about the last third of the
    run. With ``num_train`` (the training examples), also a batch larger than the training set, whose steps would
    see some examples more than once.

    :param TrainConfig config: the run's settings.
    :param int num_train: the number of training examples, or ``None``.
    :returns: one line per problem, each naming the fix (empty if none).

    Example:

    >>> from ppl_diffusion.train import TrainConfig, budget_warnings
    >>> for line in budget_warnings(TrainConfig(steps=100, warmup_steps=1000, ema_decay=0.999)):
    ...     print(line.split(":")[0])
    --warmup-steps 1000 is over half of the run's 100 steps
    --ema-decay 0.999 over 100 steps leaves 90% of the untrained initial weights in the EMA weights that evaluate and sample use; pass --ema-decay 0.97 or lower (at most 1 - 3/steps) or train longer
    >>> budget_warnings(TrainConfig(steps=10_000, warmup_steps=100))
    []
    """
    steps, out = config.steps, []
    if num_train is not None and config.batch_size > num_train:
        out.append(f"--batch-size {config.batch_size} is larger than the {num_train:,} training examples: every step "
                   f"sees each of them up to {math.ceil(config.batch_size / num_train)} times; pass --batch-size {num_train} "
                   "or less")
    if steps is None:
        return out
    if config.warmup_steps > max(1, steps // 2):
        out.append(f"--warmup-steps {config.warmup_steps} is over half of the run's {steps} steps: the learning rate "
                   f"reaches --lr {config.lr:g} only at step {config.warmup_steps}; pass --warmup-steps "
                   f"{max(1, steps // 20)} (5% of the steps) or train longer")
    kept = config.ema_decay ** steps
    if kept > EMA_INITIAL_SHARE:
        decay = math.floor(max(0.0, 1.0 - 3.0 / steps) * 1000) / 1000
        out.append(f"--ema-decay {config.ema_decay:g} over {steps} steps leaves {kept:.0%} of the untrained initial "
                   f"weights in the EMA weights that evaluate and sample use; pass --ema-decay {decay:g}"
                   + (" or lower (at most 1 - 3/steps)" if decay > 0 else " (no averaging)") + " or train longer")
    return out


def lr_at(config: TrainConfig, step: int) -> float:
    r"""Learning rate of optimizer step ``step`` (1-based): linear warm-up, then constant.

    .. math:: \mathrm{lr}_s = \mathrm{lr} \cdot \min(1, s / \mathrm{warmup\_steps})

    Example:

    >>> from ppl_diffusion.train import TrainConfig, lr_at
    >>> config = TrainConfig(lr=2e-4, warmup_steps=100)
    >>> lr_at(config, 1), lr_at(config, 50), lr_at(config, 5000)
    (2e-06, 0.0001, 0.0002)
    """
    if config.warmup_steps <= 0:
        return config.lr
    return config.lr * min(1.0, step / config.warmup_steps)
