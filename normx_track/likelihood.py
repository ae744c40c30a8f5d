"""Log-probabilities of continuations under a causal LM, batched (DESIGN.md "Minimal-pair
accuracy"): the sum over ALL tokens of a continuation given its context, so two words that
share their first token are still told apart.

    logp = continuation_logprobs(model, contexts=[[5, 9]], continuations=[[17, 4]])

Only the positions that predict a continuation token go through the head, so a 50k-token
vocabulary costs [n continuation tokens, V] logits, never [B, T, V].
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .attribution import eval_mode

__all__ = ["continuation_logprobs"]


@torch.no_grad()
def continuation_logprobs(model: nn.Module, contexts: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[int]], batch_size: int = 64,
                          pad_id: int = 0) -> np.ndarray:
    """``sum_j log p(c_j | context, c_<j)`` for each (context, continuation) pair, float64.

    Contexts must hold at least one token (for whole sentences, pass a BOS/EOS token, as
    lm-eval does); continuations at least one. Rows are right-padded with ``pad_id`` and
    masked, so a row scores as it would alone."""
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    for i, (ctx, cont) in enumerate(zip(contexts, continuations)):
        if not len(ctx) or not len(cont):
            raise ValueError(f"row {i}: context and continuation need at least one token each")
    out = np.empty(len(contexts), dtype=np.float64)
    with eval_mode(model):
        for start in range(0, len(contexts), batch_size):
            stop = start + batch_size
            out[start:stop] = _batch(model, contexts[start:stop], continuations[start:stop],
                                     pad_id)
    return out


def _batch(model: nn.Module, contexts, continuations, pad_id: int) -> np.ndarray:
    device = model.get_input_embeddings().weight.device
    rows = [list(c) + list(x) for c, x in zip(contexts, continuations)]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    # Position p predicts the token at p + 1: the positions len(ctx)-1 .. len(row)-2.
    row_of, pos = [], []
    for b, (ctx, cont) in enumerate(zip(contexts, continuations)):
        row_of += [b] * len(cont)
        pos += range(len(ctx) - 1, len(ctx) + len(cont) - 1)
    row_of_t = torch.tensor(row_of, device=device)
    pos_t = torch.tensor(pos, device=device)
    ids, mask = ids.to(device), mask.to(device)
    hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)[0]
    logits = model.get_output_embeddings()(hidden[row_of_t, pos_t]).float()
    token_logp = logits.log_softmax(-1).gather(1, ids[row_of_t, pos_t + 1, None]).squeeze(1)
    sums = torch.zeros(len(rows), dtype=torch.float64, device=device)
    sums.index_add_(0, row_of_t, token_logp.double())
    return sums.cpu().numpy()
