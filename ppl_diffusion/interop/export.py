"""A run's model out of this package: safetensors weights with a JSON config, or an improved-diffusion checkpoint.

``to_safetensors(run, out)`` writes ``out/model.safetensors`` (the denoiser's state dict, and a learned prior's
under ``prior.`` and a learned γ schedule's under ``schedule.``) and ``out/ppl_diffusion.json`` (the run's :class:`~ppl_diffusion.train.config.TrainConfig`, the data's
event shape and decoder, which weights and from which checkpoint); :func:`~ppl_diffusion.interop.export.from_safetensors` builds the same
:class:`~ppl_diffusion.diffusion.GaussianDiffusion` from them, and ``ppl-diffusion import safetensors DIR`` makes a run
folder of them.

``to_improved_diffusion(run, out)`` writes ``out/model.pt`` (the U-Net's state dict in their key naming and legacy
qkv order, :mod:`~ppl_diffusion.interop.improved_diffusion`), ``out/flags.json`` (every flag, the command-line
strings their two code bases accept, and what of our model their code cannot express) and ``out/flags.txt``. Any
of our U-Nets whose GroupNorms all have 32 groups is their architecture (the presets are). The step label: their
code hands the net its 0-based index t − 1 (or (t − 1) · 1000/T with ``rescale_timesteps``); a net trained here
embeds t, and since the embedding's features at t = (t − 1) + 1 are a fixed rotation of those at t − 1
(cos(a + b) = cos a cos b − sin a sin b, sin likewise), the shift is folded exactly into the first layer of the
time MLP (W ← W R(1)), so their code calls it at their index and it computes what it computed here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from . import improved_diffusion as idiff

__all__ = ["from_safetensors", "to_improved_diffusion", "to_safetensors"]

SAFETENSORS_FORMAT = "ppl_diffusion.safetensors/1"
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "ppl_diffusion.json"


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError:
        raise ValueError("safetensors export needs the safetensors package; install it with "
                         "pip install -c constraints.txt safetensors") from None
    return st


def _load(run, ema: bool):
    from ..sampling import load_run

    return load_run(run, ema=ema, device="cpu")


# ------------------------------------------------------------------------------------------------ safetensors
def to_safetensors(run, out_dir, *, ema: bool = True) -> Path:
    """Write the model of ``run`` (a run folder or checkpoint; EMA weights by default) to ``out_dir``; returns it.

    :param run: a run folder or a checkpoint file.
    :param out_dir: the folder to write ``model.safetensors`` and ``ppl_diffusion.json`` to (created).
    :param bool ema: export the EMA weights (default) or the raw ones.
    :rtype: pathlib.Path

    Example (a round trip: :func:`~ppl_diffusion.interop.export.from_safetensors` gives back the same weights):

    >>> import tempfile
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from ppl_diffusion.train import TrainConfig, build_diffusion
    >>> config = TrainConfig(data="gaussian", net="mlp", net_config={"width": 16}, T=10)
    >>> meta = {"event_shape": [2], "decoder": "gaussian"}
    >>> net = build_diffusion(config, SimpleNamespace(**meta)).denoiser
    >>> from ppl_diffusion.interop import from_safetensors, to_safetensors, write_run
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     run = write_run(f"{folder}/run", config, net.state_dict(), meta=meta).parent
    ...     out = to_safetensors(run, f"{folder}/export")
    ...     files = sorted(p.name for p in out.iterdir())
    ...     back = from_safetensors(out)
    >>> files
    ['model.safetensors', 'ppl_diffusion.json']
    >>> all(torch.equal(w, back.denoiser.state_dict()[k]) for k, w in net.state_dict().items())
    True
    """
    st = _safetensors()
    loaded = _load(run, ema)
    d = loaded.diffusion
    tensors = {k: v.detach().cpu().contiguous() for k, v in d.denoiser.state_dict().items()}
    for part in ("prior", "schedule"):  # a learned prior's and a γ schedule's weights, under their prefixes
        module = getattr(d, part)
        if isinstance(module, torch.nn.Module):
            tensors.update({f"{part}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st.save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": SAFETENSORS_FORMAT})
    from ..checkpoint import load_checkpoint

    data = load_checkpoint(loaded.checkpoint)["data"]  # the event shape and decoder the run was built with
    doc = {"format": SAFETENSORS_FORMAT, "config": loaded.config.to_dict(),
           "data": {"event_shape": list(data["event_shape"]), "decoder": data["decoder"]},
           "weights": "ema" if ema else "raw", "checkpoint": str(loaded.checkpoint), "step": loaded.step}
    (out / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return out


def read_safetensors(folder) -> tuple:
    """(TrainConfig, data meta, denoiser state dict, prior state dict or None, γ schedule state dict or None) of an
    exported folder."""
    from ..train import TrainConfig

    st = _safetensors()
    folder = Path(folder)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} does not exist; pass a folder written by ppl-diffusion export "
                                    "--to safetensors")
    doc = json.loads((folder / CONFIG_FILE).read_text())
    if doc.get("format") != SAFETENSORS_FORMAT:
        raise ValueError(f"{folder / CONFIG_FILE} has format {doc.get('format')!r}, expected {SAFETENSORS_FORMAT!r}")
    tensors = st.load_file(str(folder / WEIGHTS_FILE))
    denoiser = {k: v for k, v in tensors.items() if not k.startswith(("prior.", "schedule."))}
    prior = {k[len("prior."):]: v for k, v in tensors.items() if k.startswith("prior.")} or None
    schedule = {k[len("schedule."):]: v for k, v in tensors.items() if k.startswith("schedule.")} or None
    return TrainConfig.from_dict(doc["config"]), doc["data"], denoiser, prior, schedule


def from_safetensors(folder, *, backend: str = "pyro", device: str = "cpu"):
    """The :class:`~ppl_diffusion.diffusion.GaussianDiffusion` (eval mode) of a folder written by :func:`~ppl_diffusion.interop.export.to_safetensors`, or
    with ``backend="numpyro"`` its NumPyro twin.

    :param folder: a folder holding ``model.safetensors`` and ``ppl_diffusion.json``.
    :param str backend: ``"pyro"`` or ``"numpyro"``.
    :param str device: where the Pyro model goes.

    Example:

    >>> import tempfile
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from ppl_diffusion.train import TrainConfig, build_diffusion
    >>> config = TrainConfig(data="gaussian", net="mlp", net_config={"width": 16}, T=10)
    >>> meta = {"event_shape": [2], "decoder": "gaussian"}
    >>> net = build_diffusion(config, SimpleNamespace(**meta)).denoiser
    >>> from ppl_diffusion.interop import from_safetensors, to_safetensors, write_run
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     run = write_run(f"{folder}/run", config, net.state_dict(), meta=meta).parent
    ...     back = from_safetensors(to_safetensors(run, f"{folder}/export"))
    >>> type(back).__name__, back.T, back.training
    ('GaussianDiffusion', 10, False)
    >>> x_t, t = torch.randn(3, 2), torch.tensor([1, 5, 10])
    >>> torch.equal(back.denoiser(x_t, t), net.eval()(x_t, t))
    True
    """
    from .run_folder import check_weights

    config, meta, denoiser, prior, schedule = read_safetensors(folder)
    from ..train.load import to_backend

    return to_backend(check_weights(config, meta, denoiser, prior, schedule), backend, device)


# ------------------------------------------------------------------------------------------------ improved-diffusion
def step_rotation(dim: int, delta: float, max_period: float = 10000.0) -> np.ndarray:
    """R ``[dim x dim]`` (float64) with e(t + δ) = R e(t) for the sinusoidal embedding e (cos half, then sin half,
    a zero column for odd ``dim``)."""
    half = dim // 2
    f = np.exp(-math.log(max_period) * np.arange(half) / half)
    c, s = np.cos(delta * f), np.sin(delta * f)
    r = np.zeros((dim, dim))
    i = np.arange(half)
    r[i, i], r[i, half + i] = c, -s
    r[half + i, i], r[half + i, half + i] = s, c
    return r


def check_noise_schedule(diffusion, config, kind: str) -> None:
    """A one-line refusal to export a γ-schedule model (learned or in continuous time) to ``kind``, whose code runs
    a β_t schedule of T steps; safetensors keeps it."""
    if getattr(diffusion, "gamma_schedule", False):
        T = "T = ∞" if diffusion.T == 0 else f"T = {diffusion.T}"
        raise ValueError(f"export --to {kind}: this run's forward process is the γ schedule {config.schedule!r} "
                         f"({T}), and {kind}'s code runs a β_t schedule of T steps with a step-labelled net; export "
                         "--to safetensors (which keeps the schedule)")


def improved_diffusion_flags(diffusion, config) -> tuple[dict, list[str], float]:
    """(their flags for our model, what their code would compute differently, the step shift δ to fold in)."""
    from ..diffusion import GaussianDiffusion
    from ..nets import UNet
    from ..nets.unet import AttentionBlock, ResBlock

    check_noise_schedule(diffusion, config, "improved-diffusion")
    if not isinstance(diffusion, GaussianDiffusion) or not isinstance(diffusion.denoiser, UNet):
        raise ValueError(f"export to improved-diffusion needs a U-Net denoiser; this run's net is {config.net!r}")
    net = diffusion.denoiser
    if getattr(net, "fourier_features", ()):
        raise ValueError(f"the U-Net has Fourier features of x_t (fourier_features={list(net.fourier_features)}); "
                         "improved-diffusion's UNetModel has none")
    groups = {m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}
    if groups != {32}:
        raise ValueError(f"the U-Net's GroupNorms have {sorted(groups)} groups; improved-diffusion's always have 32 "
                         "(widths that are multiples of 64 give 32 here too)")
    T, shift, scale = diffusion.T, net.timestep_shift, net.timestep_scale
    if scale == 1.0:
        rescale, delta = False, 1.0 + shift
    elif shift == -1.0 and math.isclose(scale, 1000.0 / T, rel_tol=1e-12):
        rescale, delta = True, 0.0
    else:
        raise ValueError(f"the U-Net embeds (t + {shift:g}) · {scale:g}; improved-diffusion feeds t − 1, or (t − 1) · "
                         "1000/T with rescale_timesteps: no flag gives this step label")
    if not net.attention_resolutions:
        raise ValueError("the U-Net has no attention outside its middle block; their attention_resolutions cannot say so")
    attention = [m for m in net.modules() if isinstance(m, AttentionBlock)]
    heads = {m.num_heads for m in attention}
    res = next(m for m in net.modules() if isinstance(m, ResBlock))
    flags = dict(image_size=net.image_size, num_channels=net.model_channels,
                 num_res_blocks=(len(net.input_blocks) - len(net.channel_mult)) // len(net.channel_mult),
                 channel_mult=",".join(map(str, net.channel_mult)),
                 attention_resolutions=",".join(str(r) for r in net.attention_resolutions),
                 num_heads=heads.pop() if len(heads) == 1 else -1, num_head_channels=-1, num_heads_upsample=-1,
                 use_new_attention_order=False, dropout=float(res.out_layers[2].p),
                 use_scale_shift_norm=bool(res.scale_shift), learn_sigma=bool(net.learn_sigma), sigma_small=False,
                 diffusion_steps=T, noise_schedule=None, timestep_respacing="", rescale_timesteps=rescale,
                 class_cond=False, predict_xstart=False, resblock_updown=False, use_fp16=False, use_kl=False,
                 use_checkpoint=False, rescale_learned_sigmas=False, in_channels=net.in_channels)
    if flags["num_heads"] == -1:
        widths = {m.qkv.in_channels // m.num_heads for m in attention}
        flags["num_heads"], flags["num_head_channels"] = 1, widths.pop()
    betas = diffusion.schedule.betas
    for name in ("linear", "cosine"):
        theirs = idiff.their_betas(name, T)
        if theirs.max() < 1 and np.allclose(theirs, betas, rtol=1e-12, atol=0):
            flags["noise_schedule"] = name
    if flags["noise_schedule"] is None:
        raise ValueError(f"the schedule ({config.schedule}, T = {T}) is neither of improved-diffusion's linear and "
                         "cosine schedules of T steps; their code cannot run it")
    differences = []
    variance = diffusion.variance if isinstance(diffusion.variance, str) else "fitted"
    if variance == "posterior":
        flags["sigma_small"] = True
    elif variance == "beta":
        differences.append("variance 'beta' has σ_1² = β_1 at the decoder; their FIXED_LARGE has β̃_2 there")
    elif variance == "learned":
        differences.append("variance 'learned' interpolates with sigmoid(2v); their LEARNED_RANGE with (v + 1)/2")
    elif variance == "fitted":
        differences.append("a fitted variance has no flag; exported as FIXED_LARGE")
    if getattr(diffusion.decoder, "bins", None) is None:
        differences.append("the decoder is Gaussian; theirs is the discretized Gaussian of 8-bit images")
    elif getattr(diffusion.decoder, "name", None) == "vdm-categorical":
        differences.append("the decoder is VDM's categorical from x_1/α_1; theirs is the discretized Gaussian at "
                           "the net's x̂_0")
    if diffusion.prior is not None:
        differences.append(f"the prior p(x_T) is {config.prior!r}; theirs is N(0, I)")
    return flags, differences, delta


def _command_lines(flags: dict) -> dict:
    """Their command-line flag strings, where their argument parsers accept them; else why not."""
    model = ["image_size", "num_channels", "num_res_blocks", "num_heads", "num_heads_upsample", "attention_resolutions",
             "dropout", "learn_sigma", "use_scale_shift_norm"]
    diffusion = ["diffusion_steps", "noise_schedule", "rescale_timesteps", "timestep_respacing"]
    out = {}
    why = []
    if flags["in_channels"] != 3:
        why.append(f"their scripts build 3-channel nets, this one has {flags['in_channels']}")
    mult = tuple(int(m) for m in flags["channel_mult"].split(","))
    if idiff.DEFAULT_CHANNEL_MULT["improved-diffusion"].get(flags["image_size"]) != mult:
        imp = why + [f"improved-diffusion fixes channel_mult by image size; this net has {flags['channel_mult']}"]
    else:
        imp = list(why)
    if flags["num_head_channels"] != -1:
        imp.append("num_head_channels is guided-diffusion's flag")
    out["improved-diffusion"] = None if imp else idiff.flags_string(
        {k: flags[k] for k in model + ["sigma_small"] + diffusion})
    gui = list(why) + (["guided-diffusion has no sigma_small (FIXED_SMALL)"] if flags["sigma_small"] else [])
    out["guided-diffusion"] = None if gui else idiff.flags_string(
        {k: flags[k] for k in model + ["channel_mult", "num_head_channels"] + diffusion})
    out["why_not"] = {"improved-diffusion": imp, "guided-diffusion": gui}
    return out


def to_improved_diffusion(run, out_dir, *, ema: bool = True) -> dict:
    """Write the U-Net of ``run`` as an improved-diffusion checkpoint (``model.pt``, ``flags.json``, ``flags.txt``) to
    ``out_dir``; returns ``flags.json``'s dict. :func:`~ppl_diffusion.interop.improved_diffusion.from_improved_diffusion` of
    ``model.pt`` with ``flags.json``'s ``"flags"`` is the same model (tested) up to the listed ``differences``.

    :param run: a run folder or a checkpoint file; its denoiser must be a U-Net their ``UNetModel`` expresses (32
        groups in every GroupNorm, attention at some level, no Fourier features) and its schedule their linear or
        cosine one of T steps.
    :param out_dir: the folder to write to (created).
    :param bool ema: export the EMA weights (default) or the raw ones.
    :returns: ``flags.json``'s dict: ``flags``, ``command_line``, ``exact``, ``differences``, ``from``.
    :raises ValueError: one line naming what their code cannot express.

    Example (a U-Net of 32 channels on 8x8 images, exported and imported back):

    >>> import tempfile
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from ppl_diffusion.interop import to_improved_diffusion, write_run
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
    >>> from ppl_diffusion.interop import from_improved_diffusion
    >>> sorted(doc), doc["exact"], doc["flags"]["noise_schedule"], doc["flags"]["sigma_small"]
    (['command_line', 'differences', 'exact', 'flags', 'from'], True, 'cosine', True)
    >>> back = from_improved_diffusion(f"{tmp.name}/theirs/model.pt", **doc["flags"])
    >>> torch.allclose(back.denoiser(x_t, t), net(x_t, t), atol=1e-5)  # their step index t - 1, folded in
    True
    >>> tmp.cleanup()
    """
    loaded = _load(run, ema)
    d = loaded.diffusion
    flags, differences, delta = improved_diffusion_flags(d, loaded.config)
    sd = {k: v.detach().cpu().to(torch.float32).clone() for k, v in d.denoiser.state_dict().items()}
    if delta:
        w = sd["time_embed.0.weight"].double().numpy()
        sd["time_embed.0.weight"] = torch.from_numpy(w @ step_rotation(w.shape[1], delta)).to(torch.float32)
    theirs = idiff.state_dict_to_theirs(sd, d.denoiser)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(theirs, out / "model.pt")
    doc = {"flags": flags, "command_line": _command_lines(flags), "exact": not differences,
           "differences": differences, "from": {"checkpoint": str(loaded.checkpoint), "step": loaded.step,
                                                "weights": "ema" if ema else "raw"}}
    (out / "flags.json").write_text(json.dumps(doc, indent=2) + "\n")
    line = doc["command_line"]["improved-diffusion"] or doc["command_line"]["guided-diffusion"] or \
        idiff.flags_string(flags)
    (out / "flags.txt").write_text(line + "\n")
    return doc
