"""One core, three front ends (DESIGN.md "Front ends"): the plain-loop `Tracker`, the HF
`Trainer` callback and the Lightning callback write the same record; each resumes with no
gap and no duplicate; a checkpoint of normx-track 0.1.0 still resumes."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from conftest import ROOT, load_example, train_here
from normx_track.gold.statistics import GoldStatistics
from normx_track.record.store import list_snapshots, load_snapshot, read_metrics

STEPS = [0, 1, 2, 4, 8, 12, 16, 20]  # debug=tiny: every 4 steps, log-spaced below




@pytest.fixture(scope="module")
def overrides(cache_dir) -> list[str]:
    return ["debug=tiny", f"data.cache_dir={cache_dir}"]


def assert_same_rows(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys(), ra["step"]
        for key in ra:
            np.testing.assert_allclose(ra[key], rb[key], rtol=1e-5, atol=1e-7, err_msg=key)


def assert_spearman_is_scipys(run: Path) -> None:
    gold = GoldStatistics.load(run / "normx" / "gold.npz")
    last = read_metrics(run)[-1]
    norms = load_snapshot(list_snapshots(run)[last["step"]])["input_norm"][: gold.vocab_size]
    seen = gold.counts >= 2  # tracker.min_count in debug=tiny
    rho = scipy.stats.spearmanr(norms[seen], gold.self_information[seen]).statistic
    assert last["normx/spearman/self_information"] == pytest.approx(rho, abs=1e-9)


def assert_analysis_reads(run: Path) -> None:
    """analysis reads any front end's record (the report is built from the same two)."""
    import matplotlib.pyplot as plt

    from analysis import curves, emergence
    from analysis.load import load_run

    assert curves.build_figures(load_run(run))
    tables, _ = emergence.build(load_run(run), n_boot=20, n_perm=5)
    assert len(tables["emergence"]) > 0
    plt.close("all")


class _KillAt:
    """Stands in for a kill: the loop stops dead at `step`, after the checkpoint at 10."""

    def __init__(self, step: int):
        self.step = step

    def __call__(self, step: int) -> None:
        if step == self.step:
            raise KeyboardInterrupt


def test_the_plain_loop_records_the_schedule_and_resumes_without_gap_or_duplicate(
        tmp_path, overrides):
    plain = load_example("plain_loop")
    whole = tmp_path / "whole"
    plain.train(whole, 20, overrides)
    rows = read_metrics(whole)
    assert [r["step"] for r in rows] == STEPS
    assert [r["tokens_seen"] for r in rows] == [s * 4 * 32 for s in STEPS]
    assert rows[-1]["train/loss_step"] == 20 and np.isfinite(rows[-1]["train/loss"])
    assert_spearman_is_scipys(whole)
    assert json.loads((whole / "normx" / "meta.json").read_text())["front_end"] == "plain"

    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        plain.train(broken, 20, overrides, on_step=_KillAt(13))
    assert [r["step"] for r in read_metrics(broken)][-1] == 12  # recorded after checkpoint 10
    plain.train(broken, 20, overrides, resume=True)
    assert_same_rows(read_metrics(broken), rows)
    assert_analysis_reads(broken)


def test_the_hf_trainer_callback_records_the_schedule_and_resumes_from_checkpoint_10(
        tmp_path, overrides):
    from transformers import TrainerCallback

    hf = load_example("hf_trainer")

    class StopAt(TrainerCallback):  # a kill after checkpoint-10: the run ends at step 13
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 13:
                control.should_training_stop = True

    whole = tmp_path / "whole"
    trainer, _ = hf.build_trainer(whole, 20, overrides)
    trainer.train()
    rows = read_metrics(whole)
    assert [r["step"] for r in rows] == STEPS
    # The Trainer logs its loss after the step's snapshot: it joins the row of its step.
    assert all(r["train/loss_step"] == r["step"] for r in rows[1:])
    assert_spearman_is_scipys(whole)
    meta = json.loads((whole / "normx" / "meta.json").read_text())
    assert meta["front_end"] == "hf_trainer" and "model's training inputs" in meta["tokens_seen_from"]

    broken = tmp_path / "broken"
    trainer, _ = hf.build_trainer(broken, 20, overrides, callbacks=(StopAt(),))
    trainer.train()
    assert [r["step"] for r in read_metrics(broken)][-2:] == [12, 13]
    assert (broken / "checkpoint-10" / "normx_tracker.json").is_file()
    trainer, _ = hf.build_trainer(broken, 20, overrides)
    trainer.train(resume_from_checkpoint=str(broken / "checkpoint-10"))
    assert_same_rows(read_metrics(broken), rows)
    assert_analysis_reads(broken)


def test_the_trainer_callback_state_also_restores_through_the_trainer_state(tmp_path, overrides):
    """With restore_callback_states_from_checkpoint the Trainer rebuilds callbacks from
    their exported state: it must get the live tracker back, holding that state."""
    hf = load_example("hf_trainer")
    out = tmp_path / "run"
    trainer, _ = hf.build_trainer(out, 10, overrides, save_steps=5)
    trainer.train()
    (out / "checkpoint-5" / "normx_tracker.json").unlink()  # only trainer_state.json says it
    trainer, tracker = hf.build_trainer(out, 10, overrides, save_steps=5)
    trainer.args.restore_callback_states_from_checkpoint = True
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-5"))
    assert tracker in trainer.callback_handler.callbacks
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2, 4, 8, 10]


def test_the_three_front_ends_record_the_same_step_0_row(tmp_path, cache_dir, overrides):
    train_here(tmp_path / "lightning", cache_dir, "logger=none", "trainer.max_steps=1")
    load_example("plain_loop").train(tmp_path / "plain", 1, overrides)
    trainer, _ = load_example("hf_trainer").build_trainer(tmp_path / "hf", 1, overrides)
    trainer.train()
    first = {name: read_metrics(tmp_path / name)[0] for name in ("lightning", "plain", "hf")}
    assert first["lightning"]["step"] == 0 and len(first["lightning"]) > 20
    assert first["plain"] == first["lightning"]
    assert first["hf"] == first["lightning"]


def test_a_checkpoint_written_by_version_0_1_resumes(tmp_path, cache_dir):
    """tests/data/v0_1_run: a 4-step debug=tiny run (logger=none) by normx-track 0.1.0,
    whose tracker lived in normx_track/callback.py."""
    out = tmp_path / "old"
    shutil.copytree(ROOT / "tests" / "data" / "v0_1_run", out)
    before = (out / "normx" / "metrics.jsonl").read_text().splitlines()
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    assert state["NormTracker"] == {"last_step": 4, "tokens_seen": 512}
    train_here(out, cache_dir, "logger=none", "trainer.max_steps=8", "ckpt_path=last")
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 4, 8]
    assert (out / "normx" / "metrics.jsonl").read_text().splitlines()[:4] == before
    assert rows[-1]["tokens_seen"] == 8 * 4 * 32  # counting went on from the old state


def test_an_exported_folder_gives_the_checkpoints_logits(tiny_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from normx_track.export import main as export_main
    from normx_track.record.checkpoint_loader import load_lightning

    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    assert export_main([str(ckpt), str(tmp_path / "hf")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([tokenizer(" the keys to the cabinet are")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, load_lightning(ckpt).model(ids).logits)
    assert len(tokenizer) == exported.get_input_embeddings().weight.shape[0]
    assert export_main([str(ckpt), str(tmp_path / "hf")]) == 2  # never over a used folder


def test_the_metric_names_load_without_torch_and_the_library_never_imports_analysis():
    import subprocess

    probe = "import sys, normx_track.keys; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "normx_track").rglob("*.py")
                 if "import analysis" in p.read_text() or "from analysis" in p.read_text()]
    assert offenders == []
