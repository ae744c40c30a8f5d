"""Model plumbing shared by the attribution methods and the probes: where a Hugging Face
model lives, how many positions it takes, how a padded batch goes through it, its final
norm ``f``, and the row norms of its embeddings (DESIGN.md "Definitions").

Nothing here scores anything: `normx_track.attribution` builds NormXLogit / LogAt on it,
the probes run their passes with it, and the tracker reads the norms.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

__all__ = ["capture_output", "context_size", "embedding_norms", "encoder_context_size",
           "eval_mode", "final_norm", "model_device", "num_layers", "padding_inputs",
           "row_norms"]

# Paths of the final norm, relative to ``model.base_model``: GPT-2/GPT-J, GPT-NeoX/Phi,
# Llama/Mistral/Qwen, Mamba-like, OPT.
FINAL_NORM_PATHS = ("ln_f", "final_layer_norm", "norm", "norm_f", "decoder.final_layer_norm")


def get_path(module: nn.Module, path: str) -> object:
    """``module.a.b`` for ``path`` "a.b"; None where a part is missing."""
    for name in path.split("."):
        module = getattr(module, name, None)
    return module


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off for the duration. Restores exactly the modules that were training
    (model.train() would also flip submodules a user had frozen in eval mode)."""
    training = [m for m in model.modules() if m.training]
    if training:  # nested calls (the probes' own) find nothing to switch
        model.eval()
    try:
        yield
    finally:
        for m in training:
            m.training = True


def model_device(model: nn.Module) -> torch.device:
    """Where the model's input embedding (and so its inputs) lives."""
    return model.get_input_embeddings().weight.device


def context_size(model: nn.Module) -> int | None:
    """The most positions the model takes (GPT-2 ``n_positions``, else
    ``max_position_embeddings``); None when its config says neither."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


def encoder_context_size(model: nn.Module) -> int | None:
    """The most positions a BERT/RoBERTa encoder takes: ``max_position_embeddings``, less
    RoBERTa's offset (its position ids start after the pad id)."""
    size = getattr(model.config, "max_position_embeddings", None)
    padding_idx = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
    if size is None or padding_idx is None:
        return size
    return size - padding_idx - 1


def num_layers(model: nn.Module) -> int:
    """L, the number of transformer layers (hidden states 0..L)."""
    cfg = model.config
    n = getattr(cfg, "num_hidden_layers", None)
    return n if n is not None else cfg.n_layer


def padding_inputs(mask: Tensor | None, causal: bool = True) -> dict:
    """The padding arguments of a forward pass over rows with attention mask `mask`.
    Right-padded (or unpadded) rows of a causal LM need none: real positions never see the
    pads after them and their position ids are 0.., so the mask can go (the mask-free
    attention path is several times faster; pad positions are never read). Otherwise the
    mask, with position ids rebuilt from it (any padding then gives the same scores)."""
    if mask is None or (causal and bool((mask[:, 1:] <= mask[:, :-1]).all())):
        return {}
    return dict(attention_mask=mask.long(), position_ids=(mask.long().cumsum(1) - 1).clamp(min=0))


def final_norm(model: nn.Module) -> nn.Module:
    """The normalisation applied right before the prediction head (``f``)."""
    base = getattr(model, "base_model", model)
    for path in FINAL_NORM_PATHS:
        mod = get_path(base, path)
        if isinstance(mod, nn.Module):
            return mod
    raise ValueError(
        f"cannot find the final norm of {type(model).__name__}: tried "
        f"{', '.join(FINAL_NORM_PATHS)} on {type(base).__name__}"
    )


@contextlib.contextmanager
def capture_output(module: nn.Module) -> Iterator[list]:
    """The outputs ``module`` produces inside the block, in call order (a forward hook:
    e.g. f(h^(L)) exactly as the model computed it)."""
    outputs: list = []
    handle = module.register_forward_hook(lambda mod, args, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


def row_norms(matrix: Tensor) -> Tensor:
    """Row L2 norms in float32, whatever the stored dtype (replay's norms-only reads call
    this on the raw tensors, so they equal the loaded model's exactly)."""
    return torch.linalg.vector_norm(matrix.detach(), dim=1, dtype=torch.float32)


def embedding_norms(model: nn.Module) -> dict[str, Tensor]:
    """Row L2 norms of E ("input", [V]) and, when untied, of U ("output", [V]); float32."""
    E = model.get_input_embeddings().weight
    norms = {"input": row_norms(E)}
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and out.weight.data_ptr() != E.data_ptr():  # untied: distinct storage
        norms["output"] = row_norms(out.weight)
    return norms
