"""Replay of a checkpoint suite: norms only (the embedding bytes alone) against whole models,
side by side on the same local suite.

    python benchmarks/bench_replay.py             # 20 checkpoints shaped as pythia-70m
    python benchmarks/bench_replay.py --checkpoints 5 --layers 2   # a quicker look

The suite is written first (random GPT-NeoX weights in fp16, vocabulary 50,304 x 512, the
shape of pythia-70m; each checkpoint its own file, so every read is a real one), then replayed
with `analysis.replay` both ways. The files are in the page cache by then: the seconds are
CPU and memory-copy time, what a hub replay adds on top is the network's time for the bytes
read, which is the second figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.summary import emit  # noqa: E402


def write_suite(root: Path, n: int, layers: int, vocab: int, hidden: int) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=8, intermediate_size=4 * hidden,
                           max_position_embeddings=2048, tie_word_embeddings=False)
    model = GPTNeoXForCausalLM(config).half()
    for step in range(n):
        with torch.no_grad():  # another checkpoint: every weight moves a little
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=1e-3)
        model.save_pretrained(root / "suite" / f"step{step * 1000}")


def replay(root: Path, name: str, *extra: str) -> tuple[float, list[dict]]:
    from analysis.replay import main
    from normx_track.record.store import read_metrics

    start = time.perf_counter()
    main([str(root / "suite"), "--gold", str(root / "gold.npz"), "--out", str(root / name),
          *extra])
    return time.perf_counter() - start, read_metrics(root / name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=int, default=20)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--hidden", type=int, default=512)
    args = p.parse_args()
    from normx_track.gold.statistics import compute_gold

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_suite(root, args.checkpoints, args.layers, args.vocab, args.hidden)
        print(f"wrote {args.checkpoints} checkpoints in {time.perf_counter() - t0:.0f} s")
        rng = np.random.default_rng(0)
        compute_gold([rng.zipf(1.2, 200_000) % args.vocab], args.vocab,
                     shuffle_correction=False).save(root / "gold.npz")
        (root / "vocab.json").write_text(json.dumps([str(i) for i in range(args.vocab)]))
        only, rows = replay(root, "norms_only")
        full, full_rows = replay(root, "full", "--full")
        read = np.mean([r["normx/replay/bytes_read"] for r in rows])
        size = np.mean([r["normx/replay/file_bytes"] for r in rows])
    n = args.checkpoints
    print(f"\n{n} checkpoints of {args.vocab} x {args.hidden}, {args.layers} layers "
          f"({size / 2**20:.0f} MiB each)")
    print(f"{'':<26}{'norms only':>14}{'whole model':>14}{'ratio':>8}")
    print(f"{'seconds per checkpoint':<26}{only / n:>14.3f}{full / n:>14.3f}"
          f"{full / only:>8.1f}x")
    print(f"{'bytes read per checkpoint':<26}{read / 2**20:>11.1f} MiB{size / 2**20:>10.1f} MiB"
          f"{size / read:>8.1f}x")
    emit("replay norms only, s per checkpoint", only / n, "s", "", None)
    emit("replay bytes read / file size", read / size, "ratio", "embeddings only", None)


if __name__ == "__main__":
    main()
