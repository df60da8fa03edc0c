"""The training race: the same net from the same initialisation, trained with each estimator for the
same wall time, scored by the full bound on held-out data along the way.

Each estimator trains in its own run folder with :func:`~ppl_diffusion.train.loop.train` (the loop of
``ppl-diffusion train``, same seed, so the same initial weights and batch order), in budgets that
double: ``seconds / 2^(points−1)``, …, ``seconds / 2``, ``seconds``. After each budget the run stops,
its raw weights are scored with every term of the bound (:func:`~ppl_diffusion.evaluate.per_example_terms`,
the evaluator of ``ppl-diffusion evaluate``) on the first ``eval_examples`` test examples, with the same
seed, hence the same noise, for every estimator and every point; then it resumes (exactly, from its
checkpoint) for the next budget. Wall time is the training loop's own clock, saved in the checkpoint:
it excludes start-up, evaluation and checkpoint loading, so every estimator is charged for its steps only.

:func:`time_to_reach` reads off when a curve first reaches a bits/dim (linear interpolation between
the evaluated points of the best-so-far curve).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
import torch

from ..data import load_dataset
from ..evaluate import per_example_terms
from ..train import TrainConfig, build_diffusion, train


def budgets(seconds: float, points: int) -> list[float]:
    """Training budgets in seconds: ``points`` of them, doubling up to ``seconds``.

    Example:

    >>> from ppl_diffusion.study.race import budgets
    >>> budgets(60, 4)
    [7.5, 15.0, 30.0, 60.0]
    """
    if not (isinstance(seconds, (int, float)) and seconds > 0):
        raise ValueError(f"race seconds = {seconds!r}; pass a positive wall-time budget per estimator "
                         "(--race-seconds), or 0 to skip the race")
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ValueError(f"race points = {points!r}; pass an integer >= 1 (--race-points)")
    return [seconds / 2 ** k for k in range(points - 1, -1, -1)]


def _bpd(diffusion, x, eval_seed: int) -> tuple[float, float]:
    per_example = per_example_terms(diffusion.eval(), x, seed=eval_seed).sum(-1)  # nats, [N]
    bpd = per_example / (diffusion.num_dims * math.log(2.0))
    se = bpd.std().item() / math.sqrt(len(bpd)) if len(bpd) > 1 else float("nan")
    return bpd.mean().item(), se


def race(config: TrainConfig, estimators, seconds: float, out_dir: str | Path, *, points: int = 8,
         eval_examples: int = 100, eval_seed: int = 0, progress: bool = False, log=print) -> list[dict]:
    """Train ``config``'s model with each estimator under the same budget; return the curve points.

    Each row: ``estimator``, ``point`` (0 = the initial weights), ``budget_seconds``, ``train_seconds``,
    ``step``, ``bpd``, ``bpd_se`` (standard error over the evaluated examples). Runs go to
    ``out_dir/<estimator>/``.

    :param config: the model and training settings (a ``TrainConfig``; its estimator, steps and checkpointing are
        replaced per run).
    :param estimators: the estimators' names (trainable ones).
    :param float seconds: the largest budget, per estimator.
    :param out_dir: where the runs go (``out_dir/<estimator>`` must not exist).
    :param int points: budgets per estimator (:func:`budgets`).
    :param int eval_examples: test examples scored at each point.
    :param int eval_seed: the bound's noise seed at every point.
    :param bool progress: show progress bars.
    :param log: called with one line per point.

    Example: one budget of a fifth of a second.

    >>> import tempfile
    >>> from ppl_diffusion.study.race import race
    >>> from ppl_diffusion.train import TrainConfig
    >>> config = TrainConfig(data="eight_gaussians", net="mlp", net_config={"width": 16, "depth": 1}, T=10,
    ...                      batch_size=4, warmup_steps=0, ema_decay=0.0)
    >>> with tempfile.TemporaryDirectory() as out:
    ...     rows = race(config, ["stochastic-kl"], 0.2, out, points=1, eval_examples=4, log=lambda line: None)
    >>> [(row["estimator"], row["point"]) for row in rows]
    [('stochastic-kl', 0), ('stochastic-kl', 1)]
    """
    plan = budgets(seconds, points)
    out_dir = Path(out_dir)
    for name in estimators:
        if (out_dir / name).exists():
            raise ValueError(f"race run folder {out_dir / name} exists from an earlier study; remove {out_dir} or "
                             "write the study to a new --out folder")
    dataset = load_dataset(config.data, config.data_root) if config.data_root else load_dataset(config.data)
    x = dataset.test[:eval_examples]
    rows = []
    import pyro

    pyro.set_rng_seed(config.seed)
    init = build_diffusion(config, dataset)  # the initial weights every run starts from (same seed)
    bpd0, se0 = _bpd(init, x, eval_seed)
    for name in estimators:
        rows.append({"estimator": name, "point": 0, "budget_seconds": 0.0, "train_seconds": 0.0, "step": 0,
                     "bpd": bpd0, "bpd_se": se0})
        run_dir = out_dir / name
        for k, budget in enumerate(plan, start=1):
            cfg = dataclasses.replace(config, estimator=name, minutes=budget / 60.0, steps=None,
                                      checkpoint_every=10 ** 9, keep_checkpoints=1)
            result = train(cfg, run_dir, resume=k > 1, progress=progress)
            on = next(result.diffusion.parameters()).device if isinstance(result.diffusion, torch.nn.Module) else "cpu"
            bpd, se = _bpd(result.diffusion, x.to(on), eval_seed)
            rows.append({"estimator": name, "point": k, "budget_seconds": budget, "train_seconds": result.elapsed,
                         "step": result.step, "bpd": bpd, "bpd_se": se})
            log(f"race {name}: {result.elapsed:7.1f} s, {result.step:6d} steps, {bpd:.4f} ± {se:.4f} bits/dim")
    return rows


def time_to_reach(rows: list[dict], estimator: str, target: float) -> dict:
    """When ``estimator``'s curve first reaches ``target`` bits/dim.

    Returns ``seconds`` and ``step`` interpolated linearly between the two evaluated points that bracket
    the crossing (``None`` if never reached), and ``bound``: ``"exact"``, ``"at most"`` (already reached
    at the first evaluated point after the start: that point's time, an upper bound), ``"at start"`` or
    ``"not reached"``.

    :param list rows: the curve points of :func:`race`.
    :param str estimator: whose curve.
    :param float target: bits/dim.

    Example: 3.5 is halfway from 4.0 (at 10 s) to 3.0 (at 20 s).

    >>> rows = [{"estimator": e, "point": k, "train_seconds": 10.0 * k, "step": 100 * k, "bpd": b}
    ...         for e, bpds in {"stochastic-mc": [5.0, 4.0, 3.0], "stochastic-kl": [5.0, 3.5, 2.5]}.items()
    ...         for k, b in enumerate(bpds)]
    >>> from ppl_diffusion.study.race import time_to_reach
    >>> time_to_reach(rows, "stochastic-mc", 3.5)
    {'seconds': 15.0, 'step': 150.0, 'bound': 'exact'}
    >>> time_to_reach(rows, "stochastic-mc", 1.0)["bound"]
    'not reached'
    """
    pts = sorted((r for r in rows if r["estimator"] == estimator), key=lambda r: r["point"])
    prev = None
    for r in pts:
        if r["bpd"] <= target:
            if prev is None:
                return {"seconds": r["train_seconds"], "step": r["step"], "bound": "at start"}
            if prev["point"] == 0:  # crossed before the first evaluation: its time is all we know, an upper bound
                return {"seconds": float(r["train_seconds"]), "step": float(r["step"]), "bound": "at most"}
            frac = (prev["bpd"] - target) / (prev["bpd"] - r["bpd"]) if prev["bpd"] != r["bpd"] else 1.0
            sec = prev["train_seconds"] + frac * (r["train_seconds"] - prev["train_seconds"])
            step = prev["step"] + frac * (r["step"] - prev["step"])
            return {"seconds": float(sec), "step": float(step), "bound": "exact"}
        prev = r
    return {"seconds": None, "step": None, "bound": "not reached"}


def final_bpd(rows: list[dict], estimator: str) -> float:
    """The bits/dim of ``estimator``'s last point.

    Example:

    >>> rows = [{"estimator": e, "point": k, "train_seconds": 10.0 * k, "step": 100 * k, "bpd": b}
    ...         for e, bpds in {"stochastic-mc": [5.0, 4.0, 3.0], "stochastic-kl": [5.0, 3.5, 2.5]}.items()
    ...         for k, b in enumerate(bpds)]
    >>> from ppl_diffusion.study.race import final_bpd
    >>> final_bpd(rows, "stochastic-kl")
    2.5
    """
    pts = [r for r in rows if r["estimator"] == estimator]
    return max(pts, key=lambda r: r["point"])["bpd"]


def speedups(rows: list[dict], fast: str, slow: str) -> dict:
    """How much sooner ``fast`` reaches ``slow``'s final bits/dim than ``slow`` did (ratio of times).

    Example: stochastic-kl reaches 3.0 at 15 s, stochastic-mc at 20 s.

    >>> rows = [{"estimator": e, "point": k, "train_seconds": 10.0 * k, "step": 100 * k, "bpd": b}
    ...         for e, bpds in {"stochastic-mc": [5.0, 4.0, 3.0], "stochastic-kl": [5.0, 3.5, 2.5]}.items()
    ...         for k, b in enumerate(bpds)]
    >>> from ppl_diffusion.study.race import speedups
    >>> out = speedups(rows, "stochastic-kl", "stochastic-mc")
    >>> out["fast_seconds"], out["slow_seconds"], round(out["ratio"], 4), out["ratio_kind"]
    (15.0, 20.0, 1.3333, 'measured')
    """
    target = final_bpd(rows, slow)
    t_slow = time_to_reach(rows, slow, target)
    t_fast = time_to_reach(rows, fast, target)
    ratio = None
    if t_slow["seconds"] and t_fast["seconds"]:
        ratio = t_slow["seconds"] / t_fast["seconds"]
    kind = {"exact": "measured", "at most": "at least"}.get(t_fast["bound"], "n/a")
    return {"fast": fast, "slow": slow, "target_bpd": target, "slow_seconds": t_slow["seconds"],
            "fast_seconds": t_fast["seconds"], "fast_bound": t_fast["bound"], "ratio": ratio, "ratio_kind": kind}


def summarise(rows: list[dict], names, target: float | None = None) -> dict:
    """Targets (the Monte-Carlo estimators' final bits/dim, and ``target`` if given) with every estimator's
    time to reach them, and the speed-ups of the analytic stochastic estimators over the Monte-Carlo ones.

    Example:

    >>> rows = [{"estimator": e, "point": k, "train_seconds": 10.0 * k, "step": 100 * k, "bpd": b}
    ...         for e, bpds in {"stochastic-mc": [5.0, 4.0, 3.0], "stochastic-kl": [5.0, 3.5, 2.5]}.items()
    ...         for k, b in enumerate(bpds)]
    >>> from ppl_diffusion.study.race import summarise
    >>> out = summarise(rows, ["stochastic-mc", "stochastic-kl"])
    >>> [t["label"] for t in out["targets"]], round(out["speedups"][0]["ratio"], 4)
    (['final of stochastic-mc'], 1.3333)
    """
    names = list(names)
    targets = []
    for slow in ("trace", "stochastic-mc"):
        if slow in names:
            bpd = final_bpd(rows, slow)
            targets.append({"label": f"final of {slow}", "bpd": bpd,
                            "times": {n: time_to_reach(rows, n, bpd) for n in names}})
    if target is not None:
        targets.append({"label": "stated target", "bpd": target,
                        "times": {n: time_to_reach(rows, n, target) for n in names}})
    pairs = [(fast, slow) for slow in ("trace", "stochastic-mc") for fast in ("stochastic-kl-is", "stochastic-kl")
             if fast in names and slow in names]
    return {"targets": targets, "speedups": [speedups(rows, f, s) for f, s in pairs]}


__all__ = ["budgets", "final_bpd", "race", "speedups", "summarise", "time_to_reach"]
