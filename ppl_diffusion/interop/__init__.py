"""Models trained elsewhere, in and out: ``ppl-diffusion import`` / ``export`` and their Python API.

=========================  ===========================================================================
``improved_diffusion.py``  :func:`~ppl_diffusion.interop.improved_diffusion.from_improved_diffusion`: an improved-diffusion / guided-diffusion state dict
                           and their flags → :class:`~ppl_diffusion.diffusion.GaussianDiffusion` (our U-Net is their
                           ``UNetModel``; the key map, step label, schedule and variance types are in its
                           docstring); both backends.
``export.py``              a run → safetensors + JSON (:func:`~ppl_diffusion.interop.export.to_safetensors`, read back by
                           :func:`~ppl_diffusion.interop.export.from_safetensors`), → an improved-diffusion checkpoint with its flags
                           (:func:`~ppl_diffusion.interop.export.to_improved_diffusion`).
``run_folder.py``          :func:`~ppl_diffusion.interop.run_folder.write_run`: the run folder of an imported model, which every command loads.
``diffusers.py``           :func:`~ppl_diffusion.interop.diffusers.from_diffusers`: a diffusers DDPM/DDIM pipeline
                           folder (``UNet2DModel`` + scheduler) → a model whose denoiser is the UNet behind an
                           adapter (Pyro only); ``to_diffusers``: export (exact for our U-Net presets).
=========================  ===========================================================================

``IMPORTERS`` and ``EXPORTERS`` are the CLI's registries by kind: ``IMPORTERS[kind](source, run_dir, *, flags,
data, data_root)`` writes a run folder and returns its checkpoint; ``EXPORTERS[kind](run, out_dir, *, ema)`` writes
``out_dir``. Another adapter (diffusers) registers its own entries, and its denoiser's builder with
:func:`ppl_diffusion.nets.build.register_net`.
"""

from __future__ import annotations

from pathlib import Path

from .export import from_safetensors, to_improved_diffusion, to_safetensors
from .improved_diffusion import from_improved_diffusion, import_config, parse_flags
from .run_folder import write_run


def _sha256(path) -> str | None:
    import hashlib

    if not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_improved_diffusion(checkpoint, run_dir, *, flags="", data: str = "cifar10", data_root=None,
                              origin: str = "improved-diffusion") -> Path:
    """Write a run folder for an improved-diffusion (or, with ``origin``, guided-diffusion) checkpoint with ``flags``
    (their command-line string or a dict), to be evaluated on ``data``; returns the checkpoint written.

    :param checkpoint: the ``.pt`` state dict their scripts saved, or the dict itself.
    :param run_dir: the new run folder.
    :param flags: their flags (:data:`~ppl_diffusion.interop.improved_diffusion.FLAGS`), a string or a dict.
    :param str data: the data set it is evaluated on; its images must have the model's shape.
    :param data_root: the data's folder, for the data sets read from files.
    :param str origin: ``"improved-diffusion"`` or ``"guided-diffusion"``, whose flag defaults apply.
    :rtype: pathlib.Path

    Example (a checkpoint of theirs, written here by :func:`~ppl_diffusion.interop.export.to_improved_diffusion`, imported as a run):

    >>> import tempfile
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from ppl_diffusion.interop import import_improved_diffusion, to_improved_diffusion, write_run
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
    >>> checkpoint = import_improved_diffusion(f"{tmp.name}/theirs/model.pt", f"{tmp.name}/imported",
    ...                                        flags=doc["flags"], data="digits")
    >>> from ppl_diffusion.train import load_trained
    >>> imported = load_trained(checkpoint)
    >>> imported.T, torch.allclose(imported.denoiser(x_t, t), net(x_t, t), atol=1e-5)
    (10, True)
    >>> tmp.cleanup()
    """
    from . import improved_diffusion as idiff
    from .run_folder import dataset_meta

    flags = parse_flags(flags) if isinstance(flags, str) else dict(flags)
    source = {} if isinstance(checkpoint, dict) else {"checkpoint": str(Path(checkpoint).resolve()),
                                                      "sha256": _sha256(checkpoint)}
    config, resolved = import_config(flags, origin=origin, data=data, data_root=data_root, source=source)
    meta = dataset_meta(config)
    kw = config.net_config
    if tuple(meta["event_shape"]) != (kw["in_channels"], kw["image_size"], kw["image_size"]):
        raise ValueError(f"the flags give a model of {kw['in_channels']}x{kw['image_size']}x{kw['image_size']} images "
                         f"but data {data!r} has examples of shape {meta['event_shape']}; pass the data it was trained "
                         "on (or --in_channels / --image_size)")
    from types import SimpleNamespace

    from ..train import build_diffusion

    net = build_diffusion(config, SimpleNamespace(event_shape=tuple(meta["event_shape"]), decoder=meta["decoder"])).denoiser
    sd = idiff.state_dict_to_ours(idiff.load_state_dict(checkpoint), net,
                                  legacy_attention=not resolved["use_new_attention_order"])
    return write_run(run_dir, config, sd, meta=meta)


def import_guided_diffusion(checkpoint, run_dir, **kwargs) -> Path:
    """:func:`~ppl_diffusion.interop.import_improved_diffusion` with guided-diffusion's flag defaults (``rescale_timesteps=False``, their
    ``channel_mult`` per image size; :data:`~ppl_diffusion.interop.improved_diffusion.FLAGS`).

    Example (the flags that fix the architecture and schedule are required; nothing is written without them):

    >>> import os
    >>> import tempfile
    >>> from ppl_diffusion.interop import import_guided_diffusion
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     try:
    ...         import_guided_diffusion({}, f"{folder}/run", flags="--image_size 64", data="digits")
    ...     except ValueError as error:
    ...         print(str(error).split(":")[0], os.listdir(folder))
    missing flag --num_channels []
    """
    return import_improved_diffusion(checkpoint, run_dir, origin="guided-diffusion", **kwargs)


def import_safetensors(folder, run_dir, *, flags="", data=None, data_root=None) -> Path:
    """Write a run folder for a folder of :func:`~ppl_diffusion.interop.export.to_safetensors` (its own data set unless ``data`` is given).

    :param folder: a folder written by :func:`~ppl_diffusion.interop.export.to_safetensors`.
    :param run_dir: the new run folder.
    :param flags: must be empty (the folder carries its own config).
    :param str data: another data set to evaluate it on, or ``None``.
    :param data_root: that data's folder.
    :rtype: pathlib.Path

    Example:

    >>> import tempfile
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from ppl_diffusion.train import TrainConfig, build_diffusion
    >>> config = TrainConfig(data="gaussian", net="mlp", net_config={"width": 16}, T=10)
    >>> meta = {"event_shape": [2], "decoder": "gaussian"}
    >>> net = build_diffusion(config, SimpleNamespace(**meta)).denoiser
    >>> from ppl_diffusion.interop import import_safetensors, to_safetensors, write_run
    >>> from ppl_diffusion.train import load_trained
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     run = write_run(f"{folder}/run", config, net.state_dict(), meta=meta).parent
    ...     checkpoint = import_safetensors(to_safetensors(run, f"{folder}/export"), f"{folder}/again")
    ...     again = load_trained(checkpoint)
    >>> all(torch.equal(w, again.denoiser.state_dict()[k]) for k, w in net.state_dict().items())
    True
    """
    import dataclasses

    from .export import read_safetensors

    if flags:
        raise ValueError("--flags is for improved-diffusion checkpoints; a safetensors folder carries its own config")
    config, meta, denoiser, prior, schedule = read_safetensors(folder)
    if data is not None:
        config = dataclasses.replace(config, data=data, data_root=data_root)
        meta = None
    return write_run(run_dir, config, denoiser, meta=meta, prior_state=prior, schedule_state=schedule)


def import_diffusers(folder, run_dir, **kwargs) -> Path:
    """:func:`ppl_diffusion.interop.diffusers.import_diffusers` (diffusers is imported only here; its example imports
    an exported pipeline back as a run, a few seconds with diffusers' import).

    Example: the importer of ``ppl-diffusion import diffusers FOLDER RUN``.

    >>> from ppl_diffusion.interop import IMPORTERS, import_diffusers
    >>> IMPORTERS["diffusers"] is import_diffusers
    True
    """
    from .diffusers import import_diffusers as run

    return run(folder, run_dir, **kwargs)


def export_diffusers(run, out_dir, *, ema: bool = True) -> Path:
    """:func:`ppl_diffusion.interop.diffusers.export_diffusers` (diffusers is imported only here; its example exports
    a run and loads the pipeline back, a few seconds with diffusers' import).

    Example: the exporter of ``ppl-diffusion export --to diffusers RUN OUT``.

    >>> from ppl_diffusion.interop import EXPORTERS, export_diffusers
    >>> EXPORTERS["diffusers"] is export_diffusers
    True
    """
    from .diffusers import export_diffusers as go

    return go(run, out_dir, ema=ema)


#: The importers by kind (``ppl-diffusion import KIND``); ``IMPORTERS[kind](source, run_dir, *, flags, data,
#: data_root)`` writes a run folder and returns its checkpoint.
IMPORTERS = {
    "diffusers": import_diffusers,
    "improved-diffusion": import_improved_diffusion,
    "guided-diffusion": import_guided_diffusion,
    "safetensors": import_safetensors,
}
#: The exporters by kind (``ppl-diffusion export --to KIND``), ``EXPORTERS[kind](run, out_dir, *, ema)``.
EXPORTERS = {
    "diffusers": export_diffusers,
    "safetensors": to_safetensors,
    "improved-diffusion": to_improved_diffusion,
}

__all__ = ["EXPORTERS", "IMPORTERS", "export_diffusers", "from_improved_diffusion", "import_diffusers", "from_safetensors", "import_guided_diffusion",
           "import_improved_diffusion", "import_safetensors", "to_improved_diffusion", "to_safetensors", "write_run"]
