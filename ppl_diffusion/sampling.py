"""Loading a trained run and drawing samples from it: the API behind ``ppl-diffusion sample``.

Example::

    from ppl_diffusion.sampling import sample_run

    result = sample_run("runs/digits", n=64, steps=100, seed=0)   # EMA weights, 100 respaced steps
    result.samples.shape, result.png, result.npz
"""

from __future__ import annotations

import numbers
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch
from torch import Tensor

from . import plots
from .checkpoint import CHECKPOINT_RE, CheckpointError, list_checkpoints, load_checkpoint
from .data import to_uint8
from .diffusion import GaussianDiffusion
from .respace import respace
from .train import TrainConfig, load_trained, resolve_device


@dataclass
class Run:
    """A trained model loaded from a run folder (its newest checkpoint)."""

    diffusion: GaussianDiffusion
    config: TrainConfig
    checkpoint: Path
    step: int  # optimizer steps the checkpoint was taken at
    ema: bool  # EMA weights (True) or raw ones


def find_checkpoint(run: str | Path) -> Path:
    """The newest ``ckpt-*.pt`` of the run folder ``run`` (or ``run`` itself if it is a file)."""
    run = Path(run)
    if run.is_file():
        if not CHECKPOINT_RE.match(run.name) and not zipfile.is_zipfile(run):  # torch.save writes a zip archive
            raise CheckpointError(f"{run} is neither a run folder nor a checkpoint (not a torch.save file); pass "
                                  "the --run-dir of a `ppl-diffusion train` or one of its ckpt-*.pt files")
        return run
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; pass the --run-dir of a finished "
                                "`ppl-diffusion train`")
    found = list_checkpoints(run)
    if not found:
        raise CheckpointError(f"run folder {run} holds no ckpt-*.pt checkpoint; train into it first "
                              f"(ppl-diffusion train --run-dir {run} ...)")
    return found[-1]


def load_run(run: str | Path, *, ema: bool = True, device: str = "auto", backend: str = "pyro") -> Run:
    """The model of the newest checkpoint in ``run``, with EMA (default) or raw weights, in eval mode, on the
    Pyro backend or (``backend="numpyro"``) as its NumPyro twin; a run trained on either backend loads on both.

    :raises FileNotFoundError: if ``run`` does not exist.
    :raises CheckpointError: no checkpoint, a corrupt one, or weights that do not fit its configuration.
    """
    dev = resolve_device(device)
    path = find_checkpoint(run)
    state = load_checkpoint(path)
    try:
        config = TrainConfig.from_dict(state["config"])
        diffusion = load_trained(path, ema=ema, device=dev, backend=backend)
    except (KeyError, TypeError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} does not fit the configuration saved in it ({reason}); "
                              "it was written by a different configuration or version, train a new run") from None
    return Run(diffusion=diffusion, config=config, checkpoint=path, step=int(state.get("step", 0)), ema=ema)


def draw_samples(diffusion: GaussianDiffusion, n: int, *, steps: int | None = None, seed: int = 0) -> Tensor:
    """``n`` samples ``[n x *event_shape]`` by ancestral sampling, seeded with ``seed`` (same seed, same
    samples on the same device); ``steps = K`` samples with K respaced steps (:func:`~ppl_diffusion.respace`)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n = {n!r} samples; pass a positive integer (-n)")
    if backend_of(diffusion) == "numpyro":
        from .numpyro.sampling import draw_samples as draw_numpyro

        return torch.from_numpy(draw_numpyro(diffusion, int(n), steps=steps, seed=seed))
    model = diffusion if steps is None else respace(diffusion, steps)
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        return model.sample(int(n))


def backend_of(diffusion) -> str:
    """``"pyro"`` or ``"numpyro"``: which backend's :class:`GaussianDiffusion` ``diffusion`` is."""
    return "pyro" if isinstance(diffusion, GaussianDiffusion) else getattr(diffusion, "backend", "pyro")


def is_images(diffusion: GaussianDiffusion) -> bool:
    """Whether the model is of 8-bit images (a discretized decoder) rather than continuous vectors."""
    return getattr(diffusion.decoder, "bins", None) is not None


@dataclass
class SampleResult:
    samples: Tensor  # [n x *event_shape] in model space (float)
    png: Path  # image grid (images) or scatter plot (vectors)
    npz: Path  # "images": uint8 [n x C x H x W] for image data, "samples": float32 [n x D] otherwise
    run: Run


def sample_run(run: str | Path, *, n: int = 64, steps: int | None = None, seed: int = 0, ema: bool = True,
               device: str = "auto", out: str | Path | None = None, backend: str = "pyro") -> SampleResult:
    """Sample the trained model of ``run`` and write ``out`` (a PNG) and the ``.npz`` beside it.

    :param str backend: ``"pyro"`` or ``"numpyro"`` (the same checkpoint; each backend draws its own noise).
    :param out: the PNG path; default ``RUN/samples-{ema|raw}[-K{steps}].png``. The ``.npz`` has the
        same name with the suffix ``.npz``.
    """
    loaded = load_run(run, ema=ema, device=device, backend=backend)
    samples = draw_samples(loaded.diffusion, n, steps=steps, seed=seed).cpu()
    if out is None:
        out = Path(run) if Path(run).is_dir() else Path(run).parent
        out = out / f"samples-{'ema' if ema else 'raw'}{'' if steps is None else f'-K{steps}'}.png"
    png = Path(out)
    npz = png.with_suffix(".npz")
    png.parent.mkdir(parents=True, exist_ok=True)
    what = f"{n} samples, {'EMA' if ema else 'raw'} weights, step {loaded.step}, " + (
        f"T = {loaded.diffusion.T}" if steps is None else f"{steps} of {loaded.diffusion.T} steps")
    if is_images(loaded.diffusion):
        images = to_uint8(samples).numpy()
        np.savez_compressed(npz, images=images)
        plots.image_grid(images, png, title=what)
    else:
        np.savez_compressed(npz, samples=samples.to(torch.float32).numpy())
        plots.scatter(samples.numpy(), png, title=what)
    return SampleResult(samples=samples, png=png, npz=npz, run=loaded)
