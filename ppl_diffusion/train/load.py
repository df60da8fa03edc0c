"""Loading a trained model from a run folder or checkpoint, on either backend."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from types import SimpleNamespace

from ..checkpoint import CheckpointError, load_checkpoint, run_checkpoint
from ..nets import MLPDenoiser, NetWarning, UNet
from ..precision import check_precision
from .config import BACKENDS, FORMAT, TrainConfig, _require_jax, build_diffusion

__all__ = ["load_trained"]


def load_trained(path: str | Path, *, ema: bool = True, device="cpu", backend: str = "pyro",
                 precision: str | None = None, last: bool = False):
    """The trained model from a run folder (its ``best.pt`` if it has one and not ``last``, else its newest
    checkpoint) or a checkpoint file, on either backend
    (the checkpoint format is shared): a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` in eval mode, or with
    ``backend="numpyro"`` its ``ppl_diffusion.numpyro.GaussianDiffusion`` twin holding the same weights.

    :param path: a run folder or a ``ckpt-*.pt`` / ``best.pt`` file.
    :param bool ema: load the EMA weights (default, as DDPM samples with) rather than the raw ones.
    :param device: where the Pyro model goes (``"cpu"``, ``"cuda"``, ...).
    :param str backend: ``"pyro"`` or ``"numpyro"``.
    :param str precision: the denoiser's arithmetic, ``"fp32"`` or ``"bf16"`` (``ppl_diffusion.precision``);
        default: the run's own (``config.precision``). The weights are float32 either way.
    :param bool last: the newest checkpoint even where the run has a ``best.pt``.
    :raises ~ppl_diffusion.checkpoint.CheckpointError: for a folder without checkpoints or a file that is not one.

    Example (a run of one step, loaded back with its EMA weights):

    >>> import tempfile
    >>> import torch
    >>> from ppl_diffusion.train import TrainConfig, load_trained, train
    >>> config = TrainConfig(data="gaussian", net="mlp", net_config={"width": 16, "depth": 1}, T=10,
    ...                      batch_size=4, steps=1, warmup_steps=0, ema_decay=0.0)
    >>> with tempfile.TemporaryDirectory() as run:
    ...     result = train(config, run, progress=False)
    ...     diffusion = load_trained(run)
    >>> type(diffusion).__name__, diffusion.T, diffusion.denoiser.num_parameters
    ('GaussianDiffusion', 10, 2274)
    >>> all(torch.equal(w, diffusion.denoiser.state_dict()[k]) for k, w in result.ema.items())
    True
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if precision is not None:
        check_precision(precision)
    path = Path(path)
    if path.is_dir():
        found = run_checkpoint(path, last=last)
        if found is None:
            raise CheckpointError(f"no ckpt-*.pt checkpoint in {path}; train first or pass a checkpoint file")
        path = found
    state = load_checkpoint(path)
    if state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state.get('format')!r}, expected {FORMAT!r}")
    config = TrainConfig.from_dict(state["config"])
    if precision is not None:
        config = dataclasses.replace(config, precision=precision)
    meta = SimpleNamespace(event_shape=tuple(state["data"]["event_shape"]), decoder=state["data"]["decoder"])
    with warnings.catch_warnings():  # a trained net's warnings were given when it was trained
        warnings.simplefilter("ignore", NetWarning)
        diffusion = build_diffusion(config, meta)
    load_weights(diffusion, state, ema=ema)
    return to_backend(diffusion, backend, device)


def load_weights(diffusion, state: dict, *, ema: bool = True) -> None:
    """Put a checkpoint's (or a trainer state's) weights into ``diffusion``: the denoiser's, a learned prior's and a
    learned γ schedule's (``schedule.*`` of its state dict), their EMA (default) or raw ones."""
    diffusion.denoiser.load_state_dict(state["ema"] if ema else state["model"])
    for key in ("prior", "schedule"):
        if state.get(key) is not None:
            getattr(diffusion, key).load_state_dict(state[f"{key}_ema"] if ema else state[key])


def to_backend(diffusion, backend: str = "pyro", device="cpu"):
    """A Pyro :class:`~ppl_diffusion.diffusion.GaussianDiffusion` in eval mode on ``device``, or (``backend="numpyro"``) its NumPyro twin
    holding the same weights; the one place a loaded or imported model is put on a backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if backend == "numpyro":
        if not isinstance(diffusion.denoiser, (MLPDenoiser, UNet)):
            raise ValueError(f"backend numpyro runs the built-in nets (the MLP and the U-Net: Flax twins); this "
                             f"model's denoiser is a {type(diffusion.denoiser).__name__}: use --backend pyro")
        if getattr(diffusion, "gamma_schedule", False):
            raise ValueError(f"this model's forward process is a γ schedule ({type(diffusion.schedule).__name__}): it "
                             "evaluates and samples on --backend pyro (the NumPyro backend trains it, but its "
                             "compiled bound, sampler and ODE read NoiseSchedules); drop --backend numpyro")
        _require_jax()
        from ..numpyro.train import from_torch

        twin = from_torch(diffusion.eval())
        twin.denoiser.eval()
        return twin
    return diffusion.to(device).eval()
