"""Value Zeroing (Mohebbi, Zuidema, Chrupała & Alishahi, EACL 2023).

For layer l, explained position i and input position j:

    VZ_l[i, j] = 1 - cos( h_i^(l),  h_i^(l)[v_j = 0] )

where h_i^(l) is position i's output of layer l (the whole layer: attention, residuals,
layer norms and the MLP; GPT-2's last layer before ``ln_f``) and h_i^(l)[v_j = 0] the same
output when the value vector of position j is set to zero in every head of layer l
(queries, keys and so the attention weights, and j's own residual stream, unchanged).
Only layer l is altered: it is re-run on the hidden states h^(l-1) the unaltered forward
pass gave it, so every layer is scored on the model's actual inputs (as the paper and
inseq's ``value_zeroing`` do). Rows are then normalised to sum 1 over j (the paper's
normalisation). Cosine distance lies in [0, 2], so there are no negative scores to handle;
float rounding below 0 is clipped to 0 before normalising. j = i is included (zeroing
position i's own value vector).

Implementation: ONE forward pass records each layer's call (its inputs exactly as the
model passed them: hidden states, mask, rotary embeddings); then, per layer and sequence,
the layer is re-run once on a batch of copies of its input, copy k with the value vector of
position j_k zeroed (a forward hook on the value projection zeroes that position's slice of
its output), plus one unaltered copy, computed in the same batch, as the reference. At most
``max_tokens`` positions go through the layer per re-run (the zeroings are chunked beyond
that). Cost: about T + 1 forward passes' worth of layer computation per sequence.
Padded positions are never zeroed and get zero rows and columns; a causal model's scores
above the diagonal are zero (zeroing a later value cannot move an earlier position; the
structural zero is also imposed).

Every supported architecture: the value slice of GPT-2's ``c_attn`` output, of GPT-NeoX's
fused ``query_key_value`` (per head, after query and key), Llama's ``v_proj`` (grouped-query
attention: zeroing the shared key/value head's value zeroes it for every query head that
reads it, i.e. position j's values "in every head"), BERT/RoBERTa's ``value``. It needs no
eager attention (any attention implementation re-runs the same way).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normx_track.attribution.mixing.base import ContextMixing, allowed, normalise_rows
from normx_track.attribution.mixing.structure import body, forward_inputs, record

__all__ = ["ValueZeroing", "select_row"]


def select_row(obj, b: int, batch: int, copies: int):
    """``obj`` (a layer call's argument, nested in tuples/lists/dicts) with every batched
    tensor (2+ dims, first dim ``batch``) cut to row ``b`` and every tensor with a first dim
    of 1 (batch 1 or broadcast) expanded to ``copies`` rows (a view, no copy)."""
    if isinstance(obj, Tensor):
        if obj.dim() >= 2 and obj.shape[0] in (batch, 1):
            row = obj[b:b + 1] if obj.shape[0] == batch else obj
            return row.expand(copies, *obj.shape[1:])
        return obj
    if isinstance(obj, tuple):
        return tuple(select_row(o, b, batch, copies) for o in obj)
    if isinstance(obj, list):
        return [select_row(o, b, batch, copies) for o in obj]
    if isinstance(obj, dict):
        return {k: select_row(v, b, batch, copies) for k, v in obj.items()}
    if type(obj).__name__.endswith("Cache"):  # nothing is cached: the pass ran use_cache=False
        return None
    return obj


class ValueZeroing(ContextMixing):
    """Value Zeroing: [L, T, T] per sequence, row i = how much position i's layer-l output
    moves (cosine distance) when position j's value vectors are zeroed, rows summing to 1.

    ``max_tokens``: the most positions one re-run of a layer takes (copies x T)."""

    method = "value_zeroing"
    needs_probabilities = False

    def __init__(self, model, max_tokens: int = 32768):
        super().__init__(model)
        self.max_tokens = max_tokens

    def compute(self, ids: Tensor, mask: Tensor) -> Tensor:
        st = self.structure
        with record(st, probs=False, layer_calls=True) as recs:
            body(self.model)(**forward_inputs(st, ids, mask))
        B, T = ids.shape
        out = torch.zeros(B, len(st.layers), T, T, device=ids.device)
        per_run = max(1, self.max_tokens // T - 1)
        for l, (layer, rec) in enumerate(zip(st.layers, recs)):
            args, kwargs = rec.pop("call")
            for b in range(B):
                for js in mask[b].nonzero().flatten().split(per_run):
                    n = len(js)
                    a = select_row(args, b, B, n + 1)
                    k = select_row(kwargs, b, B, n + 1)
                    rows = torch.arange(n, device=ids.device)
                    hook = st.value_module(layer).register_forward_hook(
                        lambda m, i, o, rows=rows, js=js: st.zero_values(o, rows, js))
                    try:
                        y = layer(*a, **k)
                    finally:
                        hook.remove()
                    y = (y[0] if isinstance(y, (tuple, list)) else y).float()
                    dist = 1 - F.cosine_similarity(y[:n], y[n:], dim=-1)  # [n, T]: (j_k, i)
                    out[b, l, :, js] = dist.t()
        out = out.clamp_min(0) * allowed(st, mask)[:, None].to(out.dtype)
        return normalise_rows(out)
