"""What the training loop shows and logs, without a host synchronisation every step.

On a GPU the host queues the next step's kernels while the current ones run; anything that
reads a device value back (`.item()`, `torch.cuda.synchronize()`) makes it wait instead.
Lightning does that every batch in two places: it turns `prog_bar=True` values into numbers
after each batch, and `ThroughputMonitor` synchronises to time each batch. These two read
the device only on the steps that log (`trainer.log_every_n_steps`).
"""
from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from normx_track.tracker.tokens import TokenCounter, batch_input_ids, batch_tokens

LOSS_KEY = "train/loss"


class LossProgressBar(TQDMProgressBar):
    """A TQDM bar that shows the training loss, read when the bar refreshes. Log the loss
    with `prog_bar=False`: Lightning reads prog-bar values back after every batch."""

    @override
    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        loss = trainer.callback_metrics.get(LOSS_KEY)
        if loss is not None:
            metrics[LOSS_KEY] = f"{float(loss):.3f}"
        return metrics


class LogStepThroughput(L.Callback):
    """Training tokens/s, samples/s, FLOP/s and MFU, logged under the keys Lightning's
    `ThroughputMonitor` uses (`train/tokens_per_sec`, `train/device/mfu`, ...).

    Batches (dicts with `input_ids`, sequences whose first item is the ids, or the ids
    themselves) are counted as the tracker counts them (`normx_track.tracker.tokens`: the
    attention mask's sum, else the ids' size), summed on the device; the clock is read, after one
    synchronisation, only on the steps that log. The rates cover the last `window` logged
    steps. `flops_per_batch` (model FLOPs of one batch on one device) gives FLOP/s, and MFU
    against the device's peak (Lightning's table; `available_flops` overrides it).
    """

    def __init__(self, flops_per_batch: float | None = None, window: int = 10,
                 available_flops: float | None = None):
        if window < 2:
            raise ValueError(f"window must be >= 2 logged steps, got {window}")
        self.flops_per_batch, self.window = flops_per_batch, window
        self.available_flops = available_flops
        self._throughput: Throughput | None = None
        # Totals since the run began; they travel in checkpoints, so a resumed run's
        # train/batches, train/samples, train/lengths and train/time curves continue.
        self._batches = self._samples = 0
        self._tokens = TokenCounter()
        self._time_before = 0.0  # training seconds before this process (a resume)
        self._start: float | None = None

    def _elapsed(self) -> float:
        running = 0.0 if self._start is None else time.perf_counter() - self._start
        return self._time_before + running

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"batches": self._batches, "samples": self._samples, "tokens": self._tokens.total,
                "time": self._elapsed()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._batches = int(state_dict.get("batches", 0))
        self._samples = int(state_dict.get("samples", 0))
        self._tokens = TokenCounter(int(state_dict.get("tokens", 0)))
        self._time_before = float(state_dict.get("time", 0.0))

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = trainer.strategy.root_device
        # ThroughputMonitor's own mapping from any precision plugin to the matmuls' dtype
        dtype = _plugin_to_compute_dtype(trainer.precision_plugin)
        peak = self.available_flops or get_available_flops(device, dtype)
        self._throughput = Throughput(available_flops=peak, world_size=trainer.world_size,
                                      window_size=self.window)
        self._synchronize = torch.cuda.synchronize if device.type == "cuda" else _no_sync
        self._unmeasured = 0
        self._start = time.perf_counter()

    @override
    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ids = batch_input_ids(batch)
        self._batches += 1
        self._samples += ids.shape[0]
        self._tokens.add(batch_tokens(batch))
        self._unmeasured += 1
        # Lightning's own callbacks (LearningRateMonitor, ThroughputMonitor) ask the same.
        logs = trainer._logger_connector.should_update_logs
        if trainer.fit_loop._should_accumulate() or not logs:
            return
        self._synchronize()  # the clock then covers the GPU's work, not just its queueing
        flops = None if self.flops_per_batch is None else self.flops_per_batch * self._unmeasured
        self._throughput.update(time=self._elapsed(), batches=self._batches,
                                samples=self._samples, lengths=self._tokens.total, flops=flops)
        self._unmeasured = 0
        metrics = {f"train/{k}": float(v) for k, v in self._throughput.compute().items()}
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)


def _no_sync() -> None:
    pass
