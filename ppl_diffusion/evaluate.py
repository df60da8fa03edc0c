"""The full variational bound of a trained run on its test split: the API behind ``ppl-diffusion evaluate``.

:func:`evaluate_run` loads the newest checkpoint of a run folder twice (raw and EMA weights) and computes,
for the test split (or its first ``max_examples`` examples), every term of the bound with
:func:`~ppl_diffusion.infer.bound.variational_bound`: L_0 (the exact decoder, discretized for images), the
T − 1 closed-form KLs and the prior term L_T. The noise is counter-based (:mod:`ppl_diffusion.noise`): test
example i's draw at step t is a function of (``seed``, i, t) alone, so both weight sets see the same noise
(their difference is not blurred by Monte-Carlo noise), and the result does not depend on the batch size, on
``max_examples`` (per example), on the backend or on the number of processes. For the digits it also scores
``fd_samples`` samples of the **EMA** weights with :func:`~ppl_diffusion.metrics.digits_fd`.

Under ``torchrun`` each process scores a contiguous share of the test examples (every example costs the same
T denoiser calls, test sets have far more examples than there are processes, and both backends' bound runs
all T steps of a batch in one call), the per-example terms are gathered in test-set order, and rank 0 writes
the files; the ``fd_samples`` samples are split the same way (rank 0 computes the distance), and a fitted
variance is fitted on rank 0 and sent to the others. Every process returns the same dict.

It writes ``RUN/eval.json`` (the returned dict) and ``RUN/eval_terms.png`` (L_t against t, log scale).
With ``fit_variance=N`` the reverse variances are first fitted in closed form on N training examples
(:mod:`ppl_diffusion.variance`), for each weight set, and the files are ``eval-fitted.json`` and
``eval_terms-fitted.png``, with the fits under the key ``fitted_variance``.
Keys of the dict: ``bpd``, ``bpd_ema`` (mean bits/dim), ``bpd_stderr``, ``bpd_ema_stderr`` (standard
errors over examples), ``terms`` (``{"raw": [...], "ema": [...]}``, mean L_j in nats per example,
j = 0..T), ``digits_fd_ema`` (or ``None``), ``fd_samples``, ``num_examples``, ``num_dims``, ``T``, ``step``,
``checkpoint``, ``data``, ``seed``, ``backend``, ``precision``, ``world_size`` (processes), ``threads`` (torch's,
provenance: float rounding may depend on it), ``seconds``, ``bound``
(``"full"``), ``calls`` (denoiser inputs per weight set: N·T), and the paths ``json`` and ``figure``.

With ``bound="estimate"`` the bound is estimated from a few terms per example (:mod:`ppl_diffusion.infer.estimate`:
every step t <= ``full_steps``, ``draws`` steps in each of ``strata`` strata above, uniform or from a pilot on
training examples), unbiased for the full bound of the same seed; the files are ``eval-estimate.json`` and
``eval_terms-estimate.png`` (``-fitted-estimate`` with a fitted variance), the standard errors include the
t-sampling, and the dict adds ``bpd_t_stderr`` / ``bpd_ema_t_stderr`` (the t-sampling's part alone: the SE of
the figure about the full bound of the same examples and seed; ``None`` with ``draws=1``), ``calls`` (inputs
evaluated, the pilot's included) and ``estimate`` (the plan of each weight set). ``terms`` then holds unbiased
estimates of the mean L_j (noisy where j > ``full_steps``).
"""

from __future__ import annotations

import json
import math
import numbers
import time
from pathlib import Path

import numpy as np
import torch

from . import plots
from .distributed import local_device, world
from .infer.bound import auto_timesteps_per_batch, check_indices, variational_bound
from .infer.continuous_bound import (continuous_pilot_profile, estimate_continuous_bound, plan_continuous_from_profile,
                                    plan_continuous_uniform)
from .infer.estimate import PROPOSALS, estimate_bound, pilot_profile, plan_from_profile, plan_uniform
from .precision import check_precision
from .resume import Chunk, Progress, array_sha256, compute_now, file_sha256, in_chunks, json_chunk
from .checkpoint import atomic_write_bytes, load_checkpoint
from .sampling import SAMPLE_STEPS, backend_of, draw_samples, find_checkpoint, load_run
from .train import resolve_device
from .train.run_dir import absolute_data_root, load_run_data


def _positive(name: str, value, flag: str, allow_none=False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} = {value!r}; pass a positive integer ({flag})")


def per_example_terms(diffusion, x: torch.Tensor, *, timesteps_per_batch: int | None = None, batch_size: int = 500,
                      timesteps=None, seed: int = 0, indices=None, progress: bool = False,
                      chunk: Chunk = compute_now) -> torch.Tensor:
    """L_0 … L_T for every example of ``x`` ``[N x ...]``, ``[N x (T + 1)]`` nats, in batches of ``batch_size``
    (only the steps ``timesteps``, NaN elsewhere, if given; see :func:`~ppl_diffusion.infer.bound.variational_bound`).
    A NumPyro ``diffusion`` is scored by the compiled bound (:func:`ppl_diffusion.numpyro.chain.variational_bound`).

    The noise is counter-based (:mod:`ppl_diffusion.noise`): example i's draws are a function of (``seed``,
    ``indices[i]``, t) alone, ``indices`` default 0..N − 1 (pass the test-set indices of a subset or shard), so
    any batch size, subset, process count or backend gives each example the same numbers. ``chunk``
    (:mod:`ppl_diffusion.resume`) saves or reads back each batch's terms (key ``terms-<batch>``).

    :param diffusion: a :class:`~ppl_diffusion.diffusion.GaussianDiffusion` (or its NumPyro twin) with a chain of T steps.
    :param torch.Tensor x: the examples ``[N] + event_shape``.
    :param int timesteps_per_batch: steps per denoiser call (default: about 512 inputs a call).
    :param int batch_size: examples per call of :func:`~ppl_diffusion.infer.bound.variational_bound`.
    :param timesteps: only these steps' terms (in 1..T).
    :param int seed: the noise's seed.
    :param indices: the examples' indices ``[N]`` (default 0..N − 1).
    :param bool progress: show a progress bar.
    :returns: float64 ``[N x (T + 1)]``, nats.

    Example: the batch size does not change an example's terms.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from ppl_diffusion.evaluate import per_example_terms
    >>> terms = per_example_terms(diffusion, x0, batch_size=4, seed=0)
    >>> terms.shape, terms.dtype, torch.allclose(per_example_terms(diffusion, x0, batch_size=3, seed=0), terms)
    (torch.Size([4, 11]), torch.float64, True)
    """
    if timesteps_per_batch is None:
        timesteps_per_batch = auto_timesteps_per_batch(min(batch_size, len(x)))
    indices = check_indices(indices, len(x))
    if backend_of(diffusion) == "numpyro":
        if timesteps is not None:
            raise ValueError("a subset of the bound's terms (timesteps=...) is computed on the Pyro backend only")
        from .numpyro.sampling import per_example_terms as terms_numpyro

        def batch_terms(start):  # one batch of the compiled bound
            return {"terms": terms_numpyro(diffusion, x[start:start + batch_size].cpu().numpy(),
                                           timesteps_per_batch=timesteps_per_batch, batch_size=batch_size, seed=seed,
                                           indices=indices[start:start + batch_size])}
    else:
        device = next(diffusion.denoiser.parameters()).device

        def batch_terms(start):
            bound = variational_bound(diffusion, x[start:start + batch_size].to(device), analytic=True,
                                      timesteps=timesteps, seed=seed, indices=indices[start:start + batch_size],
                                      timesteps_per_batch=timesteps_per_batch, progress=progress)
            return {"terms": bound.terms.cpu().double().numpy()}
    with torch.no_grad():
        parts = [torch.from_numpy(out["terms"]) for _, out in
                 in_chunks(chunk, "terms", range(0, len(x), batch_size), 1, batch_terms)]
    return torch.cat(parts) if parts else torch.zeros((0, diffusion.T + 1), dtype=torch.float64)


def _pilot(chunk: Chunk, profile_fn) -> tuple[np.ndarray, int]:
    """A pilot's ``(profile, calls)``, computed on rank 0 (saved as a chunk of the progress) and sent to the others."""
    def compute():
        profile, calls = profile_fn()
        return {"profile": np.asarray(profile, dtype=np.float64).tolist(), "calls": int(calls)}

    saved = world().on_main(lambda: json_chunk(chunk, "pilot", compute))  # JSON: the floats read back exactly
    return np.asarray(saved["profile"], dtype=np.float64), int(saved["calls"])


def _calls_per_chunk(batch: int, per_example: int, inputs_per_call: int) -> int:
    """Denoiser calls per progress chunk: about ``batch`` examples' worth of inputs, as a batch of the full bound."""
    return max(1, -(-batch * per_example // inputs_per_call))


def _estimate(diffusion, x, mine, train, result: dict, name: str, key: str, *, seed: int, full_steps: int,
              strata: int, draws: int, proposal: str, pilot_examples: int, inputs_per_call: int,
              progress: bool, chunk: Chunk = compute_now, batch: int = 500) -> torch.Tensor:
    """The estimate's per-term values ``[N x (T + 1)]`` in test-set order (this process's share estimated, all
    gathered); fills ``result``'s t-sampling SE, calls and plan for weight set ``name``. ``chunk`` saves the pilot
    and each group of calls of about ``batch`` examples (:mod:`ppl_diffusion.resume`)."""
    w = world()
    pilot_calls = 0
    device = next(diffusion.denoiser.parameters()).device if backend_of(diffusion) == "pyro" else "cpu"
    if proposal == "pilot" and full_steps < diffusion.T:  # on rank 0, sent to the others: one plan for all
        profile, pilot_calls = _pilot(chunk, lambda: pilot_profile(
            diffusion, train[:pilot_examples].to(device), seed=seed, full_steps=full_steps))
        plan = plan_from_profile(profile, full_steps=full_steps, strata=strata, draws=draws,
                                 pilot={"examples": min(pilot_examples, len(train)), "calls": pilot_calls,
                                        "data": "train", "grid": 50})
    else:
        plan = plan_uniform(diffusion.T, full_steps=full_steps, strata=strata, draws=draws)
    est = estimate_bound(diffusion, x[mine].to(device), plan, seed=seed, indices=np.arange(len(x))[mine],
                         inputs_per_call=inputs_per_call, progress=progress, chunk=chunk,
                         calls_per_chunk=_calls_per_chunk(batch, plan.calls_per_example, inputs_per_call))
    _record_sampling(result, name, key, est, plan, pilot_calls, len(x))
    return w.gather(est.terms.contiguous())


def _record_sampling(result: dict, name: str, key: str, est, plan, pilot_calls: int, n: int) -> None:
    """Fill ``result``'s t-sampling SE (``{key}_t_stderr``, over all processes' examples), calls and plan for weight
    set ``name`` from this process's estimate ``est`` (a chain's or the continuous-time bound's)."""
    w = world()
    t_variance = w.gather(est.t_variance.contiguous())
    calls = int(w.all_sum(torch.tensor([est.calls], dtype=torch.float64)).item())
    to_bpd = 1.0 / (est.num_dims * math.log(2.0))
    result[f"{key}_t_stderr"] = (None if torch.isnan(t_variance).any() or not n
                                 else t_variance.sum().clamp(min=0).sqrt().item() / n * to_bpd)
    result.setdefault("calls", {})[name] = calls + pilot_calls
    result.setdefault("estimate", {})[name] = plan.to_dict()


def _continuous(diffusion, x, mine, train, result: dict, name: str, key: str, *, seed: int, strata: int, draws: int,
                proposal: str, pilot_examples: int, inputs_per_call: int, progress: bool, chunk: Chunk = compute_now,
                batch: int = 500) -> tuple[torch.Tensor, dict]:
    """The continuous-time bound's estimate per example ``[N]`` in test-set order (this process's share estimated,
    all gathered) and its terms' means; fills ``result``'s t-integral SE, calls and plan for weight set ``name``.
    ``chunk`` saves the pilot and each group of calls of about ``batch`` examples (:mod:`ppl_diffusion.resume`)."""
    w = world()
    pilot_calls = 0
    device = next(diffusion.denoiser.parameters()).device
    if proposal == "pilot":  # on rank 0, sent to the others: one plan for all
        profile, pilot_calls = _pilot(chunk, lambda: continuous_pilot_profile(
            diffusion, train[:pilot_examples].to(device), seed=seed, bins=PILOT_BINS))
        plan = plan_continuous_from_profile(profile, strata=strata, draws=draws,
                                            pilot={"examples": min(pilot_examples, len(train)), "calls": pilot_calls,
                                                   "data": "train", "bins": PILOT_BINS})
    else:
        plan = plan_continuous_uniform(strata=strata, draws=draws)
    est = estimate_continuous_bound(diffusion, x[mine].to(device), plan, seed=seed, indices=np.arange(len(x))[mine],
                                    inputs_per_call=inputs_per_call, progress=progress, chunk=chunk,
                                    calls_per_chunk=_calls_per_chunk(batch, plan.t_draws, inputs_per_call))
    _record_sampling(result, name, key, est, plan, pilot_calls, len(x))
    terms = {k: w.gather(v.contiguous()) for k, v in est.terms.items()}
    draws_t = w.gather(torch.from_numpy(est.t).contiguous()).numpy()
    draws_l = w.gather(torch.from_numpy(est.integrand).contiguous()).numpy()
    return w.gather(est.nll.contiguous()), {"terms": {k: v.mean().item() for k, v in terms.items()},
                                            "draws": (draws_t, draws_l)}


def _continuous_options(bound, full_steps, strata, draws, proposal, pilot_examples) -> dict:
    """The continuous-time bound's plan options, unset ones at their defaults; one-line errors for the chain's."""
    if bound == "full":
        raise ValueError("--bound full on a run in continuous time (T = 0): it has no chain of terms to sum; its bound "
                         "is always an estimate (drop --bound; --strata and --draws set its draws of t)")
    if full_steps is not None:
        raise ValueError(f"--full-steps {full_steps} on a run in continuous time (T = 0): there are no steps; its "
                         "diffusion term is estimated from --strata × --draws draws of t per example")
    return {k: CONTINUOUS_DEFAULTS[k] if v is None else v
            for k, v in dict(strata=strata, draws=draws, proposal=proposal, pilot_examples=pilot_examples).items()}


def _chain_options(bound, full_steps, strata, draws, proposal, pilot_examples) -> dict:
    """The chain's bound options (``bound`` resolved to full or estimate, unset ones at their defaults)."""
    given = {k: v for k, v in dict(full_steps=full_steps, strata=strata, draws=draws, proposal=proposal,
                                   pilot_examples=pilot_examples).items() if v is not None}
    bound = "full" if bound is None else bound
    if bound == "full" and given:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in given)} given without --bound estimate; "
                         "these flags set the estimate of the bound: add --bound estimate or drop them")
    return {"bound": bound, **ESTIMATE_DEFAULTS, **given}


ESTIMATE_DEFAULTS = dict(full_steps=20, strata=20, draws=2, proposal="pilot", pilot_examples=16)
# The continuous-time bound's defaults: 20 strata × 2 draws of t per example (R = 40, the chain estimate's 60 calls
# less its 20 exact steps), the pilot's importance proposal on 16 training examples at 50 bins of t.
CONTINUOUS_DEFAULTS = dict(strata=20, draws=2, proposal="pilot", pilot_examples=16)
PILOT_BINS = 50


def evaluate_run(run: str | Path, *, max_examples: int | None = None, timesteps_per_batch: int | None = None,
                 batch_size: int = 500, fd_samples: int = 1000, fit_variance: int = 0, device: str = "auto",
                 seed: int = 0, progress: bool = True, backend: str = "pyro", precision: str = "fp32",
                 bound: str | None = None, full_steps: int | None = None, strata: int | None = None,
                 draws: int | None = None, proposal: str | None = None, pilot_examples: int | None = None,
                 data_root: str | Path | None = None, last: bool = False, sample_steps: int | None = None,
                 restart: bool = False) -> dict:
    """Bits/dim of the raw and EMA weights of ``run`` on the test split, per-term breakdown, figure and JSON.

    The weights are those of ``run``'s best.pt when it has one (a run trained with ``val_examples``: the
    checkpoint of the lowest validation bits/dim), else of its newest checkpoint; ``last``: the newest checkpoint
    always. eval.json records which (``weights_from``, ``val_bpd``).

    :param int max_examples: evaluate only the first ``max_examples`` test examples (default: all).
    :param int timesteps_per_batch: steps t evaluated per denoiser call (default: about 512 inputs per call).
    :param int batch_size: test examples per call of :func:`~ppl_diffusion.infer.bound.variational_bound`.
    :param int fd_samples: samples of the EMA weights scored by ``digits_fd`` (digits only; 0 disables).
    :param int fit_variance: if > 0, fit σ_t² in closed form on the first ``fit_variance`` training examples
        (:func:`~ppl_diffusion.variance.fit_variance`, separately for raw and EMA weights) and evaluate that
        model; the result then goes to ``eval-fitted.json`` / ``eval_terms-fitted.png``.
    :param str backend: ``"pyro"`` or ``"numpyro"`` (the compiled JAX bound and sampler; a run trained on
        either backend evaluates on both, with the same noise for the same seed).
    :param str precision: the denoiser's arithmetic, ``"fp32"`` (default, whatever the run trained at) or
        ``"bf16"`` (autocast; the bound's arithmetic outside the network stays float32 / float64; see
        ``benchmarks/results/precision.md`` for its bias on the digits).
    :param str bound: a chain's ``"full"`` (every term, the default) or ``"estimate"``
        (:mod:`ppl_diffusion.infer.estimate`); a run in continuous time (T = 0) is always estimated
        (:mod:`ppl_diffusion.infer.continuous_bound`; ``"estimate"`` or ``None``), ``"full"`` is refused.
    :param int full_steps: with ``"estimate"``: steps t = 1..``full_steps`` computed for every example (default 20).
    :param int strata: with ``"estimate"``: strata of the steps above ``full_steps``; in continuous time: strata of
        [0, 1] (default 20).
    :param int draws: steps (times) drawn per stratum and example, >= 2 for the t-sampling's SE (default 2).
    :param str proposal: ``"pilot"`` (strata and importance proposal from √E[L_t²] on ``pilot_examples`` (16)
        training examples at 50 steps, or 50 bins of t, independent of the evaluated draws; the default) or
        ``"uniform"``.
    :param int sample_steps: the chain of a continuous-time run that draws the ``fd_samples`` (default 1000).
    :param data_root: where the run's data is now (default: the folder the run stored; ``--data-root``), for
        mnist, cifar10 and image_folder.
    :param bool restart: discard the progress of an earlier, unfinished evaluation of another configuration
        (``--restart``; by default such a folder is refused, and one of the same configuration is continued).
    :param str device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    :param int seed: the noise's seed (example i's noise depends on (seed, i) alone).
    :param bool progress: show progress bars.
    :param int pilot_examples: with ``proposal="pilot"``: training examples the pilot measures (default 16).
    :param bool last: the newest checkpoint even where a ``best.pt`` exists.
    :returns: the dict written to ``RUN/eval.json`` (see the module docstring).

    Example:

    >>> import tempfile
    >>> from ppl_diffusion.train import TrainConfig, train
    >>> config = TrainConfig(data="eight_gaussians", net="mlp", net_config={"width": 16, "depth": 1}, T=10,
    ...                      batch_size=4, steps=1, warmup_steps=0, ema_decay=0.0)  # a 1-step run, for the example
    >>> folder = tempfile.TemporaryDirectory()
    >>> run = folder.name
    >>> _ = train(config, run, progress=False, log=lambda line: None)
    >>> from ppl_diffusion.evaluate import evaluate_run, summary
    >>> result = evaluate_run(run, max_examples=4, fd_samples=0, device="cpu", progress=False)
    >>> result["num_examples"], result["T"], len(result["terms"]["ema"]), result["bound"]
    (4, 10, 11, 'full')
    >>> print(summary(result))
    eight_gaussians test split, 4 examples, step 1, T = 10, variance beta:
      bits/dim  ... ± ...
      L_0 (decoder) ..., L_T (prior) ... bits/dim (EMA)
      wrote ... (... s)
    >>> folder.cleanup()
    """
    _positive("max_examples", max_examples, "--max-examples", allow_none=True)
    _positive("timesteps_per_batch", timesteps_per_batch, "--timesteps-per-batch", allow_none=True)
    _positive("batch_size", batch_size, "--batch-size")
    check_precision(precision)
    if isinstance(fit_variance, bool) or not isinstance(fit_variance, numbers.Integral) or fit_variance < 0:
        raise ValueError(f"fit_variance = {fit_variance!r}; pass 0 (the trained variance) or a number of training "
                         "examples >= 1 (--fit-variance)")
    if isinstance(fd_samples, bool) or not isinstance(fd_samples, numbers.Integral) or fd_samples < 0:
        raise ValueError(f"fd_samples = {fd_samples!r}; pass 0 (off) or a number of samples >= 2 (--fd-samples)")
    if bound not in (None, "full", "estimate"):
        raise ValueError(f"bound = {bound!r}; choose full (every term) or estimate (a few terms per example) (--bound)")
    if proposal is not None and proposal not in PROPOSALS:
        raise ValueError(f"proposal = {proposal!r}; choose one of {', '.join(PROPOSALS)} (--proposal)")
    _positive("pilot_examples", pilot_examples, "--pilot-examples", allow_none=True)
    plan_uniform(1000, full_steps=0 if full_steps is None else full_steps, strata=1 if strata is None else strata,
                 draws=1 if draws is None else draws)  # checks the three counts
    if fit_variance and backend != "pyro":
        raise ValueError(f"--fit-variance {fit_variance} runs on the Pyro backend only; drop --backend {backend} "
                         "or --fit-variance")
    started = time.monotonic()
    w = world()
    progress = progress and w.is_main
    checkpoint = find_checkpoint(run, last=last)
    out_dir = checkpoint.parent
    scored_once = one_weight_set(load_checkpoint(checkpoint))  # an imported run: its raw and EMA weights are one
    runs = {name: load_run(checkpoint, ema=(name == "ema"), device=local_device(device), backend=backend,
                           precision=precision)
            for name in (("raw",) if scored_once else ("raw", "ema"))}
    config = runs["raw"].config
    continuous = runs["raw"].diffusion.T == 0
    options = (_continuous_options if continuous else _chain_options)(bound, full_steps, strata, draws, proposal,
                                                                     pilot_examples)
    bound = "continuous" if continuous else options.pop("bound")
    if fit_variance and continuous:
        raise ValueError(f"--fit-variance {fit_variance} on a run in continuous time (T = 0): the fitted variances "
                         "are of a chain's steps; drop --fit-variance")
    if sample_steps is not None and not continuous:
        raise ValueError(f"sample_steps = {sample_steps!r} sets the chain that samples a continuous-time run; this run "
                         f"has T = {config.T} steps of its own")
    data = load_run_data(config, data_root, run=run, event_shape=runs["raw"].diffusion.event_shape)
    x = data.test if max_examples is None else data.test[:max_examples]
    mine = w.shard(len(x))  # this process's contiguous share of the examples (all of them on one process)
    if timesteps_per_batch is None:  # from the whole set, so that 1 and N processes make the same calls
        timesteps_per_batch = auto_timesteps_per_batch(min(batch_size, len(x)))
    num_dims = runs["raw"].diffusion.num_dims
    to_bpd = 1.0 / (num_dims * math.log(2.0))
    suffix = ("-fitted" if fit_variance else "") + ("-estimate" if bound == "estimate" else "")
    used_train = max(fit_variance, options.get("pilot_examples", 0) if options.get("proposal") == "pilot" else 0)
    test_sha256 = w.on_main(lambda: array_sha256(x))  # which examples were scored: progress and eval.json
    fingerprint = lambda: {  # noqa: E731 - what the numbers depend on, computed on rank 0 alone
        "evaluate": bound, "checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint),
        "data": config.data, "test_examples": len(x), "test_sha256": test_sha256,
        "train_sha256": array_sha256(data.train[:used_train]) if used_train else None, "seed": seed,
        "threads": torch.get_num_threads(),
        "backend": backend, "precision": precision, "device": resolve_device(local_device(device)).type,
        "options": options, "fit_variance": fit_variance, "batch_size": batch_size,
        "timesteps_per_batch": timesteps_per_batch, "fd_samples": fd_samples if config.data == "digits" else 0,
        "sample_steps": sample_steps}
    saved = Progress(out_dir / f"eval{suffix}.progress", w.on_main(fingerprint))  # rank 0's, on every rank
    w.on_main(lambda: saved.open(restart=restart))
    examples_key = f"{mine.start}-{mine.stop}"  # this process's examples: its chunks' keys

    result = {"checkpoint": str(checkpoint), "step": runs["raw"].step, "weights_from": runs["raw"].weights_from,
              "val_bpd": runs["raw"].val_bpd, "data": config.data,
              "data_root": config.data_root if data_root is None else absolute_data_root(data_root), "split": "test",
              "num_examples": len(x), "num_dims": num_dims, "T": config.T, "seed": seed, "backend": backend,
              "world_size": w.world_size, "threads": torch.get_num_threads(), "precision": precision,
              "variance": "fitted" if fit_variance else config.variance, "bound": bound,
              "scored_once": scored_once,
              "terms_unit": "nats per example; terms[j] = L_j, j = 0 (decoder) .. T (prior)"}
    terms, fitted, integrand, per_example_bpd = {}, {}, {}, {}
    for name, loaded in runs.items():
        diffusion = loaded.diffusion
        chunk = saved.scoped(f"{name}-{examples_key}")
        if fit_variance:
            from .variance import FittedVariance
            from .variance import fit_variance as fit

            # Fitted once, on rank 0 (saved in the progress), and sent to the others: every process scores one model.
            fv = FittedVariance.from_dict(w.on_main(lambda: json_chunk(saved.scoped(name), "fit", lambda: fit(
                diffusion, data.train[:fit_variance].to(next(diffusion.denoiser.parameters()).device),
                timesteps_per_batch=timesteps_per_batch, seed=seed, progress=progress).to_dict())))
            fitted[name] = fv.to_dict()
            runs[name].diffusion = diffusion = diffusion.with_variance(fv)
        key = "bpd" if name == "raw" else "bpd_ema"
        if continuous:
            nll, parts = _continuous(diffusion, x, mine, data.train, result, name, key, seed=seed,
                                     inputs_per_call=min(batch_size, len(x)) * timesteps_per_batch, progress=progress,
                                     chunk=chunk, batch=min(batch_size, len(x)), **options)
            bpd = nll * to_bpd
            per_example_bpd[name] = bpd.tolist()
            result[key] = bpd.mean().item()
            result[f"{key}_stderr"] = (bpd.std().item() / math.sqrt(len(bpd))) if len(bpd) > 1 else None
            terms[name], integrand[name] = parts["terms"], parts["draws"]
            continue
        if bound == "estimate":
            per_example = _estimate(diffusion, x, mine, data.train, result, name, key, seed=seed,
                                    inputs_per_call=min(batch_size, len(x)) * timesteps_per_batch,  # ~512
                                    progress=progress, chunk=chunk, batch=min(batch_size, len(x)), **options)
        else:
            mine_terms = per_example_terms(diffusion, x[mine], timesteps_per_batch=timesteps_per_batch,
                                           batch_size=batch_size, seed=seed, indices=np.arange(len(x))[mine],
                                           progress=progress, chunk=chunk)
            per_example = w.gather(mine_terms.contiguous())  # [N x (T + 1)], in test-set order
            result.setdefault("calls", {})[name] = len(x) * config.T
        bpd = per_example.sum(-1) * to_bpd
        per_example_bpd[name] = bpd.tolist()
        result[key] = bpd.mean().item()
        result[f"{key}_stderr"] = (bpd.std().item() / math.sqrt(len(bpd))) if len(bpd) > 1 else None
        terms[name] = per_example.mean(0).tolist()
    if scored_once:  # one set of weights: its figures stand for both (readers of eval.json find every key)
        _copy_to_ema(result, terms, fitted, integrand, per_example_bpd)
    result["bpd_per_example"] = per_example_bpd
    result["test_sha256"] = test_sha256
    learned = learned_schedule(runs)
    if learned is not None:
        result["schedule"] = {**learned, "ema": learned["raw"]} if scored_once else learned
    result["terms"] = terms
    if fit_variance:
        result["fitted_variance"] = fitted
    if continuous:
        result["terms_unit"] = "nats per example; the continuous-time bound's three terms (means over examples)"
        result["decoder_bpd"] = {k: v["reconstruction"] * to_bpd for k, v in terms.items()}
        result["diffusion_bpd"] = {k: v["diffusion"] * to_bpd for k, v in terms.items()}
        result["prior_bpd"] = {k: v["prior"] * to_bpd for k, v in terms.items()}
        result["t_draws"] = result["estimate"]["ema"]["t_draws"]
        result["what"] = describe_continuous(result)
    else:
        result["decoder_bpd"] = {k: v[0] * to_bpd for k, v in terms.items()}
        result["prior_bpd"] = {k: v[-1] * to_bpd for k, v in terms.items()}

    result["fd_samples"] = fd_samples if config.data == "digits" else 0
    result["digits_fd_ema"] = None
    if config.data == "digits" and fd_samples:
        if fd_samples < 2:
            raise ValueError(f"fd_samples = {fd_samples}; a Fréchet distance needs at least 2 samples "
                             "(use >= 1000, or 0 to skip it) (--fd-samples)")
        from .metrics import digits_fd

        # Sampling is split across processes (sample i's noise depends on i alone); the distance on rank 0.
        part = w.shard(fd_samples)
        share = np.arange(fd_samples)[part]
        steps = (SAMPLE_STEPS if sample_steps is None else sample_steps) if continuous else None
        result["fd_sample_steps"] = steps
        drawn = saved.chunk(f"fd-{part.start}-{part.stop}", lambda: {"samples": draw_samples(
            runs["ema"].diffusion, len(share), seed=seed, indices=share, steps=steps).cpu().numpy()})
        samples = w.gather(torch.from_numpy(drawn["samples"]).contiguous())
        result["digits_fd_ema"] = w.on_main(lambda: digits_fd(samples))

    result["figure"] = str(out_dir / (f"eval_integrand{suffix}.png" if continuous else f"eval_terms{suffix}.png"))
    result["json"] = str(out_dir / f"eval{suffix}.json")
    if w.is_main:  # one process writes; the others get its dict
        head = {"full": f"{config.data}, step {result['step']}", "estimate": f"estimate, step {result['step']}",
                "continuous": f"{config.data}, T = ∞, step {result['step']}"}[bound]
        title = (f"{head}: {result['bpd']:.3f} bits/dim (one set of weights), {len(x)} test examples" if scored_once
                 else f"{head}: {result['bpd']:.3f} (raw) / {result['bpd_ema']:.3f} (EMA) bits/dim, "
                 f"{len(x)} test examples")
        if continuous:
            plots.integrand(integrand, result["figure"], title=title)
        else:
            plots.bound_terms(terms, result["figure"], title=title)
        result["seconds"] = round(time.monotonic() - started, 2)
        result["resumed_chunks"] = saved.reused  # rank 0's chunks read back from an interrupted run (0: none)
        atomic_write_bytes(result["json"], (json.dumps(result, indent=2) + "\n").encode())
        saved.finish()  # the evaluation is written: its progress is no longer needed
    return w.broadcast_object(result)


def one_weight_set(state: dict) -> bool:
    """Whether a checkpoint's raw and EMA weights are one set: an imported run (``state["imported"]``), or equal
    tensors (net, prior and γ schedule)."""
    if state.get("imported"):
        return True

    def same(a, b) -> bool:
        if a is None or b is None:
            return a is None and b is None
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    return all(same(state.get(raw), state.get(ema)) for raw, ema in
               (("model", "ema"), ("prior", "prior_ema"), ("schedule", "schedule_ema")))


def learned_schedule(runs: dict) -> dict | None:
    """The endpoints γ_0, γ_1 of a learned γ schedule per weight set (``{"raw": {...}, "ema": {...}}``, each
    :meth:`~ppl_diffusion.gamma.GammaSchedule.describe`), the ``"schedule"`` entry of eval.json; ``None`` for a fixed
    forward process. ``runs`` maps weight-set names to loaded runs (:func:`~ppl_diffusion.sampling.load_run`) or
    diffusions.

    Example:

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> from ppl_diffusion.evaluate import learned_schedule
    >>> from ppl_diffusion.gamma import ScalarGamma
    >>> _ = torch.manual_seed(0)
    >>> learned = GaussianDiffusion(schedule=ScalarGamma(-10.0, 4.0), T=0,
    ...                             denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> {k: round(v, 3) for k, v in learned_schedule({"raw": learned})["raw"].items()}
    {'gamma_0': -10.0, 'gamma_1': 4.0}
    >>> fixed = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                           denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> learned_schedule({"raw": fixed}) is None
    True
    """
    out = {}
    for name, loaded in runs.items():
        diffusion = getattr(loaded, "diffusion", loaded)
        if not (getattr(diffusion, "gamma_schedule", False) and diffusion.schedule.learnable):
            return None
        out[name] = diffusion.schedule.describe()
    return out


def schedule_line(learned: dict) -> str:
    """The one-line account of :func:`learned_schedule`'s endpoints that ``train`` and ``evaluate`` print.

    >>> from ppl_diffusion.evaluate import schedule_line
    >>> schedule_line({"raw": {"gamma_0": -13.3012, "gamma_1": 4.9876}, "ema": {"gamma_0": -13.3, "gamma_1": 5.0}})
    'learned γ_0 → γ_1: raw -13.301 → 4.988, EMA -13.300 → 5.000'
    """
    return "learned γ_0 → γ_1: " + ", ".join(f"{'EMA' if name == 'ema' else name} {g['gamma_0']:.3f} → "
                                             f"{g['gamma_1']:.3f}" for name, g in learned.items())


def paired_difference(a: dict | str | Path, b: dict | str | Path, weights: str = "ema") -> dict:
    """Run ``a``'s bits/dim minus run ``b``'s on the same test examples, paired per example, with its standard error:
    the comparison of two models' bounds. Pairing removes what the examples share (a hard digit is hard for both), so
    the difference is known far better than from the two ± SE of each run.

    The two evaluations must have scored the same test examples (``test_sha256`` of eval.json); with the same
    ``--seed`` their noise draws are the same too (counter-based), which pairs the Monte-Carlo noise as well.

    :param a: an eval.json dict of :func:`evaluate_run`, or the path of one.
    :param b: the same for the other run.
    :param str weights: ``"ema"`` or ``"raw"``.
    :returns: ``{"difference": mean of a − b, "stderr": its SE over examples, "num_examples": N, "a": ..., "b": ...}``
        in bits/dim (``a`` and ``b``: each run's mean).
    :raises ValueError: if the examples differ or an eval.json predates the per-example figures.

    Example (two eval.json dicts, as :func:`evaluate_run` writes them, reduced to the keys read):

    >>> from ppl_diffusion.evaluate import paired_difference
    >>> a = {"test_sha256": "d1", "bpd_per_example": {"ema": [3.0, 4.0, 5.0, 3.5]}}
    >>> b = {"test_sha256": "d1", "bpd_per_example": {"ema": [3.2, 4.1, 5.3, 3.6]}}
    >>> d = paired_difference(a, b)
    >>> round(d["difference"], 4), round(d["stderr"], 4), d["num_examples"]  # a is 0.175 bits/dim better
    (-0.175, 0.0479, 4)
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights = {weights!r}; choose ema or raw")
    runs = []
    for label, side in (("A", a), ("B", b)):
        result = side if isinstance(side, dict) else json.loads(Path(side).read_text())
        name = label if isinstance(side, dict) else f"{label} ({side})"
        if "bpd_per_example" not in result:
            raise ValueError(f"eval.json {name} has no per-example bits/dim (written before they were kept): "
                             "evaluate that run again")
        runs.append((result, name))
    (ra, name_a), (rb, name_b) = runs
    if ra.get("test_sha256") != rb.get("test_sha256"):
        count = lambda r: len(r["bpd_per_example"][weights])  # noqa: E731
        raise ValueError(f"the evaluations {name_a} ({count(ra)} examples) and {name_b} ({count(rb)} examples) scored "
                         "different test examples: evaluate both runs on the same data and --max-examples")
    xa = torch.tensor(ra["bpd_per_example"][weights], dtype=torch.float64)
    xb = torch.tensor(rb["bpd_per_example"][weights], dtype=torch.float64)
    d = xa - xb
    n = len(d)
    return {"difference": d.mean().item(), "stderr": d.std().item() / math.sqrt(n) if n > 1 else None,
            "num_examples": n, "a": xa.mean().item(), "b": xb.mean().item(), "weights": weights}


def _copy_to_ema(result: dict, terms: dict, fitted: dict, integrand: dict, per_example_bpd: dict) -> None:
    """The raw weights' figures under the EMA keys too, for a run whose two weight sets are one (scored once)."""
    for key in ("bpd", "bpd_stderr", "bpd_t_stderr"):
        if key in result:
            result[key.replace("bpd", "bpd_ema", 1)] = result[key]
    terms["ema"] = terms["raw"]
    for d in (fitted, integrand, result.get("estimate", {}), per_example_bpd):
        if "raw" in d:
            d["ema"] = d["raw"]
    if "calls" in result:
        result["calls"]["ema"] = 0  # not scored again


def describe_continuous(result: dict) -> dict:
    """What each number of a continuous-time run's eval.json is, in words (its ``"what"`` entry)."""
    plan = result["estimate"]["ema"]
    how = ("uniform in each of K equal strata of [0, 1]" if plan["proposal"] == "uniform" else
           f"from the pilot's importance proposal (√E[L(t)²] on {plan['pilot']['examples']} training examples at "
           f"{plan['pilot']['bins']} bins of t, 10 % uniform), strata at its equal-mass quantiles")
    return {
        "bpd": "an unbiased estimate of the continuous-time (T = ∞) variational bound, −ELBO / (D ln 2) per example, "
               "mean over the test examples: reconstruction + diffusion + prior (ppl_diffusion.infer.continuous_bound)",
        "bpd_stderr": "standard error over examples: covers the examples, the draws of t and every noise draw",
        "bpd_t_stderr": "the t-integral's own Monte-Carlo standard error (its draws of t and ε within each stratum; "
                        "null with --draws 1): how far the figure may be from the exact t-integral for these examples",
        "reconstruction": "−log p(x_0|x_1) at γ_0, one draw x_1 = α_0 x_0 + σ_0 ε per example, ε counter-based "
                          "(seed, example, 1, XT): the net at x_1 has no closed form in x_1; unbiased, and the same "
                          "number as L_0 of any chain of the same γ evaluated with the same seed",
        "prior": "KL(q(x_T|x_0) || p(x_T)) at γ_1, in closed form (one counter-based draw for a prior without one)",
        "diffusion": f"½ ∫_0^1 γ'(t) E‖ε − ε̂(x_t, γ(t))‖² dt by R = {plan['t_draws']} draws of t per example "
                     f"({plan['strata']} strata × {plan['draws']} draws, t {how}), each with its own ε, t and ε "
                     "counter-based of (seed, example, draw)",
    }


def summary(result: dict) -> str:
    """A few lines for the terminal from the dict of :func:`evaluate_run` (its example shows them).

    :param dict result: :func:`evaluate_run`'s dict (or a saved ``eval.json``).

    Example (the keys it reads, as in a saved ``eval.json`` of the full bound; :func:`evaluate_run`'s example makes
    one):

    >>> from ppl_diffusion.evaluate import summary
    >>> result = {"data": "eight_gaussians", "num_examples": 4, "step": 1, "T": 10, "variance": "beta",
    ...           "bound": "full", "bpd": 2.5, "bpd_stderr": 0.1, "bpd_ema": 2.4, "bpd_ema_stderr": 0.1,
    ...           "decoder_bpd": {"ema": 0.5}, "prior_bpd": {"ema": 1e-5}, "json": "run/eval.json",
    ...           "figure": "run/eval.png", "seconds": 1.2}
    >>> print(summary(result))
    eight_gaussians test split, 4 examples, step 1, T = 10, variance beta:
      bits/dim  raw 2.5000 ± 0.1000   EMA 2.4000 ± 0.1000
      L_0 (decoder) 0.5000, L_T (prior) 1.00e-05 bits/dim (EMA)
      wrote run/eval.json and run/eval.png (1.2 s)
    """
    def pm(key):
        se = result.get(f"{key}_stderr")
        return f"{result[key]:.4f}" + ("" if se is None else f" ± {se:.4f}")

    best = (f" (best by validation: {result['val_bpd']:.4f} bits/dim held out)"
            if result.get("weights_from") == "best" else "")
    lines = [f"{result['data']} test split, {result['num_examples']} examples, step {result['step']}{best}, "
             f"T = {result['T'] or '∞ (continuous time)'}, variance {result.get('variance', '?')}"
             + ("" if result.get("precision", "fp32") == "fp32" else f", precision {result['precision']}") + ":",
             (f"  bits/dim  {pm('bpd')}   (one set of weights: raw = EMA, scored once)"
              if result.get("scored_once") else f"  bits/dim  raw {pm('bpd')}   EMA {pm('bpd_ema')}"),
             *([f"  estimate of the full bound ({sum(result['calls'].values()):,} denoiser inputs against "
                f"{sum(1 for v in result['calls'].values() if v) * result['num_examples'] * result['T']:,}): "
                "t-sampling SE raw "
                + ", EMA ".join("n/a (--draws 1)" if result.get(k) is None else f"{result[k]:.4f}"
                                for k in ("bpd_t_stderr", "bpd_ema_t_stderr"))]
               if result.get("bound") == "estimate" else []),
             *(["  at this T the estimate costs at least the full bound's denoiser inputs: pass --bound full (exact, no "
                "dearer), or lower --full-steps / --strata / --draws"]
               if result.get("bound") == "estimate" and sum(result["calls"].values())
               >= sum(1 for v in result["calls"].values() if v) * result["num_examples"] * result["T"] else []),
             *([f"  continuous-time bound (T = ∞), {result['t_draws']} draws of t per example "
                f"({sum(result['calls'].values()):,} denoiser inputs); the t-integral's Monte-Carlo SE raw "
                + ", EMA ".join("n/a (--draws 1)" if result.get(k) is None else f"{result[k]:.4f}"
                                for k in ("bpd_t_stderr", "bpd_ema_t_stderr")),
                f"  reconstruction {result['decoder_bpd']['ema']:.4f}, diffusion {result['diffusion_bpd']['ema']:.4f}, "
                f"prior {result['prior_bpd']['ema']:.2e} bits/dim (EMA)"]
               if result.get("bound") == "continuous" else
               [f"  L_0 (decoder) {result['decoder_bpd']['ema']:.4f}, L_T (prior) {result['prior_bpd']['ema']:.2e} "
                "bits/dim (EMA)"])]
    if result.get("schedule"):
        lines.append("  " + schedule_line({name: g for name, g in result["schedule"].items()
                                           if name == "raw" or not result.get("scored_once")}))
    if result.get("digits_fd_ema") is not None:
        lines.append(f"  digits_fd (EMA weights, {result['fd_samples']} samples) {result['digits_fd_ema']:.2f}")
    if result.get("resumed_chunks"):
        lines.append(f"  continued an interrupted evaluation: {result['resumed_chunks']} saved chunks read back")
    lines.append(f"  wrote {result['json']} and {result['figure']} ({result['seconds']:.1f} s)")
    return "\n".join(lines)


__all__ = ["evaluate_run", "learned_schedule", "paired_difference", "per_example_terms", "schedule_line", "summary"]
