"""`NormTrackerCallback`: the Hugging Face `Trainer` front end, a thin adapter over
`normx_track.Tracker`.

    trainer = Trainer(model, args, train_dataset=ds,
                      callbacks=[NormTrackerCallback(gold, vocab=tokens)])
    trainer.train()                                   # or resume_from_checkpoint=...

The schedule runs on ``state.global_step``. Tokens come from ``state.num_input_tokens_seen``
when the Trainer counts them (``include_num_input_tokens_seen``), else from the model's
training inputs (their attention masks, else their shapes) times the world size, and
``meta.json`` says which. Rows go to the W&B run the Trainer reports to, stepped by
``train/global_step`` as `WandbCallback` steps its own. The tracker's state is written into
each ``checkpoint-N/`` folder (``normx_tracker.json``) and is in ``trainer_state.json``
too, so ``trainer.train(resume_from_checkpoint=...)`` continues the record with or without
``restore_callback_states_from_checkpoint``.
"""
from __future__ import annotations

import json
import logging
import sys
import weakref
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from normx_track import keys
from normx_track.record.atomic import atomic_write_json
from normx_track.tracker.core import Tracker
from normx_track.tracker.distributed import TorchDistributed
from normx_track.tracker.sinks import WandbRunSink
from normx_track.tracker.tokens import batch_tokens

log = logging.getLogger(__name__)
STATE_FILE = "normx_tracker.json"


class _TrainerRanks(TorchDistributed):
    """torch.distributed's collectives, with the Trainer's own word on who writes."""

    def __init__(self, state):
        self.state = state

    @property
    def is_main(self) -> bool:
        return bool(self.state.is_world_process_zero)


class NormTrackerCallback(TrainerCallback, ExportableState):
    """Takes `Tracker`'s arguments (``out_dir`` defaults to ``args.output_dir``), plus
    ``on_train_end`` (snapshot at the end of training)."""

    _live: "weakref.ref[NormTrackerCallback] | None" = None

    def __new__(cls, *args, restore: bool = False, **kwargs):
        # `restore_callback_states_from_checkpoint` rebuilds callbacks from `state()`'s
        # args: hand back the live tracker (gold, probes, record) and let it take the state.
        if restore:
            live = _replaced_callback(cls) or (cls._live() if cls._live is not None else None)
            if live is None:
                raise RuntimeError("NormTrackerCallback state found in the checkpoint, but no "
                                   "NormTrackerCallback was passed to this Trainer")
            return live
        return super().__new__(cls)

    def __init__(self, gold: Any = None, vocab=None, *, restore: bool = False,
                 on_train_end: bool = True, **tracker_kwargs: Any):
        if restore:
            return  # the live callback, from __new__
        if gold is None:
            raise TypeError("NormTrackerCallback needs the gold statistics (compute_gold(...) "
                            "or a gold.npz path)")
        tracker_kwargs.setdefault("out_dir", None)
        self.core = Tracker(gold, vocab, front_end="hf_trainer", **tracker_kwargs)
        self.snapshot_on_train_end = on_train_end
        self._hook = None
        type(self)._live = weakref.ref(self)

    # -- state: ExportableState (trainer_state.json) and a file in checkpoint-N/ -----------
    def state(self) -> dict[str, Any]:
        return {"args": {"restore": True}, "attributes": {"tracker_state": self.core.state_dict()}}

    @property
    def tracker_state(self) -> dict[str, Any]:
        return self.core.state_dict()

    @tracker_state.setter
    def tracker_state(self, value: dict[str, Any]) -> None:
        self.core.bind()  # this callback trained before (an earlier train() call): fresh
        self.core.load_state_dict(value)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                atomic_write_json(folder / STATE_FILE, self.core.state_dict())

    def _restore_from_checkpoint_folder(self, args, state) -> None:
        """A resume without `restore_callback_states_from_checkpoint`: the state file the
        checkpoint of this step holds (the Trainer restored `global_step` from it)."""
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
        if self.core.last_step < 0 and path.is_file():
            self.core.load_state_dict(json.loads(path.read_text()))

    def _export_into(self, state) -> None:
        """A checkpoint written without this callback has no entry for it in
        ``trainer_state.json``, and the Trainer's next save looks it up (a KeyError): add it.
        The tracker then starts at the resumed step with no earlier state."""
        name = type(self).__name__
        if isinstance(state.stateful_callbacks, dict) and name not in state.stateful_callbacks:
            state.stateful_callbacks[name] = self.state()
            if state.global_step > 0 and self.core.last_step < 0:
                log.warning("the checkpoint was written without %s: the tracker starts at step "
                            "%d with no earlier state", name, state.global_step)

    # -- training ----------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        counted = _counts_tokens(args)
        self.core.bind(out_dir=args.output_dir, distributed=_TrainerRanks(state),
                       loggers=[WandbRunSink()] if "wandb" in (args.report_to or []) else None,
                       meta={"tokens_seen_from": "state.num_input_tokens_seen" if counted else
                             "the model's training inputs on rank zero x world size"},
                       counts_tokens=not counted)
        if state.global_step > 0:
            self._restore_from_checkpoint_folder(args, state)
        self._export_into(state)
        if not counted:
            self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)
        self._world_size = max(1, int(args.world_size))
        # the Trainer's own count, restored with its state on a resume
        self.core.step(model, state.global_step,
                       tokens_seen=state.num_input_tokens_seen if counted else None)

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return  # evaluation, or the tracker's own probes
        batch = kwargs if "input_ids" in kwargs else (args[0] if args else None)
        tokens = batch_tokens(batch) if batch is not None else 0
        self.core.count_tokens(tokens * self._world_size)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        tokens = state.num_input_tokens_seen if _counts_tokens(args) else None
        self.core.step(model, state.global_step, tokens_seen=tokens)
        if self.core.should_stop:
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.core.record_loss(keys.TRAIN_LOSS, logs["loss"], state.global_step)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_loss" in metrics:
            self.core.record_loss(keys.VAL_LOSS, metrics["eval_loss"], state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.snapshot_on_train_end and state.global_step > self.core.last_step:
            self.core.snapshot(model, state.global_step)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.core.close()


def _replaced_callback(cls: type) -> "NormTrackerCallback | None":
    """The callback `Trainer._load_callback_state` is rebuilding: its local ``callback`` is
    the one passed to the Trainer being resumed. (The most recently built one would be
    another Trainer's when two are built in one process, and its record would get the rows.)"""
    frame = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            return None
        candidate = frame.f_locals.get("callback")
        if isinstance(candidate, cls):
            return candidate
        frame = frame.f_back
    return None


def _counts_tokens(args) -> bool:
    flag = getattr(args, "include_num_input_tokens_seen", "no")
    return flag not in ("no", False, None)
