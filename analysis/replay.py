"""Run the tracker's measurements over existing checkpoints, writing the same record a live
run writes — so released checkpoint suites and our own runs share one plot.

    # our own checkpoints, measured against the run's own gold statistics and settings
    python -m analysis.replay outputs/run/checkpoints/step_*.ckpt --like outputs/run --out replayed
    # a hub suite (needs network or a warm HF cache), gold computed with its tokenizer
    python -m analysis.replay EleutherAI/pythia-70m --revisions step1000 step2000 \\
        --gold pythia_gold.npz --vocab pythia_vocab.json --out pythia70m

Steps come from the checkpoint (Lightning) or a `stepN` in the revision or directory name.
Already recorded steps are skipped, so an interrupted replay can simply be run again.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from normx_track.record.store import vocab_hash
from normx_track.probes.base import run_probes
from normx_track.record.checkpoint_loader import CheckpointError, LoadedModel, load_model
from normx_track.gold.statistics import GoldStatistics
from normx_track.record.store import (RecordLock, RecordLockedError, RecordWriter, read_json,
                                 record_dir, set_aside)
from normx_track.tracker.snapshot import NormMetrics, norm_arrays
from normx_track.training.config import TrackerConfig

from .load import non_negative_int
from normx_track.training.tracker_factory import probes_for_record


def measure_checkpoints(loaded: list[LoadedModel], gold: GoldStatistics, out: Path,
                        min_count: int, vocab: list[str] | None, meta: dict,
                        probes: list = ()) -> list[int]:
    """Snapshot every model into the record at `out`; returns the steps written. A record
    already at `out` is continued when it is a replay of the same vocabulary, else set aside
    (``normx.replaced-<time>``) first, as `train.py` does."""
    lock = RecordLock.acquire(out)
    try:
        _set_aside_other_record(out, meta)
        return _measure(loaded, gold, out, min_count, vocab, meta, probes)
    finally:
        lock.release()


def _set_aside_other_record(out: Path, meta: dict) -> None:
    before = read_json(out, "meta.json") if (record_dir(out) / "meta.json").exists() else None
    if before is not None and before.get("vocab_hash") == meta.get("vocab_hash") and \
            before.get("replay_of") == meta.get("replay_of"):
        return  # an interrupted replay of the same run: continue it
    moved = set_aside(out)
    if moved is not None:
        print(f"replay: {record_dir(out)} held another record; moved it to {moved}")


def _measure(loaded: list[LoadedModel], gold: GoldStatistics, out: Path, min_count: int,
             vocab: list[str] | None, meta: dict, probes: list) -> list[int]:
    writer = RecordWriter(out)
    writer.write_meta(meta)
    if vocab is not None:
        writer.write_vocab(vocab)
    gold.save(writer.dir / "gold.npz")
    signals = {n: getattr(gold, n) for n in gold.names()}
    metrics = NormMetrics(signals, gold.counts, min_count)
    done, written = set(writer.steps()), []
    for item in sorted(loaded, key=lambda m: m.step):
        if item.step in done:
            continue
        arrays = norm_arrays(item.model)
        row = {"step": item.step, "tokens_seen": item.tokens_seen}
        row.update(metrics(arrays))
        row.update(run_probes(probes, item.model))
        writer.write_snapshot(item.step, arrays)
        writer.append_metrics(row)
        written.append(item.step)
    return written


def _read_like(like: Path, name: str, required: bool = True) -> Any:
    """A JSON file of the --like run's record: a missing or unreadable one is named."""
    path = record_dir(like) / name
    if not path.exists():
        if not required:
            return None
        raise SystemExit(f"replay: {path}: no such file; is {like} a normx run dir?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SystemExit(f"replay: {path}: unreadable ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None


def _known_tracker_keys(meta: dict, like: Path) -> dict:
    """meta.json from another version may name tracker settings this one lacks: ignored,
    and said, rather than failing to build the probes."""
    tracker = (meta.get("config") or {}).get("tracker")
    if not isinstance(tracker, dict):
        return meta
    known = {f.name for f in fields(TrackerConfig)}
    unknown = sorted(set(tracker) - known)
    if not unknown:
        return meta
    print(f"replay: warning: {record_dir(like) / 'meta.json'}: tracker setting(s) {unknown} "
          "unknown to this version of normx-track; ignored", file=sys.stderr)
    config = {**meta["config"], "tracker": {k: v for k, v in tracker.items() if k in known}}
    return {**meta, "config": config}


def _settings(args: argparse.Namespace) -> tuple[GoldStatistics, list[str] | None, int, dict]:
    if args.like:
        meta = _known_tracker_keys(_read_like(args.like, "meta.json"), args.like)
        gold = GoldStatistics.load(record_dir(args.like) / "gold.npz")
        vocab = _read_like(args.like, "vocab.json", required=False)
        min_count = args.min_count or meta.get("tracker", {}).get("min_count", 10)
        return gold, vocab, min_count, {**meta, "replay_of": str(args.like)}
    if not args.gold:
        raise SystemExit("give --like RUN_DIR (a run's record) or --gold GOLD.npz")
    gold = GoldStatistics.load(args.gold)
    vocab = json.loads(Path(args.vocab).read_text()) if args.vocab else None
    return gold, vocab, args.min_count or 10, {"vocab_size": gold.vocab_size,
                                               "vocab_hash": vocab_hash(vocab),
                                               "gold": gold.names()}


def check_vocabulary(loaded: list[LoadedModel], gold: GoldStatistics, meta: dict) -> None:
    """Refuse models whose vocabulary is not the gold's: a model with fewer embedding rows,
    or other rows or another tokenizer than the run given by --like (a checkpoint of one of
    our runs says its tokenizer through its run's meta.json)."""
    rows_expected = meta.get("embedding_rows")
    for item in loaded:
        rows = int(item.model.get_input_embeddings().weight.shape[0])
        if rows < gold.vocab_size or (rows_expected is not None and rows != rows_expected):
            sys.exit(f"replay: {item.source}: the model has {rows} embedding rows but the gold "
                     f"statistics cover {gold.vocab_size} token types"
                     + (f" (the --like run's model had {rows_expected})" if rows_expected
                        else "") + ": another tokenizer's model?")
        own = _checkpoint_run_meta(item.source)
        if own and meta.get("vocab_hash") and own.get("vocab_hash") not in (None,
                                                                            meta["vocab_hash"]):
            sys.exit(f"replay: {item.source}: its run used another tokenizer than the "
                     f"--like run (vocab_hash differs)")


def _checkpoint_run_meta(source: str) -> dict | None:
    path = Path(source)
    if path.suffix != ".ckpt" or path.parent.name != "checkpoints":
        return None
    meta = path.parent.parent / "normx" / "meta.json"
    return read_json(meta.parent, "meta.json") if meta.exists() else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.replay",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help=".ckpt files, HF model dirs or a hub name")
    parser.add_argument("--revisions", nargs="*", help="hub revisions of one model, e.g. step1000")
    parser.add_argument("--like", type=Path, help="a run dir whose gold, vocab and settings to use")
    parser.add_argument("--gold", type=Path, help="gold.npz (with --vocab) when not --like")
    parser.add_argument("--vocab", type=Path, help="vocab.json: token strings by id")
    parser.add_argument("--min-count", type=non_negative_int, default=None)
    parser.add_argument("--out", type=Path, required=True, help="run dir to write normx/ into")
    args = parser.parse_args(argv)
    try:
        gold, vocab, min_count, meta = _settings(args)
    except (OSError, ValueError, KeyError) as err:
        sys.exit(f"replay: cannot read the gold statistics ({err})")
    try:
        if args.revisions:
            loaded = [load_model(args.sources[0], revision=r) for r in args.revisions]
        else:
            loaded = [load_model(s) for s in args.sources]
    except CheckpointError as err:
        sys.exit(f"replay: {err}")
    unknown = [m.source for m in loaded if m.step is None]
    if unknown:
        sys.exit(f"replay: cannot tell the training step of {unknown}; name them with stepN")
    check_vocabulary(loaded, gold, meta)
    meta["replay_sources"] = [m.source for m in loaded]
    try:
        probes = probes_for_record(meta) if args.like else []
    except FileNotFoundError as err:
        sys.exit(f"replay: {err}")
    try:
        steps = measure_checkpoints(loaded, gold, args.out, min_count, vocab, meta, probes)
    except RecordLockedError as err:
        sys.exit(f"replay: {err}")
    print(f"replay: recorded steps {steps} in {record_dir(args.out)}")


if __name__ == "__main__":
    main()
