"""Progress of a long evaluation saved chunk by chunk, so that the same command killed at any moment continues.

A :class:`~ppl_diffusion.resume.Progress` is a folder (``RUN/eval.progress`` beside ``RUN/eval.json``) holding ``fingerprint.json`` (what
was evaluated: the checkpoint's hash, the data's hash, the seed and every option that changes a number) and one
file per finished chunk, ``<key>.npz``, written atomically (temporary file, fsync, rename:
:func:`~ppl_diffusion.checkpoint.atomic_write_bytes`). A chunk is a fixed group of the computation's own units
(a batch of examples, a group of denoiser calls), a function of the seed and its index alone (the noise is
counter-based, :mod:`ppl_diffusion.noise`), so a chunk that was saved is read back instead of recomputed and the
result is bit for bit that of an uninterrupted run (on the same machine and thread count: float rounding may
depend on them, as for training's resume).

A folder whose fingerprint differs from the command's is refused in one line naming the folder, the differences
and the fix (``--restart``, or deleting the folder); nothing is read from it and nothing is deleted. The command
that finishes removes the folder (:meth:`~ppl_diffusion.resume.Progress.finish`).

Code that computes in chunks takes a ``chunk`` callable, ``chunk(key, compute) -> dict of arrays``:
:func:`~ppl_diffusion.resume.compute_now` (the default: no saving) or a :class:`~ppl_diffusion.resume.Progress`'s :meth:`~ppl_diffusion.resume.Progress.scoped` view.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from .checkpoint import atomic_write_bytes

FINGERPRINT = "fingerprint.json"
Chunk = Callable[[str, Callable[[], dict]], dict]


def compute_now(key: str, compute: Callable[[], dict]) -> dict:
    """The default ``chunk``: compute, save nothing.

    :param str key: the chunk's name (unused).
    :param compute: a callable of no argument returning a dict of arrays.

    Example:

    >>> from ppl_diffusion.resume import compute_now
    >>> compute_now("batch-0", lambda: {"nll": [1.5, 2.5]})
    {'nll': [1.5, 2.5]}
    """
    return compute()


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 16 MiB blocks.

    Example:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from ppl_diffusion.resume import file_sha256
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = (Path(folder) / "empty").write_bytes(b"")
    ...     print(file_sha256(Path(folder) / "empty")[:16])
    e3b0c44298fc1c14
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def array_sha256(a) -> str:
    """The SHA-256 of an array's dtype, shape and bytes (hex): a fingerprint of data.

    :param a: a NumPy array or a :class:`torch.Tensor` (any device).
    :rtype: str

    Example:

    >>> import numpy as np
    >>> import torch
    >>> from ppl_diffusion.resume import array_sha256
    >>> array_sha256(torch.zeros(2, 3)) == array_sha256(np.zeros((2, 3), dtype=np.float32))
    True
    >>> array_sha256(np.zeros((2, 3), dtype=np.float32)) == array_sha256(np.zeros((3, 2), dtype=np.float32))
    False
    """
    a = np.ascontiguousarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _differences(saved: dict, now: dict) -> list[str]:
    keys = sorted(set(saved) | set(now))
    return [f"{k}: saved {saved.get(k, '(none)')}, now {now.get(k, '(none)')}" for k in keys
            if saved.get(k) != now.get(k)]


class Progress:
    """The chunks of one evaluation in ``folder``, for the configuration ``fingerprint`` (a JSON-able dict).

    :param folder: the progress folder, e.g. ``RUN/eval.progress``.
    :param dict fingerprint: what is computed (hashes, seed, options); a folder saved for another is refused.
    :param str flag: the command's flag that restarts, named in the refusal.

    Example:

    >>> import tempfile
    >>> import numpy as np
    >>> from ppl_diffusion.resume import Progress
    >>> with tempfile.TemporaryDirectory() as run:
    ...     first = Progress(f"{run}/eval.progress", {"seed": 0}).open()
    ...     a = first.chunk("batch-0", lambda: {"nll": np.array([1.5, 2.5])})
    ...     again = Progress(f"{run}/eval.progress", {"seed": 0}).open()  # the same command, run again
    ...     b = again.chunk("batch-0", lambda: 1 / 0)  # read back, not computed
    ...     print(np.array_equal(a["nll"], b["nll"]), again.reused, again.chunks())
    ...     try:
    ...         Progress(f"{run}/eval.progress", {"seed": 1}).open()
    ...     except ValueError as error:
    ...         print(str(error).replace(run, "RUN"))
    True 1 ['batch-0']
    RUN/eval.progress holds the progress of another configuration (seed: saved 0, now 1); pass --restart to discard
    it and start afresh, or delete the folder
    """

    def __init__(self, folder: str | Path, fingerprint: dict, *, flag: str = "--restart"):
        self.folder = Path(folder)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back (tuples become lists)
        self.flag = flag
        self.reused = 0  # chunks read back by this process
        self.saved = 0  # chunks computed and saved by this process

    def open(self, *, restart: bool = False) -> "Progress":
        """Check the folder's fingerprint; one-line ``ValueError`` for a folder of another configuration that holds
        chunks (``restart``: delete it and start afresh). The folder is written only with the first chunk, so a
        command that fails before computing anything leaves none behind, and a folder without chunks (such a
        command killed between the two writes) is simply taken over. Call on one process.

        :param bool restart: discard the folder's chunks first (``--restart``) instead of refusing a mismatch.
        :returns: this :class:`~ppl_diffusion.resume.Progress`.
        """
        path = self.folder / FINGERPRINT
        if restart and self.folder.exists():
            shutil.rmtree(self.folder)
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except ValueError:
                saved = {"fingerprint": "unreadable"}
            diff = _differences(saved, self.fingerprint)
            if diff and not self.chunks():
                shutil.rmtree(self.folder)  # nothing to lose
            elif diff:
                raise ValueError(f"{self.folder} holds the progress of another configuration ({'; '.join(diff)}); pass "
                                 f"{self.flag} to discard it and start afresh, or delete the folder")
        return self

    def _write_fingerprint(self) -> None:
        path = self.folder / FINGERPRINT
        if not path.is_file():  # every process may write it: the same bytes, each through its own temporary file
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, (json.dumps(self.fingerprint, indent=2) + "\n").encode())

    def chunks(self) -> list[str]:
        """The keys of the saved chunks."""
        return sorted(p.stem for p in self.folder.glob("*.npz")) if self.folder.is_dir() else []

    def chunk(self, key: str, compute: Callable[[], dict]) -> dict:
        """The arrays of chunk ``key``: read back if saved (and readable), else computed by ``compute()`` and saved.

        :param str key: the chunk's name (a file name stem).
        :param compute: a callable of no argument returning a dict of arrays.
        :returns: a dict of NumPy arrays.
        """
        path = self.folder / f"{key}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as f:
                    out = {k: f[k] for k in f.files}
                self.reused += 1
                return out
            except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # unreadable: computed again
                pass
        out = {k: np.asarray(v) for k, v in compute().items()}
        self._write_fingerprint()
        buffer = io.BytesIO()
        np.savez(buffer, **out)
        atomic_write_bytes(path, buffer.getbuffer())
        self.saved += 1
        return out

    def scoped(self, prefix: str) -> Chunk:
        """A ``chunk`` callable whose keys start with ``prefix`` (e.g. the weight set and the process's share)."""
        return lambda key, compute: self.chunk(f"{prefix}-{key}", compute)

    def finish(self) -> None:
        """Remove the folder: the evaluation is written. Call on one process, after every process is done."""
        shutil.rmtree(self.folder, ignore_errors=True)


def in_chunks(chunk: Chunk, key: str, units, per_chunk: int, compute_one: Callable[[object], dict]):
    """Yield ``(unit, compute_one(unit))`` for each of ``units`` in order, ``per_chunk`` units to a chunk
    ``f"{key}-{index}"`` of ``chunk``: a saved chunk's units are read back, not computed.

    :param chunk: :func:`~ppl_diffusion.resume.compute_now` or a :meth:`~ppl_diffusion.resume.Progress.scoped` view.
    :param str key: the chunks' name prefix.
    :param units: the units of work (e.g. batch indices).
    :param int per_chunk: units saved together.
    :param compute_one: ``compute_one(unit) -> dict of arrays``.

    Example:

    >>> import numpy as np
    >>> from ppl_diffusion.resume import compute_now, in_chunks
    >>> [(u, int(out["sq"])) for u, out in in_chunks(compute_now, "squares", [1, 2, 3], 2,
    ...                                              lambda u: {"sq": np.array(u * u)})]
    [(1, 1), (2, 4), (3, 9)]
    """
    units = list(units)
    per_chunk = max(1, int(per_chunk))
    for c in range(0, len(units), per_chunk):
        group = units[c:c + per_chunk]

        def compute(group=group):
            return {f"{i}/{k}": v for i, u in enumerate(group) for k, v in compute_one(u).items()}

        arrays = chunk(f"{key}-{c // per_chunk}", compute)
        for i, u in enumerate(group):
            yield u, {k.split("/", 1)[1]: v for k, v in arrays.items() if k.split("/", 1)[0] == str(i)}


def json_chunk(chunk: Chunk, key: str, compute: Callable[[], object]):
    """A JSON-able result (a pilot's profile, a fitted variance) as one chunk: floats read back exactly.

    Example:

    >>> import tempfile
    >>> from ppl_diffusion.resume import Progress, json_chunk
    >>> with tempfile.TemporaryDirectory() as run:
    ...     progress = Progress(f"{run}/p", {"seed": 0}).open()
    ...     _ = json_chunk(progress.chunk, "pilot", lambda: {"sigma": 0.1})
    ...     print(json_chunk(progress.chunk, "pilot", lambda: None))  # read back
    {'sigma': 0.1}
    """
    arrays = chunk(key, lambda: {"json": np.array(json.dumps(compute()))})
    return json.loads(str(arrays["json"]))


__all__ = ["Progress", "array_sha256", "compute_now", "file_sha256", "in_chunks", "json_chunk"]
