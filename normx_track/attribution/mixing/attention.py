"""Raw attention and attention rollout (Abnar & Zuidema 2020).

Raw attention, layer l:  A_l = (1/H) Σ_h A_{l,h}, the attention probabilities of layer l's
    heads averaged (uniformly: every head counts the same). Rows sum to 1 (a real row's
    probabilities over the real positions; pads get none).

Rollout:  Â_l = 0.5 I + 0.5 A_l (the residual connection as an identity, weighted equally
    with the attention), rows renormalised to sum 1 (they already do for real rows; the
    step matters only for the zeroed pad rows, which stay 0), then
        R_1 = Â_1,   R_l = Â_l · R_{l-1},
    so row i of R_l spreads position i after layer l over the input positions; rows sum to 1.
    No per-head rollout, no discarding of low weights (the paper's choices).

Both come from ONE forward pass with eager attention (the probabilities are read by a
forward hook on each attention module). Every supported architecture: GPT-2, GPT-NeoX,
Llama (grouped-query attention: the probabilities are per query head, so nothing to
group), BERT, RoBERTa.
"""
from __future__ import annotations

import torch
from torch import Tensor

from normx_track.attribution.mixing.base import ContextMixing, allowed, normalise_rows, roll_out
from normx_track.attribution.mixing.structure import body, forward_inputs, record

__all__ = ["AttentionRollout", "RawAttention", "attention_matrices", "rollout_matrices"]


def attention_matrices(model, structure, ids: Tensor, mask: Tensor) -> Tensor:
    """[B, L, T, T] head-averaged attention, pad rows/columns and the causal upper
    triangle zeroed."""
    with record(structure, probs=True) as recs:
        body(model)(**forward_inputs(structure, ids, mask))
    A = torch.stack([r["probs"].mean(1) for r in recs], dim=1)
    return A * allowed(structure, mask)[:, None].to(A.dtype)


def rollout_matrices(attention: Tensor, mask: Tensor) -> Tensor:
    """Rollout of head-averaged attention [B, L, T, T] (0.5 I + 0.5 A, rows renormalised,
    product over layers); the identity only on real positions."""
    eye = torch.diag_embed(mask.to(attention.dtype))[:, None]  # [B, 1, T, T]
    return roll_out(normalise_rows(0.5 * eye + 0.5 * attention))


class RawAttention(ContextMixing):
    """Layer l's attention probabilities averaged over heads: [L, T, T] per sequence."""

    method = "attention"

    def compute(self, ids, mask):
        return attention_matrices(self.model, self.structure, ids, mask)


class AttentionRollout(ContextMixing):
    """Attention rollout (Abnar & Zuidema 2020): residual as 0.5 I + 0.5 A, rows
    renormalised, R_l = Â_l · R_{l-1}; [L, T, T] per sequence, R_l at index l-1."""

    method = "rollout"

    def compute(self, ids, mask):
        return rollout_matrices(attention_matrices(self.model, self.structure, ids, mask), mask)
