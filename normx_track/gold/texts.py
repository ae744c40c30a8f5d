"""The gold command's corpora: text files, folders written by ``Dataset.save_to_disk``, and
hub datasets read in streaming mode, as an iterator of document texts (one row, or one
line of a .txt file, is one document, as a training run reads them).

A corpus spec is one of
- a file: .txt/.text (one document a line), .jsonl/.json, .parquet, .csv (the text in
  ``text_field``), read by `datasets` in streaming mode (nothing cached, nothing held);
- a folder written by ``Dataset.save_to_disk`` (``DatasetDict``: its ``split``), read
  with ``datasets.load_from_disk`` (memory-mapped Arrow);
- ``hf:NAME[:CONFIG]:SPLIT[:TEXT_FIELD]``, a hub dataset in streaming mode. With three
  parts the middle one is the split if it looks like one (train, validation, test, dev,
  optionally sliced) and the last is then the text field; otherwise NAME:CONFIG:SPLIT.
  An empty CONFIG (``hf:NAME::SPLIT:FIELD``) means none.
Bad input raises `CorpusError` naming the spec (the file checks follow
`normx_track.training.data.sources`, which the library's layering keeps out of reach
of ``gold``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from normx_track.errors import InputError
from normx_track.files import text_file_problem

SUFFIXES = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json",
            ".parquet": "parquet", ".csv": "csv"}
_SPLIT = re.compile(r"^(train|validation|valid|val|test|dev|eval)(\[.*\])?$")
BATCH = 1024


class CorpusError(InputError):
    """A corpus spec that cannot be read; the message names it."""


@dataclass(frozen=True)
class HubSpec:
    name: str
    config: str | None
    split: str
    text_field: str | None


def parse_hub_spec(spec: str) -> HubSpec:
    """``hf:NAME[:CONFIG]:SPLIT[:TEXT_FIELD]`` (see the module docstring)."""
    parts = spec[len("hf:"):].split(":")
    if any(not p for i, p in enumerate(parts) if not (len(parts) == 4 and i == 1)) \
            or not 2 <= len(parts) <= 4:
        raise CorpusError(f"{spec}: not a hub dataset spec; expected "
                          "hf:NAME[:CONFIG]:SPLIT[:TEXT_FIELD] (e.g. "
                          "hf:HuggingFaceFW/fineweb:sample-10BT:train)")
    if len(parts) == 2:
        return HubSpec(parts[0], None, parts[1], None)
    if len(parts) == 3:
        if _SPLIT.match(parts[1]) and not _SPLIT.match(parts[2]):
            return HubSpec(parts[0], None, parts[1], parts[2])
        return HubSpec(parts[0], parts[1], parts[2], None)
    return HubSpec(parts[0], parts[1] or None, parts[2], parts[3])


def check_specs(specs: list[str]) -> None:
    """Fail before any work on what can be seen up front: a missing, empty, binary or
    non-UTF-8 file, an unsupported suffix, a malformed hf: spec."""
    if not specs:
        raise CorpusError("no corpus given")
    for spec in specs:
        if spec.startswith("hf:"):
            parse_hub_spec(spec)
            continue
        path = Path(spec)
        if path.is_dir():
            if not any((path / f).exists() for f in ("dataset_info.json", "state.json",
                                                     "dataset_dict.json")):
                raise CorpusError(f"{spec}: a folder, but not one written by "
                                  "Dataset.save_to_disk (no state.json / dataset_dict.json)")
            continue
        _check_file(spec)


def _check_file(spec: str) -> None:
    path = Path(spec)
    if path.exists() and path.suffix.lower() not in SUFFIXES:
        raise CorpusError(f"{spec}: unsupported suffix {path.suffix!r}; use one of "
                          f"{sorted(SUFFIXES)}, a save_to_disk folder, or hf:NAME:SPLIT")
    problem = text_file_problem(path)
    if problem == "does not exist":
        raise CorpusError(f"{spec}: no such file or folder")
    if problem is not None:
        raise CorpusError(f"{spec} {problem}")


def iter_texts(specs: list[str], text_field: str = "text", split: str = "train"
               ) -> Iterator[list[str]]:
    """Batches of non-empty document texts from every spec in turn."""
    check_specs(specs)
    for spec in specs:
        yield from _spec_texts(spec, text_field, split)


def _spec_texts(spec: str, text_field: str, split: str) -> Iterator[list[str]]:
    import datasets

    field = text_field
    try:
        if spec.startswith("hf:"):
            hub = parse_hub_spec(spec)
            field = hub.text_field or text_field
            rows = datasets.load_dataset(hub.name, hub.config, split=hub.split, streaming=True)
        elif Path(spec).is_dir():
            rows = datasets.load_from_disk(spec)
            if isinstance(rows, datasets.DatasetDict):
                if split not in rows:
                    raise CorpusError(f"{spec}: no split {split!r} (--split); it has "
                                      f"{sorted(rows)}")
                rows = rows[split]
        else:
            builder = SUFFIXES[Path(spec).suffix.lower()]
            rows = datasets.load_dataset(builder, data_files={"train": [spec]}, split="train",
                                         streaming=True)
        if getattr(rows, "column_names", None) and field not in rows.column_names:
            raise CorpusError(f"{spec}: no field {field!r} (--text-field); fields are "
                              f"{sorted(rows.column_names)}")
        number = 0
        for batch in rows.iter(batch_size=BATCH):
            if field not in batch:
                raise CorpusError(f"{spec}: no field {field!r} (--text-field); fields are "
                                  f"{sorted(batch)}")
            texts = []
            for text in batch[field]:
                number += 1
                if text is not None and not isinstance(text, str):
                    raise CorpusError(f"{spec}: row {number}'s {field!r} is "
                                      f"{type(text).__name__} {text!r:.40}, not text")
                if text and not text.isspace():
                    texts.append(text)
            if texts:
                yield texts
    except InputError:
        raise
    except Exception as err:  # datasets/pyarrow/fsspec raise many types: name the spec
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CorpusError(f"{spec}: could not be read ({type(err).__name__}"
                          f"{': ' + reason if reason else ''})") from None


def token_documents(tokenizer, batches, eos: int | None):
    """Token-id arrays of each text batch's documents (EOS appended when there is one),
    tokenised as a run's stream is (no special tokens but the EOS)."""
    import numpy as np

    for texts in batches:
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            if eos is not None:
                ids.append(eos)
            yield np.asarray(ids, dtype=np.int64)
