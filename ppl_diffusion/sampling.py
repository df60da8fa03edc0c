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
import torch
from pyro import poutine
from pyro.distributions import Independent, Normal
from torch import Tensor

from . import noise, plots
from .checkpoint import BEST_NAME, CHECKPOINT_RE, CheckpointError, load_checkpoint, run_checkpoint
from .data import to_uint8
from .diffusion import GaussianDiffusion
from .gamma import CONTINUOUS_SAMPLE_STEPS
from .precision import check_precision
from .priors import prior_draws
from .respace import respace
from .resume import Progress, file_sha256
from .train import TrainConfig, load_trained, resolve_device


@dataclass
class Run:
    """A trained model loaded from a run folder (its newest checkpoint), what :func:`load_run` returns.

    :param diffusion: the model, a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` (or its NumPyro twin), in eval mode.
    :param config: the run's ``TrainConfig``.
    :param pathlib.Path checkpoint: the file the weights come from.
    :param int step: optimizer steps the checkpoint was taken at.
    :param bool ema: EMA weights (True) or raw ones.
    :param float val_bpd: best.pt: the validation bits/dim it was chosen by (else ``None``).

    Example:

    >>> import tempfile
    >>> from ppl_diffusion.train import TrainConfig, train
    >>> config = TrainConfig(data="eight_gaussians", net="mlp", net_config={"width": 16, "depth": 1}, T=10,
    ...                      batch_size=4, steps=1, warmup_steps=0, ema_decay=0.0)  # a 1-step run, for the example
    >>> folder = tempfile.TemporaryDirectory()
    >>> run = folder.name
    >>> _ = train(config, run, progress=False, log=lambda line: None)
    >>> from ppl_diffusion.sampling import load_run
    >>> loaded = load_run(run, device="cpu")
    >>> loaded.step, loaded.ema, loaded.val_bpd, loaded.weights_from, loaded.config.T
    (1, True, None, 'checkpoint', 10)
    >>> folder.cleanup()
    """

    diffusion: GaussianDiffusion
    config: TrainConfig
    checkpoint: Path
    step: int  # optimizer steps the checkpoint was taken at
    ema: bool  # EMA weights (True) or raw ones
    val_bpd: float | None = None  # best.pt: the validation bits/dim it was chosen by (else None)

    @property
    def weights_from(self) -> str:
        """``"best"`` (best.pt, the best by validation) or ``"checkpoint"`` (a ``ckpt-*.pt`` file)."""
        return "best" if self.checkpoint.name == BEST_NAME else "checkpoint"


def find_checkpoint(run: str | Path, *, last: bool = False) -> Path:
    """The checkpoint of the run folder ``run``: its ``best.pt`` (the best weights by validation, for a run
    trained with ``val_examples``) unless ``last``, else its newest ``ckpt-*.pt``; ``run`` itself if it is a file.

    :param run: a run folder or a checkpoint file.
    :param bool last: the newest ``ckpt-*.pt`` even where a ``best.pt`` exists.
    :rtype: pathlib.Path
    :raises FileNotFoundError: if ``run`` does not exist.

    Example:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from ppl_diffusion.sampling import find_checkpoint
    >>> with tempfile.TemporaryDirectory() as run:
    ...     for name in ("ckpt-00000010.pt", "ckpt-00000020.pt", "best.pt"):
    ...         (Path(run) / name).touch()
    ...     find_checkpoint(run).name, find_checkpoint(run, last=True).name
    ('best.pt', 'ckpt-00000020.pt')
    """
    run = Path(run)
    if run.is_file():
        if not CHECKPOINT_RE.match(run.name) and not zipfile.is_zipfile(run):  # torch.save writes a zip archive
            raise CheckpointError(f"{run} is neither a run folder nor a checkpoint (not a torch.save file); pass "
                                  "the --run-dir of a `ppl-diffusion train` or one of its ckpt-*.pt files")
        return run
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist; pass the --run-dir of a finished "
                                "`ppl-diffusion train`")
    found = run_checkpoint(run, last=last)
    if found is None:
        raise CheckpointError(f"run folder {run} holds no ckpt-*.pt checkpoint; train into it first "
                              f"(ppl-diffusion train --run-dir {run} ...)")
    return found


def load_run(run: str | Path, *, ema: bool = True, device: str = "auto", backend: str = "pyro",
             precision: str | None = None, last: bool = False) -> Run:
    """The model of ``run`` (:func:`find_checkpoint`: best.pt if the run has one and not ``last``, else its
    newest checkpoint), with EMA (default) or raw weights, in eval mode, on the Pyro backend or
    (``backend="numpyro"``) as its NumPyro twin; a run trained on either backend loads on both.
    ``precision``: ``"fp32"`` or ``"bf16"`` for the denoiser's arithmetic (default: the run's own).

    :raises FileNotFoundError: if ``run`` does not exist.
    :raises CheckpointError: no checkpoint, a corrupt one, or weights that do not fit its configuration.

    :param run: a run folder (of ``ppl-diffusion train``) or a checkpoint file.
    :param bool ema: the EMA weights (default) or the raw ones.
    :param str device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    :param str backend: ``"pyro"`` or ``"numpyro"``.
    :param str precision: ``"fp32"``, ``"bf16"`` or ``None`` (the run's own).
    :param bool last: the newest checkpoint even where a ``best.pt`` exists.
    :rtype: Run

    Example:

    >>> import tempfile
    >>> from ppl_diffusion.train import TrainConfig, train
    >>> config = TrainConfig(data="eight_gaussians", net="mlp", net_config={"width": 16, "depth": 1}, T=10,
    ...                      batch_size=4, steps=1, warmup_steps=0, ema_decay=0.0)  # a 1-step run, for the example
    >>> folder = tempfile.TemporaryDirectory()
    >>> run = folder.name
    >>> _ = train(config, run, progress=False, log=lambda line: None)
    >>> from ppl_diffusion.sampling import load_run
    >>> loaded = load_run(run, device="cpu")
    >>> loaded.step, loaded.checkpoint.name, loaded.diffusion.T, tuple(loaded.diffusion.event_shape)
    (1, 'ckpt-00000001.pt', 10, (2,))
    >>> folder.cleanup()
    """
    dev = resolve_device(device)
    if precision is not None:
        check_precision(precision)
    path = find_checkpoint(run, last=last)
    state = load_checkpoint(path)
    try:
        config = TrainConfig.from_dict(state["config"])
        diffusion = load_trained(path, ema=ema, device=dev, backend=backend, precision=precision)
    except (KeyError, TypeError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} does not fit the configuration saved in it ({reason}); "
                              "it was written by a different configuration or version, train a new run") from None
    return Run(diffusion=diffusion, config=config, checkpoint=path, step=int(state.get("step", 0)), ema=ema,
               val_bpd=state.get("val_bpd"))


def site_step(name: str) -> int | None:
    """The step s of the full-chain site ``x_{s}`` (``x_0`` is 0), else ``None``."""
    head, _, tail = name.partition("_")
    return int(tail) if head == "x" and tail.isdigit() else None


#: The number of steps of the chain that samples a model in continuous time unless told (``--steps K``).
SAMPLE_STEPS = CONTINUOUS_SAMPLE_STEPS  # the chain that samples a model in continuous time unless told (--steps K)


def sampling_chain(diffusion: GaussianDiffusion, steps=None) -> GaussianDiffusion:
    """The chain that ancestral sampling runs: the model itself, or with ``steps = K`` its K respaced steps
    (a NoiseSchedule's, :func:`~ppl_diffusion.respace`) or the K-step chain of its γ schedule
    (:meth:`~ppl_diffusion.diffusion.GaussianDiffusion.with_steps`, for a net conditioned on γ; any K >= 2). A model in
    continuous time needs ``steps``. One-line errors.

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion`.
    :param int steps: K, or ``None`` for the model's own chain.

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.sampling import sampling_chain
    >>> sampling_chain(diffusion) is diffusion, sampling_chain(diffusion, steps=5).T
    (True, 5)
    """
    if not diffusion.gamma_schedule:
        return diffusion if steps is None else respace(diffusion, steps)
    if steps is None:
        if diffusion.continuous:
            raise ValueError("this model is in continuous time (T = 0): pass the number of steps of the chain that "
                             f"samples it (--steps K, e.g. {SAMPLE_STEPS})")
        return diffusion
    if diffusion.time_input != "gamma":
        raise ValueError(f"--steps {steps} on a γ-schedule model whose net is conditioned on its {diffusion.T} step "
                         "labels (time_input='step'): it samples with its own steps only; drop --steps")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 2:
        raise ValueError(f"--steps {steps!r}: the chain of a γ schedule has K >= 2 steps (x_1 at γ_0, x_K at γ_1)")
    return diffusion.with_steps(int(steps))


def draw_samples(diffusion: GaussianDiffusion, n: int, *, steps: int | None = None, seed: int = 0,
                 indices=None) -> Tensor:
    """``n`` samples ``[n x *event_shape]`` by ancestral sampling; ``steps = K`` samples with K respaced steps
    (:func:`~ppl_diffusion.respace`), or for a γ schedule with the K-step chain of the same γ
    (:func:`sampling_chain`; a model in continuous time needs ``steps``).

    The noise is counter-based (:mod:`ppl_diffusion.noise`, stream ``SAMPLE``): sample i's draw of the site
    x_s is ``normal(seed, indices[i], s)`` (x_T from a Gaussian prior, x_{t−1} given x_t, the decoder's x_0
    at s = 0), ``indices`` default 0..n − 1. So sample i is the same in any batch and on any number of
    processes (and, up to float32 rounding, on both backends).

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` (or its NumPyro twin).
    :param int n: the number of samples.
    :param int steps: K respaced steps (default: the model's chain).
    :param int seed: the noise's seed.
    :param indices: the samples' indices ``[n]`` (default 0..n − 1).

    Example: a sample depends on its index, not on the batch it is drawn in.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.sampling import draw_samples
    >>> x = draw_samples(diffusion, 4, seed=0)
    >>> x.shape, torch.equal(draw_samples(diffusion, 2, seed=0, indices=[2, 3]), x[2:])
    (torch.Size([4, 2]), True)
    >>> draw_samples(diffusion, 4, steps=5, seed=0).shape  # 5 respaced steps
    torch.Size([4, 2])
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n = {n!r} samples; pass a positive integer (-n)")
    from .infer.bound import check_indices, feed_noise

    index = check_indices(indices, int(n))
    if backend_of(diffusion) == "numpyro":
        from .numpyro.sampling import draw_samples as draw_numpyro

        return torch.from_numpy(draw_numpyro(diffusion, int(n), steps=steps, seed=seed, indices=index))
    model = sampling_chain(diffusion, steps)
    device, dtype = model._device_dtype()
    if n == 0:
        return torch.zeros((0, *model.event_shape), device=device, dtype=dtype)
    shape = tuple(model.event_shape)

    def eps(name):
        s = site_step(name)
        if s is None:
            return None
        z = noise.normal(seed, index, s, shape, stream=noise.SAMPLE,
                         dtype=np.float64 if dtype == torch.float64 else np.float32)
        return torch.from_numpy(z).to(device=device, dtype=dtype)

    program = model.model
    prior = model.get_prior(device, dtype)
    base = prior.base_dist if isinstance(prior, Independent) else prior
    if not isinstance(base, Normal):  # no location-scale form: x_T per example by a seeded generator
        x_T = prior_draws(prior, seed, index, model.T, device, dtype)
        program = poutine.condition(program, data={f"x_{model.T}": x_T})
    program = feed_noise(program, eps)  # outside the condition, which sets x_T first
    with torch.no_grad():
        return program(None, n=int(n))


def backend_of(diffusion) -> str:
    """``"pyro"`` or ``"numpyro"``: which backend's :class:`GaussianDiffusion` ``diffusion`` is."""
    return "pyro" if isinstance(diffusion, GaussianDiffusion) else getattr(diffusion, "backend", "pyro")


def is_images(diffusion: GaussianDiffusion) -> bool:
    """Whether the model is of 8-bit images (a discretized decoder) rather than continuous vectors."""
    return getattr(diffusion.decoder, "bins", None) is not None


@dataclass
class SampleResult:
    """What :func:`sample_run` returns.

    :param torch.Tensor samples: ``[n] + event_shape`` in model space (float).
    :param pathlib.Path png: the image grid (images) or scatter plot (vectors).
    :param pathlib.Path npz: ``"images"``: uint8 ``[n x C x H x W]`` for image data, ``"samples"``: float32
        ``[n x D]`` otherwise.
    :param Run run: the loaded run.
    :param int nfe: ODE sampling: evaluations of the vector field (the largest over processes).
    :param int resumed_calls: calls of samples read back from an interrupted run's progress.

    Example (built by hand from a loaded run; :func:`sample_run`'s example makes one, writing the files):

    >>> import tempfile
    >>> from ppl_diffusion.train import TrainConfig, train
    >>> config = TrainConfig(data="eight_gaussians", net="mlp", net_config={"width": 16, "depth": 1}, T=10,
    ...                      batch_size=4, steps=1, warmup_steps=0, ema_decay=0.0)  # a 1-step run, for the example
    >>> folder = tempfile.TemporaryDirectory()
    >>> run = folder.name
    >>> _ = train(config, run, progress=False, log=lambda line: None)
    >>> from pathlib import Path
    >>> from ppl_diffusion.sampling import SampleResult, draw_samples, load_run
    >>> loaded = load_run(run, device="cpu")
    >>> result = SampleResult(samples=draw_samples(loaded.diffusion, 4, seed=0), png=Path(run, "samples-ema.png"),
    ...                       npz=Path(run, "samples-ema.npz"), run=loaded)
    >>> result.samples.shape, result.run.step, result.nfe, result.resumed_calls
    (torch.Size([4, 2]), 1, None, 0)
    >>> folder.cleanup()
    """

    samples: Tensor  # [n x *event_shape] in model space (float)
    png: Path  # image grid (images) or scatter plot (vectors)
    npz: Path  # "images": uint8 [n x C x H x W] for image data, "samples": float32 [n x D] otherwise
    run: Run
    nfe: int | None = None  # ODE sampling: evaluations of the vector field (the largest over processes)
    resumed_calls: int = 0  # calls of samples read back from an interrupted run's progress (all processes)


def draw_ode_samples(diffusion, n: int, *, seed: int = 0, indices=None, rtol: float = 1e-5, atol: float = 1e-5,
                     eps: float | None = None, time_map: str | None = None) -> tuple[Tensor, int]:
    """``n`` deterministic samples ``[n x *event_shape]`` by the probability-flow ODE from s = 1 to ε, and the NFE
    (:func:`ppl_diffusion.ode.sample_ode`, or ``ppl_diffusion.numpyro.ode.sample_ode`` for a NumPyro model).

    x_T of sample i is counter-based, the x_T of :func:`draw_samples` for the same seed and index, so sample i is
    the same in any share of the samples up to the solver's tolerance (the samples of one call share the steps).

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` (or its NumPyro twin).
    :param int n: the number of samples.
    :param int seed: x_T's seed.
    :param indices: the samples' indices ``[n]``.
    :param float rtol: the solver's relative tolerance.
    :param float atol: its absolute tolerance.
    :param float eps: the small-time end (default: the time map's).
    :param str time_map: as in :func:`ppl_diffusion.ode.log_likelihood`.

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.sampling import draw_ode_samples
    >>> x, nfe = draw_ode_samples(diffusion, 2, seed=0, rtol=1e-2, atol=1e-2)
    >>> x.shape, nfe > 0
    (torch.Size([2, 2]), True)
    """
    from .infer.bound import check_indices

    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n = {n!r} samples; pass a positive integer (-n)")
    index = check_indices(indices, int(n))
    opts = dict(rtol=rtol, atol=atol, eps=eps, time_map=time_map, seed=seed, indices=index)
    if backend_of(diffusion) == "numpyro":
        from .numpyro.ode import sample_ode as sample_ode_jax

        if n == 0:
            return torch.zeros((0, *diffusion.event_shape)), 0
        x, nfe = sample_ode_jax(diffusion, int(n), **opts)
        return torch.from_numpy(np.array(x)), int(nfe)  # a copy: JAX arrays are read-only
    from .ode import check_options, sample_ode

    if n == 0:  # this process's share can be empty; the options are still checked
        check_options(rtol=rtol, atol=atol)
        device, dtype = diffusion._device_dtype()
        return torch.zeros((0, *diffusion.event_shape), device=device, dtype=dtype), 0
    return sample_ode(diffusion, int(n), **opts)


def sample_run(run: str | Path, *, n: int = 64, steps: int | None = None, seed: int = 0, ema: bool = True,
               device: str = "auto", out: str | Path | None = None, backend: str = "pyro",
               precision: str = "fp32", ode: bool = False, rtol: float = 1e-5, atol: float = 1e-5,
               eps: float | None = None, time_map: str | None = None, last: bool = False,
               batch_size: int | None = None, restart: bool = False) -> SampleResult:
    """Sample the trained model of ``run`` and write ``out`` (a PNG) and the ``.npz`` beside it.

    The weights are ``run``'s best.pt when it has one (trained with ``val_examples``), else its newest checkpoint;
    ``last``: the newest checkpoint always.

    :param str backend: ``"pyro"`` or ``"numpyro"`` (the same checkpoint and the same noise, see
        :func:`draw_samples`).
    :param str precision: the denoiser's arithmetic, ``"fp32"`` (default, whatever the run trained at) or
        ``"bf16"`` (:mod:`ppl_diffusion.precision`).
    :param bool ode: deterministic samples by the probability-flow ODE (:func:`draw_ode_samples`, with ``rtol``,
        ``atol``, ``eps``, ``time_map``; x_T that of ancestral sampling with the same seed) instead of the chain;
        images are rounded to 8 bits as ancestral samples are. The result's ``nfe`` is then the NFE.
    :param steps: K: sample with K respaced steps of a NoiseSchedule, or the K-step chain of a γ schedule
        (:func:`sampling_chain`); a run in continuous time (T = 0) samples with :data:`SAMPLE_STEPS` steps unless told.
    :param out: the PNG path; default ``RUN/samples-{ema|raw}[-K{steps}|-ode].png``. The ``.npz`` has the
        same name with the suffix ``.npz``.
    :param int batch_size: samples per call, samples jB..(j+1)B − 1 in call j (default: all of a process's share
        in one call). Each call's samples are saved as they finish beside the PNG (``<out>.progress``,
        :mod:`ppl_diffusion.resume`), so the same call after a kill continues to the same samples, bit for bit;
        the folder is removed once the files are written.
    :param bool restart: discard the progress of an unfinished call of another configuration (``--restart``)
        instead of refusing it.

    Under ``torchrun`` each process draws a contiguous share of the n samples (their noise depends on the
    sample's index, so the result is that of one process), the shares are gathered, and rank 0 writes the
    files; every rank returns the same result.

    :param run: a run folder or checkpoint.
    :param int n: the number of samples.
    :param int seed: the noise's seed (sample i's noise depends on (seed, i) alone).
    :param bool ema: the EMA weights (default) or the raw ones.
    :param str device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    :param bool last: the newest checkpoint even where a ``best.pt`` exists.
    :param float rtol: with ``ode``, the solver's relative tolerance.
    :param float atol: with ``ode``, its absolute tolerance.
    :param float eps: with ``ode``, the small-time end.
    :param str time_map: with ``ode``, the time map.
    :rtype: SampleResult

    Example:

    >>> import tempfile
    >>> from ppl_diffusion.train import TrainConfig, train
    >>> config = TrainConfig(data="eight_gaussians", net="mlp", net_config={"width": 16, "depth": 1}, T=10,
    ...                      batch_size=4, steps=1, warmup_steps=0, ema_decay=0.0)  # a 1-step run, for the example
    >>> folder = tempfile.TemporaryDirectory()
    >>> run = folder.name
    >>> _ = train(config, run, progress=False, log=lambda line: None)
    >>> from ppl_diffusion.sampling import sample_run
    >>> result = sample_run(run, n=4, seed=0, device="cpu")
    >>> result.samples.shape, result.png.name, result.npz.exists()
    (torch.Size([4, 2]), 'samples-ema.png', True)
    >>> folder.cleanup()
    """
    from .distributed import local_device, world

    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n = {n!r} samples; pass a positive integer (-n)")
    if ode and steps is not None:
        raise ValueError(f"--steps {steps} with --ode: the ODE's solver chooses its own steps (set --rtol / --atol); "
                         "drop one of them")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                                   or batch_size < 1):
        raise ValueError(f"batch_size = {batch_size!r}; pass a positive number of samples per call (--batch-size)")
    w = world()
    loaded = load_run(run, ema=ema, device=local_device(device), backend=backend, precision=check_precision(precision),
                      last=last)
    part = w.shard(n)
    nfe = None
    if steps is None and not ode and getattr(loaded.diffusion, "continuous", False):
        steps = SAMPLE_STEPS  # a model in continuous time samples through a chain of its γ
    if out is None:
        out = Path(run) if Path(run).is_dir() else Path(run).parent
        tag = "-ode" if ode else ("" if steps is None else f"-K{steps}")
        out = out / f"samples-{'ema' if ema else 'raw'}{tag}.png"
    png = Path(out)
    npz = png.with_suffix(".npz")
    fingerprint = lambda: {  # noqa: E731 - what the samples depend on, computed on rank 0 alone
        "sample": n, "checkpoint_sha256": file_sha256(loaded.checkpoint), "ema": ema, "steps": steps, "seed": seed,
        "threads": torch.get_num_threads(),
        "backend": backend, "precision": precision, "device": resolve_device(local_device(device)).type,
        "batch_size": batch_size, "ode": dict(rtol=rtol, atol=atol, eps=eps, time_map=time_map) if ode else None}
    saved = Progress(png.with_suffix(".progress"), w.on_main(fingerprint))  # rank 0's, on every rank
    w.on_main(lambda: (png.parent.mkdir(parents=True, exist_ok=True), saved.open(restart=restart)))
    # Calls of samples [jB, (j + 1)B) ∩ this process's share (the whole share in one call without a batch size).
    cuts = sorted({part.start, part.stop, *(range(-(-part.start // batch_size) * batch_size, part.stop, batch_size)
                                            if batch_size else ())})
    calls = list(zip(cuts[:-1], cuts[1:]))

    def draw(start, stop):
        index = np.arange(start, stop)
        if ode:
            drawn, count = draw_ode_samples(loaded.diffusion, len(index), seed=seed, indices=index, rtol=rtol,
                                            atol=atol, eps=eps, time_map=time_map)
            return {"samples": drawn.cpu().numpy(), "nfe": np.array(count)}
        return {"samples": draw_samples(loaded.diffusion, len(index), steps=steps, seed=seed,
                                        indices=index).cpu().numpy()}

    parts = [saved.chunk(f"samples-{start}-{stop}", lambda: draw(start, stop)) for start, stop in calls]
    event = tuple(loaded.diffusion.event_shape)
    samples = (torch.from_numpy(np.concatenate([p["samples"] for p in parts])) if parts
               else torch.zeros((0, *event)))
    if ode:
        nfe = max(c for counts in w.gather_objects([int(p["nfe"]) for p in parts]) for c in counts)
    samples = w.gather(samples.contiguous())
    resumed = sum(c for counts in w.gather_objects([saved.reused]) for c in counts)
    if not w.is_main:
        w.barrier()  # rank 0 writes the files
        return SampleResult(samples=samples, png=png, npz=npz, run=loaded, nfe=nfe, resumed_calls=resumed)
    png.parent.mkdir(parents=True, exist_ok=True)
    best = " (best)" if loaded.weights_from == "best" else ""
    what = f"{n} samples, {'EMA' if ema else 'raw'} weights, step {loaded.step}{best}, " + (
        f"ODE, {nfe} evaluations" if ode else
        f"T = {loaded.diffusion.T}" if steps is None else
        f"{steps} steps of T = ∞ (continuous time)" if loaded.diffusion.T == 0 else
        f"{steps} of {loaded.diffusion.T} steps")
    if is_images(loaded.diffusion):
        images = to_uint8(samples).numpy()
        np.savez_compressed(npz, images=images)
        plots.image_grid(images, png, title=what)
    else:
        np.savez_compressed(npz, samples=samples.to(torch.float32).numpy())
        plots.scatter(samples.numpy(), png, title=what)
    saved.finish()  # the files are written: the progress is no longer needed
    w.barrier()
    return SampleResult(samples=samples, png=png, npz=npz, run=loaded, nfe=nfe, resumed_calls=resumed)


__all__ = ["SAMPLE_STEPS", "Run", "SampleResult", "draw_ode_samples", "draw_samples", "find_checkpoint", "load_run",
           "sample_run", "sampling_chain"]
