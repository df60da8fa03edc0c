"""The run folder: ``config.json``, the metrics log, where the run's data is (``absolute_data_root``,
:func:`~ppl_diffusion.train.run_dir.load_run_data`), and finding and restoring the checkpoint to resume from (checkpoint files themselves are
written by :mod:`ppl_diffusion.checkpoint`)."""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

from ..checkpoint import CheckpointError, atomic_write_bytes, list_checkpoints, load_checkpoint, set_rng_state
from ..data import FILE_DATASETS, Dataset, load_dataset
from ..distributed import World
from ..nets import UNET_PRESETS
from .config import FORMAT, METRICS_FORMATS, RESUMABLE_KEYS, TrainConfig

__all__ = ["METRIC_FIELDS", "MetricsLog", "load_run_data"]

#: The columns of every metrics row (a row of a validation step adds ``val_bpd``).
METRIC_FIELDS = ("step", "loss", "bpd", "running_bpd", "lr", "grad_norm", "elapsed")
VAL_FIELD = "val_bpd"  # with validation: the held-out bits/dim, in the rows of the steps it was computed at


def check_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a :class:`~pathlib.Path` if it is, or can become, a folder: a one-line ``ValueError`` naming it and
    the fix when it (or a folder above it) is an existing file, before anything is loaded or written."""
    run_dir = Path(run_dir)
    for path in (run_dir, *run_dir.parents):
        if path.exists() and not path.is_dir():
            where = "is an existing file" if path == run_dir else f"lies under {path}, an existing file"
            raise ValueError(f"run folder {run_dir} {where}; pass --run-dir a new folder or one of an earlier run")
    return run_dir


def absolute_data_root(data_root: str | Path | None) -> str | None:
    """``data_root`` as an absolute path (``~`` expanded, ``..`` folded, symbolic links kept), ``None`` as is: how
    a run stores its data folder, so that the run evaluates from any current folder. A relative root in an older
    run's config is read, as it always was, from the current folder."""
    return None if data_root is None else os.path.abspath(os.path.expanduser(os.fspath(data_root)))


def load_run_data(config: TrainConfig, data_root: str | Path | None = None, *, run: str | Path | None = None,
                  event_shape=None) -> Dataset:
    """The data set of a run's ``config``, read from ``data_root`` when given (where the data is now: the run or
    its data moved) or else from the folder the run stored.

    :param event_shape: the shape of the examples the run's net takes; data of another shape (another folder passed
        as ``--data-root``) is refused in one line.
    :raises ValueError: ``data_root`` given for a data set that reads no files (digits, the toys), or data whose
        examples are not of ``event_shape``.
    :raises FileNotFoundError: the folder is gone: one line naming it and the ``--data-root`` fix.

    :param config: the run's :class:`~ppl_diffusion.train.config.TrainConfig`.
    :param data_root: where a data set read from files is now, or ``None`` (the folder the run stored).
    :param run: the run folder, named in errors.

    Example:

    >>> from ppl_diffusion.train import TrainConfig
    >>> from ppl_diffusion.train.run_dir import load_run_data
    >>> load_run_data(TrainConfig(data="gaussian"), event_shape=(2,))
    Dataset('gaussian', train=[10000, 2], test=[2000, 2], bins=None, decoder='gaussian')
    """
    name, of_run = config.data, "" if run is None else f" of run {run}"
    if data_root is not None:
        if name not in FILE_DATASETS:
            raise ValueError(f"--data-root {data_root}: the data{of_run}, {name!r}, reads no files (only "
                             f"{', '.join(sorted(FILE_DATASETS))} do); drop --data-root")
        root = absolute_data_root(data_root)
        if not Path(root).is_dir():
            raise FileNotFoundError(f"--data-root {data_root}: no such folder; pass {FILE_DATASETS[name]}")
    elif name not in FILE_DATASETS:
        return load_dataset(name)
    else:
        root = config.data_root
        if root is None:
            raise ValueError(f"the data{of_run}, {name!r}, is read from files but no data folder is recorded; pass "
                             f"--data-root <{FILE_DATASETS[name]}>")
        if not Path(root).is_dir():
            where = "" if os.path.isabs(root) else f" (a relative path, read from the current folder {os.getcwd()})"
            raise FileNotFoundError(f"the data folder{of_run} ({name!r}), {root}{where}, does not exist; if the data "
                                    f"moved, pass --data-root <where it is now>")
    data = load_dataset(name, root)
    if event_shape is not None and tuple(data.event_shape) != tuple(event_shape):
        raise ValueError(f"the {name} data under {root} has examples of shape {list(data.event_shape)} but the "
                         f"run{'' if run is None else ' ' + str(run)} was trained on {list(event_shape)}; pass "
                         f"--data-root the folder it trained on")
    return data


class FreshStart:
    """What a training call may create or overwrite in ``run_dir`` before its first checkpoint, noted before it
    starts, so that :meth:`undo` leaves the folder as it was when the call fails before writing one."""

    FILES = ("config.json", *METRICS_FORMATS.values())

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.made = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # folders it will make, deepest first
        # A folder with checkpoints is a run: a failed resume leaves it alone (its files are those of a checkpoint).
        self.files = {} if list_checkpoints(run_dir) else {
            name: (run_dir / name).read_bytes() if (run_dir / name).is_file() else None for name in self.FILES}

    def undo(self) -> None:
        """Put back the files noted, and remove the folders made, unless the folder now holds a checkpoint."""
        if list_checkpoints(self.run_dir):
            return
        for name, data in self.files.items():
            path = self.run_dir / name
            if data is None:
                path.unlink(missing_ok=True)
            elif not path.is_file() or path.read_bytes() != data:
                atomic_write_bytes(path, data)
        for folder in self.made:
            try:
                folder.rmdir()
            except OSError:  # not empty (something else was put there meanwhile) or already gone
                break


def _config_diff(saved: dict, config: TrainConfig) -> list[str]:
    saved = {**TrainConfig.defaults(), **saved}  # a key added since the run was written has its default
    now = config.to_dict()
    if now.get("net") == "auto" and saved.get("net") in UNET_PRESETS:
        # a preset trains only on data of its shape, for which "auto" (the default since) builds that preset
        saved = {**saved, "net": "auto"}
    keys = sorted((set(saved) | set(now)) - set(RESUMABLE_KEYS))
    return [f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


class MetricsLog:
    """Metric rows appended to ``metrics.jsonl`` or ``metrics.csv``, cut back to a step on resume.

    With ``validation`` the rows may carry ``val_bpd`` (the CSV file gets that column, empty elsewhere).

    :param pathlib.Path run_dir: the run folder.
    :param str fmt: ``"jsonl"`` or ``"csv"`` (:data:`~ppl_diffusion.train.config.METRICS_FORMATS`).
    :param int upto_step: the rows of later steps in an existing file are dropped (0: the file starts empty).
    :param bool validation: rows may carry ``val_bpd``.

    Example:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from ppl_diffusion.train import METRIC_FIELDS, MetricsLog
    >>> with tempfile.TemporaryDirectory() as run:
    ...     log = MetricsLog(Path(run), "csv", 0)
    ...     for step in (1, 2, 3):
    ...         log.write({**dict.fromkeys(METRIC_FIELDS, 0.5), "step": step})
    ...     log.close()
    ...     MetricsLog(Path(run), "csv", 2).close()  # a run resumed from step 2 cuts the rows after it
    ...     print((Path(run) / "metrics.csv").read_text())
    step,loss,bpd,running_bpd,lr,grad_norm,elapsed
    1,0.5,0.5,0.5,0.5,0.5,0.5
    2,0.5,0.5,0.5,0.5,0.5,0.5
    """

    def __init__(self, run_dir: Path, fmt: str, upto_step: int, *, validation: bool = False) -> None:
        self.path = run_dir / METRICS_FORMATS[fmt]
        self.fmt = fmt
        self.fields = METRIC_FIELDS + ((VAL_FIELD,) if validation else ())
        rows = self._read(upto_step)
        buf = io.StringIO()
        if fmt == "csv":
            writer = csv.DictWriter(buf, self.fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        else:
            buf.writelines(json.dumps(r) + "\n" for r in rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())
        self.file = open(self.path, "a", newline="")

    def _read(self, upto_step: int) -> list[dict]:
        """The rows of the existing file with step <= ``upto_step``; torn or unparsable lines dropped."""
        if upto_step == 0 or not self.path.exists():
            return []
        rows = []
        with open(self.path, newline="") as f:
            lines = list(csv.DictReader(f)) if self.fmt == "csv" else f.read().splitlines()
        for line in lines:
            try:
                row = line if self.fmt == "csv" else json.loads(line)
                if int(row["step"]) <= upto_step and all(row.get(k) not in (None, "") for k in METRIC_FIELDS):
                    rows.append({k: row[k] for k in self.fields if row.get(k) not in (None, "")})
            except (ValueError, KeyError, TypeError):
                continue
        return rows

    def write(self, row: dict) -> None:
        """Append ``row`` (a dict of :data:`~ppl_diffusion.train.run_dir.METRIC_FIELDS`) and flush it."""
        if self.fmt == "csv":
            csv.DictWriter(self.file, self.fields, lineterminator="\n").writerow(row)
        else:
            self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        """Close the file."""
        self.file.close()


class NullMetricsLog:
    """What ranks other than 0 write: nothing."""

    file = SimpleNamespace(flush=lambda: None)

    def write(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass



def _restore(path: Path, config: TrainConfig, trainer, batches, world: World | None = None,
             allow_inexact: bool = False) -> dict:
    """Read the checkpoint ``path`` and put its state into ``trainer`` and ``batches``; the state dict."""
    return _apply(path, load_checkpoint(path), config, trainer, batches, world or World(), allow_inexact)


def _apply(path: Path, state: dict, config: TrainConfig, trainer, batches, world: World,
           allow_inexact: bool = False) -> dict:
    if state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state.get('format')!r}, expected {FORMAT!r}; "
                              "it was not written by this version of ppl_diffusion.train")
    diff = _config_diff(state.get("config", {}), config)
    if diff:
        raise CheckpointError(f"checkpoint {path} is from a different configuration ({'; '.join(diff)}); "
                              "resume with the saved settings or start a new run folder")
    saved_world = int(state.get("config", {}).get("world_size", 1))
    if saved_world != world.world_size:
        check_world_size_change(config, saved_world, world.world_size, allow_inexact)
    try:
        trainer.load(state)
        batches.load_state_dict(state["batches"])
        rng = state["rng"]
        ranks = state.get("rank_rng")
        if ranks is not None and len(ranks) == world.world_size:
            rng = ranks[world.rank]  # each rank's own generators (same world size)
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} does not fit this model ({reason}); "
                              "resume with the configuration that wrote it or start a new run folder") from None
    set_rng_state(rng)
    # The backend's own generators (JAX keys); None when the checkpoint was written by the other backend.
    saved_backend = state.get("config", {}).get("backend", "pyro")
    trainer.set_rng_state(rng.get(config.backend) if saved_backend == config.backend else None)
    return state


def world_size_change_is_exact(config: TrainConfig) -> tuple[bool, str]:
    """Whether a run resumed on another number of processes (same global batch) continues exactly as the
    uninterrupted run (up to float32 reduction order), and if not, why.

    Every draw of a training step is made for the global batch and sliced by rank
    (:class:`~ppl_diffusion.infer.draws.BatchDraws`), the data order is global and the sampler, optimizer and EMA
    are the same on every rank, so a change of world size changes only which rank holds which rows. The one
    exception is a draw that bypasses ``BatchDraws``: the hybrid loss's Monte-Carlo prior term (a prior
    without a closed-form KL) draws from each rank's own generator.
    """
    if config.estimator == "hybrid" and config.prior not in ("normal", "gaussian"):
        return False, (f"the hybrid loss scores prior {config.prior!r} by a Monte-Carlo draw from each rank's own "
                       "generator")
    return True, ""


def check_world_size_change(config: TrainConfig, saved: int, now: int, allow_inexact: bool) -> None:
    """A one-line error (or, with ``allow_inexact``, a warning) when resuming on ``now`` processes a run written
    on ``saved`` cannot continue exactly; nothing when it can."""
    exact, why = world_size_change_is_exact(config)
    if exact:
        return
    msg = (f"resuming on {now} process(es) a run written on {saved}: {why}, so it would not continue as the "
           f"uninterrupted run")
    if not allow_inexact:
        raise ValueError(f"{msg}; resume with torchrun --nproc-per-node {saved} (same total processes), or pass "
                         "--allow-inexact-resume to continue anyway")
    warnings.warn(f"{msg}; continuing (--allow-inexact-resume)", UserWarning, stacklevel=2)


def _find_resume_point(run_dir: Path, restore) -> dict:
    """Restore the newest readable checkpoint; warn about unreadable newer ones."""
    found = list_checkpoints(run_dir)
    if not found:
        raise ValueError(f"nothing to resume in {run_dir}: it holds no ckpt-*.pt checkpoint; "
                         "start without --resume (or point to the run folder that has them)")
    errors = []
    for path in reversed(found):
        try:
            return restore(path)
        except CheckpointError as e:
            if "different configuration" in str(e) or "does not fit" in str(e):
                raise
            errors.append(str(e))
            warnings.warn(f"{e}; trying the previous checkpoint", UserWarning, stacklevel=3)
    raise CheckpointError(f"no readable checkpoint in {run_dir}: {errors[0]} (and {len(errors) - 1} more)")



def _last(run_dir: Path) -> str:
    found = list_checkpoints(run_dir)
    return str(found[-1]) if found else "none (no checkpoint was written yet)"

