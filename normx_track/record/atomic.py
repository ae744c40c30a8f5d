"""Files replaced atomically: written to a temp file beside the target, fsynced, renamed
over it. A crash, a kill or a full disk mid-write leaves the previous version intact. Used
by the record, the gold cache, the synthetic corpus and checkpoints."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["AtomicWriteError", "atomic_folder", "atomic_open", "atomic_save_npz",
           "atomic_write_json"]


class AtomicWriteError(OSError):
    """A file (record file or checkpoint) could not be written; its previous version is
    intact."""


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temp file beside `path`; on clean exit it replaces `path` in one rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would outlive the rename
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)  # the rename itself survives a power cut
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, AtomicWriteError):
            raise AtomicWriteError(err.errno, f"could not write {path} ({err.strerror or err}); "
                                              "the previous version is intact") from err
        raise


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A temp folder beside `path` to write into; on clean exit its files are fsynced and
    it replaces `path` (absent, or an empty folder) in one rename. On failure it is
    removed: `path` never appears half-written (an exported model folder)."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        for written in tmp.rglob("*"):
            if written.is_file():
                _fsync_folder(written)
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would outlive the rename
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and not isinstance(err, AtomicWriteError):
            raise AtomicWriteError(err.errno or errno.EIO, f"could not write {path} "
                                   f"({err.strerror or err}); nothing was written") from err
        raise


def _fsync_folder(folder: Path) -> None:
    """fsync a file or a folder (a folder's entry list: a rename in it survives a power cut)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_open(path) as handle:
        np.savez(handle, **arrays)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=1)
