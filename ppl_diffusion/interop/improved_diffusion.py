"""Checkpoints of openai/improved-diffusion and openai/guided-diffusion as :class:`~ppl_diffusion.diffusion.GaussianDiffusion` models.

Their ``UNetModel`` is our :class:`~ppl_diffusion.nets.unet.UNet`: the same layers in the same order with the same
parameter shapes, so a state dict they saved loads into ours with the key map below, and their flags give our
constructor's arguments, schedule and variance. Nothing of their code is needed or copied.

**Flags** (their names and, where absent, their defaults; ``origin`` picks improved- or guided-diffusion's):

============================  ===================================================================================
``image_size``,               required (with ``diffusion_steps`` and ``noise_schedule``: the schedule cannot be
``num_channels``,             read off the weights, and a default that happens to fit the shapes would give a
``num_res_blocks``            silently wrong model).
``channel_mult``              guided-diffusion's comma string; absent: their default per image size (improved:
                              32 → 1,2,2,2, 64 → 1,2,3,4, 256 → 1,1,2,2,4,4; guided: 64, 128, 256).
``attention_resolutions``     their string of resolutions, e.g. "16,8": as they do, each becomes a downsample
                              rate ds = image_size // res, and a level has attention if its rate 2^level is one of
                              them (a rate that is no level's adds nothing, in their net and ours).
``num_heads``,                heads per attention layer, or (guided) channels per head when
``num_head_channels``         ``num_head_channels`` != −1. ``num_heads_upsample`` must be −1 or ``num_heads``.
``use_new_attention_order``   guided's order of the qkv channels; the legacy order (improved-diffusion's only one)
                              is permuted into ours on load (below).
``learn_sigma``,              the variance: ``learn_sigma`` → ``"learned-range"`` (their LEARNED_RANGE, log σ² =
``sigma_small``               f log β_t + (1 − f) log β̃_t with f = (v + 1)/2 exactly); ``sigma_small`` →
                              ``"posterior"`` (FIXED_SMALL, β̃_t, β̃_2 at t = 1); neither → ``"fixed-large"``
                              (FIXED_LARGE: β_t, but β̃_2 at t = 1).
``diffusion_steps``,          T and their β_t: linear = DDPM's 1e-4..0.02 scaled by 1000/T (equal to our
``noise_schedule``            ``NoiseSchedule.linear(T)`` for T > 20; T <= 20 gives their β_T >= 1 and is refused),
                              cosine = improved DDPM's (equal to ours to float64 rounding). A schedule ours does not
                              reproduce to 1e-12 is kept as its β_t (``schedule="custom"``).
``rescale_timesteps``         their net saw t' = (t − 1) · 1000/T (improved-diffusion's default True), else the
                              0-based index t − 1 (guided's default False): our U-Net embeds (t + shift) · scale
                              with shift −1 and that scale (``timestep_shift``, ``timestep_scale``), so our step
                              t = 1..T reaches their net as their index t − 1.
``timestep_respacing``        recorded only: the import is the original T-step model (their respacing is a sampler
                              setting; ``sample --steps K`` / :func:`~ppl_diffusion.respace` is ours).
``dropout``,                  as theirs. ``use_fp16``: weights are cast to float32 and the net computes in float32
``use_scale_shift_norm``      (``precision="bf16"`` is ours).
``in_channels``               ours (their scripts fix 3): the image channels, for 1-channel models.
``class_cond``                True is refused (our denoiser is unconditional), as are ``predict_xstart``,
                              ``resblock_updown`` and a ``num_heads_upsample`` other than −1 or ``num_heads``.
``use_kl``,                   training settings, accepted and ignored.
``use_checkpoint``,
``rescale_learned_sigmas``
============================  ===================================================================================

GroupNorm: theirs has 32 groups in every layer; ours is built with ``num_groups=32, min_group_channels=1``,
which gives 32 groups for every width they allow (a multiple of 32).

**Keys.** Their state dict's keys map onto ours as follows (``i``, ``j``: block and layer indices, the same on
both sides):

=======================================================  ===========================================================
improved- / guided-diffusion                             ours
=======================================================  ===========================================================
``time_embed.0.*``, ``time_embed.2.*``                   the same (the time MLP)
``input_blocks.0.0.*``                                   the same (the input conv)
``{input,output}_blocks.i.j.in_layers.{0,2}.*``,         the same (a residual block's norms, convs and embedding
``….emb_layers.1.*``, ``….out_layers.{0,3}.*``           projection)
``….skip_connection.*``                                  ``….skip.*`` (a residual block's 1×1 conv where the width
                                                         changes)
``….norm.*``, ``….proj_out.*``                           the same (an attention block)
``….qkv.*`` ``[3C x C x 1]``, ``[3C]``                   the same, rows reordered from their legacy
                                                         [head][q, k, v][channel] to our [q, k, v][head][channel]
                                                         (the identity for one head or guided's new order)
``input_blocks.i.0.op.*``, ``output_blocks.i.j.conv.*``  the same (Downsample, Upsample convs)
``middle_block.{0,1,2}.*``                               the same
``out.0.*``, ``out.2.*``                                 the same (the output norm and conv)
``label_emb.weight``                                     refused (``class_cond``)
=======================================================  ===========================================================

A key of theirs that maps to none of ours, a key of ours that none of theirs fills, or a shape that differs is a
one-line ``ValueError`` naming their key.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import numpy as np
import torch

from ..schedule import NoiseSchedule

__all__ = ["FLAGS", "ORIGINS", "from_improved_diffusion", "import_config", "parse_flags", "resolve_flags"]

#: The code bases whose checkpoints import, whose flag defaults differ (``rescale_timesteps``, ``channel_mult``).
ORIGINS = ("improved-diffusion", "guided-diffusion")

#: Their flags by name, each ``(type, improved-diffusion's default, guided-diffusion's default)``; a default
#: ``None`` means the flag is required. The module docstring says what each one becomes.
FLAGS: dict[str, tuple[type, object, object]] = {
    "image_size": (int, None, None),
    "num_channels": (int, None, None),
    "num_res_blocks": (int, None, None),
    "channel_mult": (str, "", ""),
    "attention_resolutions": (str, "16,8", "16,8"),
    "num_heads": (int, 4, 4),
    "num_head_channels": (int, -1, -1),
    "num_heads_upsample": (int, -1, -1),
    "use_new_attention_order": (bool, False, False),
    "dropout": (float, 0.0, 0.0),
    "use_scale_shift_norm": (bool, True, True),
    "learn_sigma": (bool, False, False),
    "sigma_small": (bool, False, False),
    "diffusion_steps": (int, None, None),
    "noise_schedule": (str, None, None),
    "timestep_respacing": (str, "", ""),
    "rescale_timesteps": (bool, True, False),
    "class_cond": (bool, False, False),
    "predict_xstart": (bool, False, False),
    "resblock_updown": (bool, False, False),
    "use_fp16": (bool, False, False),
    "use_kl": (bool, False, False),
    "use_checkpoint": (bool, False, False),
    "rescale_learned_sigmas": (bool, True, False),
    "in_channels": (int, 3, 3),  # ours: their scripts fix 3
}
# Their default channel multipliers by image size, when channel_mult is absent.
DEFAULT_CHANNEL_MULT = {
    "improved-diffusion": {32: (1, 2, 2, 2), 64: (1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)},
    "guided-diffusion": {64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)},
}
# Flags whose other values we cannot represent: name → (the value we need, why).
REFUSED = {
    "class_cond": (False, "our denoiser is unconditional; import an unconditional checkpoint"),
    "predict_xstart": (False, "our denoiser predicts ε; import an ε-prediction checkpoint"),
    "resblock_updown": (False, "our U-Net resamples with separate Downsample / Upsample layers"),
}


# ------------------------------------------------------------------------------------------------ flags
def parse_flags(text: str) -> dict[str, str]:
    """Their command-line flags, ``"--image_size 32 --learn_sigma True"``, as ``{name: value string}``.

    :param str text: ``--name value`` or ``--name=value`` words, quoted as a shell quotes them.
    :raises ValueError: for a word that is not a ``--name`` or a flag without a value.

    Example:

    >>> from ppl_diffusion.interop import parse_flags
    >>> parse_flags("--image_size 32 --learn_sigma True --noise_schedule=cosine")
    {'image_size': '32', 'learn_sigma': 'True', 'noise_schedule': 'cosine'}
    """
    words = shlex.split(text or "")
    flags: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--") or len(word) == 2:
            raise ValueError(f"flags: {word!r} is not a --name; pass their flags as '--image_size 32 --num_channels 128 ...'")
        name, eq, value = word[2:].partition("=")
        if not eq:
            if i + 1 >= len(words) or words[i + 1].startswith("--"):
                raise ValueError(f"flags: --{name} has no value; pass it as '--{name} VALUE'")
            value, i = words[i + 1], i + 1
        flags[name] = value
        i += 1
    return flags


def _convert(name: str, value, kind: type):
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("yes", "true", "t", "y", "1"):
            return True
        if text in ("no", "false", "f", "n", "0"):
            return False
        raise ValueError(f"flag {name} = {value!r}: pass True or False")
    if kind is str:
        return "" if value is None else str(value)
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"flag {name} = {value!r}: pass a {kind.__name__}") from None
    if kind is int and isinstance(value, float) and value != out:
        raise ValueError(f"flag {name} = {value!r}: pass an int")
    return out


def resolve_flags(flags: dict, origin: str = "improved-diffusion") -> dict:
    """Every flag of :data:`~ppl_diffusion.interop.improved_diffusion.FLAGS`, typed, ``flags`` over the defaults of ``origin``; refuses unknown names, missing
    required flags and values we cannot represent, each with one line.

    :param dict flags: their flags by name, values typed or as strings.
    :param str origin: a name of :data:`~ppl_diffusion.interop.improved_diffusion.ORIGINS`, whose defaults fill the flags not given.
    :rtype: dict

    Example:

    >>> from ppl_diffusion.interop.improved_diffusion import resolve_flags
    >>> flags = resolve_flags({"image_size": "32", "num_channels": 128, "num_res_blocks": 3,
    ...                        "diffusion_steps": 4000, "noise_schedule": "cosine", "learn_sigma": "True"})
    >>> flags["learn_sigma"], flags["rescale_timesteps"], flags["attention_resolutions"]
    (True, True, '16,8')
    >>> resolve_flags({"image_size": 32}, origin="guided-diffusion")
    Traceback (most recent call last):
    ...
    ValueError: missing flag --num_channels: pass the model's own (from the flags it was trained with, e.g. ...)
    """
    if origin not in ORIGINS:
        raise ValueError(f"unknown origin {origin!r}; choose one of {list(ORIGINS)}")
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise ValueError(f"unknown flag --{unknown[0]}; {origin}'s flags here are {', '.join(sorted(FLAGS))}")
    column = ORIGINS.index(origin) + 1
    out = {}
    for name, spec in FLAGS.items():
        if name in flags:
            out[name] = _convert(name, flags[name], spec[0])
        elif spec[column] is None:
            raise ValueError(f"missing flag --{name}: pass the model's own (from the flags it was trained with, e.g. "
                             f"'--image_size 32 --num_channels 128 --num_res_blocks 3 --diffusion_steps 4000 "
                             "--noise_schedule cosine')")
        else:
            out[name] = spec[column]
    for name, (want, why) in REFUSED.items():
        if out[name] != want:
            raise ValueError(f"flag {name} = {out[name]}: not supported, {why}")
    if out["num_heads_upsample"] not in (-1, out["num_heads"]):
        raise ValueError(f"flag num_heads_upsample = {out['num_heads_upsample']} differs from num_heads = "
                         f"{out['num_heads']}: our U-Net has one head count for the down and up paths")
    if out["noise_schedule"] not in ("linear", "cosine"):
        raise ValueError(f"flag noise_schedule = {out['noise_schedule']!r}: theirs are 'linear' and 'cosine'")
    if out["diffusion_steps"] < 1:
        raise ValueError(f"flag diffusion_steps = {out['diffusion_steps']}: pass the model's number of steps T >= 1")
    return out


def flags_string(flags: dict) -> str:
    """``--name value ...`` for their scripts (booleans as True / False)."""
    return " ".join(f"--{k} {v}" if str(v) != "" else f"--{k} ''" for k, v in flags.items())


# ------------------------------------------------------------------------------------------------ model
def channel_mult_of(flags: dict, origin: str) -> tuple[int, ...]:
    if flags["channel_mult"]:
        try:
            return tuple(int(m) for m in flags["channel_mult"].split(","))
        except ValueError:
            raise ValueError(f"flag channel_mult = {flags['channel_mult']!r}: pass integers separated by commas, "
                             "e.g. '1,2,2,2'") from None
    table = DEFAULT_CHANNEL_MULT[origin]
    if flags["image_size"] not in table:
        raise ValueError(f"flag image_size = {flags['image_size']} has no default channel_mult in {origin} "
                         f"(it has {sorted(table)}); pass --channel_mult, e.g. '1,2,2,2'")
    return table[flags["image_size"]]


def unet_kwargs(flags: dict, origin: str = "improved-diffusion") -> dict:
    """Our :class:`~ppl_diffusion.nets.unet.UNet`'s keyword arguments (all but ``learn_sigma``) for resolved ``flags``."""
    size, mult = flags["image_size"], channel_mult_of(flags, origin)
    try:
        rates = [size // int(r) for r in flags["attention_resolutions"].split(",") if r.strip()]
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"flag attention_resolutions = {flags['attention_resolutions']!r}: pass positive "
                         "resolutions separated by commas, e.g. '16,8'") from None
    attention = tuple(size // 2 ** level for level in range(len(mult)) if 2 ** level in rates)
    T = flags["diffusion_steps"]
    kwargs = dict(in_channels=flags["in_channels"], model_channels=flags["num_channels"], image_size=size,
                  channel_mult=mult, num_res_blocks=flags["num_res_blocks"], attention_resolutions=attention,
                  dropout=flags["dropout"], use_scale_shift_norm=flags["use_scale_shift_norm"], num_groups=32,
                  min_group_channels=1, timestep_shift=-1.0,
                  timestep_scale=1000.0 / T if flags["rescale_timesteps"] else 1.0)
    if flags["num_head_channels"] == -1:
        kwargs["num_heads"] = flags["num_heads"]
    else:
        kwargs["num_head_channels"] = flags["num_head_channels"]
    return kwargs


def their_betas(noise_schedule: str, T: int) -> np.ndarray:
    """β_1..β_T of their named schedule, float64, written from their definitions: linear, DDPM's 1e-4..0.02 scaled
    by 1000/T; cosine, β = 1 − ᾱ((i + 1)/T)/ᾱ(i/T) capped at 0.999 with ᾱ(u) = cos²((u + 0.008)/1.008 · π/2)."""
    if noise_schedule == "linear":
        scale = 1000 / T
        return np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64)
    if noise_schedule == "cosine":
        def abar(u):
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)])
    raise ValueError(f"noise_schedule {noise_schedule!r}: theirs are 'linear' and 'cosine'")


def schedule_fields(flags: dict) -> dict:
    """``schedule``, ``T`` and ``betas`` of the :class:`~ppl_diffusion.train.config.TrainConfig` for their schedule: the named
    one of ours where it equals theirs to 1e-12 (relative), else ``"custom"`` with their β_t."""
    name, T = flags["noise_schedule"], flags["diffusion_steps"]
    betas = their_betas(name, T)
    if betas.max() >= 1:
        raise ValueError(f"diffusion_steps = {T} with noise_schedule {name} gives β_T = {betas.max():g} >= 1 (their "
                         "linear schedule is DDPM's scaled by 1000/T); no model of theirs has it: check --diffusion_steps")
    ours = getattr(NoiseSchedule, name)(T).betas
    if np.allclose(ours, betas, rtol=1e-12, atol=0):
        return dict(schedule=name, T=T, betas=None)
    return dict(schedule="custom", T=T, betas=betas.tolist())


def variance_of(flags: dict) -> str:
    """Our name of their variance type: LEARNED_RANGE, FIXED_SMALL or FIXED_LARGE."""
    if flags["learn_sigma"]:
        return "learned-range"
    return "posterior" if flags["sigma_small"] else "fixed-large"


def import_config(flags: dict, *, origin: str = "improved-diffusion", data: str = "cifar10",
                  data_root: str | None = None, source: dict | None = None):
    """The :class:`~ppl_diffusion.train.config.TrainConfig` of a model of theirs with ``flags`` (their names, values typed or
    as strings), evaluated on ``data``: net ``"unet"`` with ``unet_kwargs``, their schedule and variance, and
    ``source`` recording the flags. Returns (config, resolved flags).

    :param dict flags: their flags by name (:data:`~ppl_diffusion.interop.improved_diffusion.FLAGS`).
    :param str origin: a name of :data:`~ppl_diffusion.interop.improved_diffusion.ORIGINS`.
    :param str data: the data set the model is evaluated on.
    :param str data_root: its folder, for the data sets read from files.
    :param dict source: more to record in ``config.source`` (e.g. the checkpoint's path and hash).

    Example (improved DDPM's CIFAR-10 model with learned variances, as a config of ours):

    >>> from ppl_diffusion.interop import import_config
    >>> config, flags = import_config({"image_size": 32, "num_channels": 128, "num_res_blocks": 3,
    ...                                "diffusion_steps": 4000, "noise_schedule": "cosine", "learn_sigma": True})
    >>> config.net, config.schedule, config.T, config.variance
    ('unet', 'cosine', 4000, 'learned-range')
    >>> config.net_config["channel_mult"], config.net_config["timestep_shift"], config.net_config["timestep_scale"]
    ([1, 2, 2, 2], -1.0, 0.25)
    """
    from ..train import TrainConfig

    resolved = resolve_flags(flags, origin)
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in unet_kwargs(resolved, origin).items()}  # as JSON
    config = TrainConfig(data=data, data_root=data_root, net="unet", net_config=kwargs,
                         variance=variance_of(resolved), **schedule_fields(resolved), steps=None,
                         source={"kind": origin, "flags": resolved, **(source or {})})
    return config, resolved


# ------------------------------------------------------------------------------------------------ keys
def _qkv_rows(value: torch.Tensor, heads: int, to_ours: bool) -> torch.Tensor:
    """Reorder the 3C rows of a qkv weight / bias between their legacy [head][q,k,v][d] and our [q,k,v][head][d]."""
    d = value.shape[0] // (3 * heads)
    rest = value.shape[1:]
    if to_ours:
        return value.reshape(heads, 3, d, *rest).transpose(0, 1).reshape(value.shape)
    return value.reshape(3, heads, d, *rest).transpose(0, 1).reshape(value.shape)


def _our_key(key: str) -> str:
    return key.replace(".skip_connection.", ".skip.")


def _their_key(key: str) -> str:
    return key.replace(".skip.", ".skip_connection.")


def _heads(net, key: str) -> int:
    return net.get_submodule(key.rsplit(".", 2)[0]).num_heads


def state_dict_to_ours(state_dict: dict, net, *, legacy_attention: bool = True) -> dict[str, torch.Tensor]:
    """Their ``state_dict`` in our key naming and layout, float32, checked against ``net`` (our UNet built from the
    same flags): every key of theirs must map to one of ours with the same shape and every one of ours be filled."""
    ours = net.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not torch.is_tensor(value):
            raise ValueError(f"checkpoint key {key!r} holds a {type(value).__name__}, not a tensor; pass the state dict "
                             "their scripts save (model*.pt or ema_*.pt)")
        if key.startswith("label_emb."):
            raise ValueError(f"checkpoint key {key!r} is a class embedding (class_cond): not supported, our denoiser "
                             "is unconditional; import an unconditional checkpoint")
        mine = _our_key(key)
        if mine not in ours:
            raise ValueError(f"checkpoint key {key!r} has no place in the U-Net of these flags; check --num_res_blocks, "
                             "--channel_mult, --attention_resolutions and --resblock_updown")
        if tuple(value.shape) != tuple(ours[mine].shape):
            hint = " (--learn_sigma doubles the output channels)" if mine.startswith("out.2.") else \
                " (check --num_channels, --channel_mult, --in_channels)"
            raise ValueError(f"checkpoint key {key!r} has shape {tuple(value.shape)} but the U-Net of these flags has "
                             f"{tuple(ours[mine].shape)}{hint}")
        value = value.detach().to(torch.float32)
        if legacy_attention and mine.endswith((".qkv.weight", ".qkv.bias")):
            value = _qkv_rows(value, _heads(net, mine), to_ours=True)
        out[mine] = value
    missing = [k for k in ours if k not in out]
    if missing:
        raise ValueError(f"checkpoint has no key {_their_key(missing[0])!r} ({len(missing)} missing) that the U-Net of "
                         "these flags needs; check --num_res_blocks, --channel_mult and --attention_resolutions")
    return out


def state_dict_to_theirs(state_dict: dict, net) -> dict[str, torch.Tensor]:
    """Our UNet's ``state_dict`` in their key naming and legacy qkv order (which both their code bases read)."""
    out = {}
    for key, value in state_dict.items():
        value = value.detach().cpu().to(torch.float32).clone()
        if key.endswith((".qkv.weight", ".qkv.bias")):
            value = _qkv_rows(value, _heads(net, key), to_ours=False)
        out[_their_key(key)] = value
    return out


def load_state_dict(checkpoint) -> dict:
    """A state dict from a ``.pt`` path (loaded with ``weights_only=True``) or a dict."""
    if isinstance(checkpoint, dict):
        return checkpoint
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the .pt file their scripts saved")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise ValueError(f"checkpoint {path} is not a torch state dict ({type(e).__name__}); pass the .pt file their "
                         "scripts saved") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return state


# ------------------------------------------------------------------------------------------------ entry points
def from_improved_diffusion(checkpoint, *, origin: str = "improved-diffusion", data: str | None = None,
                            decoder: str = "discretized", backend: str = "pyro", **flags):
    """The :class:`~ppl_diffusion.diffusion.GaussianDiffusion` of an improved-diffusion or guided-diffusion checkpoint.

    :param checkpoint: the path of the ``.pt`` state dict their scripts saved (``model*.pt``, ``ema_*.pt``), or the
        dict itself.
    :param str origin: ``"improved-diffusion"`` or ``"guided-diffusion"``: whose flag defaults apply (they differ in
        ``rescale_timesteps``).
    :param str data: the data set's name, recorded only (``ppl-diffusion import`` uses it for the run folder).
    :param str decoder: p(x_0|x_1): ``"discretized"`` (their bits/dim's, 8-bit images) or ``"gaussian"``.
    :param str backend: ``"pyro"`` or ``"numpyro"`` (the JAX twin holding the same weights).
    :param flags: their flags by their names (see the module docstring), values typed or as strings.
    :returns: the model in eval mode; the denoiser sees their step index t − 1 for our t (and their rescaling).

    Example (a U-Net of ours written as their checkpoint by
    :func:`~ppl_diffusion.interop.export.to_improved_diffusion`, then imported):

    >>> import tempfile
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from ppl_diffusion.interop import from_improved_diffusion, to_improved_diffusion, write_run
    >>> from ppl_diffusion.train import TrainConfig, build_diffusion
    >>> _ = torch.manual_seed(0)
    >>> unet = dict(model_channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4],
    ...             min_group_channels=1, zero_init=False)  # 32 groups in every GroupNorm, as theirs have
    >>> config = TrainConfig(net="unet", net_config=unet, schedule="cosine", T=10, variance="posterior")
    >>> meta = {"event_shape": [1, 8, 8], "decoder": "discretized"}
    >>> net = build_diffusion(config, SimpleNamespace(**meta)).denoiser
    >>> x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 10])
    >>> tmp = tempfile.TemporaryDirectory()
    >>> run = write_run(f"{tmp.name}/run", config, net.state_dict(), meta=meta).parent
    >>> doc = to_improved_diffusion(run, f"{tmp.name}/theirs")  # model.pt, flags.json, flags.txt
    >>> diffusion = from_improved_diffusion(f"{tmp.name}/theirs/model.pt", **doc["flags"])
    >>> type(diffusion).__name__, diffusion.T, diffusion.variance, diffusion.denoiser.timestep_shift
    ('GaussianDiffusion', 10, 'posterior', -1.0)
    >>> torch.allclose(diffusion.denoiser(x_t, t), net(x_t, t), atol=1e-5)
    True
    >>> tmp.cleanup()
    """
    from types import SimpleNamespace

    from ..train import build_diffusion

    config, _ = import_config(flags, origin=origin, data=data or "cifar10")
    kwargs = config.net_config
    meta = SimpleNamespace(event_shape=(kwargs["in_channels"], kwargs["image_size"], kwargs["image_size"]),
                           decoder=decoder)
    diffusion = build_diffusion(config, meta)
    sd = state_dict_to_ours(load_state_dict(checkpoint), diffusion.denoiser,
                            legacy_attention=not config.source["flags"]["use_new_attention_order"])
    diffusion.denoiser.load_state_dict(sd)
    from ..train.load import to_backend

    return to_backend(diffusion, backend)
