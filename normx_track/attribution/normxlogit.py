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
``embedding_norms(model) -> {"input": [V], ("output": [V])}``
``final_norm(model)``                                the resolved ``f``.

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
* BERT/RoBERTa-style encoders (masked LMs, sequence classifiers) go to
  `normx_track.attribution.masked` (their explained position: a [MASK], or [CLS]).
* Pass the unwrapped Hugging Face model. Heads that post-process logits (soft-capping,
  logit scaling) are not modelled: LogAt is the plain ``U f(h)``.

Hugging Face's ``hidden_states[-1]`` is already post-final-norm for GPT-2, GPT-NeoX and
Llama (checked on transformers 5.24; ``tests/test_attribution.py`` pins it, and that the
model's logits are ``U f(h^(L))`` with f applied once). This module does not rely on it:
for the last layer it captures the output of ``f`` with a forward hook (f applied exactly
once, by the model), and it applies ``f`` itself to ``hidden_states[l]`` for l < L.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import torch
from torch import Tensor, nn

__all__ = [
    "AttributionScores",
    "attribute",
    "context_size",
    "embedding_norms",
    "final_norm",
    "logat",
    "model_device",
    "normxlogit",
]

Ids = Union[int, Sequence[int], Tensor, None]
Layers = Union[str, int, Sequence[int]]

# Paths of the final norm, relative to ``model.base_model``: GPT-2/GPT-J, GPT-NeoX/Phi,
# Llama/Mistral/Qwen, Mamba-like, OPT.
_FINAL_NORM_PATHS = (
    "ln_f", "final_layer_norm", "norm", "norm_f", "decoder.final_layer_norm"
)
_CLASSIFIER_HEADS = ("score", "classifier")
_NORM_FACTORS = ("word_embedding", "embedding_output")


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
    # f(h^(L)) at every position, as the model computed it [B, T, d] (shared by the choices
    # of one pass): e.g. the log-probability of a continuation read from the same pass.
    final_states: Tensor | None = None


# --------------------------------------------------------------------------- resolvers


def _get_path(module: nn.Module, path: str) -> object:
    for name in path.split("."):
        module = getattr(module, name, None)
    return module


def final_norm(model: nn.Module) -> nn.Module:
    """The normalisation applied right before the prediction head (``f``)."""
    base = getattr(model, "base_model", model)
    for path in _FINAL_NORM_PATHS:
        mod = _get_path(base, path)
        if isinstance(mod, nn.Module):
            return mod
    raise ValueError(
        f"cannot find the final norm of {type(model).__name__}: tried "
        f"{', '.join(_FINAL_NORM_PATHS)} on {type(base).__name__}"
    )


def _head(model: nn.Module) -> tuple[str, nn.Module]:
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


def model_device(model: nn.Module) -> torch.device:
    """Where the model's input embedding (and so its inputs) lives."""
    return model.get_input_embeddings().weight.device


def context_size(model: nn.Module) -> int | None:
    """The most positions the model takes (GPT-2 ``n_positions``, else
    ``max_position_embeddings``); None when its config says neither."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


def _num_layers(model: nn.Module) -> int:
    cfg = model.config
    n = getattr(cfg, "num_hidden_layers", None)
    return n if n is not None else cfg.n_layer


# --------------------------------------------------------------------------- norms


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


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    # Restore exactly the modules that were training (model.train() would also flip
    # submodules a user had frozen in eval mode).
    training = [m for m in model.modules() if m.training]
    if training:  # nested calls (the probes' own) find nothing to switch
        model.eval()
    try:
        yield
    finally:
        for m in training:
            m.training = True


@contextlib.contextmanager
def _capture_output(module: nn.Module) -> Iterator[list]:
    outputs: list = []
    handle = module.register_forward_hook(lambda mod, args, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


def _as_ids(x: Ids, batch: int, device: torch.device, what: str) -> Tensor | None:
    if x is None:
        return None
    ids = torch.as_tensor(x, device=device, dtype=torch.long).reshape(-1)
    if ids.numel() == 1:
        ids = ids.expand(batch)
    if ids.numel() != batch:
        raise ValueError(f"{what} must be a scalar or have one entry per row ({batch})")
    return ids


def _explained_position(mask: Tensor, position: Ids) -> Tensor:
    if not mask.any(dim=1).all():
        raise ValueError("every row needs at least one real token")
    arange = torch.arange(mask.shape[1], device=mask.device)
    if position is None:  # last real token; works for left and right padding
        return (mask * arange).argmax(dim=1)
    t = _as_ids(position, mask.shape[0], mask.device, "position") % mask.shape[1]
    if not mask.gather(1, t[:, None]).all():
        raise ValueError("position must point at a real (non-pad) token")
    return t


def _layer_ids(layers: Layers, n_layers: int) -> tuple[int, ...]:
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


# --------------------------------------------------------------------------- main entry


def padding_inputs(mask: Tensor | None, causal: bool = True) -> dict:
    """The padding arguments of a forward pass over rows with attention mask `mask`.
    Right-padded (or unpadded) rows of a causal LM need none: real positions never see the
    pads after them and their position ids are 0.., so the mask can go (the mask-free
    attention path is several times faster; pad positions are never read). Otherwise the
    mask, with position ids rebuilt from it (any padding then gives the same scores)."""
    if mask is None or (causal and bool((mask[:, 1:] <= mask[:, :-1]).all())):
        return {}
    return dict(attention_mask=mask.long(), position_ids=(mask.long().cumsum(1) - 1).clamp(min=0))


def _forward(model, f, input_ids, mask, need_hidden: bool, causal: bool):
    """One backbone pass -> (f(h^(L)) as the model computed it, hidden_states or None)."""
    padding = padding_inputs(mask, causal)
    with eval_mode(model), _capture_output(f) as captured:
        out = model.base_model(  # the backbone: never builds the full [B,T,V] head output
            input_ids=input_ids,
            output_hidden_states=need_hidden,
            use_cache=False,
            **padding,  # else padding-invariant: position ids rebuilt from the mask
        )
    if len(captured) != 1:
        raise RuntimeError(f"final norm ran {len(captured)} times in one forward pass")
    return captured[0], out.hidden_states


def _scorer(kind: str, head: nn.Module, final_t: Tensor, target: Ids, foil: Ids):
    """(model output at t [B, V|C], target ids [B], foil ids [B] | None, z -> LogAt [B,T])."""
    B, device = final_t.shape[0], final_t.device
    if kind == "lm":
        bias = getattr(head, "bias", None)
        logits = nn.functional.linear(
            final_t.float(), head.weight.float(), None if bias is None else bias.float()
        )
    else:
        logits = head(final_t).float()
    target_ids = _as_ids(target, B, device, "target")
    foil_ids = _as_ids(foil, B, device, "foil")
    if kind == "regression":
        if target_ids is not None or foil_ids is not None:
            raise ValueError("target/foil do not apply to a regression head")
        no_target = torch.full((B,), -1, device=device, dtype=torch.long)
        return logits, no_target, None, _regression_scorer(head, logits)
    if target_ids is None:
        target_ids = logits.argmax(-1)
    make = _lm_scorer if kind == "lm" else _classifier_scorer
    return logits, target_ids, foil_ids, make(head, target_ids, foil_ids)


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
    ``position``: explained position t per row (default: last real token).
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
    from normx_track.attribution import masked  # late: masked builds on this module
    if masked.is_encoder(model):  # BERT/RoBERTa masked LMs and classifiers
        return masked.attribute_masked_many(
            model, input_ids, [(*c, position) if len(c) == 2 else tuple(c) for c in explain],
            attention_mask, layers, norm_factor)
    if norm_factor not in _NORM_FACTORS:
        raise ValueError(f"norm_factor must be one of {_NORM_FACTORS}, got {norm_factor!r}")
    kind, head = _head(model)
    f = final_norm(model)
    E = model.get_input_embeddings().weight
    input_ids = input_ids.to(E.device)
    B, T = input_ids.shape
    mask = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask is not None:
        mask = attention_mask.to(E.device).bool()
    n_layers = _num_layers(model)
    layer_ids = _layer_ids(layers, n_layers)
    # hidden_states are only needed for lower layers or the embedding-output norm.
    need_hidden = any(l < n_layers for l in layer_ids) or norm_factor == "embedding_output"

    final, hidden = _forward(model, f, input_ids, mask, need_hidden, causal=kind == "lm")
    if need_hidden and len(hidden) != n_layers + 1:
        raise RuntimeError(f"expected {n_layers + 1} hidden states, got {len(hidden)}")
    emb = E[input_ids] if norm_factor == "word_embedding" else hidden[0]
    norm = torch.linalg.vector_norm(emb.float(), dim=-1)
    # The last layer reuses the model's own f(h^(L)); lower ones go through f, once.
    with eval_mode(model):
        lens = [(l, final if l == n_layers else f(hidden[l])) for l in layer_ids]
    out = []
    for choice in explain:
        target, foil, at = (*choice, position) if len(choice) == 2 else choice
        t = _explained_position(mask, at)
        valid = mask & (torch.arange(T, device=E.device)[None, :] <= t[:, None])
        out.append(_attribution(kind, head, final, lens, valid, norm, t, target, foil))
    return out


def _attribution(kind: str, head: nn.Module, final: Tensor, lens: list[tuple[int, Tensor]],
                 valid: Tensor, norm: Tensor, t: Tensor, target: Ids, foil: Ids) -> AttributionScores:
    """One (target, foil, position) choice's scores from the shared forward pass."""
    final_t = final[torch.arange(final.shape[0], device=final.device), t]
    logits, target_ids, foil_ids, score = _scorer(kind, head, final_t, target, foil)
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
