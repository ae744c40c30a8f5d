"""What one snapshot measures: embedding norms, and their agreement with gold signals.

Kept apart from the callback so replay (analysis) computes exactly the same numbers from a
saved checkpoint as the live run did."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Mapping

import numpy as np
import torch

from normx_track.modeling import embedding_norms

from normx_track.gold import metrics
from normx_track.gold.word_labels import function_word_counts

# Signals that are correlated with the norms (counts is the control, not a target).
_NOT_CORRELATED = {"counts", "function_word"}

from normx_track.keys import (  # noqa: F401 - re-exported for the tracker's callers
    CORRELATION_STATS, OUTPUT_PREFIX, PREFIX, auroc_key, correlation_key, n_types_key, norm_key)


def find_language_model(module: torch.nn.Module) -> torch.nn.Module:
    """`module` itself if it exposes `get_input_embeddings`, else its first submodule that
    does (e.g. the HF model inside a user's LightningModule)."""
    for candidate in module.modules():
        if callable(getattr(candidate, "get_input_embeddings", None)):
            return candidate
    raise TypeError(f"{type(module).__name__} has no submodule with get_input_embeddings(); "
                    "pass model_getter= to the tracker to say where the language model is")


def is_sharded(module: torch.nn.Module) -> bool:
    """True under FSDP (v1 wrappers); parameters are then shards, not whole tensors."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return any(isinstance(m, FSDP) for m in module.modules())


def full_params(root: torch.nn.Module):
    """Under FSDP the parameters are shards: gather the whole model on every rank (a
    collective, so all ranks must enter) for the duration of a snapshot. A no-op otherwise."""
    if is_sharded(root):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.summon_full_params(root, writeback=False, recurse=True)
    return nullcontext()


def norm_arrays(language_model: torch.nn.Module) -> dict[str, np.ndarray]:
    """`input_norm` ||E[w]|| and, when the head is untied, `output_norm` ||U[w]||, as numpy.
    Under FSDP call it inside `full_params(root)`."""
    norms = embedding_norms(language_model)
    # FSDP2 shards rows as DTensors: the norms are gathered (V floats), not the matrix.
    return {f"{side}_norm": (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu().numpy()
            for side, v in norms.items()}


class NormMetrics:
    """The metrics of one snapshot's norms against fixed gold signals (DESIGN.md keys).
    Built once per run: the gold side is prepared up front (see `metrics.PreparedGold`)."""

    def __init__(self, signals: Mapping[str, np.ndarray], counts: np.ndarray, min_count: int):
        self.counts, self.min_count = np.asarray(counts), min_count
        self.function_word = signals.get("function_word")
        self.gold = metrics.PreparedGold(
            {n: v for n, v in signals.items() if n not in _NOT_CORRELATED}, counts, min_count)

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Metrics for the input norms, and for the output norms under `normx/output/`."""
        row = self.measure(arrays["input_norm"])
        if self.function_word is not None:   # the AUROC's class sizes, once per row
            row.update(function_word_counts(self.function_word, self.counts, self.min_count))
        if "output_norm" in arrays:
            row.update(self.measure(arrays["output_norm"], prefix=OUTPUT_PREFIX))
        return row

    def measure(self, norms: np.ndarray, prefix: str = PREFIX) -> dict[str, float]:
        norms = norms[: len(self.counts)]  # rows past the tokenizer's vocabulary: padding
        row: dict[str, float] = {}
        for name, result in self.gold.correlations(norms).items():
            for stat in CORRELATION_STATS:
                row[correlation_key(stat, name, prefix)] = float(result[stat])
            row[n_types_key(name, prefix)] = int(result["n"])
        if self.function_word is not None:
            row[auroc_key(prefix)] = float(metrics.function_word_auroc(
                norms, self.function_word, self.counts, self.min_count))
        stats = metrics.norm_statistics(norms, self.counts)
        row.update({norm_key(key, prefix): _plain(value) for key, value in stats.items()})
        return row


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, (int, np.integer)) else float(value)


def extreme_tokens(norms: np.ndarray, vocab: list[str], counts: np.ndarray, k: int,
                   min_count: int) -> list[dict[str, Any]]:
    """The k highest- and k lowest-norm tokens among those seen at least `min_count` times."""
    ids = np.flatnonzero((counts >= min_count) & np.isfinite(norms[:len(counts)]))
    order = ids[np.argsort(-norms[ids], kind="stable")]
    rows = []
    for label, chosen in (("top", order[:k]), ("bottom", order[::-1][:k])):
        rows += [{"rank": label, "token": vocab[i] if i < len(vocab) else "", "id": int(i),
                  "norm": float(norms[i]), "count": int(counts[i])} for i in chosen]
    return rows
