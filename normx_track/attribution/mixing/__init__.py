"""Context mixing, layer by layer (DESIGN.md "Layer-wise methods"): for every layer l a
matrix over (explained position i, input position j) saying how much position i's
representation after layer l draws on input position j.

Public API (Captum style: one object per method, or the dispatching function)
-----------------------------------------------------------------------------
``RawAttention(model).attribute(input_ids, attention_mask=None)``    -> [L, T, T]
``AttentionRollout(model).attribute(...)``                           (Abnar & Zuidema 2020)
``ValueZeroing(model, max_tokens=32768).attribute(...)``             (Mohebbi et al. 2023)
``ALTI(model, rolled_out=True, p=1).attribute(...)``                 (Ferrando et al. 2022)
``GlobEnc(model, rolled_out=True).attribute(...)``                   (Modarressi et al. 2022)
``context_mixing(model, input_ids, method="alti", attention_mask=None, **options)``
``METHODS = ("attention", "rollout", "value_zeroing", "alti", "globenc")``
``decompose(model, input_ids, attention_mask=None, stage=...)``     the per-position terms

Shapes: ``input_ids`` [T] -> [L, T, T]; [B, T] -> [B, L, T, T]; float32 on the model's
device; index l-1 is layer l. Padding through ``attention_mask`` (1 real, 0 pad; left or
right): padded positions get zero rows and columns and the real ones score as the sequence
alone. A causal model's matrices are zero above the diagonal. Every method's rows sum to 1
on real positions (raw attention by construction; the others are normalised).

Architectures (every method on each; all tested): GPT-2, GPT-NeoX (rotary; parallel or
sequential residual), Llama (RMSNorm, rotary, grouped-query attention), BERT and RoBERTa.
Raw attention, rollout and Value Zeroing also take other models of Llama's module layout
(``self_attn.{v,o}_proj``, e.g. Mistral, Qwen2, Gemma); ALTI and GlobEnc only those whose
layer adds the attention output straight onto the residual (`structure.SPLIT_MODEL_TYPES`:
llama, mistral, qwen2). Anything else raises `UnsupportedModel` (a NotImplementedError)
naming the method and the architecture. Each module's docstring gives its method's definition and
the choices taken where the paper leaves one.

No gradients. Attention, rollout, ALTI and GlobEnc take one forward pass with hooks (eager
attention for the call, the model's own implementation restored after); Value Zeroing takes
that pass plus, per layer and sequence, one batched re-run of the layer (T + 1 copies).
"""
from __future__ import annotations

from torch import Tensor, nn

from normx_track.attribution.mixing.attention import AttentionRollout, RawAttention
from normx_track.attribution.mixing.base import ContextMixing, normalise_rows, roll_out
from normx_track.attribution.mixing.decomposition import (ALTI, STAGES, GlobEnc,
                                                          LayerDecomposition, decompose)
from normx_track.attribution.mixing.structure import UnsupportedModel, structure_of
from normx_track.attribution.mixing.value_zeroing import ValueZeroing

__all__ = ["ALTI", "METHODS", "STAGES", "AttentionRollout", "ContextMixing", "GlobEnc",
           "LayerDecomposition", "RawAttention", "UnsupportedModel", "ValueZeroing",
           "context_mixing", "decompose", "method_class", "normalise_rows", "roll_out",
           "structure_of"]

METHODS = ("attention", "rollout", "value_zeroing", "alti", "globenc")
_CLASSES = {"attention": RawAttention, "rollout": AttentionRollout,
            "value_zeroing": ValueZeroing, "alti": ALTI, "globenc": GlobEnc}


def method_class(method: str) -> type[ContextMixing]:
    """The class implementing ``method`` (one of `METHODS`)."""
    if method not in _CLASSES:
        raise ValueError(f"unknown context-mixing method {method!r}; one of {METHODS}")
    return _CLASSES[method]


def context_mixing(model: nn.Module, input_ids: Tensor, method: str = "alti",
                   attention_mask: Tensor | None = None, **options) -> Tensor:
    """``method``'s matrices for ``input_ids``: [L, T, T] for [T], [B, L, T, T] for [B, T].
    ``options`` go to the method's constructor (``rolled_out``, ``p``, ``max_tokens``)."""
    return method_class(method)(model, **options).attribute(input_ids, attention_mask)
