"""ALTI (Ferrando, Gállego & Costa-jussà, EMNLP 2022) and GlobEnc (Modarressi, Fayyaz,
Yaghoobzadeh & Pilehvar, NAACL 2022): a layer's output split into one term per input
position, then the terms' sizes as contributions, rolled out across layers.

The split (one layer; i the explained position, j the input position; x the layer's
input; A_h the attention probabilities of head h; v_{h,j} the value vector of head h at j,
its bias included; W_O = [W_O,1 ... W_O,H] and b_O the output projection)

    attention + residual:  R_ij = Σ_h A_h[i, j] · W_O,h v_{h,j}  +  δ_ij · x_i
                           Σ_j R_ij + b_O = x_i + Attn(x)_i      (exactly)

  - The value bias b_V rides inside v_{h,j}, so it is split among the positions by the
    attention weights (as both papers' code does); b_O belongs to no position and is kept
    apart, in ``rest``.
  - The residual is x_i itself, all of it on the diagonal j = i.
  - Pre-LN decoders (GPT-2, GPT-NeoX, Llama): the input norm (LayerNorm, or Llama's
    RMSNorm) acts on each position alone, so v_{h,j} depends on x_j only and the split is
    exact with no approximation; the norm's own bias β goes with its position (it is in
    v_{h,j}, as in inseq's ALTI for decoders). Grouped-query attention: head h reads the
    shared key/value head h // (H / H_kv). GPT-NeoX's parallel residual changes nothing
    here (x + Attn(LN1(x)) is the attention sub-block's contribution; the MLP is apart).
  - Post-LN encoders (BERT, RoBERTa): LN1 follows the residual, z_i = LN1(Σ_j R_ij + b_O).
    It is split linearly as the papers do: each term has its own mean subtracted and is
    divided by the standard deviation of the FULL input of LN1 at position i (the one the
    model used: sqrt(biased variance + eps)), then scaled by γ1:
        T_ij = γ1 ⊙ (R_ij − mean(R_ij)) / σ1_i,
        rest_i = γ1 ⊙ (b_O − mean(b_O)) / σ1_i + β1         (Σ_j T_ij + rest_i = z_i exactly)
    (the authors' ALTI code divides by ``(pre_ln + eps).std()``, an unbiased std of the
    shifted input; we take LayerNorm's own σ so the split is exact.)

ALTI (the split of the attention block's output y_i: x_i + Attn(x)_i for pre-LN, z_i for
post-LN):  c_ij = max(0, ||y_i||_1 − ||y_i − T_ij||_1), rows normalised to sum 1; the
    Manhattan (L1) distance and norm, as the paper (``p`` chooses another). The FFN is not
    part of a layer's matrix (the paper's choice). Layers combine by the matrix product
    C^(l) = C_l · C^(l-1) with no identity added (the residual is already in C_l).

GlobEnc (the split of the whole encoder layer's output): post-LN, the terms go on through
    the second residual and LN2 as the paper's N_Enc does: the FFN is not decomposed (it is
    nonlinear) and its output joins ``rest``, so LN2's split is
        T2_ij = γ2 ⊙ (T_ij − mean(T_ij)) / σ2_i,
        rest2_i = γ2 ⊙ (u_i − mean(u_i)) / σ2_i + β2,  u_i = rest_i + FFN(z)_i,
    σ2_i the std of LN2's full input. Contribution ||T2_ij||_2, rows normalised, rolled out
    by the plain product (the paper's rollout without an added identity: the residual is in
    the terms). Pre-LN decoders have no norm on the residual stream, so GlobEnc reduces to
    the norms ||R_ij||_2 of the attention + residual terms (Kobayashi et al. 2021's
    "AttnRes-N"), the MLP's output (and b_O) in ``rest`` — a documented extension: the paper
    defines GlobEnc for post-LN encoders only.

All terms come from ONE forward pass with eager attention; forward hooks read the layer
inputs, the probabilities, the value projection's output, the output projection's output,
and (post-LN) the LayerNorms' inputs. ``decompose`` returns the terms themselves (tests and
inspection: [B, T, T, d] per layer, so mind the memory); the methods keep [B, T, T] only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from normx_track.attribution.mixing.base import ContextMixing, allowed, normalise_rows, roll_out
from normx_track.attribution.mixing.structure import (Structure, body, check_split,
                                                      eager_attention, forward_inputs, record,
                                                      structure_of)
from normx_track.modeling import eval_mode, model_device

__all__ = ["ALTI", "GlobEnc", "LayerDecomposition", "alti_contributions", "attention_terms",
           "decompose", "globenc_contributions", "split_layer_norm", "STAGES"]

STAGES = ("attention", "layer")


@dataclass
class LayerDecomposition:
    """One layer's split: ``terms[b, i, j]`` [B, T, T, d] the part of position i's vector
    carried from input position j; ``rest`` [B, T, d] what no position carries (biases; for
    the ``layer`` stage the MLP/FFN output as well); ``output`` [B, T, d] the model's own
    tensor being split (read by a hook): Σ_j terms[:, :, j] + rest == output."""

    terms: Tensor
    rest: Tensor
    output: Tensor


def attention_terms(x: Tensor, probs: Tensor, values: Tensor, w_o: Tensor,
                    b_o: Tensor | None) -> tuple[Tensor, Tensor]:
    """R_ij = Σ_h A_h[i, j] W_O,h v_{h,j} + δ_ij x_i and the rest b_O.

    x [B, T, d]; probs [B, H, T, T]; values [B, H, T, dh]; w_o [d, H*dh]; b_o [d] or None.
    Returns terms [B, T, T, d] and rest [B, T, d]."""
    B, H, T, dh = values.shape
    d = w_o.shape[0]
    f = torch.einsum("bhjk,dhk->bhjd", values, w_o.float().reshape(d, H, dh))
    terms = torch.einsum("bhij,bhjd->bijd", probs, f)
    idx = torch.arange(T, device=x.device)
    terms[:, idx, idx] += x
    rest = torch.zeros_like(x) if b_o is None else b_o.float().expand_as(x).clone()
    return terms, rest


def split_layer_norm(terms: Tensor, rest: Tensor, ln_input: Tensor, ln: nn.Module
                     ) -> tuple[Tensor, Tensor]:
    """LayerNorm's linear split: T'_ij = γ ⊙ (T_ij − mean T_ij) / σ_i, rest'_i = γ ⊙ (rest_i −
    mean rest_i) / σ_i + β, with σ_i = sqrt(Var(ln_input_i) + eps) of the full input (the
    biased variance, as LayerNorm computes it). Exact when Σ_j T_ij + rest_i = ln_input_i."""
    d = terms.shape[-1]
    gamma = ln.weight.float() if getattr(ln, "weight", None) is not None else terms.new_ones(d)
    beta = ln.bias.float() if getattr(ln, "bias", None) is not None else terms.new_zeros(d)
    sigma = torch.sqrt(ln_input.var(-1, unbiased=False, keepdim=True) + ln.eps)  # [B, T, 1]
    t = gamma * (terms - terms.mean(-1, keepdim=True)) / sigma[:, :, None]
    r = gamma * (rest - rest.mean(-1, keepdim=True)) / sigma + beta
    return t, r


def alti_contributions(terms: Tensor, rest: Tensor, p: float = 1.0) -> Tensor:
    """max(0, ||y_i||_p − ||y_i − T_ij||_p) with y_i = Σ_j T_ij + rest_i; [..., T, T]
    (not yet normalised)."""
    y = terms.sum(-2) + rest
    norm_y = torch.linalg.vector_norm(y, ord=p, dim=-1)
    dist = torch.linalg.vector_norm(y[..., None, :] - terms, ord=p, dim=-1)
    return (norm_y[..., None] - dist).clamp_min(0)


def globenc_contributions(terms: Tensor) -> Tensor:
    """||T_ij||_2, [..., T, T] (not yet normalised)."""
    return torch.linalg.vector_norm(terms, dim=-1)


def _split(st: Structure, layer: nn.Module, rec: dict, stage: str) -> LayerDecomposition:
    w_o, b_o = st.out_proj(layer)
    terms, rest = attention_terms(rec["x"], rec["probs"], rec["values"], w_o, b_o)
    if not st.post_ln:
        if stage == "attention":
            return LayerDecomposition(terms, rest, rec["x"] + rec["attn"])
        return LayerDecomposition(terms, rest + rec["mlp"], rec["output"])
    ln1, ln2 = st.layer_norms(layer)
    terms, rest = split_layer_norm(terms, rest, rec["pre_ln1"], ln1)
    if stage == "attention":
        return LayerDecomposition(terms, rest, rec["ln1"])
    terms, rest = split_layer_norm(terms, rest + rec["ffn"], rec["pre_ln2"], ln2)
    return LayerDecomposition(terms, rest, rec["output"])


def _layer_splits(model: nn.Module, st: Structure, ids: Tensor, mask: Tensor, stage: str):
    """One hooked forward pass, then each layer's split in turn (one at a time in memory)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    with record(st, probs=True, decomposition=True) as recs:
        body(model)(**forward_inputs(st, ids, mask))
    for layer, rec in zip(st.layers, recs):
        yield _split(st, layer, rec, stage)


def decompose(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
              stage: str = "attention") -> list[LayerDecomposition]:
    """Every layer's split (``stage`` "attention": the attention block's output, ALTI's;
    "layer": the layer's output, GlobEnc's), for ``input_ids`` [B, T]. For inspection and
    tests: it holds [B, T, T, d] per layer."""
    st = structure_of(model, "decompose")
    check_split(st, "decompose", model)
    ids = input_ids.to(model_device(model))
    mask = (torch.ones_like(ids, dtype=torch.bool) if attention_mask is None
            else attention_mask.to(ids.device).bool())
    with torch.no_grad(), eval_mode(model), eager_attention(model):
        return list(_layer_splits(model, st, ids, mask, stage))


class _Decomposed(ContextMixing):
    stage = "attention"

    def __init__(self, model: nn.Module, rolled_out: bool = True):
        super().__init__(model)
        check_split(self.structure, self.method, model)
        self.rolled_out = rolled_out

    def contributions(self, split: LayerDecomposition) -> Tensor:
        raise NotImplementedError

    def compute(self, ids, mask):
        ok = allowed(self.structure, mask)
        layers = [normalise_rows(self.contributions(s) * ok)
                  for s in _layer_splits(self.model, self.structure, ids, mask, self.stage)]
        m = torch.stack(layers, dim=1)
        return roll_out(m) if self.rolled_out else m


class ALTI(_Decomposed):
    """ALTI: [L, T, T] per sequence; ``rolled_out`` (default, the paper's) the product of
    the layers' normalised contribution matrices up to each layer, else each layer's own.
    ``p``: the norm of the distance (1, Manhattan, as the paper)."""

    method = "alti"
    stage = "attention"

    def __init__(self, model: nn.Module, rolled_out: bool = True, p: float = 1.0):
        super().__init__(model, rolled_out)
        self.p = p

    def contributions(self, split):
        return alti_contributions(split.terms, split.rest, self.p)


class GlobEnc(_Decomposed):
    """GlobEnc: [L, T, T] per sequence; ``rolled_out`` (default, the paper's) the rollout of
    the layers' normalised ||T2_ij|| matrices, else each layer's own."""

    method = "globenc"
    stage = "layer"

    def contributions(self, split):
        return globenc_contributions(split.terms)
