"""`RunRecord`: one run folder's record as a tracker keeps it (DESIGN.md "The durable record").

It owns what happens to the folder over a run's life: the lock taken before anything in it
is touched, the set-aside of another run's record when a fresh run starts there, the writer,
``meta.json`` (a fresh run's, or a resumed run's with its history and the settings it
changed), the gold an earlier stretch was measured against, and where a resumed run
continues (rows past its checkpoint dropped). The `Tracker` decides when to measure; this
class decides what the folder holds.
"""
from __future__ import annotations

import errno
import logging
import uuid
import weakref
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from normx_track.errors import InputError
from normx_track.gold.statistics import GoldStatistics
from normx_track.record.store import (RECORD_DIR, RecordLock, RecordWriter, RunFolderError,
                                      check_run_folder, read_json, set_aside)

log = logging.getLogger(__name__)


class RunMismatchError(InputError):
    """A checkpoint of one run resumed into another run's record."""


def check_out_dir(out_dir: Path) -> None:
    """Refuse a run folder the record cannot live in (a file, or a file at normx/), now."""
    check_run_folder(out_dir, {RECORD_DIR: "record"})


class RunRecord:
    """The record under ``<out_dir>/normx`` of one run (rank zero's)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.writer: RecordWriter | None = None
        self._lock: RecordLock | None = None

    @property
    def dir(self) -> Path:
        return self.writer.dir

    def open(self, meta: dict[str, Any], vocab: list[str] | None, gold: GoldStatistics,
             fresh: bool, step: int, owner: object, run_id: str | None = None) -> str:
        """Take the folder's lock (held until `release`, or until `owner` is collected) and
        write meta, vocab and gold. A fresh run sets an earlier run's record aside first and
        gets a new run id (``meta["run_id"]`` if given); a resumed one keeps the record's
        history, its run id and the gold its earlier rows used, and is refused when its
        state's `run_id` is another record's. Returns the record's run id."""
        check_out_dir(self.out_dir)
        try:
            return self._open(meta, vocab, gold, fresh, step, owner, run_id)
        except OSError as err:
            if not isinstance(err, PermissionError) and err.errno not in (errno.EROFS, errno.EACCES):
                raise
            self.release()
            raise RunFolderError(f"{err.filename or self.out_dir}: cannot write the record there "
                                 f"({err.strerror}); choose another out_dir") from None

    def _open(self, meta, vocab, gold, fresh, step, owner, run_id) -> str:
        self._lock = RecordLock.acquire(self.out_dir)  # before anything in the folder is touched
        weakref.finalize(owner, self._lock.release)  # a tracker dropped unclosed lets go too
        if not fresh:
            run_id = self._same_run(run_id)
        meta = {**meta, "run_id": run_id or meta.get("run_id") or uuid.uuid4().hex[:12]}
        if fresh:  # a fresh run never writes over an earlier run's record
            moved = set_aside(self.out_dir)
            if moved is not None:
                log.warning("%s already held a record from another run; moved it to %s",
                            self.out_dir, moved)
        self.writer = RecordWriter(self.out_dir)
        if not fresh:
            meta = self._resumed_meta(meta, step)
        self.writer.write_meta(meta)
        if vocab is not None:
            self.writer.write_vocab(vocab)
        if not fresh:
            self._keep_earlier_gold(gold, step)
        gold.save(self.writer.dir / "gold.npz")
        return meta["run_id"]

    def _same_run(self, run_id: str | None) -> str | None:
        """A resumed run's state and the record in the folder must be of one run: another
        run's checkpoint would continue this record with that run's weights."""
        path = self.out_dir / RECORD_DIR / "meta.json"
        recorded = (read_json(path.parent, "meta.json") or {}).get("run_id") \
            if path.exists() else None
        if run_id is not None and recorded is not None and run_id != recorded:
            self.release()
            raise RunMismatchError(f"{path}: the record is of run {recorded}, but the checkpoint "
                                   f"resumed from is of run {run_id}; resume that run in its own "
                                   "folder, or start a fresh run here")
        return run_id or recorded

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- rows ------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        return self.writer.steps()

    def last_row(self) -> dict[str, Any] | None:
        return self.writer.last_row()

    def append(self, step: int, row: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.writer.write_snapshot(step, dict(arrays))
        self.writer.append_metrics(row)

    def add_to_last(self, step: int, columns: dict[str, Any]) -> bool:
        """Add `columns` to the last row when it is `step`'s; whether it was."""
        last = self.writer.last_row()
        if last is None or last["step"] != step:
            return False
        self.writer.update_last(columns)
        return True

    def continue_at(self, step: int, state_step: int) -> int:
        """A run resumed at `step` > 0 with `state_step` recorded by its state (-1: none):
        keep the rows up to the state's step, or up to `step` when its row is there (the end
        of training, or a checkpoint hook, wrote it after the state was saved: the weights
        are the same); drop the rest. Returns the last step kept."""
        steps = self.writer.steps()
        keep = step if step in steps else (state_step if state_step >= 0 else step - 1)
        later = [s for s in steps if s > keep]
        if later:
            log.warning("%s: dropping %d rows recorded after step %d (steps %d..%d); the run "
                        "records them again from its checkpoint", self.writer.metrics_path,
                        len(later), keep, later[0], later[-1])
        self.writer.truncate_after(keep)
        return keep

    def note_token_estimate(self, estimate: dict[str, int], tokens_seen: int) -> None:
        """meta.json says tokens_seen over an untracked stretch is estimated; the row at the
        stretch's end (recorded before the estimate existed) gets it."""
        meta = read_json(self.writer.dir, "meta.json") or {}
        meta["tokens_seen_estimated"] = estimate
        self.writer.write_meta(meta)
        last = self.writer.last_row()
        if last is not None and last["step"] == estimate["to_step"] and \
                last.get("tokens_seen") is None:
            self.writer.update_last({"tokens_seen": tokens_seen})

    # -- a resumed run ----------------------------------------------------------------------
    def _keep_earlier_gold(self, gold: GoldStatistics, step: int) -> None:
        """A resumed run with other gold (other statistics settings) keeps the gold its
        earlier rows were measured against, as gold.until_step_XXXXXXXX.npz."""
        path = self.writer.dir / "gold.npz"
        if not path.exists():
            return
        try:
            same = GoldStatistics.load(path).same_as(gold)
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
