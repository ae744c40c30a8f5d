"""Replay: the tracker's measurements over saved checkpoints equal the live rows; damaged
checkpoints give a clear error naming the file."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.replay import main as replay
from normx_track.keys import LOSS_KEYS, REPLAY_SAME_EMBEDDINGS, loss_step_key
from normx_track.record.checkpoint_loader import CheckpointError, load_model
from normx_track.record.store import list_snapshots, load_snapshot, read_metrics


def test_replay_of_two_checkpoints_equals_the_live_rows(tiny_run: Path, tmp_path: Path):
    ckpts = [tiny_run / "checkpoints" / f"step_0000000{s}.ckpt" for s in (8, 4)]
    replay([*map(str, ckpts), "--like", str(tiny_run), "--out", str(tmp_path)])
    live = {r["step"]: r for r in read_metrics(tiny_run)}
    replayed = read_metrics(tmp_path)
    assert [r["step"] for r in replayed] == [4, 8]
    # The losses beside the live rows were observed in training: replay measures the rest.
    losses = {k for key in LOSS_KEYS for k in (key, loss_step_key(key))}
    for row in replayed:
        assert np.isnan(row.pop(REPLAY_SAME_EMBEDDINGS))  # replay's own column: no copy here
        assert row.keys() == live[row["step"]].keys() - losses
        for key, value in row.items():
            np.testing.assert_allclose(value, live[row["step"]][key], rtol=1e-6, err_msg=key)
        np.testing.assert_array_equal(load_snapshot(list_snapshots(tmp_path)[row["step"]])["input_norm"],
                                      load_snapshot(list_snapshots(tiny_run)[row["step"]])["input_norm"])
    # Running it again records nothing twice.
    replay([*map(str, ckpts), "--like", str(tiny_run), "--out", str(tmp_path)])
    assert [r["step"] for r in read_metrics(tmp_path)] == [4, 8]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_damaged_checkpoint_is_named(tiny_run: Path, tmp_path: Path, damage: str):
    bad = tmp_path / "bad.ckpt"
    data = (tiny_run / "checkpoints" / "step_00000004.ckpt").read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=str(bad)):
        load_model(bad)
    if damage != "truncated":
        return  # the command line's handling of the error, once (a process takes seconds)
    proc = subprocess.run([sys.executable, "-m", "analysis.replay", str(bad), "--like",
                           str(tiny_run), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode != 0 and str(bad) in proc.stderr
    assert "Traceback" not in proc.stderr



def test_replay_refuses_a_model_of_another_vocabulary(tiny_run: Path, tmp_path: Path):
    """Gold and norms indexed by different tokenizers would correlate unrelated types:
    replay names the mismatch instead of recording numbers."""
    other = tmp_path / "other"
    shutil.copytree(tiny_run / "normx", other / "normx")
    meta_path = other / "normx" / "meta.json"
    meta = json.loads(meta_path.read_text())
    ckpt, out = str(tiny_run / "checkpoints" / "step_00000004.ckpt"), tmp_path / "out"
    meta_path.write_text(json.dumps({**meta, "vocab_hash": "another"}))
    with pytest.raises(SystemExit, match="another tokenizer than the --like run"):
        replay([ckpt, "--like", str(other), "--out", str(out)])
    rows = meta["embedding_rows"]
    meta_path.write_text(json.dumps({**meta, "embedding_rows": rows + 1}))
    with pytest.raises(SystemExit, match=rf"has {rows} embedding rows .* model had {rows + 1}"):
        replay([ckpt, "--like", str(other), "--out", str(out)])
    with pytest.raises(SystemExit, match=r"cannot read the gold statistics .*nope\.npz"):
        replay([ckpt, "--gold", str(tmp_path / "nope.npz"), "--out", str(out)])
    assert not (out / "normx").exists()
