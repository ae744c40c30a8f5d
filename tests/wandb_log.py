"""Read the history rows of a local W&B run file (`run-*.wandb`), as `wandb sync` would
upload them. wandb no longer ships a Python reader for the format: a LevelDB-style log
(32 KiB blocks of records, each `crc:u32 length:u16 type:u8` then data) after a 7-byte
header, holding `wandb_internal_pb2.Record` messages."""
from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_BLOCK, _HEADER, _RECORD_HEADER = 32768, 7, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path) -> list[bytes]:
    raw = path.read_bytes()
    assert raw[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, out, pending = _HEADER, [], b""
    while pos + _RECORD_HEADER <= len(raw):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD_HEADER:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + _RECORD_HEADER])
        if kind == 0:  # zero-filled rest of a block
            pos += left
            continue
        data = raw[pos + _RECORD_HEADER:pos + _RECORD_HEADER + length]
        pos += _RECORD_HEADER + length
        if kind == _FULL:
            out.append(data)
        elif kind == _FIRST:
            pending = data
        elif kind == _MIDDLE:
            pending += data
        elif kind == _LAST:
            out.append(pending + data)
    return out


def history(path: Path) -> list[dict]:
    """Each `run.log` row, as {key: value}; media (histograms, HTML) as nested dicts."""
    rows = []
    for data in records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict = {}
        for item in record.history.item:
            *parents, leaf = [item.key] if item.key else list(item.nested_key)
            node = row
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = json.loads(item.value_json)
        rows.append(row)
    return rows
