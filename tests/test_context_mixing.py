"""Context-mixing methods (normx_track.attribution.mixing): raw attention, rollout, Value
Zeroing, ALTI, GlobEnc on tiny GPT-2 / GPT-NeoX / Llama / BERT / RoBERTa models.

Each method is pinned against an independent computation: Value Zeroing against a
brute-force loop that really zeroes one position's values and re-runs the whole model;
ALTI's and GlobEnc's terms against the model's own tensors (they must add up to them) and
against a hand-worked 3-token case and a plain numpy formula; rollout against the product
written out; causality by changing a later token; padding by the unpadded sequence."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (BertConfig, BertForMaskedLM, Gemma2Config, Gemma2ForCausalLM,
                          GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                          LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM,
                          RobertaConfig, RobertaForMaskedLM)
from transformers.utils import logging

from normx_track.attribution.mixing import (ALTI, METHODS, AttentionRollout, GlobEnc,
                                            RawAttention, UnsupportedModel, ValueZeroing,
                                            context_mixing, decompose)
from normx_track.attribution.mixing.decomposition import (alti_contributions,
                                                          attention_terms,
                                                          globenc_contributions)

logging.set_verbosity_error()
V, T = 50, 7
ARCHS = ("gpt2", "neox", "neox_sequential", "llama", "bert", "roberta")
CAUSAL = ("gpt2", "neox", "llama")


def _jitter(model, seed):
    """Random weights everywhere (LayerNorm gains and every bias too: the default init sets
    them to 1 and 0, which would hide a misplaced bias or gain)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def build(arch, layers=3, heads=2, hidden=16, seed=0):
    torch.manual_seed(seed)
    common = dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                  intermediate_size=2 * hidden, vocab_size=V)
    if arch == "gpt2":
        m = GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=hidden, n_head=heads,
                                       vocab_size=V, n_positions=32))
    elif arch.startswith("neox"):
        m = GPTNeoXForCausalLM(GPTNeoXConfig(**common, max_position_embeddings=32,
                                             use_parallel_residual=arch == "neox",
                                             attention_bias=True))
    elif arch == "llama":  # grouped-query attention: 4 query heads on 2 key/value heads
        m = LlamaForCausalLM(LlamaConfig(**{**common, "num_attention_heads": 4},
                                         num_key_value_heads=2, max_position_embeddings=32,
                                         attention_bias=True))
    elif arch == "bert":
        m = BertForMaskedLM(BertConfig(**common, max_position_embeddings=32))
    else:
        m = RobertaForMaskedLM(RobertaConfig(**common, max_position_embeddings=40,
                                             pad_token_id=1))
    return _jitter(m, seed)


@pytest.fixture(scope="module")
def models():
    return {a: build(a) for a in ARCHS}


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, V, (2, T), generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- Value Zeroing


def _value_slice(arch, model, layer):
    """(module, function zeroing position j's values in its output), written here
    independently of the package."""
    if arch == "gpt2":
        d = model.config.n_embd
        mod = model.transformer.h[layer].attn.c_attn

        def zero(out, j):
            out = out.clone()
            out[:, j, 2 * d:] = 0
            return out
    else:
        mod = model.bert.encoder.layer[layer].attention.self.value

        def zero(out, j):
            out = out.clone()
            out[:, j] = 0
            return out
    return mod, zero


def _brute_force_vz(arch, model, ids, layer):
    blocks = model.transformer.h if arch == "gpt2" else model.bert.encoder.layer
    got = []
    hook = blocks[layer].register_forward_hook(lambda m, a, out: got.append(out))
    mod, zero = _value_slice(arch, model, layer)
    try:
        with torch.no_grad():
            model(input_ids=ids)
            clean = got.pop()
            rows = []
            for j in range(ids.shape[1]):
                h = mod.register_forward_hook(lambda m, a, out, j=j: zero(out, j))
                try:
                    model(input_ids=ids)  # the whole model: layers before l are unchanged
                finally:
                    h.remove()
                rows.append(1 - F.cosine_similarity(got.pop(), clean, dim=-1))  # [B, T] over i
    finally:
        hook.remove()
    m = torch.stack(rows, dim=-1)  # [B, i, j]
    if arch == "gpt2":
        m = m.tril()
    return m / m.sum(-1, keepdim=True)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_value_zeroing_matches_brute_force(models, ids, arch):
    model = models[arch]
    vz = ValueZeroing(model).attribute(ids)
    for layer in (0, 1):  # the first and a middle layer (of 3)
        want = _brute_force_vz(arch, model, ids, layer)
        torch.testing.assert_close(vz[:, layer], want, atol=2e-5, rtol=1e-4)


def test_value_zeroing_chunked_equals_one_batch(models, ids):
    model = models["llama"]
    torch.testing.assert_close(ValueZeroing(model, max_tokens=2 * T).attribute(ids),
                               ValueZeroing(model).attribute(ids), atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- ALTI / GlobEnc


def _real_outputs(arch, model, ids, stage):
    """The tensor each stage splits, read by hooks registered here: the attention block's
    output (pre-LN: x + Attn(x), post-LN: LN1's output) or the layer's output."""
    if arch == "gpt2":
        layers = model.transformer.h
    elif arch.startswith("neox"):
        layers = model.gpt_neox.layers
    elif arch == "llama":
        layers = model.model.layers
    else:
        layers = model.base_model.encoder.layer
    got, handles = [], []
    for layer in layers:
        rec = {}
        got.append(rec)
        if stage == "layer":
            handles.append(layer.register_forward_hook(
                lambda m, a, out, rec=rec: rec.__setitem__("y", out)))
        elif arch == "gpt2":
            handles.append(layer.ln_2.register_forward_pre_hook(
                lambda m, a, rec=rec: rec.__setitem__("y", a[0])))
        elif arch == "llama":
            handles.append(layer.post_attention_layernorm.register_forward_pre_hook(
                lambda m, a, rec=rec: rec.__setitem__("y", a[0])))
        elif arch.startswith("neox"):  # parallel residual: x + attention, as the layer adds them
            handles.append(layer.register_forward_pre_hook(
                lambda m, a, kw, rec=rec: rec.__setitem__("x", a[0] if a else kw["hidden_states"]),
                with_kwargs=True))
            handles.append(layer.attention.register_forward_hook(
                lambda m, a, out, rec=rec: rec.__setitem__("y", rec["x"] + out[0])))
        else:
            handles.append(layer.attention.output.register_forward_hook(
                lambda m, a, out, rec=rec: rec.__setitem__("y", out)))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return [r["y"] for r in got]


@pytest.mark.parametrize("stage", ["attention", "layer"])
@pytest.mark.parametrize("arch", ARCHS)
def test_terms_and_biases_sum_to_the_real_output(models, ids, arch, stage):
    model = models[arch]
    splits = decompose(model, ids, stage=stage)
    real = _real_outputs(arch, model, ids, stage)
    assert len(splits) == len(real) == 3
    for s, y in zip(splits, real):
        assert s.terms.shape == (2, T, T, y.shape[-1])
        torch.testing.assert_close(s.terms.sum(2) + s.rest, y, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s.output, y, atol=1e-5, rtol=1e-5)  # eager there, sdpa here
        if arch in CAUSAL or arch == "neox_sequential":  # a later position carries nothing
            upper = torch.ones(T, T, dtype=torch.bool).triu(1)
            assert s.terms[:, upper].abs().max() == 0


def test_hand_worked_three_tokens():
    """One layer, one head, d = 2, W_O = I, no bias: R_ij = A_ij v_j + [i = j] x_i.
    Row 2: T_20 = (0.2, 0), T_21 = (0, 0.3), T_22 = 0.5 (1, 1) + (1, 1) = (1.5, 1.5);
    y_2 = (1.7, 1.8), ||y_2||_1 = 3.5; ||y_2 - T_2j||_1 = 3.3, 3.2, 0.5 -> ALTI 0.2, 0.3, 3.0
    over 3.5. Row 1: T_10 = (0.5, 0), T_11 = (0, 1.5), y_1 = (0.5, 1.5): ALTI 0.5, 1.5 over 2.
    GlobEnc: the L2 norms 0.2, 0.3, 1.5 sqrt 2 (row 2), 0.5, 1.5 (row 1), 2 (row 0)."""
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    A = torch.tensor([[[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]]])
    terms, rest = attention_terms(x, A, x[:, None], torch.eye(2), None)
    torch.testing.assert_close(terms[0, 2], torch.tensor([[0.2, 0.0], [0.0, 0.3], [1.5, 1.5]]))
    assert rest.abs().max() == 0
    alti = alti_contributions(terms, rest)[0]
    alti = alti / alti.sum(-1, keepdim=True)
    want = torch.tensor([[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.2 / 3.5, 0.3 / 3.5, 3.0 / 3.5]])
    torch.testing.assert_close(alti, want)
    ge = globenc_contributions(terms)[0]
    ge = ge / ge.sum(-1, keepdim=True)
    r2 = torch.tensor([0.2, 0.3, 1.5 * math.sqrt(2)])
    want = torch.tensor([[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], (r2 / r2.sum()).tolist()])
    torch.testing.assert_close(ge, want)


def _np(t):
    return t.detach().double().numpy()


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b, np.sqrt(var + eps)


def _softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _alti_np(terms, y):
    c = np.maximum(0, np.abs(y).sum(-1)[:, None] - np.abs(y[:, None] - terms).sum(-1))
    return c / c.sum(-1, keepdims=True)


def _norms_np(terms):
    n = np.sqrt((terms ** 2).sum(-1))
    return n / n.sum(-1, keepdims=True)


def test_numpy_formula_gpt2_one_layer_one_head():
    m = build("gpt2", layers=1, heads=1, hidden=8, seed=3)
    ids = torch.tensor([[5, 17, 9]])
    b = m.transformer.h[0]
    x = _np(m.transformer.wte.weight[ids[0]] + m.transformer.wpe.weight[:3])
    h, _ = _ln(x, _np(b.ln_1.weight), _np(b.ln_1.bias), b.ln_1.eps)
    q, k, v = np.split(h @ _np(b.attn.c_attn.weight) + _np(b.attn.c_attn.bias), 3, axis=-1)
    s = q @ k.T / np.sqrt(8) + np.triu(np.full((3, 3), -np.inf), 1)
    A = _softmax(s)
    f = v @ _np(b.attn.c_proj.weight)                       # W_O v_j (Conv1D: v @ W)
    terms = A[:, :, None] * f[None] + np.eye(3)[:, :, None] * x[:, None]
    y = terms.sum(1) + _np(b.attn.c_proj.bias)
    torch.testing.assert_close(ALTI(m).attribute(ids[0])[0], torch.tensor(_alti_np(terms, y)).float(),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(GlobEnc(m).attribute(ids[0])[0], torch.tensor(_norms_np(terms)).float(),
                               atol=1e-5, rtol=1e-4)


def test_numpy_formula_bert_one_layer_one_head():
    m = build("bert", layers=1, heads=1, hidden=8, seed=4)
    ids = torch.tensor([[5, 17, 9]])
    e, lay = m.bert.embeddings, m.bert.encoder.layer[0]
    x = _np(e.word_embeddings.weight[ids[0]] + e.position_embeddings.weight[:3]
            + e.token_type_embeddings.weight[0])
    x, _ = _ln(x, _np(e.LayerNorm.weight), _np(e.LayerNorm.bias), e.LayerNorm.eps)
    sa, so = lay.attention.self, lay.attention.output

    def lin(mod, z):
        return z @ _np(mod.weight).T + _np(mod.bias)
    A = _softmax(lin(sa.query, x) @ lin(sa.key, x).T / np.sqrt(8))
    f = lin(sa.value, x) @ _np(so.dense.weight).T            # W_O v_j, b_V inside v_j
    R = A[:, :, None] * f[None] + np.eye(3)[:, :, None] * x[:, None]
    z, s1 = _ln(R.sum(1) + _np(so.dense.bias), _np(so.LayerNorm.weight), _np(so.LayerNorm.bias),
                so.LayerNorm.eps)
    T1 = _np(so.LayerNorm.weight) * (R - R.mean(-1, keepdims=True)) / s1[:, None]
    gelu = np.vectorize(lambda u: 0.5 * u * (1 + math.erf(u / math.sqrt(2))))
    ffn = lin(lay.output.dense, gelu(lin(lay.intermediate.dense, z)))
    _, s2 = _ln(z + ffn, 1.0, 0.0, lay.output.LayerNorm.eps)
    T2 = _np(lay.output.LayerNorm.weight) * (T1 - T1.mean(-1, keepdims=True)) / s2[:, None]
    torch.testing.assert_close(ALTI(m).attribute(ids[0])[0], torch.tensor(_alti_np(T1, z)).float(),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(GlobEnc(m).attribute(ids[0])[0], torch.tensor(_norms_np(T2)).float(),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls", [ALTI, GlobEnc])
def test_decomposed_methods_roll_out_by_the_product(models, ids, cls):
    model = models["bert"]
    per = cls(model, rolled_out=False).attribute(ids)
    rolled = cls(model).attribute(ids)
    torch.testing.assert_close(rolled[:, 2], per[:, 2] @ per[:, 1] @ per[:, 0])


# --------------------------------------------------------------------------- attention / rollout


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_raw_attention_is_the_models_own_mean_over_heads(models, ids, arch):
    model = models[arch]
    got = RawAttention(model).attribute(ids)
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = model(input_ids=ids, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    torch.testing.assert_close(got, torch.stack([a.mean(1) for a in att], dim=1))


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_rollout_is_the_product_written_out(models, ids, arch):
    A = RawAttention(models[arch]).attribute(ids)  # [B, 3, T, T]
    I = torch.eye(T)

    def hat(a):
        a = 0.5 * I + 0.5 * a
        return a / a.sum(-1, keepdim=True)
    A1, A2, A3 = hat(A[:, 0]), hat(A[:, 1]), hat(A[:, 2])
    want = torch.stack([A1, A2 @ A1, A3 @ A2 @ A1], dim=1)
    torch.testing.assert_close(AttentionRollout(models[arch]).attribute(ids), want)


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_rows_sum_to_one_and_shapes(models, ids, arch, method):
    out = context_mixing(models[arch], ids, method)
    assert out.shape == (2, 3, T, T) and out.dtype == torch.float32
    assert bool((out >= 0).all())
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 3, T))
    single = context_mixing(models[arch], ids[1], method)
    assert single.shape == (3, T, T)
    torch.testing.assert_close(single, out[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", CAUSAL)
def test_causal_models_give_no_weight_to_later_positions(models, ids, arch, method):
    model = models[arch]
    out = context_mixing(model, ids, method)
    assert out.triu(1).abs().max() == 0
    # and not by the structural zero alone: a later token changes no earlier row
    other = ids.clone()
    other[:, -1] = (other[:, -1] + 1) % V
    moved = context_mixing(model, other, method)
    torch.testing.assert_close(moved[..., :-1, :], out[..., :-1, :], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch,side", [("gpt2", "right"), ("gpt2", "left"), ("llama", "left"),
                                       ("bert", "right"), ("roberta", "right")])
def test_padding_zero_rows_and_columns_and_real_part_unchanged(models, ids, arch, method, side):
    model = models[arch]
    n = T - 3
    short = ids[1, :n]
    pad = torch.full((T - n,), 1 if arch == "roberta" else 0)
    row = torch.cat([short, pad]) if side == "right" else torch.cat([pad, short])
    batch = torch.stack([ids[0], row])
    mask = torch.ones(2, T, dtype=torch.long)
    real = slice(0, n) if side == "right" else slice(T - n, T)
    mask[1] = 0
    mask[1, real] = 1
    out = context_mixing(model, batch, method, attention_mask=mask)
    alone = context_mixing(model, short, method)
    torch.testing.assert_close(out[1][:, real, real], alone, atol=2e-5, rtol=1e-4)
    pads = mask[1] == 0
    assert out[1][:, pads].abs().max() == 0 and out[1][:, :, pads].abs().max() == 0
    torch.testing.assert_close(out[0], context_mixing(model, ids[0], method), atol=1e-5, rtol=1e-4)


def test_attention_implementation_restored_and_unsupported_named(models, ids):
    model = models["gpt2"]
    assert model.config._attn_implementation == "sdpa"
    context_mixing(model, ids, "alti")
    assert model.config._attn_implementation == "sdpa"
    opt = OPTForCausalLM(OPTConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2,
                                   ffn_dim=16, vocab_size=V, word_embed_proj_dim=8))
    with pytest.raises(UnsupportedModel, match="globenc.*OPT"):
        GlobEnc(opt)
    with pytest.raises(NotImplementedError):
        context_mixing(opt, ids, "value_zeroing")
    with pytest.raises(ValueError, match="one of"):
        context_mixing(model, ids, "flow")
    # Gemma 2's layout (norms around the sublayers): the split methods refuse, naming it; the
    # methods needing only probabilities or the value projection still run
    gemma = Gemma2ForCausalLM(Gemma2Config(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                           num_key_value_heads=1, head_dim=8, intermediate_size=32,
                                           vocab_size=V)).eval()
    with pytest.raises(UnsupportedModel, match="alti.*gemma2"):
        ALTI(gemma)
    for method in ("attention", "rollout", "value_zeroing"):
        torch.testing.assert_close(context_mixing(gemma, ids, method).sum(-1), torch.ones(2, 1, T))
