"""Training checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is one ``torch.save`` file ``ckpt-{step:08d}.pt`` in the run folder holding a dict of
tensors, numbers, strings, ``None``, lists, tuples and dicts only, so that it loads with
``torch.load(..., weights_only=True)``. Writing goes to ``<name>.tmp-<pid>`` in the same folder, is
flushed and ``fsync``-ed, renamed over the final name with ``os.replace`` (atomic on POSIX) and the
folder is ``fsync``-ed, so a process killed at any moment leaves either the old file set or the new
one, never a torn checkpoint. Leftover temporary files of a killed writer are removed by
:func:`~ppl_diffusion.checkpoint.remove_stale_temporaries`.

The random-number generators are saved in the same tensor form (:func:`~ppl_diffusion.checkpoint.rng_state`,
:func:`~ppl_diffusion.checkpoint.set_rng_state`): torch's CPU (and CUDA) generator, which Pyro draws from, NumPy's global
generator and Python's ``random``.
"""

from __future__ import annotations

import io
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

__all__ = ["BEST_NAME", "CheckpointError", "atomic_write_bytes", "checkpoint_path", "latest_checkpoint",
           "list_checkpoints", "load_checkpoint", "prune_checkpoints", "remove_stale_temporaries", "rng_state",
           "run_checkpoint", "save_checkpoint", "set_rng_state"]

CHECKPOINT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")
#: The file name of the best weights by validation (``ppl_diffusion.train.validation``), beside the checkpoints of
#: a run folder.
BEST_NAME = "best.pt"
TMP_MARK = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, truncated, or from another configuration.

    Example:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from ppl_diffusion.checkpoint import CheckpointError, load_checkpoint
    >>> with tempfile.TemporaryDirectory() as run:
    ...     _ = (Path(run) / "ckpt-00000001.pt").write_bytes(b"not a checkpoint")
    ...     try:
    ...         load_checkpoint(Path(run) / "ckpt-00000001.pt")
    ...     except CheckpointError as error:
    ...         print(str(error).split("(")[0].replace(run, "RUN"))
    checkpoint RUN/ckpt-00000001.pt is corrupt or truncated
    """


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """``run_dir/ckpt-{step:08d}.pt``.

    Example:

    >>> from ppl_diffusion.checkpoint import checkpoint_path
    >>> checkpoint_path("runs/digits", 1500).as_posix()
    'runs/digits/ckpt-00001500.pt'
    """
    return Path(run_dir) / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoints in ``run_dir``, oldest (lowest step) first; temporary files are ignored.

    Example:

    >>> import tempfile
    >>> from ppl_diffusion.checkpoint import checkpoint_path, list_checkpoints, save_checkpoint
    >>> with tempfile.TemporaryDirectory() as run:
    ...     for step in (200, 100):
    ...         _ = save_checkpoint(checkpoint_path(run, step), {"step": step})
    ...     print([p.name for p in list_checkpoints(run)])
    ['ckpt-00000100.pt', 'ckpt-00000200.pt']
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if CHECKPOINT_RE.match(p.name) and p.is_file()]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the highest step in ``run_dir``, or ``None``.

    Example:

    >>> import tempfile
    >>> from ppl_diffusion.checkpoint import checkpoint_path, latest_checkpoint, save_checkpoint
    >>> with tempfile.TemporaryDirectory() as run:
    ...     print(latest_checkpoint(run))
    ...     for step in (100, 200):
    ...         _ = save_checkpoint(checkpoint_path(run, step), {"step": step})
    ...     print(latest_checkpoint(run).name)
    None
    ckpt-00000200.pt
    """
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def run_checkpoint(run_dir: str | Path, *, last: bool = False) -> Path | None:
    """The weights a run folder stands for: ``best.pt`` (the best by validation) when the run has one and
    ``last`` is false, else its newest checkpoint; ``None`` if it has neither.

    Example:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from ppl_diffusion.checkpoint import BEST_NAME, checkpoint_path, run_checkpoint, save_checkpoint
    >>> with tempfile.TemporaryDirectory() as run:
    ...     _ = save_checkpoint(checkpoint_path(run, 100), {"step": 100})
    ...     _ = save_checkpoint(Path(run) / BEST_NAME, {"step": 50})
    ...     print(run_checkpoint(run).name, run_checkpoint(run, last=True).name)
    best.pt ckpt-00000100.pt
    """
    best = Path(run_dir) / BEST_NAME
    if not last and best.is_file():
        return best
    return latest_checkpoint(run_dir)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, flush, fsync, rename, fsync the folder).

    A process killed at any moment leaves the old file or the new one at ``path``, never a part of either.

    :param path: the file to write (its folder must exist).
    :param bytes data: the bytes (or a buffer).

    Example:

    >>> import os, tempfile
    >>> from pathlib import Path
    >>> from ppl_diffusion.checkpoint import atomic_write_bytes
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     atomic_write_bytes(Path(folder) / "config.json", b"{}")
    ...     print(os.listdir(folder), (Path(folder) / "config.json").read_bytes())
    ['config.json'] b'{}'
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Save ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically; return ``path``.

    :param path: the file, usually :func:`~ppl_diffusion.checkpoint.checkpoint_path`; its folder is created.
    :param dict state: the training state; only types that ``torch.load(..., weights_only=True)`` reads back.
    :rtype: pathlib.Path

    Example:

    >>> import tempfile
    >>> import torch
    >>> from ppl_diffusion.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
    >>> state = {"step": 7, "weights": {"w": torch.arange(6.0).reshape(2, 3)}, "note": None}
    >>> with tempfile.TemporaryDirectory() as run:
    ...     back = load_checkpoint(save_checkpoint(checkpoint_path(run, 7), state))
    >>> back["step"], torch.equal(back["weights"]["w"], state["weights"]["w"]), back["note"]
    (7, True, None)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getbuffer())
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; :class:`~ppl_diffusion.checkpoint.CheckpointError` naming the file if unusable.

    :param path: a ``ckpt-*.pt`` (or ``best.pt``) file.
    :param map_location: where tensors go, as for ``torch.load`` (default the CPU).
    :rtype: dict
    :raises CheckpointError: for a missing, corrupt or truncated file, or one that does not hold a dict.

    Example:

    >>> import tempfile
    >>> import torch
    >>> from ppl_diffusion.checkpoint import load_checkpoint, save_checkpoint
    >>> with tempfile.TemporaryDirectory() as run:
    ...     state = load_checkpoint(save_checkpoint(f"{run}/ckpt-00000001.pt", {"x": torch.ones(2)}))
    >>> state["x"]
    tensor([1., 1.])
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a ckpt-*.pt file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {reason}); "
                              "delete it to resume from an earlier checkpoint") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a training state dict; "
                              "pass a ckpt-*.pt file written by ppl_diffusion.train")
    return state


def prune_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints in ``run_dir``; return the deleted paths.

    Example:

    >>> import tempfile
    >>> from ppl_diffusion.checkpoint import checkpoint_path, list_checkpoints, prune_checkpoints, save_checkpoint
    >>> with tempfile.TemporaryDirectory() as run:
    ...     for step in (100, 200, 300):
    ...         _ = save_checkpoint(checkpoint_path(run, step), {"step": step})
    ...     print([p.name for p in prune_checkpoints(run, keep=1)], [p.name for p in list_checkpoints(run)])
    ['ckpt-00000100.pt', 'ckpt-00000200.pt'] ['ckpt-00000300.pt']
    """
    old = list_checkpoints(run_dir)[:-keep] if keep > 0 else list_checkpoints(run_dir)
    for p in old:
        p.unlink(missing_ok=True)
    return old


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Remove ``*.tmp-<pid>`` files left in ``run_dir`` by a writer that was killed; return them.

    Example:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from ppl_diffusion.checkpoint import remove_stale_temporaries
    >>> with tempfile.TemporaryDirectory() as run:
    ...     _ = (Path(run) / "ckpt-00000100.pt.tmp-4242").write_bytes(b"torn")
    ...     print([p.name for p in remove_stale_temporaries(run)], list(Path(run).iterdir()))
    ['ckpt-00000100.pt.tmp-4242'] []
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    stale = [p for p in run_dir.iterdir() if TMP_MARK in p.name and p.name.rsplit(TMP_MARK, 1)[1].isdigit()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """Every global generator's state as tensors and plain numbers (``weights_only``-loadable).

    The generators are torch's CPU generator (and the CUDA ones once CUDA is initialised), NumPy's global
    generator and Python's ``random``; :func:`~ppl_diffusion.checkpoint.set_rng_state` restores them.

    Example:

    >>> import random
    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion.checkpoint import rng_state, set_rng_state
    >>> state = rng_state()
    >>> sorted(state)
    ['cuda', 'numpy', 'python', 'torch']
    >>> first = torch.rand(2), np.random.rand(), random.random()
    >>> set_rng_state(state)
    >>> again = torch.rand(2), np.random.rand(), random.random()
    >>> torch.equal(first[0], again[0]), first[1:] == again[1:]
    (True, True)
    """
    version, mt, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
    }


def set_rng_state(state: dict) -> None:
    """Restore the generators saved by :func:`~ppl_diffusion.checkpoint.rng_state` (example there).

    :param dict state: a :func:`~ppl_diffusion.checkpoint.rng_state`, possibly read back from a checkpoint.

    Example: the state survives a round trip through a file, as in a checkpoint.

    >>> import io
    >>> import torch
    >>> from ppl_diffusion.checkpoint import rng_state, set_rng_state
    >>> buffer = io.BytesIO()
    >>> torch.save(rng_state(), buffer)
    >>> first = torch.rand(3)
    >>> _ = buffer.seek(0)
    >>> set_rng_state(torch.load(buffer, weights_only=True))
    >>> torch.equal(torch.rand(3), first)
    True
    """
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
