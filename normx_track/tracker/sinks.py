"""Where the tracker's rows go besides the record: plain sinks with ``log(metrics, step)``
(and, optionally, ``log_snapshot(step, arrays, tracker)`` for a W&B run's extras)."""
from __future__ import annotations

import html
import logging
from typing import Any, Mapping, Sequence

import numpy as np

from normx_track.tracker.snapshot import extreme_tokens

log = logging.getLogger(__name__)


def wandb_extras(step: int, arrays: Mapping[str, np.ndarray], tracker) -> dict[str, Any]:
    """The norm histogram and an HTML table of the top/bottom-norm tokens. Media files,
    not W&B Tables: an online Table asks the server about its artifact type on the
    training thread, which stalls training for as long as the network is down."""
    import wandb

    counts = tracker.gold.counts
    norms = arrays["input_norm"][: tracker.gold.vocab_size]
    seen = (counts >= tracker.min_count) & np.isfinite(norms)
    extras: dict[str, Any] = {"normx/histogram/input_norm": wandb.Histogram(norms[seen])}
    if tracker.vocab is not None:
        rows = extreme_tokens(norms, tracker.vocab, counts, tracker.top_k_tokens,
                              tracker.min_count)
        extras["normx/extreme_tokens"] = wandb.Html(token_table_html(rows, step))
    return extras


def token_table_html(rows: Sequence[Mapping[str, Any]], step: int) -> str:
    cells = "".join(
        f"<tr><td>{r['rank']}</td><td>{html.escape(repr(r['token']))}</td><td>{r['id']}</td>"
        f"<td>{r['norm']:.4f}</td><td>{r['count']}</td></tr>" for r in rows)
    return (f"<table><caption>highest and lowest norms, step {step}</caption><tr><th>rank</th>"
            f"<th>token</th><th>id</th><th>norm</th><th>count</th></tr>{cells}</table>")


class LightningLoggers:
    """A Trainer's loggers as one sink. A failing logger is warned about once and skipped
    (the record is on disk already); ResilientWandbLogger falls back to CSV itself."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self._failed: set[int] = set()

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._each(lambda logger: logger.log_metrics(metrics, step=step))

    def log_snapshot(self, step: int, arrays: Mapping[str, np.ndarray], tracker) -> None:
        from lightning.pytorch.loggers import WandbLogger

        def extras(logger):
            if isinstance(logger, WandbLogger) and not getattr(logger, "failed", False):
                logger.experiment.log({**wandb_extras(step, arrays, tracker),
                                       "trainer/global_step": step})
        self._each(extras)

    def _each(self, call) -> None:
        for logger in self.trainer.loggers:
            if id(logger) in self._failed:
                continue
            try:
                call(logger)
            except Exception as err:  # noqa: BLE001 - a logger must not stop training
                if callable(getattr(logger, "fall_back", None)):
                    logger.fall_back(err)  # ResilientWandbLogger: CSV from here on
                else:
                    self._failed.add(id(logger))
                    log.warning("NormTracker: %s failed (%s: %s); the record goes on",
                                type(logger).__name__, type(err).__name__, err)


class WandbRunSink:
    """The active W&B run, stepped as transformers' `WandbCallback` steps it: every key
    against ``train/global_step``."""

    STEP_METRIC = "train/global_step"

    def __init__(self, run: Any | None = None):
        self._run = run

    @property
    def run(self):
        if self._run is None:
            import wandb
            self._run = wandb.run
        return self._run

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log({**metrics, self.STEP_METRIC: step})

    def log_snapshot(self, step: int, arrays: Mapping[str, np.ndarray], tracker) -> None:
        if self.run is not None:
            self.run.log({**wandb_extras(step, arrays, tracker), self.STEP_METRIC: step})
