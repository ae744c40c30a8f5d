"""The gold command's counting at corpus scale: tokens/s and peak memory, 1 core vs all.

Run: python benchmarks/bench_gold_corpus.py [--tokens 10000000 100000000] [--workers 1 2]
         [--no-shuffle-correction] [--reference]

A Zipf-Mandelbrot stream (V = 50,277, Pythia's tokenizer size; ids shuffled so frequency
is not id order; documents of 250-750 tokens) is written once per size as pre-tokenised
ids (the command's temporary token file, `normx_track.gold.corpus.write_token_file`), so
tokenisation is not measured. Each configuration then runs `gold_from_token_file` (what
``python -m normx_track.gold`` runs after tokenising: counts, information gain and, by
default, the shuffle correction, i.e. two passes over the stream) in a fresh process on
a copy of that file, at the command's default chunk (2**22 tokens). Reported: tokens/s
(stream tokens over wall time) and peak RSS: the measuring process's own ru_maxrss, its
largest worker's (ru_maxrss of children), and the process tree's bound self + workers x
child (the workers run at once). ``--reference`` adds compute_gold (everything in memory)
at the smallest size. Targets: peak tree memory <= 2 GB at 100 M tokens; >= 10 M tokens/s
on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
V = 50277


def zipf_batches(n_tokens: int, seed: int = 0, batch: int = 1 << 21):
    """Documents of the stream, a batch of tokens at a time (nothing held)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(V) + 2.7)
    ids = rng.permutation(V)                           # frequency rank -> token id
    cdf = np.cumsum(p / p.sum())
    made = 0
    while made < n_tokens:
        size = min(batch, n_tokens - made)
        stream = ids[np.minimum(np.searchsorted(cdf, rng.random(size)), V - 1)]
        lengths = rng.integers(250, 751, size=size // 250 + 1)
        cuts = np.cumsum(lengths)
        yield from np.split(stream, cuts[cuts < size])
        made += size


def child(args) -> None:
    """One measured run (in its own process): prints a JSON line."""
    from normx_track.gold.corpus import TokenFile, gold_from_token_file
    meta = json.loads((Path(args.child) / "meta.json").read_text())
    tf = TokenFile(Path(args.child) / "tokens.bin", Path(args.child) / "lengths.bin",
                   meta["dtype"], meta["n_tokens"], meta["n_documents"])
    t0 = time.perf_counter()
    if args.reference:
        from normx_track.gold.statistics import compute_gold
        ids = np.fromfile(tf.tokens, dtype=tf.dtype).astype(np.int64)
        docs = np.split(ids, np.cumsum(np.fromfile(tf.lengths, dtype=np.int64))[:-1])
        del ids
        t0 = time.perf_counter()
        compute_gold(docs, V, shuffle_correction=args.shuffle_correction)
    else:
        gold_from_token_file(tf, V, shuffle_correction=args.shuffle_correction,
                             workers=args.child_workers)
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "seconds": seconds,
        "self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "child_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def measure(source: Path, work: Path, workers: int, shuffle: bool, reference: bool) -> dict:
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(source, run_dir)                   # the run shuffles its file in place
    cmd = [sys.executable, __file__, "--child", str(run_dir), "--child-workers", str(workers)]
    cmd += [] if shuffle else ["--no-shuffle-correction"]
    cmd += ["--reference"] if reference else []
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    shutil.rmtree(run_dir, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"measured run failed:\n{done.stderr}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["tree_mb"] = out["self_mb"] + (workers if workers > 1 else 0) * out["child_mb"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--workers", type=int, nargs="+",
                        default=sorted({1, len(os.sched_getaffinity(0))}))
    parser.add_argument("--no-shuffle-correction", dest="shuffle_correction",
                        action="store_false")
    parser.add_argument("--reference", action="store_true",
                        help="also compute_gold in memory at the smallest size")
    parser.add_argument("--tmp-dir", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from normx_track.gold.corpus import write_token_file
    print(f"cpus available: {len(os.sched_getaffinity(0))}, numpy {np.__version__}, "
          f"V={V}, shuffle correction {'on' if args.shuffle_correction else 'off'}")
    with tempfile.TemporaryDirectory(prefix="bench-gold-", dir=args.tmp_dir) as tmp:
        work = Path(tmp)
        for n in args.tokens:
            source = work / f"stream{n}"
            source.mkdir()
            t0 = time.perf_counter()
            tf = write_token_file(zipf_batches(n), source, V)
            (source / "meta.json").write_text(json.dumps(
                {"dtype": tf.dtype, "n_tokens": tf.n_tokens, "n_documents": tf.n_documents}))
            print(f"\n{n:,} tokens, {tf.n_documents:,} documents ({tf.dtype} token file "
                  f"written in {time.perf_counter() - t0:.1f} s, not measured)", flush=True)
            rows = []
            for k in args.workers:
                r = measure(source, work, k, args.shuffle_correction, False)
                rows.append((f"gold command, {k} worker{'s' if k > 1 else ''}", k, r))
                print(f"  {rows[-1][0]:<28} {n / r['seconds'] / 1e6:6.2f} M tok/s "
                      f"({r['seconds']:6.1f} s)  peak RSS self {r['self_mb']:6.0f} MB, "
                      f"largest worker {r['child_mb']:6.0f} MB, tree <= {r['tree_mb']:6.0f} MB",
                      flush=True)
            if args.reference and n == min(args.tokens):
                r = measure(source, work, 1, args.shuffle_correction, True)
                rows.append(("compute_gold (in memory)", 1, r))
                print(f"  {rows[-1][0]:<28} {n / r['seconds'] / 1e6:6.2f} M tok/s "
                      f"({r['seconds']:6.1f} s)  peak RSS {r['self_mb']:6.0f} MB", flush=True)
            base = rows[0][2]
            for name, k, r in rows[1:]:
                print(f"  {name} vs 1 worker: x{base['seconds'] / r['seconds']:.2f} speed, "
                      f"x{r['tree_mb'] / base['tree_mb']:.2f} memory")
            shutil.rmtree(source)


if __name__ == "__main__":
    main()
