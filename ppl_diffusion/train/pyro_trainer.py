"""One training step on the Pyro backend (:class:`PyroTrainer`); :func:`make_trainer` picks the backend."""

from __future__ import annotations

import re

import pyro
import torch

from ..diffusion import GaussianDiffusion
from ..infer import make_estimator
from .config import TrainConfig, build_diffusion, lr_at

_NON_FINITE = re.compile(r"\b(nan|inf)\b")


class _NonFiniteOutput(Exception):
    """The denoiser produced NaN or inf (Pyro's validation refused a distribution's parameters)."""


class PyroTrainer:
    """One training step at a time on the Pyro backend: ``estimator.differentiable_loss / B``, backward,
    gradient-norm clipping, Adam and the EMA update. :class:`ppl_diffusion.numpyro.train.NumPyroTrainer`
    is its twin on JAX; :func:`train` drives either."""

    def __init__(self, config: TrainConfig, dataset, device: torch.device) -> None:
        self.train_x = dataset.train.to(device)
        self.device = device
        pyro.clear_param_store()
        pyro.set_rng_seed(config.seed)
        self.diffusion = build_diffusion(config, dataset).to(device)
        self.net = self.diffusion.denoiser
        self.estimator = make_estimator(config.estimator)
        self.guide = self.estimator.guide(self.diffusion)
        loss = self.estimator.loss
        self.sampler = loss.get_sampler(config.T) if hasattr(loss, "get_sampler") else None
        prior = self.diffusion.prior
        self.prior = prior if isinstance(prior, torch.nn.Module) and next(prior.parameters(), None) is not None else None
        self.params = list(self.net.parameters()) + ([] if self.prior is None else list(self.prior.parameters()))
        self.optimizer = torch.optim.Adam(self.params, lr=lr_at(config, 1))
        self.ema = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.prior_ema = None if self.prior is None else {k: v.detach().clone() for k, v in self.prior.state_dict().items()}
        self.config = config
        self.net.train()

    def step(self, index: torch.Tensor, lr: float) -> tuple[float, float]:
        """One optimizer step on the examples ``index``: (loss in nats per example, gradient norm); no update
        when either is not finite."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x0 = self.train_x[index.to(self.device)]
        try:
            loss = self.estimator.loss.differentiable_loss(self.diffusion.model, self.guide, x0) / x0.shape[0]
        except ValueError as e:  # Pyro's validation refuses a distribution with NaN / inf parameters
            if "invalid values" not in str(e) or not _NON_FINITE.search(str(e)):
                raise
            raise _NonFiniteOutput() from e
        if not torch.isfinite(loss):
            return loss.item(), float("nan")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if not torch.isfinite(grad_norm):
            return loss.item(), grad_norm.item()
        self.optimizer.step()
        with torch.no_grad():
            for module, ema in ((self.net, self.ema), (self.prior, self.prior_ema)):
                if module is None:
                    continue
                for k, v in module.state_dict().items():
                    if v.is_floating_point():
                        ema[k].lerp_(v, 1.0 - self.config.ema_decay)
                    else:
                        ema[k].copy_(v)
        return loss.item(), grad_norm.item()

    def state(self) -> dict:
        state = {"model": self.net.state_dict(), "ema": self.ema, "optimizer": self.optimizer.state_dict(),
                 "sampler": None if self.sampler is None else self.sampler.state_dict()}
        if self.prior is not None:
            state.update(prior=self.prior.state_dict(), prior_ema=self.prior_ema)
        return state

    def load(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        for k, v in state["ema"].items():
            self.ema[k].copy_(v)
        if self.prior is not None:
            self.prior.load_state_dict(state["prior"])
            for k, v in state["prior_ema"].items():
                self.prior_ema[k].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])

    def rng_state(self) -> None:
        return None  # torch's generator is in the checkpoint's global "rng"

    def set_rng_state(self, saved) -> None:
        pass

    def result(self) -> tuple[GaussianDiffusion, dict]:
        return self.diffusion, self.ema


def make_trainer(config: TrainConfig, dataset, device: torch.device):
    if config.backend == "numpyro":
        from ..numpyro.train import NumPyroTrainer

        return NumPyroTrainer(config, dataset, build_diffusion)
    return PyroTrainer(config, dataset, device)

