"""Run folders for models trained elsewhere: what ``ppl-diffusion import`` writes.

An imported model's run folder is an ordinary one, so ``evaluate`` (``--fit-variance``, ``--likelihood ode``),
``sample`` and ``compare`` load it as they load a trained run: ``config.json`` (a
:class:`~ppl_diffusion.train.config.TrainConfig` whose ``net`` names a builder, e.g. ``"unet"`` with the U-Net's keyword
arguments in ``net_config``, whose schedule is a named one or ``"custom"`` with its β_t, and whose ``source``
records where the weights came from) and one checkpoint ``ckpt-00000000.pt`` (step 0) holding the weights as both
the raw and the EMA weights (a checkpoint of theirs is one set of weights), with no optimizer state: it is not a
run to resume.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

from ..checkpoint import checkpoint_path, list_checkpoints, save_checkpoint
from ..train import FORMAT, TrainConfig, build_diffusion
from ..train.run_dir import _write_json, absolute_data_root, check_run_dir

__all__ = ["write_run"]


def dataset_meta(config: TrainConfig) -> dict:
    """``{"event_shape", "decoder"}`` of ``config.data`` (read from ``config.data_root`` for file data sets)."""
    from ..data import load_dataset

    data = load_dataset(config.data, config.data_root) if config.data_root else load_dataset(config.data)
    return {"event_shape": list(data.event_shape), "decoder": data.decoder}


def check_weights(config: TrainConfig, meta: dict, state_dict: dict, prior_state: dict | None = None,
                  schedule_state: dict | None = None):
    """The model of ``config`` with ``state_dict`` loaded (strict), and a learned prior's and γ schedule's
    weights: a one-line error if they do not fit."""
    diffusion = build_diffusion(config, SimpleNamespace(event_shape=tuple(meta["event_shape"]), decoder=meta["decoder"]))
    try:
        diffusion.denoiser.load_state_dict(state_dict)
        if prior_state is not None:
            diffusion.prior.load_state_dict(prior_state)
        if schedule_state is not None:
            diffusion.schedule.load_state_dict(schedule_state)
    except RuntimeError as e:
        raise ValueError(f"the weights do not fit the model of the config ({str(e).strip().splitlines()[0]})") from None
    return diffusion


def write_run(run_dir: str | Path, config: TrainConfig, state_dict: dict, *, meta: dict | None = None,
              prior_state: dict | None = None, schedule_state: dict | None = None) -> Path:
    """Write the run folder of a model with weights ``state_dict`` (the denoiser's, our key naming) and settings
    ``config``; returns the checkpoint's path. Refuses a folder that already holds checkpoints.

    :param run_dir: the new run folder.
    :param config: the model's :class:`~ppl_diffusion.train.config.TrainConfig` (``steps`` may be ``None``).
    :param dict state_dict: the denoiser's weights, checked (strictly) against the net ``config`` builds.
    :param dict meta: ``{"event_shape": [...], "decoder": ...}`` of the data; default: read from ``config.data``.
    :param dict prior_state: a learned prior's weights, or ``None``.
    :param dict schedule_state: a learned γ schedule's weights, or ``None``.
    :returns: the path of ``ckpt-00000000.pt``.

    Example (a model built here, written as a run folder and loaded back):

    >>> import tempfile
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from ppl_diffusion.train import TrainConfig, build_diffusion
    >>> config = TrainConfig(data="gaussian", net="mlp", net_config={"width": 16}, T=10)
    >>> meta = {"event_shape": [2], "decoder": "gaussian"}
    >>> net = build_diffusion(config, SimpleNamespace(**meta)).denoiser
    >>> from ppl_diffusion.interop import write_run
    >>> from ppl_diffusion.train import load_trained
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     checkpoint = write_run(f"{folder}/run", config, net.state_dict(), meta=meta)
    ...     files = sorted(p.name for p in checkpoint.parent.iterdir())
    ...     loaded = load_trained(checkpoint.parent)
    >>> files
    ['ckpt-00000000.pt', 'config.json']
    >>> all(torch.equal(w, loaded.denoiser.state_dict()[k]) for k, w in net.state_dict().items())
    True
    """
    run_dir = check_run_dir(run_dir)
    if list_checkpoints(run_dir):
        raise ValueError(f"run folder {run_dir} already holds checkpoints; import into a new folder")
    config = dataclasses.replace(config, data_root=absolute_data_root(config.data_root))  # as train() stores it
    meta = dataset_meta(config) if meta is None else meta
    check_weights(config, meta, state_dict, prior_state, schedule_state)
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    prior = None if prior_state is None else {k: v.detach().cpu() for k, v in prior_state.items()}
    schedule = {} if schedule_state is None else {"schedule": {k: v.detach().cpu() for k, v in schedule_state.items()}}
    schedule.update({"schedule_ema": schedule["schedule"]} if schedule else {})
    _write_json(run_dir / "config.json", config.to_dict())
    return save_checkpoint(checkpoint_path(run_dir, 0), {
        "format": FORMAT, "step": 0, "elapsed": 0.0, "running_loss": None, "config": config.to_dict(),
        "world_size": 1, "data": meta, "model": weights, "ema": weights, "prior": prior, "prior_ema": prior,
        **schedule, "imported": True})
