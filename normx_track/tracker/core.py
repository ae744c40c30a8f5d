"""`Tracker`: the framework-free core every front end wraps (DESIGN.md "Front ends").

    tracker = Tracker(compute_gold(docs, vocab_size), vocab=tokens, out_dir="runs/mine")
    with tracker:
        for step in range(start, max_steps + 1):
            tracker.step(model, step, tokens_seen)      # a snapshot when the schedule says
            ...train one optimizer step...
        checkpoint["normx_tracker"] = tracker.state_dict()

It owns the schedule, the record (lock, set-aside of another run's record, resume, the
re-measure of a row lost to damage), the snapshot (norms, metrics, probes), the non-finite
check and logging to plain sinks (``sink.log(metrics, step)``). Steps count optimizer steps
done, as Lightning's ``global_step`` and the HF Trainer's ``state.global_step`` do: step 0 is
the initialisation. Rank zero writes; under FSDP every rank calls it (the gather is collective).
"""
from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch

from normx_track import __version__, keys
from normx_track.gold.statistics import GoldStatistics
from normx_track.probes.base import Probe, run_probes
from normx_track.record.store import RecordLock, RecordWriter, read_json, set_aside, vocab_hash
from normx_track.tracker.distributed import Distributed, TorchDistributed
from normx_track.tracker.snapshot import (NormMetrics, find_language_model, full_params,
                                          is_sharded, norm_arrays)
from normx_track.tracker.tokens import TokenCounter

log = logging.getLogger(__name__)


def snapshot_schedule(step: int, every_n_steps: int, log_spaced: bool) -> bool:
    """0, then (if log_spaced) 1, 2, 4, ... below every_n_steps, then every every_n_steps."""
    if step % every_n_steps == 0:
        return True
    return log_spaced and step < every_n_steps and (step & (step - 1)) == 0


class Sink(Protocol):
    """Where rows go besides the record: ``log(metrics, step)``. A sink may also define
    ``log_snapshot(step, arrays, tracker)`` for per-snapshot extras (histograms, tables)."""

    def log(self, metrics: dict[str, Any], step: int) -> None: ...


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside `model`: through ``torch.compile``'s ``_orig_mod``, DDP's
    and FSDP's ``.module``, or a wrapper holding it (a LightningModule)."""
    inner = model
    while not callable(getattr(inner, "get_input_embeddings", None)):
        nxt = getattr(inner, "_orig_mod", None) or getattr(inner, "module", None)
        if not isinstance(nxt, torch.nn.Module):
            break
        inner = nxt
    if not isinstance(inner, torch.nn.Module):
        raise TypeError(f"the tracker needs a torch module, got {type(model).__name__}")
    try:
        return find_language_model(inner)
    except TypeError:
        raise TypeError(
            f"the tracker needs a Hugging Face language model (a module with "
            f"get_input_embeddings(), e.g. GPT2LMHeadModel), got {type(model).__name__} "
            "with none inside; pass the model itself (DDP, FSDP and torch.compile "
            "wrappers are looked through)") from None


def embedding_rows(lm: torch.nn.Module) -> int:
    """Rows of the input embedding, also under FSDP (whose weights are flat shards)."""
    embedding = lm.get_input_embeddings()
    return int(getattr(embedding, "num_embeddings", None) or embedding.weight.shape[0])


class Tracker:
    r"""Snapshot the word-embedding norms during training and record how they agree with
    gold importance signals, plus any probes (DESIGN.md "The durable record").

    Args:
        gold: gold statistics (`compute_gold`), or the path of a saved ``gold.npz``.
        vocab: token strings by id (for tables and ``vocab.json``).
        out_dir: the run folder; the record goes to ``<out_dir>/normx``.
        every_n_steps: snapshot every N optimizer steps (and at step 0, the initialisation).
        log_spaced: also snapshot at 1, 2, 4, 8, ... below ``every_n_steps``.
        min_count: correlations use token types seen at least this often.
        signals: extra gold signals [V] by name, e.g. ``{"lexicon/concreteness": scores}``.
        probes: callables ``probe(hf_model) -> {"normx/...": float}`` run at each snapshot
            (`normx_track.probes.evidence.EvidenceProbe`, `...faithfulness.FaithfulnessProbe`).
        stop_on_nonfinite: set `should_stop` (on every rank) when a norm is NaN or inf.
        top_k_tokens: rows of the highest/lowest-norm token table a sink may show.
        meta: extra entries for ``meta.json``, e.g. ``{"config": run_config}``.
        loggers: sinks with ``log(metrics, step)`` (e.g. a W&B run's adapter).
        distributed: is-main / broadcast / any-rank-true (default: ``torch.distributed``).
        front_end: the name ``meta.json`` records ("plain", "lightning", "hf_trainer").

    State (``state_dict``: last recorded step, tokens seen) follows torch's ``Stateful``
    protocol, so Fabric, Accelerate and torchtitan checkpoints carry it: a resumed run
    continues its record with no gap and no duplicate.
    """

    def __init__(self, gold: GoldStatistics | str | Path, vocab: Sequence[str] | None = None, *,
                 out_dir: str | Path, every_n_steps: int = 100, log_spaced: bool = True,
                 min_count: int = 10, signals: Mapping[str, np.ndarray] | None = None,
                 probes: Sequence[Probe] = (), stop_on_nonfinite: bool = False,
                 top_k_tokens: int = 20, meta: Mapping[str, Any] | None = None,
                 loggers: Sequence[Sink] = (), distributed: Distributed | None = None,
                 front_end: str = "plain"):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if min_count < 0:
            raise ValueError(f"min_count must be >= 0, got {min_count}")
        self.gold = gold if isinstance(gold, GoldStatistics) else GoldStatistics.load(gold)
        self.vocab = list(vocab) if vocab is not None else None
        self.signals = {**{n: getattr(self.gold, n) for n in self.gold.names()}, **(signals or {})}
        self._check_lengths()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.every_n_steps, self.log_spaced = every_n_steps, log_spaced
        self.min_count, self.top_k_tokens = min_count, top_k_tokens
        self.probes, self.stop_on_nonfinite = list(probes), stop_on_nonfinite
        self.meta, self.loggers = dict(meta or {}), list(loggers)
        self.dist = distributed or TorchDistributed()
        self.front_end = front_end
        self.last_step = -1  # the last step recorded (state kept in checkpoints)
        self.tokens = TokenCounter()
        self.should_stop = False  # non-finite norms with stop_on_nonfinite
        self.writer: RecordWriter | None = None
        self._opened = False
        self._lock: RecordLock | None = None
        self._metrics: NormMetrics | None = None
        self._losses: dict[str, tuple[Any, int]] = {}  # key -> (value, step), read lazily
        self._estimate_from: tuple[int, int] | None = None  # (step, tokens) of a mid-run attach
        self._failed_sinks: set[int] = set()

    def _check_lengths(self) -> None:
        size = self.gold.vocab_size
        if self.vocab is not None and len(self.vocab) != size:
            raise ValueError(f"gold statistics cover {size} token types but vocab lists "
                             f"{len(self.vocab)}; they must come from the same tokenizer")
        for name, values in self.signals.items():
            if np.shape(values) != (size,):
                raise ValueError(f"gold signal {name!r} has shape {np.shape(values)}, "
                                 f"expected ({size},) to match the vocabulary")

    # -- the public API ----------------------------------------------------------------------
    @property
    def tokens_seen(self) -> int:
        """Training tokens so far, over all ranks (read from the device only when asked)."""
        return self.tokens.total

    @tokens_seen.setter
    def tokens_seen(self, value: int) -> None:
        self.tokens.total = value

    def due(self, step: int) -> bool:
        """Whether the schedule asks for a snapshot at `step` not yet recorded."""
        return step > self.last_step and snapshot_schedule(step, self.every_n_steps,
                                                           self.log_spaced)

    def step(self, model: torch.nn.Module, step: int, tokens_seen: int | None = None,
             losses: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Call once before training (step 0) and after each optimizer step, with the
        number of optimizer steps done. Snapshots when due; returns the row (on rank zero),
        else None. `tokens_seen`: the training tokens so far (all ranks); `losses`: e.g.
        ``{"train/loss": loss}`` (tensors are read only when a row is written)."""
        for key, value in (losses or {}).items():
            self.record_loss(key, value, step)
        if tokens_seen is not None:
            self.tokens_seen = tokens_seen
            self._estimate_from = None
        if not self._opened:
            row = self.open(model, step)
            if row is not None or not self.due(step):
                return row
        return self.snapshot(model, step) if self.due(step) else None

    def record_loss(self, key: str, value: Any, step: int) -> None:
        """Keep the latest `key` (``train/loss``, ``val/loss``) to write beside the next row,
        with the step it was measured at. Measured at the last row's own step (validation
        runs after the step's snapshot), it is added to that row: the steps coincide."""
        self._losses[key] = (value.detach() if isinstance(value, torch.Tensor) else value, step)
        if self.writer is None or step != self.last_step:  # the usual case, every step: no I/O
            return
        last = self.writer.last_row()
        if last is not None and last["step"] == step and last.get(keys.loss_step_key(key)) != step:
            self.writer.update_last({key: float(value), keys.loss_step_key(key): int(step)})

    def open(self, model: torch.nn.Module, step: int = 0,
             root: torch.nn.Module | None = None) -> dict[str, Any] | None:
        """Start (or continue) the record at `step`; the front ends call it when training
        starts, `step()` on its first call. A fresh run (step 0, no state loaded) sets an
        earlier run's record aside and records the initialisation; a resumed one drops the
        rows past its checkpoint. Returns the row it recorded, if any."""
        if self._opened:
            return None
        self._opened = True
        lm = unwrap_model(model)
        self._check_embedding_rows(lm)
        if self.dist.is_main:
            self._metrics = NormMetrics(self.signals, self.gold.counts, self.min_count)
            self._open_record(lm, step)
        if self.last_step < 0 < step:
            self._attach_mid_run(step)
        if self.writer is not None:  # resumed: drop what was recorded after the checkpoint
            later = [s for s in self.writer.steps() if s > self.last_step]
            if later:
                log.warning("%s: dropping %d rows recorded after step %d (steps %d..%d); the run "
                            "records them again from its checkpoint", self.writer.metrics_path,
                            len(later), self.last_step, later[0], later[-1])
            self.writer.truncate_after(self.last_step)
            self._losses_from(self.writer.last_row())
        if step == 0 and self.last_step < 0:
            return self.snapshot(model, 0, root=root)
        if self.dist.broadcast(self._checkpoint_row_lost(step)):
            # The weights are the checkpoint's, so the row can be measured again.
            log.warning("%s: no row for step %d, the checkpoint's (a damaged line?); "
                        "recording it again", self.writer.metrics_path, self.last_step)
            return self.snapshot(model, step, root=root)
        return None

    def snapshot(self, model: torch.nn.Module, step: int, tokens_seen: int | None = None,
                 root: torch.nn.Module | None = None) -> dict[str, Any] | None:
        """Measure and record now, whatever the schedule says. `root`: the module to gather
        under FSDP when `model` is not it. Returns the row on rank zero, else None."""
        if not self._opened:
            return self.open(model, step, root) if step == 0 else self._open_then(model, step, root)
        if tokens_seen is not None:
            self.tokens_seen = tokens_seen
        root = root if root is not None else model
        lm = unwrap_model(model)
        sharded = is_sharded(root)
        losses = self._losses_over_ranks()  # a collective: every rank snapshots
        with full_params(root):  # FSDP: every rank gathers the whole model, collectively
            arrays = norm_arrays(lm)
            # Under FSDP all ranks run the probes in step, so any collective inside matches.
            probe_row = run_probes(self.probes, lm) if sharded or self.dist.is_main else {}
        self.last_step = step
        row = None
        if self.dist.is_main:
            row = {"step": step, "tokens_seen": self.tokens_seen, **losses,
                   **self._metrics(arrays), **probe_row}
            self.writer.write_snapshot(step, arrays)
            self.writer.append_metrics(row)
            self._log(step, row, arrays)
        self._check_finite(step, arrays)
        return row

    def _open_then(self, model, step, root):
        row = self.open(model, step, root)
        return row if row is not None else self.snapshot(model, step, root=root)

    def close(self) -> None:
        """Release the record's lock (the record itself is always complete on disk)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def state_dict(self) -> dict[str, Any]:
        # The losses travel too: a resumed run's next rows carry the same last val/loss.
        losses = {k: [float(v), int(at)] for k, (v, at) in self._losses.items()}
        return {"last_step": self.last_step, "tokens_seen": self.tokens_seen, "losses": losses}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.last_step = int(state_dict.get("last_step", -1))
        self.tokens_seen = int(state_dict.get("tokens_seen", 0))
        self._losses = {k: (float(v), int(at))
                        for k, (v, at) in (state_dict.get("losses") or {}).items()}

    def estimate_skipped_tokens(self, tokens_per_step: int) -> None:
        """After a mid-run attach (no tracker state at a step > 0): tokens over the steps
        the record did not see, from one step's tokens; meta.json says so."""
        if self._estimate_from is None:
            return
        base_step, base_tokens = self._estimate_from
        self.tokens_seen = base_tokens + (self.last_step - base_step) * int(tokens_per_step)
        self._estimate_from = None
        if self.writer is not None:
            meta = read_json(self.writer.dir, "meta.json") or {}
            meta["tokens_seen_estimated"] = {"from_step": base_step, "to_step": self.last_step,
                                             "tokens_per_step": int(tokens_per_step)}
            self.writer.write_meta(meta)

    @property
    def awaiting_token_estimate(self) -> bool:
        return self._estimate_from is not None

    # -- the record's lifecycle ----------------------------------------------------------------
    def _check_embedding_rows(self, lm: torch.nn.Module) -> None:
        rows = embedding_rows(lm)
        if rows < self.gold.vocab_size:
            raise ValueError(f"the model's embedding has {rows} rows but the gold statistics "
                             f"cover {self.gold.vocab_size} token types: wrong tokenizer?")

    def _open_record(self, lm: torch.nn.Module, step: int) -> None:
        run_dir = self.out_dir
        self._lock = RecordLock.acquire(run_dir)  # before anything in the folder is touched
        if self.last_step < 0 and step == 0:  # a fresh run never writes over an earlier
            moved = set_aside(run_dir)          # run's record
            if moved is not None:
                log.warning("%s already held a record from another run; moved it to %s",
                            run_dir, moved)
        self.writer = RecordWriter(run_dir)
        meta = self._meta(lm)
        resumed = self.last_step >= 0 or step > 0
        if resumed:
            meta = self._resumed_meta(meta, step)
        self.writer.write_meta(meta)
        if self.vocab is not None:
            self.writer.write_vocab(self.vocab)
        if resumed:
            self._keep_earlier_gold(step)
        self.gold.save(self.writer.dir / "gold.npz")

    def _attach_mid_run(self, step: int) -> None:
        """Started at a step > 0 without the tracker's state (trained with the tracker off,
        or attached now): the record in the folder, if any, continues from its last row
        before this step; the tokens of the steps in between are estimated from one step's
        (`estimate_skipped_tokens`), and meta.json says so."""
        base = (0, 0)
        if self.writer is not None:
            self.writer.truncate_after(step - 1)
            last = self.writer.last_row()
            tokens = last.get("tokens_seen") if last else None
            if isinstance(tokens, (int, float)) and np.isfinite(tokens):  # else: from step 0
                base = (int(last["step"]), int(tokens))
            log.warning("%s: resumed at step %d without the tracker's state; the record "
                        "continues from step %d, tokens_seen over steps %d..%d is estimated "
                        "from one step's batch", self.writer.dir, step, base[0], base[0], step)
        self._estimate_from = self.dist.broadcast(base)
        self.last_step = step

    def _checkpoint_row_lost(self, step: int) -> bool:
        """Resumed from a checkpoint whose own step the tracker recorded (its state says
        so), yet the record has no row for it (rank zero knows)."""
        return (self.writer is not None and self.last_step == step > 0
                and self.last_step not in self.writer.steps() and self._estimate_from is None)

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
        kept = {k: before[k] for k in ("tokens_seen_estimated",) if k in before}
        return {**kept, **meta, "resumed": history}

    def _meta(self, lm: torch.nn.Module) -> dict[str, Any]:
        import transformers

        config = getattr(lm, "config", None)
        versions = {"normx_track": __version__, "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "python": platform.python_version()}
        try:
            import lightning
            versions["lightning"] = lightning.__version__
        except ImportError:
            pass
        return {
            "config": {},  # callers pass their run config (and more) through `meta`
            **self.meta,
            "front_end": self.front_end,
            "model": {"class": type(lm).__name__,
                      "arch": config.to_dict() if hasattr(config, "to_dict") else None},
            "vocab_size": self.gold.vocab_size,
            "embedding_rows": embedding_rows(lm),
            "vocab_hash": vocab_hash(self.vocab),
            "gold": sorted(self.signals),
            "gold_settings": {"window": self.gold.window, "n_tokens": self.gold.n_tokens,
                              "seed": self.gold.seed},
            "tracker": {"every_n_steps": self.every_n_steps, "log_spaced": self.log_spaced,
                        "min_count": self.min_count},
            "versions": versions,
        }

    def _losses_from(self, row: Mapping[str, Any] | None) -> None:
        """A resumed run's losses: the record's last row may hold newer ones than the
        checkpoint (a validation that ran after the checkpoint was saved, at its step)."""
        for key in keys.LOSS_KEYS:
            at = (row or {}).get(keys.loss_step_key(key))
            if at is not None and row.get(key) is not None and at > self._losses.get(key, (0, -1))[1]:
                self._losses[key] = (float(row[key]), int(at))

    # -- after a snapshot ----------------------------------------------------------------------
    def _losses_over_ranks(self) -> dict[str, Any]:
        """The row's loss columns. A tensor is one rank's loss (Lightning's, a plain loop's):
        averaged over the ranks, it is the global batch's, as one process would have it;
        floats (the HF Trainer's logs) are global already."""
        columns: dict[str, Any] = {}
        for key in sorted(self._losses):
            value, at = self._losses[key]
            if isinstance(value, torch.Tensor):
                value = self.dist.mean(value.float())
                self._losses[key] = (value, at)
            columns[key] = float(value)
            columns[keys.loss_step_key(key)] = int(at)
        return columns

    def _check_finite(self, step: int, arrays: dict[str, np.ndarray]) -> None:
        """Every rank counts (the norms are computed on all), and the stop decision is
        reduced across ranks, so all stop together rather than rank zero alone (a hang)."""
        bad = int(sum((~np.isfinite(a)).sum() for a in arrays.values()))
        if bad and self.dist.is_main:
            log.warning("step %d: %d embedding norms are NaN or inf", step, bad)
        if self.stop_on_nonfinite and self.dist.any(bool(bad)):
            if self.dist.is_main:
                log.warning("stopping the run (stop_on_nonfinite=True)")
            self.should_stop = True

    def _log(self, step: int, row: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        # The losses are the training loop's own curves: the sinks have them already.
        own = {"step", *keys.LOSS_KEYS, *map(keys.loss_step_key, keys.LOSS_KEYS)}
        scalars = {k: v for k, v in row.items() if k not in own}
        for sink in self.loggers:
            try:  # the record is already on disk: a failing sink must not stop training
                sink.log(scalars, step)
                if callable(getattr(sink, "log_snapshot", None)):
                    sink.log_snapshot(step, arrays, self)
            except Exception as err:  # noqa: BLE001
                if id(sink) not in self._failed_sinks:
                    self._failed_sinks.add(id(sink))
                    log.warning("normx tracker: %s failed (%s: %s); the record under %s goes on",
                                type(sink).__name__, type(err).__name__, err, self.writer.dir)
