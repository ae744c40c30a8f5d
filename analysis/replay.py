"""Run the tracker's measurements over existing checkpoints, writing the same record a live
run writes — so released checkpoint suites and our own runs share one plot.

    # a released suite, norms only: just the embedding bytes of each step are read
    python -m normx_track.gold EleutherAI/pythia-70m corpus.txt --out pythia_gold.npz
    python -m analysis.replay EleutherAI/pythia-70m --revisions all \\
        --gold pythia_gold.npz --tokens-per-step 2097152 --workers 4 --out pythia70m
    # a local folder holding one HF folder per step (step0/, step1000/, ...)
    python -m analysis.replay my_suite/ --gold gold.npz --out my_suite_replayed
    # our own checkpoints, measured against the run's own gold statistics and probes
    python -m analysis.replay outputs/run/checkpoints/step_*.ckpt --like outputs/run --out replayed

Checkpoints are measured one at a time in step order (``--workers K``: K read at once,
rows still written in step order), each freed before the next, so memory stays at one
checkpoint's (K's) whatever the suite's length. Hugging Face checkpoints are read norms
only by default (the input and an untied output embedding, by byte range from safetensors);
``--full`` loads whole models, which the probes need. Already recorded steps are skipped,
so an interrupted replay can simply be run again. A step whose input or output embedding is
byte for byte another step's is warned about and flagged in its row
(``normx/replay/same_embeddings_as_step``); meta.json lists the groups.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import deque
from itertools import chain
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .cli import non_negative_int, positive_int


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.replay",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("sources", nargs="+", help="a suite (hub repo or folder of step folders), "
                   "HF model folders or hub repos named by step, or .ckpt files")
    p.add_argument("--revisions", nargs="+", help="the suite's revisions: 'all' (its step "
                   "branches or folders) or names, e.g. step0 step1000")
    p.add_argument("--like", type=Path, help="a run dir whose gold, vocab and settings to use")
    p.add_argument("--gold", type=Path, help="gold.npz (python -m normx_track.gold)")
    p.add_argument("--vocab", type=Path, help="vocab.json: token strings by id "
                   "(default: the one beside --gold)")
    p.add_argument("--min-count", type=non_negative_int, default=None)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--norms-only", action="store_true", help="read only the embedding "
                      "tensors (the default for Hugging Face checkpoints)")
    mode.add_argument("--full", action="store_true", help="load whole models (for probes)")
    p.add_argument("--probes", type=Path, help="with --full: an evidence probe file (JSON "
                   "lines, or BLiMP rows) scored with the suite's tokenizer")
    p.add_argument("--tokens-per-step", type=non_negative_int, default=None,
                   help="tokens per optimizer step (Pythia: 2097152) for tokens_seen")
    p.add_argument("--workers", type=positive_int, default=1, help="checkpoints read at once")
    p.add_argument("--out", type=Path, required=True, help="run dir to write normx/ into")
    return p


if __name__ == "__main__":  # --help and a bad option answer before the imports below
    parser().parse_args()

from normx_track import keys  # noqa: E402
from normx_track.gold.statistics import GoldStatistics  # noqa: E402
from normx_track.probes.protocol import run_probes  # noqa: E402
from normx_track.record.checkpoint_loader import (CheckpointError, load_lightning,  # noqa: E402
                                                  load_pretrained, read_lightning_checkpoint)
from normx_track.record.embedding_reader import fingerprint, read_embeddings  # noqa: E402
from normx_track.record.store import (RecordLock, RecordLockedError, RecordWriter, read_json,  # noqa: E402
                                      read_metrics, record_dir, set_aside, vocab_hash)
from normx_track.record.suite import (Checkpoint, is_local_suite,  # noqa: E402
                                      single_checkpoints, suite_checkpoints, suite_tokenizer)
from normx_track.modeling import row_norms  # noqa: E402
from normx_track.tracker.snapshot import NormMetrics, norm_arrays  # noqa: E402
from normx_track.training.config import TrackerConfig  # noqa: E402


def _fail(message: str) -> None:
    sys.exit(f"replay: {message}")


# ------------------------------------------------------------------ what is measured
@dataclass
class Job:
    """One checkpoint to measure: its step and how to read it."""

    step: int
    source: str
    read: Callable[[], "Measured"]
    tokens_seen: int | None = None


@dataclass
class Measured:
    """A checkpoint's norms and what else its row gets."""

    arrays: dict[str, Any]
    fingerprints: dict[str, str]
    columns: dict[str, Any] = field(default_factory=dict)
    tokens_seen: int | None = None


def _norms_only(checkpoint: Checkpoint) -> Measured:
    embeddings = read_embeddings(checkpoint.files)
    arrays = {f"{side}_norm": row_norms(m).numpy() for side, m in embeddings.matrices().items()}
    return Measured(arrays, embeddings.fingerprints,
                    {keys.REPLAY_BYTES_READ: embeddings.bytes_read,
                     keys.REPLAY_FILE_BYTES: embeddings.file_bytes})


def _model_fingerprints(model) -> dict[str, str]:
    inputs = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    prints = {"input": fingerprint(inputs)}
    if head is not None and head.weight.data_ptr() != inputs.data_ptr():
        prints["output"] = fingerprint(head.weight)
    return prints


def _whole_model(load: Callable, probes: list) -> Callable[[], Measured]:
    def read() -> Measured:
        loaded = load()
        measured = Measured(norm_arrays(loaded.model), _model_fingerprints(loaded.model),
                            run_probes(probes, loaded.model), loaded.tokens_seen)
        del loaded  # freed before the next checkpoint is read
        return measured
    return read


def _lightning_step(path: str) -> int:
    """A .ckpt's step without loading its tensors (mmap), so files can be ordered first."""
    return int(read_lightning_checkpoint(path, mmap=True).get("global_step", 0))


def lightning_jobs(paths: list[str], probes: list) -> list[Job]:
    jobs = [Job(_lightning_step(p), p, _whole_model(lambda p=p: load_lightning(p), probes))
            for p in dict.fromkeys(paths)]
    return sorted(jobs, key=lambda j: j.step)


def suite_jobs(checkpoints: list[Checkpoint], full: bool, probes: list,
               tokens_per_step: int | None) -> list[Job]:
    jobs = []
    for c in checkpoints:
        if full:
            read = _whole_model(lambda c=c: load_pretrained(*c.pretrained_args()), probes)
        else:
            read = (lambda c=c: _norms_only(c))
        tokens = c.step * tokens_per_step if tokens_per_step else c.tokens_in_name
        jobs.append(Job(c.step, c.source, read, tokens))
    return jobs


def in_order(jobs: Iterable[Job], workers: int) -> Iterator[tuple[Job, Measured]]:
    """Each job's measurement in the jobs' order, ``workers`` read at once (threads: the
    reading is I/O, and torch releases the GIL in its kernels). At most ``workers``
    measurements are held while the caller writes one."""
    pending: deque = deque()
    jobs = iter(jobs)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        def submit() -> None:
            job = next(jobs, None)
            if job is not None:
                pending.append((job, pool.submit(job.read)))
        for _ in range(workers):
            submit()
        while pending:
            job, future = pending.popleft()
            measured = future.result()
            submit()
            yield job, measured


# -------------------------------------------------------------------- the record
class SameEmbeddings:
    """Which earlier step's input or output embedding a step's equals, by fingerprint; the
    fingerprints persist in meta.json so a resumed replay still sees the earlier steps."""

    def __init__(self, recorded: dict[str, dict[str, str]]):
        self.prints = dict(recorded)

    def earlier(self, step: int, prints: dict[str, str]) -> int | None:
        same = [int(s) for s, other in self.prints.items() if int(s) != step and any(
            other.get(side) == value for side, value in prints.items())]
        return min(same) if same else None

    def add(self, step: int, prints: dict[str, str]) -> None:
        self.prints[str(step)] = prints

    def groups(self) -> list[list[int]]:
        """Steps sharing an input or an output embedding, each group in step order."""
        by_print: dict[tuple[str, str], list[int]] = {}
        for step, prints in self.prints.items():
            for side, value in prints.items():
                by_print.setdefault((side, value), []).append(int(step))
        groups = {tuple(sorted(s)) for s in by_print.values() if len(s) > 1}
        return [list(g) for g in sorted(groups)]


def measure_checkpoints(jobs: list[Job], gold: GoldStatistics, out: Path, min_count: int,
                        vocab: list[str] | None, meta: dict, workers: int = 1) -> list[int]:
    """Snapshot every checkpoint into the record at `out`, one at a time in step order;
    returns the steps written. A record already at `out` is continued when it is a replay of
    the same suite and vocabulary, else set aside (``normx.replaced-<time>``), as `train.py`
    does — only once the first checkpoint has been read, so a replay that cannot start
    changes nothing."""
    lock = RecordLock.acquire(out)
    try:
        before = _same_replay(out, meta)
        done = {int(r["step"]) for r in read_metrics(out, warn=False)} if before else set()
        results = in_order([j for j in jobs if j.step not in done], workers)
        first = next(results, None)
        if first is None:
            return []
        if before is None:
            moved = set_aside(out)
            if moved is not None:
                print(f"replay: {record_dir(out)} held another record; moved it to {moved}")
        prints = (before or {}).get(keys.REPLAY_FINGERPRINTS) or {}
        return _write_rows(chain([first], results), gold, out, min_count, vocab, meta, prints)
    finally:
        lock.release()


def _same_replay(out: Path, meta: dict) -> dict | None:
    """The meta.json of an interrupted replay of the same suite at `out`, to continue."""
    if not (record_dir(out) / "meta.json").exists():
        return None
    before = read_json(out, "meta.json") or {}
    same = before.get("vocab_hash") == meta.get("vocab_hash") and \
        before.get("replay_of") == meta.get("replay_of")
    return before if same else None


def _write_rows(results: Iterable[tuple[Job, Measured]], gold: GoldStatistics, out: Path,
                min_count: int, vocab: list[str] | None, meta: dict,
                prints: dict[str, dict[str, str]]) -> list[int]:
    writer = RecordWriter(out)
    same = SameEmbeddings(prints)
    writer.write_meta(meta)
    if vocab is not None:
        writer.write_vocab(vocab)
    gold.save(writer.dir / "gold.npz")
    metrics = NormMetrics({n: getattr(gold, n) for n in gold.names()}, gold.counts, min_count)
    written = []
    for job, measured in results:
        earlier = same.earlier(job.step, measured.fingerprints)
        if earlier is not None:
            print(f"replay: warning: {job.source} (step {job.step}) has the embeddings of step "
                  f"{earlier}: the suite may serve one step's weights under another's name",
                  file=sys.stderr)
        same.add(job.step, measured.fingerprints)
        # fingerprints first: a kill before the row leaves a step that is simply redone
        writer.write_meta({**meta, keys.REPLAY_FINGERPRINTS: same.prints,
                           keys.REPLAY_SAME_GROUPS: same.groups()})
        row = {"step": job.step, "tokens_seen": job.tokens_seen if job.tokens_seen is not None
               else measured.tokens_seen}
        row.update(metrics(measured.arrays))
        row.update(measured.columns)
        row[keys.REPLAY_SAME_EMBEDDINGS] = earlier
        writer.write_snapshot(job.step, measured.arrays)
        writer.insert_metrics(row)
        written.append(job.step)
    return written


# ---------------------------------------------------------------------- settings
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


def _vocab_file(args: argparse.Namespace) -> Path | None:
    """--vocab, else the vocab.json the gold command wrote beside the gold file."""
    if args.vocab:
        return args.vocab
    beside = Path(args.gold).with_name("vocab.json")
    return beside if beside.exists() else None


def _settings(args: argparse.Namespace) -> tuple[GoldStatistics, list[str] | None, int, dict]:
    if args.like:
        meta = _known_tracker_keys(_read_like(args.like, "meta.json"), args.like)
        gold = GoldStatistics.load(record_dir(args.like) / "gold.npz")
        vocab = _read_like(args.like, "vocab.json", required=False)
        min_count = args.min_count or meta.get("tracker", {}).get("min_count", 10)
        return gold, vocab, min_count, {**meta, "replay_of": str(args.like)}
    if not args.gold:
        raise SystemExit("replay: give --gold GOLD.npz (python -m normx_track.gold writes one) "
                         "or --like RUN_DIR (a run's record)")
    gold = GoldStatistics.load(args.gold)
    path = _vocab_file(args)
    vocab = json.loads(path.read_text(encoding="utf-8")) if path else None
    min_count = 10 if args.min_count is None else args.min_count
    return gold, vocab, min_count, {"vocab_size": gold.vocab_size, "vocab_hash": vocab_hash(vocab),
                                    "gold": gold.names(), "gold_file": str(args.gold),
                                    "gold_provenance": gold.provenance,
                                    "tracker": {"min_count": min_count}}


def check_rows(rows: int, source: str, gold: GoldStatistics, meta: dict) -> None:
    """Refuse a model whose vocabulary cannot be the gold's: fewer embedding rows than the
    gold has types, or other rows than the --like run's model."""
    expected = meta.get("embedding_rows")
    if rows < gold.vocab_size or (expected is not None and rows != expected):
        _fail(f"{source}: the model has {rows} embedding rows but the gold statistics cover "
              f"{gold.vocab_size} token types" + (f" (the --like run's model had {expected})"
                                                 if expected else "")
              + ": another tokenizer's model?")


def check_run_tokenizer(paths: list[str], meta: dict) -> None:
    """A .ckpt of one of our runs says its tokenizer through its run's meta.json."""
    for source in paths:
        path = Path(source)
        run_meta = path.parent.parent / "normx" / "meta.json"
        if path.parent.name != "checkpoints" or not run_meta.exists():
            continue
        own = read_json(run_meta.parent, "meta.json") or {}
        if meta.get("vocab_hash") and own.get("vocab_hash") not in (None, meta["vocab_hash"]):
            _fail(f"{source}: its run used another tokenizer than the --like run "
                  "(vocab_hash differs)")


def check_suite_tokenizer(tokenizer, gold: GoldStatistics, gold_vocab: list[str] | None,
                          suite: str, gold_file: Path | None) -> None:
    """Norms and gold indexed by different tokenizers would correlate unrelated types: the
    gold's vocabulary (its provenance, as the gold command records it, else the vocab.json
    beside it) must be the suite tokenizer's."""
    recorded = (gold.provenance or {}).get("vocab_hash") or vocab_hash(gold_vocab)
    if tokenizer is None or recorded is None:
        print(f"replay: warning: {suite}: " + ("no tokenizer found" if tokenizer is None else
              "the gold records no vocabulary and has no vocab.json beside it")
              + "; only the vocabulary's size is checked", file=sys.stderr)
        return
    from normx_track.record.vocabulary import token_strings

    if vocab_hash(token_strings(tokenizer)) != recorded:
        _fail(f"{gold_file}: its gold statistics were computed with another tokenizer than "
              f"{suite}'s (the vocabularies differ); compute them with python -m "
              f"normx_track.gold {suite} CORPUS")


# ------------------------------------------------------------------------ command
def _suite_probes(args: argparse.Namespace, tokenizer, checkpoint: Checkpoint) -> list:
    """--probes with the suite's tokenizer: evidence and minimal-pair accuracy."""
    from normx_track.record.embedding_reader import read_config
    from normx_track.training.config import MASKED_ARCHS
    from normx_track.training.tracker_factory import build_probes

    if tokenizer is None:
        _fail(f"--probes: {checkpoint.source} has no tokenizer to encode the probes with")
    config = read_config(checkpoint.files)
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions",
                                                                          None)
    settings = TrackerConfig(faithfulness_examples=0, probe_file=str(args.probes))
    return build_probes(settings, 0, tokenizer, None, None, context,
                        config.model_type in MASKED_ARCHS)


def _hf_jobs(args: argparse.Namespace, gold: GoldStatistics, vocab, meta: dict) -> list[Job]:
    suite = args.sources[0] if args.revisions or _one_local_suite(args.sources) else None
    if suite is not None:
        checkpoints = suite_checkpoints(suite, args.revisions or ["all"])
    else:
        checkpoints = single_checkpoints(args.sources)
    tokenizer = suite_tokenizer(checkpoints, suite)
    if not args.like:
        check_suite_tokenizer(tokenizer, gold, vocab, suite or checkpoints[0].source,
                              args.gold)
    probes = _suite_probes(args, tokenizer, checkpoints[0]) if args.probes else []
    label = suite or checkpoints[0].source
    meta.update(replay_of=label, suite=suite, revisions=[c.name for c in checkpoints],
                norms_only=not args.full)
    if not args.like:  # what analysis.sweep groups by (--group-by suite) and keeps apart
        meta["config"] = {"suite": label, "data": {"gold": gold_fingerprint(gold)}}
    return suite_jobs(checkpoints, args.full, probes, args.tokens_per_step)


def gold_fingerprint(gold: GoldStatistics) -> str:
    """Suites replayed against the same gold share it: analysis.sweep averages only those."""
    digest = hashlib.sha256(f"{gold.window} {gold.n_tokens} {gold.seed}".encode())
    for name in gold.names():
        digest.update(name.encode() + getattr(gold, name).tobytes())
    return digest.hexdigest()


def _one_local_suite(sources: list[str]) -> bool:
    return len(sources) == 1 and is_local_suite(Path(sources[0]))


def _checked(jobs: list[Job], gold: GoldStatistics, meta: dict) -> list[Job]:
    """Each job's rows checked against the gold's vocabulary as it is read."""
    def checked(job: Job) -> Job:
        def read() -> Measured:
            measured = job.read()
            check_rows(len(measured.arrays["input_norm"]), job.source, gold, meta)
            return measured
        return Job(job.step, job.source, read, job.tokens_seen)
    return [checked(j) for j in jobs]


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.probes and not args.full:
        _fail("--probes needs --full (the probes run the whole model)")
    try:
        gold, vocab, min_count, meta = _settings(args)
    except (OSError, ValueError, KeyError) as err:
        _fail(f"cannot read the gold statistics ({err})")
    ckpts = [s for s in args.sources if s.endswith(".ckpt")]
    try:
        if ckpts:
            if len(ckpts) != len(args.sources) or args.revisions:
                _fail("give either .ckpt files or Hugging Face checkpoints, not both")
            check_run_tokenizer(ckpts, meta)
            jobs = lightning_jobs(ckpts, _like_probes(args, meta))
            meta["replay_sources"] = [j.source for j in jobs]
        else:
            jobs = _hf_jobs(args, gold, vocab, meta)
        steps = measure_checkpoints(_checked(jobs, gold, meta), gold, args.out, min_count,
                                    vocab, meta, args.workers)
    except (CheckpointError, RecordLockedError) as err:
        _fail(str(err))
    print(f"replay: recorded steps {steps} in {record_dir(args.out)}")


def _like_probes(args: argparse.Namespace, meta: dict) -> list:
    from normx_track.training.tracker_factory import probes_for_record

    try:
        return probes_for_record(meta) if args.like else []
    except FileNotFoundError as err:
        _fail(str(err))


if __name__ == "__main__":
    main()
