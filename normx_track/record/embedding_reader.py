"""Only the embedding matrices of a checkpoint, read by byte range (DESIGN.md "Released
checkpoint suites").

A safetensors file is an 8-byte little-endian header length N, a JSON header naming each
tensor's dtype, shape and ``data_offsets`` (relative to byte 8 + N), then the data. So the
input and output embeddings of a 24 GB checkpoint are found with two small reads and read
with one range each; nothing else is fetched. The same code reads a local folder and a hub
revision: the only difference is how a file is opened (`LocalFiles`, or
`normx_track.record.suite.HubFiles`, which opens through ``HfFileSystem`` range requests).

Which tensors are the embeddings comes from the model class itself: the model is built on
the meta device (no memory) from the checkpoint's config, and the parameter names of its
``get_input_embeddings()`` / ``get_output_embeddings()`` are looked up in the checkpoint.
A tied head (the same parameter) is not read twice. ``pytorch_model.bin`` files (torch.save
zip archives, e.g. pythia-12b's shards) are read by range too, through their directory and
tensor descriptions (`normx_track.record.torch_zip_reader`); only a legacy pre-zip pickle is
loaded whole, with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import torch

from normx_track.record.checkpoint_loader import CheckpointError, auto_class, first_line
from normx_track.record.torch_zip_reader import TorchZipFile

log = logging.getLogger(__name__)

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLE, PICKLE_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
           "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8}
_MAX_HEADER = 100 << 20  # the format's own limit on the JSON header
_READ_BLOCK = 64 << 20   # a huge tensor arrives in pieces, into its final buffer


class CheckpointFiles(Protocol):
    """The files of one checkpoint (one revision of a suite)."""

    label: str  # how errors and the record name it: a folder, or repo@revision

    def exists(self, name: str) -> bool: ...

    def open(self, name: str) -> BinaryIO: ...

    def local_path(self, name: str) -> Path:
        """A path on disk (a hub file is downloaded): for the pickle fallback."""
        ...


@dataclass
class LocalFiles:
    """A checkpoint folder on disk (``save_pretrained``'s output)."""

    folder: Path

    @property
    def label(self) -> str:
        return str(self.folder)

    def exists(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def open(self, name: str) -> BinaryIO:
        return open(self.folder / name, "rb")

    def local_path(self, name: str) -> Path:
        return self.folder / name


@dataclass
class Embeddings:
    """A checkpoint's embedding matrices as stored, with what it took to read them."""

    input: torch.Tensor
    output: torch.Tensor | None  # None where the head is tied to the input embedding
    bytes_read: int = 0
    file_bytes: int = 0  # the size of the weight files the tensors were read from
    whole_files: bool = False  # a legacy pickle: every tensor was loaded
    fingerprints: dict[str, str] = field(default_factory=dict)

    def matrices(self) -> dict[str, torch.Tensor]:
        return {"input": self.input, **({"output": self.output} if self.output is not None
                                        else {})}


def fingerprint(tensor: torch.Tensor) -> str:
    """A hash of a tensor's dtype, shape and bytes: equal tensors, equal fingerprints."""
    digest = hashlib.sha1(usedforsecurity=False)  # identity, not security: the fastest here
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.detach().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def read_config(files: CheckpointFiles):
    """The checkpoint's ``PretrainedConfig`` from its config.json."""
    from transformers import AutoConfig

    if not files.exists("config.json"):
        raise CheckpointError(f"{files.label}: no config.json; not a Hugging Face checkpoint")
    try:
        with files.open("config.json") as handle:
            raw = json.loads(handle.read().decode("utf-8"))
        return AutoConfig.for_model(**raw)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{files.label}/config.json: unreadable model config "
                              f"({first_line(err)})") from None


def embedding_names(config) -> tuple[torch.nn.Module, str, str | None]:
    """The model (on the meta device: no weights allocated) and the parameter names of its
    input embedding and untied output head, as the model class defines them."""
    with torch.device("meta"):
        model = auto_class(config.model_type).from_config(config)
    params = dict(model.named_parameters(remove_duplicate=False))
    e_weight = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    names = {id(p): n for n, p in reversed(list(params.items()))}  # the first name wins
    u_name = None if head is None or head.weight is e_weight else names[id(head.weight)]
    return model, names[id(e_weight)], u_name


def _as_loaded(model: torch.nn.Module, stored: set[str]) -> dict[str, str]:
    """{parameter name: checkpoint key}: each stored key renamed as ``from_pretrained``
    renames it (transformers 5's conversion mapping, e.g. GPT-NeoX's ``embed_out`` is its
    ``lm_head``; the base model's prefix added or stripped). Older transformers load keys
    as stored."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key
    except ImportError:
        return {k: k for k in stored}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    meta_state = model.state_dict()
    prefix = getattr(model, "base_model_prefix", None)
    loaded = {}
    for key in sorted(stored):
        name, _ = rename_source_key(key, renamings, converters, prefix, meta_state)
        loaded.setdefault(name, key)
    return loaded


def _stored_name(name: str, stored: set[str], model: torch.nn.Module,
                 loaded: dict[str, str] | None = None) -> str | None:
    """``name`` as the checkpoint spells it: through the loader's renaming (``loaded``, from
    `_as_loaded`), else exactly, without or with the base model's prefix, or the one key
    ending in it."""
    found = (loaded if loaded is not None else _as_loaded(model, stored)).get(name)
    if found is not None:
        return found
    prefix = getattr(model, "base_model_prefix", "")
    bare = name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else name
    for candidate in (name, bare, f"{prefix}.{bare}" if prefix else bare):
        if candidate in stored:
            return candidate
    endings = [k for k in stored if k.endswith("." + bare)]
    return endings[0] if len(endings) == 1 else None


def read_embeddings(files: CheckpointFiles) -> Embeddings:
    """The input embedding and an untied head of one checkpoint, reading only their bytes
    (safetensors, or torch.save zip archives; a legacy pickle is loaded whole)."""
    config = read_config(files)
    model, e_name, u_name = embedding_names(config)
    reader = _reader(files)
    tensors = {}
    try:
        loaded = _as_loaded(model, reader.names())
        for side, name in (("input", e_name), ("output", u_name)):
            if name is None:
                continue
            stored = _stored_name(name, reader.names(), model, loaded)
            if stored is None:
                if side == "output" and getattr(config, "tie_word_embeddings", False):
                    continue  # a tied head saved once, under the input's name
                raise CheckpointError(f"{files.label}: no tensor {name!r} in its weight files "
                                      f"({len(reader.names())} tensors)")
            tensors[side] = reader.read(stored)
    except _LegacyPickle:
        return _read_pickled(files, e_name, u_name, model)
    return Embeddings(tensors["input"], tensors.get("output"), reader.bytes_read,
                      reader.file_bytes(), False,
                      {side: fingerprint(t) for side, t in tensors.items()})


def _reader(files: CheckpointFiles):
    if files.exists(SAFETENSORS_INDEX):
        return _SafetensorsReader(files, _weight_map(files, SAFETENSORS_INDEX))
    if files.exists(SAFETENSORS):
        return _SafetensorsReader(files, None)
    if files.exists(PICKLE_INDEX):
        return _TorchZipReader(files, _weight_map(files, PICKLE_INDEX))
    if files.exists(PICKLE):
        return _TorchZipReader(files, None)
    raise CheckpointError(f"{files.label}: no model weights ({SAFETENSORS}, "
                          f"{SAFETENSORS_INDEX}, {PICKLE} or {PICKLE_INDEX})")


def _weight_map(files: CheckpointFiles, index: str) -> dict[str, str]:
    try:
        with files.open(index) as handle:
            weight_map = json.loads(handle.read().decode("utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
        return weight_map
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{files.label}/{index}: unreadable shard index "
                              f"({first_line(err)})") from None


class _Counted:
    """A binary file whose reads are counted into ``counter.bytes_read``."""

    def __init__(self, handle: BinaryIO, counter):
        self.handle, self.counter = handle, counter

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.counter.bytes_read += len(data)
        return data

    def seek(self, *args) -> int:
        return self.handle.seek(*args)

    def tell(self) -> int:
        return self.handle.tell()

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self.handle.close()


class _LegacyPickle(Exception):
    """A .bin written before torch's zip format: it can only be loaded whole."""


class _TorchZipReader:
    """Tensors of ``pytorch_model.bin`` files (torch.save zip archives) read by range: the
    archive's directory, its data.pkl of tensor descriptions, then only the storages asked
    for (`normx_track.record.torch_zip_reader`)."""

    def __init__(self, files: CheckpointFiles, shard_of: dict[str, str] | None):
        self.files, self.shard_of, self.bytes_read = files, shard_of, 0
        self._archives: dict[str, tuple[TorchZipFile, int]] = {}

    def names(self) -> set[str]:
        return set(self.shard_of) if self.shard_of is not None else \
            set(self._archive(PICKLE).entries)

    def file_bytes(self) -> int:
        return sum(size for _, size in self._archives.values())

    def _archive(self, shard: str) -> TorchZipFile:
        if shard not in self._archives:
            handle = _Counted(self.files.open(shard), self)
            try:
                archive = TorchZipFile(handle)
            except zipfile.BadZipFile:
                handle.close()
                raise _LegacyPickle() from None
            except (OSError, ValueError, pickle.UnpicklingError, EOFError) as err:
                handle.close()
                raise CheckpointError(f"{self.files.label}/{shard}: not a readable torch.save "
                                      f"archive ({first_line(err)})") from None
            self._archives[shard] = (archive, handle.seek(0, 2))
        return self._archives[shard][0]

    def read(self, name: str) -> torch.Tensor:
        shard = self.shard_of[name] if self.shard_of is not None else PICKLE
        archive = self._archive(shard)
        try:
            return archive.read(name)
        except (OSError, KeyError, ValueError, RuntimeError, zipfile.BadZipFile) as err:
            raise CheckpointError(f"{self.files.label}/{shard}: cannot read {name!r} "
                                  f"({first_line(err)})") from None


class _SafetensorsReader:
    """Headers of a checkpoint's safetensors file(s), and tensors read by byte range.
    ``bytes_read`` counts every byte taken from the files."""

    def __init__(self, files: CheckpointFiles, shard_of: dict[str, str] | None):
        self.files, self.shard_of, self.bytes_read = files, shard_of, 0
        self._headers: dict[str, tuple[int, dict]] = {}

    def names(self) -> set[str]:
        if self.shard_of is not None:
            return set(self.shard_of)
        return {k for k in self._header(SAFETENSORS)[1] if k != "__metadata__"}

    def file_bytes(self) -> int:
        """The size of the files the headers were read from (for the record's ratio)."""
        total = 0
        for shard, (start, header) in self._headers.items():
            ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
            total += start + max(ends, default=0)
        return total

    def _header(self, shard: str) -> tuple[int, dict]:
        if shard not in self._headers:
            where = f"{self.files.label}/{shard}"
            try:
                with self.files.open(shard) as handle:
                    size = struct.unpack("<Q", self._take(handle, 8, where))[0]
                    if size > _MAX_HEADER:
                        raise ValueError(f"header length {size} is not plausible")
                    header = json.loads(self._take(handle, size, where).decode("utf-8"))
            except (OSError, ValueError, struct.error, UnicodeDecodeError) as err:
                raise CheckpointError(f"{where}: not a readable safetensors file "
                                      f"({first_line(err)})") from None
            self._headers[shard] = (8 + size, header)
        return self._headers[shard]

    def _take(self, handle: BinaryIO, size: int, where: str) -> bytes:
        data = handle.read(size)
        self.bytes_read += len(data)
        if len(data) != size:
            raise CheckpointError(f"{where}: truncated ({len(data)} of {size} bytes read)")
        return data

    def read(self, name: str) -> torch.Tensor:
        shard = self.shard_of[name] if self.shard_of is not None else SAFETENSORS
        where = f"{self.files.label}/{shard}"
        start, header = self._header(shard)
        entry = header.get(name)
        try:
            dtype = _DTYPES[entry["dtype"]]
            begin, end = (int(v) for v in entry["data_offsets"])
            shape = [int(v) for v in entry["shape"]]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}: no usable header entry for {name!r}") from None
        buffer = torch.empty(end - begin, dtype=torch.uint8)
        view = memoryview(buffer.numpy())
        try:
            with self.files.open(shard) as handle:
                handle.seek(start + begin)
                for at in range(0, end - begin, _READ_BLOCK):
                    piece = self._take(handle, min(_READ_BLOCK, end - begin - at), where)
                    view[at:at + len(piece)] = piece
        except OSError as err:
            raise CheckpointError(f"{where}: cannot read {name!r} ({first_line(err)})") from None
        try:
            return buffer.view(dtype).reshape(shape)
        except RuntimeError as err:
            raise CheckpointError(f"{where}: {name!r} does not match its header "
                                  f"({first_line(err)})") from None


_warned_pickle = False


def _read_pickled(files: CheckpointFiles, e_name: str, u_name: str | None,
                  model: torch.nn.Module) -> Embeddings:
    """A legacy (pre-zip) ``pytorch_model.bin``, loaded whole with ``weights_only=True``:
    such a pickle cannot be read by tensor. Said once per process."""
    global _warned_pickle
    shards = sorted(set(_weight_map(files, PICKLE_INDEX).values())) \
        if files.exists(PICKLE_INDEX) else [PICKLE]
    if not _warned_pickle:
        log.warning("%s: weights are in torch's legacy pickle format (%s): the whole "
                    "checkpoint is read to take its embeddings", files.label, shards[0])
        _warned_pickle = True
    state, size = {}, 0
    for shard in shards:
        path = files.local_path(shard)
        try:
            state.update(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as err:  # torch raises many kinds for a damaged pickle
            raise CheckpointError(f"{files.label}/{shard}: cannot read checkpoint "
                                  f"({first_line(err)})") from None
        size += path.stat().st_size
    tensors = {}
    for side, name in (("input", e_name), ("output", u_name)):
        stored = None if name is None else _stored_name(name, set(state), model)
        if stored is not None:
            tensors[side] = state[stored]
        elif side == "input":
            raise CheckpointError(f"{files.label}: no tensor {name!r} in {shards}")
    return Embeddings(tensors["input"], tensors.get("output"), size, size, True,
                      {side: fingerprint(t) for side, t in tensors.items()})
