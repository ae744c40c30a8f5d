"""Pre-train the tiny GPT-2 on the synthetic corpus in a plain PyTorch loop, tracked.

    python examples/plain_loop.py runs/plain --max-steps 200            # then, to continue:
    python examples/plain_loop.py runs/plain --max-steps 400 --resume

`tracker.step(model, step, tokens)` is called with the number of optimizer steps done
(0 before the first); its state goes into the loop's own checkpoint and comes back on resume.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compose, data_model_and_tracker_args  # noqa: E402

from normx_track import Tracker  # noqa: E402
from normx_track.training.data.datamodule import ResumableBatchSampler  # noqa: E402


def train(out: Path, max_steps: int, overrides: list[str], resume: bool = False,
          checkpoint_every: int = 10, on_step: Callable[[int], None] | None = None) -> Tracker:
    cfg = compose(overrides)
    data, model, tracker_args = data_model_and_tracker_args(cfg, out)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                            weight_decay=cfg.optim.weight_decay)
    tracker = Tracker(**tracker_args)
    start, tokens, losses = 0, 0, {}
    checkpoint = out / "checkpoint.pt"
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        tracker.load_state_dict(state["tracker"])
        start, tokens = state["step"], state["tokens"]
    # Batch b is a pure function of (seed, b): a resumed loop sees what an unbroken one would.
    batches = ResumableBatchSampler(len(data.train_set), cfg.data.batch_size, cfg.seed)
    model.train()
    with tracker:
        for step in range(start, max_steps + 1):
            tracker.step(model, step, tokens_seen=tokens, losses=losses)
            if step > start and step % checkpoint_every == 0:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "tracker": tracker.state_dict(), "step": step, "tokens": tokens},
                           checkpoint)
            if on_step is not None:
                on_step(step)
            if step == max_steps:
                break
            ids = torch.stack([data.train_set[i]["input_ids"] for i in batches.batch(step)])
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            tokens += ids.numel()
            losses = {"train/loss": loss.detach()}
        if max_steps > tracker.last_step:  # the end of training is always recorded
            tracker.snapshot(model, max_steps, tokens_seen=tokens)
    return tracker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the run folder (the record goes to OUT/normx)")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("overrides", nargs="*", default=["debug=tiny"],
                        help="Hydra overrides of this project's configs (default: debug=tiny)")
    args = parser.parse_args(argv)
    train(args.out, args.max_steps, args.overrides, resume=args.resume)


if __name__ == "__main__":
    main()
