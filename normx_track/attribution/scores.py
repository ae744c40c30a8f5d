"""What the causal and the masked paths share once their forward pass is done: the
`AttributionScores` they return, the inputs' checks (explained position, layers, norm
factor) and the scorers that turn head inputs into LogAt (DESIGN.md "Definitions").

A path gives `choice_scores` the head inputs it computed (``final`` = the head's input at
the last layer, ``lens`` = the same at the requested layers), the norm factor per
position and which positions are attributed; the scorer of one (target, foil) choice
reads LogAt off them, so several choices share one pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
from torch import Tensor, nn

__all__ = ["AttributionScores", "Ids", "Layers", "NORM_FACTORS", "Prepared", "as_ids",
           "check_norm_factor", "choice_scores", "explained_position", "layer_ids", "norm_of", "prepare",
           "split_choice"]

Ids = Union[int, Sequence[int], Tensor, None]
Layers = Union[str, int, Sequence[int]]
NORM_FACTORS = ("word_embedding", "embedding_output")


@dataclass
class AttributionScores:
    """Scores from one forward pass. [B, T] tensors are NaN where ``mask`` is False."""

    logat: Tensor  # [B, T] last layer
    normxlogit: Tensor  # [B, T]
    norm: Tensor  # [B, T] the norm factor alone
    target: Tensor  # [B] explained token id (LM) or class (classifier); -1 for regression
    position: Tensor  # [B] explained position t
    logits: Tensor  # [B, V] (or [B, C]) the model's output at t, float32
    mask: Tensor  # [B, T] bool, attributed positions (real tokens, i <= t)
    foil: Tensor | None = None  # [B] when contrastive
    layers: tuple[int, ...] = ()  # layer indices of the per-layer stacks
    logat_layers: Tensor | None = None  # [len(layers), B, T]
    normxlogit_layers: Tensor | None = None  # [len(layers), B, T]
    # The head's input at every position, as the model computed it [B, T, d] (shared by
    # the choices of one pass): e.g. the log-probability of a continuation read from it.
    final_states: Tensor | None = None


# --------------------------------------------------------------------------- inputs


def as_ids(x: Ids, batch: int, device: torch.device, what: str) -> Tensor | None:
    """``x`` as [batch] long ids: a scalar is broadcast, else one entry per row."""
    if x is None:
        return None
    ids = torch.as_tensor(x, device=device, dtype=torch.long).reshape(-1)
    if ids.numel() == 1:
        ids = ids.expand(batch)
    if ids.numel() != batch:
        raise ValueError(f"{what} must be a scalar or have one entry per row ({batch})")
    return ids


def explained_position(mask: Tensor, position: Ids) -> Tensor:
    """t per row: ``position`` (negative counts from the end), else the last real token
    (works for left and right padding)."""
    if not mask.any(dim=1).all():
        raise ValueError("every row needs at least one real token")
    arange = torch.arange(mask.shape[1], device=mask.device)
    if position is None:
        return (mask * arange).argmax(dim=1)
    t = as_ids(position, mask.shape[0], mask.device, "position") % mask.shape[1]
    if not mask.gather(1, t[:, None]).all():
        raise ValueError("position must point at a real (non-pad) token")
    return t


def check_norm_factor(norm_factor: str) -> None:
    if norm_factor not in NORM_FACTORS:
        raise ValueError(f"norm_factor must be one of {NORM_FACTORS}, got {norm_factor!r}")


def layer_ids(layers: Layers, n_layers: int) -> tuple[int, ...]:
    """"last" -> (), "all" -> 0..L, else the indices (negative ok) checked and made >= 0."""
    if layers == "last":
        return ()
    if layers == "all":
        return tuple(range(n_layers + 1))
    ids = [layers] if isinstance(layers, int) else list(layers)
    out = []
    for l in ids:
        if not -(n_layers + 1) <= l <= n_layers:
            raise ValueError(f"layer {l} out of range for {n_layers} layers (0..{n_layers})")
        out.append(l % (n_layers + 1))
    return tuple(out)


@dataclass
class Prepared:
    """A call's checked inputs, on the model's device."""

    input_ids: Tensor  # [B, T]
    mask: Tensor  # [B, T] bool, real tokens
    layers: tuple[int, ...]
    need_hidden: bool  # hidden states are needed: lower layers, or the embedding output


def prepare(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
            layers: Layers, norm_factor: str, n_layers: int) -> Prepared:
    """The checks both paths make before their forward pass."""
    check_norm_factor(norm_factor)
    device = model.get_input_embeddings().weight.device
    input_ids = input_ids.to(device)
    mask = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask is not None:
        # A [B] position in attention_mask's place (the old argument order of
        # attribute_masked) fails here, not silently.
        if tuple(torch.as_tensor(attention_mask).shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask must have input_ids' shape "
                             f"{tuple(input_ids.shape)}; the explained position is the "
                             f"`position` keyword")
        mask = attention_mask.to(device).bool()
    ids = layer_ids(layers, n_layers)
    need_hidden = any(l < n_layers for l in ids) or norm_factor == "embedding_output"
    return Prepared(input_ids, mask, ids, need_hidden)


def norm_of(model: nn.Module, input_ids: Tensor, norm_factor: str,
            embedding_output: Tensor | None) -> Tensor:
    """The norm factor per position [B, T], float32: ||E[x_i]|| or ||h_i^(0)||."""
    emb = (model.get_input_embeddings().weight[input_ids] if norm_factor == "word_embedding"
           else embedding_output)
    return torch.linalg.vector_norm(emb.float(), dim=-1)


def split_choice(choice: tuple, position: Ids) -> tuple[Ids, Ids, Ids]:
    """(target, foil, position) of a 2- or 3-entry choice; ``position`` for a 2-entry one."""
    return (*choice, position) if len(choice) == 2 else tuple(choice)


# --------------------------------------------------------------------------- scorers


def _lm_scorer(U: nn.Module, target: Tensor, foil: Tensor | None):
    """z [B,T,d] -> (U z)[y] [B,T] from the gathered rows U[y]: no [B,T,V] logits."""
    w = U.weight[target].float()  # [B, d]
    b = U.bias[target].float() if getattr(U, "bias", None) is not None else None
    if foil is not None:
        w = w - U.weight[foil].float()
        b = b - U.bias[foil].float() if b is not None else None

    def score(z: Tensor) -> Tensor:
        s = torch.einsum("btd,bd->bt", z.float(), w)
        return s + b[:, None] if b is not None else s

    return score


def _classifier_scorer(head: nn.Module, target: Tensor, foil: Tensor | None):
    def score(z: Tensor) -> Tensor:
        s = head(z).float()  # [B, T, C]; C is small, so the full output is fine
        out = s.gather(2, target[:, None, None].expand(-1, s.shape[1], 1)).squeeze(2)
        if foil is not None:
            out = out - s.gather(2, foil[:, None, None].expand(-1, s.shape[1], 1)).squeeze(2)
        return out

    return score


def _regression_scorer(head: nn.Module, y_hat: Tensor):
    def score(z: Tensor) -> Tensor:
        return -(head(z).float() - y_hat[:, None, :]).abs().sum(-1)

    return score


def scorer(kind: str, head: nn.Module, final_t: Tensor, target: Ids, foil: Ids
           ) -> tuple[Tensor, Tensor, Tensor | None, Callable[[Tensor], Tensor]]:
    """(model output at t [B, V|C], target ids [B], foil ids [B] | None, z -> LogAt [B,T]).
    ``kind``: "lm" (``head`` is U), "classification" or "regression" (the whole head)."""
    B, device = final_t.shape[0], final_t.device
    if kind == "lm":
        bias = getattr(head, "bias", None)
        logits = nn.functional.linear(
            final_t.float(), head.weight.float(), None if bias is None else bias.float()
        )
    else:
        logits = head(final_t).float()
    target_ids = as_ids(target, B, device, "target")
    foil_ids = as_ids(foil, B, device, "foil")
    if kind == "regression":
        if target_ids is not None or foil_ids is not None:
            raise ValueError("target/foil do not apply to a regression head")
        no_target = torch.full((B,), -1, device=device, dtype=torch.long)
        return logits, no_target, None, _regression_scorer(head, logits)
    if target_ids is None:
        target_ids = logits.argmax(-1)
    make = _lm_scorer if kind == "lm" else _classifier_scorer
    return logits, target_ids, foil_ids, make(head, target_ids, foil_ids)


def choice_scores(kind: str, head: nn.Module, final: Tensor, lens: list[tuple[int, Tensor]],
                  valid: Tensor, norm: Tensor, t: Tensor, target: Ids, foil: Ids
                  ) -> AttributionScores:
    """One (target, foil, position) choice's scores from the shared forward pass."""
    final_t = final[torch.arange(final.shape[0], device=final.device), t]
    logits, target_ids, foil_ids, score = scorer(kind, head, final_t, target, foil)
    nan = torch.tensor(float("nan"), device=final.device)
    norm = torch.where(valid, norm, nan)
    last = torch.where(valid, score(final), nan)
    per_layer = None
    if lens:
        per_layer = torch.stack([last if z is final else torch.where(valid, score(z), nan)
                                 for _, z in lens])
    return AttributionScores(
        logat=last,
        normxlogit=norm * last,
        norm=norm,
        target=target_ids,
        position=t,
        logits=logits,
        mask=valid,
        final_states=final,
        foil=foil_ids,
        layers=tuple(l for l, _ in lens),
        logat_layers=per_layer,
        normxlogit_layers=None if per_layer is None else norm * per_layer,
    )
