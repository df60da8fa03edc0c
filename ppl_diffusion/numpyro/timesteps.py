"""Distributions over the step t for the stochastic-timestep ELBO, as pure JAX functions of a state.

The JAX twins of :mod:`ppl_diffusion.infer.timesteps`: ``sample(key, state, n) -> (t, weight)`` draws
``int32[n]`` steps in 1..T with their importance weights 1/P(t), ``update(state, t, losses) -> state``
records per-example step losses L_{t−1}; both are jittable, so a training step draws t, scores it and
updates the importance sampler's history in one compiled function. ``state`` is a dict of arrays.

``to_torch_state`` / ``from_torch_state`` convert a state to and from the PyTorch sampler's
``state_dict()``, so that a checkpoint holds one format whichever backend wrote it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch


class UniformTimesteps:
    """t ~ Uniform{1..T}; weight T."""

    name = "uniform"

    def __init__(self, T: int) -> None:
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"T = {T!r}; a timestep sampler needs an integer T >= 1")
        self.T = T

    def init(self) -> dict:
        return {}

    def probabilities(self, state: dict):
        """P(t) for t = 1..T, ``float32[T]``."""
        return jnp.full((self.T,), 1.0 / self.T, dtype=jnp.float32)

    def sample(self, key, state: dict, n: int):
        """``n`` steps ``int32[n]`` and their weights 1/P(t) ``float32[n]``."""
        t = jax.random.randint(key, (n,), 1, self.T + 1, dtype=jnp.int32)
        return t, jnp.full((n,), float(self.T), dtype=jnp.float32)

    def update(self, state: dict, t, losses) -> dict:
        """Record per-example step losses (used by importance sampling; the identity here)."""
        return state

    def to_torch_state(self, state: dict) -> dict:
        return {"T": self.T}

    def from_torch_state(self, saved: dict) -> dict:
        if int(saved["T"]) != self.T:
            raise ValueError(f"timestep sampler state is for T = {saved['T']}, this model has T = {self.T}")
        return self.init()


class LowDiscrepancyTimesteps(UniformTimesteps):
    """One u_0 ~ U[0, 1) per call, u_i = (u_0 + i/n) mod 1, t_i = ⌊T u_i⌋ + 1 (VDM); each t_i uniform, weight T."""

    name = "low-discrepancy"

    def sample(self, key, state: dict, n: int):
        u = (jax.random.uniform(key, ()) + jnp.arange(n, dtype=jnp.float32) / n) % 1.0
        idx = jnp.minimum(jnp.floor(u * self.T).astype(jnp.int32), self.T - 1)
        return idx + 1, jnp.full((n,), float(self.T), dtype=jnp.float32)


class ImportanceTimesteps(UniformTimesteps):
    """Improved DDPM's importance sampling: P(t) ∝ sqrt(E[L_t²]) over the last ``history`` losses at t,
    mixed with ``uniform_prob`` of uniform; uniform until every t has ``history`` losses."""

    name = "importance"

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 1e-3) -> None:
        super().__init__(T)
        if history < 1 or not 0.0 < uniform_prob <= 1.0:
            raise ValueError(f"history = {history!r} must be >= 1 and uniform_prob = {uniform_prob!r} in (0, 1]")
        self.history = int(history)
        self.uniform_prob = float(uniform_prob)

    def init(self) -> dict:
        return {"loss_history": jnp.zeros((self.T, self.history), jnp.float32),
                "loss_counts": jnp.zeros((self.T,), jnp.int32), "write_pos": jnp.zeros((self.T,), jnp.int32)}

    def probabilities(self, state: dict):
        w = jnp.sqrt(jnp.mean(state["loss_history"] ** 2, axis=-1))
        p = w / jnp.sum(w) * (1.0 - self.uniform_prob) + self.uniform_prob / self.T
        warmed_up = jnp.all(state["loss_counts"] == self.history)
        return jnp.where(warmed_up, p, 1.0 / self.T)

    def sample(self, key, state: dict, n: int):
        p = self.probabilities(state)
        idx = jax.random.choice(key, self.T, (n,), replace=True, p=p)
        return (idx + 1).astype(jnp.int32), (1.0 / p[idx]).astype(jnp.float32)

    def update(self, state: dict, t, losses) -> dict:
        """Append each example's loss to the ring buffer of its t, in batch order (as the PyTorch sampler)."""
        i = jnp.asarray(t, jnp.int32) - 1
        losses = jax.lax.stop_gradient(jnp.asarray(losses, jnp.float32))
        order = jnp.argsort(i, stable=True)
        i, losses = i[order], losses[order]
        n_per_t = jnp.bincount(i, length=self.T)
        first = jnp.cumsum(n_per_t) - n_per_t
        rank = jnp.arange(i.shape[0]) - first[i]
        keep = rank >= n_per_t[i] - self.history  # only the newest `history` entries of a t survive
        slot = (state["write_pos"][i] + rank) % self.history
        row = jnp.where(keep, i, self.T)  # out of range: dropped
        history = state["loss_history"].at[row, slot].set(losses, mode="drop")
        return {"loss_history": history, "loss_counts": jnp.minimum(state["loss_counts"] + n_per_t, self.history),
                "write_pos": (state["write_pos"] + n_per_t) % self.history}

    def to_torch_state(self, state: dict) -> dict:
        return {"T": self.T, "loss_history": torch.from_numpy(np.asarray(state["loss_history"], np.float64)),
                "loss_counts": torch.from_numpy(np.asarray(state["loss_counts"], np.int64)),
                "write_pos": torch.from_numpy(np.asarray(state["write_pos"], np.int64))}

    def from_torch_state(self, saved: dict) -> dict:
        super().from_torch_state(saved)
        history = np.asarray(saved["loss_history"].double().numpy())
        if history.shape != (self.T, self.history):
            raise ValueError(f"importance sampler state has a history of shape {history.shape}, this sampler "
                             f"keeps {(self.T, self.history)}")
        return {"loss_history": jnp.asarray(history, jnp.float32),
                "loss_counts": jnp.asarray(saved["loss_counts"].numpy(), jnp.int32),
                "write_pos": jnp.asarray(saved["write_pos"].numpy(), jnp.int32)}


class UniformTimes:
    """Continuous time: t ~ U[0, 1); weight 1 (the twin of :class:`ppl_diffusion.infer.timesteps.UniformTimes`)."""

    name = "uniform"
    T = 0

    def init(self) -> dict:
        return {}

    def sample(self, key, state: dict, n: int):
        """``n`` times (float64 under x64, else float32) and their weights 1/p(t)."""
        dtype = jnp.result_type(float)
        return jax.random.uniform(key, (n,), dtype), jnp.ones((n,), dtype)

    def update(self, state: dict, t, losses) -> dict:
        return state

    def to_torch_state(self, state: dict) -> dict:
        return {"T": 0}

    def from_torch_state(self, saved: dict) -> dict:
        if int(saved["T"]) != 0:
            raise ValueError(f"timestep sampler state is for T = {saved['T']} steps; this model is in continuous "
                             "time (T = 0)")
        return self.init()


class LowDiscrepancyTimes(UniformTimes):
    """Continuous time, VDM's: t_i = (u_0 + i/n) mod 1, one u_0 per call; weight 1."""

    name = "low-discrepancy"

    def sample(self, key, state: dict, n: int):
        dtype = jnp.result_type(float)
        return (jax.random.uniform(key, (), dtype) + jnp.arange(n, dtype=dtype) / n) % 1.0, jnp.ones((n,), dtype)


class ImportanceTimes(UniformTimes):
    """Continuous time: improved DDPM's history on ``bins`` equal bins of [0, 1), t uniform within the drawn bin,
    weight 1/(bins · P(bin)); the state is an :class:`ImportanceTimesteps` state over the bins (the PyTorch
    :class:`~ppl_diffusion.infer.timesteps.ImportanceTimes` format)."""

    name = "importance"

    def __init__(self, bins: int = 100, history: int = 10, uniform_prob: float = 1e-3) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins = {bins!r}; the continuous importance sampler needs an integer number of bins >= 1")
        self.bins = bins
        self.by_bin = ImportanceTimesteps(bins, history=history, uniform_prob=uniform_prob)

    def init(self) -> dict:
        return self.by_bin.init()

    def density(self, state: dict, t):
        k = jnp.clip(jnp.floor(t * self.bins).astype(jnp.int32), 0, self.bins - 1)
        return self.by_bin.probabilities(state)[k] * self.bins

    def sample(self, key, state: dict, n: int):
        k_bin, k_u = jax.random.split(key)
        dtype = jnp.result_type(float)
        k, weight = self.by_bin.sample(k_bin, state, n)
        t = (k.astype(dtype) - 1.0 + jax.random.uniform(k_u, (n,), dtype)) / self.bins
        return t, weight.astype(dtype) / self.bins

    def update(self, state: dict, t, losses) -> dict:
        k = jnp.clip(jnp.floor(t * self.bins).astype(jnp.int32), 0, self.bins - 1) + 1
        return self.by_bin.update(state, k, losses)

    def to_torch_state(self, state: dict) -> dict:
        return {**self.by_bin.to_torch_state(state), "T": 0, "bins": self.bins}

    def from_torch_state(self, saved: dict) -> dict:
        super().from_torch_state(saved)
        if int(saved["bins"]) != self.bins:
            raise ValueError(f"importance sampler state has {saved['bins']} bins, this sampler {self.bins}")
        return self.by_bin.from_torch_state({**saved, "T": self.bins})


TIMESTEP_SAMPLERS = {"uniform": UniformTimesteps, "importance": ImportanceTimesteps,
                     "low-discrepancy": LowDiscrepancyTimesteps}
TIME_SAMPLERS = {"uniform": UniformTimes, "importance": ImportanceTimes, "low-discrepancy": LowDiscrepancyTimes}


def make_timestep_sampler(name: str, T: int, **kwargs) -> UniformTimesteps | UniformTimes:
    """A sampler by name: ``"uniform"``, ``"importance"`` or ``"low-discrepancy"``; of times in [0, 1) for T = 0."""
    if name not in TIMESTEP_SAMPLERS:
        raise ValueError(f"unknown timestep sampler {name!r}; choose one of {sorted(TIMESTEP_SAMPLERS)}")
    if T == 0 and not isinstance(T, bool):
        return TIME_SAMPLERS[name](**kwargs)
    return TIMESTEP_SAMPLERS[name](T, **kwargs)
