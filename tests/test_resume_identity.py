"""A checkpoint is tied to its run's record (issue 31): the tracker's state carries the
record's run id and the tokenizer's vocab hash, and resuming one run's checkpoint into
another run's record is refused, by train.py before anything starts and by the tracker
for every front end."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from normx_track.record.checkpoint_loader import CheckpointError, tracker_state
from normx_track.record.store import read_metrics


def test_train_refuses_another_runs_checkpoint_naming_both(tiny_run: Path, cache_dir, tmp_path):
    from normx_track.training.run import run

    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    ours = json.loads((tiny_run / "normx" / "meta.json").read_text())["run_id"]
    assert tracker_state(torch.load(ckpt, weights_only=True))["run_id"] == ours
    other = tmp_path / "other"  # another run's folder: its own record, its own run id
    shutil.copytree(tiny_run / "normx", other / "normx")
    meta_path = other / "normx" / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "run_id": "b0b0"}))
    before = read_metrics(other)
    cfg = tiny_config(other, cache_dir, f"ckpt_path={ckpt}", "logger=none")
    with pytest.raises(CheckpointError, match=rf"a checkpoint of run {ours}, but .*other/normx/"
                                              r"meta.json is the record of run b0b0"):
        run(cfg)
    assert read_metrics(other) == before and not (other / "checkpoints").exists()


def test_a_tracker_refuses_a_state_of_another_tokenizer(tiny_run: Path):
    from normx_track import Tracker
    from normx_track.errors import InputError

    state = tracker_state(torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True))
    vocab = json.loads((tiny_run / "normx" / "vocab.json").read_text())
    vocab[10], vocab[11] = vocab[11], vocab[10]  # the same size, other words at two ids
    tracker = Tracker(tiny_run / "normx" / "gold.npz", vocab, out_dir=tiny_run / "unused")
    with pytest.raises(InputError, match="saved by a run with another tokenizer"):
        tracker.load_state_dict(state)
