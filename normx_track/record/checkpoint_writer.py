"""Lightning's checkpoint writer, made atomic: a kill or a full disk mid-save leaves the
previous checkpoint intact, and a failed write names the file."""
from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from normx_track.record.atomic import RecordWriteError, atomic_open
from normx_track.record.checkpoint_loader import first_line

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save to a temp file beside the target, then one rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_open(path) as handle:
                torch.save(checkpoint, handle)
        except RuntimeError as err:  # torch's writer reports a full disk without the file
            raise RecordWriteError(errno.EIO, f"could not write {path} ({first_line(err)}); "
                                              "the previous version is intact") from None
