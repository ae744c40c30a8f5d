"""Pre-train the tiny GPT-2 on the synthetic corpus with the Hugging Face `Trainer`, tracked.

    python examples/hf_trainer.py runs/hf --max-steps 200                # then, to continue:
    python examples/hf_trainer.py runs/hf --max-steps 400 --resume

`NormTrackerCallback` runs the schedule on `state.global_step`, writes the record under OUT
and its state into each `checkpoint-N/`, so `resume_from_checkpoint` continues the record.
With `--wandb` the rows go to the Trainer's W&B run, stepped by `train/global_step`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compose, data_model_and_tracker_args  # noqa: E402

from transformers import Trainer, TrainingArguments  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from normx_track.hf import NormTrackerCallback  # noqa: E402


def with_labels(rows: list[dict]) -> dict:
    """Causal-LM batches: the model shifts the labels itself."""
    import torch

    ids = torch.stack([row["input_ids"] for row in rows])
    return {"input_ids": ids, "labels": ids}


def build_trainer(out: Path, max_steps: int, overrides: list[str], wandb: bool = False,
                  save_steps: int = 10, callbacks: tuple = ()) -> tuple[Trainer, NormTrackerCallback]:
    cfg = compose(overrides)
    data, model, tracker_args = data_model_and_tracker_args(cfg, out)
    tracker = NormTrackerCallback(**tracker_args)
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=cfg.data.batch_size,
        learning_rate=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.betas[0], adam_beta2=cfg.optim.betas[1],
        lr_scheduler_type="constant", logging_steps=1, save_steps=save_steps, seed=cfg.seed,
        report_to=["wandb"] if wandb else [], use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data.train_set,
                      data_collator=with_labels, callbacks=[tracker, *callbacks])
    return trainer, tracker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the run folder (the record goes to OUT/normx)")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint-N")
    parser.add_argument("--wandb", action="store_true", help="report to W&B (offline unless logged in)")
    parser.add_argument("overrides", nargs="*", default=["debug=tiny"],
                        help="Hydra overrides of this project's configs (default: debug=tiny)")
    args = parser.parse_args(argv)
    trainer, _ = build_trainer(args.out, args.max_steps, args.overrides, wandb=args.wandb)
    last = get_last_checkpoint(str(args.out)) if args.resume else None
    trainer.train(resume_from_checkpoint=last)


if __name__ == "__main__":
    main()
