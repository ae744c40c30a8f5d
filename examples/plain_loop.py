"""Pre-train the tiny GPT-2 on the synthetic corpus in a plain PyTorch loop, tracked.

    python examples/plain_loop.py runs/plain --max-steps 200            # then, to continue:
    python examples/plain_loop.py runs/plain --max-steps 400 --resume

`tracker.step(model, step, tokens)` is called with the number of optimizer steps done
(0 before the first); its state goes into the loop's own checkpoint and comes back on resume.
The checkpoint carries the run id the record's meta.json holds: `--resume` refuses another
run's checkpoint, and a fresh run in a used folder sets the earlier record and checkpoint
aside together (never over a checkpoint.pt this example did not write).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ArgumentParser, at_least_one, check_run_folder, check_same_run, cli,  # noqa: E402
                    compose, data_model_and_tracker_args, identity, new_run_id, start_fresh)


def parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the run folder (the record goes to OUT/normx)")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("overrides", nargs="*", default=["debug=tiny"],
                   help="Hydra overrides of this project's configs (default: debug=tiny)")
    return p


if __name__ == "__main__":  # --help and a bad option answer before the imports below
    if cli(parser().parse_intermixed_args):  # a bad option: its one error line is printed
        sys.exit(2)

import torch  # noqa: E402

from normx_track import Tracker  # noqa: E402
from normx_track.errors import InputError  # noqa: E402
from normx_track.record.atomic import atomic_open  # noqa: E402
from normx_track.record.checkpoint_loader import first_line, read_lightning_checkpoint  # noqa: E402
from normx_track.record.store import RecordLock  # noqa: E402
from normx_track.training.data.datamodule import ResumableBatchSampler  # noqa: E402

PARTS = ("model", "optimizer", "tracker", "step", "tokens")  # what checkpoint.pt holds


def read_checkpoint(path: Path) -> dict:
    """checkpoint.pt, tensors and plain data only; one line naming it if unusable."""
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint to resume from; leave --resume out to start "
                         "a fresh run")
    state = read_lightning_checkpoint(path)  # weights_only=True
    missing = [k for k in PARTS if k not in state]
    if missing:
        raise InputError(f"{path}: not a checkpoint of examples/plain_loop.py (no {missing})")
    return state


def is_ours(path: Path) -> bool:
    try:
        return path.is_file() and bool(read_lightning_checkpoint(path, mmap=True).get("run_id"))
    except InputError:
        return False


def restore(checkpoint: Path, out: Path, model, opt, tracker: Tracker, max_steps: int):
    """`--resume`: this run's own checkpoint (its run id is the record's) back into the
    model, optimizer and tracker; returns (step, tokens)."""
    state = read_checkpoint(checkpoint)
    tracker.meta["run_id"] = check_same_run(checkpoint, state, out, tracker.vocab)
    if state["step"] > max_steps:
        raise InputError(f"--max-steps {max_steps}: {checkpoint} is at step {state['step']} already")
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise InputError(f"{checkpoint}: does not fit this run's model ({first_line(err)}); "
                         "resume with the overrides the run was started with") from None
    tracker.load_state_dict(state["tracker"])
    return state["step"], state["tokens"]


def train(out: Path, max_steps: int, overrides: list[str], resume: bool = False,
          checkpoint_every: int = 10, on_step: Callable[[int], None] | None = None) -> Tracker:
    at_least_one("--max-steps", max_steps)
    check_run_folder(out)
    cfg = compose(overrides)
    data, model, tracker_args = data_model_and_tracker_args(cfg, out)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                            weight_decay=cfg.optim.weight_decay)
    tracker = Tracker(**tracker_args)
    checkpoint = out / "checkpoint.pt"
    # The folder is locked from here (the tracker takes the lock again when it opens).
    with RecordLock.acquire(out), tracker:
        if resume:
            start, tokens = restore(checkpoint, out, model, opt, tracker, max_steps)
        else:  # an earlier run's record and checkpoint go aside; nobody else's file is touched
            start_fresh(out, [checkpoint] if checkpoint.exists() else [], is_ours)
            start, tokens = 0, 0
            tracker.meta["run_id"] = new_run_id()  # meta.json: the run the checkpoints are of
        ident = identity(tracker.meta["run_id"], tracker.vocab)
        losses = {}
        # Batch b is a pure function of (seed, b): a resumed loop sees what an unbroken one would.
        batches = ResumableBatchSampler(len(data.train_set), cfg.data.batch_size, cfg.seed)
        model.train()
        for step in range(start, max_steps + 1):
            tracker.step(model, step, tokens_seen=tokens, losses=losses)
            if step > start and step % checkpoint_every == 0:
                with atomic_open(checkpoint) as handle:  # a kill mid-save keeps the last one
                    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                "tracker": tracker.state_dict(), "step": step,
                                "tokens": tokens, **ident}, handle)
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


def main(argv: list[str] | None = None) -> int:
    def body() -> None:
        args = parser().parse_intermixed_args(argv)  # OUT, options and overrides in any order
        train(args.out, args.max_steps, args.overrides, resume=args.resume)
    return cli(body)


if __name__ == "__main__":
    sys.exit(main())
