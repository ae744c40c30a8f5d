"""Helpers every probe family uses: the seeded choice of examples, NaN-aware means, UIDs in
metric keys, accuracy by paradigm, held-out token windows, and leaving ``.grad`` as found.
"""
from __future__ import annotations

import contextlib
import math
import re
from typing import Iterable, Iterator, Sequence, TypeVar

import numpy as np
from torch import Tensor, nn

from normx_track.text import token_ids

__all__ = ["accuracy_by_uid", "key_part", "keep_grads", "nanmean", "seeded_subset",
           "token_blocks"]

T = TypeVar("T")


def seeded_subset(items: Sequence[T], n: int | None, seed: int) -> list[T]:
    """``n`` of ``items`` chosen with ``seed``, in their original order (all if n is None
    or there are no more than n)."""
    items = list(items)
    if n is None or len(items) <= n:
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), n, replace=False))
    return [items[i] for i in keep]


def nanmean(values: Iterable[float]) -> float:
    """The mean of the finite values; NaN when there are none (a diverged model's rows
    average out instead of poisoning the curve)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0 or not np.isfinite(arr).any():
        return math.nan
    return float(np.nanmean(arr))


def key_part(text: str) -> str:
    """A UID or name made safe for a slash-separated metric key."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text) or "none"


def accuracy_by_uid(key: str, correct: np.ndarray, pairs: Sequence) -> dict:
    """Accuracy per paradigm (``key`` with ``{uid}``), when the pairs hold two or more."""
    uids = np.array([p.uid for p in pairs])
    if len(set(uids)) < 2:
        return {}
    return {key.format(uid=key_part(u)): float(correct[uids == u].mean())
            for u in sorted(set(uids))}


@contextlib.contextmanager
def keep_grads(model: nn.Module) -> Iterator[None]:
    """Whatever runs inside leaves the parameters' ``.grad`` as it found them (the Captum
    baselines backpropagate through a model that is training)."""
    params = list(model.parameters())
    saved = [p.grad for p in params]
    try:
        yield
    finally:
        for p, g in zip(params, saved):
            p.grad = g


def token_blocks(items, tokenizer, length: int) -> list[list[int]]:
    """Non-overlapping windows of ``length`` tokens. Texts are tokenised (no special
    tokens) and joined by EOS into one stream, as the training data is packed; each token
    block is cut on its own (a block shorter than ``length`` is kept whole)."""
    items = list(items) if not isinstance(items, (Tensor, np.ndarray)) else items
    if len(items) and isinstance(items[0], str):
        if tokenizer is None:
            raise ValueError("texts need a tokenizer")
        eos = getattr(tokenizer, "eos_token_id", None)
        stream: list[int] = []
        for text in items:
            stream.extend(token_ids(tokenizer, text))
            if eos is not None:
                stream.append(int(eos))
        sources = [stream]
    else:
        sources = [[int(x) for x in (b.tolist() if hasattr(b, "tolist") else b)] for b in items]
    blocks = []
    for src in sources:
        if len(src) < length:
            if len(src) >= 2:
                blocks.append(src)
            continue
        blocks.extend(src[i: i + length] for i in range(0, len(src) - length + 1, length))
    return blocks
