"""The tracker: the record on disk, its numbers against independent computations,
resume and DDP giving the same rows, atomic writes, and use from a plain Lightning script."""
from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import scipy.stats
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import TINY, run_train, train_here, train_in_one_process
from wandb_log import history
from normx_track import NormTracker, compute_gold
from normx_track.record import store as records
from normx_track.tracker.core import snapshot_schedule
from normx_track.tracker.tokens import batch_input_ids
from normx_track.gold.statistics import GoldStatistics
from normx_track.record.store import AtomicWriteError, RecordWriter, read_metrics

MIN_COUNT = 2  # tracker.min_count in TINY


def rows_of(run: Path) -> list[dict]:
    return read_metrics(run)


def assert_rows_close(a: list[dict], b: list[dict], rtol: float = 0.0, atol: float = 0.0):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key in ra:
            np.testing.assert_allclose(ra[key], rb[key], rtol=rtol, atol=atol, err_msg=key)


def test_record_layout(tiny_run: Path):
    rec = tiny_run / "normx"
    meta = json.loads((rec / "meta.json").read_text())
    vocab = json.loads((rec / "vocab.json").read_text())
    gold = GoldStatistics.load(rec / "gold.npz")
    assert meta["vocab_size"] == len(vocab) == gold.vocab_size == 512
    assert meta["config"]["model"]["n_embd"] == 32 and meta["model"]["class"] == "GPT2LMHeadModel"
    assert {"self_information", "information_gain", "information_gain_corrected",
            "function_word"} <= set(meta["gold"])
    rows = rows_of(tiny_run)
    steps = [r["step"] for r in rows]
    assert steps == [0, 1, 2, 4, 8]  # log-spaced, then every 4, step 0 always
    assert sorted(records.list_snapshots(tiny_run)) == steps
    tokens = [r["tokens_seen"] for r in rows]
    assert tokens == [s * 4 * 32 for s in steps]  # batch 4 x block 32 per step
    snap = records.load_snapshot(records.list_snapshots(tiny_run)[8])
    assert snap["input_norm"].shape == (512,) and "output_norm" not in snap  # tied


def test_spearman_in_record_equals_scipy_on_saved_arrays(tiny_run: Path):
    rec = tiny_run / "normx"
    gold = GoldStatistics.load(rec / "gold.npz")
    for row in rows_of(tiny_run):
        norms = records.load_snapshot(records.list_snapshots(tiny_run)[row["step"]])["input_norm"]
        for signal in ("information_gain", "self_information", "information_gain_corrected"):
            values = getattr(gold, signal)
            keep = (gold.counts >= MIN_COUNT) & np.isfinite(values)
            expected = scipy.stats.spearmanr(norms[keep], values[keep]).statistic
            assert row[f"normx/spearman/{signal}"] == pytest.approx(expected, abs=1e-12)
            assert row[f"normx/n_types/{signal}"] == keep.sum()
            pearson = scipy.stats.pearsonr(norms[keep], values[keep]).statistic
            assert row[f"normx/pearson/{signal}"] == pytest.approx(pearson, abs=1e-12)


def test_information_gain_in_gold_file_is_the_corpus_kl(tiny_run: Path):
    """gold.npz came from the first stats_tokens of the training stream: recompute the KL
    for a few tokens by brute force over that stream."""
    gold = GoldStatistics.load(tiny_run / "normx" / "gold.npz")
    data_dir = Path(json.loads((tiny_run / "normx" / "meta.json").read_text())["data_dir"])
    train_bin = data_dir / "train.bin"
    lengths = np.load(train_bin.parent / "train_doc_lengths.npy")
    stream = np.fromfile(train_bin, dtype=np.int32)[:20000]
    docs = np.split(stream, np.cumsum(lengths)[:-1])
    docs = [d for d in docs if len(d)]
    pair_counts: dict[tuple[int, int], int] = {}
    for doc in docs:
        for i in range(len(doc)):
            for j in range(max(0, i - 5), min(len(doc), i + 6)):
                if i != j:
                    pair_counts[doc[i], doc[j]] = pair_counts.get((doc[i], doc[j]), 0) + 1
    total = sum(pair_counts.values())
    col = np.zeros(512)
    for (_, c), n in pair_counts.items():
        col[c] += n
    for w in np.argsort(-gold.counts)[[0, 5, 40]]:
        row = {c: n for (a, c), n in pair_counts.items() if a == w}
        n_w = sum(row.values())
        kl = sum(n / n_w * np.log((n / n_w) / (col[c] / total)) for c, n in row.items())
        assert gold.information_gain[w] == pytest.approx(kl, rel=1e-9)


def test_wandb_run_holds_the_norm_histogram_and_token_table_at_each_snapshot(tiny_run: Path):
    run = next((tiny_run / "wandb").glob("offline-run-*"))
    rows = [r for r in history(next(run.glob("run-*.wandb"))) if "normx/extreme_tokens" in r]
    assert [r["trainer/global_step"] for r in rows] == [0, 1, 2, 4, 8]
    last = rows[-1]
    norms = records.load_snapshot(records.list_snapshots(tiny_run)[8])["input_norm"]
    gold = GoldStatistics.load(tiny_run / "normx" / "gold.npz")
    seen = gold.counts >= MIN_COUNT
    histogram = last["normx/histogram/input_norm"]
    assert sum(histogram["values"]) == seen.sum()
    assert histogram["bins"][0] == pytest.approx(norms[seen].min(), rel=1e-6)
    page = (run / "files" / last["normx/extreme_tokens"]["path"]).read_text()
    top = int(np.flatnonzero(seen)[np.argmax(norms[seen])])
    assert f"<td>{top}</td><td>{norms[top]:.4f}</td>" in page  # the highest-norm token


def test_resume_after_checkpoint_gives_the_uninterrupted_rows(tiny_run, cache_dir, tmp_path):
    """A run that died after step 8 had been recorded resumes from its step-4 checkpoint:
    rows after step 4 are dropped and recorded again, equal to the uninterrupted run's."""
    crashed = tmp_path / "crashed"
    shutil.copytree(tiny_run, crashed, ignore=shutil.ignore_patterns("wandb"))
    train_here(crashed, cache_dir, "logger=none",
               f"ckpt_path={crashed / 'checkpoints' / 'step_00000004.ckpt'}")
    assert_rows_close(rows_of(crashed), rows_of(tiny_run), rtol=1e-6, atol=1e-9)
    assert sorted(records.list_snapshots(crashed)) == [0, 1, 2, 4, 8]


def test_fresh_run_in_a_used_folder_sets_the_old_record_aside(tiny_run, cache_dir, tmp_path):
    used = tmp_path / "used"
    shutil.copytree(tiny_run, used, ignore=shutil.ignore_patterns("wandb"))
    short = [o for o in TINY if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=2"]
    # A fresh run that stops on bad input has not started: it moves nothing (the folder is
    # copied as it is then); then a fresh run (no ckpt_path) in the used folder.
    between = tmp_path / "between"
    results = train_in_one_process(cache_dir, {
        "failed": [*short, "tracker.probe_file=/nowhere.jsonl", f"hydra.run.dir={used}"],
        "as it was": ["--copy", str(used), str(between)],
        "fresh": [*short, "logger=none", f"hydra.run.dir={used}"]})
    assert results["failed"]["code"] == 2, results["failed"]["stderr"][-2000:]
    assert not list(between.glob("*.replaced-*")) and not (between / "wandb").exists()
    assert (between / ".hydra" / "overrides.yaml").read_text() == (
        tiny_run / ".hydra" / "overrides.yaml").read_text()
    assert results["fresh"]["code"] == 0, results["fresh"]["stderr"][-3000:]
    (aside,) = used.glob("normx.replaced-*")
    assert [r["step"] for r in read_metrics(aside)] == [0, 1, 2, 4, 8]  # the old run, whole
    assert sorted(records.list_snapshots(aside)) == [0, 1, 2, 4, 8]
    assert_rows_close(read_metrics(aside), rows_of(tiny_run))
    assert [r["step"] for r in rows_of(used)] == [0, 1, 2]  # the new run, alone
    # Its checkpoints and job files went aside with it: `ckpt_path=last` cannot pick up the
    # old run's last.ckpt, and .hydra/ says what the record in normx/ ran with.
    (old_checkpoints,) = used.glob("checkpoints.replaced-*")
    assert sorted(p.name for p in old_checkpoints.iterdir()) == sorted(
        p.name for p in (tiny_run / "checkpoints").iterdir())
    assert torch.load(used / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    (old_job,) = used.glob(".hydra.replaced-*")
    assert (old_job / "overrides.yaml").read_text() == (
        tiny_run / ".hydra" / "overrides.yaml").read_text()
    assert "trainer.max_steps=2" in (used / ".hydra" / "overrides.yaml").read_text()
    assert sorted(p.name for p in (used / ".hydra").iterdir()) == [
        "config.yaml", "hydra.yaml", "overrides.yaml"]  # the failed run's rerun-* went aside


@pytest.mark.timeout(300)
def test_ddp_two_processes_in_a_sweep_give_the_single_process_rows(tiny_run, cache_dir,
                                                                   tmp_path):
    """DDP inside a Hydra multirun (as on a cluster): Lightning relaunches rank 1 with the
    job's own composed config, in the job's folder."""
    sweep = tmp_path / "sweep"
    overrides = [*TINY, "data.batch_size=2"]
    run_train(cache_dir, "-m", "seed=0", *overrides, "trainer=ddp", "trainer.accelerator=cpu",
              "trainer.devices=2", "trainer.precision=32-true", "logger=none",
              f"hydra.sweep.dir={sweep}")
    # Two ranks x batch 2 see the single process's batches of 4: same updates, same rows.
    assert_rows_close(rows_of(sweep / "0"), rows_of(tiny_run), rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # 37 s: two FSDP processes, then a resume
@pytest.mark.timeout(300)
def test_fsdp_two_processes_give_the_single_process_rows_and_resume(tiny_run, cache_dir, tmp_path):
    """FSDP over gloo: the tracker gathers the sharded embedding, the probes run on the
    gathered model, checkpoints are full state dicts that resume to the same rows."""
    out = tmp_path / "fsdp"
    overrides = [*TINY, "data.batch_size=2"]
    fsdp = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.precision=32-true", "logger=none"]
    run_train(cache_dir, *overrides, *fsdp, f"hydra.run.dir={out}")
    expected = rows_of(tiny_run)
    assert any(key.startswith("normx/evidence_ap/") for key in expected[0])  # probes compared too
    assert_rows_close(rows_of(out), expected, rtol=1e-4, atol=1e-6)
    single = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    sharded = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert sharded.keys() == single.keys()  # a whole model, loadable by replay and explain
    run_train(cache_dir, *overrides, *fsdp, f"hydra.run.dir={out}",
              f"ckpt_path={out / 'checkpoints' / 'step_00000004.ckpt'}")
    assert_rows_close(rows_of(out), expected, rtol=1e-4, atol=1e-6)


def test_snapshot_schedule():
    taken = [s for s in range(0, 301) if snapshot_schedule(s, 100, log_spaced=True)]
    assert taken == [0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300]
    assert [s for s in range(0, 25) if snapshot_schedule(s, 10, log_spaced=False)] == [0, 10, 20]


def test_failed_writes_leave_the_previous_record_intact(tmp_path, monkeypatch):
    writer = RecordWriter(tmp_path)
    writer.write_snapshot(1, {"input_norm": np.arange(4.0)})
    writer.append_metrics({"step": 1, "normx/x": 0.5})
    before = (writer.dir / "metrics.jsonl").read_bytes()

    def disk_full(handle, **arrays):
        handle.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.np, "savez", disk_full)
    with pytest.raises(AtomicWriteError, match="No space left on device.*previous version is intact"):
        writer.write_snapshot(1, {"input_norm": np.zeros(4)})
    monkeypatch.undo()
    np.testing.assert_array_equal(records.load_snapshot(writer.dir / "snapshots" / "step_00000001.npz")["input_norm"], np.arange(4.0))

    real_open = records.os.fdopen

    def failing_fdopen(fd, mode="r", **kwargs):
        handle = real_open(fd, mode, **kwargs)
        handle.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return handle

    monkeypatch.setattr(records.os, "fdopen", failing_fdopen)
    with pytest.raises(AtomicWriteError):
        writer.append_metrics({"step": 2, "normx/x": 0.7})
    monkeypatch.undo()
    assert (writer.dir / "metrics.jsonl").read_bytes() == before
    assert not list(writer.dir.glob(".*.tmp")), "temp files were left behind"
    writer.append_metrics({"step": 2, "normx/x": 0.7})  # and the writer still works
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_truncated_metrics_line_is_read_up_to_the_damage(tmp_path):
    writer = RecordWriter(tmp_path)
    for step in (0, 1, 2):
        writer.append_metrics({"step": step, "normx/x": float(step)})
    with open(writer.metrics_path, "a") as f:
        f.write('{"step": 3, "normx/x": 0.')  # a kill mid-line (not our writer's doing)
    with pytest.warns(UserWarning, match="metrics.jsonl:4: damaged line"):
        assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]


# -- the callback in a plain Lightning script: no Hydra, no normx model or data --------------
class PlainLM(L.LightningModule):
    def __init__(self, vocab_size: int, tie: bool = False):
        super().__init__()
        config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=16,
                            vocab_size=vocab_size, tie_word_embeddings=tie)
        self.lm = GPT2LMHeadModel(config)

    def training_step(self, batch, batch_idx):  # TensorDataset lists or dicts of ids
        ids = batch_input_ids(batch)
        return self.lm(input_ids=ids, labels=ids).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def plain_data(vocab_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (64, 16), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids), batch_size=8), ids


def fit_plain(tmp_path, model, tracker, steps=6, logger=False):
    loader, _ = plain_data(model.lm.config.vocab_size)
    trainer = L.Trainer(max_steps=steps, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=[tracker])
    trainer.fit(model, loader)
    return trainer


def test_callback_in_a_plain_lightning_script_tracks_untied_output_norms(tmp_path):
    _, ids = plain_data(50)
    gold = compute_gold([d.numpy() for d in ids], 50, shuffle_correction=False)
    model = PlainLM(50, tie=False)
    fit_plain(tmp_path, model, NormTracker(gold, every_n_steps=3, min_count=1))
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 6]
    assert "normx/output/spearman/information_gain" in rows[-1]
    snap = records.load_snapshot(records.list_snapshots(tmp_path)[6])
    np.testing.assert_allclose(snap["output_norm"],
                               model.lm.lm_head.weight.detach().norm(dim=1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(snap["input_norm"],
                               model.lm.transformer.wte.weight.detach().norm(dim=1).numpy(), rtol=1e-6)


def test_disk_full_mid_training_stops_with_the_file_named_and_keeps_the_record(
        tmp_path, monkeypatch):
    _, ids = plain_data(50)
    gold = compute_gold([d.numpy() for d in ids], 50, shuffle_correction=False)
    real_savez, calls = records.np.savez, []

    def savez_until_full(handle, **arrays):  # gold.npz, steps 0, 1, 2, then the disk is full
        calls.append(1)
        if len(calls) == 5:
            handle.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_savez(handle, **arrays)

    monkeypatch.setattr(records.np, "savez", savez_until_full)
    with pytest.raises(AtomicWriteError, match=r"step_00000003\.npz.*No space left.*intact"):
        fit_plain(tmp_path, PlainLM(50, tie=True), NormTracker(gold, every_n_steps=3, min_count=1))
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    snapshots = records.list_snapshots(tmp_path)
    assert sorted(snapshots) == [0, 1, 2]
    assert all(records.load_snapshot(path)["input_norm"].shape == (50,)
               for path in snapshots.values())
    assert not list((tmp_path / "normx").rglob("*.tmp")), "temp files were left behind"


def test_a_resume_measures_again_the_checkpoints_row_lost_to_a_damaged_line(tmp_path):
    """The row of the step a run resumes from is cut off (a kill mid-line, say): the weights
    are the checkpoint's, so the resumed run records it again, equal to the lost one."""
    _, ids = plain_data(50)
    gold = compute_gold([d.numpy() for d in ids], 50, shuffle_correction=False)
    loader, _ = plain_data(50)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4,
                                  save_top_k=-1, filename="{step}")
    trainer = L.Trainer(max_steps=4, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[NormTracker(gold, every_n_steps=4, min_count=1), checkpoints])
    trainer.fit(PlainLM(50), loader)
    whole = read_metrics(tmp_path)
    assert [r["step"] for r in whole] == [0, 1, 2, 4]
    metrics = tmp_path / "normx" / "metrics.jsonl"
    cut = metrics.read_bytes()
    cut = cut[: cut.rindex(b"\n", 0, -1) + 20]  # step 4's row, cut off
    metrics.write_bytes(cut)
    trainer = L.Trainer(max_steps=6, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[NormTracker(gold, every_n_steps=4, min_count=1)])
    with pytest.warns(UserWarning, match=r"metrics\.jsonl:4: damaged line"):
        trainer.fit(PlainLM(50), loader, ckpt_path=str(tmp_path / "ckpt" / "step=4.ckpt"))
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 4, 6]
    assert_rows_close(rows[3:4], whole[3:4])
    (kept,) = (tmp_path / "normx").glob("metrics.jsonl.damaged-*")
    assert kept.read_bytes() == cut


def test_a_garbled_line_costs_that_row_alone(tmp_path):
    writer = RecordWriter(tmp_path)
    for step in range(5):
        writer.append_metrics({"step": step, "normx/x": float(step)})
    left = [writer.dir / ".metrics.jsonl.abc.tmp", writer.dir / "snapshots" / ".step_1.npz.x.tmp"]
    for path in left:  # what a kill mid-write leaves; the next writer clears them
        path.write_bytes(b"partial")
    lines = writer.metrics_path.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"step": 2, "nor\xff\n'
    lines.insert(4, b'{"step": 1, "normx/x": 9.0}\n')  # out of order: skipped as well
    writer.metrics_path.write_bytes(b"".join(lines))
    with pytest.warns(UserWarning) as caught:
        assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 3, 4]
    messages = [str(w.message) for w in caught]
    assert any("metrics.jsonl:3: damaged line" in m for m in messages)
    assert any("metrics.jsonl:5: step 1 is not after step 3" in m for m in messages)
    with pytest.warns(UserWarning):
        resumed = RecordWriter(tmp_path)
    resumed.append_metrics({"step": 5, "normx/x": 5.0})
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 3, 4, 5]
    (kept,) = tmp_path.glob("normx/metrics.jsonl.damaged-*")
    assert kept.read_bytes() == b"".join(lines)  # the file as found, for whoever wants it
    assert not any(path.exists() for path in left)


class DashboardDownLogger(CSVLogger):
    """A user's logger whose backend fails on the tracker's rows."""

    def log_metrics(self, metrics, step=None):
        if any(key.startswith("normx/") for key in metrics):
            raise ConnectionError("dashboard unreachable")
        super().log_metrics(metrics, step)


def test_a_failing_user_logger_neither_stops_the_run_nor_the_record(tmp_path, caplog):
    _, ids = plain_data(50)
    gold = compute_gold([d.numpy() for d in ids], 50, shuffle_correction=False)
    with caplog.at_level(logging.WARNING, logger="normx_track.tracker.sinks"):
        trainer = fit_plain(tmp_path, PlainLM(50), NormTracker(gold, every_n_steps=3, min_count=1),
                            logger=DashboardDownLogger(tmp_path))
    assert trainer.global_step == 6
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3, 6]
    warnings = [r.message for r in caplog.records if "DashboardDownLogger failed" in r.message]
    assert len(warnings) == 1 and "dashboard unreachable" in warnings[0]  # said once


def test_nonfinite_norms_are_counted_and_can_stop_the_run(tmp_path):
    _, ids = plain_data(50)
    gold = compute_gold([d.numpy() for d in ids], 50, shuffle_correction=False)
    model = PlainLM(50, tie=True)
    with torch.no_grad():
        model.lm.transformer.wte.weight[7] = float("nan")
    trainer = fit_plain(tmp_path, model, NormTracker(gold, every_n_steps=100, min_count=1,
                                                     stop_on_nonfinite=True))
    rows = read_metrics(tmp_path)
    assert rows[0]["step"] == 0 and rows[0]["normx/norm/n_nonfinite"] >= 1
    assert trainer.global_step < 6, "the run should have stopped at the first snapshot"


def test_gold_that_does_not_fit_the_vocabulary_is_rejected(tmp_path):
    gold = compute_gold([np.arange(60) % 60], 60, shuffle_correction=False)
    with pytest.raises(ValueError, match="gold statistics cover 60 token types but vocab lists 50"):
        NormTracker(gold, vocab=[str(i) for i in range(50)])
    with pytest.raises(ValueError, match="lexicon/x.*shape \\(3,\\)"):
        NormTracker(gold, signals={"lexicon/x": np.zeros(3)})
    with pytest.raises(ValueError, match="embedding has 50 rows but the gold statistics cover 60"):
        fit_plain(tmp_path, PlainLM(50), NormTracker(gold))


def test_user_lexicon_is_correlated_and_recorded(cache_dir, tmp_path, tiny_run):
    vocab = json.loads((tiny_run / "normx" / "vocab.json").read_text())
    words = [t[1:] for t in vocab if t.startswith("Ġ") and t[1:].isalpha()][:60]
    lexicon = tmp_path / "concreteness.tsv"
    lexicon.write_text("".join(f"{w}\t{len(w) * 0.5 + i % 3}\n" for i, w in enumerate(words))
                       + "notasingletokenword\t1.0\n")
    out = tmp_path / "run"
    train_here(out, cache_dir, "logger=none", "trainer.max_steps=4",
               f"tracker.lexicons=[{lexicon}]")
    row = rows_of(out)[-1]
    gold = GoldStatistics.load(out / "normx" / "gold.npz")
    scores = np.full(gold.vocab_size, np.nan)
    for i, w in enumerate(words):
        scores[vocab.index("Ġ" + w)] = len(w) * 0.5 + i % 3
    norms = records.load_snapshot(records.list_snapshots(out)[row["step"]])["input_norm"]
    keep = (gold.counts >= MIN_COUNT) & np.isfinite(scores)
    assert row["normx/n_types/lexicon/concreteness"] == keep.sum() > 3
    assert row["normx/spearman/lexicon/concreteness"] == pytest.approx(
        scipy.stats.spearmanr(norms[keep], scores[keep]).statistic, abs=1e-12)


def test_rows_rewritten_after_reopening_stay_strict_json(tmp_path):
    RecordWriter(tmp_path).append_metrics({"step": 0, "normx/x": float("nan")})
    reopened = RecordWriter(tmp_path)  # as a resumed run does
    reopened.append_metrics({"step": 1, "normx/x": 1.0})
    lines = (reopened.dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0], parse_constant=lambda c: pytest.fail(f"non-JSON {c}")) == \
        {"step": 0, "normx/x": None}
