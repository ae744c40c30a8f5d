"""NormXLogit, LogAt and word-embedding norms: one forward pass, no gradients.

Definitions (DESIGN.md, "Definitions"): with ``E`` the input embeddings, ``U`` the output
head, ``f`` the final norm before the head and ``h_i^(l)`` position i's hidden state after
layer l,

    LogAt_i(y)      = (U f(h_i^(L)))[y]            (layer l: h_i^(l) through f and U)
    NormXLogit_i(y) = ||E[x_i]||_2 * LogAt_i(y)     (or ||h_i^(0)||_2, ``norm_factor``)

Public API
----------
``attribute(model, input_ids, ...) -> AttributionScores``  everything from ONE forward pass.
``attribute_many(model, input_ids, explain=[(target, foil), ...])``  several choices, same pass.
``logat(...)`` / ``normxlogit(...)``                 thin wrappers returning [B, T].
``embedding_norms(model) -> {"input": [V], ("output": [V])}``  (`normx_track.modeling`)
``final_norm(model)``                                the resolved ``f`` (the same).

Conventions
-----------
* The explained position t defaults to each row's last real token (``attention_mask``),
  so left- and right-padded batches both work; position ids are rebuilt from the mask so a
  padded row scores exactly like the sequence alone.
* Only positions i <= t that are real tokens are attributed; every other entry is NaN
  (``AttributionScores.mask`` says which are real). NaN rather than 0 so that a forgotten mask
  fails loudly instead of silently ranking pads.
* The model kind is dispatched automatically: a model with output embeddings is a causal
  LM; one without, but with a ``score``/``classifier`` head, is a sequence classifier
  (``config.num_labels == 1`` or ``problem_type == "regression"``: a regressor).
    - LM:             target y defaults to the model's argmax at t.
    - classification: LogAt_i = head(f(h_i))[c], c the class predicted at t by default.
    - regression:     LogAt_i = -|head(f(h_i)) - y_hat| (summed over outputs), y_hat the
                      model's output at t; ``target``/``foil`` do not apply.
  With ``foil``: LogAt(target) - LogAt(foil).
* Scores, norms and the logits at t are float32 whatever the model dtype; ``f`` and a
  classifier head run in the model's dtype, as the model itself runs them.
* The model is put in eval mode for the call (dropout off) and restored afterwards.
* One entry for every model: BERT/RoBERTa-style encoders (masked LMs, sequence
  classifiers) go to `normx_track.attribution.masked` (their explained position: a
  [MASK], or [CLS]), every other model to `normx_track.attribution.causal`; both take
  these arguments in this order and return `scores.AttributionScores`.
* Pass the unwrapped Hugging Face model. Heads that post-process logits (soft-capping,
  logit scaling) are not modelled: LogAt is the plain ``U f(h)``.

Layout: model plumbing (``eval_mode``, ``final_norm``, ``embedding_norms``, ...) lives in
`normx_track.modeling` and the shared scoring in `attribution.scores`; this module
re-exports them under their old names.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from normx_track.attribution.causal import attribute_causal_many
from normx_track.attribution.masked import attribute_masked_many, is_encoder
# Old import paths of the plumbing and the scores (tracker/snapshot.py, analysis/replay.py,
# export.py and users import them from here).
from normx_track.attribution.scores import AttributionScores, Ids, Layers  # noqa: F401
from normx_track.modeling import (context_size, embedding_norms, eval_mode,  # noqa: F401
                                  final_norm, model_device, padding_inputs, row_norms)

__all__ = [
    "AttributionScores",
    "attribute",
    "attribute_many",
    "context_size",
    "embedding_norms",
    "final_norm",
    "logat",
    "model_device",
    "normxlogit",
]


@torch.no_grad()
def attribute(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    target: Ids = None,
    foil: Ids = None,
    layers: Layers = "last",
    norm_factor: str = "word_embedding",
    position: Ids = None,
) -> AttributionScores:
    """LogAt, NormXLogit and the norm factor for every position, from one forward pass.

    ``target``/``foil``: token ids (LM) or classes (classifier), a scalar or one per row.
    ``layers``: "last" (no per-layer stacks), "all" (0..L) or layer indices (negative ok).
    ``norm_factor``: "word_embedding" (||E[x_i]||) or "embedding_output" (||h_i^(0)||).
    ``position``: explained position t per row (default: the last real token of a causal
    model, [CLS] of an encoder classifier; a masked LM's [MASK] must be given).
    """
    return attribute_many(model, input_ids, attention_mask, [(target, foil)], layers,
                          norm_factor, position)[0]


@torch.no_grad()
def attribute_many(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    explain: Sequence[tuple] = ((None, None),),
    layers: Layers = "last",
    norm_factor: str = "word_embedding",
    position: Ids = None,
) -> list[AttributionScores]:
    """`attribute` for several ``(target, foil)`` choices from the same single forward
    pass, e.g. ``[(good, None), (good, bad)]``: the word, and the word against its foil.
    A choice may carry its own explained position as a third entry, ``(target, foil,
    position)``: in a causal LM, positions <= t never see the tokens after t, so one
    pass over a longer input explains several prediction points."""
    path = attribute_masked_many if is_encoder(model) else attribute_causal_many
    return path(model, input_ids, attention_mask, explain, layers, norm_factor, position)


def logat(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    target: Ids = None,
    foil: Ids = None,
    layer: int | None = None,
    position: Ids = None,
) -> Tensor:
    """LogAt [B, T] at the last layer, or at ``layer`` (logit lens through f and U)."""
    layers = "last" if layer is None else [layer]
    a = attribute(model, input_ids, attention_mask, target, foil, layers, position=position)
    return a.logat if layer is None else a.logat_layers[0]


def normxlogit(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    target: Ids = None,
    foil: Ids = None,
    layer: int | None = None,
    norm_factor: str = "word_embedding",
    position: Ids = None,
) -> Tensor:
    """NormXLogit [B, T] = norm factor x LogAt (see ``attribute``)."""
    layers = "last" if layer is None else [layer]
    a = attribute(model, input_ids, attention_mask, target, foil, layers, norm_factor, position)
    return a.normxlogit if layer is None else a.normxlogit_layers[0]
