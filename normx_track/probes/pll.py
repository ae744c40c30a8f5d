"""Pseudo-log-likelihood of sentences under a masked LM, PLL-word-l2r (Kauf & Ivanova
2023; minicons' ``within_word_l2r``; DESIGN.md "Masked language models"):

    PLL(S) = sum_t log P(s_t | S with s_t and the later tokens of t's word masked)

Words are the tokenizer's own word ids (as minicons reads them); special tokens ([CLS],
[SEP], <s>, </s>) stay in the input and are not scored.

Batched: every masked copy of every sentence is one row, and rows of sentences of similar
length share a forward pass (``batch_size`` rows each), so a few thousand sentences take a
few passes. Only the masked position of each row goes through the MLM head.

    ids, words = encode_with_word_ids(tokenizer, ["The keys are here.", "The keys is here."])
    pll = pll_scores(model, ids, words, tokenizer.mask_token_id, tokenizer.pad_token_id)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from normx_track.attribution.masked import encoder_head
from normx_track.modeling import eval_mode, model_device

__all__ = ["encode_with_word_ids", "masked_copies", "pll_scores", "pll_token_logprobs"]

WordIds = Sequence[int | None]


def encode_with_word_ids(tokenizer, texts: Sequence[str]) -> tuple[list[list[int]], list[list]]:
    """Token ids with the tokenizer's special tokens, and each token's word id (None for
    a special token). Needs a fast tokenizer (word ids)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"PLL-word-l2r needs a fast tokenizer for its word ids, got "
                         f"{type(tokenizer).__name__}")
    if getattr(tokenizer, "mask_token_id", None) is None:
        raise ValueError("the tokenizer has no mask token: PLL needs a masked LM's tokenizer")
    enc = tokenizer(list(texts), add_special_tokens=True)
    return [list(map(int, ids)) for ids in enc["input_ids"]], \
        [enc.word_ids(i) for i in range(len(texts))]


# Its old name (benchmarks/bench_pll.py imports it); `encoding.encode_sentences` is BLiMP's.
encode_sentences = encode_with_word_ids


def masked_copies(ids: Sequence[int], words: WordIds, mask_id: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(copies [k, n], scored positions [k]): one copy per scored token t, with t and the
    later tokens of t's word replaced by ``mask_id``."""
    ids = np.asarray(ids, dtype=np.int64)
    word = np.array([-1 if w is None else w for w in words])
    positions = np.flatnonzero(word >= 0)
    n = len(ids)
    j = np.arange(n)[None, :]
    t = positions[:, None]
    hide = (j >= t) & (word[None, :] == word[t])
    return np.where(hide, mask_id, ids[None, :]), positions


@torch.no_grad()
def pll_token_logprobs(model: nn.Module, ids: Sequence[Sequence[int]],
                       words: Sequence[WordIds], mask_id: int, pad_id: int,
                       batch_size: int = 512) -> list[np.ndarray]:
    """log P(s_t | its masked copy) of every scored token of every sentence (float64, in
    token order); specials give no entry."""
    if len(ids) != len(words):
        raise ValueError(f"{len(ids)} sentences but {len(words)} word-id lists")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _, U, transform = encoder_head(model)
    device = model_device(model)
    copies = [masked_copies(s, w, mask_id) for s, w in zip(ids, words)]
    out = [np.empty(len(pos), dtype=np.float64) for _, pos in copies]
    # Shortest sentences first, so that a pass pads its rows to similar lengths.
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    with eval_mode(model):
        for chunk in _chunks(order, [len(copies[i][1]) for i in range(len(ids))], batch_size):
            logp = _score_chunk(model, U, transform, [copies[i] for i in chunk], ids, chunk,
                                pad_id, device)
            for i, values in zip(chunk, logp):
                out[i][:] = values
    return out


def pll_scores(model: nn.Module, ids: Sequence[Sequence[int]], words: Sequence[WordIds],
               mask_id: int, pad_id: int, batch_size: int = 512) -> np.ndarray:
    """PLL-word-l2r of each sentence [N], float64 (0 for a sentence of specials alone)."""
    return np.array([lp.sum() for lp in
                     pll_token_logprobs(model, ids, words, mask_id, pad_id, batch_size)],
                    dtype=np.float64)


def _chunks(order: list[int], n_rows: list[int], batch_size: int):
    """Runs of sentences (in ``order``) whose copies fill about ``batch_size`` rows; a
    sentence's copies are never split."""
    chunk, rows = [], 0
    for i in order:
        if chunk and rows + n_rows[i] > batch_size:
            yield chunk
            chunk, rows = [], 0
        chunk.append(i)
        rows += n_rows[i]
    if chunk:
        yield chunk


def _score_chunk(model, U, transform, copies, ids, chunk, pad_id, device) -> list[np.ndarray]:
    width = max(len(ids[i]) for i in chunk)
    n_rows = sum(len(pos) for _, pos in copies)
    if n_rows == 0:  # sentences of specials alone
        return [np.empty(0) for _ in chunk]
    batch = torch.full((n_rows, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n_rows, width), dtype=torch.long)
    row, rows_at, targets = 0, [], []
    for (rows, pos), i in zip(copies, chunk):
        k, n = rows.shape
        batch[row:row + k, :n] = torch.from_numpy(rows)
        attention[row:row + k, :n] = 1
        rows_at.append(pos)
        targets.extend(ids[i][p] for p in pos)
        row += k
    positions = torch.from_numpy(np.concatenate(rows_at)).long()
    states = model.base_model(input_ids=batch.to(device),
                              attention_mask=attention.to(device)).last_hidden_state
    picked = states[torch.arange(n_rows, device=device), positions.to(device)]  # [R, d]
    logits = U(transform(picked)).float()  # [R, V]: the masked positions alone
    target = torch.tensor(targets, device=device, dtype=torch.long)
    logp = logits.log_softmax(-1).gather(1, target[:, None]).squeeze(1).double().cpu().numpy()
    return np.split(logp, np.cumsum([len(p) for p in rows_at])[:-1])
