"""Validation during training: examples held out of the training split, an estimate of the bound on them at
every checkpoint, and the best weights by that estimate (``TrainConfig.val_examples``, ``--val-examples N``).

**The held-out examples.** N of the training split's examples, chosen by the seed alone: example i's rank is the
counter-based uniform ``noise.uniform(seed, i, 0, stream=HOLDOUT)`` and the N smallest are held out
(:func:`~ppl_diffusion.train.validation.holdout_split`). Training sees the others, in their original order; the test split is not touched.

**The estimate.** At every checkpoint (every ``checkpoint_every`` steps and at the end) the **EMA** weights are
scored on the held-out examples by :func:`~ppl_diffusion.infer.estimate.estimate_bound`, the unbiased estimate of
the full bound that ``evaluate --bound estimate`` computes, with a fixed uniform plan (:data:`~ppl_diffusion.train.validation.VALIDATION_PLAN`:
every step t <= 20, two steps drawn in each of 20 equal strata above; 60 denoiser inputs per example at
T = 1000). Its noise and its draws of t are counter-based on (seed, held-out example's training index, t), so
the validation bits/dim is a function of the weights and the seed alone (any process, any resume), and every
checkpoint sees the *same* noise and steps: the comparison between checkpoints is not blurred by Monte-Carlo
noise (common random numbers), only the weights differ.

**The best weights.** The checkpoint with the lowest validation bits/dim so far (the earliest on a tie) is the
best: its raw and EMA weights, step and figure live in every later checkpoint (``state["validation"]``), so a
run killed and resumed keeps the same best, and are written to ``RUN/best.pt`` (:data:`~ppl_diffusion.checkpoint.BEST_NAME`), a checkpoint without optimizer state that ``evaluate``, ``sample`` and every command taking a run
folder load by default (``--last`` for the newest checkpoint instead).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .. import noise as counter_noise
from ..infer.continuous_bound import estimate_continuous_bound, plan_continuous_uniform
from ..infer.estimate import estimate_bound, plan_uniform
from .config import TrainConfig, build_diffusion
from .load import load_weights

__all__ = ["VALIDATION_PLAN", "holdout_split"]

#: The plan of the validation estimate (``plan_uniform``'s counts), fixed so that every checkpoint draws the same t.
VALIDATION_PLAN = dict(full_steps=20, strata=20, draws=2)
# In continuous time (T = 0): the diffusion term from 2 uniform draws of t in each of 20 equal strata of [0, 1]
# (infer/continuous_bound.py), the reconstruction and prior terms as evaluate computes them.
VALIDATION_CONTINUOUS_PLAN = dict(strata=20, draws=2)
WEIGHT_KEYS = ("model", "ema", "prior", "prior_ema", "schedule", "schedule_ema")  # the trainer's state's weights


def holdout_split(num_train: int, val_examples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held_out)``: sorted int64 indices into the training split, ``val_examples`` held out, chosen by
    the counter-based uniform of (seed, i) on stream ``HOLDOUT`` (the smallest ranks); a one-line
    ``ValueError`` unless 0 <= val_examples < num_train.

    :param int num_train: the size of the training split.
    :param int val_examples: the number held out.
    :param int seed: the run's seed.

    Example:

    >>> from ppl_diffusion.train.validation import holdout_split
    >>> kept, held = holdout_split(10, 3, seed=0)
    >>> held, len(kept), sorted([*kept, *held]) == list(range(10))
    (array([2, 6, 7]), 7, True)
    """
    if isinstance(val_examples, bool) or not isinstance(val_examples, int) or not 0 <= val_examples < num_train:
        raise ValueError(f"val_examples = {val_examples!r}, but the training split has {num_train} examples; hold "
                         f"out between 1 and {num_train - 1} of them, or 0 for no validation (--val-examples)")
    rank = counter_noise.uniform(seed, np.arange(num_train), 0, stream=counter_noise.HOLDOUT)
    held = np.sort(np.argsort(rank, kind="stable")[:val_examples]).astype(np.int64)
    kept = np.setdiff1d(np.arange(num_train, dtype=np.int64), held)
    return kept, held


class Validation:
    """The held-out examples of ``config``, the validation model and the best weights so far.

    :param TrainConfig config: ``config.val_examples`` >= 1 examples are held out.
    :param dataset: the whole data set; ``dataset`` is the same with the held-out examples removed from
        its training split (what the trainer sees).
    :param device: where the validation model runs (the training device).
    """

    def __init__(self, config: TrainConfig, dataset, device) -> None:
        kept, held = holdout_split(len(dataset.train), config.val_examples, config.seed)
        labels = dataset.train_labels
        self.dataset = dataclasses.replace(dataset, train=dataset.train[torch.from_numpy(kept)],
                                           train_labels=None if labels is None else labels[torch.from_numpy(kept)])
        self.indices = held  # training-split indices of the held-out examples: their noise coordinates
        self.x = dataset.train[torch.from_numpy(held)].to(device)
        self.seed = config.seed
        with torch.random.fork_rng(devices=[]):  # building a net draws initial weights: leave training's generator
            self.diffusion = build_diffusion(config, dataset).to(device).eval()
        self.plan = (plan_continuous_uniform(**VALIDATION_CONTINUOUS_PLAN) if self.diffusion.continuous
                     else plan_uniform(self.diffusion.T, **VALIDATION_PLAN))
        self.history: list[dict] = []  # [{"step", "val_bpd"}], one per validation
        self.best: dict | None = None  # {"step", "val_bpd", and the WEIGHT_KEYS of the trainer's state at it}

    def estimate(self, state: dict) -> float:
        """The validation bits/dim of the EMA weights in ``state`` (a trainer's ``state``)."""
        load_weights(self.diffusion, state, ema=True)
        if self.diffusion.continuous:
            est = estimate_continuous_bound(self.diffusion, self.x, self.plan, seed=self.seed, indices=self.indices)
        else:
            est = estimate_bound(self.diffusion, self.x, self.plan, seed=self.seed, indices=self.indices)
        return est.bits_per_dim().mean().item()

    def record(self, step: int, val_bpd: float, state: dict) -> bool:
        """Add step ``step``'s figure; keep ``state``'s weights if it is the best so far. Whether it is."""
        self.history.append({"step": int(step), "val_bpd": float(val_bpd)})
        if not math.isfinite(val_bpd) or (self.best is not None and val_bpd >= self.best["val_bpd"]):
            return False
        self.best = {"step": int(step), "val_bpd": float(val_bpd),
                     **{k: _clone(state[k]) for k in WEIGHT_KEYS if state.get(k) is not None}}
        return True

    def state_dict(self) -> dict:
        return {"val_examples": len(self.indices), "history": list(self.history), "best": self.best}

    def load_state_dict(self, state: dict | None) -> None:
        if state is None or int(state["val_examples"]) != len(self.indices):
            raise ValueError(f"the checkpoint holds no validation state for {len(self.indices)} held-out examples; "
                             "resume with the --val-examples it was trained with")
        self.history = [dict(h) for h in state["history"]]
        self.best = state["best"]

    def best_checkpoint(self, *, fmt: str, config: dict, data: dict) -> dict | None:
        """What ``best.pt`` holds: the best step's weights with the run's config and data, loadable by
        :func:`~ppl_diffusion.train.load.load_trained` (no optimizer, no generators); ``None`` before any validation."""
        if self.best is None:
            return None
        return {"format": fmt, "config": config, "data": data, "best": True, "val_examples": len(self.indices),
                **self.best}


def _clone(weights: dict) -> dict:
    return {k: v.detach().clone() for k, v in weights.items()}
