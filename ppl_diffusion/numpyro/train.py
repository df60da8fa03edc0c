"""Training on the NumPyro backend: ``numpyro.infer.SVI`` with optax, the whole update step jit-compiled.

:class:`NumPyroTrainer` is the backend half of :func:`ppl_diffusion.train.loop.train` (``--backend numpyro``);
the loop, run folder, metrics, budget and checkpoints are shared with the Pyro backend. What it does
per step, in one ``jax.jit``-compiled function: draw the steps t (uniform, low-discrepancy, or improved
DDPM's importance sampling with its loss history as a JAX state), ``svi.update`` (the ELBO's gradient,
gradient-norm clipping as ``torch.nn.utils.clip_grad_norm_`` does it, Adam with the linear warm-up),
update the importance sampler's history and the EMA of the weights.

Checkpoints are in the Pyro backend's format, so a run trained on one backend is evaluated, sampled
and resumed on the other: the weights and their EMA as the PyTorch denoiser's ``state_dict``, Adam's
moments as ``torch.optim.Adam``'s ``state_dict`` (optax's ``adam`` is the same update, moment for
moment), the importance sampler's history in the PyTorch sampler's format, and the JAX keys beside
the other generators. The initial weights are the PyTorch backend's for the same seed, converted.

``--microbatch M`` scores the global batch in chunks of M rows of each process's part inside the jitted step
(``lax.scan``), summing their gradients (weighted by size) before the one optimizer update: every draw along the
batch is made for the global batch and sliced (:func:`ppl_diffusion.numpyro.distributed.micro_batch`), the
importance sampler's history and the EMA are updated once, so the step is the unsplit one to float rounding.

The step runs data-parallel over every JAX device (:mod:`~ppl_diffusion.numpyro.distributed`): the global batch
(``batch_size``, which must divide evenly) is sharded along the mesh axis ``"data"``, everything else is
replicated; the constructor says on stderr how many devices the batch is sharded over. 1 and N devices give
the same weights to float32 rounding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pyro
import torch
from numpyro.infer import SVI
from numpyro.infer.svi import SVIState
from numpyro.optim import optax_to_numpyro

from ..distributed import check_microbatch
from ..precision import jax_dtype
from . import convert
from . import distributed as dp
from .diffusion import GaussianDiffusion
from .infer import STEP_LOSSES, ChainELBO, ContinuousTimeELBO, StochasticTimestepELBO
from .timesteps import make_timestep_sampler

PARAMS = "denoiser$params"  # where numpyro.contrib.module.nnx_module keeps the denoiser's weights
SCHEDULE = "schedule$params"  # where a learned γ schedule's parameters are (ppl_diffusion.numpyro.gamma.param_module)
SAMPLERS = {"": "uniform", "-is": "importance", "-ld": "low-discrepancy"}


def from_torch(torch_diffusion, *, precision: str | None = None) -> GaussianDiffusion:
    """The NumPyro twin of a PyTorch :class:`~ppl_diffusion.diffusion.GaussianDiffusion`: same schedule, decoder,
    variance and event shape, and a Flax denoiser holding the PyTorch denoiser's weights, computing at
    ``precision`` (default the PyTorch model's: ``"bf16"`` is a bfloat16 compute dtype, float32 weights).

    :param torch_diffusion: a :class:`ppl_diffusion.diffusion.GaussianDiffusion` (a NoiseSchedule or a γ schedule; not a
        fitted variance).
    :param str precision: ``"fp32"`` or ``"bf16"`` (default the model's).
    :returns: a :class:`~ppl_diffusion.numpyro.diffusion.GaussianDiffusion`.

    Example (the twin's bound is the PyTorch model's: see :func:`ppl_diffusion.numpyro.chain.variational_bound`):

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, NoiseSchedule
    >>> from ppl_diffusion.nets import MLPDenoiser
    >>> from ppl_diffusion.numpyro.train import from_torch
    >>> _ = torch.manual_seed(0)
    >>> torch_diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=4), event_shape=(2,), decoder="gaussian",
    ...                                     denoiser=MLPDenoiser(2, width=16, depth=1, emb_dim=8))
    >>> diffusion = from_torch(torch_diffusion)
    >>> diffusion.backend, diffusion.T, type(diffusion.denoiser).__module__
    ('numpyro', 4, 'ppl_diffusion.numpyro.nets')
    """
    dp.initialize()  # a multi-host job is joined before the first JAX computation (the twin's weights)
    variance = torch_diffusion.variance
    if not isinstance(variance, str):
        raise ValueError("the NumPyro backend has the variances 'beta' and 'posterior'; a fitted variance "
                         "(--fit-variance) runs on --backend pyro")
    dtype = jax_dtype(getattr(torch_diffusion, "precision", "fp32") if precision is None else precision)
    net = convert.flax_twin(torch_diffusion.denoiser.cpu(), kwargs=None if dtype is None else {"dtype": dtype})
    schedule, process = torch_diffusion.schedule, {}
    if torch_diffusion.gamma_schedule:  # the γ schedule's Flax twin with its weights, and the same time input
        schedule = convert.gamma_twin(schedule.cpu())
        process = dict(T=torch_diffusion.T, time_input=torch_diffusion.time_input,
                       gamma_range=torch_diffusion.gamma_range)
    return GaussianDiffusion(schedule=schedule, denoiser=net, event_shape=torch_diffusion.event_shape,
                             decoder=torch_diffusion.decoder, variance=variance,
                             checkpoint_activations=getattr(torch_diffusion, "checkpoint_activations", "none"),
                             **process)


def params_of(diffusion) -> dict:
    """The denoiser's weights as the pure dict NumPyro keeps under ``"denoiser$params"``
    (:func:`ppl_diffusion.numpyro.sampling.params_of`)."""
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(diffusion.denoiser, nnx.Param))


class ClipState(NamedTuple):
    norm: jax.Array  # the global gradient norm before clipping, for the metrics


def clip_by_global_norm(max_norm: float | None) -> optax.GradientTransformation:
    r"""``torch.nn.utils.clip_grad_norm_`` as an optax transformation: g · min(1, max_norm / (‖g‖ + 1e-6));
    the norm is kept in the state. ``max_norm=None`` only records it.

    .. math:: g \leftarrow g \cdot \min\Big(1, \frac{\mathrm{max\_norm}}{\lVert g \rVert + 10^{-6}}\Big)

    :param max_norm: the largest global norm, or None.

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.train import clip_by_global_norm
    >>> clip = clip_by_global_norm(1.0)
    >>> g = {"w": jnp.array([3.0, 4.0])}
    >>> updates, state = clip.update(g, clip.init(g))
    >>> [round(float(v), 4) for v in updates["w"]], float(state.norm)
    ([0.6, 0.8], 5.0)
    """

    def init(params):
        return ClipState(jnp.zeros((), jnp.float32))

    def update(updates, state, params=None):
        norm = optax.tree.norm(updates)
        if max_norm is None:
            return updates, ClipState(norm)
        coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
        return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), ClipState(norm)

    return optax.GradientTransformation(init, update)


def estimator_loss(name: str, schedule_objective: str = "elbo"):
    """(NumPyro ELBO, timestep sampler name or None) of an estimator name of ``ppl_diffusion.infer.ESTIMATORS``
    (the continuous-time ones with ``schedule_objective``).

    :param str name: the estimator's name (``trace``, ``meanfield``, ``stochastic-kl``, ``stochastic-mc-is``,
        ``continuous-ld``, ...).
    :param str schedule_objective: ``"elbo"`` or ``"variance"`` (continuous time).
    :raises ValueError: for a name the NumPyro backend does not have.

    Example:

    >>> from ppl_diffusion.numpyro.train import estimator_loss
    >>> loss, sampler = estimator_loss("stochastic-kl-is")
    >>> type(loss).__name__, loss.reduction, sampler
    ('StochasticTimestepELBO', 'mean', 'importance')
    """
    if name in ("trace", "meanfield"):
        return ChainELBO(analytic=name == "meanfield", reduction="mean"), None
    for suffix, sampler in SAMPLERS.items():
        for term in ("kl", "mc"):
            if name == f"stochastic-{term}{suffix}":
                return StochasticTimestepELBO(step_term=term, reduction="mean"), sampler
        if name == f"continuous{suffix}":  # times drawn by the trainer's sampler and passed in
            return ContinuousTimeELBO(schedule_objective=schedule_objective, reduction="mean"), sampler
    raise ValueError(f"unknown estimator {name!r} for the NumPyro backend")


def _key_data(key) -> torch.Tensor:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return torch.from_numpy(np.asarray(key).astype(np.int64))


class NumPyroTrainer:
    """One training step at a time on the NumPyro backend; see the module docstring.

    The twin of :class:`ppl_diffusion.train.pyro_trainer.PyroTrainer`, built by ``ppl_diffusion.train.make_trainer`` for
    ``backend="numpyro"`` and driven by :func:`ppl_diffusion.train.loop.train` (the loop, run folder, metrics and
    checkpoints are shared). The constructor builds the PyTorch model of ``config`` (its initial weights for the
    seed), converts it (:func:`from_torch`) and compiles the step once, outside the training clock: tens of seconds
    even for the tiny model below, so the example's lines that build and step a trainer are skipped
    (``+SKIP``); ``tests/test_numpyro_train.py`` runs them.

    :param config: the run's :class:`ppl_diffusion.train.config.TrainConfig`.
    :param dataset: the data set (its ``train`` tensor ``[N x ...]``).
    :param build_torch: ``build_torch(config, dataset)`` → the PyTorch
        :class:`ppl_diffusion.diffusion.GaussianDiffusion`.

    Example (one optimizer step of a width-16 MLP; the trainer's lines compile for tens of seconds, skipped):

    >>> import torch
    >>> from ppl_diffusion.data import gaussian
    >>> from ppl_diffusion.numpyro.train import NumPyroTrainer
    >>> from ppl_diffusion.train import TrainConfig, build_diffusion
    >>> config = TrainConfig(data="gaussian", net="mlp", net_config={"width": 16, "depth": 1}, T=10, batch_size=4,
    ...                      steps=1, warmup_steps=0, ema_decay=0.0, backend="numpyro")
    >>> trainer = NumPyroTrainer(config, gaussian(n_train=8, n_test=2), build_diffusion)  # doctest: +SKIP
    >>> loss, grad_norm = trainer.step(torch.arange(4), 1e-3)  # doctest: +SKIP
    >>> type(trainer.trained_diffusion(ema=True)).__module__  # doctest: +SKIP
    'ppl_diffusion.numpyro.diffusion'
    """

    def __init__(self, config, dataset, build_torch) -> None:
        if jax.config.jax_enable_x64:
            raise ValueError("train with jax_enable_x64 off: the NumPyro backend trains in float32, as the Pyro one")
        dp.check_global_batch(config.batch_size)
        pyro.set_rng_seed(config.seed)  # the PyTorch backend's initial weights for this seed
        torch_diffusion = build_torch(config, dataset)
        self.torch_net = torch_diffusion.denoiser  # the template of the checkpoint's state_dict
        # A learned γ schedule's parameters train too (under SCHEDULE); their checkpoint names are the PyTorch ones.
        learned = torch_diffusion.gamma_schedule and torch_diffusion.schedule.learnable
        self.schedule_names = [n for n, _ in torch_diffusion.schedule.named_parameters()] if learned else []
        self.diffusion = from_torch(torch_diffusion)
        self.diffusion.denoiser.train()
        self.config = config
        self.train_x = dataset.train.numpy().astype(np.float32)
        self.batch_size = config.batch_size
        processes = jax.process_count()
        size = check_microbatch(config.microbatch, config.batch_size // processes, processes)
        self.chunks = (None if size == config.batch_size // processes else
                       dp.micro_batch_rows(config.batch_size, size, processes))  # [chunks x rows], global rows
        # What trains a learned schedule's interior in continuous time (the config's, its default resolved by the
        # config itself: this module imports nothing of ppl_diffusion.train, which imports it).
        loss, sampler_name = estimator_loss(config.estimator, config.resolved().schedule_objective or "elbo")
        self.continuous = config.T == 0 and isinstance(loss, ContinuousTimeELBO)
        self.sampler = None if sampler_name is None else make_timestep_sampler(sampler_name, config.T)
        warmup, lr = config.warmup_steps, config.lr
        schedule = (lambda count: lr * jnp.minimum(1.0, (count + 1) / warmup)) if warmup > 0 else lr
        tx = optax.chain(clip_by_global_norm(config.grad_clip), optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8))
        d = self.diffusion
        model, guide = (d.continuous_model, d.continuous_guide) if self.continuous else (d.step_model, d.step_guide)
        self.svi = SVI(model, guide, optax_to_numpyro(tx), loss=loss)
        key = jax.random.PRNGKey(config.seed)
        self.key, k_init = jax.random.split(key)
        b = self.batch_size
        x_init = self.train_x[:1].repeat(b, 0)
        t_init = jnp.full((b,), 0.5, jnp.float32) if self.continuous else jnp.ones((b,), jnp.int32)
        state = self.svi.init(k_init, jnp.asarray(x_init), t_init, jnp.ones((b,), jnp.float32))
        mutable = dict(state.mutable_state or {})
        mutable[STEP_LOSSES] = jnp.zeros((b,), jnp.float32)
        self.svi_state = state._replace(mutable_state=mutable)
        self.trained = [PARAMS] + ([SCHEDULE] if self.schedule_names else [])  # the param sites trained, EMA'd
        self.ema = {k: jax.tree.map(jnp.array, self.svi.get_params(self.svi_state)[k]) for k in self.trained}
        self.sampler_state = None if self.sampler is None else self.sampler.init()
        self._replicate()
        rep = dp.replicated()  # the batch x_0 sharded, everything else (and every output) replicated
        self._step = jax.jit(self._make_step(), in_shardings=(rep, rep, rep, rep, dp.batch_sharding()),
                             out_shardings=rep)
        # Compile now, outside the training clock (startup, like imports): one call as step() makes it (the key split
        # on the replicated key included), its result discarded.
        _, sub = jax.random.split(self.key)
        jax.block_until_ready(self._step(self.svi_state, self.ema, self.sampler_state, sub,
                                         dp.global_batch(x_init, sharding=dp.batch_sharding())))
        dp.log(self.describe())

    def describe(self) -> str:
        """One line: how many JAX devices the global batch is sharded over."""
        return dp.describe(self.batch_size)

    def _replicate(self) -> None:
        """The state on every device (after it is created or restored on the default one)."""
        self.key, self.svi_state, self.ema, self.sampler_state = dp.replicate(
            (self.key, self.svi_state, self.ema, self.sampler_state))

    def _make_step(self):
        svi, sampler, b, decay = self.svi, self.sampler, self.batch_size, self.config.ema_decay
        update = svi.update if self.chunks is None else self._micro_update

        def step(svi_state, ema, sampler_state, key, x0):
            if sampler is None:
                t, w = jnp.ones((b,), jnp.int32), jnp.ones((b,), jnp.float32)
            else:
                t, w = sampler.sample(key, sampler_state, b)
            svi_state, loss = update(svi_state, x0, t, w)
            if sampler is not None:
                sampler_state = sampler.update(sampler_state, t, svi_state.mutable_state[STEP_LOSSES])
            params = svi.get_params(svi_state)
            ema = {k: jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema[k], params[k]) for k in ema}
            norm = svi_state.optim_state[1][1][0].norm  # chain(clip, adam): the ClipState
            return svi_state, ema, sampler_state, loss, norm

        return step

    def _micro_update(self, svi_state, x0, t, w):
        """``svi.update(svi_state, x0, t, w)`` with the batch scored in the chunks of :attr:`chunks` (``lax.scan``):
        each chunk's loss and gradient under :func:`~.distributed.micro_batch` (the global batch's draws, its rows),
        summed with weights size/B (the loss is the batch mean), then one optimizer update. The key, the mutable
        state (dropout's counts: the same after every chunk) and the step losses (placed at their rows) are the
        unsplit update's."""
        svi, b = self.svi, self.batch_size
        chunks = jnp.asarray(self.chunks)
        rng_key, rng_key_step = jax.random.split(svi_state.rng_key)
        params = svi.optim.get_params(svi_state.optim_state)
        frozen = jax.lax.stop_gradient(svi_state.mutable_state)

        def chunk_loss(p, rows):  # SVI's loss function (numpyro.infer.svi._make_loss_fn) on the chunk's rows
            p = {**svi.constrain_fn(p), **frozen}
            with dp.micro_batch(rows, b):
                out = svi.loss.loss_with_mutable_state(rng_key_step, p, svi.model, svi.guide, x0[rows], t[rows],
                                                       w[rows])
            return out["loss"], out["mutable_state"]

        def body(carry, rows):
            total, grads = carry
            (loss, mutable), g = jax.value_and_grad(chunk_loss, has_aux=True)(params, rows)
            frac = rows.shape[0] / b
            return (total + frac * loss, jax.tree.map(lambda a, gi: a + frac * gi, grads, g)), mutable

        zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        (loss, grads), mutables = jax.lax.scan(body, zero, chunks)
        mutable = {k: jax.tree.map(lambda v: v[-1], v) for k, v in mutables.items() if k != STEP_LOSSES}
        if STEP_LOSSES in mutables:
            mutable[STEP_LOSSES] = jnp.zeros((b,), mutables[STEP_LOSSES].dtype).at[chunks.reshape(-1)].set(
                mutables[STEP_LOSSES].reshape(-1))
        optim_state = svi.optim.update(grads, svi_state.optim_state, value=loss)
        return SVIState(optim_state, mutable, rng_key), loss

    @staticmethod
    def _adam_state(opt_state):
        """optax's ScaleByAdamState in chain(clip, adam) = (ClipState, (ScaleByAdamState, ScaleByScheduleState))."""
        return opt_state[1][0]

    # ------------------------------------------------------------------ the loop's interface
    def step(self, index: torch.Tensor, lr: float) -> tuple[float, float]:
        """One optimizer step on the examples ``index``; (loss in nats per example, gradient norm).

        The new state is kept only if both are finite (the loop then stops with TrainingDiverged)."""
        key, sub = jax.random.split(self.key)
        x0 = dp.global_batch(self.train_x, index.numpy(), dp.batch_sharding())  # each process: its devices' rows
        svi_state, ema, sampler_state, loss, norm = self._step(self.svi_state, self.ema, self.sampler_state, sub, x0)
        loss, norm = float(loss), float(norm)
        if math.isfinite(loss) and math.isfinite(norm):
            self.key, self.svi_state, self.ema, self.sampler_state = key, svi_state, ema, sampler_state
        return loss, (norm if math.isfinite(loss) else float("nan"))

    def params(self) -> dict:
        """The denoiser's current weights, a pure dict."""
        return self.svi.get_params(self.svi_state)[PARAMS]

    @property
    def num_parameters(self) -> int:
        """The number of the denoiser's parameters (as the PyTorch trainer's ``num_parameters``)."""
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(self.params()))

    def _to_torch(self, params) -> dict:
        return convert.torch_state_from_params(self.diffusion.denoiser, params)

    def _schedule_to_torch(self, params) -> dict:
        """A learned γ schedule's parameters (or moments) as its PyTorch state dict, in the PyTorch module's order."""
        flat = convert.torch_state_from_gamma_params(self.diffusion.schedule, params)
        return {k: flat[k] for k in self.schedule_names}

    def _as_torch(self, tree: dict) -> list[dict]:
        """The trained param sites of ``tree`` (weights, EMA or moments) as PyTorch state dicts: the denoiser's, then
        a learned schedule's (the PyTorch trainer's optimizer order)."""
        out = [self._to_torch(tree[PARAMS])]
        return out + ([self._schedule_to_torch(tree[SCHEDULE])] if SCHEDULE in self.trained else [])

    def state(self) -> dict:
        """Model, EMA, optimizer and sampler in the PyTorch backend's checkpoint format."""
        adam = self._adam_state(self.svi_state.optim_state[1][1])
        count = int(adam.count)
        mu = [v for part in self._as_torch(adam.mu) for v in part.values()]
        nu = [v for part in self._as_torch(adam.nu) for v in part.values()]
        template = torch.optim.Adam([torch.zeros(1) for _ in mu], lr=self.config.lr).state_dict()
        template["state"] = {} if count == 0 else {
            i: {"step": torch.tensor(float(count)), "exp_avg": m, "exp_avg_sq": v} for i, (m, v) in enumerate(zip(mu, nu))}
        params = self.svi.get_params(self.svi_state)
        state = {"model": self._to_torch(params[PARAMS]), "ema": self._to_torch(self.ema[PARAMS]), "optimizer": template,
                 "sampler": None if self.sampler is None else self.sampler.to_torch_state(self.sampler_state)}
        if SCHEDULE in self.trained:
            state.update(schedule=self._schedule_to_torch(params[SCHEDULE]),
                         schedule_ema=self._schedule_to_torch(self.ema[SCHEDULE]))
        return state

    def _from_torch(self, parts: list[dict]) -> dict:
        """PyTorch state dicts (the denoiser's, then a learned schedule's) as the trained param sites' trees."""
        tree = {PARAMS: convert.params_from_torch_state(self.diffusion.denoiser, parts[0])}
        if SCHEDULE in self.trained:
            tree[SCHEDULE] = convert.gamma_params_from_torch_state(self.diffusion.schedule, parts[1])
        return tree

    def load(self, state: dict) -> None:
        """Restore from a checkpoint of either backend (raises KeyError / ValueError if it does not fit)."""
        keys = [("model", "ema")] + ([("schedule", "schedule_ema")] if SCHEDULE in self.trained else [])
        params = self._from_torch([state[k] for k, _ in keys])
        ema = self._from_torch([state[e] for _, e in keys])
        layout = [list(state[k]) for k, _ in keys]  # the optimizer's parameters, in order, as these state dicts
        saved = state["optimizer"]["state"]
        as_f32 = lambda tree: jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), tree)  # noqa: E731
        opt_state = self.svi_state.optim_state[1][1]
        if saved:
            def moments(name):
                i, parts = iter(range(sum(map(len, layout)))), []
                for names in layout:
                    parts.append({k: saved[next(i)][name] for k in names})
                return as_f32(self._from_torch(parts))

            count = jnp.asarray(int(round(float(saved[0]["step"]))), jnp.int32)
            clip, (adam, schedule) = opt_state
            adam = adam._replace(count=count, mu=moments("exp_avg"), nu=moments("exp_avg_sq"))
            if isinstance(schedule, optax.ScaleByScheduleState):  # a warm-up; a constant rate keeps no count
                schedule = schedule._replace(count=count)
            opt_state = (clip, (adam, schedule))
        i, _ = self.svi_state.optim_state
        self.svi_state = self.svi_state._replace(optim_state=(i, (as_f32(params), opt_state)))
        self.ema = as_f32(ema)
        if self.sampler is not None:
            if state.get("sampler") is None:
                raise ValueError("the checkpoint holds no timestep sampler state")
            self.sampler_state = self.sampler.from_torch_state(state["sampler"])
        self._replicate()

    def rng_state(self) -> dict:
        """The JAX keys: the trainer's, SVI's, and the denoiser's dropout keys and counts."""
        leaves = jax.tree.leaves(self.svi_state.mutable_state.get("denoiser$state", {}))
        return {"key": _key_data(self.key), "svi": _key_data(self.svi_state.rng_key),
                "dropout": [_key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key) else
                            torch.tensor(int(v)) for v in leaves]}

    def set_rng_state(self, saved: dict | None) -> None:
        """Restore the keys of :meth:`rng_state` (None: a Pyro-backend checkpoint, keys kept from the seed)."""
        if saved is None:  # a checkpoint of the Pyro backend: fresh keys, derived from the seed
            return
        self.key = jnp.asarray(saved["key"].numpy().astype(np.uint32))
        mutable = dict(self.svi_state.mutable_state)
        if "denoiser$state" in mutable:
            leaves, treedef = jax.tree.flatten(mutable["denoiser$state"])
            new = []
            for old, value in zip(leaves, saved["dropout"], strict=True):
                if jnp.issubdtype(old.dtype, jax.dtypes.prng_key):
                    new.append(jax.random.wrap_key_data(jnp.asarray(value.numpy().astype(np.uint32)),
                                                        impl=jax.random.key_impl(old)))
                else:
                    new.append(jnp.asarray(int(value), old.dtype))
            mutable["denoiser$state"] = jax.tree.unflatten(treedef, new)
        self.svi_state = self.svi_state._replace(
            mutable_state=mutable, rng_key=jnp.asarray(saved["svi"].numpy().astype(np.uint32)))
        self._replicate()

    def trained_diffusion(self, ema: bool = False) -> GaussianDiffusion:
        """The diffusion with the current (or EMA) weights loaded into its Flax denoiser, in eval mode."""
        from flax import nnx

        weights = self.ema if ema else self.svi.get_params(self.svi_state)
        for key, module in ((PARAMS, self.diffusion.denoiser), (SCHEDULE, self.diffusion.schedule)):
            if key in self.trained:
                state = nnx.state(module, nnx.Param)
                nnx.replace_by_pure_dict(state, weights[key])
                nnx.update(module, state)
        self.diffusion.denoiser.eval()
        return self.diffusion

    def result(self):
        """(the trained diffusion with the raw weights, the EMA as the PyTorch denoiser's state_dict)."""
        return self.trained_diffusion(ema=False), self._to_torch(self.ema[PARAMS])


__all__ = ["NumPyroTrainer", "clip_by_global_norm", "estimator_loss", "from_torch"]
