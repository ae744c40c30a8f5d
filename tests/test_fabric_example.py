"""The third front end (examples/fabric_loop.py), written from `Tracker`'s contract alone:
Fabric carries the tracker's state in its checkpoint, and a resumed run continues the
record with no gap and no duplicate."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from fabric_loop import train  # noqa: E402

from normx_track.record.store import read_metrics  # noqa: E402


def test_fabric_loop_resumes_its_record_without_gap_or_duplicate(tmp_path, cache_dir):
    overrides = ["debug=tiny", f"data.cache_dir={cache_dir}"]
    train(tmp_path / "whole", 16, overrides, checkpoint_every=8)
    train(tmp_path / "split", 8, overrides, checkpoint_every=8)
    train(tmp_path / "split", 16, overrides, resume=True, checkpoint_every=8)
    whole, split = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in split] == [r["step"] for r in whole] == [0, 1, 2, 4, 8, 12, 16]
    assert [r["tokens_seen"] for r in split] == [r["tokens_seen"] for r in whole]
    assert split[0]["normx/norm/mean"] == pytest.approx(whole[0]["normx/norm/mean"])
    meta = json.loads((tmp_path / "split" / "normx" / "meta.json").read_text())
    assert meta["front_end"] == "fabric" and meta["resumed"][0]["at_step"] == 8
    with pytest.raises(SystemExit, match="fabric.ckpt exists"):  # never over a checkpoint
        train(tmp_path / "split", 16, overrides)
