"""`NormTracker`: the Lightning front end, a thin adapter over `normx_track.Tracker`.

    tracker = NormTracker(gold=compute_gold(docs, vocab_size), vocab=tokens, out_dir="run")
    Trainer(callbacks=[tracker]).fit(model)

Lightning's hooks drive the core's schedule on ``trainer.global_step``; tokens are counted
from each batch on the device (read only at a snapshot); the strategy answers the core's
collective questions; rows go to ``trainer.loggers``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from typing_extensions import override

from normx_track import keys
from normx_track.gold.statistics import GoldStatistics
from normx_track.record.checkpoint_loader import tracker_state  # noqa: F401 - re-exported
from normx_track.probes.protocol import Probe
from normx_track.tracker.core import LOSS_TOKENS, Tracker
from normx_track.tracker.distributed import StrategyDistributed
from normx_track.tracker.sinks import LightningLoggers
from normx_track.tracker.snapshot import find_language_model
from normx_track.tracker.tokens import batch_tokens


class NormTracker(L.Callback):
    r"""Snapshot the word-embedding norms during training and record how they agree with
    gold importance signals, plus any probes (DESIGN.md "The durable record").

    Takes `Tracker`'s arguments (``out_dir`` defaults to the Trainer's
    ``default_root_dir``) and:

    Args:
        on_checkpoint: snapshot whenever a checkpoint is saved (its state says so).
        on_train_end: snapshot at the end of training.
        model_getter: where the HF model sits in your LightningModule (default: the first
            submodule with ``get_input_embeddings()``).

    Example::

        from normx_track import NormTracker, compute_gold

        gold = compute_gold(token_id_documents, vocab_size=len(tokenizer))
        tracker = NormTracker(gold, vocab=token_strings, out_dir="runs/mine", every_n_steps=200)
        lightning.Trainer(callbacks=[tracker]).fit(my_module, my_loader)

    The state travels in Lightning checkpoints under the key ``"NormTracker"``; the train
    loss of each step and the validation loss go beside the rows (``train/loss``,
    ``val/loss``, with their steps).
    """

    def __init__(self, gold: GoldStatistics | str | Path, vocab: Sequence[str] | None = None, *,
                 out_dir: str | Path | None = None, every_n_steps: int = 100,
                 log_spaced: bool = True, on_checkpoint: bool = True, on_train_end: bool = True,
                 min_count: int = 10, signals: Mapping[str, np.ndarray] | None = None,
                 probes: Sequence[Probe] = (), stop_on_nonfinite: bool = False,
                 top_k_tokens: int = 20, meta: Mapping[str, Any] | None = None,
                 model_getter: Callable[[L.LightningModule], torch.nn.Module] | None = None):
        self.core = Tracker(gold, vocab, out_dir=out_dir, every_n_steps=every_n_steps,
                            log_spaced=log_spaced, min_count=min_count, signals=signals,
                            probes=probes, stop_on_nonfinite=stop_on_nonfinite,
                            top_k_tokens=top_k_tokens, meta=meta, front_end="lightning")
        self.snapshot_on_checkpoint, self.snapshot_on_train_end = on_checkpoint, on_train_end
        self.model_getter = model_getter

    # The core's state and record, as the callback's (tests and replay read them here).
    last_step = property(lambda self: self.core.last_step)
    tokens_seen = property(lambda self: self.core.tokens_seen)
    writer = property(lambda self: self.core.writer)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.core.bind(out_dir=trainer.default_root_dir, distributed=StrategyDistributed(trainer),
                       loggers=[LightningLoggers(trainer)] if trainer.loggers else [],
                       counts_tokens=True)
        self.core.check_model(self._language_model(pl_module))  # before any training

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Checkpoint state is restored by now (under FSDP only after on_fit_start), so a
        # fresh run is told apart from a resumed one: step 0's row, or the resume's.
        self._step(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        tokens = batch_tokens(batch) * trainer.world_size
        per_step = int(tokens) * trainer.accumulate_grad_batches \
            if self.core.awaiting_token_estimate else None  # read once: a mid-run attach
        self.core.count_tokens(tokens, tokens_per_step=per_step)
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        loss_tokens = outputs.get(LOSS_TOKENS) if isinstance(outputs, Mapping) else None
        if isinstance(loss, torch.Tensor):
            self.core.record_loss(keys.TRAIN_LOSS, loss, trainer.global_step, tokens=loss_tokens)
        self._step(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get(keys.VAL_LOSS)
        if loss is not None and not trainer.sanity_checking:
            self.core.record_loss(keys.VAL_LOSS, loss, trainer.global_step)

    @override
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Lightning collects state_dict() before this hook, so after snapshotting here the
        # checkpoint's entry is refreshed: it then says this step is recorded.
        if self.snapshot_on_checkpoint and trainer.global_step > self.core.last_step:
            self._snapshot(trainer, pl_module)
            checkpoint.setdefault("callbacks", {})[self.state_key] = self.state_dict()

    @override
    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Checkpoints written before the key was the plain class name used a key with the
        # settings in it ("NormTracker{'every_n_steps': 100}"): find the state either way.
        if self.state_key not in checkpoint.get("callbacks", {}):
            state = tracker_state(checkpoint)
            if state is not None:
                self.load_state_dict(state)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.snapshot_on_train_end and trainer.global_step > self.core.last_step:
            self._snapshot(trainer, pl_module)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.core.close()

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.core.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.core.load_state_dict(state_dict)

    def _language_model(self, pl_module: L.LightningModule) -> torch.nn.Module:
        return self.model_getter(pl_module) if self.model_getter else find_language_model(pl_module)

    @staticmethod
    def _root(trainer: L.Trainer, pl_module: L.LightningModule) -> torch.nn.Module:
        return trainer.strategy.model if trainer.strategy.model is not None else pl_module

    def _step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.core.step(self._language_model(pl_module), trainer.global_step,
                       root=self._root(trainer, pl_module))
        if self.core.should_stop:
            trainer.should_stop = True

    def _snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.core.snapshot(self._language_model(pl_module), trainer.global_step,
                           root=self._root(trainer, pl_module))
        if self.core.should_stop:
            trainer.should_stop = True
