"""The README's own-loop code blocks run as written (issue 28): a plain loop and the HF
Trainer, on a corpus and a probe file in the working folder, record what they say."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from normx_track.record.store import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def own_loop_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The tracker in your own training loop", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_own_loop_snippets_run_as_written(tmp_path, monkeypatch):
    from normx_track.training.data.synthetic import SyntheticConfig, generate_corpus

    corpus = generate_corpus(SyntheticConfig(n_documents=200, n_probes=12, seed=0))
    (tmp_path / "corpus.txt").write_text("\n".join(corpus.documents) + "\n")
    (tmp_path / "probes.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in corpus.probes), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    blocks = own_loop_blocks()
    assert len(blocks) == 2  # the plain loop, then the HF Trainer
    namespace: dict = {}
    exec(compile(blocks[0], "README.md (plain loop)", "exec"), namespace)
    rows = read_metrics(tmp_path / "runs" / "mine")
    assert [r["step"] for r in rows] == [0, 1, 2, 4, 8, 10, 20]
    assert rows[-1]["tokens_seen"] == 20 * 4 * 64 and rows[-1]["train/loss_step"] == 20
    for key in ("normx/evidence_ap/normxlogit", "normx/comprehensiveness/normxlogit",
                "normx/auroc/function_word", "normx/partial_spearman/information_gain"):
        assert rows[-1][key] == rows[-1][key], key  # present and not NaN
    assert namespace["checkpoint"]["normx_tracker"]["last_step"] == 20
    exec(compile(blocks[1], "README.md (HF Trainer)", "exec"), namespace)
    hf_rows = read_metrics(tmp_path / "runs" / "hf")
    assert [r["step"] for r in hf_rows] == [0, 1, 2, 4, 8, 10, 20]
    meta = json.loads((tmp_path / "runs" / "hf" / "normx" / "meta.json").read_text())
    assert meta["front_end"] == "hf_trainer"
