"""The framework-free `Tracker` on its own: the schedule through `step()`, forced snapshots,
`state_dict` round trips, the wrappers it looks through, plain sinks, and the lock."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from normx_track import Tracker, compute_gold
from normx_track.record.store import read_metrics

V = 64


@pytest.fixture()
def model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2, n_positions=16))


@pytest.fixture()
def gold():
    rng = np.random.default_rng(0)
    return compute_gold([rng.integers(0, V, 200) for _ in range(5)], vocab_size=V, window=2)


class ListSink:
    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def log(self, metrics, step):
        self.rows.append((step, metrics))


class BrokenSink:
    def log(self, metrics, step):
        raise ConnectionError("the dashboard is down")


def test_step_snapshots_on_the_schedule_and_returns_the_row(tmp_path, model, gold):
    sink = ListSink()
    with Tracker(gold, out_dir=tmp_path, every_n_steps=4, min_count=1,
                 loggers=[BrokenSink(), sink]) as tracker:
        returned = {s: tracker.step(model, s, tokens_seen=10 * s,
                                    losses={"train/loss": torch.tensor(1.0 / (s + 1))})
                    for s in range(10)}
    assert [s for s, row in returned.items() if row is not None] == [0, 1, 2, 4, 8]
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 4, 8]
    assert [r["tokens_seen"] for r in rows] == [0, 10, 20, 40, 80]
    assert rows[-1]["train/loss"] == pytest.approx(1 / 9) and rows[-1]["train/loss_step"] == 8
    assert [s for s, _ in sink.rows] == [0, 1, 2, 4, 8]  # the broken sink stopped nothing
    assert sink.rows[0][1]["normx/norm/mean"] == rows[0]["normx/norm/mean"]
    assert not (tmp_path / "normx.lock").exists()  # released on leaving the with block


def test_a_forced_snapshot_and_the_state_round_trip(tmp_path, model, gold):
    tracker = Tracker(gold, out_dir=tmp_path, every_n_steps=100)
    tracker.step(model, 0)
    row = tracker.snapshot(model, 7, tokens_seen=700)
    assert row["step"] == 7 and row["tokens_seen"] == 700
    state = tracker.state_dict()
    tracker.close()
    again = Tracker(gold, out_dir=tmp_path, every_n_steps=100)
    again.load_state_dict(state)
    assert again.state_dict() == state
    assert again.step(model, 7) is None  # resumed at 7: recorded already, nothing dropped
    assert again.step(model, 8)["tokens_seen"] == 700  # log-spaced: due
    again.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 7, 8]


def test_wrappers_are_looked_through_and_other_modules_refused(tmp_path, model, gold):
    class Wrapper(torch.nn.Module):  # DDP's and FSDP's shape: the model as .module
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    compiled = torch.compile(model)  # lazy: nothing compiles until it is called
    with Tracker(gold, out_dir=tmp_path / "a", every_n_steps=100) as tracker:
        a = tracker.step(Wrapper(compiled), 0)
    with Tracker(gold, out_dir=tmp_path / "b", every_n_steps=100) as tracker:
        b = tracker.step(model, 0)
    assert a == b
    with pytest.raises(TypeError, match="get_input_embeddings"):
        Tracker(gold, out_dir=tmp_path / "c").step(torch.nn.Linear(2, 2), 0)


def test_nonfinite_norms_set_should_stop_when_asked(tmp_path, model, gold):
    with torch.no_grad():
        model.get_input_embeddings().weight[3] = float("nan")
    with Tracker(gold, out_dir=tmp_path, stop_on_nonfinite=True) as tracker:
        row = tracker.step(model, 0)
    assert row["normx/norm/n_nonfinite"] == 1 and tracker.should_stop
