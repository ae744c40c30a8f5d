"""Gold statistics of a corpus larger than memory: the same result as `compute_gold`, with
memory bounded by a chunk size rather than by the stream, on several cores.

The stream goes to a temporary token file first (`TokenFile`: ids in the smallest uint
dtype that holds the vocabulary, uint16 up to 65536 types, plus the document lengths),
then is read back by chunks of whole documents, the chunks `compute_gold` itself uses
(`cooccurrence.document_chunks`, computed here without holding all document lengths):

1. counts c(w) and n_w = sum_c C[w,c] (integer-valued, summed chunk by chunk);
2. per chunk, in a worker: its share of sum_c C[w,c] log m_c (the positional term), and the
   sorted distinct pair keys of the chunk with their counts (`cooccurrence.chunk_terms`,
   `runs`), spilled to a temporary file (about 8 bytes per distinct pair of the chunk);
3. per bucket, in a worker: the keys of a key range, read from every chunk's spill
   (each spill is sorted, so a range is a slice), merged (`cooccurrence.merge`) into the
   range's diagonal counts and repeated pairs' C log C terms (`cooccurrence.clogc_terms`),
   which the parent adds into sum_c C log C in key order (np.add.at, one term after
   another, as `sum_clogc`'s np.bincount does). Bucket boundaries are quantiles of a
   sample of all spilled keys, about ``bucket_pairs`` distinct pairs a bucket.

Working memory is a chunk per worker (roughly 100 bytes per token of ``chunk_tokens``, as
`cooccurrence_kl` says) or a bucket per worker (roughly 40 bytes per spilled pair of
``bucket_pairs``, by default ``max(chunk_tokens, 2**20)``), plus arrays [V]; never all
pairs or all tokens. The spill needs disk:
about 8 bytes (12 for V > 65535) per distinct pair per chunk, e.g. ~1.5 GB at 100 M
tokens of a 50k Zipfian vocabulary.

The shuffle correction permutes the whole token file in place with
``np.random.default_rng(seed).shuffle``: Fisher-Yates draws depend on the length only, not
on the dtype, so it is `compute_gold`'s permutation of its int64 stream (tested). It is
the one step whose memory grows with the stream: the token file's pages (2 bytes a token
for V <= 65536, 4 beyond; 200 MB at 100 M tokens) are touched at random, so they must
fit in memory (as page cache, counted in the process's RSS). Without the correction
nothing scales with the stream.

Exactness: the result is bitwise `compute_gold(documents, ..., chunk_tokens=chunk_tokens)`
(all signals, the corrected information gain included), whatever ``workers`` and
``bucket_pairs``: counts and n_w are integers; the log m term is summed over the same
chunks in the same order; sum_c C log C is summed term by term in key order as above.
With another ``chunk_tokens`` than `compute_gold`'s, the log m term is summed in another
order and information gain can differ in its last bits (as `compute_gold`'s own results
at two chunk sizes do: its terms nearly cancel, so relative differences up to ~1e-12 in
information gain and more in the corrected one, a difference of two close values).
"""
from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from normx_track.errors import InputError
from normx_track.gold.cooccurrence import (check_window, chunk_terms, clogc_terms,
                                           kl_from_sums, log_counts, merge, neighbour_counts,
                                           pair_key_dtype, runs, triangular_numbers,
                                           xlogx)
from normx_track.gold.statistics import GoldStatistics

PROVENANCE_KEYS = ("tokenizer", "vocab_hash", "vocab_size", "corpus", "text_field",
                   "n_tokens", "n_documents", "max_tokens", "window", "eos",
                   "shuffle_correction", "seed", "normx_track_version")

DEFAULT_CHUNK_TOKENS = 1 << 22
# Buckets hold at least this many pairs by default (~40 MB to merge): tiny chunks would
# otherwise make (stream / chunk)**2 bucket-by-spill reads.
MIN_BUCKET_PAIRS = 1 << 20


class EmptyStreamError(InputError):
    """The stream holds no token."""


def token_dtype(vocab_size: int):
    """The smallest unsigned dtype holding ids 0..vocab_size-1."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


# ------------------------------------------------------------------------ token file
@dataclass(frozen=True)
class TokenFile:
    """A token stream on disk: ids (``dtype``) and document lengths (int64)."""

    tokens: Path
    lengths: Path
    dtype: str
    n_tokens: int
    n_documents: int

    def ids(self, mode: str = "r") -> np.ndarray:
        if self.n_tokens == 0:
            return np.zeros(0, self.dtype)
        return np.memmap(self.tokens, dtype=self.dtype, mode=mode, shape=(self.n_tokens,))

    def document_lengths(self) -> np.ndarray:
        if self.n_documents == 0:
            return np.zeros(0, np.int64)
        return np.memmap(self.lengths, dtype=np.int64, mode="r", shape=(self.n_documents,))


class TokenWriter:
    """Appends documents (arrays of ids) to a `TokenFile`, the first ``max_tokens`` tokens
    of the stream only (the last document cut there, as `compute_gold` cuts it). Empty
    documents are dropped (they hold no token and no pair)."""

    def __init__(self, directory: str | os.PathLike, vocab_size: int,
                 max_tokens: int | None = None):
        self.dir = Path(directory)
        self.vocab_size, self.max_tokens = vocab_size, max_tokens
        self.dtype = token_dtype(vocab_size)
        self._tokens = open(self.dir / "tokens.bin", "wb")
        self._lengths = open(self.dir / "lengths.bin", "wb")
        self.n_tokens = self.n_documents = 0

    @property
    def full(self) -> bool:
        return self.max_tokens is not None and self.n_tokens >= self.max_tokens

    def add(self, documents: Iterable[np.ndarray]) -> int:
        """Append ``documents``; returns how many tokens were kept."""
        kept, lengths = [], []
        for doc in documents:
            if self.full:
                break
            doc = np.asarray(doc).ravel()
            if self.max_tokens is not None:
                doc = doc[: self.max_tokens - self.n_tokens]
            if not doc.size:
                continue
            if doc.min() < 0 or doc.max() >= self.vocab_size:
                raise ValueError(f"token ids must lie in [0, {self.vocab_size}); got "
                                 f"[{doc.min()}, {doc.max()}]")
            kept.append(doc.astype(self.dtype, copy=False))
            lengths.append(doc.size)
            self.n_tokens += doc.size
        if kept:
            np.concatenate(kept).tofile(self._tokens)
            np.asarray(lengths, dtype=np.int64).tofile(self._lengths)
            self.n_documents += len(kept)
        return sum(lengths)

    def close(self) -> TokenFile:
        self._tokens.close()
        self._lengths.close()
        return TokenFile(self.dir / "tokens.bin", self.dir / "lengths.bin",
                         np.dtype(self.dtype).name, self.n_tokens, self.n_documents)


def iter_document_chunks(lengths: np.ndarray, chunk_tokens: int
                         ) -> Iterator[tuple[int, int, int, int]]:
    """(first document, end document, first token, end token) of each chunk: the chunks of
    `cooccurrence.document_chunks` (whole documents, about ``chunk_tokens`` tokens, at least
    one document each), read from ``lengths`` (a memmap) a window at a time."""
    d0, t0, n = 0, 0, lengths.size
    step = 1024
    while d0 < n:
        k = step
        while True:
            ends = t0 + np.cumsum(lengths[d0:d0 + k], dtype=np.int64)
            if ends[-1] > t0 + chunk_tokens or d0 + k >= n:
                break
            k *= 2
        d1 = d0 + max(1, int(np.searchsorted(ends, t0 + chunk_tokens, side="right")))
        t1 = int(ends[d1 - d0 - 1])
        step = max(1024, d1 - d0)
        yield d0, d1, t0, t1
        d0, t0 = d1, t1


# --------------------------------------------------------------------- worker tasks
# Module-level functions with plain arguments: spawn-safe (a fresh interpreter imports
# this module and unpickles the arguments).
def _chunk_ids(tf: TokenFile, chunk) -> tuple[np.ndarray, np.ndarray]:
    d0, d1, t0, t1 = chunk
    ids = np.asarray(tf.ids()[t0:t1]).astype(np.int64)
    return ids, np.array(tf.document_lengths()[d0:d1])


def _pass1_task(tf: TokenFile, chunk, window: int, vocab_size: int):
    """Counts c(w) and n_w of one chunk (integers: any summation order is exact)."""
    ids, lens = _chunk_ids(tf, chunk)
    return (np.bincount(ids, minlength=vocab_size),
            neighbour_counts(ids, lens, window, vocab_size))


def _pass2_task(tf: TokenFile, chunk, window: int, vocab_size: int, log_n_path: str,
                spill: str) -> tuple[np.ndarray, tuple[int, str]]:
    """One chunk's log m term [V]; its distinct pair keys and counts go to ``spill``
    (.keys / .counts files, sorted by key). Returns (log m term, (number of pairs, the
    counts' dtype))."""
    ids, lens = _chunk_ids(tf, chunk)
    log_n = np.load(log_n_path)
    key_dtype = pair_key_dtype(vocab_size)
    s_clogm, keys = chunk_terms(ids, lens, log_n, window, vocab_size, key_dtype)
    del ids
    # pairs with the sentinel (id V) sort last: cut before spilling
    keys = keys[:np.searchsorted(keys, key_dtype(triangular_numbers(vocab_size)[vocab_size]))]
    distinct, counts = runs(keys)
    del keys
    distinct.tofile(spill + ".keys")
    counts.tofile(spill + ".counts")
    return s_clogm, (int(distinct.size), counts.dtype.name)


def _spilled(spill: str, n: tuple[int, str], vocab_size: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """The spill's (keys, counts) as memmaps; ``n`` is (pairs > 0, the counts' dtype)."""
    size, count_dtype = n
    return (np.memmap(spill + ".keys", dtype=pair_key_dtype(vocab_size), mode="r", shape=(size,)),
            np.memmap(spill + ".counts", dtype=count_dtype, mode="r", shape=(size,)))


def _bucket_task(spills: list[tuple[str, tuple[int, str]]], lo, hi, vocab_size: int,
                 out: str) -> tuple[np.ndarray, int]:
    """The distinct pairs with lo <= key < hi (None: open), merged over all chunks: their
    diagonal counts [V] (returned) and their repeated off-diagonal pairs' (lo, hi, C log C)
    in key order (written to ``out``.lo/.hi/.clogc; their number returned)."""
    parts = []
    for spill, n in spills:
        keys, counts = _spilled(spill, n, vocab_size)
        a = 0 if lo is None else int(np.searchsorted(keys, keys.dtype.type(lo)))
        b = keys.size if hi is None else int(np.searchsorted(keys, keys.dtype.type(hi)))
        if b > a:
            parts.append((np.array(keys[a:b]), np.array(counts[a:b])))
    if not parts:
        return np.zeros(vocab_size, np.int64), 0
    diag_n, lo_ids, hi_ids, clogc = clogc_terms(*merge(parts), vocab_size)
    del parts
    lo_ids.astype(np.uint32).tofile(out + ".lo")
    hi_ids.astype(np.uint32).tofile(out + ".hi")
    clogc.tofile(out + ".clogc")
    return diag_n.astype(np.int64), int(clogc.size)


def _add_bucket(lo_sum: np.ndarray, hi_sum: np.ndarray, out: str, n: int,
                block: int = 1 << 22) -> None:
    """Add a bucket's C log C terms into the per-token sums, in key order: np.add.at adds
    one term after another as np.bincount does, so the sums over all buckets, in bucket
    order, are `sum_clogc`'s bitwise."""
    lo = np.memmap(out + ".lo", dtype=np.uint32, mode="r", shape=(n,))
    hi = np.memmap(out + ".hi", dtype=np.uint32, mode="r", shape=(n,))
    clogc = np.memmap(out + ".clogc", dtype=np.float64, mode="r", shape=(n,))
    for a in range(0, n, block):
        values = np.array(clogc[a:a + block])
        np.add.at(lo_sum, np.array(lo[a:a + block]).astype(np.intp), values)
        np.add.at(hi_sum, np.array(hi[a:a + block]).astype(np.intp), values)
    del lo, hi, clogc
    for suffix in (".lo", ".hi", ".clogc"):
        Path(out + suffix).unlink(missing_ok=True)


def _call(args):
    fn, *rest = args
    return fn(*rest)


# ------------------------------------------------------------------------- driver
class _Runner:
    """Runs tasks in this process (workers=1) or a spawn pool, results in task order."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None
        if workers > 1:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def map(self, tasks: Iterable[tuple]) -> Iterator:
        if self.pool is None:
            for task in tasks:
                yield _call(task)
            return
        # at most 2 tasks a worker in flight: results (arrays [V]) are held briefly only
        pending: list[concurrent.futures.Future] = []
        for task in tasks:
            pending.append(self.pool.submit(_call, task))
            if len(pending) >= 2 * self.workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


class _Progress:
    """A tqdm bar over tokens (stderr), or nothing."""

    def __init__(self, enabled: bool, total: int | None, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="tok", unit_scale=True,
                            dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def describe(self, desc: str) -> None:
        if self.bar is not None:
            self.bar.set_description(desc)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _stream_kl(tf: TokenFile, vocab_size: int, window: int, chunk_tokens: int,
               bucket_pairs: int, runner: _Runner, work: Path, progress: _Progress,
               tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(counts, KL) of the token file: passes 1-3 of the module docstring."""
    chunks = list(iter_document_chunks(tf.document_lengths(), chunk_tokens))
    counts = np.zeros(vocab_size, np.int64)
    n = np.zeros(vocab_size)
    for c, nc in runner.map((_pass1_task, tf, chunk, window, vocab_size) for chunk in chunks):
        counts += c
        n += nc
    log_n = log_counts(n)
    log_n_path = str(work / f"{tag}_log_n.npy")
    np.save(log_n_path, log_n)
    spills = [(str(work / f"{tag}_chunk{i:06d}"), chunk) for i, chunk in enumerate(chunks)]
    s_clogm, sizes = np.zeros(vocab_size), []
    for (spill, chunk), (part, size) in zip(spills, runner.map(
            (_pass2_task, tf, chunk, window, vocab_size, log_n_path, spill)
            for spill, chunk in spills)):
        s_clogm += part            # in chunk order: compute_gold's order
        sizes.append(size)
        progress.update(chunk[3] - chunk[2])
    spilled = [(spill, size) for (spill, _), size in zip(spills, sizes) if size[0]]
    bounds = _bucket_bounds(spilled, vocab_size, bucket_pairs)
    progress.describe("merging pairs")
    ranges = list(zip([None, *bounds], [*bounds, None]))
    outs = [str(work / f"{tag}_bucket{j:06d}") for j in range(len(ranges))]
    diag_n = np.zeros(vocab_size, np.int64)
    lo_sum, hi_sum = np.zeros(vocab_size), np.zeros(vocab_size)
    for out, (diag, size) in zip(outs, runner.map(
            (_bucket_task, spilled, lo, hi, vocab_size, out)
            for (lo, hi), out in zip(ranges, outs))):
        diag_n += diag
        if size:
            _add_bucket(lo_sum, hi_sum, out, size)
    progress.describe("counting pairs")
    for spill, _ in spills:
        for suffix in (".keys", ".counts"):
            Path(spill + suffix).unlink(missing_ok=True)
    s_clogc = xlogx(2.0 * diag_n) + lo_sum + hi_sum      # as `sum_clogc` adds them
    return counts, kl_from_sums(n, log_n, s_clogc, s_clogm)


def _bucket_bounds(spilled: list[tuple[str, tuple[int, str]]], vocab_size: int,
                   bucket_pairs: int) -> list[int]:
    """Key boundaries splitting the spilled pairs into buckets of about ``bucket_pairs``:
    quantiles of an evenly strided sample of every spill (each is sorted), of at most
    ``bucket_pairs`` keys (a bucket's memory) and 2**20."""
    total = sum(n for _, (n, _) in spilled)
    n_buckets = max(1, math.ceil(total / max(1, bucket_pairs)))
    if n_buckets == 1:
        return []
    sample = min(1 << 20, max(1024, bucket_pairs))
    stride = max(1, total // sample)
    keys = np.sort(np.concatenate([np.array(_spilled(s, n, vocab_size)[0][::stride])
                                   for s, n in spilled]))
    picks = keys[(np.arange(1, n_buckets) * keys.size) // n_buckets]
    return [int(k) for k in np.unique(picks)]


def gold_from_token_file(tf: TokenFile, vocab_size: int, window: int = 5,
                         shuffle_correction: bool = True, seed: int = 0,
                         chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                         bucket_pairs: int | None = None, workers: int = 1,
                         progress: bool = False, work_dir: str | os.PathLike | None = None
                         ) -> GoldStatistics:
    """`compute_gold` of the stream in ``tf`` (see the module docstring). With
    ``shuffle_correction`` the token file is shuffled in place (it is consumed).
    ``provenance`` holds the stream's n_tokens and n_documents (callers add theirs)."""
    check_window(window)
    if tf.n_tokens == 0:
        raise EmptyStreamError("no tokens to compute gold statistics from (empty documents)")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    bucket_pairs = max(chunk_tokens, MIN_BUCKET_PAIRS) if bucket_pairs is None else bucket_pairs
    work = Path(tempfile.mkdtemp(prefix="pairs-", dir=work_dir or tf.tokens.parent))
    bar = _Progress(progress, tf.n_tokens * (2 if shuffle_correction else 1), "counting pairs")
    runner = _Runner(workers)
    try:
        args = (vocab_size, window, chunk_tokens, bucket_pairs, runner, work, bar)
        counts, ig = _stream_kl(tf, *args, "stream")
        corrected = None
        if shuffle_correction:
            ids = tf.ids(mode="r+")
            # the base-class view: Generator.shuffle's fast path takes exact ndarrays only
            np.random.default_rng(seed).shuffle(np.asarray(ids))
            ids.flush()
            del ids
            corrected = ig - _stream_kl(tf, *args, "shuffled")[1]
    finally:
        runner.close()
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    with np.errstate(divide="ignore"):
        self_info = np.where(counts > 0, -np.log(counts / max(tf.n_tokens, 1)), np.nan)
    return GoldStatistics(counts=counts, self_information=self_info, information_gain=ig,
                          information_gain_corrected=corrected, window=window,
                          n_tokens=tf.n_tokens, seed=seed,
                          provenance={"n_tokens": tf.n_tokens, "n_documents": tf.n_documents})


def corpus_gold(documents: Iterable[np.ndarray], vocab_size: int, window: int = 5,
                shuffle_correction: bool = True, seed: int = 0,
                max_tokens: int | None = None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                bucket_pairs: int | None = None, workers: int = 1, progress: bool = False,
                tmp_dir: str | os.PathLike | None = None) -> GoldStatistics:
    """`compute_gold(documents, ...)` with bounded memory: the documents (1-D arrays of
    ids, read once, lazily) go to a temporary token file in ``tmp_dir`` (default: the
    system's), which is then counted by chunks of ``chunk_tokens`` on ``workers``
    processes. Equal to `compute_gold` as the module docstring says."""
    check_window(window)
    with tempfile.TemporaryDirectory(prefix="normx-gold-", dir=tmp_dir) as tmp:
        tf = write_token_file(documents, tmp, vocab_size, max_tokens, progress)
        return gold_from_token_file(tf, vocab_size, window, shuffle_correction, seed,
                                    chunk_tokens, bucket_pairs, workers, progress)


def write_token_file(documents: Iterable[np.ndarray], directory: str | os.PathLike,
                     vocab_size: int, max_tokens: int | None = None,
                     progress: bool = False, batch: int = 1024) -> TokenFile:
    """Write ``documents`` to a `TokenFile` in ``directory`` (a batch at a time)."""
    writer = TokenWriter(directory, vocab_size, max_tokens)
    bar = _Progress(progress, max_tokens, "reading tokens")
    try:
        pending = []
        for doc in documents:
            pending.append(doc)
            if len(pending) == batch:
                bar.update(writer.add(pending))
                pending = []
                if writer.full:
                    break
        bar.update(writer.add(pending))
    finally:
        bar.close()
        tf = writer.close()
    if tf.n_tokens == 0:
        raise EmptyStreamError("no tokens to compute gold statistics from (empty documents)")
    return tf
