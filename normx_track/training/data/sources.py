"""Where documents come from: the embedded synthetic corpus, HF hub datasets by name, or
local text/jsonl/parquet files, all read through HF `datasets`. One row is one document."""
from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Iterator

import datasets

from normx_track.training.config import DataConfig
from normx_track.errors import InputError
from normx_track.files import text_file_problem

# File suffix -> the `datasets` packaged builder that reads it.
_BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json",
             ".parquet": "parquet", ".csv": "csv"}


class DataSourceError(InputError):
    """A data source cannot be read; the message names the file or config key."""




def check_file(name: str) -> None:
    """Fail early, naming the file, on what `datasets` would report as a deep traceback:
    missing, a folder, empty, whitespace only, binary (NUL bytes) or not UTF-8 text."""
    problem = text_file_problem(name)
    if problem == "does not exist":
        raise DataSourceError(f"data.files: no such file: {name}")
    if problem is not None:
        raise DataSourceError(f"data.files: {name} {problem}")


def builder_for(files: list[str]) -> str:
    """The one `datasets` builder that reads all of `files` (checked up front)."""
    builders = set()
    for name in files:
        path = Path(name)
        if path.suffix.lower() not in _BUILDERS:
            raise DataSourceError(f"data.files: {name} has an unsupported suffix "
                                  f"{path.suffix!r}; use one of {sorted(_BUILDERS)}")
        check_file(name)
        builders.add(_BUILDERS[path.suffix.lower()])
    if len(builders) != 1:
        raise DataSourceError(f"data.files mixes formats ({sorted(builders)}); use one format")
    return builders.pop()


def load_local_files(files: list[str], split: str = "train") -> datasets.Dataset:
    builder = builder_for(files)
    try:
        return datasets.load_dataset(builder, data_files={split: [str(Path(f)) for f in files]},
                                     split=split)
    except Exception as err:  # pyarrow/datasets raise many types: say which files failed
        if builder == "json":
            _raise_at_bad_json_line(files)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataSourceError(f"data.files: {', '.join(files)} could not be read as "
                              f"{builder} ({type(err).__name__}: {reason})") from None


def _raise_at_bad_json_line(files: list[str]) -> None:
    """Name the first line of JSON-lines `files` that is not a JSON object (the reader's
    own error says only where in its buffer it stopped)."""
    for name in (f for f in files if f.lower().endswith(".jsonl")):
        with open(name, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataSourceError(f"data.files: {name}:{number}: invalid JSON "
                                          f"({err.msg})") from None
                if not isinstance(row, dict):
                    raise DataSourceError(f"data.files: {name}:{number}: expected a JSON "
                                          f"object, got {type(row).__name__}")


def load_hub(cfg: DataConfig):
    """A hub dataset by name (needs network or a warm HF cache)."""
    try:
        return datasets.load_dataset(cfg.name, cfg.subset, split=cfg.split,
                                     streaming=cfg.streaming)
    except Exception as err:  # datasets raises many types; say which config failed
        raise DataSourceError(f"data.name={cfg.name!r} (subset {cfg.subset!r}, split "
                              f"{cfg.split!r}) could not be loaded: {err}") from err


def iter_texts(rows, text_field: str, origin: str, limit: int | None) -> Iterator[str]:
    """Non-empty texts of `rows[text_field]`, at most `limit` of them."""
    for number, row in enumerate(islice(rows, limit), start=1):
        if text_field not in row:
            raise DataSourceError(f"{origin}: rows have no field {text_field!r} (data.text_field);"
                                  f" fields are {sorted(row)}")
        text = row[text_field]
        if text is not None and not isinstance(text, str):
            raise DataSourceError(f"{origin}: row {number}'s {text_field!r} (data.text_field) is "
                                  f"{type(text).__name__} {text!r:.40}, not text")
        if text and not text.isspace():
            yield text


def load_texts(cfg: DataConfig, synthetic_files: dict[str, Path] | None = None) -> list[str]:
    """All documents of the configured source as strings (capped by data.max_documents)."""
    if cfg.source == "synthetic":
        assert synthetic_files is not None, "synthetic corpus must be written first"
        rows, origin = load_local_files([str(synthetic_files["train"])]), str(synthetic_files["train"])
    elif cfg.source == "files":
        rows, origin = load_local_files(cfg.files), ", ".join(cfg.files)
    else:
        rows, origin = load_hub(cfg), f"hub dataset {cfg.name}"
    return list(iter_texts(rows, cfg.text_field, origin, cfg.max_documents))
