"""Single tensors of a ``torch.save`` file (``pytorch_model.bin``) read by range, without
unpickling anything but tensor descriptions.

Since torch 1.6 such a file is a zip archive of uncompressed entries: ``<name>/data.pkl``
(the pickled state dict, in which each tensor is a ``_rebuild_tensor_v2`` call on a
persistent storage id) and one ``<name>/data/<key>`` entry per storage. So the archive's
central directory and data.pkl (kilobytes) say where each tensor's bytes are, and only the
storages of the tensors asked for are read. The pickle is read by an unpickler that knows
four names (the rebuild function, OrderedDict, the typed storage classes and
``torch.Size``) and records descriptions instead of building tensors: nothing in the file
is executed.
"""
from __future__ import annotations

import collections
import pickle
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

import torch

_STORAGE_DTYPES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "DoubleStorage": torch.float64,
                   "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8,
                   "ByteStorage": torch.uint8, "BoolStorage": torch.bool}


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: torch.dtype


@dataclass(frozen=True)
class TensorEntry:
    """Where a tensor of the file lives: its storage entry and its view of it."""

    key: str
    dtype: torch.dtype
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild(storage: _Storage, offset, size, stride, *rest) -> TensorEntry:
    return TensorEntry(storage.key, storage.dtype, int(offset), tuple(size), tuple(stride))


class _Descriptions(pickle.Unpickler):
    """data.pkl read into `TensorEntry`s; any other object in it is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("torch", "Size"):
            return tuple
        raise pickle.UnpicklingError(f"{module}.{name} is not a tensor description")

    def persistent_load(self, pid):
        kind, dtype, key = pid[0], pid[1], pid[2]
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid[:2]!r}")
        return _Storage(str(key), dtype)


class TorchZipFile:
    """The tensors of one ``torch.save`` zip file, read one at a time from ``handle`` (a
    seekable binary file: a local file, or an ``HfFileSystem`` file doing range reads)."""

    def __init__(self, handle: BinaryIO):
        self.zip = zipfile.ZipFile(handle)  # reads the central directory at the end only
        pickles = [n for n in self.zip.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError("no data.pkl: not a torch.save archive")
        self.prefix = pickles[0][: -len("data.pkl")]
        with self.zip.open(pickles[0]) as f:
            state = _Descriptions(f).load()
        if not isinstance(state, dict):
            raise ValueError("data.pkl holds no state dict")
        self.entries = {k: v for k, v in state.items() if isinstance(v, TensorEntry)}

    def read(self, name: str) -> torch.Tensor:
        entry = self.entries[name]
        data = bytearray(self.zip.read(f"{self.prefix}data/{entry.key}"))
        storage = torch.frombuffer(data, dtype=entry.dtype) if data else \
            torch.empty(0, dtype=entry.dtype)
        return storage.as_strided(entry.size, entry.stride, entry.offset).clone()
