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
from torch import Tensor, nn

from normx_track.modeling import eval_mode, model_device, padding_inputs

__all__ = ["continuation_logprobs", "logprobs_of_tokens"]


@torch.no_grad()
def continuation_logprobs(model: nn.Module, contexts: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[int]], batch_size: int = 64,
                          pad_id: int = 0) -> np.ndarray:
    """``sum_j log p(c_j | context, c_<j)`` for each (context, continuation) pair, float64.

    Contexts must hold at least one token (for whole sentences, pass a BOS/EOS token, as
    lm-eval does); continuations at least one. Rows are right-padded with ``pad_id``; a
    row scores as it would alone."""
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
    device = model_device(model)
    rows = [list(c) + list(x) for c, x in zip(contexts, continuations)]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
    ids = ids.to(device)
    mask = torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]
    states = model.base_model(input_ids=ids, use_cache=False, **padding_inputs(mask))[0]
    return logprobs_of_tokens(model, states, [len(c) for c in contexts], continuations)


def logprobs_of_tokens(model: nn.Module, states: Tensor, starts: Sequence[int],
                       tokens: Sequence[Sequence[int]]) -> np.ndarray:
    """Sum over j of log p(tokens[b][j]) at position starts[b] + j, read from a pass's final
    states: the states at starts[b] - 1 + j predict it, so the tokens need not be the
    pass's own input there (e.g. another word that shares the input's first tokens), as
    long as tokens[b][:j] are. Only those positions go through the head; an empty row
    sums to 0."""
    device = states.device
    row_of, pos, target = [], [], []
    for b, (start, row) in enumerate(zip(starts, tokens)):
        row_of += [b] * len(row)
        pos += range(start - 1, start + len(row) - 1)
        target += list(row)
    if not target:  # every row empty: nothing to read
        return np.zeros(len(starts))
    row_of_t = torch.tensor(row_of, device=device, dtype=torch.long)
    pos_t = torch.tensor(pos, device=device, dtype=torch.long)
    logits = model.get_output_embeddings()(states[row_of_t, pos_t]).float()
    targets = torch.tensor(target, device=device, dtype=torch.long)[:, None]
    token_logp = logits.log_softmax(-1).gather(1, targets).squeeze(1)
    sums = torch.zeros(len(starts), dtype=torch.float64, device=device)
    sums.index_add_(0, row_of_t, token_logp.double())
    return sums.cpu().numpy()
