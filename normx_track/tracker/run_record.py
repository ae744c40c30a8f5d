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
import weakref
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from normx_track.gold.statistics import GoldStatistics
from normx_track.record.store import (RECORD_DIR, RecordLock, RecordWriter, RunFolderError,
                                      check_run_folder, read_json, set_aside)

log = logging.getLogger(__name__)


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
             fresh: bool, step: int, owner: object) -> None:
        """Take the folder's lock (held until `release`, or until `owner` is collected) and
        write meta, vocab and gold. A fresh run sets an earlier run's record aside first; a
        resumed one keeps the record's history and the gold its earlier rows used."""
        check_out_dir(self.out_dir)
        try:
            self._open(meta, vocab, gold, fresh, step, owner)
        except OSError as err:
            if not isinstance(err, PermissionError) and err.errno not in (errno.EROFS, errno.EACCES):
                raise
            self.release()
            raise RunFolderError(f"{err.filename or self.out_dir}: cannot write the record there "
                                 f"({err.strerror}); choose another out_dir") from None

    def _open(self, meta, vocab, gold, fresh, step, owner) -> None:
        self._lock = RecordLock.acquire(self.out_dir)  # before anything in the folder is touched
        weakref.finalize(owner, self._lock.release)  # a tracker dropped unclosed lets go too
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
