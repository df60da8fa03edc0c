"""Likelihood of a trained run through the probability-flow ODE: the API behind ``ppl-diffusion evaluate
--likelihood ode``.

:func:`evaluate_ode_run` loads the newest checkpoint of a run folder (EMA weights by default) and, for every test
example (or the first ``max_examples``) and every dequantization draw r = 0..R − 1, solves the probability-flow ODE
(:func:`ppl_diffusion.ode.log_likelihood`, or the JAX twin ``ppl_diffusion.numpyro.ode`` with ``backend="numpyro"``)
on the dequantized example (:mod:`ppl_diffusion.dequantize`). The numbers:

``bpd``
    mean over examples of the per-example mean over draws of −log2 p_ε(y)/D + offset: for 8-bit images an upper
    bound (Jensen, see :mod:`ppl_diffusion.dequantize`) on −log2 P(k)/D of the discrete model P(k) = ∫_cell p_ε,
    the *dequantized-ODE model*, estimated without bias (exact up to the solver's tolerance and, with
    ``trace="hutchinson"``, Hutchinson's unbiased noise); for continuous data −log2 p_ε(x)/D (no offset).
``bpd_stderr``
    its standard error over examples (it includes the dequantization and the Hutchinson noise: each example's
    mean is one draw of a random variable whose mean is the example's expected bound).
``dequantization_sd``
    with R ≥ 2: the within-example standard deviation over draws (pooled over examples), the dequantization's
    own noise (each example keeps its Hutchinson probes across its draws).
``nfe_mean``, ``nfe_max``
    evaluations of the vector field per batch solve (the examples of a batch share the adaptive steps, so NFE
    depends on the batch size; the step size is controlled by the worst example of the batch).
``elbo_bpd``, ``elbo_bpd_stderr``
    the variational bound of the same weights on the same examples, on the discrete data
    (:func:`ppl_diffusion.evaluate.per_example_terms`): an upper bound on the DDPM's own negative log-likelihood
    (its discretized decoder for images). The two are bounds on *different* models, neither bounds the other.

Randomness is counter-based: dequantization draw r of test example i is ``noise.uniform(seed, i, r,
stream=DEQUANT)`` and its Hutchinson probes ``noise.normal(seed, i, k, stream=PROBE)``, so each example's terms
depend on (seed, i, its x) alone. The solver's steps, however, are shared by a batch: batch size and process count
change the result within the solver's tolerance (not bit for bit, as the ELBO's evaluation does).

Under ``torchrun`` each process solves a contiguous share of the examples, the per-example values are gathered in
test-set order (NFE from every process), rank 0 writes ``RUN/eval-ode.json``, and every process returns the dict.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from pathlib import Path

import numpy as np
import torch

from . import dequantize as dq
from .checkpoint import atomic_write_bytes
from .continuous import time_of
from .distributed import local_device, world
from .evaluate import _positive, per_example_terms
from .infer.bound import auto_timesteps_per_batch, check_indices
from .resume import Chunk, Progress, array_sha256, compute_now, file_sha256, in_chunks
from .sampling import backend_of, find_checkpoint, is_images, load_run
from .train.run_dir import load_run_data

SOLVERS = {"pyro": "dopri5", "numpyro": "dopri5"}  # each backend's adaptive solver (5th order, FSAL)


def ode_log_prob(diffusion, y: np.ndarray, *, indices, trace: str, probes: int, probe: str, rtol: float, atol: float,
                 eps: float | None, time_map: str, seed: int) -> tuple[np.ndarray, int, float]:
    """One batch solve: (log p_ε(y) ``float64[B]`` nats, NFE, ε) on the backend of ``diffusion``, for model-space
    points ``y`` ``[B x *event]`` that are test examples ``indices`` (their Hutchinson probes)."""
    opts = dict(trace=trace, probes=probes, probe=probe, rtol=rtol, atol=atol, eps=eps, time_map=time_map, seed=seed,
                indices=indices)
    if backend_of(diffusion) == "numpyro":
        from .numpyro.ode import log_likelihood as log_likelihood_jax

        res = log_likelihood_jax(diffusion, np.asarray(y, np.float32), **opts)
        return np.asarray(res.log_prob, np.float64), int(res.nfe), float(res.eps)
    from .ode import log_likelihood

    device, dtype = diffusion._device_dtype()
    with torch.no_grad():  # the traces' vector-Jacobian products need no graph beyond one evaluation
        res = log_likelihood(diffusion, torch.as_tensor(y).to(device=device, dtype=dtype), **opts)
    return res.log_prob.double().cpu().numpy(), int(res.nfe), float(res.eps)


def per_example_ode(diffusion, x, *, indices=None, dequantization: str = "uniform", draws: int = 1, seed: int = 0,
                    batch_size: int = 64, progress: bool = False, chunk: Chunk = compute_now,
                    **options) -> tuple[np.ndarray, list[int], float]:
    """Bits/dim of every example and draw, ``float64[N x R]``: −log2 p_ε(y_r)/D + offset with y_r draw r of the
    dequantized example (``x`` itself for ``"none"``), in batches of ``batch_size``; also the NFE of every batch
    solve and ε. ``options``: ``ode_log_prob``'s (``trace``, ``probes``, ``probe``, ``rtol``, ``atol``, ``eps``,
    ``time_map``). ``chunk`` (:mod:`ppl_diffusion.resume`) saves or reads back each batch solve (key
    ``solve-<j>``); all of them are required.

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` (or its NumPyro twin).
    :param x: the examples ``[N] + event_shape`` in model space (8-bit images as 2k/255 − 1).
    :param indices: the examples' indices ``[N]`` (their dequantization draws and probes).
    :param str dequantization: ``"uniform"``, ``"score-sde"``, ``"none"`` (:mod:`ppl_diffusion.dequantize`) or
        ``"decoder"`` (x_1 ~ q(x_1|x_0) scored by the ODE and the trained decoder).
    :param int draws: R, dequantization draws per example.
    :param int seed: the draws' and probes' seed.
    :param int batch_size: examples per ODE solve.
    :param bool progress: show a progress bar.
    :returns: ``(bits/dim float64[N x R], NFE of every batch solve, ε)``.

    Example: continuous data, no dequantization: −log2 p_ε(x)/D.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.likelihood import per_example_ode
    >>> bpd, nfes, eps = per_example_ode(diffusion, x0, dequantization="none", batch_size=2, trace="exact",
    ...                                  probes=1, probe="rademacher", rtol=1e-2, atol=1e-2, eps=None,
    ...                                  time_map="vp-linear")
    >>> bpd.shape, len(nfes), eps
    ((4, 1), 2, 0.1)
    """
    x = np.asarray(x.detach().cpu() if torch.is_tensor(x) else x)
    indices = check_indices(indices, len(x))
    num_dims = int(np.prod(x.shape[1:]))
    out = np.empty((len(x), draws), dtype=np.float64)
    nfes, eps = [], options.get("eps")
    jobs = [(start, r) for start in range(0, len(x), batch_size) for r in range(draws)]

    def solve(job):
        start, r = job
        rows = slice(start, start + batch_size)
        if dequantization == "decoder":
            y, log_q = noised(diffusion, x[rows], seed=seed, indices=indices[rows], draw=r)
        else:
            y = dq.dequantize(x[rows], dequantization, seed=seed, indices=indices[rows], draw=r)
        log_prob, nfe, eps = ode_log_prob(diffusion, y, indices=indices[rows], seed=seed, **options)
        if dequantization == "decoder":
            log_prob = log_prob + decoder_log_prob(diffusion, x[rows], y) - log_q
        return {"bpd": dq.bits_per_dim(log_prob, num_dims, "none" if dequantization == "decoder" else dequantization),
                "nfe": np.array(nfe), "eps": np.array(eps, dtype=np.float64)}

    done = in_chunks(chunk, "solve", jobs, 1, solve)
    if progress:
        from tqdm.auto import tqdm

        done = tqdm(done, total=len(jobs), desc="ODE", unit="solve")
    for (start, r), solved in done:
        out[start:start + batch_size, r] = solved["bpd"]
        nfes.append(int(solved["nfe"]))
        eps = float(solved["eps"])
    return out, nfes, eps


def check_decoder_bound(diffusion, time_map: str | None, eps: float) -> None:
    """The decoder bound scores x_1 ~ q(x_1|x_0) by the ODE at ε = 1/T: the grid maps only, ε = 1/T only (a
    γ-schedule model's x_1 sits at its time 0: ε = 0)."""
    ct = time_of(diffusion, time_map)
    if ct.kind == "gamma":
        if eps != 0.0:
            raise ValueError(f"the decoder bound decodes x_1, which sits at γ_0 (the time s = 0 of a γ schedule), "
                             f"with the trained p(x_0|x_1): pass --eps 0 (the default), not {eps:g}")
        return
    if ct.kind == "vp-linear" or abs(eps - 1.0 / ct.T) > 1e-12:
        raise ValueError(f"the decoder bound decodes x_1 with the trained p(x_0|x_1), so the ODE must stop at step 1: "
                         f"pass --time-map grid and --eps {1.0 / ct.T:g} (= 1/T), not {time_map} with eps = {eps:g}")


def noised(diffusion, x, *, seed: int, indices, draw: int) -> tuple[np.ndarray, np.ndarray]:
    """x_1 = √ᾱ_1 x_0 + √(1 − ᾱ_1) z ``float32[B x ...]`` and log q(x_1|x_0) ``float64[B]`` (nats), z draw ``draw`` of
    the stream ``DEQUANT`` (normal) for test examples ``indices``."""
    from . import noise

    x = np.asarray(x, dtype=np.float64)
    z = noise.normal(seed, np.asarray(indices), draw, tuple(x.shape[1:]), stream=noise.DEQUANT, dtype=np.float64)
    if getattr(diffusion, "gamma_schedule", False):  # x_1 at γ_0 (every T, and T = 0)
        ab = float(torch.sigmoid(-diffusion.schedule.endpoints()[0].detach()))
    else:
        ab = float(diffusion.schedule.alphas_cumprod[0])
    x1 = math.sqrt(ab) * x + math.sqrt(1.0 - ab) * z
    d = int(np.prod(x.shape[1:]))
    log_q = -0.5 * (z.reshape(len(x), -1) ** 2).sum(1) - 0.5 * d * math.log(2.0 * math.pi * (1.0 - ab))
    return x1.astype(np.float32), log_q


def decoder_log_prob(diffusion, x0, x1) -> np.ndarray:
    """log p(x_0|x_1) ``float64[B]`` (nats) of the trained decoder (discretized for images) on either backend."""
    if backend_of(diffusion) == "numpyro":
        import jax.numpy as jnp

        t = jnp.ones((len(x0),), jnp.int32)
        decoder = diffusion.decoder_at(diffusion.denoiser, jnp.asarray(x1, jnp.float32), t)
        lp = decoder.to_event(len(diffusion.event_shape)).log_prob(jnp.asarray(x0, jnp.float32))
        return np.asarray(lp, np.float64)
    device, dtype = diffusion._device_dtype()
    if getattr(diffusion, "continuous", False):  # its decoder is the first step of any chain of its γ
        diffusion = diffusion.with_steps(2)
    with torch.no_grad():
        x1 = torch.as_tensor(np.asarray(x1)).to(device=device, dtype=dtype)
        decoder = diffusion.decoder_at(x1, torch.ones(len(x1), dtype=torch.long, device=device))
        lp = decoder.to_event(len(diffusion.event_shape)).log_prob(
            torch.as_tensor(np.asarray(x0)).to(device=device, dtype=dtype))
    return lp.double().cpu().numpy()


def _stderr(values: np.ndarray) -> float | None:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def evaluate_ode_run(run: str | Path, *, max_examples: int | None = None, batch_size: int = 64, trace: str = "exact",
                     probes: int = 1, probe: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5,
                     eps: float | None = None, time_map: str | None = None, dequantization: str = "auto",
                     draws: int = 1,
                     ema: bool = True, seed: int = 0, device: str = "auto", backend: str = "pyro",
                     timesteps_per_batch: int | None = None, progress: bool = True,
                     data_root: str | Path | None = None, last: bool = False, restart: bool = False) -> dict:
    """Bits/dim of ``run``'s test split by the probability-flow ODE, beside the ELBO's (see the module).

    :param int max_examples: the first ``max_examples`` test examples only (default: all).
    :param int batch_size: examples per ODE solve (they share the adaptive steps; the exact trace calls the net on
        D copies of each).
    :param str trace: ``"exact"`` (D ≤ a few hundred) or ``"hutchinson"`` (``probes`` probes of kind ``probe``,
        ``"rademacher"`` or ``"gaussian"``).
    :param float rtol: the adaptive solver's relative tolerance.
    :param float atol: its absolute tolerance.
    :param float eps: the small-time end (default: the map's, 1/T for the grid maps).
    :param str time_map: ``"grid"`` (the default), ``"grid-linear"`` or ``"vp-linear"`` (:mod:`ppl_diffusion.continuous`);
        a γ-schedule model's ODE runs on its own time, ``"gamma"`` (the default there, the only map).
    :param str dequantization: ``"auto"`` (``"uniform"`` for 8-bit images, ``"none"`` for continuous data),
        ``"uniform"``, ``"score-sde"`` or ``"none"`` (:mod:`ppl_diffusion.dequantize`).
    :param int draws: R, dequantization draws per example (R ≥ 2 also reports their within-example SD).
    :param bool ema: EMA weights (default) or raw ones.
    :param str backend: ``"pyro"`` (torchdiffeq, dopri5) or ``"numpyro"`` (diffrax, dopri5, compiled).
    :param int timesteps_per_batch: steps per denoiser call of the ELBO beside (default: about 512 inputs a call).
    :param data_root: where the run's data is now (default: the folder the run stored; ``--data-root``).
    :param bool last: the run's newest checkpoint even where it has a best.pt (the best weights by validation,
        the default then).
    :param bool restart: discard the progress of an unfinished evaluation of another configuration
        (``RUN/eval-ode.progress``; ``--restart``) instead of refusing it.
    :returns: the dict written to ``RUN/eval-ode.json``; the solves and the ELBO's batches are saved as they finish
        (:mod:`ppl_diffusion.resume`), so the same call after a kill continues to the same numbers.
    :param int probes: Hutchinson probes per example (``trace="hutchinson"``).
    :param str probe: ``"rademacher"`` or ``"gaussian"``.
    :param int seed: the dequantization draws' and probes' seed.
    :param str device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    :param bool progress: show progress bars.

    Example:

    >>> import tempfile
    >>> from ppl_diffusion.train import TrainConfig, train
    >>> config = TrainConfig(data="eight_gaussians", net="mlp", net_config={"width": 16, "depth": 1}, T=10,
    ...                      batch_size=4, steps=1, warmup_steps=0, ema_decay=0.0)  # a 1-step run, for the example
    >>> folder = tempfile.TemporaryDirectory()
    >>> run = folder.name
    >>> _ = train(config, run, progress=False, log=lambda line: None)
    >>> from ppl_diffusion.likelihood import evaluate_ode_run
    >>> result = evaluate_ode_run(run, max_examples=2, rtol=1e-2, atol=1e-2, time_map="vp-linear", device="cpu",
    ...                           progress=False)
    >>> result["num_examples"], result["dequantization"], result["json"].endswith("eval-ode.json")
    (2, 'none', True)
    >>> from ppl_diffusion.likelihood import describe, summary
    >>> sorted(describe(result))[:3], summary(result).splitlines()[1].split()[:2]
    (['bpd', 'bpd_stderr', 'dequantization_sd'], ['bits/dim', 'ODE'])
    >>> folder.cleanup()
    """
    from .ode import check_options

    _positive("max_examples", max_examples, "--max-examples", allow_none=True)
    _positive("batch_size", batch_size, "--batch-size")
    _positive("draws", draws, "--dequantization-draws")
    _positive("timesteps_per_batch", timesteps_per_batch, "--timesteps-per-batch", allow_none=True)
    check_options(trace=trace, probes=probes, probe=probe, rtol=rtol, atol=atol)
    if dequantization not in ("auto", "decoder") and dequantization not in dq.KINDS:
        dq.resolve(dequantization, True)  # the unknown-name error
    if backend not in SOLVERS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {tuple(SOLVERS)} (--backend)")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed = {seed!r}; pass an integer >= 0 (--seed)")
    started = time.monotonic()
    w = world()
    progress = progress and w.is_main
    checkpoint = find_checkpoint(run, last=last)
    loaded = load_run(checkpoint, ema=ema, device=local_device(device), backend=backend, precision="fp32")
    diffusion, config = loaded.diffusion, loaded.config
    ode_time = time_of(diffusion, time_map)  # one-line errors before any solve
    time_map, eps = ode_time.kind, ode_time.check_eps(eps)
    if dequantization == "decoder":
        kind = "decoder"
        check_decoder_bound(diffusion, time_map, eps)
    else:
        kind = dq.resolve(dequantization, is_images(diffusion))
    if draws > 1 and kind == "none":
        raise ValueError(f"{draws} dequantization draws of continuous data: there is nothing to draw; pass "
                         "--dequantization-draws 1")
    data = load_run_data(config, data_root, run=run, event_shape=diffusion.event_shape)
    x = data.test if max_examples is None else data.test[:max_examples]
    mine = w.shard(len(x))
    index = np.arange(len(x))[mine]
    num_dims = diffusion.num_dims
    if timesteps_per_batch is None:  # from the whole set, as evaluate_run: 1 and N processes make the same calls
        timesteps_per_batch = auto_timesteps_per_batch(min(500, len(x)))
    fingerprint = lambda: {  # noqa: E731 - what the numbers depend on, computed on rank 0 alone
        "evaluate": "ode", "checkpoint_sha256": file_sha256(checkpoint), "ema": ema, "data": config.data,
        "test_examples": len(x), "test_sha256": array_sha256(x), "seed": seed, "backend": backend,
        "threads": torch.get_num_threads(),
        "device": str(next(diffusion.denoiser.parameters()).device.type) if backend == "pyro" else "jax",
        "batch_size": batch_size, "trace": trace, "probes": probes, "probe": probe, "rtol": rtol, "atol": atol,
        "eps": eps, "time_map": time_map, "dequantization": kind, "draws": draws,
        "timesteps_per_batch": timesteps_per_batch}
    saved = Progress(checkpoint.parent / "eval-ode.progress", w.on_main(fingerprint))  # rank 0's, on every rank
    w.on_main(lambda: saved.open(restart=restart))
    chunk = saved.scoped(f"{mine.start}-{mine.stop}")  # this process's examples

    t0 = time.monotonic()
    bpd, nfes, eps = per_example_ode(diffusion, x[mine], indices=index, dequantization=kind, draws=draws, seed=seed,
                                     batch_size=batch_size, progress=progress, trace=trace, probes=probes, probe=probe,
                                     rtol=rtol, atol=atol, eps=eps, time_map=time_map, chunk=chunk)
    ode_seconds = time.monotonic() - t0
    bpd = w.gather(torch.from_numpy(bpd)).numpy()  # [N x R], test-set order
    nfes = [n for part in w.gather_objects(nfes) for n in part]

    t0 = time.monotonic()
    if diffusion.T == 0:  # the continuous-time bound, estimated (evaluate's default plan, uniform t)
        from .evaluate import CONTINUOUS_DEFAULTS
        from .infer.continuous_bound import estimate_continuous_bound, plan_continuous_uniform

        plan = plan_continuous_uniform(strata=CONTINUOUS_DEFAULTS["strata"], draws=CONTINUOUS_DEFAULTS["draws"])
        device = next(diffusion.denoiser.parameters()).device
        nll = estimate_continuous_bound(diffusion, x[mine].to(device), plan, seed=seed, indices=index,
                                        chunk=saved.scoped(f"elbo-{mine.start}-{mine.stop}")).nll
    else:
        nll = per_example_terms(diffusion, x[mine], timesteps_per_batch=timesteps_per_batch, seed=seed,
                                indices=index, chunk=saved.scoped(f"elbo-{mine.start}-{mine.stop}")).sum(-1)
    elbo = (w.gather(nll.contiguous()) / (num_dims * math.log(2.0))).numpy()
    elbo_seconds = time.monotonic() - t0

    per_example = bpd.mean(1)
    result = {
        "bpd": float(per_example.mean()), "bpd_stderr": _stderr(per_example),
        "elbo_bpd": float(elbo.mean()), "elbo_bpd_stderr": _stderr(elbo),
        "dequantization_sd": float(np.sqrt(bpd.var(1, ddof=1).mean())) if draws > 1 else None,
        "nfe_mean": float(np.mean(nfes)), "nfe_max": int(np.max(nfes)), "solves": len(nfes),
        "trace": trace, "probes": probes if trace == "hutchinson" else None,
        "probe": probe if trace == "hutchinson" else None, "rtol": rtol, "atol": atol, "eps": eps,
        "time_map": time_map, "solver": SOLVERS[backend], "dequantization": kind,
        "offset_bits": 0.0 if kind == "decoder" else dq.offset_bits(kind),
        "draws": draws, "images": is_images(diffusion), "batch_size": batch_size, "num_examples": len(x),
        "num_dims": num_dims,
        "weights": "ema" if ema else "raw", "data": config.data, "split": "test", "T": config.T, "seed": seed,
        "backend": backend, "world_size": w.world_size, "threads": torch.get_num_threads(),
        "checkpoint": str(checkpoint), "step": loaded.step, "weights_from": loaded.weights_from,
        "ode_seconds": round(ode_seconds, 2), "elbo_seconds": round(elbo_seconds, 2),
        "json": str(checkpoint.parent / "eval-ode.json"),
    }
    result["what"] = describe(result)
    if w.is_main:
        result["seconds"] = round(time.monotonic() - started, 2)
        result["resumed_chunks"] = saved.reused  # rank 0's solves and batches read back (0: none)
        atomic_write_bytes(result["json"], (json.dumps(result, indent=2) + "\n").encode())
        saved.finish()  # the evaluation is written: its progress is no longer needed
    return w.broadcast_object(result)


def describe(result: dict) -> dict:
    """What each number of :func:`evaluate_ode_run`'s dict is, in words (its ``"what"`` entry; that function's
    example calls it).

    :param dict result: :func:`evaluate_ode_run`'s dict.
    :returns: ``{key: sentence}`` for ``bpd``, ``bpd_stderr``, ``dequantization_sd``, ``elbo_bpd``, ``models``, ``nfe``
        and ``offset_bits``.

    Example (the keys it reads, as in a saved ``eval-ode.json`` of vector data; :func:`evaluate_ode_run`'s example
    makes one):

    >>> from ppl_diffusion.likelihood import describe
    >>> result = {"dequantization": "none", "num_examples": 2, "draws": 1, "trace": "exact", "solver": "dopri5",
    ...           "rtol": 1e-5, "atol": 1e-5, "eps": 1e-5, "time_map": "vp-linear", "T": 10}
    >>> what = describe(result)
    >>> sorted(what)
    ['bpd', 'bpd_stderr', 'dequantization_sd', 'elbo_bpd', 'models', 'nfe', 'offset_bits']
    >>> print(what["bpd"].split(";")[0])
    −log2 p_ε(x)/D: the probability-flow ODE's density at the 2 continuous test points, in bits per dimension
    (a differential code length, which can be negative)
    """
    kind, n, r = result["dequantization"], result["num_examples"], result["draws"]
    trace = ("the exact trace" if result["trace"] == "exact" else
             f"Hutchinson's trace ({result['probes']} {result['probe']} probe(s) per example, unbiased)")
    if kind == "decoder":
        ode = (f"an upper bound on the negative log-likelihood −log2 P(x_0)/D of the model x_1 ~ p_ε (the ODE), "
               f"x_0 ~ p(x_0|x_1) (the trained decoder): E_q[−log2 p_ε(x_1) − log2 p(x_0|x_1) + log2 q(x_1|x_0)]/D "
               f"with x_1 ~ q(x_1|x_0), the entropy term included, mean over {r} draw(s) per example and over {n} "
               "test examples")
    elif kind == "none":
        ode = (f"−log2 p_ε(x)/D: the probability-flow ODE's density at the {n} continuous test points, in bits per "
               "dimension (a differential code length, which can be negative)")
    else:
        h = dq.cell_width(kind)
        ode = (f"an upper bound on −log2 P(k)/D of the dequantized-ODE model P(k) = ∫ p_ε over the pixel's cell "
               f"(width {h:.6g}, {kind} dequantization): −log2 p_ε(y)/D + {result['offset_bits']:.4f} at y uniform "
               f"in the cell, mean over {r} draw(s) per example and over {n} test examples")
    images = result.get("images", kind != "none")
    return {
        "bpd": f"{ode}; p_ε solved by the probability-flow ODE ({result['solver']}, rtol {result['rtol']:g}, atol "
               f"{result['atol']:g}, {trace}, s from ε = {result['eps']:g} to 1, {result['time_map']} time map)",
        "bpd_stderr": "standard error of bpd over examples (includes the dequantization and Hutchinson noise)",
        "dequantization_sd": "within-example standard deviation over the dequantization draws (pooled over "
                             "examples; null with one draw)",
        "elbo_bpd": ("the continuous-time variational bound (T = ∞; an unbiased estimate, 40 draws of t per example) "
                     if result["T"] == 0 else "the variational bound (ELBO, all T steps, closed-form KLs) ")
                    + "of the same weights on the same "
                    + ("discrete examples: an upper bound on the DDPM's own negative log-likelihood −log2 P(k)/D "
                       "(its discretized decoder)" if images else
                       "examples: an upper bound on the DDPM's −log2 p(x)/D (its Gaussian decoder's density)"),
        "models": "bpd and elbo_bpd bound different models (the deterministic flow with dequantization cells, the "
                  "stochastic chain with its decoder): neither bounds the other, and a lower bpd is not a tighter "
                  "bound on the DDPM",
        "nfe": "nfe_mean / nfe_max: evaluations of the ODE's vector field per batch solve (the examples of a batch "
               "share the adaptive steps)",
        "offset_bits": "bits/dim added for the cell volume, −log2(cell width) (0 without dequantization)",
    }


def summary(result: dict) -> str:
    """A few lines for the terminal from the dict of :func:`evaluate_ode_run`: the two numbers side by side (that
    function's example calls it).

    :param dict result: :func:`evaluate_ode_run`'s dict (or a saved ``eval-ode.json``).

    Example (the keys it reads, as in a saved ``eval-ode.json`` of vector data; :func:`evaluate_ode_run`'s example
    makes one):

    >>> from ppl_diffusion.likelihood import describe, summary
    >>> result = {"data": "eight_gaussians", "num_examples": 2, "step": 1, "T": 10, "weights": "ema", "bpd": 1.5,
    ...           "bpd_stderr": 0.25, "elbo_bpd": 2.0, "elbo_bpd_stderr": 0.5, "trace": "exact",
    ...           "dequantization": "none", "draws": 1, "solver": "dopri5", "rtol": 1e-5, "atol": 1e-5, "eps": 1e-5,
    ...           "time_map": "vp-linear", "nfe_mean": 26.0, "nfe_max": 26, "json": "run/eval-ode.json",
    ...           "seconds": 3.0, "ode_seconds": 2.5, "elbo_seconds": 0.5}
    >>> result["what"] = describe(result)
    >>> print(summary(result))
    eight_gaussians test split, 2 examples, step 1, T = 10, EMA weights:
      bits/dim  ODE 1.5000 ± 0.2500   ELBO 2.0000 ± 0.5000
      ODE:  −log2 p_ε(x)/D: the probability-flow ODE's density at the 2 continuous test points, ...
      ELBO: an upper bound on the DDPM's −log2 p(x)/D (its Gaussian decoder's density)
      (bounds on different models: neither bounds the other)
      ODE solve: dopri5, rtol 1e-05, atol 1e-05, exact, vp-linear map, ε = 1e-05, no dequantization; NFE per batch
      solve mean 26.0, max 26
      wrote run/eval-ode.json (3.0 s: ODE 2.5 s, ELBO 0.5 s)
    """
    def pm(key):
        se = result.get(f"{key}_stderr")
        return f"{result[key]:.4f}" + ("" if se is None else f" ± {se:.4f}")

    trace = result["trace"] if result["trace"] == "exact" else f"hutchinson x{result['probes']} {result['probe']}"
    deq = ("no dequantization" if result["dequantization"] == "none" else
           f"decoder bound (x_1 ~ q(x_1|x_0), {result['draws']} draw(s))" if result["dequantization"] == "decoder" else
           f"{result['dequantization']} dequantization (+{result['offset_bits']:.4f}), {result['draws']} draw(s)")
    lines = [f"{result['data']} test split, {result['num_examples']} examples, step {result['step']}, "
             f"T = {result['T']}, {result['weights'].upper() if result['weights'] == 'ema' else 'raw'} weights:",
             f"  bits/dim  ODE {pm('bpd')}   ELBO {pm('elbo_bpd')}",
             f"  ODE:  {result['what']['bpd'].split(';')[0]}",
             f"  ELBO: {result['what']['elbo_bpd'].split(': ', 1)[-1]}",
             "  (bounds on different models: neither bounds the other)",
             f"  ODE solve: {result['solver']}, rtol {result['rtol']:g}, atol {result['atol']:g}, {trace}, "
             f"{result['time_map']} map, ε = {result['eps']:g}, {deq}; NFE per batch solve mean "
             f"{result['nfe_mean']:.1f}, max {result['nfe_max']}"]
    if result.get("dequantization_sd") is not None:
        lines.append(f"  dequantization SD within an example {result['dequantization_sd']:.4f} bits/dim")
    lines.append(f"  wrote {result['json']} ({result['seconds']:.1f} s: ODE {result['ode_seconds']:.1f} s, "
                 f"ELBO {result['elbo_seconds']:.1f} s)")
    return "\n".join(lines)


__all__ = ["describe", "evaluate_ode_run", "per_example_ode", "summary"]
