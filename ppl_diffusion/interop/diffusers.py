"""Pretrained DDPMs from 🤗 diffusers as a :class:`~ppl_diffusion.diffusion.GaussianDiffusion`, and back.

A diffusers DDPM / DDIM pipeline folder, as ``DDPMPipeline.save_pretrained(DIR)`` writes it::

    DIR/model_index.json
    DIR/unet/config.json                           UNet2DModel's constructor arguments
    DIR/unet/diffusion_pytorch_model.safetensors   its weights (or .bin)
    DIR/scheduler/scheduler_config.json            DDPMScheduler's or DDIMScheduler's arguments

The mapping, written down in our words:

* **time.** diffusers' timesteps are s = 0..T−1, ours t = 1..T: the adapter calls ``unet(x_t, t − 1)``.
* **schedule.** The scheduler's β_t, computed as it computes them (``trained_betas``; else ``beta_schedule``
  ``linear``, ``scaled_linear`` or ``squaredcos_cap_v2`` from ``beta_start``, ``beta_end``,
  ``num_train_timesteps``), in float32 as it holds them, become a float64 :class:`~ppl_diffusion.schedule.NoiseSchedule`. Our ᾱ_t is
  their product in float64; the scheduler's float32 ``alphas_cumprod`` differs from it by float32 rounding.
* **variance.** ``fixed_small`` (and ``fixed_small_log``, the same distribution) is our ``"posterior"``
  (σ_t² = β̃_t), ``fixed_large`` (and ``fixed_large_log``) our ``"beta"`` (σ_t² = β_t). A DDIMScheduler has no
  variance; it imports as ``"posterior"`` (DDIM with η = 1 is DDPM with β̃_t). At t = 1, where diffusers'
  sampler adds no noise, our decoder uses β̃_2 (``"posterior"``) or β_1 (``"beta"``); DDPM's and improved
  DDPM's bound code use β̃_2 for their fixed-large models too, so ``"beta"`` differs from their decoder term.
* **prediction.** ``epsilon`` as is; ``v_prediction`` (v = √ᾱ_t ε − √(1 − ᾱ_t) x_0) gives
  ε̂ = √ᾱ_t v̂ + √(1 − ᾱ_t) x_t; ``sample`` (x̂_0) gives ε̂ = (x_t − √ᾱ_t x̂_0) / √(1 − ᾱ_t). Both are exact:
  x̂_0 and μ_θ computed from ε̂ are the scheduler's.
* **space.** Images in [−1, 1] (``DDPMPipeline`` returns ``(x / 2 + 0.5).clamp(0, 1)``), our model space;
  event shape ``(in_channels, *sample_size)``, decoder ``"discretized"`` (256 bins).
* ``clip_sample`` / ``thresholding``: the scheduler's sampler clips (or thresholds) x̂_0 to [−1, 1] before
  forming the mean. The imported model is the unclipped one (μ_θ from ε̂, DDPM's Eq. 11), the model our
  estimators, the ODE and training share; the flags are kept in ``DiffusersDenoiser.scheduler_config`` and
  written back by :func:`~ppl_diffusion.interop.diffusers.to_diffusers`. (DDPM's own ``calc_bpd_loop`` clips x̂_0 by default: its reported
  bounds are those of the clipped-mean model, another valid p.) Sampling settings (``timestep_spacing``, ``steps_offset``,
  ``set_alpha_to_one``) are kept the same way.

Refused with one line: ``learned`` / ``learned_range`` variances (below; ``variance="posterior"`` or ``"beta"``
imports the mean exactly with a fixed variance), class-conditional UNets (``num_class_embeds``,
``class_embed_type``), ``UNet2DConditionModel`` (cross-attention), Fourier time embeddings (score-SDE VE
models), ``rescale_betas_zero_snr`` (β_T = 1), other schedulers and schedules.

Why learned variances are refused: diffusers' ``learned_range`` is log σ_t² = f log β_t + (1 − f) log β̃_t
with f = (v + 1)/2, unbounded, and β̃_1 clamped to 1e-20 at t = 1; ours
(:meth:`~ppl_diffusion.diffusion.GaussianDiffusion.learned_log_variance`) is f = sigmoid(2 v) ∈ (0, 1) with β̃_2 in place of β̃_1.
For ``|v| < 1`` and t > 1 the two agree under v ↦ atanh(v), but no v of ours reaches f ∉ (0, 1), and at t = 1
they differ for every v, so the model is not ours. ``learned`` feeds the raw output as σ_t².

Export (:func:`~ppl_diffusion.interop.diffusers.to_diffusers`) writes a ``DDPMPipeline`` folder. It is exact for

* a model imported from diffusers (the round trip writes the same UNet weights and a scheduler config with
  the same β_t, prediction type and variance), and
* our :class:`~ppl_diffusion.nets.unet.UNet` presets (``cifar10``, ``digits``, ``mnist``, with or without
  ``use_scale_shift_norm``): our U-Net is DDPM's architecture, which is also ``UNet2DModel``'s (same block
  order, skips, resblocks, attention, time MLP); the state dict is renamed key by key (``qkv`` split into
  ``to_q``, ``to_k``, ``to_v``), and the off-by-one in t is folded into the time MLP's first layer: the
  sinusoidal features of t are a rotation R of those of t − 1 (per frequency f, by angle f), so W emb(t) =
  (W R) emb(t − 1) exactly (measured, float64: 3e-15 at t = 1; beyond, diffusers' float32 sinusoid sets the
  agreement, 8e-7 at t = 1000; the cifar10 preset in float32: 2e-6 on outputs of size ~1). Refused where ``UNet2DModel`` cannot express the net: ``channel_mult[0] != 1``
  (its input conv has ``block_out_channels[0]`` channels), a GroupNorm with other than the common group
  count (ours shrinks it for narrow layers), a head width that differs between attention layers
  (``attention_head_dim`` is one number), a learned variance, a prior other than N(0, I).

The converse does not hold for every diffusers model: Google's ports of DDPM's checkpoints (``google/ddpm-*``)
keep DDPM's TensorFlow conventions (sin before cos, frequencies 10000^(−i/(d/2 − 1)) (``freq_shift=1``), GroupNorm
eps 1e-6, TF-style asymmetric padding of the stride-2 convs (``downsample_padding=0``)), which our UNet does not
have; they run behind :class:`~ppl_diffusion.interop.diffusers.DiffusersDenoiser` exactly as diffusers runs them, but not as our UNet (nor on the
NumPyro backend).
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..closed_forms import extract
from ..diffusion import GaussianDiffusion
from ..schedule import NoiseSchedule

__all__ = ["DiffusersDenoiser", "build_denoiser", "export_diffusers", "from_diffusers", "import_diffusers",
           "scheduler_betas", "scheduler_schedule", "to_diffusers", "unet_to_diffusers"]

SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# diffusers' variance_type -> ours; "learned" and "learned_range" are refused (see the module docstring).
VARIANCE_TYPES = {"fixed_small": "posterior", "fixed_small_log": "posterior",
                  "fixed_large": "beta", "fixed_large_log": "beta"}
EXPORT_VARIANCE_TYPES = {"posterior": "fixed_small", "beta": "fixed_large"}
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
           "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")
NET = "ppl_diffusion.interop.diffusers:build_denoiser"  # the run config's net: a builder every command imports


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise ImportError("ppl_diffusion.interop.diffusers needs diffusers; "
                          "pip install -c constraints.txt -e '.[interop]' (or pip install diffusers)") from None
    return diffusers


# ------------------------------------------------------------------------------------------ schedule
def scheduler_betas(config: dict) -> np.ndarray:
    """β_1..β_T of a DDPMScheduler / DDIMScheduler config, computed as the scheduler computes them (float32),
    returned as float64 ``[T]``. Keys missing from ``config`` take the schedulers' defaults.

    :param dict config: a ``scheduler_config.json`` dict.
    :rtype: numpy.ndarray

    Example:

    >>> from ppl_diffusion.interop.diffusers import scheduler_betas
    >>> betas = scheduler_betas({"num_train_timesteps": 10, "beta_schedule": "linear"})
    >>> betas.shape, betas.dtype, round(float(betas[0]), 6), round(float(betas[-1]), 6)
    ((10,), dtype('float64'), 0.0001, 0.02)
    """
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("scheduler config has rescale_betas_zero_snr = true, which sets β_T = 1 (ᾱ_T = 0); "
                         "the chain needs every β_t < 1, so import a model trained without it")
    T = config.get("num_train_timesteps", 1000)
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"scheduler config has num_train_timesteps = {T!r}; it must be an integer >= 1")
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float32)
        if betas.shape != (T,):
            raise ValueError(f"scheduler config has {tuple(betas.shape)} trained_betas for num_train_timesteps = "
                             f"{T}; give one β per step")
        return betas.double().numpy()
    name = config.get("beta_schedule", "linear")
    start, end = config.get("beta_start", 1e-4), config.get("beta_end", 0.02)
    if name == "linear":
        betas = torch.linspace(start, end, T, dtype=torch.float32)
    elif name == "scaled_linear":  # linear in √β (latent diffusion's)
        betas = torch.linspace(start**0.5, end**0.5, T, dtype=torch.float32) ** 2
    elif name == "squaredcos_cap_v2":  # improved DDPM's cosine ᾱ(u), u = t/T, s = 0.008, β capped at 0.999

        def alpha_bar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)],
                             dtype=torch.float32)
    else:
        raise ValueError(f"scheduler config has beta_schedule = {name!r}; known: {', '.join(BETA_SCHEDULES)} "
                         "(or give trained_betas)")
    return betas.double().numpy()


def scheduler_schedule(config: dict) -> NoiseSchedule:
    """The :class:`~ppl_diffusion.schedule.NoiseSchedule` of a scheduler config (:func:`~ppl_diffusion.interop.diffusers.scheduler_betas`).

    Example:

    >>> from ppl_diffusion.interop.diffusers import scheduler_schedule
    >>> schedule = scheduler_schedule({"num_train_timesteps": 10, "beta_schedule": "squaredcos_cap_v2"})
    >>> schedule.T, bool((schedule.alphas_cumprod[1:] < schedule.alphas_cumprod[:-1]).all())
    (10, True)
    """
    return NoiseSchedule(scheduler_betas(config))


# ------------------------------------------------------------------------------------------ adapter
class DiffusersDenoiser(nn.Module):
    """A diffusers ``UNet2DModel`` as our denoiser: ``forward(x_t, t) -> ε̂``.

    :param unet: a ``diffusers.UNet2DModel``; called as ``unet(x_t, t − 1).sample`` (its timesteps are 0-based).
    :param str prediction_type: what the UNet predicts: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``;
        the last two are converted to ε̂ exactly with the schedule's ᾱ_t (gathered in float64, cast).
    :param ~ppl_diffusion.schedule.NoiseSchedule schedule: the chain's schedule (needed unless
        ``prediction_type="epsilon"``).
    :param dict scheduler_config: the scheduler config it came with (kept for :func:`~ppl_diffusion.interop.diffusers.to_diffusers`).

    ``x_t`` is ``[N x C x H x W]`` in [−1, 1]-space, ``t`` a ``LongTensor[N]`` in 1..T; returns ε̂ ``[N x C x H x W]``
    (a UNet with 2C output channels, a learned variance, has its last C dropped).

    Example (our U-Net as a ``UNet2DModel`` behind the adapter computes what it computed):

    >>> import torch
    >>> from ppl_diffusion.nets import UNet
    >>> _ = torch.manual_seed(0)
    >>> net = UNet(in_channels=1, model_channels=8, image_size=8, channel_mult=(1, 2), attention_resolutions=(4,),
    ...            num_groups=4, zero_init=False)  # 4 groups in every GroupNorm, as UNet2DModel has one count
    >>> x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 10])
    >>> from ppl_diffusion.interop.diffusers import DiffusersDenoiser, unet_to_diffusers
    >>> denoiser = DiffusersDenoiser(unet_to_diffusers(net))
    >>> denoiser(x_t, t).shape, torch.allclose(denoiser(x_t, t), net(x_t, t), atol=1e-5)
    (torch.Size([2, 1, 8, 8]), True)
    """

    def __init__(self, unet: nn.Module, *, prediction_type: str = "epsilon", schedule: NoiseSchedule | None = None,
                 scheduler_config: dict | None = None) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; known: {', '.join(PREDICTION_TYPES)}")
        if prediction_type != "epsilon" and not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"prediction_type {prediction_type!r} is converted to ε̂ with ᾱ_t: pass schedule=...")
        self.unet = unet
        self.prediction_type = prediction_type
        self.schedule = schedule
        self.scheduler_config = dict(scheduler_config or {})

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """ε̂ ``[N x C x H x W]`` of ``x_t`` ``[N x C x H x W]`` at the steps ``t`` ``LongTensor[N]`` in 1..T."""
        out = self.unet(x_t, t - 1).sample[:, :x_t.shape[1]]  # diffusers' step s = t − 1; ε̂ channels only
        if self.prediction_type == "epsilon":
            return out
        a = extract(self.schedule.sqrt_alphas_cumprod, t, x_t)  # √ᾱ_t, [N x 1 x 1 x 1]
        s = extract(self.schedule.sqrt_one_minus_alphas_cumprod, t, x_t)  # √(1 − ᾱ_t)
        if self.prediction_type == "v_prediction":
            return a * out + s * x_t
        return (x_t - a * out) / s  # "sample": out is x̂_0

    def extra_repr(self) -> str:
        return f"prediction_type={self.prediction_type!r}"


# ------------------------------------------------------------------------------------------ import
def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ValueError(f"{path} not found: a diffusers {what} folder holds it (written by save_pretrained)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def _locate(folder, scheduler) -> tuple[Path, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; pass a diffusers pipeline folder (with unet/ and scheduler/), "
                         "as DDPMPipeline.save_pretrained writes it")
    if (folder / "unet").is_dir():
        return folder / "unet", Path(scheduler) if scheduler is not None else folder / "scheduler"
    if (folder / "config.json").is_file():
        if scheduler is None and (folder / "scheduler_config.json").is_file():
            return folder, folder  # both in one folder (the layout of some hub repositories' roots)
        if scheduler is None:
            raise ValueError(f"{folder} is a UNet folder without a scheduler; pass scheduler=DIR, the folder "
                             "holding scheduler_config.json")
        return folder, Path(scheduler)
    raise ValueError(f"{folder} has neither a unet/ subfolder (a pipeline folder) nor a config.json (a UNet "
                     "folder); write one with DDPMPipeline.from_pretrained(...).save_pretrained(DIR)")


def _check_unet_config(config: dict, path: Path) -> tuple[int, ...]:
    """The event shape ``(C, H, W)`` of an unconditional ``UNet2DModel`` config; one-line errors otherwise."""
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        why = " (cross-attention on text or other embeddings)" if "Condition" in cls else ""
        raise ValueError(f"{path} is a {cls}{why}; only unconditional UNet2DModel pipelines (DDPM, DDIM) import")
    for key in ("num_class_embeds", "class_embed_type"):
        if config.get(key) is not None:
            raise ValueError(f"{path} has {key} = {config[key]!r}: a class-conditional UNet; only unconditional "
                             "models import (p(x) has no label)")
    if config.get("time_embedding_type", "positional") == "fourier":
        raise ValueError(f"{path} has time_embedding_type = 'fourier' (a score-SDE VE model, ScoreSdeVeScheduler); "
                         "only DDPM/DDIM (VP) models import")
    c, out = config.get("in_channels", 3), config.get("out_channels", 3)
    if out not in (c, 2 * c):
        raise ValueError(f"{path} has in_channels = {c} and out_channels = {out}; ε̂ needs out_channels = "
                         f"{c} (or {2 * c} with a learned variance)")
    size = config.get("sample_size")
    size = (size, size) if isinstance(size, int) else tuple(size or ())
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"{path} has sample_size = {config.get('sample_size')!r}; it gives the image size, an "
                         "integer or [height, width]")
    return (c, *size)


def _variance(config: dict, path: Path, variance: str | None, out_channels: int, channels: int) -> str:
    cls = config.get("_class_name", "DDPMScheduler")
    kind = config.get("variance_type", "fixed_small") if cls == "DDPMScheduler" else None
    if variance is not None:
        if variance not in EXPORT_VARIANCE_TYPES:
            raise ValueError(f"variance = {variance!r}; an imported model takes 'posterior' (β̃_t) or 'beta' (β_t); "
                             "fit one afterwards with ppl_diffusion.variance.fit_variance and with_variance")
        return variance
    if kind in ("learned", "learned_range"):
        raise ValueError(f"{path} has variance_type = {kind!r}: diffusers' learned variance is not ours (f = (v+1)/2 "
                         "unbounded, β̃_1 = 1e-20 at t = 1; ours sigmoid(2v), β̃_2); pass variance='posterior' or "
                         "'beta' to import the mean exactly with a fixed variance")
    if out_channels != channels:
        raise ValueError(f"{path}: the UNet outputs {out_channels} channels for {channels} input channels but the "
                         f"scheduler's variance is {kind or 'fixed'}; pass variance='posterior' or 'beta'")
    if kind is None:
        return "posterior"  # DDIM: η = 1 is DDPM with β̃_t
    if kind not in VARIANCE_TYPES:
        raise ValueError(f"{path} has variance_type = {kind!r}; known: {', '.join([*VARIANCE_TYPES, 'learned_range'])}")
    return VARIANCE_TYPES[kind]


def from_diffusers(folder, *, scheduler=None, variance: str | None = None,
                   decoder="discretized") -> GaussianDiffusion:
    """A diffusers DDPM / DDIM pipeline folder as a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` (the UNet behind
    :class:`~ppl_diffusion.interop.diffusers.DiffusersDenoiser`; the mapping is the module docstring's).

    :param folder: a pipeline folder (``unet/`` and ``scheduler/``), or a UNet folder (``config.json`` and
        weights) with ``scheduler`` the folder holding ``scheduler_config.json`` (default: ``folder`` itself
        when it holds one).
    :param variance: ``None`` (the scheduler's ``variance_type``), ``"posterior"`` or ``"beta"``.
    :param decoder: p(x_0|x_1), ``"discretized"`` (8-bit images) by default.
    :raises ValueError: one line naming the file and the unsupported value.

    Example (a pipeline folder written here by :func:`~ppl_diffusion.interop.diffusers.to_diffusers`, read back):

    >>> import torch
    >>> from ppl_diffusion.nets import UNet
    >>> _ = torch.manual_seed(0)
    >>> net = UNet(in_channels=1, model_channels=8, image_size=8, channel_mult=(1, 2), attention_resolutions=(4,),
    ...            num_groups=4, zero_init=False)  # 4 groups in every GroupNorm, as UNet2DModel has one count
    >>> x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 10])
    >>> import tempfile
    >>> from ppl_diffusion import GaussianDiffusion, NoiseSchedule
    >>> from ppl_diffusion.interop.diffusers import from_diffusers, to_diffusers
    >>> ours = GaussianDiffusion(schedule=NoiseSchedule.linear(10), denoiser=net, event_shape=(1, 8, 8),
    ...                          decoder="discretized", variance="posterior")
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     theirs = from_diffusers(to_diffusers(ours, f"{folder}/pipeline"))
    >>> type(theirs.denoiser).__name__, theirs.T, theirs.variance
    ('DiffusersDenoiser', 10, 'posterior')
    >>> torch.allclose(theirs.denoiser(x_t, t), net(x_t, t), atol=1e-5)
    True
    """
    unet_dir, sched_dir = _locate(folder, scheduler)
    unet_config = _read_json(unet_dir / "config.json", "UNet")
    event_shape = _check_unet_config(unet_config, unet_dir / "config.json")
    sched_path = sched_dir / "scheduler_config.json"
    sched_config = _read_json(sched_path, "scheduler")
    cls = sched_config.get("_class_name", "DDPMScheduler")
    if cls not in SCHEDULERS:
        raise ValueError(f"{sched_path} is a {cls}; known: {', '.join(SCHEDULERS)} (DDPM-family chains)")
    prediction_type = sched_config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"{sched_path} has prediction_type = {prediction_type!r}; "
                         f"known: {', '.join(PREDICTION_TYPES)}")
    variance = _variance(sched_config, sched_path, variance, unet_config.get("out_channels", 3), event_shape[0])
    schedule = scheduler_schedule(sched_config)
    if not any((unet_dir / w).is_file() for w in WEIGHTS):
        raise ValueError(f"{unet_dir} has no weights; expected {WEIGHTS[0]} (or {WEIGHTS[1]})")
    d = _diffusers()
    # Without accelerate, diffusers' default low_cpu_mem_usage=True falls back to False with a warning on every load.
    quiet = {} if d.utils.is_accelerate_available() else {"low_cpu_mem_usage": False}
    unet = d.UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True, **quiet).eval()
    denoiser = DiffusersDenoiser(unet, prediction_type=prediction_type, schedule=schedule,
                                 scheduler_config=sched_config)
    return GaussianDiffusion(schedule=schedule, denoiser=denoiser, event_shape=event_shape, decoder=decoder,
                             variance=variance)


# ------------------------------------------------------------------------------------------ export
def to_diffusers(diffusion: GaussianDiffusion, folder) -> Path:
    """Write ``diffusion`` as a diffusers ``DDPMPipeline`` folder (``model_index.json``, ``unet/``, ``scheduler/``)
    and return its path. Exact for models imported by :func:`~ppl_diffusion.interop.diffusers.from_diffusers` and for our U-Net presets (module
    docstring); refused with one line otherwise.

    The scheduler config keeps the imported one's sampling settings (``clip_sample``, ``timestep_spacing``, …);
    β_t are written as ``beta_schedule`` when it reproduces the schedule exactly, else as ``trained_betas``
    (which diffusers holds in float32: a float64 schedule of ours is rounded to float32, ≤ 6e-8 relative).

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` with a U-Net (or an imported diffusers UNet).
    :param folder: the pipeline folder to write (created).
    :rtype: pathlib.Path

    Example:

    >>> import torch
    >>> from ppl_diffusion.nets import UNet
    >>> _ = torch.manual_seed(0)
    >>> net = UNet(in_channels=1, model_channels=8, image_size=8, channel_mult=(1, 2), attention_resolutions=(4,),
    ...            num_groups=4, zero_init=False)  # 4 groups in every GroupNorm, as UNet2DModel has one count
    >>> x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 10])
    >>> import os
    >>> import tempfile
    >>> from ppl_diffusion import GaussianDiffusion, NoiseSchedule
    >>> from ppl_diffusion.interop.diffusers import to_diffusers
    >>> ours = GaussianDiffusion(schedule=NoiseSchedule.linear(10), denoiser=net, event_shape=(1, 8, 8),
    ...                          decoder="discretized", variance="posterior")
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     pipeline = to_diffusers(ours, f"{folder}/pipeline")
    ...     print(sorted(os.listdir(pipeline)), sorted(os.listdir(pipeline / "scheduler")))
    ['model_index.json', 'scheduler', 'unet'] ['scheduler_config.json']
    """
    d = _diffusers()
    from ..nets.unet import UNet

    if getattr(diffusion, "gamma_schedule", False):
        raise ValueError("the model's forward process is a γ schedule; a diffusers DDPMScheduler runs a β_t schedule of "
                         "T steps with a step-labelled net: export --to safetensors (which keeps the schedule)")
    if diffusion.prior is not None:
        raise ValueError(f"the model's prior is {diffusion.prior!r}; a diffusers pipeline starts from N(0, I)")
    if not isinstance(diffusion.variance, str) or diffusion.variance not in EXPORT_VARIANCE_TYPES:
        raise ValueError(f"the model's variance is {diffusion.variance!r}; diffusers' schedulers have β̃_t "
                         "('posterior') and β_t ('beta') only (its learned_range is not our learned variance)")
    net = diffusion.denoiser
    if isinstance(net, DiffusersDenoiser):
        unet, prediction_type, base = net.unet, net.prediction_type, net.scheduler_config
        cfg = unet.config
        if cfg.out_channels != cfg.in_channels:
            raise ValueError(f"the UNet outputs {cfg.out_channels} channels (a learned variance) but the model's "
                             "variance is fixed; diffusers' scheduler would read them as ε̂")
    elif isinstance(net, UNet):
        unet, prediction_type, base = unet_to_diffusers(net), "epsilon", {}
    else:
        raise ValueError(f"the denoiser is a {type(net).__name__}; export to diffusers takes a model imported from "
                         "diffusers or our UNet (ppl_diffusion.nets.unet)")
    config = _export_scheduler_config(diffusion, base, prediction_type)
    pipeline = d.DDPMPipeline(unet=unet, scheduler=d.DDPMScheduler.from_config(config))
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; pass a folder to write the pipeline into")
    pipeline.save_pretrained(str(folder))
    return folder


def _export_scheduler_config(diffusion: GaussianDiffusion, base: dict, prediction_type: str) -> dict:
    known = set(inspect.signature(_diffusers().DDPMScheduler.__init__).parameters) - {"self"}
    config = {k: v for k, v in base.items() if k in known}  # drops "_class_name", DDIM's set_alpha_to_one
    config.update(num_train_timesteps=diffusion.T, prediction_type=prediction_type,
                  variance_type=EXPORT_VARIANCE_TYPES[diffusion.variance], rescale_betas_zero_snr=False)
    config.setdefault("clip_sample", False)  # our model's mean is unclipped; an imported one keeps its flag
    try:
        same = np.array_equal(scheduler_betas(config), diffusion.schedule.betas)
    except ValueError:
        same = False
    if not same:
        config["trained_betas"] = diffusion.schedule.betas.tolist()
    return config


# ------------------------------------------------------------------------------------------ our UNet
def _unet2d_config(net) -> dict:
    """``UNet2DModel`` arguments of our :class:`~ppl_diffusion.nets.unet.UNet`; one-line errors where none fit."""
    from ..nets.unet import AttentionBlock, ResBlock

    levels = len(net.channel_mult)
    if getattr(net, "fourier_features", ()):
        raise ValueError(f"UNet(fourier_features={list(net.fourier_features)}): UNet2DModel has no Fourier features "
                         "of its input; no exact export")
    if net.channel_mult[0] != 1:
        raise ValueError(f"UNet(channel_mult={net.channel_mult}): UNet2DModel's input conv has "
                         "block_out_channels[0] channels, so channel_mult[0] must be 1 to export")
    if net.learn_sigma:
        raise ValueError("UNet(learn_sigma=True): diffusers' learned_range variance is not ours; no exact export")
    norms = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.GroupNorm)]
    groups = norms[0][1].num_groups
    for name, m in norms:
        if m.num_groups != groups or m.eps != 1e-5:
            raise ValueError(f"UNet layer {name} has GroupNorm({m.num_groups}, {m.num_channels}, eps={m.eps}) where "
                             f"the others have {groups} groups; UNet2DModel has one norm_num_groups (eps 1e-5)")
    attns = [m for m in net.modules() if isinstance(m, AttentionBlock)]
    if all(m.num_heads == 1 for m in attns):
        head_dim = None  # one head of each layer's width: UNet2DModel's default when attention_head_dim is None
    else:
        dims = {m.norm.num_channels // m.num_heads for m in attns}
        if len(dims) != 1:
            raise ValueError(f"UNet attention layers have head widths {sorted(dims)}; UNet2DModel has one "
                             "attention_head_dim, so export needs num_heads=1 or num_head_channels")
        head_dim = dims.pop()
    res = next(m for m in net.modules() if isinstance(m, ResBlock))
    sizes = [net.image_size // 2**level for level in range(levels)]
    attn_at = [s in net.attention_resolutions for s in sizes]
    return dict(
        sample_size=net.image_size, in_channels=net.in_channels, out_channels=net.out_channels,
        block_out_channels=tuple(net.model_channels * m for m in net.channel_mult),
        layers_per_block=(len(net.input_blocks) - levels) // levels,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn_at),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn_at)),
        attention_head_dim=head_dim, norm_num_groups=groups, attn_norm_num_groups=groups, norm_eps=1e-5,
        resnet_time_scale_shift="scale_shift" if res.scale_shift else "default", dropout=res.out_layers[2].p,
        flip_sin_to_cos=True, freq_shift=0, act_fn="silu", downsample_padding=1, add_attention=True,
    )


def _unet2d_state(net) -> dict[str, Tensor]:
    """Our U-Net's state dict under ``UNet2DModel``'s names, with t → t − 1 folded into the time MLP."""
    from ..nets.unet import AttentionBlock, Upsample

    sd, out, used = net.state_dict(), {}, set()

    def copy(src: str, dst: str, squeeze: bool = False) -> None:
        for p in ("weight", "bias"):
            if f"{src}.{p}" in sd:
                w = sd[f"{src}.{p}"]
                out[f"{dst}.{p}"] = (w[..., 0] if squeeze and p == "weight" else w).clone()
                used.add(f"{src}.{p}")

    def res(src: str, dst: str) -> None:
        for a, b in [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                     ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip", "conv_shortcut")]:
            copy(f"{src}.{a}", f"{dst}.{b}")

    def attn(src: str, dst: str) -> None:
        copy(f"{src}.norm", f"{dst}.group_norm")
        w, b = sd[f"{src}.qkv.weight"][..., 0], sd[f"{src}.qkv.bias"]  # [3C x C], [3C]: rows q, k, v
        for name, wi, bi in zip(("to_q", "to_k", "to_v"), w.chunk(3), b.chunk(3)):
            out[f"{dst}.{name}.weight"], out[f"{dst}.{name}.bias"] = wi.clone(), bi.clone()
        used.update({f"{src}.qkv.weight", f"{src}.qkv.bias"})
        copy(f"{src}.proj_out", f"{dst}.to_out.0", squeeze=True)

    def seq(src: str, block, dst: str, j: int, sampler: str) -> None:
        res(f"{src}.0", f"{dst}.resnets.{j}")
        for i, layer in enumerate(block):
            if isinstance(layer, AttentionBlock):
                attn(f"{src}.{i}", f"{dst}.attentions.{j}")
            elif isinstance(layer, Upsample):
                copy(f"{src}.{i}.conv", f"{dst}.{sampler}.0.conv")

    levels = len(net.channel_mult)
    nrb = (len(net.input_blocks) - levels) // levels
    copy("input_blocks.0.0", "conv_in")
    k = 1
    for level in range(levels):
        for j in range(nrb):
            seq(f"input_blocks.{k}", net.input_blocks[k], f"down_blocks.{level}", j, "downsamplers")
            k += 1
        if level != levels - 1:
            copy(f"input_blocks.{k}.0.op", f"down_blocks.{level}.downsamplers.0.conv")
            k += 1
    res("middle_block.0", "mid_block.resnets.0")
    attn("middle_block.1", "mid_block.attentions.0")
    res("middle_block.2", "mid_block.resnets.1")
    for i in range(levels):
        for j in range(nrb + 1):
            k = i * (nrb + 1) + j
            seq(f"output_blocks.{k}", net.output_blocks[k], f"up_blocks.{i}", j, "upsamplers")
    copy("out.0", "conv_norm_out")
    copy("out.2", "conv_out")
    copy("time_embed.2", "time_embedding.linear_2")
    # emb(t) = [cos(t f), sin(t f)] = R emb(t − 1), R = [[diag cos f, −diag sin f], [diag sin f, diag cos f]]:
    # the first layer W becomes W R, so diffusers' call at t − 1 computes ours at t.
    w = sd["time_embed.0.weight"].double()  # [4·mc x mc]
    half = net.model_channels // 2
    f = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    w1, w2 = w[:, :half], w[:, half:2 * half]
    w = torch.cat([w1 * f.cos() + w2 * f.sin(), w2 * f.cos() - w1 * f.sin(), w[:, 2 * half:]], dim=1)
    out["time_embedding.linear_1.weight"] = w.to(sd["time_embed.0.weight"].dtype)
    out["time_embedding.linear_1.bias"] = sd["time_embed.0.bias"].clone()
    used.update({"time_embed.0.weight", "time_embed.0.bias"})
    missed = sorted(set(sd) - used)
    if missed:  # a layer this mapping does not know: never export a partial net
        raise ValueError(f"UNet parameters {missed[:3]} have no UNet2DModel counterpart; the net is not exportable")
    return out


def unet_to_diffusers(net):
    """Our :class:`~ppl_diffusion.nets.unet.UNet` as a ``diffusers.UNet2DModel`` computing the same function with
    diffusers' 0-based timestep: ``unet2d(x, t − 1).sample == net(x, t)`` (to float rounding).

    Example:

    >>> import torch
    >>> from ppl_diffusion.nets import UNet
    >>> _ = torch.manual_seed(0)
    >>> net = UNet(in_channels=1, model_channels=8, image_size=8, channel_mult=(1, 2), attention_resolutions=(4,),
    ...            num_groups=4, zero_init=False)  # 4 groups in every GroupNorm, as UNet2DModel has one count
    >>> x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 10])
    >>> from ppl_diffusion.interop.diffusers import unet_to_diffusers
    >>> unet2d = unet_to_diffusers(net)
    >>> type(unet2d).__name__, sum(p.numel() for p in unet2d.parameters()) == net.num_parameters
    ('UNet2DModel', True)
    >>> torch.allclose(unet2d(x_t, t - 1).sample, net(x_t, t), atol=1e-5)
    True
    """
    unet = _diffusers().UNet2DModel(**_unet2d_config(net))
    p = next(net.parameters())
    if p.dtype != torch.float32 or p.device.type != "cpu":
        unet.to(device=p.device, dtype=p.dtype)
    unet.load_state_dict(_unet2d_state(net), strict=True)
    return unet.eval()


# ------------------------------------------------------------------------------------------ run folders
def build_denoiser(event_shape, *, unet: dict, prediction_type: str = "epsilon",
                   scheduler_config: dict | None = None) -> DiffusersDenoiser:
    """The net builder of an imported diffusers run (its config.json has ``net`` =
    ``"ppl_diffusion.interop.diffusers:build_denoiser"``, or ``"diffusers"`` from earlier versions, and ``net_config``
    = these settings; :mod:`ppl_diffusion.nets.build`): an untrained ``UNet2DModel`` of the config ``unet`` behind
    :class:`~ppl_diffusion.interop.diffusers.DiffusersDenoiser`, the weights loaded after. The ᾱ_t that a ``v_prediction`` or ``sample`` net needs
    are the scheduler's (``scheduler_config``), the run's own β_t.

    :param event_shape: the data's ``(C, H, W)``, which must be the UNet's.
    :param dict unet: a ``UNet2DModel`` config.
    :param str prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
    :param dict scheduler_config: the scheduler config it came with.
    :rtype: DiffusersDenoiser

    Example:

    >>> import torch
    >>> from ppl_diffusion.nets import UNet
    >>> _ = torch.manual_seed(0)
    >>> net = UNet(in_channels=1, model_channels=8, image_size=8, channel_mult=(1, 2), attention_resolutions=(4,),
    ...            num_groups=4, zero_init=False)  # 4 groups in every GroupNorm, as UNet2DModel has one count
    >>> x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 10])
    >>> from ppl_diffusion.interop.diffusers import build_denoiser, unet_to_diffusers
    >>> untrained = build_denoiser((1, 8, 8), unet=dict(unet_to_diffusers(net).config))
    >>> type(untrained).__name__, sum(p.numel() for p in untrained.parameters()) == net.num_parameters
    ('DiffusersDenoiser', True)
    """
    net = _diffusers().UNet2DModel.from_config(unet).eval()
    shape = (net.config.in_channels, net.config.sample_size, net.config.sample_size)
    if tuple(event_shape) != shape:
        raise ValueError(f"the diffusers UNet takes examples of shape {list(shape)} but the data has "
                         f"{list(event_shape)}; import the model with the data it was trained on (--data)")
    schedule = scheduler_schedule(scheduler_config) if prediction_type != "epsilon" and scheduler_config else None
    return DiffusersDenoiser(net, prediction_type=prediction_type, schedule=schedule, scheduler_config=scheduler_config)


def import_diffusers(folder, run_dir, *, flags="", data: str = "cifar10", data_root=None):
    """Write a run folder for the diffusers pipeline ``folder`` (:func:`~ppl_diffusion.interop.diffusers.from_diffusers`), evaluated on ``data``;
    returns the checkpoint written. Every command loads it (net ``ppl_diffusion.interop.diffusers:build_denoiser``,
    imported; schedule ``"custom"``).

    :param folder: a diffusers pipeline folder.
    :param run_dir: the new run folder.
    :param flags: must be empty (the folder carries its own configs).
    :param str data: the data set it is evaluated on; its images must have the model's shape.
    :param data_root: the data's folder, for the data sets read from files.
    :rtype: pathlib.Path

    Example (a run exported by :func:`~ppl_diffusion.interop.diffusers.export_diffusers`, imported back as a run):

    >>> import tempfile
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from ppl_diffusion.interop import write_run
    >>> from ppl_diffusion.train import TrainConfig, build_diffusion, load_trained
    >>> _ = torch.manual_seed(0)
    >>> unet = dict(model_channels=8, channel_mult=[1, 2], attention_resolutions=[4], num_groups=4, zero_init=False)
    >>> config = TrainConfig(net="unet", net_config=unet, T=10, variance="posterior")
    >>> meta = {"event_shape": [1, 8, 8], "decoder": "discretized"}
    >>> net = build_diffusion(config, SimpleNamespace(**meta)).denoiser
    >>> x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 10])
    >>> tmp = tempfile.TemporaryDirectory()
    >>> run = write_run(f"{tmp.name}/run", config, net.state_dict(), meta=meta).parent
    >>> from ppl_diffusion.interop.diffusers import export_diffusers, import_diffusers
    >>> checkpoint = import_diffusers(export_diffusers(run, f"{tmp.name}/pipeline"), f"{tmp.name}/imported",
    ...                               data="digits")
    >>> imported = load_trained(checkpoint)
    >>> type(imported.denoiser).__name__, torch.allclose(imported.denoiser(x_t, t), net(x_t, t), atol=1e-5)
    ('DiffusersDenoiser', True)
    >>> tmp.cleanup()
    """
    from ..train import TrainConfig
    from .run_folder import dataset_meta, write_run

    if flags:
        raise ValueError("--flags is for improved-diffusion checkpoints; a diffusers folder carries its own configs")
    diffusion = from_diffusers(folder)
    den = diffusion.denoiser
    config = TrainConfig(data=data, data_root=data_root, net=NET, schedule="custom", T=diffusion.T,
                         betas=diffusion.schedule.betas.tolist(), variance=diffusion.variance, steps=None,
                         net_config={"unet": dict(den.unet.config), "prediction_type": den.prediction_type,
                                     "scheduler_config": den.scheduler_config},
                         source={"kind": "diffusers", "folder": str(Path(folder).resolve())})
    meta = dataset_meta(config)
    if tuple(meta["event_shape"]) != tuple(diffusion.event_shape):
        raise ValueError(f"the diffusers model takes examples of shape {list(diffusion.event_shape)} but data {data!r} "
                         f"has {list(meta['event_shape'])}; pass the data it was trained on (--data)")
    return write_run(run_dir, config, den.state_dict(), meta=meta)


def export_diffusers(run, out_dir, *, ema: bool = True) -> Path:
    """A run folder → a diffusers ``DDPMPipeline`` folder (:func:`~ppl_diffusion.interop.diffusers.to_diffusers`; exact for our U-Net presets and for
    models imported from diffusers).

    :param run: a run folder or a checkpoint file.
    :param out_dir: the pipeline folder to write (created).
    :param bool ema: export the EMA weights (default) or the raw ones.
    :rtype: pathlib.Path

    Example:

    >>> import tempfile
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from ppl_diffusion.interop import write_run
    >>> from ppl_diffusion.train import TrainConfig, build_diffusion, load_trained
    >>> _ = torch.manual_seed(0)
    >>> unet = dict(model_channels=8, channel_mult=[1, 2], attention_resolutions=[4], num_groups=4, zero_init=False)
    >>> config = TrainConfig(net="unet", net_config=unet, T=10, variance="posterior")
    >>> meta = {"event_shape": [1, 8, 8], "decoder": "discretized"}
    >>> net = build_diffusion(config, SimpleNamespace(**meta)).denoiser
    >>> x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 10])
    >>> tmp = tempfile.TemporaryDirectory()
    >>> run = write_run(f"{tmp.name}/run", config, net.state_dict(), meta=meta).parent
    >>> from ppl_diffusion.interop.diffusers import export_diffusers, from_diffusers
    >>> exported = from_diffusers(export_diffusers(run, f"{tmp.name}/pipeline"))
    >>> exported.T, torch.allclose(exported.denoiser(x_t, t), net(x_t, t), atol=1e-5)
    (10, True)
    >>> tmp.cleanup()
    """
    from ..sampling import load_run

    return to_diffusers(load_run(run, ema=ema, device="cpu").diffusion, out_dir)
