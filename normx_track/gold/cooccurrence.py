"""The co-occurrence KL behind information gain, computed fast: the kernels that
`normx_track.gold.statistics.compute_gold` (one stream in memory) and
`normx_track.gold.corpus` (a corpus larger than memory, chunk by chunk) share.

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

import math
from typing import Sequence

import numpy as np


def flatten(documents: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    flat = np.concatenate(documents) if len(documents) else np.zeros(0, np.int64)
    return flat.astype(np.int64, copy=False), lengths


def check_window(window: int) -> None:
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")


def padded_positions(lengths: np.ndarray, window: int) -> np.ndarray:
    """Where each token goes when every document is followed by ``window`` sentinels.

    Any two real tokens of different documents are then more than ``window`` apart, so
    every within-window pair that crosses a boundary contains a sentinel.
    """
    shift = np.repeat(np.arange(lengths.size, dtype=np.int64) * window, lengths)
    return np.arange(shift.size) + shift


def padded(values: np.ndarray, positions: np.ndarray, size: int, fill, dtype):
    out = np.full(size, fill, dtype=dtype)
    out[positions] = values
    return out


# --------------------------------------------------------------- distinct pair counts
def triangular_numbers(n: int) -> np.ndarray:
    """Triangular numbers 0..n: the first key of row ``hi`` is tri[hi]."""
    i = np.arange(n + 1, dtype=np.int64)
    return i * (i + 1) // 2


def run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Index of the first element of every run of equal values in a sorted array."""
    new = np.empty(sorted_keys.size, dtype=bool)
    new[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new[1:])
    return np.flatnonzero(new)


def runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique keys, counts) of a sorted array (np.unique is several times slower)."""
    starts = run_starts(sorted_keys)
    counts = np.diff(starts, append=sorted_keys.size)
    return sorted_keys[starts], counts.astype(np.uint32) if sorted_keys.size < 2**32 else counts


def merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
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
    starts = run_starts(keys)
    return keys[starts], np.add.reduceat(counts, starts).astype(np.int64)


def chunk_keys(stream: np.ndarray, window: int) -> np.ndarray:
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


def document_chunks(lengths: np.ndarray, chunk_tokens: int) -> list[tuple[slice, slice]]:
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


def sum_clogc(keys: np.ndarray, counts: np.ndarray | None, vocab_size: int) -> np.ndarray:
    """Per token w: sum_c C[w,c] log C[w,c] from sorted pair keys: one key per pair
    event (``counts`` None), or distinct keys with their counts.

    C[lo,hi] = C[hi,lo] = k off the diagonal and C[w,w] = 2k (each event (w, w) counts
    both ways). Off-diagonal pairs seen once add 1*log 1 = 0, so only repeated keys and
    the diagonal are looked at. Keys of pairs with the sentinel (id vocab_size) sort
    after all others and are cut.
    """
    diag_n, lo, hi, clogc = clogc_terms(keys, counts, vocab_size)
    return (xlogx(2.0 * diag_n) + np.bincount(lo, clogc, minlength=vocab_size)
            + np.bincount(hi, clogc, minlength=vocab_size))


def clogc_terms(keys: np.ndarray, counts: np.ndarray | None, vocab_size: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`sum_clogc`'s terms: the diagonal's event counts [V] and, for each repeated
    off-diagonal pair in key order, its (lo, hi, C log C)."""
    tri = triangular_numbers(vocab_size + 1)
    cut = np.searchsorted(keys, keys.dtype.type(tri[vocab_size]))
    keys, counts = keys[:cut], None if counts is None else counts[:cut]
    # diagonal (w, w) has key tri[w+1] - 1
    diag_key = (tri[1:vocab_size + 1] - 1).astype(keys.dtype)
    first, end = (np.searchsorted(keys, diag_key, side=s) for s in ("left", "right"))
    if counts is None:
        diag_n = end - first
        run_first, run_last = repeated_runs(keys)
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


def repeated_runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of every run of >= 2 equal values in a sorted array."""
    same = np.zeros(sorted_keys.size + 1, dtype=bool)   # same[i]: keys[i-1] == keys[i]
    np.equal(sorted_keys[1:], sorted_keys[:-1], out=same[1:-1])
    # same is False at both ends, so its flips alternate: run first, run last, ...
    flips = np.flatnonzero(same[1:] != same[:-1])
    return flips[0::2], flips[1::2]


def xlogx(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(x), 0.0)


def neighbour_sums(padded: np.ndarray, window: int) -> np.ndarray:
    """Per padded position: sum of ``padded`` over the +-window neighbours."""
    total = np.zeros_like(padded)
    for d in range(1, window + 1):
        total[:-d] += padded[d:]
        total[d:] += padded[:-d]
    return total


def neighbour_counts(flat: np.ndarray, lengths: np.ndarray, window: int,
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


def log_counts(n: np.ndarray) -> np.ndarray:
    """log n_w, 0 where n_w = 0 (those tokens' KL is NaN anyway)."""
    with np.errstate(divide="ignore"):
        return np.where(n > 0, np.log(n), 0.0)


def pair_key_dtype(vocab_size: int):
    """The pair key dtype: hi*(hi+1) must not overflow, so uint32 keys up to 65535 ids
    (+ the sentinel id V), uint64 beyond."""
    return np.uint32 if vocab_size * (vocab_size + 1) < 2**32 else np.uint64


def chunk_terms(ids: np.ndarray, lens: np.ndarray, log_n: np.ndarray, window: int,
                 vocab_size: int, key_dtype) -> tuple[np.ndarray, np.ndarray]:
    """One chunk of whole documents: its share of sum_c C[w,c] log m_c (an array [V]) and
    the sorted keys of its pair events (sentinel pairs included, sorting last)."""
    where = padded_positions(lens, window)
    size = ids.size + window * lens.size
    # sum_c C[w,c] log m_c: over occurrences of w, add log m of each neighbour
    # (sentinels carry 0); m = n because C is symmetric
    log_m = neighbour_sums(padded(log_n[ids], where, size, 0.0, np.float64), window)
    s_clogm = np.bincount(ids, weights=log_m[where], minlength=vocab_size)
    del log_m
    keys = chunk_keys(padded(ids, where, size, vocab_size, key_dtype), window)
    return s_clogm, keys


def kl_from_sums(n: np.ndarray, log_n: np.ndarray, s_clogc: np.ndarray,
                  s_clogm: np.ndarray) -> np.ndarray:
    """IG(w) = (sum_c C log C - sum_c C log m) / n_w - log n_w + log T (module docstring)."""
    total = n.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (s_clogc - s_clogm) / n - log_n + (math.log(total) if total > 0 else 0.0)
    kl[n == 0] = np.nan
    return np.maximum(kl, 0.0, where=~np.isnan(kl), out=kl)   # clip float noise below 0


def kl(flat: np.ndarray, lengths: np.ndarray, vocab_size: int, window: int,
        chunk_tokens: int) -> np.ndarray:
    chunks = document_chunks(lengths, chunk_tokens)
    n = neighbour_counts(flat, lengths, window, vocab_size)
    log_n = log_counts(n)
    key_dtype = pair_key_dtype(vocab_size)
    s_clogm, parts = np.zeros(vocab_size), []
    for docs, toks in chunks:
        part, keys = chunk_terms(flat[toks], lengths[docs], log_n, window, vocab_size,
                                  key_dtype)
        s_clogm += part
        parts.append(keys if len(chunks) == 1 else runs(keys))
    if len(chunks) == 1:            # one key per pair event: no counting pass needed
        s_clogc = sum_clogc(parts[0], None, vocab_size)
    else:
        s_clogc = sum_clogc(*merge(parts), vocab_size) if parts else np.zeros(vocab_size)
    return kl_from_sums(n, log_n, s_clogc, s_clogm)


def cooccurrence_kl(documents: Sequence[np.ndarray], vocab_size: int, window: int = 5,
                    chunk_tokens: int = 1 << 23) -> np.ndarray:
    """KL(p(.|w) || p(.)) per token id from +-window co-occurrences inside documents.

    NaN for tokens without any co-occurrence (unseen, or only in 1-token documents).
    ``chunk_tokens`` bounds working memory (roughly 100 bytes per token of a chunk, e.g.
    ~0.8 GB at the default 2**23): whole documents are grouped into chunks of about that
    many tokens, and longer streams merge the per-chunk distinct pair counts (slower per
    token, and the distinct pairs of the whole stream are held, ~12 bytes each).
    """
    check_window(window)
    flat, lengths = flatten(documents)
    return kl(flat, lengths, vocab_size, window, chunk_tokens)
