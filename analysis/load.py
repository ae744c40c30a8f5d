"""Runs and Hydra multiruns, read from their durable records (DESIGN.md, "The durable
record") into pandas DataFrames: one row per (run, step).

Reading is tolerant: damaged lines and snapshots are skipped, and every problem is both
warned about (a `RecordWarning` naming the file) and kept in `Run.problems`, so the
command-line tools and the HTML report can say what is missing instead of leaving silent
gaps. The record readers themselves are `normx_track.record.store`'.
"""
from __future__ import annotations

import os
import json
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import pandas as pd

from normx_track.record.store import (list_snapshots, load_snapshot, read_json, read_metrics,
                                 record_dir, snapshot_path)
from normx_track.keys import PREFIX

from .cli import non_negative_int  # noqa: F401 - analysis.load.non_negative_int, as before

T = TypeVar("T")
MAX_JOB_DEPTH = 3  # how deep below a multirun dir job dirs are looked for


class RecordWarning(UserWarning):
    """A record file, or a line of one, is damaged or missing; it was skipped."""


class NoRecordError(FileNotFoundError):
    """The directory holds no normx record."""


def has_record(path: str | Path) -> bool:
    return (record_dir(path) / "metrics.jsonl").is_file()


def no_record_message(path: str | Path) -> str:
    path = Path(path)
    return f"{path}: no normx record found (expected {record_dir(path) / 'metrics.jsonl'})"


@dataclass
class Run:
    """One run's record. Metrics are read at construction; gold, vocab and snapshots lazily.
    `problems` lists every warning met while reading (also re-warned as RecordWarning)."""

    path: Path                                   # the run dir (the one holding normx/)
    name: str = ""
    overrides: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.path.name == "normx":
            self.path = self.path.parent
        self.name = self.name or self.path.name
        if not has_record(self.path):
            raise NoRecordError(no_record_message(self.path))
        self.rows = self._guard(lambda: read_metrics(self.path, warn=True), [])

    # -- reading, with every warning kept --------------------------------------------------
    def _guard(self, read: Callable[[], T], fallback: T, what: str = "") -> T:
        """Call `read`, collecting its warnings into `problems` (and re-warning them);
        any error becomes a warning too and `fallback` is returned."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = read()
            except Exception as err:  # never crash on a damaged record
                warnings.warn(f"{what or self.record}: unreadable ({type(err).__name__}: {err})"
                              "; skipped")
                result = fallback
        for item in caught:
            if issubclass(item.category, UserWarning):
                self.warn(str(item.message))
            else:  # e.g. ResourceWarning from numpy on a broken zip: not a record problem
                warnings.warn(item.message, item.category, stacklevel=2)
        return result

    def warn(self, message: str) -> None:
        self.problems.append(message)
        warnings.warn(message, RecordWarning, stacklevel=3)

    @property
    def record(self) -> Path:
        return record_dir(self.path)

    @cached_property
    def meta(self) -> dict[str, Any]:
        meta = self._guard(lambda: read_json(self.path, "meta.json"), None,
                           str(self.record / "meta.json"))
        if meta is None and not (self.record / "meta.json").exists():
            self.warn(f"{self.record / 'meta.json'}: missing; the config is unknown")
        return meta or {}

    @property
    def config(self) -> dict[str, Any]:
        return self.meta.get("config") or {}

    @property
    def min_count(self) -> int:
        tracker = self.meta.get("tracker") or self.config.get("tracker") or {}
        return int(tracker.get("min_count", 1))

    @cached_property
    def vocab(self) -> list[str] | None:
        vocab = self._guard(lambda: read_json(self.path, "vocab.json"), None,
                            str(self.record / "vocab.json"))
        return vocab if isinstance(vocab, list) else None

    @cached_property
    def gold(self) -> dict[str, np.ndarray]:
        path = self.record / "gold.npz"
        if not path.exists():
            self.warn(f"{path}: missing; no gold signals for the norm trajectories")
            return {}

        def read() -> dict[str, np.ndarray]:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files if not k.startswith("_")}
        return self._guard(read, {}, str(path))

    @cached_property
    def frame(self) -> pd.DataFrame:
        """The metrics, one row per recorded step, columns `step`, `tokens_seen`, metric keys."""
        frame = pd.DataFrame(self.rows)
        if frame.empty:
            return pd.DataFrame({"step": pd.Series(dtype=int)})
        return frame.sort_values("step", kind="stable").reset_index(drop=True)

    @property
    def steps(self) -> list[int]:
        return [int(s) for s in self.frame["step"]]

    @cached_property
    def snapshot_paths(self) -> dict[int, Path]:
        found = self._guard(lambda: list_snapshots(self.path), {})
        for step in self.steps:
            if step not in found:
                self.warn(f"{snapshot_path(self.record, step)}: missing snapshot for step "
                          f"{step} (listed in metrics.jsonl); skipped")
        return found

    def snapshot(self, step: int) -> dict[str, np.ndarray] | None:
        """The arrays of one snapshot, or None (with a warning naming the file)."""
        if step not in self._snapshots:  # read each file once: one warning per problem
            path = self.snapshot_paths.get(step)
            self._snapshots[step] = None if path is None else \
                self._guard(lambda: load_snapshot(path), None, str(path))
        return self._snapshots[step]

    @cached_property
    def _snapshots(self) -> dict[int, dict[str, np.ndarray] | None]:
        return {}

    @cached_property
    def _norm_cache(self) -> dict[str, tuple[list[int], np.ndarray]]:
        return {}

    def norms(self, key: str = "input_norm") -> tuple[list[int], np.ndarray]:
        """(steps, array [n_steps, V]) over the readable snapshots that hold `key`."""
        if key not in self._norm_cache:
            steps, rows = [], []
            for step in sorted(self.snapshot_paths):
                arrays = self.snapshot(step)
                if arrays is not None and key in arrays:
                    steps.append(step)
                    rows.append(np.asarray(arrays[key], np.float64))
            steps, rows = self._same_length(key, steps, rows)
            matrix = np.stack(rows) if rows else np.zeros((0, 0))
            self._norm_cache[key] = (steps, matrix)
        return self._norm_cache[key]

    def _same_length(self, key: str, steps: list[int], rows: list[np.ndarray]
                     ) -> tuple[list[int], list[np.ndarray]]:
        """Snapshots whose `key` has another length than the gold's vocabulary (or, without
        gold counts, than most snapshots') are skipped, and named."""
        lengths = [len(r) for r in rows]
        if len(set(lengths)) <= 1:
            return steps, rows
        counts = self.gold.get("counts")
        expected = len(counts) if counts is not None else max(set(lengths), key=lengths.count)
        odd = [s for s, n in zip(steps, lengths) if n != expected]
        self.warn(f"{self.record / 'snapshots'}: the snapshots at steps {odd} hold {key} of "
                  f"another length than {expected} (another vocabulary?); skipped")
        kept = [(s, r) for s, r in zip(steps, rows) if len(r) == expected]
        return [s for s, _ in kept], [r for _, r in kept]

    def setting(self, key: str) -> str | None:
        """The value of a config key for grouping: what the record says the run ran with
        (meta.json's config); for a config group (``model=gpt2_micro``, a section there) or
        a key the record lacks, the Hydra override, else .hydra/config.yaml."""
        recorded = _dotted(self.config, key)
        if recorded is not None and not isinstance(recorded, dict):
            return _plain_str(recorded)
        if key in self.overrides:
            return _plain_str(self.overrides[key])
        value = _dotted(_hydra_config(self.path), key)
        if isinstance(value, dict):  # a config group left at its default: its option's name
            value = _dotted(_hydra_config(self.path, "hydra.yaml"), f"hydra.runtime.choices.{key}")
        return None if value is None or isinstance(value, dict) else _plain_str(value)


# -- sweeps ------------------------------------------------------------------------------
def load_run(path: str | Path) -> Run:
    return Run(Path(path), overrides=read_overrides(Path(path)))


def cli_load_run(path: str | Path) -> Run | None:
    """`load_run` for the command lines: None after saying on stderr why there is no run
    (the caller exits with status 2)."""
    try:
        return load_run(path)
    except NoRecordError as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def unwritable(out: str | Path, default: bool) -> str | None:
    """Why the command line cannot write to `out` (None: it can): checked before any work.
    `default`: `out` is the run's own folder, not one given with --out."""
    out = Path(out)
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return None
    hint = "; pass --out DIR to write elsewhere" if default else ""
    return f"{existing}: cannot write there (read-only or not a folder){hint}"


def find_runs(multirun_dir: str | Path) -> list[Path]:
    """Run dirs below a Hydra multirun dir (jobs `0/`, `1/`, ... or deeper subdir patterns),
    in natural order. A job dir without metrics.jsonl is warned about, not returned."""
    root = Path(multirun_dir)
    patterns = ["/".join(["*"] * depth) for depth in range(1, MAX_JOB_DEPTH + 1)]
    runs = sorted({p.parent.parent for pattern in patterns
                   for p in root.glob(f"{pattern}/normx/metrics.jsonl")}, key=_natural)
    jobs = {p.parent.parent for pattern in patterns
            for p in root.glob(f"{pattern}/.hydra/overrides.yaml")}
    for job in sorted(jobs - set(runs), key=_natural):
        warnings.warn(f"{job}: job without a normx record (expected "
                      f"{record_dir(job) / 'metrics.jsonl'}); skipped", RecordWarning)
    return runs


def load_sweep(multirun_dir: str | Path) -> list[Run]:
    """The runs of a multirun dir; a single run's dir gives that one run."""
    root = Path(multirun_dir)
    paths = find_runs(root)
    if not paths and has_record(root):
        return [load_run(root)]
    if not paths:
        raise NoRecordError(f"{root}: no normx record found (expected "
                            f"{record_dir(root) / 'metrics.jsonl'}, or "
                            f"{root}/<job>/normx/metrics.jsonl for a multirun)")
    root = Path(multirun_dir)
    return [Run(p, name=str(p.relative_to(root)), overrides=read_overrides(p)) for p in paths]


def read_overrides(run_dir: Path) -> dict[str, str]:
    """`.hydra/overrides.yaml` as {key: value}; `+key`, `++key` prefixes dropped, `~key`
    deletions skipped."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    import yaml

    try:
        items = yaml.safe_load(path.read_text()) or []
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        warnings.warn(f"{path}: unreadable ({err}); overrides ignored", RecordWarning)
        return {}
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if sep and not key.startswith("~"):
            out[key.lstrip("+")] = value
    return out


def default_group_keys(runs: list[Run]) -> list[str]:
    """All override keys except `seed` (in first-seen order)."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(k for k in run.overrides if k != "seed"))
    return list(keys)


def varying_keys(runs: list[Run], keys: list[str]) -> list[str]:
    """The keys whose value differs between runs (the ones worth naming in a label)."""
    return [k for k in keys if len({run.setting(k) for run in runs}) > 1]


def group_label(values: dict[str, str | None], shown: list[str]) -> str:
    return ", ".join(f"{k}={values[k]}" for k in shown) or "all runs"


def sweep_frame(runs: list[Run], group_by: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """One row per (run, step): `run`, `group` (a label naming the varying group keys), the
    group keys' values, `step`, `tokens_seen` and the metrics. Returns (frame, label order)."""
    shown = varying_keys(runs, group_by)
    frames, labels = [], []
    for run in runs:
        values = {k: run.setting(k) for k in group_by}
        label = group_label(values, shown)
        if label not in labels:
            labels.append(label)
        frame = run.frame.copy()
        frame.insert(0, "run", run.name)
        frame.insert(1, "group", label)
        for i, key in enumerate(group_by):
            frame.insert(2 + i, key, values[key])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), labels


def _corpus(run: Run) -> str:
    """What a run trained on: its data settings (another seed of the same settings is a
    replicate, even where it draws the synthetic corpus, and so the vocabulary, anew), else
    its vocabulary (meta.json's vocab_hash) for records without a config."""
    data = (run.meta.get("config") or {}).get("data")
    if isinstance(data, dict):
        return json.dumps({k: v for k, v in data.items() if k not in ("cache_dir", "num_workers")},
                          sort_keys=True)
    return str(run.meta.get("vocab_hash"))


def mixed_vocabularies(runs: list[Run], group_by: list[str]) -> list[str]:
    """Groups whose runs trained on different corpora or tokenizers (other data settings;
    without a config, other vocabularies): averaging their curves mixes them. One line per
    such group."""
    shown = varying_keys(runs, group_by)
    groups: dict[str, dict[str, list[str]]] = {}
    for run in runs:
        label = group_label({k: run.setting(k) for k in group_by}, shown)
        groups.setdefault(label, {}).setdefault(_corpus(run), []).append(run.name)
    return [f"group {label!r} holds runs of {len(by_corpus)} corpora or tokenizers (" + "; ".join(
                f"{', '.join(names)}" for names in by_corpus.values()) + ")"
            for label, by_corpus in groups.items() if len(by_corpus) > 1]


def metric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(PREFIX)]


# -- helpers -----------------------------------------------------------------------------
@contextmanager
def cli_warnings() -> Iterator[None]:
    """Show every warning once, as `warning: <message>` on stderr (for the CLIs)."""
    import sys

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", RecordWarning)
        warnings.showwarning = show
        yield


def _natural(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _dotted(tree: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _plain_str(value: Any) -> str:
    """One spelling per value, whether it came from an override ("True", "false", "1.10")
    or from the recorded config (True, 1.1): YAML scalars are parsed, then printed as
    Hydra would accept them (true/false, null, numbers as Python prints them)."""
    if isinstance(value, str):
        import yaml

        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if not isinstance(parsed, (bool, int, float, type(None))):
            return value
        value = parsed
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


_HYDRA_CONFIGS: dict[Path, dict[str, Any]] = {}


def _hydra_config(run_dir: Path, name: str = "config.yaml") -> dict[str, Any]:
    path = Path(run_dir) / ".hydra" / name
    if path not in _HYDRA_CONFIGS:
        config = {}
        if path.exists():
            import yaml

            try:
                config = yaml.safe_load(path.read_text()) or {}
            except (yaml.YAMLError, UnicodeDecodeError):
                config = {}
        _HYDRA_CONFIGS[path] = config if isinstance(config, dict) else {}
    return _HYDRA_CONFIGS[path]
