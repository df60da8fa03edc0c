"""The full variational bound of a trained run on its test split: the API behind ``ppl-diffusion evaluate``.

:func:`evaluate_run` loads the newest checkpoint of a run folder twice (raw and EMA weights) and computes,
for the test split (or its first ``max_examples`` examples), every term of the bound with
:func:`~ppl_diffusion.infer.variational_bound`: L_0 (the exact decoder, discretized for images), the
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
from .infer.estimate import PROPOSALS, estimate_bound, pilot_profile, plan_from_profile, plan_uniform
from .precision import check_precision
from .sampling import backend_of, draw_samples, find_checkpoint, load_run
from .train.run_dir import absolute_data_root, load_run_data


def _positive(name: str, value, flag: str, allow_none=False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} = {value!r}; pass a positive integer ({flag})")


def per_example_terms(diffusion, x: torch.Tensor, *, timesteps_per_batch: int | None = None, batch_size: int = 500,
                      timesteps=None, seed: int = 0, indices=None, progress: bool = False) -> torch.Tensor:
    """L_0 … L_T for every example of ``x`` ``[N x ...]``, ``[N x (T + 1)]`` nats, in batches of ``batch_size``
    (only the steps ``timesteps``, NaN elsewhere, if given; see :func:`~ppl_diffusion.infer.variational_bound`).
    A NumPyro ``diffusion`` is scored by the compiled bound (:func:`ppl_diffusion.numpyro.chain.variational_bound`).

    The noise is counter-based (:mod:`ppl_diffusion.noise`): example i's draws are a function of (``seed``,
    ``indices[i]``, t) alone, ``indices`` default 0..N − 1 (pass the test-set indices of a subset or shard), so
    any batch size, subset, process count or backend gives each example the same numbers."""
    if timesteps_per_batch is None:
        timesteps_per_batch = auto_timesteps_per_batch(min(batch_size, len(x)))
    if backend_of(diffusion) == "numpyro":
        if timesteps is not None:
            raise ValueError("a subset of the bound's terms (timesteps=...) is computed on the Pyro backend only")
        from .numpyro.sampling import per_example_terms as terms_numpyro

        return torch.from_numpy(terms_numpyro(diffusion, x.cpu().numpy(), timesteps_per_batch=timesteps_per_batch,
                                              batch_size=batch_size, seed=seed, indices=indices))
    device = next(diffusion.denoiser.parameters()).device
    indices = check_indices(indices, len(x))
    parts = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size].to(device)
            bound = variational_bound(diffusion, chunk, analytic=True, timesteps=timesteps, seed=seed,
                                      indices=indices[start:start + batch_size],
                                      timesteps_per_batch=timesteps_per_batch, progress=progress)
            parts.append(bound.terms.cpu().double())
    return torch.cat(parts) if parts else torch.zeros((0, diffusion.T + 1), dtype=torch.float64)


def _estimate(diffusion, x, mine, train, result: dict, name: str, key: str, *, seed: int, full_steps: int,
              strata: int, draws: int, proposal: str, pilot_examples: int, inputs_per_call: int,
              progress: bool) -> torch.Tensor:
    """The estimate's per-term values ``[N x (T + 1)]`` in test-set order (this process's share estimated, all
    gathered); fills ``result``'s t-sampling SE, calls and plan for weight set ``name``."""
    w = world()
    pilot_calls = 0
    device = next(diffusion.denoiser.parameters()).device if backend_of(diffusion) == "pyro" else "cpu"
    if proposal == "pilot" and full_steps < diffusion.T:  # on rank 0, sent to the others: one plan for all
        profile, pilot_calls = w.on_main(lambda: pilot_profile(
            diffusion, train[:pilot_examples].to(device), seed=seed,
            full_steps=full_steps))
        plan = plan_from_profile(profile, full_steps=full_steps, strata=strata, draws=draws,
                                 pilot={"examples": min(pilot_examples, len(train)), "calls": pilot_calls,
                                        "data": "train", "grid": 50})
    else:
        plan = plan_uniform(diffusion.T, full_steps=full_steps, strata=strata, draws=draws)
    est = estimate_bound(diffusion, x[mine].to(device), plan, seed=seed, indices=np.arange(len(x))[mine],
                         inputs_per_call=inputs_per_call, progress=progress)
    t_variance = w.gather(est.t_variance.contiguous())
    calls = int(w.all_sum(torch.tensor([est.calls], dtype=torch.float64)).item())
    n, to_bpd = len(x), 1.0 / (diffusion.num_dims * math.log(2.0))
    result[f"{key}_t_stderr"] = (None if torch.isnan(t_variance).any() or not n
                                 else t_variance.sum().clamp(min=0).sqrt().item() / n * to_bpd)
    result.setdefault("calls", {})[name] = calls + pilot_calls
    result.setdefault("estimate", {})[name] = plan.to_dict()
    return w.gather(est.terms.contiguous())


def evaluate_run(run: str | Path, *, max_examples: int | None = None, timesteps_per_batch: int | None = None,
                 batch_size: int = 500, fd_samples: int = 1000, fit_variance: int = 0, device: str = "auto",
                 seed: int = 0, progress: bool = True, backend: str = "pyro", precision: str = "fp32",
                 bound: str = "full", full_steps: int = 20, strata: int = 20, draws: int = 2,
                 proposal: str = "pilot", pilot_examples: int = 16, data_root: str | Path | None = None,
                 last: bool = False) -> dict:
    """Bits/dim of the raw and EMA weights of ``run`` on the test split, per-term breakdown, figure and JSON.

    The weights are those of ``run``'s best.pt when it has one (a run trained with ``val_examples``: the
    checkpoint of the lowest validation bits/dim), else of its newest checkpoint; ``last``: the newest checkpoint
    always. eval.json records which (``weights_from``, ``val_bpd``).

    :param int max_examples: evaluate only the first ``max_examples`` test examples (default: all).
    :param int timesteps_per_batch: steps t evaluated per denoiser call (default: about 512 inputs per call).
    :param int batch_size: test examples per call of :func:`~ppl_diffusion.infer.variational_bound`.
    :param int fd_samples: samples of the EMA weights scored by ``digits_fd`` (digits only; 0 disables).
    :param int fit_variance: if > 0, fit σ_t² in closed form on the first ``fit_variance`` training examples
        (:func:`~ppl_diffusion.variance.fit_variance`, separately for raw and EMA weights) and evaluate that
        model; the result then goes to ``eval-fitted.json`` / ``eval_terms-fitted.png``.
    :param str backend: ``"pyro"`` or ``"numpyro"`` (the compiled JAX bound and sampler; a run trained on
        either backend evaluates on both, with the same noise for the same seed).
    :param str precision: the denoiser's arithmetic, ``"fp32"`` (default, whatever the run trained at) or
        ``"bf16"`` (autocast; the bound's arithmetic outside the network stays float32 / float64; see
        ``benchmarks/results/precision.md`` for its bias on the digits).
    :param str bound: ``"full"`` (every term) or ``"estimate"`` (:mod:`ppl_diffusion.infer.estimate`).
    :param int full_steps: with ``"estimate"``: steps t = 1..``full_steps`` computed for every example.
    :param int strata: with ``"estimate"``: strata of the steps above ``full_steps``.
    :param int draws: with ``"estimate"``: steps drawn per stratum and example (>= 2 for the t-sampling's SE).
    :param str proposal: with ``"estimate"``: ``"pilot"`` (strata and importance proposal from √E[L_t²] on
        ``pilot_examples`` training examples at 50 steps, independent of the evaluated draws) or ``"uniform"``.
    :param data_root: where the run's data is now (default: the folder the run stored; ``--data-root``), for
        mnist, cifar10 and image_folder.
    :returns: the dict written to ``RUN/eval.json`` (see the module docstring).
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
    if bound not in ("full", "estimate"):
        raise ValueError(f"bound = {bound!r}; choose full (every term) or estimate (a few terms per example) (--bound)")
    if bound == "estimate":
        if proposal not in PROPOSALS:
            raise ValueError(f"proposal = {proposal!r}; choose one of {', '.join(PROPOSALS)} (--proposal)")
        _positive("pilot_examples", pilot_examples, "--pilot-examples")
        plan_uniform(1000, full_steps=full_steps, strata=strata, draws=draws)  # checks the three counts
    if fit_variance and backend != "pyro":
        raise ValueError(f"--fit-variance {fit_variance} runs on the Pyro backend only; drop --backend {backend} "
                         "or --fit-variance")
    started = time.monotonic()
    w = world()
    progress = progress and w.is_main
    checkpoint = find_checkpoint(run, last=last)
    out_dir = checkpoint.parent
    runs = {name: load_run(checkpoint, ema=(name == "ema"), device=local_device(device), backend=backend,
                           precision=precision)
            for name in ("raw", "ema")}
    config = runs["raw"].config
    data = load_run_data(config, data_root, run=run, event_shape=runs["raw"].diffusion.event_shape)
    x = data.test if max_examples is None else data.test[:max_examples]
    mine = w.shard(len(x))  # this process's contiguous share of the examples (all of them on one process)
    if timesteps_per_batch is None:  # from the whole set, so that 1 and N processes make the same calls
        timesteps_per_batch = auto_timesteps_per_batch(min(batch_size, len(x)))
    num_dims = runs["raw"].diffusion.num_dims
    to_bpd = 1.0 / (num_dims * math.log(2.0))

    result = {"checkpoint": str(checkpoint), "step": runs["raw"].step, "weights_from": runs["raw"].weights_from,
              "val_bpd": runs["raw"].val_bpd, "data": config.data,
              "data_root": config.data_root if data_root is None else absolute_data_root(data_root), "split": "test",
              "num_examples": len(x), "num_dims": num_dims, "T": config.T, "seed": seed, "backend": backend,
              "world_size": w.world_size, "threads": torch.get_num_threads(), "precision": precision,
              "variance": "fitted" if fit_variance else config.variance, "bound": bound,
              "terms_unit": "nats per example; terms[j] = L_j, j = 0 (decoder) .. T (prior)"}
    terms, fitted = {}, {}
    for name, loaded in runs.items():
        diffusion = loaded.diffusion
        if fit_variance:
            from .variance import FittedVariance
            from .variance import fit_variance as fit

            # Fitted once, on rank 0, and sent to the others: every process scores the same model.
            fv = FittedVariance.from_dict(w.on_main(lambda: fit(
                diffusion, data.train[:fit_variance].to(next(diffusion.denoiser.parameters()).device),
                timesteps_per_batch=timesteps_per_batch, seed=seed, progress=progress).to_dict()))
            fitted[name] = fv.to_dict()
            runs[name].diffusion = diffusion = diffusion.with_variance(fv)
        key = "bpd" if name == "raw" else "bpd_ema"
        if bound == "estimate":
            per_example = _estimate(diffusion, x, mine, data.train, result, name, key, seed=seed,
                                    full_steps=full_steps, strata=strata, draws=draws, proposal=proposal,
                                    pilot_examples=pilot_examples,
                                    inputs_per_call=min(batch_size, len(x)) * timesteps_per_batch,  # ~512
                                    progress=progress)
        else:
            mine_terms = per_example_terms(diffusion, x[mine], timesteps_per_batch=timesteps_per_batch,
                                           batch_size=batch_size, seed=seed, indices=np.arange(len(x))[mine],
                                           progress=progress)
            per_example = w.gather(mine_terms.contiguous())  # [N x (T + 1)], in test-set order
            result.setdefault("calls", {})[name] = len(x) * config.T
        bpd = per_example.sum(-1) * to_bpd
        result[key] = bpd.mean().item()
        result[f"{key}_stderr"] = (bpd.std().item() / math.sqrt(len(bpd))) if len(bpd) > 1 else None
        terms[name] = per_example.mean(0).tolist()
    result["terms"] = terms
    if fit_variance:
        result["fitted_variance"] = fitted
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
        share = np.arange(fd_samples)[w.shard(fd_samples)]
        samples = w.gather(draw_samples(runs["ema"].diffusion, len(share), seed=seed, indices=share).cpu().contiguous())
        result["digits_fd_ema"] = w.on_main(lambda: digits_fd(samples))

    suffix = ("-fitted" if fit_variance else "") + ("-estimate" if bound == "estimate" else "")
    result["figure"] = str(out_dir / f"eval_terms{suffix}.png")
    result["json"] = str(out_dir / f"eval{suffix}.json")
    if w.is_main:  # one process writes; the others get its dict
        head = f"{config.data}, step {result['step']}" if bound == "full" else f"estimate, step {result['step']}"
        plots.bound_terms(terms, result["figure"],
                          title=f"{head}: {result['bpd']:.3f} (raw) / {result['bpd_ema']:.3f} (EMA) bits/dim, "
                                f"{len(x)} test examples")
        result["seconds"] = round(time.monotonic() - started, 2)
        Path(result["json"]).write_text(json.dumps(result, indent=2) + "\n")
    return w.broadcast_object(result)


def summary(result: dict) -> str:
    """A few lines for the terminal from the dict of :func:`evaluate_run`."""
    def pm(key):
        se = result.get(f"{key}_stderr")
        return f"{result[key]:.4f}" + ("" if se is None else f" ± {se:.4f}")

    best = (f" (best by validation: {result['val_bpd']:.4f} bits/dim held out)"
            if result.get("weights_from") == "best" else "")
    lines = [f"{result['data']} test split, {result['num_examples']} examples, step {result['step']}{best}, "
             f"T = {result['T']}, variance {result.get('variance', '?')}"
             + ("" if result.get("precision", "fp32") == "fp32" else f", precision {result['precision']}") + ":",
             f"  bits/dim  raw {pm('bpd')}   EMA {pm('bpd_ema')}",
             *([f"  estimate of the full bound ({sum(result['calls'].values()):,} denoiser inputs against "
                f"{2 * result['num_examples'] * result['T']:,}): t-sampling SE raw "
                + ", EMA ".join("n/a (--draws 1)" if result.get(k) is None else f"{result[k]:.4f}"
                                for k in ("bpd_t_stderr", "bpd_ema_t_stderr"))]
               if result.get("bound") == "estimate" else []),
             f"  L_0 (decoder) {result['decoder_bpd']['ema']:.4f}, L_T (prior) {result['prior_bpd']['ema']:.2e} "
             "bits/dim (EMA)"]
    if result.get("digits_fd_ema") is not None:
        lines.append(f"  digits_fd (EMA weights, {result['fd_samples']} samples) {result['digits_fd_ema']:.2f}")
    lines.append(f"  wrote {result['json']} and {result['figure']} ({result['seconds']:.1f} s)")
    return "\n".join(lines)
