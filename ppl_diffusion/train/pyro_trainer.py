"""One training step on the Pyro backend (:class:`~ppl_diffusion.train.pyro_trainer.PyroTrainer`); :func:`~ppl_diffusion.train.pyro_trainer.make_trainer` picks the backend.

Data-parallel under ``torchrun``: each rank scores its contiguous rows of the global batch with every random
draw made for the global batch (:class:`~ppl_diffusion.infer.draws.BatchDraws`), the gradients of the
per-rank mean losses are averaged with one ``all_reduce`` of the flattened gradients (the documented
``torch.distributed`` collective; it fits a loop over ``differentiable_loss`` however many times the step calls
the network, which ``DistributedDataParallel``'s one-forward-one-backward hooks do not), and every rank then
takes the same clipped Adam step and EMA update, so weights, optimizer, EMA and sampler are the same on every
rank. With one process the same code runs with the identity for every collective. ``--microbatch M`` splits each
rank's rows into micro-batches of M whose gradients accumulate before that one all-reduce (:meth:`~ppl_diffusion.train.pyro_trainer.PyroTrainer.step`).
"""

from __future__ import annotations

import re
import warnings

import pyro
import torch

from ..diffusion import GaussianDiffusion
from ..distributed import World
from ..infer import make_estimator
from ..infer.draws import BatchDraws, apply_records, slice_dropout
from .config import TrainConfig, build_diffusion, lr_at
from .schedules import estimator_kwargs

__all__ = ["PyroTrainer", "make_trainer"]

_NON_FINITE = re.compile(r"\b(nan|inf)\b")


class _NonFiniteOutput(Exception):
    """The denoiser produced NaN or inf (Pyro's validation refused a distribution's parameters)."""


class PyroTrainer:
    """One training step at a time on the Pyro backend: ``estimator.differentiable_loss / B``, backward,
    gradient-norm clipping, Adam and the EMA update. ``ppl_diffusion.numpyro.train.NumPyroTrainer``
    is its twin on JAX; :func:`~ppl_diffusion.train.loop.train` drives either.

    :param config: the run's :class:`~ppl_diffusion.train.config.TrainConfig`.
    :param dataset: the :class:`~ppl_diffusion.data.Dataset` whose training split it trains on.
    :param torch.device device: where the model and the data go.
    :param world: the :class:`~ppl_diffusion.distributed.World` of a data-parallel job (one process by default).

    Example:

    >>> import torch
    >>> from ppl_diffusion.data import gaussian
    >>> from ppl_diffusion.train import BatchStream, PyroTrainer, TrainConfig
    >>> config = TrainConfig(data="gaussian", net="mlp", net_config={"width": 16, "depth": 1}, T=10,
    ...                      batch_size=4, steps=1, warmup_steps=0, ema_decay=0.0)
    >>> trainer = PyroTrainer(config, gaussian(n_train=16, n_test=4), torch.device("cpu"))
    >>> trainer.num_parameters
    2274
    >>> loss, grad_norm = trainer.step(BatchStream(16, seed=0).next(4), lr=1e-3)
    >>> sorted(trainer.state())
    ['draws', 'ema', 'model', 'optimizer', 'sampler']
    """

    def __init__(self, config: TrainConfig, dataset, device: torch.device, world: World | None = None) -> None:
        self.train_x = dataset.train.to(device)
        self.device = device
        self.world = world or World()
        pyro.clear_param_store()
        pyro.set_rng_seed(config.seed)
        self.diffusion = build_diffusion(config, dataset).to(device)
        self.net = self.diffusion.denoiser
        slice_dropout(self.net)  # dropout masks drawn for the global batch too
        # The step's random draws (t, noise, dropout): one generator, in the same state on every rank.
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.estimator = make_estimator(config.estimator, **estimator_kwargs(config))
        self.guide = self.estimator.guide(self.diffusion)
        loss = self.estimator.loss
        self.sampler = loss.get_sampler(config.T) if hasattr(loss, "get_sampler") else None
        self.prior = _trained(self.diffusion.prior)
        self.schedule = _trained(self.diffusion.schedule)  # a learned γ schedule (the guide's parameters)
        # The trained modules under their checkpoint keys (weights, EMA), in the optimizer's parameter order.
        self.parts = [("model", "ema", self.net)] + [(key, f"{key}_ema", m) for key, m in
                                                     (("prior", self.prior), ("schedule", self.schedule)) if m is not None]
        self.params = [p for _, _, module in self.parts for p in module.parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=lr_at(config, 1))
        self.emas = {ema: {k: v.detach().clone() for k, v in module.state_dict().items()} for _, ema, module in self.parts}
        self.ema = self.emas["ema"]
        self.config = config
        self.net.train()

    def step(self, index: torch.Tensor, lr: float) -> tuple[float, float]:
        """One optimizer step on the examples ``index``: (loss in nats per example, gradient norm); no update
        when either is not finite.

        With ``config.microbatch`` = M, this rank's rows are scored M at a time, each micro-batch's gradient
        accumulated before the one all-reduce and Adam step: every micro-batch draws from the generator in the
        state the step started from and keeps its rows of the global draws (:class:`~ppl_diffusion.infer.draws.BatchDraws` ``rows``), the
        losses are divided by the rank's whole batch, and the importance sampler records the step's losses once,
        so the step is the unsplit one up to float rounding."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        rows = index[self.world.shard(len(index))] if self.world.distributed else index
        x0 = self.train_x[rows.to(self.device)]
        local = x0.shape[0]
        size = self.config.microbatch or local
        self.optimizer.zero_grad(set_to_none=True)
        start_state = self.generator.get_state() if size < local else None
        refused, loss, records = None, torch.zeros((), dtype=torch.float64), []
        for start in range(0, local, size):
            if start:
                self.generator.set_state(start_state)  # every micro-batch: the step's own global draws
            try:
                with BatchDraws(self.generator, self.world, rows=(start, start + size, local), records=records):
                    part = self.estimator.loss.differentiable_loss(self.diffusion.model, self.guide,
                                                                   x0[start:start + size]) / local
            except ValueError as e:  # Pyro's validation refuses a distribution with NaN / inf parameters
                if "invalid values" not in str(e) or not _NON_FINITE.search(str(e)):
                    raise
                refused, loss = e, torch.tensor(float("nan"))
                break
            if part.requires_grad:
                part.backward()  # this micro-batch's activations are freed here
            loss = loss + part.detach().double().cpu()
        # Every rank learns whether any rank failed (so that all stop together) and the global mean loss.
        status = self.world.all_sum(torch.stack([torch.tensor(float(refused is not None)), loss.double()]))
        if status[0] > 0:
            raise _NonFiniteOutput() from refused
        apply_records(records, self.world)  # the importance sampler's history, once per step, in batch order
        mean_loss = (status[1] / self.world.world_size).item()
        if not torch.isfinite(status[1]):
            return mean_loss, float("nan")
        if self.world.distributed:
            average_gradients(self.params, self.world)
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if not torch.isfinite(grad_norm):
            return mean_loss, grad_norm.item()
        self.optimizer.step()
        with torch.no_grad():
            for _, key, module in self.parts:
                ema = self.emas[key]
                for k, v in module.state_dict().items():
                    if v.is_floating_point():
                        ema[k].lerp_(v, 1.0 - self.config.ema_decay)
                    else:
                        ema[k].copy_(v)
        return mean_loss, grad_norm.item()

    @property
    def num_parameters(self) -> int:
        """The denoiser's parameters (a learned prior's not counted)."""
        return sum(p.numel() for p in self.net.parameters())

    def state(self) -> dict:
        """The trainer's part of a checkpoint: weights and EMA (of the denoiser, a learned prior and a learned γ
        schedule), the optimizer, the importance sampler and the step's generator."""
        state = {"optimizer": self.optimizer.state_dict(),
                 "sampler": None if self.sampler is None else self.sampler.state_dict(),
                 "draws": {"device": self.generator.device.type, "state": self.generator.get_state()}}
        for key, ema, module in self.parts:  # model / ema, prior / prior_ema, schedule / schedule_ema
            state.update({key: module.state_dict(), ema: self.emas[ema]})
        return state

    def load(self, state: dict) -> None:
        """Continue from :meth:`state` (read back from a checkpoint)."""
        for key, ema, module in self.parts:
            module.load_state_dict(state[key])
            for k, v in state[ema].items():
                self.emas[ema][k].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
        draws = state.get("draws")
        if draws is not None and draws["device"] == self.generator.device.type:
            self.generator.set_state(draws["state"])
        elif draws is not None:  # a CUDA generator's state does not fit a CPU generator, nor the reverse
            self.generator.manual_seed(self.config.seed + 7919 * int(state.get("step", 0)))
            warnings.warn(f"resumed on {self.generator.device.type} a run saved on {draws['device']}: the training "
                          "draws continue from a generator reseeded by (seed, step), so the run is not bitwise the "
                          "uninterrupted one", UserWarning, stacklevel=2)

    def rng_state(self) -> None:
        return None  # torch's generator is in the checkpoint's global "rng"

    def set_rng_state(self, saved) -> None:
        pass

    def result(self) -> tuple[GaussianDiffusion, dict]:
        """``(the model with the trained weights, the EMA of the denoiser's state dict)``."""
        return self.diffusion, self.ema


def _trained(module):
    """``module`` if it is a ``torch.nn.Module`` with parameters (a learned prior or γ schedule), else ``None``."""
    return module if isinstance(module, torch.nn.Module) and next(module.parameters(), None) is not None else None


def average_gradients(params, world: World) -> None:
    """Replace each gradient by its mean over ranks: one ``all_reduce`` of the flattened gradients."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = world.all_sum(torch.cat([g.reshape(-1) for g in grads])) / world.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def make_trainer(config: TrainConfig, dataset, device: torch.device, world: World | None = None):
    """The trainer of ``config.backend``: a :class:`~ppl_diffusion.train.pyro_trainer.PyroTrainer`, or the NumPyro backend's ``NumPyroTrainer``
    (``world`` is for the Pyro backend; JAX splits its own devices).

    Example:

    >>> import torch
    >>> from ppl_diffusion.data import gaussian
    >>> from ppl_diffusion.train import TrainConfig, make_trainer
    >>> trainer = make_trainer(TrainConfig(data="gaussian", net="mlp", T=10, steps=1), gaussian(n_train=8, n_test=2),
    ...                        torch.device("cpu"))
    >>> type(trainer).__name__
    'PyroTrainer'
    """
    if config.backend == "numpyro":
        from ..numpyro.train import NumPyroTrainer

        return NumPyroTrainer(config, dataset, build_diffusion)
    return PyroTrainer(config, dataset, device, world)

