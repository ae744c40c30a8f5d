"""The default run's training step on a CPU: HF's loss over all logits against
`trainer=cpu`'s chunked loss (`trainer.loss_chunk_tokens=512`), side by side in one process.

The model is conf/model/gpt2_nano.yaml at the default data sizes (16 x 128 tokens, a
4,096-token vocabulary); one step is forward, backward, clipping and AdamW. Rounds of each
variant alternate, so a machine that speeds up or slows down weighs on both; it prints the
best and the median ms per step, and the minor page faults per step (the 33 MB of fp32
logits are mapped afresh at every step where the loss takes them all at once).

    python benchmarks/bench_cpu_step.py [--rounds 8] [--steps 8] [--chunk 512]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch
import yaml

from summary import emit  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]


def build(chunk: int | None):
    from normx_track.training.config import ModelConfig, OptimConfig
    from normx_track.training.model import LanguageModel

    sizes = yaml.safe_load((ROOT / "conf" / "model" / "gpt2_nano.yaml").read_text())
    data = yaml.safe_load((ROOT / "conf" / "data" / "synthetic.yaml").read_text())
    torch.manual_seed(0)
    module = LanguageModel.from_configs(ModelConfig(**sizes), OptimConfig(), data["vocab_size"],
                                        0, 600, loss_chunk_tokens=chunk)
    optimizer = module.configure_optimizers()["optimizer"]
    ids = torch.randint(0, data["vocab_size"], (data["batch_size"], data["block_size"]),
                        generator=torch.Generator().manual_seed(0))

    def step() -> None:
        module._loss({"input_ids": ids}).backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def timed(step, n: int) -> tuple[float, float]:
    """(ms per step, minor page faults per step) over n steps."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(n):
        step()
    ms = 1000 * (time.perf_counter() - start) / n
    return ms, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="steps a round")
    parser.add_argument("--chunk", type=int, default=512)
    args = parser.parse_args()
    steps = {"all logits (HF)": build(None), f"chunks of {args.chunk}": build(args.chunk)}
    for step in steps.values():  # warm-up: allocator, kernels
        timed(step, 3)
    rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rounds[name].append(timed(step, args.steps))
    print(f"default run's training step on CPU ({torch.get_num_threads()} threads), "
          f"{args.rounds} rounds x {args.steps} steps, interleaved:")
    medians = {}
    for name, results in rounds.items():
        ms = [r[0] for r in results]
        medians[name] = statistics.median(ms)
        print(f"  {name:18s} best {min(ms):6.1f} ms  median {medians[name]:6.1f} ms  "
              f"page faults/step {statistics.median(r[1] for r in results):8.0f}")
    plain, chunked = medians.values()
    print(f"  chunked / all logits: median step {chunked / plain:.2f}x")
    emit("default CPU step, chunked loss / HF loss: time", chunked / plain, "x", "< 1",
         chunked < plain)


if __name__ == "__main__":
    main()
