"""The causal path of `normxlogit.attribute`: causal LMs (GPT-2, GPT-NeoX, Llama, ...) and
sequence classifiers / regressors on a causal backbone (DESIGN.md "Definitions"):

    LogAt_i(y) = (U f(h_i^(L)))[y]        layer l: (U f(h_i^(l)))[y]  (logit lens)

Its own parts: the head (U, or the ``score``/``classifier`` head) and the forward pass.
For the last layer it captures the output of ``f`` with a forward hook, so f is applied
exactly once, by the model (Hugging Face's ``hidden_states[-1]`` is already post-norm for
GPT-2, GPT-NeoX and Llama; ``tests/test_attribution.py`` pins it, and this does not rely
on it); for l < L it applies ``f`` itself to ``hidden_states[l]``. Only positions i <= t
that are real tokens are attributed.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from normx_track.attribution.scores import (AttributionScores, Ids, Layers, choice_scores,
                                            explained_position, norm_of, prepare,
                                            split_choice)
from normx_track.modeling import (capture_output, eval_mode, final_norm, num_layers,
                                  padding_inputs)

__all__ = ["attribute_causal_many", "causal_head"]

_CLASSIFIER_HEADS = ("score", "classifier")


def causal_head(model: nn.Module) -> tuple[str, nn.Module]:
    """("lm" | "classification" | "regression", head module)."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        return "lm", out
    for name in _CLASSIFIER_HEADS:
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            cfg = model.config
            regression = cfg.num_labels == 1 or getattr(cfg, "problem_type", None) == "regression"
            return ("regression" if regression else "classification"), head
    raise ValueError(
        f"{type(model).__name__} has neither output embeddings nor a "
        f"{'/'.join(_CLASSIFIER_HEADS)} head"
    )


def _forward(model, f, input_ids, mask, need_hidden: bool, causal: bool):
    """One backbone pass -> (f(h^(L)) as the model computed it, hidden_states or None)."""
    with eval_mode(model), capture_output(f) as captured:
        out = model.base_model(  # the backbone: never builds the full [B,T,V] head output
            input_ids=input_ids,
            output_hidden_states=need_hidden,
            use_cache=False,
            **padding_inputs(mask, causal),  # padding-invariant: position ids from the mask
        )
    if len(captured) != 1:
        raise RuntimeError(f"final norm ran {len(captured)} times in one forward pass")
    return captured[0], out.hidden_states


@torch.no_grad()
def attribute_causal_many(model: nn.Module, input_ids: Tensor,
                          attention_mask: Tensor | None = None,
                          explain: Sequence[tuple] = ((None, None),), layers: Layers = "last",
                          norm_factor: str = "word_embedding", position: Ids = None
                          ) -> list[AttributionScores]:
    """`normxlogit.attribute_many` for a causal backbone (its arguments)."""
    kind, head = causal_head(model)
    f = final_norm(model)
    n_layers = num_layers(model)
    p = prepare(model, input_ids, attention_mask, layers, norm_factor, n_layers)
    final, hidden = _forward(model, f, p.input_ids, p.mask, p.need_hidden, causal=kind == "lm")
    if p.need_hidden and len(hidden) != n_layers + 1:
        raise RuntimeError(f"expected {n_layers + 1} hidden states, got {len(hidden)}")
    norm = norm_of(model, p.input_ids, norm_factor, hidden[0] if p.need_hidden else None)
    # The last layer reuses the model's own f(h^(L)); lower ones go through f, once.
    with eval_mode(model):
        lens = [(l, final if l == n_layers else f(hidden[l])) for l in p.layers]
    arange = torch.arange(p.mask.shape[1], device=p.mask.device)[None, :]
    out = []
    for choice in explain:
        target, foil, at = split_choice(choice, position)
        t = explained_position(p.mask, at)
        valid = p.mask & (arange <= t[:, None])
        out.append(choice_scores(kind, head, final, lens, valid, norm, t, target, foil))
    return out
