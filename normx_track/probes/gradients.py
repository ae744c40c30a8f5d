"""The gradient baselines of the faithfulness probes (DESIGN.md "Faithfulness"), from
Captum, set up as the authors ran them: Saliency, InputXGradient and IntegratedGradients
of the logit of y at t with respect to the input word embeddings, reduced to one score per
position by the L1 norm over the embedding dimension (or the signed sum), IG from an
all-zero embedding baseline.
"""
from __future__ import annotations

import inspect
from typing import Sequence

import torch
from torch import Tensor, nn

from normx_track.keys import CAPTUM_METHODS
from normx_track.probes.common import nanmean

__all__ = ["GRADIENT_REDUCTIONS", "completeness_error", "gradient_attributions", "logits_at",
           "per_position", "supports_logits_to_keep"]

GRADIENT_REDUCTIONS = ("l1", "sum")


def supports_logits_to_keep(model: nn.Module) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (only those positions go
    through the head: [B, V] logits instead of [B, T, V])."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def logits_at(model: nn.Module, t: Tensor, keep: bool, **inputs) -> Tensor:
    """The model's logits at position t of each row [B, V] (float32). Rows are
    right-padded, so they need no attention mask (`padding_inputs`)."""
    if keep:  # only the needed positions go through the head
        positions = torch.unique(t)
        logits = model(**inputs, logits_to_keep=positions).logits
        return logits[torch.arange(len(t), device=t.device),
                      torch.searchsorted(positions, t)].float()
    return model(**inputs).logits[torch.arange(len(t), device=t.device), t].float()


def gradient_attributions(model: nn.Module, input_ids: Tensor, t: Tensor, y: Tensor,
                          methods: Sequence[str] = CAPTUM_METHODS, *, ig_steps: int = 50,
                          reduction: str | None = "l1",
                          deltas: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Captum's gradient baselines for the logit of ``y`` at position ``t`` of each
    (right-padded) row, w.r.t. the input word embeddings, as the authors ran them:
    Saliency, InputXGradient, IntegratedGradients from an all-zero embedding baseline in
    ``ig_steps`` steps. ``reduction``: "l1" over the embedding dimension ([B, T]), "sum"
    (signed, [B, T]) or None (the per-dimension attributions, [B, T, d]). ``deltas``: a
    dict that receives Captum's convergence delta of IG per row,
    sum(IG) - (F(x) - F(baseline))."""
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    keep = supports_logits_to_keep(model)

    def logits(embeds, t_):
        return logits_at(model, t_, keep, inputs_embeds=embeds)

    embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    kw = dict(target=y, additional_forward_args=(t,))
    out: dict[str, Tensor] = {}
    if "saliency" in methods:  # |gradient| (Captum's default), so L1 is its sum
        out["saliency"] = Saliency(logits).attribute(embeds, abs=reduction == "l1", **kw)
    if "input_x_gradient" in methods:
        out["input_x_gradient"] = InputXGradient(logits).attribute(embeds, **kw)
    if "integrated_gradients" in methods:
        out["integrated_gradients"], delta = IntegratedGradients(logits).attribute(
            embeds, baselines=torch.zeros_like(embeds), n_steps=ig_steps,
            internal_batch_size=max(len(input_ids), 1), return_convergence_delta=True, **kw)
        if deltas is not None:
            deltas["integrated_gradients"] = delta.detach()
    if reduction is None:
        return {m: a.detach() for m, a in out.items()}
    return {m: per_position(a, reduction).detach() for m, a in out.items()}


def completeness_error(ig: Tensor, delta: Tensor) -> float:
    """Mean |sum(IG) - (F(x) - F(0))| / |F(x) - F(0)| over rows, F the logit of y at t:
    how far the 50-step integral is from exact (large where the path from an all-zero
    embedding crosses a norm's singularity, as in models without position embeddings).
    Captum's convergence delta is the numerator, so F(x) - F(0) = sum(IG) - delta."""
    delta = delta.double()
    change = ig.double().sum(tuple(range(1, ig.dim()))) - delta
    return nanmean((delta.abs() / change.abs()).cpu().numpy())


def per_position(attributions: Tensor, reduction: str) -> Tensor:
    """[..., d] attributions -> one score per position: the L1 norm over the embedding
    dimension ("l1", the authors' choice) or the signed sum ("sum")."""
    return (attributions.abs() if reduction == "l1" else attributions).sum(-1)
