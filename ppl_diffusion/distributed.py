"""Several processes on ``torch.distributed``: the one place that knows about ranks.

A command started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
variables) calls :func:`~ppl_diffusion.distributed.init` once; everything else asks :func:`~ppl_diffusion.distributed.world` for the :class:`~ppl_diffusion.distributed.World` it runs in.
Without ``torchrun`` the world is one process and every method below is the identity, so the same code path
serves 1 and N processes, which is what makes the two give the same numbers.

The process group is ``gloo`` on CPU and ``nccl`` on CUDA (``backend="auto"``); each rank uses
``cuda:LOCAL_RANK`` when it runs on GPUs. Work is split **contiguously** by rank (:meth:`~ppl_diffusion.distributed.World.shard`), and
results are gathered back in rank order (:meth:`~ppl_diffusion.distributed.World.gather`), so a gathered array is in the order of the
1-process run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DIST_BACKENDS", "World", "check_microbatch", "init", "joined", "launched", "local_device",
           "resolve_backend", "shutdown", "world"]

#: The process group backends by name (``--dist-backend``); ``auto`` is ``nccl`` on CUDA, else ``gloo``.
DIST_BACKENDS = ("auto", "gloo", "nccl")
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")



def check_microbatch(microbatch: int | None, per_process: int, processes: int = 1) -> int:
    """The micro-batch size (``--microbatch``) of a per-process batch of ``per_process`` examples (the global batch
    over ``processes``): ``microbatch``, or the whole per-process batch for ``None``; a one-line error naming the
    nearest valid sizes unless it divides the per-process batch.

    :param microbatch: examples per forward/backward pass, or ``None``.
    :param int per_process: the examples of one process in an optimizer step.
    :param int processes: the number of processes (named in the error).
    :rtype: int

    Example:

    >>> from ppl_diffusion.distributed import check_microbatch
    >>> check_microbatch(None, 8), check_microbatch(4, 8)
    (8, 4)
    >>> check_microbatch(3, 8)
    Traceback (most recent call last):
    ...
    ValueError: microbatch 3 does not divide the per-process batch 8 (batch size 8 over 1 process); pass --microbatch 2 or 4
    """
    if microbatch is None:
        return per_process
    if isinstance(microbatch, bool) or not isinstance(microbatch, int) or microbatch < 1:
        raise ValueError(f"microbatch = {microbatch!r}; pass a positive number of examples (--microbatch), or "
                         "none for the whole batch")
    if per_process % microbatch:
        sizes = [d for d in range(1, per_process + 1) if per_process % d == 0]
        near = [max(d for d in sizes if d < microbatch), *[d for d in sizes if d > microbatch][:1]]
        raise ValueError(f"microbatch {microbatch} does not divide the per-process batch {per_process} (batch size "
                         f"{per_process * processes} over {processes} process{'es' if processes > 1 else ''}); pass "
                         f"--microbatch {' or '.join(map(str, near))}")
    return microbatch

@dataclass(frozen=True)
class World:
    """The processes of this job: ``rank`` of ``world_size`` (``local_rank`` on this node).

    Get the one this process runs in with :func:`~ppl_diffusion.distributed.world`; in a single process every collective method returns its
    input (a copy where it would be a new tensor).

    :param int rank: this process's index, 0 ≤ rank < world_size.
    :param int world_size: the number of processes.
    :param int local_rank: the index on this node (the GPU it uses).
    :param backend: the process group's backend (``"gloo"``, ``"nccl"``); ``None`` for one process.

    Example:

    >>> import torch
    >>> from ppl_diffusion.distributed import World
    >>> second = World(rank=1, world_size=3)  # rank 1's part of 10 examples, in rank order
    >>> second.shard(10), second.local_batch(12), second.is_main
    (slice(4, 7, None), 4, False)
    >>> one = World()
    >>> one.all_mean(torch.tensor([1.0, 3.0])), one.gather_objects("x"), one.any(False)
    (tensor([1., 3.]), ['x'], False)
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # the process group's backend ("gloo", "nccl"); None for one process

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files, logs and shows the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of ``range(n)``; parts differ in size by at most one, rank order."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def local_batch(self, global_batch: int) -> int:
        """Examples per rank of a global batch; a one-line error unless it divides evenly."""
        if global_batch % self.world_size:
            lo = global_batch - global_batch % self.world_size
            raise ValueError(f"global batch size {global_batch} is not divisible by the world size {self.world_size}; "
                             f"pass --batch-size {lo or self.world_size} or {lo + self.world_size} (a multiple of "
                             f"{self.world_size})")
        return global_batch // self.world_size

    def _comm(self, x: torch.Tensor) -> torch.Tensor:
        # NCCL reduces CUDA tensors only; gloo takes CPU (and CUDA) tensors.
        if self.backend == "nccl" and x.device.type != "cuda":
            return x.to(f"cuda:{self.local_rank}")
        return x

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over ranks (a new tensor, on ``x``'s device)."""
        if not self.distributed:
            return x.clone()
        y = self._comm(x.detach().clone())
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y.to(x.device)

    def all_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over ranks."""
        return self.all_sum(x) / self.world_size if self.distributed else x.clone()

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` of every rank concatenated along dim 0 in rank order, on every rank (sizes may differ)."""
        if not self.distributed:
            return x
        y = self._comm(x.detach().contiguous())
        sizes = [torch.zeros((), dtype=torch.long, device=y.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor(y.shape[0], dtype=torch.long, device=y.device))
        sizes = [int(s) for s in sizes]
        top = max(sizes)
        if y.shape[0] < top:  # all_gather needs equal shapes: pad, then cut
            y = torch.cat([y, y.new_zeros((top - y.shape[0], *y.shape[1:]))])
        parts = [torch.empty_like(y) for _ in range(self.world_size)]
        dist.all_gather(parts, y)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(x.device)

    def gather_objects(self, obj) -> list:
        """A picklable ``obj`` from every rank, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj, src: int = 0):
        """Rank ``src``'s picklable ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def on_main(self, fn):
        """``fn()`` on rank 0, its result (or its exception) on every rank: one decision, no rank left waiting."""
        if not self.distributed:
            return fn()
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except Exception as e:  # noqa: BLE001 - re-raised on every rank below
                outcome = ("error", e)
        outcome = self.broadcast_object(outcome)
        if outcome[0] == "error":
            raise outcome[1]
        return outcome[1]

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (so that every rank takes the same branch)."""
        if not self.distributed:
            return flag
        return bool(self.all_sum(torch.tensor([float(flag)])).item() > 0)

    def barrier(self) -> None:
        """Wait until every rank reaches this call (nothing for one process)."""
        if self.distributed:
            dist.barrier()


_WORLD = World()


def world() -> World:
    """The :class:`~ppl_diffusion.distributed.World` set up by :func:`~ppl_diffusion.distributed.init` (one process when it was not called, or without torchrun).

    Example:

    >>> from ppl_diffusion.distributed import world
    >>> w = world()  # not started by torchrun
    >>> w.rank, w.world_size, w.is_main, w.distributed
    (0, 1, True, False)
    """
    return _WORLD


def launched() -> bool:
    """Whether ``torchrun`` (or another launcher setting ``RANK`` and ``WORLD_SIZE``) started this process.

    Example:

    >>> import os
    >>> from ppl_diffusion.distributed import launched
    >>> launched() == ("RANK" in os.environ and "WORLD_SIZE" in os.environ)
    True
    """
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE"))


def resolve_backend(backend: str = "auto", device: str = "auto") -> str:
    """The process group's backend: ``auto`` is ``nccl`` when the job runs on CUDA, else ``gloo``.

    :param str backend: a name of :data:`~ppl_diffusion.distributed.DIST_BACKENDS`.
    :param str device: the job's device (``"auto"``, ``"cpu"``, ``"cuda"``).
    :raises ValueError: for an unknown name, or ``nccl`` where there is no GPU.

    Example:

    >>> from ppl_diffusion.distributed import resolve_backend
    >>> resolve_backend("auto", device="cpu"), resolve_backend("gloo")
    ('gloo', 'gloo')
    """
    if backend not in DIST_BACKENDS:
        raise ValueError(f"unknown distributed backend {backend!r}; choose one of {list(DIST_BACKENDS)}")
    cuda = torch.cuda.is_available() and device != "cpu"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("distributed backend 'nccl' needs CUDA GPUs and none is available here; pass "
                         "--dist-backend gloo (or auto) to run on CPUs")
    if backend == "auto":
        return "nccl" if cuda else "gloo"
    return backend


def init(backend: str = "auto", device: str = "auto") -> World:
    """Join the process group of a ``torchrun`` job (once; later calls return the same :class:`~ppl_diffusion.distributed.World`).

    Without the launcher's variables this is a 1-process world and nothing is initialised. On CUDA, rank
    ``r`` uses the GPU ``LOCAL_RANK``.

    :param str backend: a name of :data:`~ppl_diffusion.distributed.DIST_BACKENDS`.
    :param str device: the job's device, which decides ``auto``.
    :rtype: World

    Example:

    >>> from ppl_diffusion.distributed import init, launched
    >>> w = init(device="cpu")  # without torchrun: one process, nothing initialised
    >>> launched() or (w.world_size, w.backend) == (1, None)
    True
    """
    global _WORLD
    if _WORLD.distributed or not launched():
        if not launched():
            resolve_backend(backend, device)  # the same one-line error for nccl without a GPU
        return _WORLD
    size = int(os.environ["WORLD_SIZE"])
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    name = resolve_backend(backend, device)
    if size == 1:
        _WORLD = World(rank=0, world_size=1, local_rank=local, backend=None)
        return _WORLD
    if name == "nccl":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=name)
    _WORLD = World(rank=rank, world_size=size, local_rank=local, backend=name)
    return _WORLD


def local_device(device: str) -> str:
    """The device string of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a multi-GPU job.

    Example:

    >>> from ppl_diffusion.distributed import local_device
    >>> local_device("cpu")
    'cpu'
    """
    w = world()
    if w.distributed and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{w.local_rank}"
    return device


def joined() -> bool:
    """Whether this process is in a torch.distributed process group (torchrun's, joined by :func:`~ppl_diffusion.distributed.init`).

    Example:

    >>> from ppl_diffusion.distributed import joined, world
    >>> joined() == world().distributed
    True
    """
    return dist.is_available() and dist.is_initialized()


def shutdown() -> None:
    """Leave the process group (at the end of a command); :func:`~ppl_diffusion.distributed.world` is one process again.

    Example:

    >>> from ppl_diffusion.distributed import shutdown, world
    >>> shutdown()
    >>> world().world_size
    1
    """
    global _WORLD
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()
