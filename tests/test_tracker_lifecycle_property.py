"""A stateful property test of the tracker's lifecycle (issue 30 §7): random sequences of
steps (forward, repeated, backwards, gaps), checkpoints, close, resumes into a new tracker
(with the state, or with it forgotten), a second tracker on the folder and a kill (the object
dropped unclosed), checked after every call against a plain model of the record: its rows
are in strictly increasing step order, none is lost that the schedule and the calls made
due, none comes from a closed or displaced tracker, and every misuse is a clear error.

A few hundred sequences by default; NORMX_LIFECYCLE_EXAMPLES=5000 runs more."""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from transformers import GPT2Config, GPT2LMHeadModel

from normx_track import Tracker, compute_gold
from normx_track.record.store import read_metrics
from normx_track.tracker.core import TrackerUsageError, snapshot_schedule
from normx_track.tracker.run_record import RunMismatchError

V, EVERY = 32, 4
torch.manual_seed(0)
MODEL = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=4, n_layer=1, n_head=1, n_positions=4))
GOLD = compute_gold([np.random.default_rng(0).integers(0, V, 100)], vocab_size=V, window=2,
                    shuffle_correction=False)


def on_schedule(step: int) -> bool:
    return snapshot_schedule(step, EVERY, log_spaced=True)


class TrackerLifecycle(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        # Durability on power loss is tests/test_tracker.py's; here fsync only costs time.
        self._fsync, os.fsync = os.fsync, lambda fd: None
        self.folder = Path(tempfile.mkdtemp(prefix="normx_lifecycle_"))
        self.live: Tracker | None = None
        self.last_call = -1       # the live tracker's last step() call
        self.expected: list[int] = []   # the record's rows, as the model has them
        self.checkpoints: list[tuple[int, dict, list[int]]] = []  # (step, state, rows then)
        self.foreign: list[tuple[int, dict, list[int]]] = []  # of runs set aside since
        self.stale: list[Tracker] = []  # closed or displaced: must refuse, write nothing

    def teardown(self):
        if self.live is not None:
            self.live.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        os.fsync = self._fsync

    def new_tracker(self) -> Tracker:
        return Tracker(GOLD, out_dir=self.folder, every_n_steps=EVERY, min_count=1)

    def call(self, tracker: Tracker, step: int, state: dict | None = None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the warnings have their own tests
            if state is not None:
                tracker.load_state_dict(state)
            return tracker.step(MODEL, step, tokens_seen=10 * step)

    def retire_live(self) -> None:
        """A new tracker takes the folder: the live one (if any) is displaced."""
        if self.live is not None:
            self.stale.append(self.live)
            self.live = None

    # -- rules ---------------------------------------------------------------------------------
    @rule()
    def start_fresh(self):  # a new run in the folder (or the notebook cell run again)
        self.retire_live()
        self.live, self.last_call = self.new_tracker(), 0
        self.call(self.live, 0)
        self.expected, self.foreign, self.checkpoints = [0], self.foreign + self.checkpoints, []

    @precondition(lambda self: self.live is not None)
    @rule(by=st.integers(1, 9))
    def step_forward(self, by):
        step = self.last_call + by
        self.call(self.live, step)
        if on_schedule(step):
            self.expected.append(step)
        self.last_call = step

    @precondition(lambda self: self.live is not None)
    @rule()
    def step_again(self):
        self.call(self.live, self.last_call)

    @precondition(lambda self: self.live is not None and self.last_call > 0)
    @rule(by=st.integers(1, 5))
    def step_back(self, by):
        with pytest.raises(TrackerUsageError, match="never go back"):
            self.call(self.live, max(0, self.last_call - by))

    @precondition(lambda self: self.live is not None)
    @rule()
    def load_state_late(self):
        with pytest.raises(TrackerUsageError, match="after the first step"):
            self.live.load_state_dict(self.live.state_dict())

    @precondition(lambda self: self.live is not None)
    @rule()
    def checkpoint(self):
        self.checkpoints.append((self.last_call, self.live.state_dict(), list(self.expected)))

    @precondition(lambda self: self.live is not None)
    @rule()
    def close(self):
        self.live.close()
        self.retire_live()

    @precondition(lambda self: self.live is not None)
    @rule()
    def kill(self):  # dropped without close: nothing of it may linger (the lock included)
        self.live = None  # (freed now: the tracker holds no reference cycle)

    @precondition(lambda self: self.checkpoints)
    @rule(pick=st.integers(0, 1000))
    def resume(self, pick):
        step, state, rows = self.checkpoints[pick % len(self.checkpoints)]
        self.retire_live()
        self.live, self.last_call = self.new_tracker(), step
        self.call(self.live, step, state)
        self.expected = list(rows)  # the record as it was at the checkpoint
        self.checkpoints = [c for c in self.checkpoints if c[0] <= step]

    @precondition(lambda self: self.checkpoints)
    @rule(pick=st.integers(0, 1000))
    def resume_forgetting_the_state(self, pick):
        step, _, _ = self.checkpoints[pick % len(self.checkpoints)]
        self.retire_live()
        self.live, self.last_call = self.new_tracker(), step
        self.call(self.live, step)
        self.expected = [s for s in self.expected if s <= step]
        if on_schedule(step) and step not in self.expected:
            self.expected.append(step)
        if step == 0:  # no state at step 0: a fresh run, the record before it set aside
            self.expected, self.foreign = [0], self.foreign + self.checkpoints
        self.checkpoints = [c for c in self.checkpoints if c[0] <= step and step > 0]

    @precondition(lambda self: self.foreign)
    @rule(pick=st.integers(0, 1000))
    def resume_another_runs_checkpoint(self, pick):
        """A checkpoint of a run set aside since, resumed into the folder's newer record:
        refused, naming both runs, and the record is left as it was."""
        step, state, _ = self.foreign[pick % len(self.foreign)]
        self.retire_live()
        with pytest.raises(RunMismatchError, match="the record is of run .* checkpoint "
                                                    "resumed from is of run"):
            self.call(self.new_tracker(), step, state)

    @precondition(lambda self: self.stale)
    @rule(pick=st.integers(0, 1000), by=st.integers(0, 9))
    def stale_tracker_steps(self, pick, by):
        old = self.stale[pick % len(self.stale)]
        with pytest.raises(TrackerUsageError, match="closed|displaced"):
            self.call(old, max(old.last_step, 0) + by)

    # -- what must always hold ---------------------------------------------------------------
    @invariant()
    def the_record_is_the_models(self):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a skipped (out-of-order, damaged) line fails
            steps = [r["step"] for r in read_metrics(self.folder)]
        assert steps == sorted(set(steps)), steps  # strictly increasing
        assert steps == self.expected

    @invariant()
    def no_lock_without_a_live_tracker(self):
        if self.live is None:
            assert not (self.folder / "normx.lock").exists()


TrackerLifecycle.TestCase.settings = settings(
    max_examples=int(os.environ.get("NORMX_LIFECYCLE_EXAMPLES", 200)), stateful_step_count=12,
    deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
test_tracker_lifecycle = TrackerLifecycle.TestCase
