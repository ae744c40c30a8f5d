"""Pre-train the tiny GPT-2 on the synthetic corpus with the Hugging Face `Trainer`, tracked.

    python examples/hf_trainer.py runs/hf --max-steps 200                # then, to continue:
    python examples/hf_trainer.py runs/hf --max-steps 400 --resume

`NormTrackerCallback` runs the schedule on `state.global_step`, writes the record under OUT
and its state into each `checkpoint-N/`, so `resume_from_checkpoint` continues the record.
Each `checkpoint-N/normx_run.json` names the run the record's meta.json names: `--resume`
refuses another run's checkpoint, and a fresh run in a used folder sets the earlier record
and checkpoints aside together (never over a checkpoint-N this example did not write).
With `--wandb` the rows go to the Trainer's W&B run, stepped by `train/global_step`.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ArgumentParser, at_least_one, check_run_folder, check_same_run, cli,  # noqa: E402
                    compose, data_model_and_tracker_args, identity, new_run_id, start_fresh)


def parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the run folder (the record goes to OUT/normx)")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint-N")
    p.add_argument("--wandb", action="store_true", help="report to W&B (offline unless logged in)")
    p.add_argument("overrides", nargs="*", default=["debug=tiny"],
                   help="Hydra overrides of this project's configs (default: debug=tiny)")
    return p


if __name__ == "__main__":  # --help and a bad option answer before the imports below
    if cli(parser().parse_intermixed_args):  # a bad option: its one error line is printed
        sys.exit(2)

from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from normx_track.errors import InputError  # noqa: E402
from normx_track.hf import NormTrackerCallback  # noqa: E402
from normx_track.record.atomic import atomic_write_json  # noqa: E402
from normx_track.record.checkpoint_loader import first_line  # noqa: E402
from normx_track.record.store import RecordLock  # noqa: E402

RUN_FILE = "normx_run.json"  # in each checkpoint-N/: the run id and vocab hash
CHECKPOINT = re.compile(r"^checkpoint-\d+$")  # the Trainer's folders (get_last_checkpoint's)


def with_labels(rows: list[dict]) -> dict:
    """Causal-LM batches: the model shifts the labels itself."""
    import torch

    ids = torch.stack([row["input_ids"] for row in rows])
    return {"input_ids": ids, "labels": ids}


class RunIdentity(TrainerCallback):
    """Writes checkpoint-N/normx_run.json: which run (and tokenizer) the checkpoint is of."""

    def __init__(self, tracker: NormTrackerCallback):
        self.core = tracker.core

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            atomic_write_json(folder / RUN_FILE, identity(self.core.meta["run_id"], self.core.vocab))


def build_trainer(out: Path, max_steps: int, overrides: list[str], wandb: bool = False,
                  save_steps: int = 10, callbacks: tuple = ()) -> tuple[Trainer, NormTrackerCallback]:
    cfg = compose(overrides)
    data, model, tracker_args = data_model_and_tracker_args(cfg, out)
    tracker = NormTrackerCallback(**tracker_args)
    tracker.core.meta["run_id"] = new_run_id()  # a resume puts its checkpoint's back
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=cfg.data.batch_size,
        learning_rate=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.betas[0], adam_beta2=cfg.optim.betas[1],
        lr_scheduler_type="constant", logging_steps=1, save_steps=save_steps, seed=cfg.seed,
        report_to=["wandb"] if wandb else [], use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data.train_set,
                      data_collator=with_labels,
                      callbacks=[tracker, RunIdentity(tracker), *callbacks])
    return trainer, tracker


def read_json(path: Path) -> dict:
    try:
        found = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{path}: missing, so the checkpoint cannot be resumed") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable ({first_line(err)})") from None
    if not isinstance(found, dict):
        raise InputError(f"{path}: unreadable (not a JSON object)")
    return found


def check_readable(folder: Path) -> None:
    """Everything the Trainer reads back from checkpoint-N/, read now: one line naming a
    damaged file, instead of a traceback from inside `Trainer.train`."""
    import torch
    from safetensors.torch import load_file
    from transformers.trainer_pt_utils import safe_globals

    read_json(folder / "trainer_state.json")
    if (folder / "normx_tracker.json").exists():
        read_json(folder / "normx_tracker.json")
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        path = folder / name
        try:
            if name.endswith(".safetensors"):
                load_file(path)
            elif path.exists():
                with safe_globals():
                    torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - safetensors and torch raise many kinds
            raise InputError(f"{path}: unreadable, damaged or not a {name} the Trainer wrote "
                             f"({first_line(err)[:200]})") from None


def resume_or_start(out: Path, resume: bool, max_steps: int, tracker: NormTrackerCallback):
    """The checkpoint to resume from (this run's own, checked), or None after setting an
    earlier run's record and checkpoints aside."""
    if not resume:
        found = [p for p in out.iterdir() if CHECKPOINT.match(p.name)] if out.is_dir() else []
        start_fresh(out, found, lambda p: (p / RUN_FILE).is_file())
        return None
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last is None:
        raise InputError(f"{out}: no checkpoint-N to resume from; leave --resume out to start "
                         "a fresh run")
    last = Path(last)
    found = read_json(last / RUN_FILE) if (last / RUN_FILE).exists() else {}
    tracker.core.meta["run_id"] = check_same_run(last, found, out, tracker.core.vocab)
    check_readable(last)
    step = read_json(last / "trainer_state.json").get("global_step", 0)
    if step > max_steps:
        raise InputError(f"--max-steps {max_steps}: {last} is at step {step} already")
    return str(last)


def main(argv: list[str] | None = None) -> int:
    def body() -> None:
        args = parser().parse_intermixed_args(argv)  # OUT, options and overrides in any order
        at_least_one("--max-steps", args.max_steps)
        check_run_folder(args.out)
        trainer, tracker = build_trainer(args.out, args.max_steps, args.overrides, wandb=args.wandb)
        with RecordLock.acquire(args.out):  # the tracker takes it again when it opens
            last = resume_or_start(args.out, args.resume, args.max_steps, tracker)
            trainer.train(resume_from_checkpoint=last)
    return cli(body)


if __name__ == "__main__":
    sys.exit(main())
