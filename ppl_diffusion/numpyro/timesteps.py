"""Distributions over the step t for the stochastic-timestep ELBO, as pure JAX functions of a state.

The JAX twins of :mod:`ppl_diffusion.infer.timesteps`: ``sample(key, state, n) -> (t, weight)`` draws
``int32[n]`` steps in 1..T with their importance weights 1/P(t), ``update(state, t, losses) -> state``
records per-example step losses L_{t−1}; both are jittable, so a training step draws t, scores it and
updates the importance sampler's history in one compiled function. ``state`` is a dict of arrays.

``to_torch_state`` / ``from_torch_state`` convert a state to and from the PyTorch sampler's
``state_dict()``, so that a checkpoint holds one format whichever backend wrote it.

Example (one compiled function draws the steps and updates the history):

>>> import jax
>>> import jax.numpy as jnp
>>> from ppl_diffusion.numpyro.timesteps import make_timestep_sampler
>>> sampler = make_timestep_sampler("importance", T=10, history=2)
>>> state = sampler.init()
>>> @jax.jit
... def step(state, key):
...     t, weight = sampler.sample(key, state, 4)
...     return sampler.update(state, t, jnp.ones(4)), t, weight
>>> state, t, weight = step(state, jax.random.key(0))
>>> t.shape, t.dtype, weight.tolist()   # uniform until every t has 2 losses: weight T
((4,), dtype('int32'), [10.0, 10.0, 10.0, 10.0])
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch


class UniformTimesteps:
    r"""t ~ Uniform{1..T}; weight T.

    .. math:: P(t) = 1/T, \quad w(t) = 1/P(t) = T

    The twin of :class:`ppl_diffusion.infer.timesteps.UniformTimesteps`; its state is ``{}``.

    :param int T: the number of steps, >= 1.

    Example:

    >>> import jax
    >>> from ppl_diffusion.numpyro.timesteps import UniformTimesteps
    >>> sampler = UniformTimesteps(T=10)
    >>> t, weight = sampler.sample(jax.random.key(0), sampler.init(), 3)
    >>> bool(((t >= 1) & (t <= 10)).all()), weight.tolist()
    (True, [10.0, 10.0, 10.0])
    """

    name = "uniform"

    def __init__(self, T: int) -> None:
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"T = {T!r}; a timestep sampler needs an integer T >= 1")
        self.T = T

    def init(self) -> dict:
        """The initial state, a dict of JAX arrays (empty here)."""
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
        """``state`` as the PyTorch sampler's ``state_dict()`` (what a checkpoint holds)."""
        return {"T": self.T}

    def from_torch_state(self, saved: dict) -> dict:
        """The state of the PyTorch sampler's ``state_dict()`` ``saved``; a ValueError if it is for another T."""
        if int(saved["T"]) != self.T:
            raise ValueError(f"timestep sampler state is for T = {saved['T']}, this model has T = {self.T}")
        return self.init()


class LowDiscrepancyTimesteps(UniformTimesteps):
    r"""One u_0 ~ U[0, 1) per call, u_i = (u_0 + i/n) mod 1, t_i = ⌊T u_i⌋ + 1 (VDM); each t_i uniform, weight T.

    .. math:: u_i = (u_0 + i/n) \bmod 1, \quad t_i = \lfloor T u_i \rfloor + 1, \quad i = 0..n-1

    Each t_i on its own is uniform on 1..T (the estimate stays unbiased) while the n steps of a batch are spread
    evenly over 1..T (Kingma et al. 2021, appendix I.1); the twin of
    :class:`ppl_diffusion.infer.timesteps.LowDiscrepancyTimesteps`.

    :param int T: the number of steps, >= 1.

    Example (one step in each stratum of width T/n):

    >>> import jax
    >>> from ppl_diffusion.numpyro.timesteps import LowDiscrepancyTimesteps
    >>> sampler = LowDiscrepancyTimesteps(T=8)
    >>> t, _ = sampler.sample(jax.random.key(0), sampler.init(), 4)
    >>> sorted(((t - 1) // 2).tolist())
    [0, 1, 2, 3]
    """

    name = "low-discrepancy"

    def sample(self, key, state: dict, n: int):
        u = (jax.random.uniform(key, ()) + jnp.arange(n, dtype=jnp.float32) / n) % 1.0
        idx = jnp.minimum(jnp.floor(u * self.T).astype(jnp.int32), self.T - 1)
        return idx + 1, jnp.full((n,), float(self.T), dtype=jnp.float32)


class ImportanceTimesteps(UniformTimesteps):
    r"""Improved DDPM's importance sampling: P(t) ∝ sqrt(E[L_t²]) over the last ``history`` losses at t,
    mixed with ``uniform_prob`` of uniform; uniform until every t has ``history`` losses.

    .. math:: P(t) = (1 - u)\,\frac{\sqrt{E[L_t^2]}}{\sum_s \sqrt{E[L_s^2]}} + \frac{u}{T}, \quad w(t) = 1/P(t)

    (Nichol & Dhariwal 2021, §3.3). The state holds a ring buffer ``loss_history`` ``float32[T x history]`` with
    ``loss_counts`` and ``write_pos`` ``int32[T]``, in the PyTorch
    :class:`~ppl_diffusion.infer.timesteps.ImportanceTimesteps` format (:meth:`to_torch_state`).

    :param int T: the number of steps, >= 1.
    :param int history: the losses kept per step, >= 1.
    :param float uniform_prob: u, the uniform share, in (0, 1].

    Example (after the history fills, the step with the larger losses is drawn more often):

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.timesteps import ImportanceTimesteps
    >>> sampler = ImportanceTimesteps(T=2, history=1, uniform_prob=0.1)
    >>> state = sampler.update(sampler.init(), jnp.array([1, 2]), jnp.array([1.0, 3.0]))
    >>> [round(float(p), 3) for p in sampler.probabilities(state)]
    [0.275, 0.725]
    """

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
    """Continuous time: t ~ U[0, 1); weight 1 (the twin of :class:`ppl_diffusion.infer.timesteps.UniformTimes`).

    Example:

    >>> import jax
    >>> from ppl_diffusion.numpyro.timesteps import UniformTimes
    >>> t, weight = UniformTimes().sample(jax.random.key(0), {}, 3)
    >>> bool(((t >= 0) & (t < 1)).all()), weight.tolist()
    (True, [1.0, 1.0, 1.0])
    """

    name = "uniform"
    T = 0

    def init(self) -> dict:
        """The initial state (empty)."""
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
    r"""Continuous time, VDM's: t_i = (u_0 + i/n) mod 1, one u_0 per call; weight 1.

    .. math:: t_i = (u_0 + i/n) \bmod 1, \quad u_0 \sim U[0, 1)

    The twin of :class:`ppl_diffusion.infer.timesteps.LowDiscrepancyTimes`.

    Example (one time in each quarter of [0, 1)):

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.timesteps import LowDiscrepancyTimes
    >>> t, _ = LowDiscrepancyTimes().sample(jax.random.key(0), {}, 4)
    >>> sorted(jnp.floor(t * 4).astype(int).tolist())
    [0, 1, 2, 3]
    """

    name = "low-discrepancy"

    def sample(self, key, state: dict, n: int):
        dtype = jnp.result_type(float)
        return (jax.random.uniform(key, (), dtype) + jnp.arange(n, dtype=dtype) / n) % 1.0, jnp.ones((n,), dtype)


class ImportanceTimes(UniformTimes):
    r"""Continuous time: improved DDPM's history on ``bins`` equal bins of [0, 1), t uniform within the drawn bin,
    weight 1/(bins · P(bin)); the state is an :class:`ImportanceTimesteps` state over the bins (the PyTorch
    :class:`~ppl_diffusion.infer.timesteps.ImportanceTimes` format).

    .. math:: p(t) = \mathrm{bins} \cdot P(\lfloor \mathrm{bins}\cdot t \rfloor), \quad w(t) = 1/p(t)

    :param int bins: the number of equal bins of [0, 1), >= 1.
    :param int history: the losses kept per bin.
    :param float uniform_prob: the uniform share, in (0, 1].

    Example:

    >>> import jax
    >>> from ppl_diffusion.numpyro.timesteps import ImportanceTimes
    >>> sampler = ImportanceTimes(bins=4, history=1)
    >>> t, weight = sampler.sample(jax.random.key(0), sampler.init(), 3)
    >>> t.shape, weight.tolist()   # uniform until every bin has a loss
    ((3,), [1.0, 1.0, 1.0])
    """

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


#: The samplers of steps t in 1..T by name.
TIMESTEP_SAMPLERS = {"uniform": UniformTimesteps, "importance": ImportanceTimesteps,
                     "low-discrepancy": LowDiscrepancyTimesteps}
#: The samplers of times t in [0, 1) by name (continuous time, T = 0).
TIME_SAMPLERS = {"uniform": UniformTimes, "importance": ImportanceTimes, "low-discrepancy": LowDiscrepancyTimes}


def make_timestep_sampler(name: str, T: int, **kwargs) -> UniformTimesteps | UniformTimes:
    """A sampler by name: ``"uniform"``, ``"importance"`` or ``"low-discrepancy"``; of times in [0, 1) for T = 0.

    :param str name: a key of :data:`TIMESTEP_SAMPLERS`.
    :param int T: the number of steps, or 0 for continuous time (:data:`TIME_SAMPLERS`).
    :param kwargs: the sampler's keywords (``history``, ``uniform_prob``; ``bins`` in continuous time).
    :raises ValueError: for an unknown name, listing the known ones.

    Example:

    >>> from ppl_diffusion.numpyro.timesteps import make_timestep_sampler
    >>> type(make_timestep_sampler("low-discrepancy", 10)).__name__, type(make_timestep_sampler("uniform", 0)).__name__
    ('LowDiscrepancyTimesteps', 'UniformTimes')
    """
    if name not in TIMESTEP_SAMPLERS:
        raise ValueError(f"unknown timestep sampler {name!r}; choose one of {sorted(TIMESTEP_SAMPLERS)}")
    if T == 0 and not isinstance(T, bool):
        return TIME_SAMPLERS[name](**kwargs)
    return TIMESTEP_SAMPLERS[name](T, **kwargs)


__all__ = ["ImportanceTimes", "ImportanceTimesteps", "LowDiscrepancyTimes", "LowDiscrepancyTimesteps",
           "TIMESTEP_SAMPLERS", "TIME_SAMPLERS", "UniformTimes", "UniformTimesteps", "make_timestep_sampler"]
