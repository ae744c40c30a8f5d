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
the initialisation. Rank zero writes; every rank calls it (the snapshot's collectives need
them all; a rank that does not is named, not waited for forever).

Misuse is refused in one line saying what to do (`TrackerUsageError`, `InputError`): a
closed or displaced tracker, `load_state_dict` after the first `step()`, a step that goes
back, a malformed state; a call pattern that loses rows is warned about once (step() not
called at every step, a step repeated with other tokens, no step 0 on a fresh record).
"""
from __future__ import annotations

import itertools
import logging
import platform
import warnings
import weakref
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch

from normx_track import keys
from normx_track.version import __version__
from normx_track.errors import InputError
from normx_track.gold.statistics import GoldStatistics
from normx_track.probes.protocol import Probe, run_probes
from normx_track.record.store import RecordWriter, vocab_hash
from normx_track.tracker.distributed import Distributed, TorchDistributed
from normx_track.tracker.inputs import checked_state, state_identity, vocab_by_id
from normx_track.tracker.schedule import schedule_points_between, snapshot_schedule
from normx_track.tracker.run_record import RunRecord, check_out_dir
from normx_track.tracker.snapshot import (NormMetrics, find_language_model, full_params,
                                          is_sharded, norm_arrays)
from normx_track.tracker.tokens import TokenCounter

log = logging.getLogger(__name__)
LOSS_TOKENS = "loss_tokens"  # a training step's output: the tokens its loss averages over
PAD_MULTIPLE = 128  # embedding rows are often padded up to a multiple of this (nanoGPT: 64)
_IDS = itertools.count()  # trackers in this process, in construction order (same on all ranks)


class TrackerUsageError(RuntimeError):
    """The tracker was used out of order (closed, displaced, state loaded too late, a step
    that goes back); the message says what to do instead."""


class _Owners:
    """The tracker writing each record folder in this process. The lock is re-entrant
    within a process (train.py holds it around its tracker), so a second tracker on the
    folder (a notebook cell run twice) would write beside the first: it displaces it."""

    _by_folder: dict[str, "weakref.ref[Tracker]"] = {}

    @classmethod
    def take(cls, tracker: "Tracker") -> None:
        key = str(Path(tracker.out_dir).resolve())
        earlier = cls._by_folder.get(key)
        earlier = earlier() if earlier is not None else None
        if earlier is not None and earlier is not tracker and earlier._closed is None:
            earlier._displace()
        cls._by_folder[key] = weakref.ref(tracker)


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
        vocab: token strings by id (for tables and ``vocab.json``): a list, a tokenizer, or a
            ``{token: id}`` dict.
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
        distributed: is-main / broadcast / any-rank-true (default: ``torch.distributed``,
            which names a rank that skips `step()` after 60 s: ``TorchDistributed(timeout_s)``).
        front_end: the name ``meta.json`` records ("plain", "lightning", "hf_trainer").

    State (``state_dict``: last recorded step, tokens seen) follows torch's ``Stateful``
    protocol, so Fabric, Accelerate and torchtitan checkpoints carry it: a resumed run
    continues its record with no gap and no duplicate.

    The contract every front end keeps (the Lightning and HF callbacks are nothing more):

    1. Build it once with the settings above; ``out_dir`` may wait for step 2.
    2. Before training, `bind` what only the framework knows (``out_dir``, ``distributed``,
       ``loggers``, ``meta``; ``counts_tokens=True`` if it will call `count_tokens` for
       every batch). Resuming, `load_state_dict` the state saved with the checkpoint.
    3. On every rank, call `step(model, step, ...)` once at the step training starts at and
       after every optimizer step; `record_loss` for losses measured elsewhere (validation).
    4. `snapshot(model, step)` forces a row (a checkpoint save, the end of training); save
       `state_dict()` after it, so the checkpoint says the row is recorded.
    5. `close()` at the end (or use it as a context manager).
    """

    def __init__(self, gold: GoldStatistics | str | Path, vocab: Any = None, *,
                 out_dir: str | Path | None = None, every_n_steps: int = 100,
                 log_spaced: bool = True,
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
        self.vocab = vocab_by_id(vocab, self.gold.vocab_size)
        self.signals = {**{n: getattr(self.gold, n) for n in self.gold.names()}, **(signals or {})}
        self._check_lengths()
        self.out_dir = None
        self._set_out_dir(out_dir)
        self.every_n_steps, self.log_spaced = every_n_steps, log_spaced
        self.min_count, self.top_k_tokens = min_count, top_k_tokens
        self.probes, self.stop_on_nonfinite = list(probes), stop_on_nonfinite
        self.meta, self.loggers = dict(meta or {}), list(loggers)
        self.dist = distributed or TorchDistributed()
        self.front_end = front_end
        self.last_step = -1  # nothing after it is recorded (state kept in checkpoints)
        self.tokens = TokenCounter(None)  # unknown until given or counted: null in rows
        self.should_stop = False  # non-finite norms with stop_on_nonfinite
        self._record: RunRecord | None = None  # rank zero's, from the first step on
        self._opened = False
        self._counts_tokens = False  # a front end counts every batch (count_tokens)
        self._identity: dict[str, str] = {}  # the run id (and vocab hash) of the record
        self._metrics: NormMetrics | None = None
        self._losses: dict[str, tuple[Any, int]] = {}  # key -> (value, step), read lazily
        self._estimate_from: tuple[int, int, int] | None = None  # mid-run attach, see there
        self._failed_sinks: set[int] = set()
        self._closed: str | None = None  # why this tracker records nothing more
        self._last_call: tuple[int, int | None] | None = None  # (step, tokens_seen) given
        self._warned: set[str] = set()
        self._id, self._roll_calls = next(_IDS), itertools.count()

    def _check_lengths(self) -> None:
        size = self.gold.vocab_size
        if self.vocab is not None and len(self.vocab) != size:
            raise ValueError(f"gold statistics cover {size} token types but vocab lists "
                             f"{len(self.vocab)}; they must come from the same tokenizer")
        for name, values in self.signals.items():
            if np.shape(values) != (size,):
                raise ValueError(f"gold signal {name!r} has shape {np.shape(values)}, "
                                 f"expected ({size},) to match the vocabulary")

    def _set_out_dir(self, out_dir: str | Path | None) -> None:
        if out_dir is not None:
            self.out_dir = Path(out_dir)
            check_out_dir(self.out_dir)  # refused now, not at the first step

    # -- the public API ----------------------------------------------------------------------
    def bind(self, out_dir: str | Path | None = None, distributed: Distributed | None = None,
             loggers: Sequence[Sink] | None = None, meta: Mapping[str, Any] | None = None,
             counts_tokens: bool = False) -> "Tracker":
        """For front ends: what only the framework knows, once per training run, before the
        first `step()`. ``out_dir`` where the constructor had none; ``meta`` entries are
        added; ``counts_tokens``: the front end calls `count_tokens` for every batch, so a
        fresh run counts from 0. A tracker closed by an earlier run (a second ``fit()`` with
        the same callback) starts again as a fresh one, with the same settings."""
        if self._closed is not None:
            self.__dict__.update(_fresh_lifecycle())
        if self._opened:
            raise TrackerUsageError("bind() after the first step(): bind before training starts")
        if self.out_dir is None:
            self._set_out_dir(out_dir)
        if distributed is not None:
            self.dist = distributed
        if loggers is not None:
            self.loggers = list(loggers)
        self.meta.update(meta or {})
        self._counts_tokens = counts_tokens
        return self

    @property
    def writer(self) -> RecordWriter | None:
        """The record's writer (rank zero, once the first step opened the record)."""
        return self._record.writer if self._record is not None else None

    @property
    def tokens_seen(self) -> int | None:
        """Training tokens so far, over all ranks (read from the device only when asked);
        None while nobody gave or counted them."""
        return self.tokens.total

    @tokens_seen.setter
    def tokens_seen(self, value: int | None) -> None:
        self.tokens.total = value

    def due(self, step: int) -> bool:
        """Whether the schedule asks for a snapshot at `step` not yet recorded."""
        return step > self.last_step and snapshot_schedule(step, self.every_n_steps,
                                                           self.log_spaced)

    def step(self, model: torch.nn.Module, step: int, tokens_seen: int | None = None,
             losses: Mapping[str, Any] | None = None, root: torch.nn.Module | None = None
             ) -> dict[str, Any] | None:
        """Call on every rank once before training (step 0) and after each optimizer step,
        with the number of optimizer steps done (not micro-batches). Snapshots when due;
        returns the row (on rank zero), else None. `tokens_seen`: the training tokens so far
        over all ranks, the same number on every rank (under DDP: this rank's count times the
        world size, or all-reduced); not given, the rows say null. `losses`: e.g.
        ``{"train/loss": loss}``, this rank's (tensors are averaged over the ranks and read
        only when a row is written). `root`: the module to gather under FSDP when `model`
        is not it (a LightningModule's wrapped root)."""
        self._check_usable()
        self._check_call(step, tokens_seen)
        for key, value in (losses or {}).items():
            self.record_loss(key, value, step)
        if tokens_seen is not None:
            self.tokens_seen = tokens_seen
        if not self._opened:
            row = self.open(model, step, root)
            if row is not None or not self.due(step):
                return row
        return self.snapshot(model, step, root=root) if self.due(step) else None

    def count_tokens(self, tokens: int | torch.Tensor, tokens_per_step: int | None = None
                     ) -> None:
        """For front ends that count batches: add a batch's training tokens over all ranks
        (a device tensor is read only at a snapshot). Attached mid-run without state, the
        first batch also estimates the untracked stretch from `tokens_per_step` (one
        optimizer step's tokens; default `tokens`), and meta.json says so."""
        if self._estimate_from is not None:
            self.estimate_skipped_tokens(int(tokens_per_step if tokens_per_step is not None
                                             else tokens))
        self.tokens.add(tokens)

    def record_loss(self, key: str, value: Any, step: int, tokens: Any = None) -> None:
        """Keep the latest `key` (``train/loss``, ``val/loss``) to write beside the next row,
        with the step it was measured at. Measured at the last row's own step (validation
        runs after the step's snapshot), it is added to that row: the steps coincide.
        `tokens`: what the loss averages over (a masked LM's masked tokens, a tensor); a loss
        over none is left out, the earlier one kept (decided on the device: no read)."""
        if self._closed is not None:  # an evaluation after training: nothing to write to
            return
        if tokens is not None and isinstance(value, torch.Tensor):
            self._losses[key] = self._unless_empty(key, value.detach(), step, tokens)
            return
        self._losses[key] = (value.detach() if isinstance(value, torch.Tensor) else value, step)
        if self._record is None or step != self.last_step:  # the usual case, every step: no I/O
            return
        last = self._record.last_row()
        if last is not None and last.get(keys.loss_step_key(key)) != step:
            self._record.add_to_last(step, {key: float(value), keys.loss_step_key(key): int(step)})

    def open(self, model: torch.nn.Module, step: int = 0,
             root: torch.nn.Module | None = None) -> dict[str, Any] | None:
        """Start (or continue) the record at `step`; the front ends call it when training
        starts, `step()` on its first call. A fresh run (step 0, no state loaded) sets an
        earlier run's record aside and records the initialisation; a resumed one drops the
        rows past its checkpoint and records its own step if the schedule has it (or its
        row is lost). Returns the row it recorded, if any."""
        self._check_usable()
        if self._opened:
            return None
        if 0 <= step < self.last_step:
            raise TrackerUsageError(
                f"the tracker's state says step {self.last_step} is recorded, but training "
                f"starts at step {step}: load the state saved with this checkpoint")
        if self.out_dir is None:
            raise TrackerUsageError("the tracker has no run folder: pass out_dir= to Tracker(), "
                                    "or bind(out_dir=...) before the first step()")
        self._opened = True
        lm = unwrap_model(model)
        self.check_model(lm)
        _Owners.take(self)
        self._roll_call(step, "open")
        fresh = step == 0 and self.last_step < 0
        if fresh and self._counts_tokens:
            self.tokens.start()  # every batch is counted from here
        if self.dist.is_main:
            self._metrics = NormMetrics(self.signals, self.gold.counts, self.min_count)
            self._record = RunRecord(self.out_dir)
            self._identity["run_id"] = self._record.open(
                self._meta(lm), self.vocab, self.gold, fresh, step, owner=self,
                run_id=self._identity.get("run_id"))
        if fresh:
            return self.snapshot(model, 0, root=root)
        # Rank zero knows the record: it decides what the last recorded step is and whether
        # this step needs a row; every rank follows (due() must agree on all of them).
        without_state = self.last_step < 0
        self.last_step, record_now = self.dist.broadcast(self._continue_record(step))
        if without_state:
            self._attach_mid_run(step)
        if record_now:
            return self.snapshot(model, step, root=root)
        return None

    def _continue_record(self, step: int) -> tuple[int, bool]:
        """(Rank zero.) Resumed at `step` > 0: keep the rows up to the checkpoint's state, or
        up to `step` when its row is there (the end of training, or a checkpoint hook, wrote
        it after the state was saved: the weights are the same); drop the rest. Returns the
        last recorded step and whether `step` is to be recorded now."""
        if self._record is None:
            return max(self.last_step, step - 1), False
        steps = self._record.steps()
        self._record.continue_at(step, self.last_step)
        self._losses_from(self._record.last_row())
        if step in steps:
            return step, False
        if self.last_step == step:  # the state says recorded, the record lost it: measure again
            log.warning("%s: no row for step %d, the checkpoint's (a damaged line?); "
                        "recording it again", self.writer.metrics_path, step)
            return step - 1, True
        return step - 1, snapshot_schedule(step, self.every_n_steps, self.log_spaced)

    def snapshot(self, model: torch.nn.Module, step: int, tokens_seen: int | None = None,
                 root: torch.nn.Module | None = None) -> dict[str, Any] | None:
        """Measure and record now, whatever the schedule says. `root`: the module to gather
        under FSDP when `model` is not it. Returns the row on rank zero, else None."""
        self._check_usable()
        if not self._opened:
            return self.open(model, step, root) if step == 0 else self._open_then(model, step, root)
        if step <= self.last_step:
            raise TrackerUsageError(f"snapshot at step {step}: step {self.last_step} is "
                                    "recorded already; rows go forward only")
        if tokens_seen is not None:
            self.tokens_seen = tokens_seen
        root = root if root is not None else model
        lm = unwrap_model(model)
        sharded = is_sharded(root)
        self._roll_call(step, "snapshot")
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
            self._record.append(step, row, arrays)
            self._log(step, row, arrays)
        self._check_finite(step, arrays)
        return row

    def _open_then(self, model, step, root):
        row = self.open(model, step, root)
        return row if row is not None or self.last_step >= step else \
            self.snapshot(model, step, root=root)

    def close(self) -> None:
        """Release the record's lock (the record itself is always complete on disk). The
        tracker is then inert: `step()` and `snapshot()` refuse; `state_dict()` still works."""
        self._release()
        if self._closed is None:
            self._closed = ("this Tracker was closed (close(), or the end of its with block); "
                            "to continue its record, create a new Tracker and load_state_dict("
                            "the old one's state_dict())")

    def _displace(self) -> None:
        self._release()
        self._closed = (f"this Tracker was displaced: a newer Tracker opened {self.out_dir} in "
                        "this process, and that one writes the record now; use it")
        warnings.warn(f"{self.out_dir}: a second Tracker opened this run folder while the first "
                      "was open; the first is closed and records nothing more", stacklevel=4)

    def _release(self) -> None:
        if self._record is not None:
            self._record.release()

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def state_dict(self) -> dict[str, Any]:
        # The losses travel too: a resumed run's next rows carry the same last val/loss.
        losses = {k: [float(v), int(at)] for k, (v, at) in self._losses.items() if int(at) >= 0}
        # Which run and tokenizer: a resume into another run's record is refused.
        identity = {"run_id": self._identity.get("run_id"), "vocab_hash": vocab_hash(self.vocab)}
        return {"last_step": self.last_step, "tokens_seen": self.tokens_seen, "losses": losses,
                **{k: v for k, v in identity.items() if v is not None}}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Before the first `step()` (the record is opened by it, as the state says)."""
        self._check_usable()
        if self._opened or self._last_call is not None:
            raise TrackerUsageError(
                "load_state_dict() after the first step(): the record was already opened as a "
                "fresh run; call load_state_dict() before the first step() of a resumed run")
        self.last_step, self.tokens_seen, self._losses = checked_state(state_dict)
        self._identity = state_identity(state_dict)
        theirs, ours = self._identity.get("vocab_hash"), vocab_hash(self.vocab)
        if None not in (theirs, ours) and theirs != ours:
            raise InputError(f"tracker state: saved by a run with another tokenizer (vocab hash "
                             f"{theirs[:12]}, this tracker's {ours[:12]}); resume with the run's "
                             "own tokenizer, or start a fresh run")

    def estimate_skipped_tokens(self, tokens_per_step: int) -> None:
        """After a mid-run attach (no tracker state at a step > 0): tokens over the steps
        the record did not see, from one step's tokens; meta.json says so."""
        if self._estimate_from is None:
            return
        base_step, base_tokens, at = self._estimate_from
        self.tokens_seen = base_tokens + (at - base_step) * int(tokens_per_step)
        self._estimate_from = None
        if self._record is not None and self._closed is None:
            self._record.note_token_estimate({"from_step": base_step, "to_step": at,
                                              "tokens_per_step": int(tokens_per_step)},
                                             self.tokens_seen)

    @property
    def awaiting_token_estimate(self) -> bool:
        return self._estimate_from is not None

    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse a model the gold cannot describe (fewer embedding rows than token types),
        warn about one far larger; `step()` checks at its first call, front ends may call it
        before training starts."""
        lm = unwrap_model(model)
        rows, size = embedding_rows(lm), self.gold.vocab_size
        if rows < size:
            raise ValueError(f"the model's embedding has {rows} rows but the gold statistics "
                             f"cover {size} token types: wrong tokenizer?")
        padded = -(-size // PAD_MULTIPLE) * PAD_MULTIPLE
        if rows > padded:
            self._warn_once("rows", f"the model's embedding has {rows} rows but the gold "
                            f"statistics cover {size} token types (more than padding to a "
                            f"multiple of {PAD_MULTIPLE} adds): the gold likely comes from "
                            "another tokenizer; the rows past it are not correlated")

    # -- misuse -----------------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._closed is not None:
            raise TrackerUsageError(self._closed)

    def _check_call(self, step: int, tokens_seen: int | None) -> None:
        """A step that goes back is refused; one repeated with other tokens (a call per
        micro-batch?) and schedule points passed without a call are warned about once."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise TypeError(f"step must be the number of optimizer steps done (an int >= 0), "
                            f"got {step!r}")
        previous = self._last_call
        if previous is not None and step < previous[0]:
            raise TrackerUsageError(
                f"step({step}) after step({previous[0]}): steps count the optimizer steps done "
                "and never go back; a run resumed from an earlier checkpoint needs a new "
                "Tracker (load_state_dict() of that checkpoint's state)")
        self._last_call = (step, tokens_seen)
        if previous is None:
            return
        before, before_tokens = previous
        if step == before and None not in (tokens_seen, before_tokens) \
                and tokens_seen != before_tokens:
            self._warn_once("repeat", f"step {step} was given twice, with tokens_seen "
                            f"{before_tokens} and then {tokens_seen}: call step() once per "
                            "optimizer step with the number of optimizer steps done (not once "
                            "per micro-batch)")
        skipped = schedule_points_between(max(before, self.last_step), step,
                                          self.every_n_steps, self.log_spaced)
        if skipped:
            self._warn_once("gap", f"step() was called at step {before} and then at step {step}:"
                            f" the schedule's step(s) {', '.join(map(str, skipped))} were "
                            "passed without a call and are not recorded. Call step() after "
                            "every optimizer step (tracker.due(step) says when a row is due), "
                            "with optimizer steps, not micro-batches")

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned and self.dist.is_main:
            self._warned.add(kind)
            warnings.warn(f"normx tracker: {message}", stacklevel=4)

    def _roll_call(self, step: int, call: str) -> None:
        """Every rank is here (`distributed.roll_call`), before this call's collectives."""
        roll_call = getattr(self.dist, "roll_call", None)
        if roll_call is not None:
            roll_call(f"{self._id}.{next(self._roll_calls)}", f"tracker.{call} at step {step}")

    def _attach_mid_run(self, step: int) -> None:
        """Started at a step > 0 without the tracker's state (trained with the tracker off,
        load_state_dict() forgotten, or attached now): the record in the folder, if any,
        continues from its last row before this step; a fresh record has no step 0, said
        once. Unless the loop gives tokens_seen, the tokens of the steps in between are
        estimated from one step's (`estimate_skipped_tokens`), and meta.json says so."""
        base = (0, 0)
        if self._record is not None:
            last = self._record.last_row()
            tokens = last.get("tokens_seen") if last else None
            if isinstance(tokens, (int, float)) and np.isfinite(tokens):  # else: from step 0
                base = (int(last["step"]), int(tokens))
            if last is None:
                self._warn_once("step0", f"{self.out_dir}: the first step() call is at step "
                                f"{step}, so the record has no step 0 (the initialisation); "
                                "call tracker.step(model, 0) before the first optimizer step")
            else:
                log.warning("%s: resumed at step %d without the tracker's state (was "
                            "load_state_dict() called?); the record continues from step %d; "
                            "unless given, tokens_seen over steps %d..%d is estimated from one "
                            "step's batch", self._record.dir, step, base[0], base[0], step)
        base = self.dist.broadcast(base)
        if self.tokens_seen is None:  # the loop did not give it: a front end estimates it
            self._estimate_from = (*base, step)

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

    def _unless_empty(self, key: str, value: torch.Tensor, step: int, tokens: Any
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        before, at = self._losses.get(key, (float("nan"), -1))  # -1: no loss yet, no column
        empty = torch.as_tensor(tokens, device=value.device) == 0
        kept = torch.where(empty, torch.as_tensor(before, dtype=value.dtype, device=value.device),
                           value)
        return kept, torch.where(empty, torch.as_tensor(at, device=value.device),
                                 torch.tensor(step, device=value.device))

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
                self._losses[key] = (value, int(at))
            if int(at) < 0:  # only losses over no token so far: none to show
                continue
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
                                type(sink).__name__, type(err).__name__, err, self._record.dir)


def _fresh_lifecycle() -> dict[str, Any]:
    """The attributes a just-built Tracker has for its state and record (not its settings)."""
    return {"last_step": -1, "tokens": TokenCounter(None), "should_stop": False, "_record": None,
            "_opened": False, "_counts_tokens": False, "_identity": {}, "_metrics": None,
            "_losses": {},
            "_estimate_from": None, "_closed": None, "_last_call": None, "_warned": set(),
            "_id": next(_IDS), "_roll_calls": itertools.count()}
