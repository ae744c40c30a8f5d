"""Gold importance signals computed from a token stream (DESIGN.md "Definitions").

Signals are arrays of length V indexed by token id:

- ``counts``: c(w); ``self_information``: -log(c(w)/N) (natural log), NaN where c(w) = 0.
- ``information_gain``: KL(p(.|w) || p(.)) from symmetric co-occurrence counts within
  +-W tokens inside documents; NaN for tokens without co-occurrences.
- ``information_gain_corrected``: information_gain minus the same KL computed on a seeded
  shuffle of the stream (see :func:`shuffle_documents`).
- ``function_word``: 1.0 / 0.0 / NaN labels on whole words (see :func:`function_word_labels`).

How the co-occurrence KL is computed fast (no Python loop over tokens)
-----------------------------------------------------------------------
With n_w = sum_c C[w,c], m_c = sum_w C[w,c] (= n_c, C is symmetric) and T = sum C,

    IG(w) = (1/n_w) sum_c C[w,c] log C[w,c] - log n_w - (1/n_w) sum_c C[w,c] log m_c + log T.

n_w and the log m_c term are linear in C, so they come straight from positions: a token
at position p of a length-L document has min(W,p) + min(W,L-1-p) neighbours, and the
log m term sums log m over each occurrence's neighbours (W shifted adds). Only sum_c C log C needs distinct pair
counts: each unordered pair event (x_i, x_j), 0 < j-i <= W, becomes one integer key
``hi*(hi+1)/2 + lo`` (lo <= hi; uint32 for V <= 65535, else uint64), the keys are
sorted (numpy's SIMD sort; a denser bincount table for frequent pairs measured slower)
and run-length counted. Documents are separated by W sentinel tokens, so no
pair crosses a document boundary without a sentinel, and sentinel pairs sort last and
are cut off. Off-diagonal pairs seen once add 1*log 1 = 0 and are never decoded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import zipfile
import zlib
from typing import Callable, Iterable, Sequence

import numpy as np

from normx_track.errors import InputError
from normx_track.gold.word_labels import label_function_words
from normx_track.record.atomic import atomic_open


class GoldFileError(InputError):
    """A gold.npz that cannot be read; the message names the file."""


SIGNALS = ("counts", "self_information", "information_gain",
           "information_gain_corrected", "function_word")


# --------------------------------------------------------------------------- streams
def _as_documents(documents: Iterable[np.ndarray], vocab_size: int,
                  max_tokens: int | None) -> list[np.ndarray]:
    """Validate ids and truncate the stream after its first ``max_tokens`` tokens."""
    docs, total = [], 0
    for doc in documents:
        if max_tokens is not None and total >= max_tokens:
            break
        doc = np.asarray(doc).ravel()
        if doc.size and (doc.min() < 0 or doc.max() >= vocab_size):
            raise ValueError(f"token ids must lie in [0, {vocab_size}); got "
                             f"[{doc.min()}, {doc.max()}]")
        if max_tokens is not None:
            doc = doc[: max_tokens - total]
        docs.append(doc.astype(np.int64, copy=False))
        total += doc.size
    if total == 0:
        raise ValueError("no tokens to compute gold statistics from (empty documents)")
    return docs


def _flatten(documents: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    flat = np.concatenate(documents) if len(documents) else np.zeros(0, np.int64)
    return flat.astype(np.int64, copy=False), lengths


def shuffle_documents(documents: Sequence[np.ndarray], seed: int) -> list[np.ndarray]:
    """The shuffle behind ``information_gain_corrected``.

    All tokens of the stream are permuted together with ``np.random.default_rng(seed)``
    (unigram counts are preserved exactly), then cut back into documents of the original
    lengths, so window truncation at document edges is the same as in the real stream.
    """
    flat, lengths = _flatten(documents)
    flat = _shuffled(flat, seed)
    return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


def _shuffled(flat: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(flat)


def _check_window(window: int) -> None:
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")


def _padded_positions(lengths: np.ndarray, window: int) -> np.ndarray:
    """Where each token goes when every document is followed by ``window`` sentinels.

    Any two real tokens of different documents are then more than ``window`` apart, so
    every within-window pair that crosses a boundary contains a sentinel.
    """
    shift = np.repeat(np.arange(lengths.size, dtype=np.int64) * window, lengths)
    return np.arange(shift.size) + shift


def _padded(values: np.ndarray, positions: np.ndarray, size: int, fill, dtype):
    out = np.full(size, fill, dtype=dtype)
    out[positions] = values
    return out


# --------------------------------------------------------------- distinct pair counts
def _tri(n: int) -> np.ndarray:
    """Triangular numbers 0..n: the first key of row ``hi`` is tri[hi]."""
    i = np.arange(n + 1, dtype=np.int64)
    return i * (i + 1) // 2


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Index of the first element of every run of equal values in a sorted array."""
    new = np.empty(sorted_keys.size, dtype=bool)
    new[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new[1:])
    return np.flatnonzero(new)


def _runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique keys, counts) of a sorted array (np.unique is several times slower)."""
    starts = _run_starts(sorted_keys)
    counts = np.diff(starts, append=sorted_keys.size)
    return sorted_keys[starts], counts.astype(np.uint32) if sorted_keys.size < 2**32 else counts


def _merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Merge (unique keys, counts) of several chunks, summing counts of equal keys."""
    if parts[0][0].dtype == np.uint32:
        # pack (key, count < 2**32 within a chunk) into one uint64: one SIMD sort groups
        packed = np.concatenate([(k.astype(np.uint64) << np.uint64(32)) | c.astype(np.uint64)
                                 for k, c in parts])
        packed.sort()
        keys = (packed >> np.uint64(32)).astype(np.uint32)
        counts = packed & np.uint64(2**32 - 1)
    else:
        keys = np.concatenate([k for k, _ in parts])
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        counts = np.concatenate([c for _, c in parts]).astype(np.int64)[order]
    starts = _run_starts(keys)
    return keys[starts], np.add.reduceat(counts, starts).astype(np.int64)


def _chunk_keys(stream: np.ndarray, window: int) -> np.ndarray:
    """Sorted keys hi*(hi+1)/2 + lo of all pairs (i, i+d), 1 <= d <= W, of ``stream``."""
    keys = np.empty(window * stream.size, dtype=stream.dtype)
    scratch = np.empty(stream.size, dtype=stream.dtype)
    used = 0
    for d in range(1, min(window, stream.size - 1) + 1):
        a, b, m = stream[:-d], stream[d:], stream.size - d
        out, tmp = keys[used:used + m], scratch[:m]
        np.maximum(a, b, out=out)                   # hi
        np.add(out, 1, out=tmp)
        np.multiply(out, tmp, out=out)
        np.right_shift(out, 1, out=out)             # hi*(hi+1)/2, exact in the key dtype
        out += np.minimum(a, b, out=tmp)            # + lo
        used += m
    keys = keys[:used]
    keys.sort()
    return keys


def _document_chunks(lengths: np.ndarray, chunk_tokens: int) -> list[tuple[slice, slice]]:
    """Consecutive groups of whole documents of about ``chunk_tokens`` tokens (at least one
    document each), as (document slice, token slice)."""
    ends = np.cumsum(lengths)
    begins = ends - lengths
    chunks, d0 = [], 0
    while d0 < lengths.size:
        d1 = max(d0 + 1, int(np.searchsorted(ends, begins[d0] + chunk_tokens, side="right")))
        chunks.append((slice(d0, d1), slice(int(begins[d0]), int(ends[d1 - 1]))))
        d0 = d1
    return chunks


def _sum_clogc(keys: np.ndarray, counts: np.ndarray | None, vocab_size: int) -> np.ndarray:
    """Per token w: sum_c C[w,c] log C[w,c] from sorted pair keys: one key per pair
    event (``counts`` None), or distinct keys with their counts.

    C[lo,hi] = C[hi,lo] = k off the diagonal and C[w,w] = 2k (each event (w, w) counts
    both ways). Off-diagonal pairs seen once add 1*log 1 = 0, so only repeated keys and
    the diagonal are looked at. Keys of pairs with the sentinel (id vocab_size) sort
    after all others and are cut.
    """
    diag_n, lo, hi, clogc = _clogc_terms(keys, counts, vocab_size)
    return (_xlogx(2.0 * diag_n) + np.bincount(lo, clogc, minlength=vocab_size)
            + np.bincount(hi, clogc, minlength=vocab_size))


def _clogc_terms(keys: np.ndarray, counts: np.ndarray | None, vocab_size: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_sum_clogc`'s terms: the diagonal's event counts [V] and, for each repeated
    off-diagonal pair in key order, its (lo, hi, C log C)."""
    tri = _tri(vocab_size + 1)
    cut = np.searchsorted(keys, keys.dtype.type(tri[vocab_size]))
    keys, counts = keys[:cut], None if counts is None else counts[:cut]
    # diagonal (w, w) has key tri[w+1] - 1
    diag_key = (tri[1:vocab_size + 1] - 1).astype(keys.dtype)
    first, end = (np.searchsorted(keys, diag_key, side=s) for s in ("left", "right"))
    if counts is None:
        diag_n = end - first
        run_first, run_last = _repeated_runs(keys)
        run_keys, run_n = keys[run_first], run_last - run_first + 1
    else:
        diag_n = np.where(end > first, counts[np.minimum(first, keys.size - 1)], 0) \
            if keys.size else np.zeros(vocab_size, np.int64)
        repeated = np.flatnonzero(counts >= 2)
        run_keys, run_n = keys[repeated], counts[repeated]
    hi = np.searchsorted(tri, run_keys, side="right") - 1
    lo = run_keys.astype(np.int64) - tri[hi]
    off = lo != hi
    c = run_n[off].astype(np.float64)
    return diag_n, lo[off], hi[off], c * np.log(c)


def _repeated_runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of every run of >= 2 equal values in a sorted array."""
    same = np.zeros(sorted_keys.size + 1, dtype=bool)   # same[i]: keys[i-1] == keys[i]
    np.equal(sorted_keys[1:], sorted_keys[:-1], out=same[1:-1])
    # same is False at both ends, so its flips alternate: run first, run last, ...
    flips = np.flatnonzero(same[1:] != same[:-1])
    return flips[0::2], flips[1::2]


def _xlogx(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(x), 0.0)


def _neighbour_sums(padded: np.ndarray, window: int) -> np.ndarray:
    """Per padded position: sum of ``padded`` over the +-window neighbours."""
    total = np.zeros_like(padded)
    for d in range(1, window + 1):
        total[:-d] += padded[d:]
        total[d:] += padded[:-d]
    return total


def _neighbour_counts(flat: np.ndarray, lengths: np.ndarray, window: int,
                      vocab_size: int) -> np.ndarray:
    """n_w: 2W neighbours per occurrence, less W-k for the k-th token from either end of
    its document (k < W); only the 2W edge positions per document are visited."""
    n = 2.0 * window * np.bincount(flat, minlength=vocab_size)
    begins = np.cumsum(lengths) - lengths
    for k in range(window):
        has = lengths > k
        for at in (begins[has] + k, begins[has] + lengths[has] - 1 - k):
            n -= (window - k) * np.bincount(flat[at], minlength=vocab_size)
    return n


def _log_counts(n: np.ndarray) -> np.ndarray:
    """log n_w, 0 where n_w = 0 (those tokens' KL is NaN anyway)."""
    with np.errstate(divide="ignore"):
        return np.where(n > 0, np.log(n), 0.0)


def _key_dtype(vocab_size: int):
    """The pair key dtype: hi*(hi+1) must not overflow, so uint32 keys up to 65535 ids
    (+ the sentinel id V), uint64 beyond."""
    return np.uint32 if vocab_size * (vocab_size + 1) < 2**32 else np.uint64


def _chunk_terms(ids: np.ndarray, lens: np.ndarray, log_n: np.ndarray, window: int,
                 vocab_size: int, key_dtype) -> tuple[np.ndarray, np.ndarray]:
    """One chunk of whole documents: its share of sum_c C[w,c] log m_c (an array [V]) and
    the sorted keys of its pair events (sentinel pairs included, sorting last)."""
    where = _padded_positions(lens, window)
    size = ids.size + window * lens.size
    # sum_c C[w,c] log m_c: over occurrences of w, add log m of each neighbour
    # (sentinels carry 0); m = n because C is symmetric
    log_m = _neighbour_sums(_padded(log_n[ids], where, size, 0.0, np.float64), window)
    s_clogm = np.bincount(ids, weights=log_m[where], minlength=vocab_size)
    del log_m
    keys = _chunk_keys(_padded(ids, where, size, vocab_size, key_dtype), window)
    return s_clogm, keys


def _kl_from_sums(n: np.ndarray, log_n: np.ndarray, s_clogc: np.ndarray,
                  s_clogm: np.ndarray) -> np.ndarray:
    """IG(w) = (sum_c C log C - sum_c C log m) / n_w - log n_w + log T (module docstring)."""
    total = n.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (s_clogc - s_clogm) / n - log_n + (math.log(total) if total > 0 else 0.0)
    kl[n == 0] = np.nan
    return np.maximum(kl, 0.0, where=~np.isnan(kl), out=kl)   # clip float noise below 0


def _kl(flat: np.ndarray, lengths: np.ndarray, vocab_size: int, window: int,
        chunk_tokens: int) -> np.ndarray:
    chunks = _document_chunks(lengths, chunk_tokens)
    n = _neighbour_counts(flat, lengths, window, vocab_size)
    log_n = _log_counts(n)
    key_dtype = _key_dtype(vocab_size)
    s_clogm, parts = np.zeros(vocab_size), []
    for docs, toks in chunks:
        part, keys = _chunk_terms(flat[toks], lengths[docs], log_n, window, vocab_size,
                                  key_dtype)
        s_clogm += part
        parts.append(keys if len(chunks) == 1 else _runs(keys))
    if len(chunks) == 1:            # one key per pair event: no counting pass needed
        s_clogc = _sum_clogc(parts[0], None, vocab_size)
    else:
        s_clogc = _sum_clogc(*_merge(parts), vocab_size) if parts else np.zeros(vocab_size)
    return _kl_from_sums(n, log_n, s_clogc, s_clogm)


def cooccurrence_kl(documents: Sequence[np.ndarray], vocab_size: int, window: int = 5,
                    chunk_tokens: int = 1 << 23) -> np.ndarray:
    """KL(p(.|w) || p(.)) per token id from +-window co-occurrences inside documents.

    NaN for tokens without any co-occurrence (unseen, or only in 1-token documents).
    ``chunk_tokens`` bounds working memory (roughly 100 bytes per token of a chunk, e.g.
    ~0.8 GB at the default 2**23): whole documents are grouped into chunks of about that
    many tokens, and longer streams merge the per-chunk distinct pair counts (slower per
    token, and the distinct pairs of the whole stream are held, ~12 bytes each).
    """
    _check_window(window)
    flat, lengths = _flatten(documents)
    return _kl(flat, lengths, vocab_size, window, chunk_tokens)


# ------------------------------------------------------------------------ container
@dataclasses.dataclass
class GoldStatistics:
    """Gold signals as arrays [V] plus the settings that produced them."""

    counts: np.ndarray
    self_information: np.ndarray
    information_gain: np.ndarray
    information_gain_corrected: np.ndarray | None = None
    function_word: np.ndarray | None = None
    window: int = 5
    n_tokens: int = 0
    seed: int = 0
    # Where the statistics come from (the gold command writes it; see
    # `read_gold_provenance` for its keys); None for gold computed in a run.
    provenance: dict | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.counts.shape[0])

    def names(self) -> list[str]:
        """Names of the signals present (``counts`` included)."""
        return [s for s in SIGNALS if getattr(self, s) is not None]

    def same_as(self, other: "GoldStatistics") -> bool:
        """The same signals, settings and values (NaN equal to NaN)."""
        return (self.names() == other.names()
                and (self.window, self.n_tokens, self.seed) == (other.window, other.n_tokens,
                                                                 other.seed)
                and all(np.array_equal(getattr(self, s), getattr(other, s), equal_nan=True)
                        for s in self.names()))

    def save(self, path: str | os.PathLike) -> None:
        """Write an .npz atomically: temp file in the same directory, then os.replace."""
        arrays = {s: getattr(self, s) for s in self.names()}
        meta = np.array([self.window, self.n_tokens, self.seed], dtype=np.int64)
        if self.provenance is not None:  # a plain string array: never a pickled object
            arrays["_provenance"] = np.array(json.dumps(self.provenance, sort_keys=True))
        with atomic_open(path) as handle:
            np.savez(handle, _meta=meta, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, vocab_size: int | None = None) -> "GoldStatistics":
        """Read a file written by :meth:`save`; reject arrays not of length ``vocab_size``.
        A damaged file, or one holding Python objects (never unpickled), raises
        `GoldFileError` naming it. ``provenance`` is None for files that record none."""
        with _open_gold(path) as z:
            arrays = {s: z[s] for s in SIGNALS if s in z.files}
            window, n_tokens, seed = (int(v) for v in z["_meta"])
            provenance = _provenance(z, path)
        missing = {"counts", "self_information", "information_gain"} - arrays.keys()
        if missing:
            raise ValueError(f"gold file {os.fspath(path)!r} lacks {sorted(missing)}")
        sizes = {s: a.shape for s, a in arrays.items()}
        expected = vocab_size if vocab_size is not None else arrays["counts"].shape[0]
        if any(shape != (expected,) for shape in sizes.values()):
            raise ValueError(f"gold file {os.fspath(path)!r} has array shapes {sizes}, "
                             f"expected length {expected} (vocab_size)")
        return cls(**arrays, window=window, n_tokens=n_tokens, seed=seed,
                   provenance=provenance)


@contextlib.contextmanager
def _open_gold(path: str | os.PathLike):
    """np.load of a gold file; anything unreadable (outside the body) -> `GoldFileError`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            yield z
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile,
            zlib.error) as err:
        if isinstance(err, GoldFileError):
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "pickle" in reason:  # numpy's text would advise allow_pickle=True: never
            reason = "damaged, or holding Python objects rather than plain arrays"
        raise GoldFileError(f"{os.fspath(path)}: not a readable gold file ({reason})"
                            ) from None


def _provenance(z, path) -> dict | None:
    if "_provenance" not in z.files:
        return None
    try:
        value = json.loads(str(z["_provenance"][()]))
    except json.JSONDecodeError as err:
        raise GoldFileError(f"{os.fspath(path)}: its provenance is not JSON ({err.msg})"
                            ) from None
    if not isinstance(value, dict):
        raise GoldFileError(f"{os.fspath(path)}: its provenance is not a JSON object")
    return value


def read_gold_provenance(path: str | os.PathLike) -> dict | None:
    """Where a gold file's statistics come from, without reading its arrays: the dict the
    gold command (``python -m normx_track.gold``) records, or None for a file that records
    none (a run's own gold, or one written before provenance existed).

    Keys written by the gold command (`normx_track.gold.corpus.PROVENANCE_KEYS`):
    ``tokenizer`` (the name or folder as given), ``vocab_hash`` (`normx_track.record.store.
    vocab_hash` of the token strings by id, as a run's meta.json has it), ``vocab_size``,
    ``corpus`` (the corpus specs as given, a list of str), ``text_field``, ``n_tokens``,
    ``n_documents``, ``max_tokens`` (None: all), ``window``, ``eos`` (the id appended to
    each document, None if none), ``shuffle_correction``, ``seed``, ``normx_track_version``.
    A damaged file raises `GoldFileError`.
    """
    with _open_gold(path) as z:
        return _provenance(z, path)


def compute_gold(documents: Iterable[np.ndarray], vocab_size: int, window: int = 5,
                 shuffle_correction: bool = True, seed: int = 0,
                 max_tokens: int | None = None, chunk_tokens: int = 1 << 23
                 ) -> GoldStatistics:
    """All stream-derived gold signals of ``documents`` (1-D arrays of token ids).

    ``max_tokens`` keeps the first N tokens of the stream only (the last kept document
    may be cut). ``information_gain_corrected`` uses :func:`shuffle_documents` with
    ``seed``. See :func:`cooccurrence_kl` for ``chunk_tokens``.
    """
    _check_window(window)
    docs = _as_documents(documents, vocab_size, max_tokens)
    flat, lengths = _flatten(docs)
    counts = np.bincount(flat, minlength=vocab_size).astype(np.int64)
    n_tokens = int(flat.size)
    with np.errstate(divide="ignore"):
        self_info = np.where(counts > 0, -np.log(counts / max(n_tokens, 1)), np.nan)
    ig = _kl(flat, lengths, vocab_size, window, chunk_tokens)
    corrected = None
    if shuffle_correction:
        corrected = ig - _kl(_shuffled(flat, seed), lengths, vocab_size, window, chunk_tokens)
    return GoldStatistics(counts=counts, self_information=self_info, information_gain=ig,
                          information_gain_corrected=corrected, window=window,
                          n_tokens=n_tokens, seed=seed)


def cache_key(*parts: str | bytes | int) -> str:
    """Stable sha256 hex over identifiers (tokenizer hash, data name, settings...).

    Each part is type-tagged and length-prefixed, so ("ab", "c") != ("a", "bc") and
    1 != "1".
    """
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (str, bytes, int)):
            raise TypeError(f"cache_key parts must be str, bytes or int, got {type(part)}")
        tag, data = {str: (b"s", lambda p: p.encode("utf-8")), bytes: (b"b", lambda p: p),
                     int: (b"i", lambda p: str(p).encode())}[type(part)]
        raw = data(part)
        h.update(tag + len(raw).to_bytes(8, "big") + raw)
    return h.hexdigest()


# ------------------------------------------------------------ labels and lexicons
def function_word_labels(surfaces: Sequence[str], function_words: Iterable[str],
                         documents: Iterable[np.ndarray] | None = None, *,
                         tokens: Sequence[str] | None = None,
                         special_ids: Iterable[int] = ()) -> np.ndarray:
    """Float [V]: 1.0 function word, 0.0 content word, NaN neither.

    Labels sit on whole words: from each type's occurrences in ``documents`` (the gold
    statistics stream) when given, else from its decoded text and word-start mark; see
    :mod:`normx_track.gold.word_labels` (which also gives each type's reason and the
    class counts, `label_function_words`).
    """
    return label_function_words(surfaces, function_words, documents, tokens=tokens,
                                special_ids=special_ids).labels


class LexiconError(InputError):
    """A lexicon cannot be read or maps no word; the message names the file (and line)."""


def load_lexicon(path: str | os.PathLike, encode: Callable[[str], list[int]],
                 vocab_size: int) -> tuple[np.ndarray, dict]:
    """Map a ``word<TAB>score`` TSV onto token ids.

    A word maps if ``encode(" " + word)`` is one token (byte-level BPE spells a word
    after a space with its own token), else if ``encode(word)`` is one token; otherwise it
    is skipped and counted. The first mapping of a token id wins; later words mapping to
    the same id are skipped as duplicates; NaN/inf scores are skipped and counted. Blank
    lines and lines starting with "#" are ignored. Returns (scores [V] with NaN where
    absent, stats). A lexicon that maps no word at all raises `LexiconError` (its curve
    would be null throughout).
    """
    path = os.fspath(path)
    scores = np.full(vocab_size, np.nan)
    stats = dict(n_lines=0, n_mapped=0, n_skipped_multitoken=0, n_skipped_duplicate=0,
                 n_skipped_nonfinite=0)
    for lineno, line in _lexicon_lines(path):
        stats["n_lines"] += 1
        fields = line.split("\t")
        try:
            if len(fields) != 2:
                raise ValueError(f"expected 2 tab-separated fields, got {len(fields)}")
            word, score = fields[0].strip(), float(fields[1])
        except ValueError as err:
            raise LexiconError(f"{path}:{lineno}: malformed lexicon line: {err}") from None
        if not math.isfinite(score):
            stats["n_skipped_nonfinite"] += 1
            continue
        ids = encode(" " + word)
        if len(ids) != 1:
            ids = encode(word)
        if len(ids) != 1:
            stats["n_skipped_multitoken"] += 1
            continue
        tid = int(ids[0])
        if not 0 <= tid < vocab_size:
            raise LexiconError(f"{path}:{lineno}: token id {tid} for {word!r} is outside "
                               f"the vocabulary (vocab_size={vocab_size})")
        if not np.isnan(scores[tid]):
            stats["n_skipped_duplicate"] += 1
            continue
        scores[tid] = score
        stats["n_mapped"] += 1
    if stats["n_mapped"] == 0:
        raise LexiconError(f"{path}: no word of the lexicon maps to a single token "
                           f"({stats['n_lines']} lines, {stats['n_skipped_multitoken']} words of "
                           f"several tokens, {stats['n_skipped_nonfinite']} non-finite scores)")
    return scores, stats


def _lexicon_lines(path: str):
    """(line number, line) of the non-blank, non-comment lines; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if line.strip() and not line.startswith("#"):
                    yield lineno, line
    except UnicodeDecodeError:
        raise LexiconError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise LexiconError(f"{path}: cannot read lexicon ({err.strerror or err})") from None
