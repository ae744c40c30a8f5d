"""`NormTracker`: a Lightning callback that snapshots word-embedding norms during training
and records how they agree with gold importance signals (DESIGN.md).

    tracker = NormTracker(gold=compute_gold(docs, vocab_size), vocab=tokens, out_dir="run")
    Trainer(callbacks=[tracker]).fit(model)

Works with any LightningModule wrapping an HF model; needs no Hydra and no normx training
script. One rank measures and writes (weights are replicated under DDP; under FSDP every
rank gathers the whole model first and runs the probes alongside rank zero).
"""
from __future__ import annotations

import hashlib
import html
import json
import logging
import platform
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

from normx_track import __version__
from normx_track.gold.statistics import GoldStatistics
from normx_track.probes.base import Probe, run_probes
from normx_track.record.store import RecordLock, RecordWriter, read_json, set_aside
from normx_track.tracker.snapshot import (NormMetrics, extreme_tokens, find_language_model, norm_arrays,
                       full_params, is_sharded)

log = logging.getLogger(__name__)


def snapshot_schedule(step: int, every_n_steps: int, log_spaced: bool) -> bool:
    """0, then (if log_spaced) 1, 2, 4, ... below every_n_steps, then every every_n_steps."""
    if step % every_n_steps == 0:
        return True
    return log_spaced and step < every_n_steps and (step & (step - 1)) == 0


class NormTracker(L.Callback):
    r"""Snapshot the word-embedding norms during training and record how they agree with
    gold importance signals, plus any probes (DESIGN.md "The durable record").

    Args:
        gold: gold statistics (`compute_gold`), or the path of a saved ``gold.npz``.
        vocab: token strings by id (for tables and ``vocab.json``).
        out_dir: where ``normx/`` goes; default the Trainer's ``default_root_dir``.
        every_n_steps: snapshot every N optimizer steps (and at step 0, the initialisation).
        log_spaced: also snapshot at 1, 2, 4, 8, ... below ``every_n_steps``.
        on_checkpoint: snapshot whenever a checkpoint is saved (its state says so).
        on_train_end: snapshot at the end of training.
        min_count: correlations use token types seen at least this often.
        signals: extra gold signals [V] by name, e.g. ``{"lexicon/concreteness": scores}``.
        probes: callables ``probe(hf_model) -> {"normx/...": float}`` run at each snapshot
            (`normx_track.probes.evidence.EvidenceProbe`, `normx_track.probes.faithfulness.FaithfulnessProbe`).
        stop_on_nonfinite: stop training (on every rank) when a norm is NaN or inf.
        top_k_tokens: rows of the highest/lowest-norm token table logged to W&B.
        meta: extra entries for ``meta.json``, e.g. ``{"config": run_config}``.
        model_getter: where the HF model sits in your LightningModule (default: the first
            submodule with ``get_input_embeddings()``).

    Example::

        from normx_track import NormTracker, compute_gold

        gold = compute_gold(token_id_documents, vocab_size=len(tokenizer))
        tracker = NormTracker(gold, vocab=token_strings, out_dir="runs/mine", every_n_steps=200)
        lightning.Trainer(callbacks=[tracker]).fit(my_module, my_loader)

    One rank (global zero) measures and writes; under FSDP every rank gathers the model for a
    snapshot. The tracker's state (last recorded step, tokens seen) travels in Lightning
    checkpoints under the key ``"NormTracker"``: a resumed run continues its record with no
    gap and no duplicate, even with other settings (which it names in a warning and in
    ``meta.json``). The record folder is locked (``<out_dir>/normx.lock``) while a run writes.
    """

    def __init__(self, gold: GoldStatistics | str | Path, vocab: Sequence[str] | None = None, *,
                 out_dir: str | Path | None = None, every_n_steps: int = 100,
                 log_spaced: bool = True, on_checkpoint: bool = True, on_train_end: bool = True,
                 min_count: int = 10, signals: Mapping[str, np.ndarray] | None = None,
                 probes: Sequence[Probe] = (), stop_on_nonfinite: bool = False,
                 top_k_tokens: int = 20, meta: Mapping[str, Any] | None = None,
                 model_getter: Callable[[L.LightningModule], torch.nn.Module] | None = None):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if min_count < 0:
            raise ValueError(f"min_count must be >= 0, got {min_count}")
        self.gold = gold if isinstance(gold, GoldStatistics) else GoldStatistics.load(gold)
        self.vocab = list(vocab) if vocab is not None else None
        self.signals = {**{n: getattr(self.gold, n) for n in self.gold.names()}, **(signals or {})}
        self._check_lengths()
        self.out_dir = out_dir
        self.every_n_steps, self.log_spaced = every_n_steps, log_spaced
        self.snapshot_on_checkpoint, self.snapshot_on_train_end = on_checkpoint, on_train_end
        self.min_count, self.top_k_tokens = min_count, top_k_tokens
        self.probes, self.stop_on_nonfinite = list(probes), stop_on_nonfinite
        self.meta, self.model_getter = dict(meta or {}), model_getter
        self.last_step = -1  # the last step recorded (state kept in checkpoints)
        self._failed_loggers: set[int] = set()  # warned about once
        self._tokens_counted = 0
        self._tokens_on_device: torch.Tensor | None = None  # attention-mask sums, read lazily
        self._estimate_from: tuple[int, int] | None = None  # (step, tokens) of a mid-run attach
        self.writer: RecordWriter | None = None
        self._lock: RecordLock | None = None
        self._metrics: NormMetrics | None = None  # prepared on rank zero at setup

    def _check_lengths(self) -> None:
        size = self.gold.vocab_size
        if self.vocab is not None and len(self.vocab) != size:
            raise ValueError(f"gold statistics cover {size} token types but vocab lists "
                             f"{len(self.vocab)}; they must come from the same tokenizer")
        for name, values in self.signals.items():
            if np.shape(values) != (size,):
                raise ValueError(f"gold signal {name!r} has shape {np.shape(values)}, "
                                 f"expected ({size},) to match the vocabulary")

    # -- Lightning hooks ---------------------------------------------------------------------
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        rows = self._language_model(pl_module).get_input_embeddings().weight.shape[0]
        if rows < self.gold.vocab_size:
            raise ValueError(f"the model's embedding has {rows} rows but the gold statistics "
                             f"cover {self.gold.vocab_size} token types: wrong tokenizer?")
        if trainer.is_global_zero:
            self._metrics = NormMetrics(self.signals, self.gold.counts, self.min_count)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Checkpoint state is restored by now (under FSDP only after on_fit_start), so a
        # fresh run (last_step < 0) is told apart from a resumed one.
        if trainer.is_global_zero:
            self._open_record(trainer, pl_module)
        if self.last_step < 0 < trainer.global_step:
            self._attach_mid_run(trainer)
        if self.writer is not None:  # resumed: drop what was recorded after the checkpoint
            later = [s for s in self.writer.steps() if s > self.last_step]
            if later:
                log.warning("%s: dropping %d rows recorded after step %d (steps %d..%d); the run "
                            "records them again from its checkpoint", self.writer.metrics_path,
                            len(later), self.last_step, later[0], later[-1])
            self.writer.truncate_after(self.last_step)
        if trainer.global_step == 0 and self.last_step < 0:
            self._snapshot(trainer, pl_module)
        elif trainer.strategy.broadcast(self._checkpoint_row_lost(trainer), src=0):
            # The weights are the checkpoint's, so the row can be measured again.
            log.warning("%s: no row for step %d, the checkpoint's (a damaged line?); "
                        "recording it again", self.writer.metrics_path, self.last_step)
            self._snapshot(trainer, pl_module)

    def _attach_mid_run(self, trainer: L.Trainer) -> None:
        """Resumed from a checkpoint without the tracker's state (trained with the tracker
        off, or attached now): the record in the folder, if any, continues from its last row
        before this step. The tokens of the steps in between are estimated from the first
        batch's (the same batch shape throughout), and meta.json says so."""
        step = trainer.global_step
        base = (0, 0)
        if self.writer is not None:
            self.writer.truncate_after(step - 1)
            last = self.writer.last_row()
            tokens = last.get("tokens_seen") if last else None
            if isinstance(tokens, (int, float)) and np.isfinite(tokens):  # else: from step 0
                base = (int(last["step"]), int(tokens))
            log.warning("%s: resumed at step %d from a checkpoint without the tracker's state; "
                        "the record continues from step %d, tokens_seen over steps %d..%d is "
                        "estimated from the first batch", self.writer.dir, step, base[0],
                        base[0], step)
        self._estimate_from = trainer.strategy.broadcast(base, src=0)
        self.last_step = step

    def _estimate_skipped_tokens(self, trainer: L.Trainer, batch_tokens: int) -> None:
        base_step, base_tokens = self._estimate_from
        per_step = batch_tokens * trainer.accumulate_grad_batches
        self.tokens_seen = base_tokens + (self.last_step - base_step) * per_step
        self._estimate_from = None
        if self.writer is not None:
            meta = read_json(self.writer.dir, "meta.json") or {}
            meta["tokens_seen_estimated"] = {"from_step": base_step, "to_step": self.last_step,
                                             "tokens_per_step": per_step}
            self.writer.write_meta(meta)

    def _checkpoint_row_lost(self, trainer: L.Trainer) -> bool:
        """Resumed from a checkpoint whose own step the tracker recorded (its state says
        so), yet the record has no row for it (rank zero knows)."""
        return (self.writer is not None and self.last_step == trainer.global_step > 0
                and self.last_step not in self.writer.steps() and self._estimate_from is None)

    def _open_record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_dir = Path(self.out_dir or trainer.default_root_dir)
        self._lock = RecordLock.acquire(run_dir)  # before anything in the folder is touched
        if self.last_step < 0 and trainer.global_step == 0:  # a fresh run never writes over
            moved = set_aside(run_dir)                             # an earlier run's record
            if moved is not None:
                log.warning("%s already held a record from another run; moved it to %s",
                            run_dir, moved)
        self.writer = RecordWriter(run_dir)
        meta = self._meta(pl_module)
        resumed = self.last_step >= 0 or trainer.global_step > 0
        if resumed:
            meta = self._resumed_meta(meta, trainer.global_step)
        self.writer.write_meta(meta)
        if self.vocab is not None:
            self.writer.write_vocab(self.vocab)
        if resumed:
            self._keep_earlier_gold(trainer.global_step)
        self.gold.save(self.writer.dir / "gold.npz")

    def _keep_earlier_gold(self, step: int) -> None:
        """A resumed run with other gold (other statistics settings) keeps the gold its
        earlier rows were measured against, as gold.until_step_XXXXXXXX.npz."""
        path = self.writer.dir / "gold.npz"
        if not path.exists():
            return
        try:
            same = GoldStatistics.load(path).same_as(self.gold)
        except (OSError, ValueError, KeyError) as err:
            log.warning("%s: unreadable (%s); kept beside the new one", path, err)
            same = False
        if not same:
            kept = path.with_name(f"gold.until_step_{step:08d}.npz")
            path.replace(kept)
            log.warning("%s: the resumed run's gold statistics differ; the earlier rows' "
                        "gold is kept as %s", path, kept.name)

    def _resumed_meta(self, meta: dict[str, Any], step: int) -> dict[str, Any]:
        """The record continues: keep its history, and say which tracker settings the
        resumed run changed (the rows before and after were taken under different ones)."""
        before = read_json(self.writer.dir, "meta.json") or {}
        changed = {}
        for part in ("tracker", "gold_settings"):
            earlier = before.get(part, {})
            changed.update({k: [earlier[k], v] for k, v in meta[part].items()
                            if k in earlier and earlier[k] != v})
        if "gold" in before and before["gold"] != meta["gold"]:
            changed["gold"] = [before["gold"], meta["gold"]]
        if changed:
            log.warning("%s: resumed at step %d with changed tracker settings %s; the record "
                        "continues (both settings are in meta.json)", self.writer.dir, step,
                        ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()))
        history = list(before.get("resumed", []))
        history.append({"at_step": step, "changed": changed})
        return {**meta, "resumed": history}

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        tokens = _count_tokens(batch) * trainer.world_size
        if self._estimate_from is not None:
            self._estimate_skipped_tokens(trainer, int(tokens))
        if isinstance(tokens, torch.Tensor):  # read when needed: a read each step would
            pending = self._tokens_on_device    # make the host wait for the GPU
            self._tokens_on_device = tokens if pending is None else pending + tokens
        else:
            self._tokens_counted += tokens
        step = trainer.global_step
        if step > self.last_step and snapshot_schedule(step, self.every_n_steps, self.log_spaced):
            self._snapshot(trainer, pl_module)

    @override
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Lightning collects state_dict() before this hook, so after snapshotting here the
        # checkpoint's entry is refreshed: it then says this step is recorded.
        if self.snapshot_on_checkpoint and trainer.global_step > self.last_step:
            self._snapshot(trainer, pl_module)
            checkpoint.setdefault("callbacks", {})[self.state_key] = self.state_dict()

    @override
    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Checkpoints written before the key was the plain class name used a key with the
        # settings in it ("NormTracker{'every_n_steps': 100}"): find the state either way.
        states = checkpoint.get("callbacks", {})
        if self.state_key not in states:
            state = tracker_state(checkpoint)
            if state is not None:
                self.load_state_dict(state)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.snapshot_on_train_end and trainer.global_step > self.last_step:
            self._snapshot(trainer, pl_module)

    @property
    def tokens_seen(self) -> int:
        """Training tokens so far, over all ranks (attention-mask sums when batches have one)."""
        if self._tokens_on_device is not None:
            self._tokens_counted += int(self._tokens_on_device)
            self._tokens_on_device = None
        return self._tokens_counted

    @tokens_seen.setter
    def tokens_seen(self, value: int) -> None:
        self._tokens_counted, self._tokens_on_device = int(value), None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "tokens_seen": self.tokens_seen}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = int(state_dict.get("last_step", -1))
        self.tokens_seen = int(state_dict.get("tokens_seen", 0))

    # -- the snapshot ------------------------------------------------------------------------
    def _language_model(self, pl_module: L.LightningModule) -> torch.nn.Module:
        return self.model_getter(pl_module) if self.model_getter else find_language_model(pl_module)

    def _snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        root = trainer.strategy.model if trainer.strategy.model is not None else pl_module
        model = self._language_model(pl_module)
        sharded = is_sharded(root)
        with full_params(root):  # FSDP: every rank gathers the whole model, collectively
            arrays = norm_arrays(model)
            # Under FSDP all ranks run the probes in step, so any collective inside matches.
            probe_row = run_probes(self.probes, model) if sharded or trainer.is_global_zero else {}
        self.last_step = step
        if trainer.is_global_zero:
            row = {"step": step, "tokens_seen": self.tokens_seen}
            row.update(self._metrics(arrays))
            row.update(probe_row)
            self.writer.write_snapshot(step, arrays)
            self.writer.append_metrics(row)
            self._log(trainer, step, row, arrays)
        self._check_finite(trainer, step, arrays)

    def _check_finite(self, trainer: L.Trainer, step: int, arrays: dict[str, np.ndarray]) -> None:
        """Every rank counts (the norms are computed on all), and the stop decision is
        reduced across ranks, so all stop together rather than rank zero alone (a hang)."""
        bad = int(sum((~np.isfinite(a)).sum() for a in arrays.values()))
        if bad and trainer.is_global_zero:
            log.warning("step %d: %d embedding norms are NaN or inf", step, bad)
        if not self.stop_on_nonfinite:
            return
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            if trainer.is_global_zero:
                log.warning("stopping the run (stop_on_nonfinite=True)")
            trainer.should_stop = True

    def _log(self, trainer: L.Trainer, step: int, row: dict[str, Any],
             arrays: dict[str, np.ndarray]) -> None:
        scalars = {k: v for k, v in row.items() if k != "step"}
        for logger in trainer.loggers:
            try:  # the record is already on disk: a failing logger must not stop training
                logger.log_metrics(scalars, step=step)
                if isinstance(logger, WandbLogger) and not getattr(logger, "failed", False):
                    self._log_wandb_extras(logger, step, arrays)
            except Exception as err:
                if callable(getattr(logger, "fall_back", None)):
                    logger.fall_back(err)  # ResilientWandbLogger: CSV from here on
                elif id(logger) not in self._failed_loggers:
                    self._failed_loggers.add(id(logger))
                    log.warning("NormTracker: %s failed (%s: %s); the record under %s goes on",
                                type(logger).__name__, type(err).__name__, err, self.writer.dir)

    def _log_wandb_extras(self, logger: WandbLogger, step: int, arrays: dict[str, np.ndarray]):
        """The norm histogram and an HTML table of the top/bottom-norm tokens. Media files,
        not W&B Tables: an online Table asks the server about its artifact type on the
        training thread, which stalls training for as long as the network is down."""
        import wandb

        norms, counts = arrays["input_norm"][: self.gold.vocab_size], self.gold.counts
        seen = (counts >= self.min_count) & np.isfinite(norms)
        extras: dict[str, Any] = {"normx/histogram/input_norm": wandb.Histogram(norms[seen])}
        if self.vocab is not None:
            rows = extreme_tokens(norms, self.vocab, counts, self.top_k_tokens, self.min_count)
            extras["normx/extreme_tokens"] = wandb.Html(_token_table_html(rows, step))
        logger.experiment.log({**extras, "trainer/global_step": step})

    def _meta(self, pl_module: L.LightningModule) -> dict[str, Any]:
        model = self._language_model(pl_module)
        config = getattr(model, "config", None)
        import lightning
        import transformers

        return {
            "config": {},  # callers pass their run config (and more) through `meta`
            **self.meta,
            "model": {"class": type(model).__name__,
                      "arch": config.to_dict() if hasattr(config, "to_dict") else None},
            "vocab_size": self.gold.vocab_size,
            "embedding_rows": int(model.get_input_embeddings().weight.shape[0]),
            "vocab_hash": vocab_hash(self.vocab),
            "gold": sorted(self.signals),
            "gold_settings": {"window": self.gold.window, "n_tokens": self.gold.n_tokens,
                              "seed": self.gold.seed},
            "tracker": {"every_n_steps": self.every_n_steps, "log_spaced": self.log_spaced,
                        "min_count": self.min_count},
            "versions": {"normx_track": __version__, "torch": torch.__version__,
                         "lightning": lightning.__version__,
                         "transformers": transformers.__version__,
                         "python": platform.python_version()},
        }


def tracker_state(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The NormTracker's state in a Lightning checkpoint dict: under its key "NormTracker",
    or under the older keys that carried its settings ("NormTracker{...}")."""
    states = checkpoint.get("callbacks", {}) or {}
    if NormTracker.__qualname__ in states:
        return states[NormTracker.__qualname__]
    for key, state in states.items():
        if str(key).startswith(NormTracker.__qualname__ + "{") and isinstance(state, dict):
            return state
    return None


def _token_table_html(rows: Sequence[Mapping[str, Any]], step: int) -> str:
    cells = "".join(
        f"<tr><td>{r['rank']}</td><td>{html.escape(repr(r['token']))}</td><td>{r['id']}</td>"
        f"<td>{r['norm']:.4f}</td><td>{r['count']}</td></tr>" for r in rows)
    return (f"<table><caption>highest and lowest norms, step {step}</caption><tr><th>rank</th>"
            f"<th>token</th><th>id</th><th>norm</th><th>count</th></tr>{cells}</table>")


def vocab_hash(vocab: Sequence[str] | None) -> str | None:
    if vocab is None:
        return None
    return hashlib.sha256(json.dumps(list(vocab)).encode()).hexdigest()


def batch_input_ids(batch: Any) -> Any:
    """The token ids of a batch: a mapping's ``input_ids`` (else its first value), a
    sequence's first item, or the batch itself."""
    if isinstance(batch, Mapping):
        batch = batch.get("input_ids", next(iter(batch.values())))
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def _count_tokens(batch: Any) -> int | torch.Tensor:
    """Tokens in a batch: the attention mask's sum (a tensor, still on the batch's device)
    when given, else the input ids' size."""
    if isinstance(batch, Mapping) and "attention_mask" in batch:
        return batch["attention_mask"].sum()
    ids = batch_input_ids(batch)
    return int(ids.numel()) if isinstance(ids, torch.Tensor) else 0
