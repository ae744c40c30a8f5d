"""The durable on-disk record (DESIGN.md, "The durable record"): what analysis reads.

    <run_dir>/normx/meta.json, vocab.json, gold.npz, metrics.jsonl, snapshots/step_XXXXXXXX.npz

Every file is replaced atomically (`normx_track.record.atomic`: temp file in the same folder,
fsync, rename), so a crash or a full disk mid-write leaves the previous version intact.
Non-finite metric values are written as JSON `null` (strict JSON for other tools) and read
back as NaN.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import time
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from normx_track.errors import InputError
from normx_track.record.atomic import AtomicWriteError, atomic_open, atomic_save_npz, atomic_write_json

__all__ = ["RecordLock", "RecordLockedError", "AtomicWriteError", "RecordWriter", "RunFolderError",
           "check_run_folder", "list_snapshots", "vocab_hash",
           "load_snapshot", "read_json", "read_metrics", "record_dir", "set_aside", "aside_name"]

log = logging.getLogger(__name__)
RECORD_DIR = "normx"
_SNAPSHOT = re.compile(r"step_(\d{8,})\.npz$")


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def aside_name(path: Path, label: str) -> Path:
    """`<path>.<label>-<time>` (with ~N added if taken)."""
    base = f"{path.name}.{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    target, n = path.with_name(base), 1
    while target.exists():
        target, n = path.with_name(f"{base}~{n}"), n + 1
    return target


def _copy_aside(path: Path, label: str) -> Path:
    target = aside_name(path, label)
    shutil.copy2(path, target)
    return target


def set_aside(run_dir: str | Path, name: str = RECORD_DIR) -> Path | None:
    """Rename `<run_dir>/<name>` (the record, by default) to `<name>.replaced-<time>` if it
    holds anything, so a fresh run in the same folder cannot overwrite it, nor be mixed
    with it; returns the new path (None: nothing there)."""
    record = Path(run_dir) / name
    if not record.is_dir() or not any(record.iterdir()):
        return None
    target = aside_name(record, "replaced")
    record.rename(target)
    return target


class RunFolderError(InputError):
    """The run folder cannot hold a run (a file, read-only); the message names it."""


# What a run keeps in its folder: a file in their place would stop it midway.
RUN_PARTS = {RECORD_DIR: "record", "checkpoints": "checkpoints", "figures": "figures",
             ".hydra": "Hydra job files"}


def check_run_folder(run_dir: str | Path, parts: dict[str, str] = RUN_PARTS) -> None:
    """Refuse, before anything in it changes, a run folder that is a file, that cannot be
    written (it, or the nearest existing folder above it when it does not exist yet), or
    that holds a file where the run keeps one of its folders."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: the run folder is a file; choose another "
                             "hydra.run.dir (or output_dir)")
    existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(f"{existing}: cannot write there (read-only or not yours), so "
                             f"{run_dir} cannot hold the run; choose another hydra.run.dir "
                             "(or output_dir)")
    for name, what in parts.items():
        path = run_dir / name
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"{path}: a file where the run keeps its {what} folder; "
                                 "move it away or choose another hydra.run.dir")


class RecordLockedError(RuntimeError):
    """Another live run writes the record folder; the message names the folder and owner."""


class RecordLock:
    """An exclusive lock on a run's record: ``<run_dir>/normx.lock`` holding the owner's pid,
    host and start time, created with O_EXCL so two runs cannot both take it. A lock left by
    a process that died on this host (kill -9) is taken over with a warning; one from
    another host is not (its process cannot be checked from here).

    Re-entrant within a process: `train.py` holds the folder from start-up to exit, and the
    tracker inside it takes the lock again when it opens the record; each `acquire` returns
    a handle, and the file goes when the outermost handle is released."""

    _held: dict[str, int] = {}  # lock path -> handles this process holds on it

    def __init__(self, path: Path):
        self.path = path
        self._released = False

    @classmethod
    def acquire(cls, run_dir: str | Path) -> "RecordLock":
        path = Path(run_dir) / f"{RECORD_DIR}.lock"
        key = str(path.resolve())
        if cls._held.get(key, 0) > 0 and path.exists():
            cls._held[key] += 1
            return cls(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read_lock(path)
                if not owner:  # released this instant: try again
                    continue
                if owner.get("host") == me["host"] and owner.get("pid") == me["pid"]:
                    cls._held[key] = 1  # left by this process (its handles were dropped)
                    return cls(path)
                if not _stale(owner, me["host"]):
                    raise _locked(path, owner) from None
                warnings.warn(f"{path}: taking over the lock of pid {owner.get('pid')}, "
                              "which is no longer running", stacklevel=2)
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            cls._held[key] = 1
            return cls(path)
        raise RecordLockedError(f"{path}: could not take the record lock")

    def release(self) -> None:
        """Drop this handle (again: nothing); the last one removes the lock file."""
        if self._released:
            return
        self._released = True
        key = str(self.path.resolve())
        left = RecordLock._held.get(key, 1) - 1
        RecordLock._held[key] = max(left, 0)
        if left <= 0:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RecordLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _locked(path: Path, owner: dict[str, Any]) -> RecordLockedError:
    if _UNREADABLE in owner:
        return RecordLockedError(
            f"{path}: the lock file is unreadable ({owner[_UNREADABLE]}), so its owner cannot "
            f"be checked; if no run is using {path.parent}, delete {path} and start again")
    return RecordLockedError(
        f"{path.parent / RECORD_DIR}: the record is in use by pid {owner.get('pid')} on "
        f"{owner.get('host')} (since {owner.get('started')}); wait for that run, or delete "
        f"{path} if it is gone")


_UNREADABLE = "_unreadable"


def _read_lock(path: Path) -> dict[str, Any]:
    """The owner the lock names; a lock being written this instant is read again shortly,
    one still unreadable is reported as such (held: it may belong to a live run)."""
    reason = "empty"
    for attempt in range(3):
        try:
            owner = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            reason = f"not the JSON a lock holds: {type(err).__name__}"
        else:
            if isinstance(owner, dict) and {"pid", "host"} <= owner.keys():
                return owner
            reason = "no pid and host in it"
        time.sleep(0.1 * (attempt + 1))
    return {_UNREADABLE: reason}


def _stale(owner: dict[str, Any], host: str) -> bool:
    """True when the owner is a process on this host that no longer runs."""
    pid = owner.get("pid")
    if owner.get("host") != host or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def vocab_hash(vocab: list[str] | None) -> str | None:
    """The record's fingerprint of a vocabulary (token strings by id), as meta.json has it."""
    if vocab is None:
        return None
    return hashlib.sha256(json.dumps(list(vocab)).encode()).hexdigest()


def snapshot_path(record_dir: Path, step: int) -> Path:
    return record_dir / "snapshots" / f"step_{step:08d}.npz"


def _line(row: dict[str, Any]) -> str:
    return json.dumps({k: _finite_or_none(v) for k, v in row.items()})


class RecordWriter:
    """Writes one run's record. Rows are kept in memory (as their step and JSON line), so
    each append rewrites metrics.jsonl atomically without re-reading it."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir) / RECORD_DIR
        (self.dir / "snapshots").mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        # Temp files of writes a kill cut short (the caller holds the record's lock).
        for stale in [*self.dir.glob(".*.tmp"), *(self.dir / "snapshots").glob(".*.tmp")]:
            stale.unlink(missing_ok=True)
        rows, skipped = _read_metrics(self.metrics_path, warn=True)
        if skipped:  # the next append rewrites the file without them: keep it as it was
            kept = _copy_aside(self.metrics_path, "damaged")
            log.warning("%s: lines %s skipped; the file as found is kept as %s",
                        self.metrics_path, skipped, kept)
        self._rows = [(int(r["step"]), _line(r)) for r in rows]

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.dir / "meta.json", meta)

    def write_vocab(self, vocab: list[str]) -> None:
        atomic_write_json(self.dir / "vocab.json", vocab)

    def steps(self) -> list[int]:
        return [step for step, _ in self._rows]

    def last_row(self) -> dict[str, Any] | None:
        """The last recorded row as written (non-finite values as None)."""
        return json.loads(self._rows[-1][1]) if self._rows else None

    def append_metrics(self, row: dict[str, Any]) -> None:
        if self._rows and row["step"] <= self._rows[-1][0]:
            raise ValueError(f"{self.metrics_path}: step {row['step']} is not after the last "
                             f"recorded step {self._rows[-1][0]}")
        rows = self._rows + [(int(row["step"]), _line(row))]
        self._write(rows)
        self._rows = rows

    def insert_metrics(self, row: dict[str, Any]) -> None:
        """Add a row at its step's place (replay filling in the steps of a suite that an
        earlier replay left out); a step already recorded is refused."""
        step = int(row["step"])
        if step in self.steps():
            raise ValueError(f"{self.metrics_path}: step {step} is already recorded")
        rows = sorted(self._rows + [(step, _line(row))], key=lambda r: r[0])
        self._write(rows)
        self._rows = rows

    def update_last(self, columns: dict[str, Any]) -> None:
        """Add `columns` to the last row (a loss measured at the row's own step, after the
        row was written)."""
        if not self._rows:
            raise ValueError(f"{self.metrics_path}: no row to update")
        step, line = self._rows[-1]
        rows = self._rows[:-1] + [(step, _line({**json.loads(line), **columns}))]
        self._write(rows)
        self._rows = rows

    def truncate_after(self, step: int) -> None:
        """Forget rows and snapshots past `step` (written after the checkpoint a run resumes
        from), so the resumed run records them again exactly once."""
        kept = [(s, line) for s, line in self._rows if s <= step]
        if len(kept) != len(self._rows):
            self._write(kept)
            self._rows = kept
        for later, path in list_snapshots(self.dir.parent).items():
            if later > step:
                path.unlink()

    def write_snapshot(self, step: int, arrays: dict[str, np.ndarray]) -> Path:
        path = snapshot_path(self.dir, step)
        atomic_save_npz(path, **arrays)
        return path

    def _write(self, rows: list[tuple[int, str]]) -> None:
        with atomic_open(self.metrics_path, "w") as handle:
            handle.write("".join(line + "\n" for _, line in rows))


# -- reading (tolerant: damaged parts are skipped with a warning naming them) -----------
def record_dir(run_dir: str | Path) -> Path:
    """`<run_dir>/normx`, or `run_dir` itself when it is a record (e.g. one set aside)."""
    run_dir = Path(run_dir)
    if run_dir.name == RECORD_DIR or (run_dir / "metrics.jsonl").exists():
        return run_dir
    return run_dir / RECORD_DIR


def read_metrics(run_dir: str | Path, warn: bool = True) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl in order, nulls as NaN. A damaged line (cut off by a kill,
    garbled on disk) or one whose step is not after the row before is skipped with a
    warning naming the file and line; the intact rows around it are kept."""
    return _read_metrics(record_dir(run_dir) / "metrics.jsonl", warn)[0]


def _read_metrics(path: Path, warn: bool) -> tuple[list[dict[str, Any]], list[int]]:
    """The intact rows and the numbers of the lines skipped."""
    if not path.exists():
        return [], []
    rows: list[dict[str, Any]] = []
    skipped: list[int] = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)  # bytes: invalid UTF-8 is a damaged line like any other
            step = int(row["step"])
        except (ValueError, KeyError, TypeError):
            reason = "damaged line"
        else:
            if not rows or step > rows[-1]["step"]:
                rows.append({k: (math.nan if v is None else v) for k, v in row.items()})
                continue
            reason = f"step {step} is not after step {rows[-1]['step']}"
        skipped.append(number)
        if warn:
            warnings.warn(f"{path}:{number}: {reason}; skipped it and kept the rows around it",
                          stacklevel=3)
    return rows, skipped


def list_snapshots(run_dir: str | Path) -> dict[int, Path]:
    folder = record_dir(run_dir) / "snapshots"
    found = {}
    for path in sorted(folder.glob("step_*.npz")) if folder.exists() else []:
        match = _SNAPSHOT.search(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def load_snapshot(path: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of one snapshot, or None (with a warning naming the file) if damaged."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        warnings.warn(f"{path}: unreadable snapshot ({err}); skipped", stacklevel=2)
        return None


def read_json(run_dir: str | Path, name: str) -> Any:
    path = record_dir(run_dir) / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as err:
        warnings.warn(f"{path}: unreadable JSON ({err})", stacklevel=2)
        return None
