"""The random draws of a training step, made for the *global* batch and sliced to this process's rows.

Data-parallel training on N processes must equal the 1-process run with the same global batch: the same
examples, timesteps, noise and dropout masks at every step, each rank holding a contiguous block of rows.
:class:`BatchDraws` makes that true by construction. While it is active (a Pyro messenger, entered around one
``differentiable_loss`` call):

- every unobserved ``pyro.sample`` site whose distribution is a Normal (possibly ``to_event``, masked or
  expanded: every latent of the guides of :class:`~ppl_diffusion.diffusion.GaussianDiffusion`) gets its value as
  ``loc + scale · ε``, with ε drawn from the step's own generator **for the global batch** along the ``"data"``
  plate and sliced to this rank's rows (the same reparameterised value Pyro would draw, from other numbers);
- the estimators draw t through :meth:`BatchDraws.timesteps` and their own noise through :meth:`BatchDraws.randn`,
  and gather per-example losses (importance sampling's history) from every rank in rank order
  (:meth:`BatchDraws.gather`), so every rank keeps the same sampler state;
- :class:`SlicedDropout` (which :func:`slice_dropout` puts in place of a net's ``nn.Dropout`` modules) draws its
  mask the same way, and a network call checkpointed in the backward pass (:mod:`ppl_diffusion.nets.remat`)
  draws it again from a copy of the generator in the state the forward pass found (the same mask, the
  generator itself not moved).

**Micro-batches.** With ``rows=(start, stop, local)`` the call scores only rows ``start..stop`` of this rank's
``local`` rows (``--microbatch``): every draw is still made for the whole global batch and sliced to those rows,
so a step split into micro-batches, each drawing from the generator in the state the step started from, makes
exactly the draws of the unsplit step; the losses for importance sampling go to ``records`` and
:func:`apply_records` gathers and records them once per step, in the global batch's order.

Every rank draws the same global numbers from the same generator state and keeps its own rows, so the
generator stays identical on every rank and a checkpoint needs one copy of it. The cost is drawing N× the
local noise on each rank, small beside the network. With one process the slice is everything, which is why
the 1-process trainer uses the same path. Outside a :class:`BatchDraws` nothing changes: Pyro's own sampling
and ``nn.Dropout`` behave as usual (``pyro.infer.SVI`` users see no difference).
"""

from __future__ import annotations

import contextlib
import copy

import torch
from pyro.distributions import ExpandedDistribution, MaskedDistribution
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch import Tensor, nn
from torch.distributions import Independent as TorchIndependent, Normal

from ..distributed import World
from ..nets.remat import register_recompute_context

PLATE = "data"
_ACTIVE: list["BatchDraws"] = []


def active() -> "BatchDraws | None":
    """The innermost active :class:`BatchDraws`, or ``None``."""
    return _ACTIVE[-1] if _ACTIVE else None


class FeedNoiseMessenger(Messenger):
    r"""Draw the named sample sites from given standard normals: ``value = loc + scale · noise[name]``.

    For sites whose distribution is a Normal, a :class:`~ppl_diffusion.distributions.DiscretizedGaussian`
    (then rounded to its bins, a draw from it) or a :class:`~ppl_diffusion.distributions.VDMCategorical` (its
    inverse CDF at Φ(noise)), under ``.to_event``, a mask or an expansion; observed sites,
    replayed ones and sites not named are left alone. ``noise`` is a dict of tensors shaped like the sites'
    values, or a function of the site's name returning one (or ``None``), so that the noise of a long chain is
    made one site at a time. This is how the bound and the sampler take counter-based noise
    (:mod:`ppl_diffusion.noise`) instead of torch's generator, and, through :class:`BatchDraws`, how training
    draws its noise for the global batch. The value is Pyro's reparameterised draw from other numbers.

    :param noise: ``{site name: Tensor}``, or a function ``name -> Tensor | None``.

    Example: x_t of the one-step guide drawn from a given ε is :math:`\sqrt{\bar\alpha_t} x_0 + \sqrt{1 -
    \bar\alpha_t}\, \varepsilon`.

    >>> import torch
    >>> from ppl_diffusion import GaussianDiffusion, MLPDenoiser, NoiseSchedule
    >>> _ = torch.manual_seed(0)
    >>> diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T=10),
    ...                               denoiser=MLPDenoiser(dim=2, width=16, depth=1), event_shape=(2,))
    >>> x0 = torch.rand(4, 2) * 2 - 1  # [B x D], data in [-1, 1]
    >>> from pyro import poutine
    >>> from ppl_diffusion.infer.draws import FeedNoiseMessenger
    >>> t, eps = torch.tensor([3, 3, 3, 3]), torch.randn(4, 2)
    >>> trace = poutine.trace(FeedNoiseMessenger({"x_t": eps})(diffusion.step_guide)).get_trace(x0, t)
    >>> torch.allclose(trace.nodes["x_t"]["value"], diffusion.q_sample(x0, t, eps))
    True
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
    :param tuple rows: ``(start, stop, local)``: this call scores rows ``start..stop`` of this rank's ``local`` rows
        (a micro-batch); default: all of them.
    :param list records: where :meth:`record` puts the losses for importance sampling, for :func:`apply_records`
        to record once per step; default: recorded at once.

    Example: rank 1 of 2 keeps the second half of the global batch's draw.

    >>> import torch
    >>> from ppl_diffusion.distributed import World
    >>> from ppl_diffusion.infer.draws import BatchDraws
    >>> draws = BatchDraws(torch.Generator().manual_seed(0), World(rank=1, world_size=2))
    >>> eps = draws.randn((2, 3))  # this rank's 2 rows of a global batch of 4
    >>> torch.equal(eps, torch.randn((4, 3), generator=torch.Generator().manual_seed(0))[2:])
    True
    """

    def __init__(self, generator: torch.Generator, world: World | None = None, *,
                 rows: tuple[int, int, int] | None = None, records: list | None = None) -> None:
        super().__init__()
        self.generator = generator
        self.world = world or World()
        if rows is not None and not 0 <= rows[0] < rows[1] <= rows[2]:
            raise ValueError(f"rows = {rows!r}: pass (start, stop, local) with 0 <= start < stop <= local")
        self.rows = rows
        self.records = records

    def __enter__(self):
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *args):
        _ACTIVE.remove(self)
        return super().__exit__(*args)

    # ------------------------------------------------------------------------------ slicing
    def _span(self, n: int) -> tuple[int, slice]:
        """(rows of the global draw, this call's slice of them) for a draw of ``n`` rows here: the rank's block,
        and in it the micro-batch's rows (``n`` a multiple of the micro-batch: k draws per example, grouped)."""
        local, offset = n, 0
        if self.rows is not None:
            start, stop, total = self.rows
            k, rest = divmod(n, stop - start)
            if rest or not k:
                raise ValueError(f"a draw of {n} rows in a micro-batch of {stop - start} examples: draws along the "
                                 "batch must hold whole examples")
            local, offset = total * k, start * k
        begin = self.world.rank * local + offset
        return local * self.world.world_size, slice(begin, begin + n)

    def _global(self, shape, dim: int) -> tuple[list[int], slice]:
        shape = list(shape)
        shape[dim], rows = self._span(shape[dim])
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
        """``sampler.sample`` for the global batch (``n`` here), sliced: (t, 1/P(t)) of this call's rows."""
        total, rows = self._span(n)
        t, weight = sampler.sample(total, generator=self.generator)
        return t[rows].to(device), weight[rows].to(device)

    def gather(self, x: Tensor) -> Tensor:
        """``x`` of every rank concatenated in rank order: the global batch's values."""
        return self.world.gather(x)

    def record(self, sampler, t: Tensor, losses: Tensor) -> None:
        """``sampler.update`` with the global batch's (t, losses), gathered in rank order: now, or, with
        ``records``, kept for :func:`apply_records` (once per step, after the last micro-batch)."""
        if self.records is not None:
            self.records.append((sampler, t.detach(), losses.detach()))
        else:
            sampler.update(self.gather(t), self.gather(losses))

    @contextlib.contextmanager
    def replaying(self, state):
        """Active inside: a copy of these draws whose generator starts at ``state`` (a checkpointed call's
        recomputation draws its dropout masks again, the same ones, without moving this generator)."""
        replay = copy.copy(self)
        replay.generator = torch.Generator(device=self.generator.device)
        replay.generator.set_state(state)
        _ACTIVE.append(replay)
        try:
            yield replay
        finally:
            if _ACTIVE and _ACTIVE[-1] is replay:
                _ACTIVE.pop()

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


def apply_records(records: list, world: World | None = None) -> None:
    """Record the losses a step's micro-batches kept (:meth:`BatchDraws.record`): per sampler, this rank's rows in
    micro-batch order, gathered in rank order, one ``sampler.update`` (the unsplit step's).

    :param list records: ``(sampler, t, losses)`` triples, as :meth:`BatchDraws.record` keeps them.
    :param World world: the processes; one by default.

    Example: two micro-batches' losses recorded as one step's.

    >>> import torch
    >>> from ppl_diffusion.infer import ImportanceTimesteps
    >>> from ppl_diffusion.infer.draws import apply_records
    >>> sampler = ImportanceTimesteps(2, history=2)
    >>> records = [(sampler, torch.tensor([1, 2]), torch.tensor([1.0, 2.0])),
    ...            (sampler, torch.tensor([1, 2]), torch.tensor([3.0, 4.0]))]
    >>> apply_records(records)
    >>> sampler.warmed_up, sampler.loss_history.tolist()
    (True, [[1.0, 3.0], [2.0, 4.0]])
    """
    world = world or World()
    by_sampler: dict[int, tuple] = {}
    for sampler, t, losses in records:
        by_sampler.setdefault(id(sampler), (sampler, [], []))
        by_sampler[id(sampler)][1].append(t)
        by_sampler[id(sampler)][2].append(losses)
    for sampler, ts, losses in by_sampler.values():
        sampler.update(world.gather(torch.cat(ts)), world.gather(torch.cat(losses)))


def _recompute_draws():
    """(forward, recompute) contexts of a checkpointed call: the recomputation draws from the state the active
    :class:`BatchDraws`' generator had when the forward call started."""
    draws = active()
    if draws is None:
        return contextlib.nullcontext(), contextlib.nullcontext()
    return contextlib.nullcontext(), draws.replaying(draws.generator.get_state())


register_recompute_context(_recompute_draws)


class SlicedDropout(nn.Dropout):
    """``nn.Dropout`` whose mask comes from the active :class:`BatchDraws` (global batch, sliced); plain
    dropout when none is active. Same parameters and state dict as ``nn.Dropout`` (none).

    :param float p: the probability of zeroing an element.

    Example: two ranks' halves of a batch get the masks of the whole batch on one process.

    >>> import torch
    >>> from ppl_diffusion.distributed import World
    >>> from ppl_diffusion.infer.draws import BatchDraws, SlicedDropout
    >>> drop, x = SlicedDropout(0.5), torch.ones(4, 3)
    >>> def masked(rank, world_size):
    ...     rows = slice(rank * 4 // world_size, (rank + 1) * 4 // world_size)
    ...     with BatchDraws(torch.Generator().manual_seed(0), World(rank=rank, world_size=world_size)):
    ...         return drop(x[rows])
    >>> whole = masked(0, 1)
    >>> torch.equal(whole, torch.cat([masked(0, 2), masked(1, 2)])), sorted(set(whole.flatten().tolist()))
    (True, [0.0, 2.0])
    """

    def forward(self, x: Tensor) -> Tensor:
        draws = active()
        if draws is None or not self.training or self.p == 0.0:
            return super().forward(x)
        if self.p == 1.0:
            return x * 0.0
        keep = draws.bernoulli(x.shape, 1.0 - self.p, dtype=x.dtype, device=x.device)
        return x * keep / (1.0 - self.p)


def slice_dropout(net: nn.Module) -> int:
    """Replace every ``nn.Dropout`` in ``net`` by :class:`SlicedDropout` (in place); the number replaced.

    :param torch.nn.Module net: the network.

    Example:

    >>> from torch import nn
    >>> from ppl_diffusion.infer.draws import slice_dropout
    >>> net = nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.1), nn.Linear(4, 2), nn.Dropout(0.1))
    >>> slice_dropout(net), type(net[1]).__name__, net[1].p
    (2, 'SlicedDropout', 0.1)
    """
    count = 0
    for parent in net.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, SlicedDropout(child.p, inplace=False))
                count += 1
    return count


__all__ = ["BatchDraws", "FeedNoiseMessenger", "SlicedDropout", "apply_records", "slice_dropout"]
