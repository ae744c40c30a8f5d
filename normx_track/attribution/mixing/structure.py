"""Where the parts the context-mixing methods read sit in each supported architecture,
and the one hooked forward pass that records them.

Supported (transformers' module layout; the model is found by its base model's modules,
so a task head on top does not matter):

    structure  models                                norm   residual           causal
    gpt2       GPT2LMHeadModel, GPT2Model, ...       pre    sequential         yes
    gpt_neox   GPTNeoXForCausalLM, ...               pre    parallel or not    yes
    llama      LlamaForCausalLM (and the same layout: pre (RMS) sequential  yes
               ``self_attn.{v,o}_proj`` with grouped-query attention)
    bert       BertForMaskedLM, RobertaForMaskedLM,  post   sequential         no
               their sequence classifiers

ALTI and GlobEnc read the output projection and the residual directly, so they need the
layout exactly: for the ``llama`` structure only the model types in `SPLIT_MODEL_TYPES`
(whose layers add the attention output straight onto the residual stream; Gemma 2/3-style
extra norms around the sublayers would break the split) — only Llama itself is tested.
Raw attention, rollout and Value Zeroing need only the probabilities / the value
projection and take any model of the layout.

For every layer l the pass records (all float32, detached):
    ``x``      [B, T, d]         the layer's input hidden state h^(l-1)
    ``probs``  [B, H, T, T]      the attention probabilities (eager attention)
    ``values`` [B, H, T, dh]     the value vectors v_{h,j} as the heads read them (the value
                                 projection's output, bias included; for grouped-query
                                 attention the shared key/value head repeated per head)
    ``attn``   [B, T, d]         the attention sub-block's output after the output
                                 projection (its bias included), before any residual
    ``output`` [B, T, d]         the layer's output h^(l) (for GPT-2's last layer: before ln_f)
    pre-LN only:  ``mlp``  [B, T, d]  the MLP's output
    post-LN only: ``pre_ln1``, ``ln1`` (the attention sub-block's LayerNorm input / output),
                  ``ffn`` (the FFN's output before the residual), ``pre_ln2``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

from torch import Tensor, nn

from normx_track.modeling import padding_inputs

__all__ = ["SPLIT_MODEL_TYPES", "Structure", "UnsupportedModel", "body", "check_split",
           "eager_attention", "forward_inputs", "record", "structure_of"]

# Llama-layout model types whose layers are x + Attn(norm(x)), then x' + MLP(norm(x')).
SPLIT_MODEL_TYPES = ("llama", "mistral", "qwen2")


class UnsupportedModel(NotImplementedError):
    """The method cannot read this architecture (the message names both)."""


@dataclass(frozen=True)
class Structure:
    """One architecture's layout. ``kind`` names it (the table above)."""

    kind: str
    model_type: str
    layers: tuple[nn.Module, ...]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    causal: bool
    post_ln: bool

    # ---- the modules, per layer
    def attention(self, layer: nn.Module) -> nn.Module:
        """The module returning ``(output, probabilities)``."""
        return {"gpt2": lambda: layer.attn, "gpt_neox": lambda: layer.attention,
                "llama": lambda: layer.self_attn, "bert": lambda: layer.attention.self}[self.kind]()

    def value_module(self, layer: nn.Module) -> nn.Module:
        """The module whose output holds the value vectors."""
        return {"gpt2": lambda: layer.attn.c_attn,
                "gpt_neox": lambda: layer.attention.query_key_value,
                "llama": lambda: layer.self_attn.v_proj,
                "bert": lambda: layer.attention.self.value}[self.kind]()

    def out_proj(self, layer: nn.Module) -> tuple[Tensor, Tensor | None]:
        """W_O as [d_out, H*dh] (y = W_O z + b_O) and b_O (None when absent)."""
        if self.kind == "gpt2":  # Conv1D: y = z @ W + b, W [d_in, d_out]
            m = layer.attn.c_proj
            return m.weight.t(), m.bias
        m = {"gpt_neox": lambda: layer.attention.dense, "llama": lambda: layer.self_attn.o_proj,
             "bert": lambda: layer.attention.output.dense}[self.kind]()
        return m.weight, m.bias

    def attention_output_module(self, layer: nn.Module) -> nn.Module:
        """The module whose output is the attention sub-block's output after W_O (and b_O)."""
        if self.kind == "bert":
            return layer.attention.output.dense
        return self.attention(layer)

    def mlp(self, layer: nn.Module) -> nn.Module:
        """Pre-LN: the MLP module (its output before the residual)."""
        return layer.mlp

    def layer_norms(self, layer: nn.Module) -> tuple[nn.LayerNorm, nn.LayerNorm]:
        """Post-LN: the LayerNorm after the attention residual and the one after the FFN's."""
        return layer.attention.output.LayerNorm, layer.output.LayerNorm

    # ---- value vectors inside the value module's output [N, T, *]
    def values_from(self, out: Tensor) -> Tensor:
        """The value vectors [N, H, T, dh] (key/value heads repeated for grouped queries)."""
        N, T = out.shape[:2]
        H, dh = self.num_heads, self.head_dim
        if self.kind == "gpt2":
            v = out[..., 2 * H * dh:].reshape(N, T, H, dh)
        elif self.kind == "gpt_neox":
            v = out.reshape(N, T, H, 3 * dh)[..., 2 * dh:]
        else:
            v = out.reshape(N, T, -1, dh)
        v = v.transpose(1, 2)
        if v.shape[1] != H:  # grouped-query attention: head h reads kv head h // (H / Hkv)
            v = v.repeat_interleave(H // v.shape[1], dim=1)
        return v

    def zero_values(self, out: Tensor, rows: Tensor, positions: Tensor) -> Tensor:
        """``out`` with the value vectors of position ``positions[k]`` zeroed in batch row
        ``rows[k]``, in every head (a copy; the queries and keys are left alone)."""
        out = out.clone()
        if self.kind == "gpt2":
            out[rows, positions, 2 * self.num_heads * self.head_dim:] = 0
        elif self.kind == "gpt_neox":
            view = out.view(*out.shape[:2], self.num_heads, 3 * self.head_dim)
            view[rows, positions, :, 2 * self.head_dim:] = 0
        else:
            out[rows, positions] = 0
        return out


def _base(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def structure_of(model: nn.Module, method: str = "context mixing") -> Structure:
    """The layout of ``model``; `UnsupportedModel` naming ``method`` and the architecture
    when it is none of the supported ones."""
    base, cfg = _base(model), model.config
    mt = getattr(cfg, "model_type", "?")
    name = f"{type(model).__name__} ({mt})"
    H = cfg.num_attention_heads
    if hasattr(base, "h") and all(hasattr(b, "attn") and hasattr(b.attn, "c_attn") for b in base.h):
        if getattr(cfg, "add_cross_attention", False):
            raise UnsupportedModel(f"{method}: cross-attention GPT-2 blocks are not supported ({name})")
        return Structure("gpt2", mt, tuple(base.h), H, H, cfg.hidden_size // H, True, False)
    layers = getattr(base, "layers", None)
    if layers is not None and len(layers) and hasattr(layers[0], "attention") \
            and hasattr(layers[0].attention, "query_key_value"):
        return Structure("gpt_neox", mt, tuple(layers), H, H, cfg.hidden_size // H, True, False)
    if layers is not None and len(layers) and hasattr(layers[0], "self_attn") \
            and all(hasattr(layers[0].self_attn, p) for p in ("v_proj", "o_proj")) \
            and hasattr(layers[0], "input_layernorm") and hasattr(layers[0], "mlp"):
        dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
        kv = getattr(cfg, "num_key_value_heads", None) or H
        return Structure("llama", mt, tuple(layers), H, kv, dh, True, False)
    encoder = getattr(base, "encoder", None)
    enc_layers = getattr(encoder, "layer", None)
    if enc_layers is not None and len(enc_layers) and hasattr(enc_layers[0], "attention") \
            and hasattr(enc_layers[0].attention, "self") and hasattr(enc_layers[0], "output"):
        if getattr(cfg, "is_decoder", False):
            raise UnsupportedModel(f"{method}: BERT-style decoders are not supported ({name})")
        pe = getattr(cfg, "position_embedding_type", "absolute")
        if pe not in (None, "absolute"):
            raise UnsupportedModel(f"{method}: position_embedding_type={pe!r} is not supported ({name})")
        return Structure("bert", mt, tuple(enc_layers), H, H, cfg.hidden_size // H, False, True)
    raise UnsupportedModel(
        f"{method} is not implemented for {name}: supported are GPT-2, GPT-NeoX, Llama-style "
        "decoders and BERT/RoBERTa encoders")


def check_split(structure: Structure, method: str, model: nn.Module) -> None:
    """`UnsupportedModel` unless ALTI/GlobEnc's split is exact for this layout."""
    if structure.kind == "llama" and structure.model_type not in SPLIT_MODEL_TYPES:
        raise UnsupportedModel(
            f"{method} is not implemented for {type(model).__name__} ({structure.model_type}): "
            f"of the Llama-style layouts only {', '.join(SPLIT_MODEL_TYPES)} are split")


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Eager attention for the duration (the only implementation that returns the
    probabilities); the model's own choice is restored afterwards."""
    current = getattr(model.config, "_attn_implementation", None)
    if current == "eager" or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


def body(model: nn.Module) -> nn.Module:
    """The transformer without its task head (``model.base_model``): the methods read the
    layers only, so the head (GPT-2 small's [T, 50257] logits) is not computed."""
    return getattr(model, "base_model", model)


def forward_inputs(structure: Structure, input_ids: Tensor, mask: Tensor) -> dict:
    """The forward arguments for rows with real-position mask ``mask`` [B, T] (bool). A
    causal model gets `normx_track.modeling.padding_inputs` (position ids rebuilt from the
    mask, so any padding scores as the sequence alone); an encoder gets its attention mask
    only, and builds its own position ids (RoBERTa's start after its pad id)."""
    args = dict(input_ids=input_ids, use_cache=False)
    if structure.causal:
        args.update(padding_inputs(mask, causal=True))
    elif not bool(mask.all()):
        args["attention_mask"] = mask.long()
    return args


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


@contextlib.contextmanager
def record(structure: Structure, *, probs: bool = True, decomposition: bool = False,
           layer_calls: bool = False) -> Iterator[list[dict]]:
    """Hooks on every layer; yields one dict per layer, filled by the forward pass run
    inside the block (see the module docstring for the keys). ``layer_calls``: also keep
    each layer's call (``args``, ``kwargs``) as the model made it, for re-running it."""
    recs: list[dict] = [{} for _ in structure.layers]
    handles = []

    def keep(rec, key, value):
        rec[key] = value.detach().float()

    try:
        for layer, rec in zip(structure.layers, recs):
            def pre(mod, args, kwargs, rec=rec):
                x = args[0] if args else kwargs["hidden_states"]
                keep(rec, "x", x)
                if layer_calls:
                    rec["call"] = (args, kwargs)
            handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(layer.register_forward_hook(
                lambda m, a, out, rec=rec: keep(rec, "output", _first(out))))
            if probs or decomposition:
                def att(mod, a, out, rec=rec):
                    if out[1] is None:
                        raise RuntimeError("the attention returned no probabilities: eager "
                                           "attention is needed")
                    keep(rec, "probs", out[1])
                handles.append(structure.attention(layer).register_forward_hook(att))
            if not decomposition:
                continue
            handles.append(structure.value_module(layer).register_forward_hook(
                lambda m, a, out, rec=rec: keep(rec, "values", structure.values_from(out))))
            handles.append(structure.attention_output_module(layer).register_forward_hook(
                lambda m, a, out, rec=rec: keep(rec, "attn", _first(out))))
            if structure.post_ln:
                ln1, ln2 = structure.layer_norms(layer)
                def ln1_hook(mod, a, out, rec=rec):  # a hook returning non-None replaces the output
                    keep(rec, "pre_ln1", a[0])
                    keep(rec, "ln1", out)
                handles.append(ln1.register_forward_hook(ln1_hook))
                handles.append(ln2.register_forward_hook(
                    lambda m, a, out, rec=rec: keep(rec, "pre_ln2", a[0])))
                handles.append(layer.output.dense.register_forward_hook(
                    lambda m, a, out, rec=rec: keep(rec, "ffn", out)))
            else:
                handles.append(structure.mlp(layer).register_forward_hook(
                    lambda m, a, out, rec=rec: keep(rec, "mlp", out)))
        yield recs
    finally:
        for h in handles:
            h.remove()
