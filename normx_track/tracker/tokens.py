"""Counting training tokens without reading the GPU every step: one definition, shared by
the tracker's ``tokens_seen`` and the throughput monitor."""
from __future__ import annotations

from typing import Any, Mapping

import torch


def batch_input_ids(batch: Any) -> Any:
    """The token ids of a batch: a mapping's ``input_ids`` (else its first value), a
    sequence's first item, or the batch itself."""
    if isinstance(batch, Mapping):
        batch = batch.get("input_ids", next(iter(batch.values())))
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def batch_tokens(batch: Any) -> int | torch.Tensor:
    """Real tokens in a batch: the attention mask's sum (a tensor, still on the batch's
    device, so counting costs no host read) when given, else the ids' size."""
    if isinstance(batch, Mapping) and batch.get("attention_mask") is not None:
        return batch["attention_mask"].sum()
    ids = batch_input_ids(batch)
    return int(ids.numel()) if isinstance(ids, torch.Tensor) else 0


class TokenCounter:
    """A running total whose device-side part is read only when `total` is asked for.
    ``TokenCounter(None)`` is unknown until counting starts (`start`, `add`) or a total is
    set: the tracker's rows show null, never 0, for a count nobody gave."""

    def __init__(self, total: int | None = 0):
        self._counted = None if total is None else int(total)
        self._on_device = None

    def start(self) -> None:
        """Counting from the start of training (the front ends count every batch)."""
        if self._counted is None:
            self._counted = 0

    def add(self, tokens: int | torch.Tensor) -> None:
        self.start()
        if isinstance(tokens, torch.Tensor):
            pending = self._on_device
            self._on_device = tokens.detach() if pending is None else pending + tokens.detach()
        else:
            self._counted += int(tokens)

    @property
    def total(self) -> int | None:
        if self._on_device is not None:
            self._counted += int(self._on_device)
            self._on_device = None
        return self._counted

    @total.setter
    def total(self, value: int | None) -> None:
        self._counted, self._on_device = (None if value is None else int(value)), None
