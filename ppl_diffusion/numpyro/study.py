"""The study's estimators on the NumPyro backend (``ppl-diffusion compare --backend numpyro``).

:class:`NumPyroStudyEstimator` has the interface of :class:`ppl_diffusion.study.estimators.StudyEstimator`
(``estimate``, ``gradient``, ``warm_up``), with every call one jit-compiled function of (θ, key, x_0):

- ``stochastic-*``: :func:`~ppl_diffusion.numpyro.infer.stochastic_elbo_terms` with t uniform,
  low-discrepancy or importance-sampled (:mod:`~ppl_diffusion.numpyro.timesteps`; the history is
  filled at θ, then frozen, as on the Pyro backend);
- ``trace``, ``meanfield``: :class:`~ppl_diffusion.numpyro.infer.ChainELBO` (the full chain, ``lax.scan``);
- ``iwae``: log (1/K) Σ_k w_k per example from K forward trajectories of the compiled chain (the bound of
  Pyro's ``RenyiELBO(alpha=0)``), ``vmap`` over the K noise draws.

Gradients are returned flattened in the PyTorch denoiser's ``state_dict`` order and layout (for a denoiser
with a PyTorch twin), so that the two backends' figures are of the same vector.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import torch

from . import convert
from .chain import full_chain_elbo
from .infer import ChainELBO, stochastic_elbo_terms
from .sampling import params_of
from .timesteps import make_timestep_sampler

PARAMS = "denoiser$params"
SAMPLERS = {"": "uniform", "-is": "importance", "-ld": "low-discrepancy"}


class NumPyroStudyEstimator:
    """One estimator bound to a NumPyro diffusion at fixed θ; see the module docstring. Built by
    :func:`ppl_diffusion.study.estimators.make_study_estimator`, which checks ``name`` and hands over the study's
    catalogue entries: ``full_chain`` (``trace``, ``meanfield``) and the one-line ``description``.

    :param str name: the estimator (a name of ``ppl_diffusion.study.estimators.STUDY_ESTIMATORS``, but the
        continuous-time ones).
    :param diffusion: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion` with a NoiseSchedule.
    :param bool full_chain: whether it scores the full chain.
    :param str description: the catalogue's line.
    :param int iwae_particles: K of ``iwae``, >= 2.

    Example:

    >>> import jax
    >>> import numpy as np
    >>> from ppl_diffusion import NoiseSchedule
    >>> from ppl_diffusion.numpyro import GaussianDiffusion, MLPDenoiser
    >>> from ppl_diffusion.study.estimators import make_study_estimator
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,),
    ...                               denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> estimator = make_study_estimator("stochastic-kl", diffusion)
    >>> n = sum(leaf.size for leaf in jax.tree.leaves(estimator.params))
    >>> type(estimator).__name__, estimator.family, estimator.num_params == n
    ('NumPyroStudyEstimator', 'stochastic t', True)
    >>> value = estimator.estimate(np.zeros((3, 2), np.float32))   # the ELBO's estimate, nats summed over the batch
    >>> isinstance(value, float), value < 0
    (True, True)
    """

    def __init__(self, name: str, diffusion, *, full_chain: bool, description: str, iwae_particles: int = 8) -> None:
        self.name, self.diffusion = name, diffusion
        self.full_chain, self._description = full_chain, description
        self.params = params_of(diffusion)
        self.num_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(self.params))
        self.key = jax.random.PRNGKey(0)
        self.sampler, self.sampler_state = None, None
        self._frozen = None
        self.bound = "ELBO"
        self.iwae_particles = iwae_particles
        if name == "iwae":
            if isinstance(iwae_particles, bool) or not isinstance(iwae_particles, int) or iwae_particles < 2:
                raise ValueError(f"iwae_particles = {iwae_particles!r}; the IWAE bound needs K >= 2 trajectories "
                                 "(--iwae-particles)")
            self.bound = f"IWAE-{iwae_particles}"
        elif not full_chain:
            suffix = name[len("stochastic-kl"):]
            self.sampler = make_timestep_sampler(SAMPLERS[suffix], diffusion.T)
            self.sampler_state = self.sampler.init()
        loss = self._loss_fn()
        self._loss = jax.jit(loss)
        self._value_and_grad = jax.jit(jax.value_and_grad(loss))

    @property
    def family(self) -> str:
        """``"full chain"``, ``"IWAE"`` or ``"stochastic t"``."""
        return "full chain" if self.full_chain else ("IWAE" if self.name == "iwae" else "stochastic t")

    @property
    def description(self) -> str:
        """The catalogue's line, with K for IWAE and the backend."""
        return self._description + (f", K = {self.iwae_particles}" if self.name == "iwae" else "") \
            + " (NumPyro, jit)"

    def _loss_fn(self):
        """loss(params, key, x0, sampler_state) → −estimate, summed over the batch."""
        d, name = self.diffusion, self.name
        if self.full_chain:
            elbo = ChainELBO(analytic=name == "meanfield")
            return lambda p, key, x0, _: elbo.loss(key, {PARAMS: p}, d.model, d.guide, x0)
        if name == "iwae":
            K = self.iwae_particles

            def iwae(p, key, x0, _):
                noise = jax.random.normal(key, (K, d.T) + x0.shape, x0.dtype)
                log_w = jax.vmap(lambda n: full_chain_elbo(d, p, x0, n))(noise)  # [K x B]
                return -jnp.sum(jax.nn.logsumexp(log_w, axis=0) - math.log(K))

            return iwae
        step_term = "kl" if name.startswith("stochastic-kl") else "mc"
        sampler = self.sampler

        def stochastic(p, key, x0, sampler_state):
            k_t, k_elbo = jax.random.split(key)
            t, w = sampler.sample(k_t, sampler_state, x0.shape[0])
            elbo, _, _ = stochastic_elbo_terms(d, k_elbo, x0, step_term=step_term, params={PARAMS: p}, t=t, weight=w)
            return -jnp.sum(elbo)

        return stochastic

    def reseed(self, seed: int) -> None:
        """Restart the estimator's JAX key from ``seed``."""
        self.key = jax.random.PRNGKey(seed)

    def _next_key(self):
        self.key, sub = jax.random.split(self.key)
        return sub

    @staticmethod
    def _x(x0):
        return jnp.asarray(x0.cpu().numpy() if torch.is_tensor(x0) else np.asarray(x0), jnp.float32)

    def estimate(self, x0) -> float:
        """One estimate of the bound (ELBO or IWAE) at θ, summed over the batch ``x0`` ``[B x ...]``, nats."""
        return -float(self._loss(self.params, self._next_key(), self._x(x0), self.sampler_state))

    def gradient(self, x0) -> tuple[float, torch.Tensor]:
        """(the estimate, its gradient in θ flattened ``float64[num_params]``, in the PyTorch twin's order)."""
        value, grads = self._value_and_grad(self.params, self._next_key(), self._x(x0), self.sampler_state)
        try:  # the PyTorch twin's layout and order
            leaves = list(convert.torch_state_from_params(self.diffusion.denoiser, grads).values())
        except TypeError:  # a denoiser without a PyTorch twin: JAX's leaf order
            leaves = [torch.from_numpy(np.array(v)) for v in jax.tree.leaves(grads)]
        return -float(value), torch.cat([v.reshape(-1) for v in leaves]).double()

    def warm_up(self, x0, max_calls: int = 100_000) -> int:
        """Importance-sampled t: fill the loss history with untimed draws at this θ, then freeze it."""
        if not self.name.endswith("-is"):
            return 0
        d, x = self.diffusion, self._x(x0)
        step_term = "kl" if self.name.startswith("stochastic-kl") else "mc"
        uniform = make_timestep_sampler("uniform", d.T)

        @jax.jit
        def fill(state, key):
            k_t, k_elbo = jax.random.split(key)
            t, w = uniform.sample(k_t, {}, x.shape[0])
            _, _, step = stochastic_elbo_terms(d, k_elbo, x, step_term=step_term, params={PARAMS: self.params},
                                               t=t, weight=w)
            return self.sampler.update(state, t, -step)

        calls = 0
        while not bool(jnp.all(self.sampler_state["loss_counts"] == self.sampler.history)):
            self.sampler_state = fill(self.sampler_state, self._next_key())
            calls += 1
            if calls >= max_calls:
                raise RuntimeError(f"{self.name}: importance sampler not warmed up after {calls} calls")
        self._frozen = self.sampler_state
        return calls

    def sampler_probabilities(self) -> np.ndarray | None:
        """P(t) of a frozen importance sampler (None for the others)."""
        if self._frozen is None:
            return None
        return np.asarray(self.sampler.probabilities(self._frozen), np.float64)


__all__ = ["NumPyroStudyEstimator"]
