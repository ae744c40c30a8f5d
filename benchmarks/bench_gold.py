"""Throughput of the co-occurrence information gain against a plain scipy.sparse count.

Run: python benchmarks/bench_gold.py [--tokens 5000000] [--repeats 3]

Builds a Zipf-Mandelbrot token stream (ids shuffled so frequency is not id order), cut
into documents of ~500 tokens, and times compute_gold(window=5, shuffle_correction=False)
and the scipy COO->CSR reference on the same stream, for V=50257 and V=4096. Best of
``--repeats`` runs is reported. The two results are also compared.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from normx_track.gold.statistics import compute_gold  # noqa: E402
from summary import emit  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def zipf_documents(vocab_size: int, n_tokens: int, doc_len: int = 500, seed: int = 0,
                   exponent: float = 1.0, shift: float = 2.7) -> list[np.ndarray]:
    """Unigram Zipf-Mandelbrot stream; document lengths vary uniformly in [doc_len/2, 3/2]."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(vocab_size) + shift) ** exponent
    ids = rng.permutation(vocab_size)                  # frequency rank -> token id
    stream = ids[rng.choice(vocab_size, size=n_tokens, p=p / p.sum())]
    lengths = rng.integers(doc_len // 2, doc_len * 3 // 2 + 1, size=n_tokens // doc_len * 2)
    cuts = np.cumsum(lengths)
    cuts = cuts[cuts < n_tokens]
    return np.split(stream, cuts)


def scipy_reference_ig(documents: list[np.ndarray], vocab_size: int, window: int = 5):
    """Straightforward IG: COO triplets per offset, CSR sums duplicates, KL from CSR."""
    flat = np.concatenate(documents)
    doc_id = np.repeat(np.arange(len(documents)), [len(d) for d in documents])
    rows, cols = [], []
    for d in range(1, window + 1):
        same = doc_id[:-d] == doc_id[d:]
        a, b = flat[:-d][same], flat[d:][same]
        rows += [a, b]
        cols += [b, a]
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    C = sp.coo_matrix((np.ones(rows.size), (rows, cols)),
                      shape=(vocab_size, vocab_size)).tocsr()
    n = np.asarray(C.sum(axis=1)).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        log_n = np.log(n)
        row_of = np.repeat(np.arange(vocab_size), np.diff(C.indptr))
        s = np.bincount(row_of, C.data * (np.log(C.data) - log_n[C.indices]),
                        minlength=vocab_size)
        return s / n - log_n + np.log(n.sum())


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"cpus available: {len(os.sched_getaffinity(0))}, numpy {np.__version__}")
    for vocab_size in (50257, 4096):
        docs = zipf_documents(vocab_size, args.tokens)
        n = sum(len(d) for d in docs)
        t_ours, gold = best_time(
            lambda: compute_gold(docs, vocab_size, window=5, shuffle_correction=False),
            args.repeats)
        t_ref, ref = best_time(lambda: scipy_reference_ig(docs, vocab_size), args.repeats)
        ig = gold.information_gain
        ok = np.isnan(ig) == np.isnan(ref)
        err = np.nanmax(np.abs(ig - ref)) if np.isfinite(ig).any() else 0.0
        print(f"V={vocab_size:6d} tokens={n} docs={len(docs)}  "
              f"compute_gold: {n / t_ours / 1e6:6.2f} M tok/s ({t_ours:.3f} s)  "
              f"scipy COO->CSR: {n / t_ref / 1e6:6.2f} M tok/s ({t_ref:.3f} s)  "
              f"speed-up x{t_ref / t_ours:.2f}  max|diff|={err:.1e} nan-pattern-equal={ok.all()}")
        rate = n / t_ours / 1e6
        emit(f"gold statistics, V={vocab_size}, window 5", rate, "M tokens/s", ">= 5",
             rate >= 5 if vocab_size == 50257 else None)
        emit(f"gold statistics vs scipy COO, V={vocab_size}", t_ref / t_ours, "x faster",
             "", None)


if __name__ == "__main__":
    main()
