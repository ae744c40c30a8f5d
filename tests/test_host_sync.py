"""A training step between logged steps reads nothing back from the device.

On a GPU each read (`.item()`, `int(tensor)`, `torch.cuda.synchronize()`) makes the host
wait for the GPU instead of queueing the next step. On CPU the same reads show up as
`aten::_local_scalar_dense` calls, which these tests count.
"""
from __future__ import annotations

from collections import Counter

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config
from test_tracker import PlainLM
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils._python_dispatch import TorchDispatchMode

from normx_track import NormTracker, compute_gold

from normx_track.training import monitors
from normx_track.record.store import read_metrics

READ_BACK = torch.ops.aten._local_scalar_dense.default


class DeviceReads(TorchDispatchMode):
    """Counts reads of a tensor's value by the host, except AdamW's step counters: those
    live on the host by design (fused AdamW on a GPU keeps them on the device instead)."""

    def __init__(self, trainer: L.Trainer):
        super().__init__()
        self.trainer, self.count = trainer, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is READ_BACK and not any(args[0] is s.get("step") for opt in
                                         self.trainer.optimizers for s in opt.state.values()):
            self.count += 1
        return func(*args, **(kwargs or {}))


class ReadsPerStep(L.Callback):
    """reads[g]: device reads from the start of the step that ends at global step g to the
    start of the next one (its hooks, logging, validation and checkpoint included)."""

    def __init__(self):
        self.mode: DeviceReads | None = None
        self.reads: dict[int, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._close(trainer.global_step)
        self.mode = DeviceReads(trainer)
        self.mode.__enter__()

    def on_train_end(self, trainer, pl_module):
        self._close(trainer.global_step)

    def _close(self, step: int) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.reads[step] = self.mode.count
            self.mode = None


def test_steps_between_logs_snapshots_and_checkpoints_read_nothing_back(tmp_path, cache_dir,
                                                                       monkeypatch):
    from normx_track.training import run as run_module

    counter = ReadsPerStep()
    build = run_module.build_callbacks
    monkeypatch.setattr(run_module, "build_callbacks", lambda *a: [*build(*a), counter])
    cfg = tiny_config(tmp_path / "run", cache_dir, "logger=csv", "trainer.max_steps=12",
                      "trainer.log_every_n_steps=5", "tracker.log_spaced=false")
    run_module.run(cfg)
    # every 4 steps: validation, a checkpoint and a snapshot; every 5: the loggers write
    quiet = [s for s in range(1, 12) if s % 4 and s % 5]
    assert {s: counter.reads[s] for s in quiet} == dict.fromkeys(quiet, 0)
    assert counter.reads[5] > 0 and counter.reads[4] > 0  # the count sees reads where due


# -- the throughput monitor in a plain Lightning script --------------------------------------
def dict_batches(n: int, vocab: int, masked: bool) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (4, 16), generator=g)
        batch = {"input_ids": ids}
        if masked:  # right padding of random length
            lengths = torch.randint(1, 17, (4,), generator=g)
            batch["attention_mask"] = (torch.arange(16) < lengths[:, None]).long()
        batches.append(batch)
    return batches


def fit(tmp_path, callbacks, batches, steps: int, log_every: int, ckpt_path=None):
    trainer = L.Trainer(max_steps=steps, logger=CSVLogger(tmp_path, name="csv"),
                        log_every_n_steps=log_every,
                        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=callbacks)
    trainer.fit(PlainLM(50), torch.utils.data.DataLoader(batches, batch_size=None),
                ckpt_path=ckpt_path)
    return trainer


def logged(folder) -> pd.DataFrame:
    frame = pd.read_csv(next(folder.rglob("metrics.csv")))
    return frame.dropna(subset=["train/lengths"]).set_index("step")


def test_throughput_is_timed_only_on_logged_steps(tmp_path, monkeypatch):
    syncs = Counter()
    monkeypatch.setattr(monitors, "_no_sync", lambda: syncs.update(["sync"]))
    flops_per_batch, peak = 1e6, 1e9
    monitor = monitors.LogStepThroughput(flops_per_batch, window=2, available_flops=peak)
    trainer = fit(tmp_path, [monitor], dict_batches(12, 50, masked=False), steps=12, log_every=3)
    assert syncs["sync"] == 4  # steps 3, 6, 9, 12: not one a step, as ThroughputMonitor does
    rows = logged(tmp_path / "csv")
    assert list(rows.index) == [2, 5, 8, 11]  # CSVLogger's step is global_step - 1
    assert list(rows["train/lengths"]) == [3 * 64, 6 * 64, 9 * 64, 12 * 64]
    rates = rows.dropna(subset=["train/device/mfu"])
    assert len(rates) == 3  # from the second logged step on (a window of 2)
    # The FLOPs of a batch, recovered from two rates the monitor computed independently.
    np.testing.assert_allclose(rates["train/device/flops_per_sec"]
                               / rates["train/device/batches_per_sec"], flops_per_batch)
    np.testing.assert_allclose(rates["train/device/mfu"] * peak,
                               rates["train/device/flops_per_sec"])
    np.testing.assert_allclose(rates["train/device/items_per_sec"]
                               / rates["train/device/samples_per_sec"], 16)
    assert trainer.global_step == 12


def test_a_resumed_run_continues_the_throughput_totals(tmp_path):
    batches = dict_batches(12, 50, masked=False)
    save = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=6, save_top_k=-1)
    fit(tmp_path / "first", [monitors.LogStepThroughput(window=2), save], batches, steps=6,
        log_every=3)
    fit(tmp_path / "resumed", [monitors.LogStepThroughput(window=2)], batches, steps=12,
        log_every=3, ckpt_path=next((tmp_path / "ckpt").glob("*.ckpt")))
    rows = logged(tmp_path / "resumed")
    assert list(rows["train/lengths"]) == [9 * 64, 12 * 64]
    assert list(rows["train/batches"]) == [9, 12]
    # train/time goes on from the first part's training time, as the totals do.
    first = logged(tmp_path / "first")
    saved = torch.load(next((tmp_path / "ckpt").glob("*.ckpt")), weights_only=True)
    before = saved["callbacks"]["LogStepThroughput"]["time"]
    assert first["train/time"].iloc[-1] <= before < rows["train/time"].iloc[0]


def test_tokens_seen_sums_attention_masks_and_reads_them_only_at_snapshots(tmp_path):
    batches = dict_batches(8, 50, masked=True)
    gold = compute_gold([b["input_ids"].flatten().numpy() for b in batches], 50,
                        shuffle_correction=False)
    tracker = NormTracker(gold, every_n_steps=3, log_spaced=False, min_count=1,
                          out_dir=tmp_path / "rec")
    counter = ReadsPerStep()
    fit(tmp_path, [tracker, counter], batches, steps=8, log_every=100)
    rows = read_metrics(tmp_path / "rec")
    assert [r["step"] for r in rows] == [0, 3, 6, 8]
    cumulative = np.cumsum([0] + [int(b["attention_mask"].sum()) for b in batches])
    assert [r["tokens_seen"] for r in rows] == [cumulative[s] for s in (0, 3, 6, 8)]
    assert cumulative[8] < 8 * 64  # the masks did cut tokens
    assert all(counter.reads[s] == 0 for s in (1, 2, 4, 5, 7))
    assert tracker.state_dict()["tokens_seen"] == cumulative[8]


@pytest.mark.parametrize("precision, dtype", [
    ("bf16-mixed", torch.bfloat16), ("16-true", torch.float16), ("32-true", torch.float32),
    ("64-true", torch.float64)])
def test_the_peak_is_looked_up_for_the_dtype_the_matmuls_run_in(precision, dtype):
    trainer = L.Trainer(accelerator="cpu", precision=precision, logger=False)
    assert monitors._plugin_to_compute_dtype(trainer.precision_plugin) == dtype
