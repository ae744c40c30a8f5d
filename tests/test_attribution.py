"""NormXLogit / LogAt / embedding norms against independent, by-hand computations."""

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.utils import logging as hf_logging

from normx_track.attribution.normxlogit import (attribute, attribute_many, embedding_norms, final_norm, logat,
                                     normxlogit)

hf_logging.set_verbosity_error()
V, D, L, T = 97, 32, 3, 9
ATOL = 1e-5


def _gpt2(tied=True, **kw):
    torch.manual_seed(0)
    return GPT2Config(n_layer=L, n_embd=D, n_head=4, vocab_size=V, n_positions=64,
                      tie_word_embeddings=tied, **kw)


def make(arch, tied=True):
    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(_gpt2(tied))
    elif arch == "neox":
        cfg = GPTNeoXConfig(num_hidden_layers=L, hidden_size=D, num_attention_heads=4,
                            intermediate_size=64, vocab_size=V, max_position_embeddings=64,
                            tie_word_embeddings=tied)
        model = GPTNeoXForCausalLM(cfg)
    else:
        cfg = LlamaConfig(num_hidden_layers=L, hidden_size=D, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=64, vocab_size=V,
                          max_position_embeddings=64, tie_word_embeddings=tied)
        model = LlamaForCausalLM(cfg)
    # Random init leaves norms at identity and small weights; perturb so that bugs show.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def ids(batch=2, length=T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, V, (batch, length), generator=g)


def decoder_layers(model):
    base = model.base_model
    return base.h if hasattr(base, "h") else base.layers


@torch.no_grad()
def manual_states(model, x):
    """(h^(0), h^(L)) from an independent route: GPT-2 by hand, others by layer hooks."""
    base = model.base_model
    if isinstance(model, (GPT2LMHeadModel, GPT2ForSequenceClassification)):
        h0 = base.wte(x) + base.wpe(torch.arange(x.shape[1]))
        h = h0
        for block in base.h:
            h = block(h)
            h = h[0] if isinstance(h, tuple) else h
        return h0, h
    seen = {}
    hooks = [
        model.get_input_embeddings().register_forward_hook(
            lambda m, a, o: seen.setdefault("h0", o)),
        decoder_layers(model)[-1].register_forward_hook(
            lambda m, a, o: seen.__setitem__("hL", o[0] if isinstance(o, tuple) else o)),
    ]
    model(x)
    for hk in hooks:
        hk.remove()
    return seen["h0"], seen["hL"]


@torch.no_grad()
def manual_logits(model, h):
    """Full [B, T, V] logits U f(h): the expensive route the module avoids."""
    U = model.get_output_embeddings()
    return final_norm(model)(h) @ U.weight.T + (0 if U.bias is None else U.bias)


# --------------------------------------------------------------------------- LM heads


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama"])
def test_normxlogit_matches_manual(arch, tied):
    model, x = make(arch, tied), ids()
    h0, hL = manual_states(model, x)
    full = manual_logits(model, hL)  # [B, T, V]
    enorm = torch.linalg.norm(model.get_input_embeddings().weight[x], dim=-1)

    a = attribute(model, x)
    y = full[:, -1].argmax(-1)
    assert torch.equal(a.target, y)
    assert torch.equal(a.position, torch.full((2,), T - 1))
    assert torch.allclose(a.logits, full[:, -1], atol=ATOL)
    want = full.gather(2, y[:, None, None].expand(-1, T, 1)).squeeze(2)
    assert torch.allclose(a.logat, want, atol=ATOL)
    assert torch.allclose(a.normxlogit, enorm * want, atol=ATOL)
    assert torch.allclose(a.norm, enorm, atol=ATOL)

    given, foil = torch.tensor([3, 50]), torch.tensor([7, 7])
    at_given = full[torch.arange(2), :, given]  # [B, T]
    assert torch.allclose(normxlogit(model, x, target=given), enorm * at_given, atol=ATOL)
    contrast = full[torch.arange(2), :, given] - full[torch.arange(2), :, foil]
    assert torch.allclose(logat(model, x, target=given, foil=foil), contrast, atol=ATOL)
    assert torch.allclose(normxlogit(model, x, target=given, foil=7), enorm * contrast, atol=ATOL)


@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama"])
def test_final_norm_applied_once(arch):
    """Pins HF behaviour (hidden_states[-1] is post-norm) and that LogAt applies f once."""
    model, x = make(arch, tied=False), ids()
    _, hL = manual_states(model, x)
    f = final_norm(model)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    assert len(out.hidden_states) == L + 1
    assert torch.allclose(out.hidden_states[-1], f(hL), atol=ATOL)  # post-final-norm in HF
    assert torch.allclose(out.logits, manual_logits(model, hL), atol=ATOL)  # model: U f(h^L)
    y = out.logits[:, -1].argmax(-1)
    assert torch.allclose(logat(model, x), out.logits[torch.arange(2), :, y], atol=ATOL)


@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama"])
def test_layerwise(arch):
    model, x = make(arch), ids()
    h0, _ = manual_states(model, x)
    a = attribute(model, x, layers="all")
    assert a.layers == tuple(range(L + 1)) and a.logat_layers.shape == (L + 1, 2, T)
    assert torch.equal(a.logat_layers[-1], a.logat)
    assert torch.equal(a.normxlogit_layers[-1], a.normxlogit)
    lens0 = manual_logits(model, h0)[torch.arange(2), :, a.target]
    assert torch.allclose(a.logat_layers[0], lens0, atol=ATOL)
    assert torch.allclose(logat(model, x, layer=0), lens0, atol=ATOL)
    assert torch.allclose(logat(model, x, layer=L), a.logat, atol=ATOL)
    assert torch.allclose(logat(model, x, layer=-1), a.logat, atol=ATOL)
    # intermediate layers: hidden_states[l] through f and U
    with torch.no_grad():
        hs = model(x, output_hidden_states=True).hidden_states
    lens1 = manual_logits(model, hs[1])[torch.arange(2), :, a.target]
    assert torch.allclose(attribute(model, x, layers=[1]).logat_layers[0], lens1, atol=ATOL)


def test_embedding_output_norm_factor():
    model, x = make("gpt2"), ids()
    h0, _ = manual_states(model, x)  # wte + wpe
    a = attribute(model, x, norm_factor="embedding_output")
    assert torch.allclose(a.norm, torch.linalg.norm(h0, dim=-1), atol=ATOL)
    assert torch.allclose(a.normxlogit, a.norm * a.logat, atol=ATOL)
    with pytest.raises(ValueError):
        attribute(model, x, norm_factor="nope")


@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_matches_unpadded(arch, side):
    model = make(arch)
    seqs = [ids(1, n, seed=n)[0] for n in (9, 5, 7)]
    width = max(len(s) for s in seqs)
    batch = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for r, s in enumerate(seqs):
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        batch[r, cols], mask[r, cols] = s, 1
    a = attribute(model, batch, mask, layers="all", norm_factor="embedding_output")
    for r, s in enumerate(seqs):
        alone = attribute(model, s[None], layers="all", norm_factor="embedding_output")
        real = mask[r].bool()
        assert a.target[r] == alone.target[0]
        assert torch.allclose(a.logits[r], alone.logits[0], atol=1e-4)
        assert a.position[r] == real.nonzero().max()
        for field in ("logat", "normxlogit", "norm"):
            got = getattr(a, field)[r]
            assert torch.allclose(got[real], getattr(alone, field)[0], atol=1e-4)
            assert got[~real].isnan().all()
        assert torch.allclose(a.logat_layers[:, r][:, real], alone.logat_layers[:, 0], atol=1e-4)


def test_explained_position_masks_later_tokens():
    model, x = make("gpt2"), ids()
    _, hL = manual_states(model, x)
    a = attribute(model, x, position=4)
    full = manual_logits(model, hL)
    y = full[:, 4].argmax(-1)
    assert torch.equal(a.target, y)
    assert a.logat[:, 5:].isnan().all() and a.mask[:, :5].all() and not a.mask[:, 5:].any()
    assert torch.allclose(a.logat[:, :5], full[torch.arange(2), :5, y], atol=ATOL)


def test_bfloat16_model_gives_float32_scores():
    model, x = make("llama"), ids()
    ref = attribute(model, x, target=5)
    a = attribute(model.to(torch.bfloat16), x, target=5)
    assert a.logat.dtype == a.normxlogit.dtype == a.logits.dtype == torch.float32
    assert torch.allclose(a.logat, ref.logat, atol=0.1, rtol=0.05)


# --------------------------------------------------------------------------- classifier heads


def _classifier(num_labels):
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(_gpt2(num_labels=num_labels, pad_token_id=0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_classification_head():
    model, x = _classifier(3), ids()
    _, hL = manual_states(model, x)
    scores = model.score(model.transformer.ln_f(hL))  # [B, T, 3]
    with torch.no_grad():
        pooled = model(x).logits
    pred = pooled.argmax(-1)
    a = attribute(model, x)
    assert torch.allclose(a.logits, pooled, atol=ATOL) and torch.equal(a.target, pred)
    want = scores[torch.arange(2), :, pred]
    assert torch.allclose(a.logat, want, atol=ATOL)
    enorm = torch.linalg.norm(model.transformer.wte.weight[x], dim=-1)
    assert torch.allclose(a.normxlogit, enorm * want, atol=ATOL)
    contrast = logat(model, x, target=1, foil=2)
    assert torch.allclose(contrast, scores[..., 1] - scores[..., 2], atol=ATOL)


def test_classification_padded_uses_pooled_position():
    model = _classifier(3)
    x = ids(2, 6)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    x = x * mask  # right padding with pad_token_id 0
    with torch.no_grad():
        pooled = model(x, attention_mask=mask).logits
    a = attribute(model, x, mask)
    assert torch.allclose(a.logits, pooled, atol=ATOL)
    assert a.position.tolist() == [5, 3]


def test_regression_head():
    model, x = _classifier(1), ids()
    _, hL = manual_states(model, x)
    per_pos = model.score(model.transformer.ln_f(hL))[..., 0]  # [B, T]
    with torch.no_grad():
        y_hat = model(x).logits[:, 0]
    a = attribute(model, x)
    assert torch.allclose(a.logits[:, 0], y_hat, atol=ATOL)
    assert torch.allclose(a.logat, -(per_pos - y_hat[:, None]).abs(), atol=ATOL)
    assert torch.allclose(a.logat[:, -1], torch.zeros(2), atol=ATOL)
    with pytest.raises(ValueError):
        attribute(model, x, target=0)


# --------------------------------------------------------------------------- norms, cost


def test_embedding_norms_tied_vs_untied():
    tied, untied = make("gpt2", tied=True), make("gpt2", tied=False)
    n = embedding_norms(tied)
    assert set(n) == {"input"}
    assert torch.allclose(n["input"], torch.linalg.norm(tied.transformer.wte.weight, dim=1))
    n = embedding_norms(untied)
    assert set(n) == {"input", "output"}
    assert torch.allclose(n["output"], torch.linalg.norm(untied.lm_head.weight, dim=1))
    assert not torch.allclose(n["output"], n["input"])
    assert set(embedding_norms(make("llama", tied=False))) == {"input", "output"}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_one_forward_pass(arch):
    model, x = make(arch), ids()
    calls = {"embed": 0, "backbone": 0, "layer0": 0}

    def counter(key):
        return lambda *args: calls.__setitem__(key, calls[key] + 1)

    hooks = [model.get_input_embeddings().register_forward_hook(counter("embed")),
             model.base_model.register_forward_pre_hook(counter("backbone")),
             decoder_layers(model)[0].register_forward_pre_hook(counter("layer0"))]
    model.train()  # attribute() must switch dropout off and restore the mode
    a = attribute(model, x, layers="all", norm_factor="embedding_output")
    for h in hooks:
        h.remove()
    assert calls == {"embed": 1, "backbone": 1, "layer0": 1}
    assert model.training and not a.logat.requires_grad


def test_final_norm_resolver_error():
    class Bare(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="Bare"):
        final_norm(Bare())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_attribute_many_equals_separate_calls_from_one_pass(arch):
    model, x = make(arch, tied=False), ids(batch=3)
    target, foil = torch.tensor([3, 5, 7]), torch.tensor([4, 4, 9])
    choices = [(target, None), (target, foil), (None, None)]
    calls = []
    hook = model.base_model.register_forward_pre_hook(lambda *args: calls.append(1))
    many = attribute_many(model, x, explain=choices, layers="all")
    hook.remove()
    assert len(calls) == 1
    for got, (t, f) in zip(many, choices):
        alone = attribute(model, x, target=t, foil=f, layers="all")
        for field in ("logat", "normxlogit", "norm", "logits", "logat_layers", "target"):
            torch.testing.assert_close(getattr(got, field), getattr(alone, field),
                                       equal_nan=True, msg=field)
        assert got.layers == alone.layers
    # good minus bad is the difference of the two single-word attributions
    bad = attribute(model, x, target=foil)
    torch.testing.assert_close(many[1].logat, many[0].logat - bad.logat, equal_nan=True)
