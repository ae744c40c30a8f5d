"""Lightning's checkpoint writer, made atomic: a kill or a full disk mid-save leaves the
previous checkpoint intact, and a failed write names the file."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from normx_track.record.atomic import AtomicWriteError, atomic_open
from normx_track.record.checkpoint_loader import first_line

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save to a temp file beside the target, then one rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as handle:
            try:
                torch.save(checkpoint, handle)
            except RuntimeError as err:  # torch's writer reports a full disk without errno
                raise _write_error(path, handle, err) from None


# Less room than this left after a failed save: the disk filled up (torch says only
# "inline_container.cc ... unexpected pos").
FULL_DISK_BYTES = 16 * 2**20


def _write_error(path, handle, err: RuntimeError) -> AtomicWriteError:
    """Measured while the partial temp file still holds its space."""
    try:
        stats = os.fstatvfs(handle.fileno())
        full = stats.f_bavail * stats.f_frsize < FULL_DISK_BYTES
    except OSError:
        full = False
    if full:
        return AtomicWriteError(errno.ENOSPC, f"could not write {path}: no space left on "
                                              "device; the previous version is intact")
    return AtomicWriteError(errno.EIO, f"could not write {path} ({first_line(err)}); the "
                                       "previous version is intact")
