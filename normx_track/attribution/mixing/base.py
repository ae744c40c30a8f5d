"""What every context-mixing method shares: inputs ([T] or [B, T], optional attention
mask), the structural zeros (padding rows/columns, the causal upper triangle), row
normalisation and the layer-by-layer product ("rollout")."""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from normx_track.attribution.mixing.structure import Structure, eager_attention, structure_of
from normx_track.modeling import eval_mode, model_device

__all__ = ["ContextMixing", "allowed", "normalise_rows", "roll_out"]


def allowed(structure: Structure, mask: Tensor) -> Tensor:
    """[B, T, T] bool: where a row i may draw on a column j (both real; j <= i when causal)."""
    ok = mask[:, :, None] & mask[:, None, :]
    if structure.causal:
        T = mask.shape[1]
        ok = ok & torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()
    return ok


def normalise_rows(m: Tensor) -> Tensor:
    """Each row divided by its sum; a row summing to 0 stays 0."""
    s = m.sum(-1, keepdim=True)
    return torch.where(s > 0, m / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(m))


def roll_out(layers: Tensor) -> Tensor:
    """[..., L, T, T] per-layer matrices -> the products R_l = M_l · R_{l-1} (R_1 = M_1):
    row i of R_l says how much position i after layer l draws on each input position."""
    out = torch.empty_like(layers)
    acc = layers[..., 0, :, :]
    out[..., 0, :, :] = acc
    for l in range(1, layers.shape[-3]):
        acc = layers[..., l, :, :] @ acc
        out[..., l, :, :] = acc
    return out


class ContextMixing:
    """Base of the methods: ``Method(model).attribute(input_ids, attention_mask=None)``.

    ``input_ids`` [T] gives [L, T, T]; [B, T] gives [B, L, T, T] (float32, on the model's
    device). Row i is the explained position, column j the input position; layer index l
    (0-based) is the matrix after layer l+1. ``attention_mask`` [B, T] (1 real, 0 pad; left
    or right padding): padded positions get all-zero rows and columns, and the real
    positions score as the sequence alone. A causal model's matrices are zero above the
    diagonal. No gradients; the model is in eval mode for the call.
    """

    method = "context mixing"
    needs_probabilities = True  # eager attention for the call

    def __init__(self, model: nn.Module):
        self.model = model
        self.structure = structure_of(model, self.method)

    def attribute(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        single = input_ids.dim() == 1
        ids = input_ids[None] if single else input_ids
        ids = ids.to(model_device(self.model))
        if attention_mask is None:
            mask = torch.ones_like(ids, dtype=torch.bool)
        else:
            mask = (attention_mask[None] if single else attention_mask).to(ids.device).bool()
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(eval_mode(self.model))
            if self.needs_probabilities:
                stack.enter_context(eager_attention(self.model))
            out = self.compute(ids, mask)
        out = out * allowed(self.structure, mask)[:, None].to(out.dtype)
        return out[0] if single else out

    def compute(self, ids: Tensor, mask: Tensor) -> Tensor:  # [B, L, T, T]
        raise NotImplementedError
