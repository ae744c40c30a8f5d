"""The masked path of `normxlogit.attribute`: bidirectional encoders, BERT / RoBERTa masked
LMs and sequence classifiers (DESIGN.md "Masked language models"). One forward pass, no
gradients.

    LogAt_i(y)      = H(h_i^(L))[y]        H the WHOLE head; layer l: H(h_i^(l))
    NormXLogit_i(y) = ||E[x_i]||_2 * LogAt_i(y)    (or ||h_i^(0)||_2, ``embedding_output``:
                                                    the embedding layer's output after its
                                                    LayerNorm, as the authors' code)

Heads
-----
* Masked LM: BERT ``cls.predictions`` / RoBERTa ``lm_head`` (dense, activation,
  LayerNorm, decoder + bias). The head's own forward runs with its decoder swapped for an
  identity, so the transform is exactly the model's and the decoder is applied to the
  gathered rows ``U[y]`` only (no [B, T, V] logits).
* Sequence classifier: position i's state goes through the head in the place of [CLS]:
  BERT ``classifier(pooler(h_i))``, RoBERTa's classification head (dense, tanh, out_proj).
  Both pool "the first token", so h_i is fed to them as a one-token sequence. The
  explained position is [CLS] (0) and it is not attributed.
  Regression heads: LogAt_i = -|head(h_i) - y_hat|, as for causal classifiers.

Conventions (shared with the causal path: `scores.AttributionScores`, the same arguments)
-----------------------------------------------------------------------------------
* The explained position t of a masked LM is a [MASK] position and must be given (the
  model does not know its tokenizer's mask id); y defaults to the argmax there.
* Every real position but t is attributed (bidirectional context), special tokens
  included: callers that do not rank specials drop them (``special_mask``).
* Rows may be right-padded (``attention_mask``); position ids are the model's own
  (RoBERTa derives them from the pads, BERT counts from 0).
* ``final_states`` holds the head's input to the decoder at every position (the MLM
  head's transform of h^(L)), so ``model.get_output_embeddings()(final_states)`` are the
  model's logits, as for a causal LM's f(h^(L)).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from normx_track.attribution.scores import (AttributionScores, Ids, Layers, choice_scores,
                                            explained_position, norm_of, prepare,
                                            split_choice)
from normx_track.modeling import encoder_context_size, eval_mode, get_path

__all__ = ["attribute_masked", "attribute_masked_many", "encoder_context_size", "encoder_head",
           "is_encoder", "is_masked_lm"]

# The whole MLM head, relative to the model: BERT, RoBERTa (its ``decoder`` is U).
_MLM_HEADS = ("cls.predictions", "lm_head")


def _mlm_head(model: nn.Module) -> nn.Module | None:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for path in _MLM_HEADS:
        head = get_path(model, path)
        # GPT-2's ``lm_head`` is U itself; an MLM head holds U as its ``decoder``.
        if isinstance(head, nn.Module) and out is not None and getattr(head, "decoder", None) is out:
            return head
    return None


def _is_post_ln_encoder(model: nn.Module) -> bool:
    """BERT-family backbone: embeddings with their own LayerNorm and an ``encoder``."""
    base = getattr(model, "base_model", model)
    emb = getattr(base, "embeddings", None)
    return emb is not None and hasattr(emb, "LayerNorm") and hasattr(base, "encoder")


def is_masked_lm(model: nn.Module) -> bool:
    """A BERT/RoBERTa-style masked LM (an MLM head holding the output embeddings)."""
    return _is_post_ln_encoder(model) and _mlm_head(model) is not None


def is_encoder(model: nn.Module) -> bool:
    """A masked LM or a sequence classifier on a BERT/RoBERTa-style encoder: the models
    this path handles."""
    return _is_post_ln_encoder(model) and (
        _mlm_head(model) is not None or isinstance(getattr(model, "classifier", None), nn.Module))


@contextlib.contextmanager
def _without_decoder(head: nn.Module) -> Iterator[None]:
    decoder = head._modules["decoder"]
    head._modules["decoder"] = nn.Identity()
    try:
        yield
    finally:
        head._modules["decoder"] = decoder


class _PositionwiseClassifier(nn.Module):
    """The classification head on every position in the place of [CLS]: [..., d] -> [..., C].
    The model's pooler/head read the first token, so each state is a one-token sequence."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.classifier = model.classifier
        self.pooler = getattr(model.base_model, "pooler", None)  # BERT; RoBERTa has none
        if isinstance(self.classifier, nn.Linear) and self.pooler is None:
            raise ValueError(f"{type(model).__name__}: a linear classifier needs the "
                             f"backbone's pooler (add_pooling_layer=True)")

    def forward(self, z: Tensor) -> Tensor:
        seq = z.reshape(-1, 1, z.shape[-1])
        if isinstance(self.classifier, nn.Linear):  # BERT: classifier(pooler(h))
            out = self.classifier(self.pooler(seq))
        else:  # RoBERTa: the head pools features[:, 0] itself
            out = self.classifier(seq)
        return out.reshape(*z.shape[:-1], out.shape[-1])


def encoder_head(model: nn.Module) -> tuple[str, nn.Module, Callable[[Tensor], Tensor]]:
    """(kind, scorer head, transform): the head is split into a transform applied to the
    hidden states and a last part the shared scorers apply (U for "lm", the whole
    position-wise head and an identity transform for "classification"/"regression")."""
    mlm = _mlm_head(model)
    if mlm is not None:
        def transform(h: Tensor) -> Tensor:
            with _without_decoder(mlm):
                return mlm(h)
        return "lm", model.get_output_embeddings(), transform
    if not isinstance(getattr(model, "classifier", None), nn.Module):
        raise ValueError(f"{type(model).__name__} has neither an MLM head "
                         f"({'/'.join(_MLM_HEADS)}) nor a classifier")
    cfg = model.config
    regression = cfg.num_labels == 1 or getattr(cfg, "problem_type", None) == "regression"
    return ("regression" if regression else "classification"), \
        _PositionwiseClassifier(model), (lambda h: h)


@torch.no_grad()
def attribute_masked(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
                     target: Ids = None, foil: Ids = None, layers: Layers = "last",
                     norm_factor: str = "word_embedding", position: Ids = None
                     ) -> AttributionScores:
    """LogAt, NormXLogit and the norm factor of every real position but t, for the
    prediction at the [MASK] position ``position`` (masked LM; a scalar or one per row) or
    the classifier's output (``position`` defaults to [CLS], 0). The arguments of
    `normxlogit.attribute`, in its order."""
    return attribute_masked_many(model, input_ids, attention_mask, [(target, foil)], layers,
                                 norm_factor, position)[0]


@torch.no_grad()
def attribute_masked_many(model: nn.Module, input_ids: Tensor,
                          attention_mask: Tensor | None = None,
                          explain: Sequence[tuple] = ((None, None),), layers: Layers = "last",
                          norm_factor: str = "word_embedding", position: Ids = None
                          ) -> list[AttributionScores]:
    """`attribute_masked` for several ``(target, foil)`` or ``(target, foil, position)``
    choices from the same forward pass (e.g. the good word, and good against bad, at one
    mask), as `normxlogit.attribute_many`."""
    kind, head, transform = encoder_head(model)
    n_layers = model.config.num_hidden_layers
    p = prepare(model, input_ids, attention_mask, layers, norm_factor, n_layers)
    choices = [split_choice(c, position) for c in explain]
    positions = [_choice_position(kind, p.mask, at) for _, _, at in choices]
    with eval_mode(model):  # the heads' dropout off too
        out = model.base_model(input_ids=p.input_ids, attention_mask=p.mask.long(),
                               output_hidden_states=p.need_hidden)
        # Post-LN encoders have no final norm: the head reads h^(L) as the encoder left it.
        final = transform(out.last_hidden_state)
        lens = [(l, final if l == n_layers else transform(out.hidden_states[l]))
                for l in p.layers]
        norm = norm_of(model, p.input_ids, norm_factor,
                       out.hidden_states[0] if p.need_hidden else None)
        arange = torch.arange(p.mask.shape[1], device=p.mask.device)[None, :]
        return [choice_scores(kind, head, final, lens, p.mask & (arange != t[:, None]), norm,
                              t, target, foil)
                for (target, foil, _), t in zip(choices, positions)]


def _choice_position(kind: str, mask: Tensor, position: Ids) -> Tensor:
    if position is None:
        if kind == "lm":
            raise ValueError("a masked LM explains a [MASK] position: pass position")
        position = 0  # classifiers predict at [CLS]
    return explained_position(mask, position)
