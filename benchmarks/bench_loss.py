"""The training loss's LM head + cross-entropy: HF's path (full logits, an fp32 copy) against
`trainer.loss_chunk_tokens` (torch's chunked linear_cross_entropy), side by side in one run.

Each variant runs forward + backward in a fresh process, so its peak resident memory is its
own: the figure is the peak minus the memory held before the loss (inputs and weights).
GPT-2 small's head (768 x 50,257) on 4 x 512 tokens in chunks of 256 by default, fp32 on CPU.

    python benchmarks/bench_loss.py [--rows 2048] [--chunk 256] [--vocab 50257] [--width 768]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from summary import emit  # benchmarks/ is on sys.path when run as a script


def measure(variant: str, rows: int, chunk: int, vocab: int, width: int, repeats: int) -> dict:
    """Run in the child process: seconds per forward + backward, and extra peak memory."""
    import torch
    import torch.nn.functional as F

    from normx_track.training.model import next_token_loss

    torch.manual_seed(0)
    head = torch.nn.Linear(width, vocab, bias=False)
    hidden = torch.randn(1, rows + 1, width, requires_grad=True)
    ids = torch.randint(0, vocab, (1, rows + 1))

    def hf_loss() -> torch.Tensor:  # what GPT2LMHeadModel + ForCausalLMLoss compute
        logits = head(hidden).float()
        return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))

    loss_fn = hf_loss if variant == "hf" else lambda: next_token_loss(hidden, head, ids, chunk)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        times.append(time.perf_counter() - start)
        hidden.grad = head.weight.grad = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"seconds": sorted(times)[len(times) // 2], "extra_mib": (peak - before) / 1024,
            "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=50_257)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=("hf", "chunked"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.rows, args.chunk, args.vocab, args.width,
                                 args.repeats)))
        return
    results = {}
    for variant in ("hf", "chunked"):
        sizes = [f"--{k}={getattr(args, k)}" for k in ("rows", "chunk", "vocab", "width",
                                                       "repeats")]
        out = subprocess.run([sys.executable, __file__, "--child", variant, *sizes],
                             capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.splitlines()[-1])
    hf, chunked = results["hf"], results["chunked"]
    print(f"LM head + cross-entropy, {args.rows} tokens x vocabulary {args.vocab} "
          f"(width {args.width}), chunks of {args.chunk}, fp32 CPU, forward + backward:")
    for name, r in results.items():
        print(f"  {name:8s} {1000 * r['seconds']:8.1f} ms  peak +{r['extra_mib']:7.0f} MiB  "
              f"loss {r['loss']:.6f}")
    print(f"  chunked / hf: time {chunked['seconds'] / hf['seconds']:.2f}x, "
          f"memory {chunked['extra_mib'] / hf['extra_mib']:.2f}x")
    emit("chunked loss / HF loss: peak memory", chunked["extra_mib"] / hf["extra_mib"], "x",
         "< 1", chunked["extra_mib"] < hf["extra_mib"])
    emit("chunked loss / HF loss: time (CPU)", chunked["seconds"] / hf["seconds"], "x", "", None)


if __name__ == "__main__":
    main()
