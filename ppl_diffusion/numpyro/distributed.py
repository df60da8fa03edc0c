"""Data parallelism on JAX: a :class:`~jax.sharding.Mesh` over every device, the batch sharded, the weights replicated.

The JAX twin of :mod:`ppl_diffusion.distributed` (``torch.distributed``). There are no ranks to program
against here: a jitted function is given its inputs' shardings, and XLA partitions it (each device computes
its slice of the batch; the mean loss and the gradient are all-reduced by the compiler), so the training
step, the compiled bound and the sampler are the same programs on 1 and N devices:

- :func:`mesh`: the devices of :func:`jax.devices` (every process's, on several hosts) along one axis
  :data:`AXIS` = ``"data"``;
- :func:`batch_sharding` (axis 0 split over the mesh) and :func:`replicated` (a full copy on every device);
- :func:`global_batch`: the global ``[B x ...]`` array of a batch, each process supplying only the rows of its
  own devices (read from the full data set every process holds, by the global index);
- :func:`initialize`: joins a multi-host job (``jax.distributed.initialize``) when launched as one.

**Same numbers as one device.** Random draws inside a jitted function depend on the key and the shape only,
not on how the result is sharded, and with ``jax_threefry_partitionable`` (on by default in jax 0.10,
checked in ``tests/test_numpyro_sharding.py``) each device draws just its own slice. What differs is the
order of the floating-point sums across devices (the batch mean, the gradient), so 1 and N devices agree to
float32 rounding, not bit for bit: ~1e-7 on the weights after 12 steps (tested to 1e-5); the bound and the
samples, which sum nothing across devices, matched exactly.

**Micro-batches** (``--microbatch M``): the training step scores its global batch in chunks under
:func:`micro_batch`, each of M rows of every process's part (:func:`micro_batch_rows`); while one is traced, every
random draw along the batch (the guide's latents, the compiled chain's noise, dropout masks) is made for the whole
global batch and the chunk's rows kept (:func:`take_rows`), so the chunks together make the unsplit step's draws.

**Several hosts**, one process per host (the launcher starts the same command on each): set
``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, or
launch under SLURM (``srun``) or Open MPI (``mpirun``), which JAX detects itself. Every process reads the
whole data set and walks the same batch order (same seed); each feeds its devices' part of the global batch.
Results are replicated, so every process holds the weights, the bound and the samples; :func:`is_main`
(process 0) is the one meant to write files. CPU hosts need ``JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo``.
Tested with 2 processes on one machine (``-m slow``).

Example:

>>> import numpy as np
>>> from ppl_diffusion.numpyro import distributed as dp
>>> x = dp.global_batch(np.zeros((4 * dp.num_devices(), 2), np.float32))   # sharded along the mesh axis "data"
>>> x.shape[0] == 4 * dp.num_devices(), dp.mesh().axis_names
(True, ('data',))
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

#: The mesh axis the batch is split along.
AXIS = "data"  # the mesh axis the batch is split along
COORDINATOR_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _auto_detected_job() -> str | None:
    """The multi-process launcher JAX detects by itself, or None: a SLURM job step of several tasks (``srun``;
    not the batch script itself, which is one process whatever the allocation) or an Open MPI job of several."""
    env = os.environ
    if "SLURM_JOB_ID" in env and "SLURM_STEP_NODELIST" in env and int(env.get("SLURM_STEP_NUM_TASKS", 1)) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", 1)) > 1:
        return "ompi"
    return None


def initialize() -> bool:
    """Join a multi-host JAX job if this process was launched as one (once; later calls do nothing); whether
    the job has several processes.

    With ``JAX_COORDINATOR_ADDRESS`` set, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` are required and
    passed on; under SLURM (more than one task) or Open MPI, ``jax.distributed.initialize()`` finds them
    itself. Otherwise this is a no-op: one process, with every local device. Must run before the first JAX
    computation of the process (:func:`mesh` calls it).

    Example (one process):

    >>> from ppl_diffusion.numpyro.distributed import initialize
    >>> initialize()
    False
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        missing = [k for k in COORDINATOR_ENV[1:] if not os.environ.get(k)]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} not; set all of "
                             f"{', '.join(COORDINATOR_ENV)} on every process (or unset it for one process)")
        try:
            num, pid = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
        except ValueError:
            raise ValueError(f"JAX_NUM_PROCESSES = {os.environ['JAX_NUM_PROCESSES']!r}, JAX_PROCESS_ID = "
                             f"{os.environ['JAX_PROCESS_ID']!r}; set both to integers") from None
        _join(os.environ["JAX_COORDINATOR_ADDRESS"], num_processes=num, process_id=pid)
    elif _auto_detected_job():
        _join()
    else:
        return False
    return jax.process_count() > 1


def _join(*args, **kwargs) -> None:
    try:
        jax.distributed.initialize(*args, **kwargs)
    except RuntimeError as e:
        raise RuntimeError(f"{e}: a multi-host JAX job is joined before the first JAX computation; call "
                           "ppl_diffusion.numpyro.distributed.initialize() at the start of the program") from e


@functools.cache
def mesh() -> Mesh:
    """The 1-axis mesh (:data:`AXIS`) over every device of the job, in :func:`jax.devices` order.

    :rtype: :class:`jax.sharding.Mesh`

    Example:

    >>> import jax
    >>> from ppl_diffusion.numpyro.distributed import mesh
    >>> mesh().axis_names, mesh().size == len(jax.devices())
    (('data',), True)
    """
    initialize()
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def num_devices() -> int:
    """Devices the batch is sharded over (all processes together).

    Example:

    >>> import jax
    >>> from ppl_diffusion.numpyro.distributed import num_devices
    >>> num_devices() == jax.device_count()
    True
    """
    return mesh().size


def batch_sharding() -> NamedSharding:
    """Axis 0 (the batch) split into equal contiguous slices, device i holding the i-th.

    Example:

    >>> from ppl_diffusion.numpyro.distributed import batch_sharding
    >>> tuple(batch_sharding().spec)
    ('data',)
    """
    return NamedSharding(mesh(), PartitionSpec(AXIS))


def replicated() -> NamedSharding:
    """A full copy on every device (weights, optimizer state, keys, scalars).

    Example:

    >>> from ppl_diffusion.numpyro.distributed import replicated
    >>> replicated().is_fully_replicated
    True
    """
    return NamedSharding(mesh(), PartitionSpec())


def sharding_for(n: int) -> NamedSharding:
    """:func:`batch_sharding` for a batch of ``n`` examples that divides evenly over the devices, else
    :func:`replicated` (a ragged last chunk of an evaluation or of samples: the same numbers, unsplit).

    Example:

    >>> from ppl_diffusion.numpyro.distributed import batch_sharding, num_devices, sharding_for
    >>> sharding_for(8 * num_devices()) == batch_sharding()
    True
    """
    return batch_sharding() if n % num_devices() == 0 else replicated()


def check_global_batch(batch_size: int) -> None:
    """A one-line error unless the global batch ``batch_size`` splits evenly over the devices.

    :raises ValueError: naming the nearest multiples of the device count.

    Example:

    >>> from ppl_diffusion.numpyro.distributed import check_global_batch, num_devices
    >>> check_global_batch(4 * num_devices())   # no error
    """
    n = num_devices()
    if batch_size % n:
        lo = batch_size - batch_size % n
        raise ValueError(f"global batch size {batch_size} is not divisible by the {n} JAX devices it is sharded "
                         f"over; pass --batch-size {lo or n} or {lo + n} (a multiple of {n}; --batch-size is the "
                         "global batch)")


def global_batch(data: np.ndarray, index: np.ndarray | None = None, sharding: NamedSharding | None = None) -> jax.Array:
    """The global array ``data[index]`` ``[B x ...]`` (``data`` itself without ``index``) placed with ``sharding``
    (default :func:`sharding_for` B). Each process gathers only the rows of its own devices' slices.

    :param data: the full data set (NumPy), ``[N x ...]``.
    :param index: the global batch's rows ``int[B]``, or None for all of ``data``.
    :param sharding: the placement (default :func:`sharding_for` B).
    :returns: a global :class:`jax.Array` ``[B x ...]``.

    Example:

    >>> import numpy as np
    >>> from ppl_diffusion.numpyro.distributed import global_batch
    >>> data = np.arange(10.0).reshape(5, 2)
    >>> np.asarray(global_batch(data, np.array([4, 0]))).tolist()
    [[8.0, 9.0], [0.0, 1.0]]
    """
    n = len(data) if index is None else len(index)
    sharding = sharding_for(n) if sharding is None else sharding
    rows = (lambda s: data[s]) if index is None else (lambda s: data[index[s]])
    return jax.make_array_from_callback((n, *data.shape[1:]), sharding, lambda idx: rows(idx[0]))


def replicate(tree):
    """Every array of ``tree`` copied to every device (a no-op for arrays already placed so). On several hosts the
    value must be the same on every process (the state built from the same seed, or restored from one file).

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.distributed import replicate
    >>> tree = replicate({"w": jnp.ones(3)})
    >>> tree["w"].sharding.is_fully_replicated
    True
    """
    target = replicated()

    def put(x):
        # Exactly this sharding, committed: an array merely equivalent to it (one device's, uncommitted) would give
        # a jitted step another input type than its own outputs, and a second compile.
        if isinstance(x, jax.Array) and x.committed and x.sharding == target:
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, target)
        # A process's own (committed) array cannot be device_put onto other hosts' devices: rebuild it globally.
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        value = np.asarray(x)
        return jax.make_array_from_callback(value.shape, target, lambda idx: value[idx])

    return jax.tree.map(put, tree)


def describe(batch_size: int | None = None) -> str:
    """One line for the log: how many devices (and processes) the batch is sharded over.

    Example:

    >>> from ppl_diffusion.numpyro.distributed import describe
    >>> print(describe(64))
    numpyro: batch sharded over ... JAX device... along mesh axis 'data'; ... examples per device of the global batch 64
    """
    n, procs = num_devices(), jax.process_count()
    where = f"{n} JAX device{'s' if n > 1 else ''} ({jax.devices()[0].platform}"
    where += f", {procs} processes)" if procs > 1 else ")"
    per = f"; {batch_size // n} examples per device of the global batch {batch_size}" if batch_size else ""
    return f"numpyro: batch sharded over {where} along mesh axis {AXIS!r}{per}"


def is_main() -> bool:
    """Process 0: the one that writes files and logs (every process of a multi-host job holds the results).

    Example (one process):

    >>> from ppl_diffusion.numpyro.distributed import is_main
    >>> is_main()
    True
    """
    return jax.process_index() == 0


def log(line: str) -> None:
    """``line`` on stderr, from process 0 only.

    :param str line: the message.

    Example:

    >>> import contextlib
    >>> import io
    >>> from ppl_diffusion.numpyro.distributed import log
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     log("step 1")
    >>> err.getvalue()
    'step 1\\n'
    """
    if is_main():
        print(line, file=sys.stderr, flush=True)


_MICRO_BATCH: list = []


@contextlib.contextmanager
def micro_batch(rows, size: int):
    """Inside (while a function is traced): the computation scores rows ``rows`` (an int array ``[m]``, traced or
    not) of a global batch of ``size`` examples; draws along the batch are made for ``size`` rows and sliced
    (:func:`take_rows`).

    :param rows: the micro-batch's rows of the global batch, ``int[m]``.
    :param int size: the global batch's size.

    Example (a draw for the global batch of 4, its rows 2 and 3 kept):

    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.distributed import global_rows, micro_batch, take_rows
    >>> full = jax.random.normal(jax.random.key(0), (4, 2))
    >>> with micro_batch(jnp.array([2, 3]), 4):
    ...     shape = global_rows((2, 2))
    ...     part = take_rows(jax.random.normal(jax.random.key(0), shape))
    >>> shape, bool(jnp.array_equal(part, full[2:]))
    ((4, 2), True)
    """
    _MICRO_BATCH.append((rows, int(size)))
    try:
        yield
    finally:
        _MICRO_BATCH.pop()


def current_micro_batch():
    """(rows, size) of the innermost :func:`micro_batch`, or None.

    Example:

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.distributed import current_micro_batch, micro_batch
    >>> current_micro_batch() is None
    True
    >>> with micro_batch(jnp.array([0, 1]), 4):
    ...     current_micro_batch()[1]
    4
    """
    return _MICRO_BATCH[-1] if _MICRO_BATCH else None


def global_rows(shape, axis: int = 0):
    """``shape`` with its batch axis the global batch's size under :func:`micro_batch` (``shape`` itself outside):
    the shape to draw before :func:`take_rows`. The batch axis must hold whole examples (k rows each).

    :param shape: the micro-batch's shape.
    :param int axis: the batch axis.

    Example: 2 rows per example along axis 1, one example of a global batch of 3 (:func:`micro_batch` has a draw).

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.distributed import global_rows, micro_batch
    >>> with micro_batch(jnp.array([1]), 3):
    ...     global_rows((5, 2, 4), axis=1)
    (5, 6, 4)
    >>> global_rows((5, 2, 4), axis=1)  # outside a micro-batch
    (5, 2, 4)
    """
    active = current_micro_batch()
    if active is None:
        return tuple(shape)
    rows, size = active
    k, rest = divmod(shape[axis], rows.shape[0])
    if rest or not k:
        raise ValueError(f"a draw of {shape[axis]} rows in a micro-batch of {rows.shape[0]} examples")
    return tuple(shape[:axis]) + (size * k,) + tuple(shape[axis + 1:])


def take_rows(x, axis: int = 0):
    """The micro-batch's rows of ``x`` (drawn with the shape of :func:`global_rows`) along ``axis``; ``x`` outside a
    micro-batch. k rows per example are taken as k consecutive rows (grouped by example).

    :param x: an array drawn with the shape of :func:`global_rows`.
    :param int axis: the batch axis.

    Example: a global batch of 3 examples, 2 rows each; the micro-batch holds examples 0 and 2.

    >>> import jax.numpy as jnp
    >>> from ppl_diffusion.numpyro.distributed import micro_batch, take_rows
    >>> x = jnp.arange(6)
    >>> with micro_batch(jnp.array([0, 2]), 3):
    ...     take_rows(x).tolist()
    [0, 1, 4, 5]
    >>> take_rows(x) is x  # outside a micro-batch
    True
    """
    active = current_micro_batch()
    if active is None:
        return x
    import jax.numpy as jnp

    rows, size = active
    k = x.shape[axis] // size
    index = rows if k == 1 else (rows[:, None] * k + jnp.arange(k)[None]).reshape(-1)
    return jnp.take(x, index, axis=axis)


def micro_batch_rows(batch_size: int, microbatch: int, processes: int = 1) -> np.ndarray:
    """``[chunks x processes·microbatch]`` int32: chunk c holds rows c·M .. (c + 1)·M − 1 of every process's
    contiguous part of the global batch (the per-process batch split in chunks of M, as on the Pyro backend).

    :param int batch_size: the global batch.
    :param int microbatch: M, rows per process per chunk.
    :param int processes: the number of processes.

    Example (a global batch of 8 over 2 processes, in chunks of 2 rows each):

    >>> from ppl_diffusion.numpyro.distributed import micro_batch_rows
    >>> micro_batch_rows(8, 2, processes=2).tolist()
    [[0, 1, 4, 5], [2, 3, 6, 7]]
    """
    local = batch_size // processes
    starts = np.arange(processes)[:, None] * local + np.arange(0, local, microbatch)[None, :]  # [P x chunks]
    rows = starts.T[:, :, None] + np.arange(microbatch)[None, None, :]  # [chunks x P x M]
    return rows.reshape(rows.shape[0], -1).astype(np.int32)


__all__ = ["AXIS", "batch_sharding", "check_global_batch", "current_micro_batch", "describe", "global_batch",
           "global_rows", "initialize", "is_main", "log", "mesh", "micro_batch", "micro_batch_rows", "num_devices",
           "replicate", "replicated", "sharding_for", "take_rows"]
