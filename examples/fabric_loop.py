"""A third front end, written from `Tracker`'s contract alone: Lightning Fabric.

    python examples/fabric_loop.py runs/fabric --max-steps 40              # then, to continue:
    python examples/fabric_loop.py runs/fabric --max-steps 80 --resume

Fabric saves and loads any object with ``state_dict``/``load_state_dict`` (torch's
``Stateful``), so the tracker goes into ``fabric.save`` beside the model and optimizer.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compose, data_model_and_tracker_args  # noqa: E402

from normx_track import Tracker  # noqa: E402


def train(out: Path, max_steps: int, overrides: list[str], resume: bool = False,
          checkpoint_every: int = 10) -> Tracker:
    cfg = compose(overrides)
    data, model, tracker_args = data_model_and_tracker_args(cfg, out)
    fabric = L.Fabric(accelerator="cpu", devices=1)
    model, opt = fabric.setup(model, torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr))
    # 1. the settings (out_dir among them; Fabric's ranks are torch.distributed's, which the
    # tracker asks by default, so there is nothing to bind)
    tracker = Tracker(**tracker_args, front_end="fabric")
    state = {"model": model, "optimizer": opt, "tracker": tracker, "step": 0, "tokens": 0}
    checkpoint = out / "fabric.ckpt"
    if resume:  # 2. the tracker's state comes back before the first step (Stateful)
        state.update(fabric.load(checkpoint, state))
    elif checkpoint.exists():
        sys.exit(f"error: {checkpoint} exists; --resume it, or use another folder")
    start, tokens = state["step"], state["tokens"]
    loader = torch.utils.data.DataLoader(data.train_set, batch_size=cfg.data.batch_size)
    batches = iter(loader)
    with tracker:  # 5. closed at the end
        for step in range(start, max_steps + 1):
            tracker.step(model, step, tokens_seen=tokens)  # 3. every rank, every step
            if step > start and (step % checkpoint_every == 0 or step == max_steps):
                # 4. after the step's row, so the saved state says it is recorded
                fabric.save(checkpoint, {**state, "step": step, "tokens": tokens})
            if step == max_steps:
                break
            batch = next(batches, None) or next(batches := iter(loader))
            loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
            fabric.backward(loss)
            opt.step()
            opt.zero_grad()
            tokens += batch["input_ids"].numel()
            tracker.record_loss("train/loss", loss.detach(), step + 1)
    return tracker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the run folder (the record goes to OUT/normx)")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/fabric.ckpt")
    parser.add_argument("overrides", nargs="*", default=["debug=tiny"])
    args = parser.parse_args(argv)
    train(args.out, args.max_steps, args.overrides, resume=args.resume)


if __name__ == "__main__":
    main()
