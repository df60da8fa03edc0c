"""The random draws of a training step, made for the *global* batch and sliced to this process's rows.

Data-parallel training on N processes must equal the 1-process run with the same global batch: the same
examples, timesteps, noise and dropout masks at every step, each rank holding a contiguous block of rows.
:class:`BatchDraws` makes that true by construction. While it is active (a Pyro messenger, entered around one
``differentiable_loss`` call):

- every unobserved ``pyro.sample`` site whose distribution is a Normal (possibly ``to_event``, masked or
  expanded: every latent of the guides of :class:`~ppl_diffusion.GaussianDiffusion`) gets its value as
  ``loc + scale · ε``, with ε drawn from the step's own generator **for the global batch** along the ``"data"``
  plate and sliced to this rank's rows (the same reparameterised value Pyro would draw, from other numbers);
- the estimators draw t through :meth:`BatchDraws.timesteps` and their own noise through :meth:`BatchDraws.randn`,
  and gather per-example losses (importance sampling's history) from every rank in rank order
  (:meth:`BatchDraws.gather`), so every rank keeps the same sampler state;
- :class:`SlicedDropout` (which :func:`slice_dropout` puts in place of a net's ``nn.Dropout`` modules) draws its
  mask the same way.

Every rank draws the same global numbers from the same generator state and keeps its own rows, so the
generator stays identical on every rank and a checkpoint needs one copy of it. The cost is drawing N× the
local noise on each rank, small beside the network. With one process the slice is everything, which is why
the 1-process trainer uses the same path. Outside a :class:`BatchDraws` nothing changes: Pyro's own sampling
and ``nn.Dropout`` behave as usual (``pyro.infer.SVI`` users see no difference).
"""

from __future__ import annotations

import torch
from pyro.distributions import ExpandedDistribution, MaskedDistribution
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch import Tensor, nn
from torch.distributions import Independent as TorchIndependent, Normal

from ..distributed import World

PLATE = "data"
_ACTIVE: list["BatchDraws"] = []


def active() -> "BatchDraws | None":
    """The innermost active :class:`BatchDraws`, or ``None``."""
    return _ACTIVE[-1] if _ACTIVE else None


class FeedNoiseMessenger(Messenger):
    """Draw the named sample sites from given standard normals: ``value = loc + scale · noise[name]``.

    For sites whose distribution is a Normal, a :class:`~ppl_diffusion.distributions.DiscretizedGaussian`
    (then rounded to its bins, a draw from it) or a :class:`~ppl_diffusion.distributions.VDMCategorical` (its
    inverse CDF at Φ(noise)), under ``.to_event``, a mask or an expansion; observed sites,
    replayed ones and sites not named are left alone. ``noise`` is a dict of tensors shaped like the sites'
    values, or a function of the site's name returning one (or ``None``), so that the noise of a long chain is
    made one site at a time. This is how the bound and the sampler take counter-based noise
    (:mod:`ppl_diffusion.noise`) instead of torch's generator, and, through :class:`BatchDraws`, how training
    draws its noise for the global batch. The value is Pyro's reparameterised draw from other numbers.
    """

    refusal = ("only Normal sites take counter-based noise (a non-Gaussian prior is drawn per example by "
               "ppl_diffusion.sampling)")

    def __init__(self, noise=None) -> None:
        super().__init__()
        self.noise = noise.get if isinstance(noise, dict) else noise

    def _eps(self, msg, base) -> Tensor | None:
        """The site's standard normal noise, or ``None`` to leave the site to Pyro."""
        return self.noise(msg["name"])

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None or isinstance(msg["fn"], _Subsample):
            return  # observed, replayed, or a plate's own subsample site
        base = msg["fn"]
        while isinstance(base, (TorchIndependent, MaskedDistribution, ExpandedDistribution)):
            base = base.base_dist
        eps = self._eps(msg, base)
        if eps is None:
            return
        from ..distributions import DiscretizedGaussian, VDMCategorical

        if not isinstance(base, (Normal, DiscretizedGaussian, VDMCategorical)):
            raise ValueError(f"site {msg['name']!r} is a {type(base).__name__}; {self.refusal}")
        eps = eps.to(device=base.loc.device, dtype=base.loc.dtype)
        if eps.numel() == base.loc.numel():  # given noise may come flat; an expanded site's broadcasts instead
            eps = eps.reshape(base.loc.shape)
        # a decoder's draw from its noise: rounded to the bins, or the categorical's inverse CDF at Φ(ε)
        msg["value"] = base.loc + base.scale * eps if isinstance(base, Normal) else base.from_normal(eps)


class BatchDraws(FeedNoiseMessenger):
    """Draw for the global batch from ``generator`` and keep rank ``world.rank``'s rows (see the module doc).

    :param torch.Generator generator: the step's generator, in the same state on every rank; on the device
        the tensors live on (a CPU generator for CPU training, a CUDA one for CUDA).
    :param World world: the processes (rank, world size, gather); one process by default.
    """

    def __init__(self, generator: torch.Generator, world: World | None = None) -> None:
        super().__init__()
        self.generator = generator
        self.world = world or World()

    def __enter__(self):
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *args):
        _ACTIVE.remove(self)
        return super().__exit__(*args)

    # ------------------------------------------------------------------------------ slicing
    def _rows(self, local: int) -> slice:
        return slice(self.world.rank * local, (self.world.rank + 1) * local)

    def _global(self, shape, dim: int) -> tuple[list[int], slice]:
        shape = list(shape)
        rows = self._rows(shape[dim])
        shape[dim] *= self.world.world_size
        return shape, rows

    def randn(self, shape, *, dtype=torch.float32, device=None, dim: int = 0) -> Tensor:
        """Standard normal noise of this rank's ``shape`` (batch along ``dim``), drawn for the global batch."""
        full, rows = self._global(shape, dim)
        eps = torch.randn(full, dtype=dtype, device=self.generator.device, generator=self.generator)
        return eps.narrow(dim, rows.start, rows.stop - rows.start).to(device)

    def bernoulli(self, shape, p_keep: float, *, dtype=torch.float32, device=None) -> Tensor:
        """A 0/1 mask of this rank's ``shape`` (batch along dim 0), P(1) = ``p_keep``, drawn for the global batch."""
        full, rows = self._global(shape, 0)
        mask = torch.empty(full, dtype=dtype, device=self.generator.device).bernoulli_(p_keep, generator=self.generator)
        return mask[rows].to(device)

    def timesteps(self, sampler, n: int, device=None) -> tuple[Tensor, Tensor]:
        """``sampler.sample`` for the global batch (``n`` per rank), sliced: (t, 1/P(t)) of this rank's rows."""
        t, weight = sampler.sample(n * self.world.world_size, generator=self.generator)
        rows = self._rows(n)
        return t[rows].to(device), weight[rows].to(device)

    def gather(self, x: Tensor) -> Tensor:
        """``x`` of every rank concatenated in rank order: the global batch's values."""
        return self.world.gather(x)

    # ------------------------------------------------------------------------------ Pyro
    refusal = ("data-parallel training draws the guide's latents for the global batch and handles Normal sites "
               "only; use a guide whose latents are Normal (the guides of GaussianDiffusion are)")

    def _eps(self, msg, base) -> Tensor:
        fn = msg["fn"]
        sample_shape = tuple(msg["kwargs"].get("sample_shape", ()))
        shape = sample_shape + tuple(fn.batch_shape) + tuple(fn.event_shape)
        dtype = getattr(base, "loc", torch.empty(())).dtype
        dim = next((len(sample_shape) + len(fn.batch_shape) + f.dim for f in msg["cond_indep_stack"]
                    if f.name == PLATE), None)
        if dim is None:  # no data plate: one value shared by the whole batch, the same on every rank
            return torch.randn(shape, dtype=dtype, device=self.generator.device, generator=self.generator)
        return self.randn(shape, dtype=dtype, dim=dim)


class SlicedDropout(nn.Dropout):
    """``nn.Dropout`` whose mask comes from the active :class:`BatchDraws` (global batch, sliced); plain
    dropout when none is active. Same parameters and state dict as ``nn.Dropout`` (none)."""

    def forward(self, x: Tensor) -> Tensor:
        draws = active()
        if draws is None or not self.training or self.p == 0.0:
            return super().forward(x)
        if self.p == 1.0:
            return x * 0.0
        keep = draws.bernoulli(x.shape, 1.0 - self.p, dtype=x.dtype, device=x.device)
        return x * keep / (1.0 - self.p)


def slice_dropout(net: nn.Module) -> int:
    """Replace every ``nn.Dropout`` in ``net`` by :class:`SlicedDropout` (in place); the number replaced."""
    count = 0
    for parent in net.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, SlicedDropout(child.p, inplace=False))
                count += 1
    return count
