"""Slow (minutes): the science on the default setting. Run with `python -m pytest -m slow`."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_train
from normx_track.record.store import read_metrics


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_emergence_agreement_and_evidence(cache_dir: Path, tmp_path: Path):
    """The default model on the synthetic corpus, 2000 steps (experiment=emergence):
    the loss clears the unigram entropy, minimal-pair accuracy rises well above chance,
    NormXLogit finds the cue better than a random ranking."""
    out = tmp_path / "emergence"
    run_train(cache_dir, "experiment=emergence", "logger=csv", f"hydra.run.dir={out}")
    rows = read_metrics(out)
    first, last = rows[0], rows[-1]
    assert last["step"] == 2000
    assert first["normx/pair_accuracy"] < 0.6 < 0.7 < last["normx/pair_accuracy"]
    assert last["normx/evidence_ap/normxlogit"] > last["normx/evidence_ap/random"] + 0.1
    # Norms line up with information gain at some point, then partly unlearn it.
    peak = max(r["normx/spearman/information_gain"] for r in rows)
    assert peak > 0.4 and abs(first["normx/spearman/information_gain"]) < 0.1
