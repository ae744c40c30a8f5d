"""Context mixing in the evidence probes (DESIGN.md "Layer-wise methods"): each method's
per-layer AP / DP equals a by-hand computation from `context_mixing`'s matrices (row t,
the same ranked positions as NormXLogit's), for a causal (GPT-2) and a masked (BERT)
model; the word at t is never ranked; the config key is checked and wired at start-up."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from transformers import (BertConfig, BertForMaskedLM, Gemma2Config, Gemma2ForCausalLM,
                          GPT2Config, GPT2LMHeadModel)
from transformers.utils import logging as hf_logging

from normx_track.attribution.mixing import METHODS, UnsupportedModel, context_mixing
from normx_track.keys import (CONTEXT_MIXING_METHODS, EVIDENCE_AP, EVIDENCE_AP_BY_LAYER,
                              EVIDENCE_DP, EVIDENCE_DP_BY_LAYER, EVIDENCE_N_PAIRS)
from normx_track.probes.evidence import EvidenceProbe
from normx_track.probes.evidence_base import ContextMixingMethod
from normx_track.probes.files import MinimalPair
from normx_track.probes.masked_evidence import MaskedEvidenceProbe
from normx_track.training.config import Config, ConfigError, TrackerConfig, validate
from normx_track.training.data.tokenizer import train_bpe
from normx_track.training.tracker_factory import build_probes

hf_logging.set_verbosity_error()
N_LAYERS = 2
WORDS = ("the keys to cabinet are is dogs near run runs cat cats sleep sleeps on mat red big "
         "a of my old small").split()
RARE = "zyzzogeton"  # never in the corpus: the BPE splits it into several pieces
CAUSAL_PAIRS = [  # (prefix, good, bad, cue word indices)
    ("the keys to the cabinet", "are", "is", (1,)),
    ("my dogs near the old mat", "run", "runs", (1,)),
    # the last word (read at t) is several pieces and a cue: only "dogs" may count
    (f"the dogs near the {RARE}", "run", "runs", (1, 4)),
    (f"a {RARE}", "sleeps", "sleep", (1,)),  # the cue is the word at t: no evidence score
]
MASKED_PAIRS = [
    ("the keys to the cabinet", "are", "is", (1,)),
    ("a small cat on the red mat", "sleeps", "sleep", (2,)),
    (f"the dogs near the {RARE}", "run", "runs", (1, 4)),  # the mask is t: RARE is ranked
]


def pairs_of(rows):
    return [MinimalPair(p, g, b, c, uid=f"u{i % 2}") for i, (p, g, b, c) in enumerate(rows)]


def texts():
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=12)) for _ in range(300)]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return train_bpe(texts(), 350, tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def bert_bpe(tmp_path_factory):
    return train_bpe(texts(), 350, tmp_path_factory.mktemp("bert_bpe"), specials="bert")


def perturbed(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def gpt2(bpe):
    torch.manual_seed(0)
    return perturbed(GPT2LMHeadModel(GPT2Config(vocab_size=len(bpe), n_layer=N_LAYERS,
                                                n_embd=16, n_head=2, n_positions=32)))


@pytest.fixture(scope="module")
def bert(bert_bpe):
    torch.manual_seed(0)
    return perturbed(BertForMaskedLM(BertConfig(
        vocab_size=len(bert_bpe), hidden_size=16, num_hidden_layers=N_LAYERS,
        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
        pad_token_id=bert_bpe.pad_token_id)))


# ------------------------------------------------------------------- by hand
def brute_force_ap(scores, relevant):
    """Average precision of ranking by ``scores``; tied scores (ALTI and Value Zeroing
    give exact zeros) by the mean over every order of each tied group."""
    groups = [[i for i in range(len(scores)) if scores[i] == v]
              for v in sorted(set(scores), reverse=True)]
    values = []
    for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
        hits = [relevant[i] for group in orders for i in group]
        precisions = [sum(hits[: k + 1]) / (k + 1) for k, h in enumerate(hits) if h]
        values.append(sum(precisions) / len(precisions))
    return float(np.mean(values))


def by_hand_dp(scores, relevant):
    w = np.exp(np.asarray(scores, np.float64) - np.max(scores))
    return float(w[np.asarray(relevant)].sum() / w.sum())


def word_pieces(tok, prefix):
    """Each word's tokens as running text (after a space), and their concatenation."""
    pieces = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in prefix.split()]
    ids = [i for p in pieces for i in p]
    assert ids == tok(" " + prefix, add_special_tokens=False)["input_ids"], "precondition"
    return pieces, ids


def spans(pieces, offset=0):
    out, at = [], offset
    for p in pieces:
        out.append(range(at, at + len(p)))
        at += len(p)
    return out


def expected_alignment(model, rows):
    """{(method, layer): (mean AP, mean DP)} from `context_mixing` on each row alone:
    ``rows`` are (ids, t, ranked positions, cue positions)."""
    out = {}
    for method in METHODS:
        ap, dp = {}, {}
        for ids, t, ranked, cues in rows:
            m = context_mixing(model, torch.tensor(ids), method).numpy()  # [L, T, T]
            assert m.shape == (N_LAYERS, len(ids), len(ids))
            for layer in range(1, N_LAYERS + 1):
                scores = m[layer - 1, t, ranked]
                relevant = [j in cues for j in ranked]
                ap.setdefault(layer, []).append(brute_force_ap(list(scores), relevant))
                dp.setdefault(layer, []).append(by_hand_dp(scores, relevant))
        for layer in ap:
            out[method, layer] = (np.mean(ap[layer]), np.mean(dp[layer]))
    return out


def check_against(out, expected, n_scored):
    assert out[EVIDENCE_N_PAIRS] == n_scored
    for (method, layer), (ap, dp) in expected.items():
        assert out[EVIDENCE_AP_BY_LAYER.format(method=method, layer=layer)] == pytest.approx(
            ap, abs=1e-5), (method, layer)
        assert out[EVIDENCE_DP_BY_LAYER.format(method=method, layer=layer)] == pytest.approx(
            dp, abs=1e-5), (method, layer)
        if layer == N_LAYERS:  # the headline keys: the last layer
            assert out[EVIDENCE_AP.format(method=method)] == pytest.approx(ap, abs=1e-5)
            assert out[EVIDENCE_DP.format(method=method)] == pytest.approx(dp, abs=1e-5)
    for method in METHODS:  # no embedding "layer" for a mixing matrix
        assert EVIDENCE_AP_BY_LAYER.format(method=method, layer=0) not in out


# ------------------------------------------------------------------- causal
def test_causal_probe_ranks_row_t_of_each_layer_as_by_hand(bpe, gpt2):
    rows = []
    for prefix, _, _, cue_words in CAUSAL_PAIRS:
        pieces, ids = word_pieces(bpe, prefix)
        t = len(ids) - 1
        word_start = t + 1 - len(pieces[-1])  # the word read at t: never ranked
        ranked = list(range(word_start))
        cues = {j for c in cue_words for j in spans(pieces)[c]}
        if cues & set(ranked):
            rows.append((ids, t, ranked, cues))
    assert len(rows) == 3 and len(bpe(" " + RARE, add_special_tokens=False)["input_ids"]) >= 2
    probe = EvidenceProbe(pairs_of(CAUSAL_PAIRS), bpe, batch_size=3, layerwise=list(METHODS),
                          model=gpt2)  # batches of 3: padding and a second batch
    out = probe(gpt2)
    check_against(out, expected_alignment(gpt2, rows), n_scored=3)
    assert out["normx/evidence_n_cue_at_prediction"] == 1
    plain = EvidenceProbe(pairs_of(CAUSAL_PAIRS), bpe, batch_size=3)(gpt2)
    assert {k: v for k, v in out.items() if k in plain} == pytest.approx(plain, nan_ok=True)


class _Spiked:
    """ALTI with the word at t (t, its earlier pieces) and everything after it made the
    top scores: were any of them ranked, AP and DP would change."""

    name = "spiked"

    def __init__(self, word_ids):
        self.inner, self.word_ids = ContextMixingMethod("alti"), torch.tensor(word_ids)

    def __call__(self, model, inputs):
        layers, stack = self.inner(model, inputs)
        T = stack.shape[-1]
        at_t = (torch.arange(T)[None, :] >= inputs.position[:, None]) \
            | torch.isin(inputs.input_ids, self.word_ids)
        return layers, torch.where(at_t[None], torch.full_like(stack, 1e3), stack)


def test_a_causal_models_methods_never_rank_the_word_at_t(bpe, gpt2):
    rare = bpe(" " + RARE, add_special_tokens=False)["input_ids"]
    pairs = pairs_of(CAUSAL_PAIRS[2:3])  # the last word is RARE's pieces (a cue too)
    assert len(rare) >= 2  # precondition: the word at t has earlier pieces (cues, spiked)
    out = EvidenceProbe(pairs, bpe, layerwise=["alti", _Spiked(rare)])(gpt2)
    for layer in range(1, N_LAYERS + 1):
        for key in (EVIDENCE_AP_BY_LAYER, EVIDENCE_DP_BY_LAYER):
            assert out[key.format(method="spiked", layer=layer)] == pytest.approx(
                out[key.format(method="alti", layer=layer)], abs=1e-9)
    assert out[EVIDENCE_AP.format(method="alti")] < 1  # "dogs" is not first: not vacuous


# ------------------------------------------------------------------- masked
def test_masked_probe_ranks_the_mask_row_of_each_layer_as_by_hand(bert_bpe, bert):
    tok = bert_bpe
    cls, sep, mask = tok.cls_token_id, tok.sep_token_id, tok.mask_token_id
    rows, inputs = [], []
    for prefix, _, _, cue_words in MASKED_PAIRS:
        pieces, ids = word_pieces(tok, prefix)
        ids = [cls, *ids, mask, sep]
        t = len(ids) - 2  # the mask
        ranked = list(range(1, t))  # not [CLS], the mask, [SEP]
        cues = {j for c in cue_words for j in spans(pieces, offset=1)[c]}
        rows.append((ids, t, ranked, cues))
        inputs.append(ids)
    probe = MaskedEvidenceProbe(pairs_of(MASKED_PAIRS), tok, batch_size=2,
                                layerwise=list(METHODS), model=bert)
    encoded = probe.rows.input_ids
    for b, ids in enumerate(inputs):
        assert encoded[b, : len(ids)].tolist() == ids, "precondition: the same input"
    out = probe(bert)
    check_against(out, expected_alignment(bert, rows), n_scored=3)


# ------------------------------------------------------------------- config and start-up
def test_the_config_key_refuses_unknown_methods_and_reaches_both_probes(tmp_path, bpe, bert_bpe):
    assert CONTEXT_MIXING_METHODS == METHODS  # keys names them without importing torch
    validate(Config(tracker=TrackerConfig(layerwise_methods=["value_zeroing", "alti",
                                                             "globenc", "rollout",
                                                             "attention"])))
    assert TrackerConfig().layerwise_methods == []
    with pytest.raises(ConfigError, match=r"tracker.layerwise_methods.*'flow'.*'value_zeroing'"):
        validate(Config(tracker=TrackerConfig(layerwise_methods=["alti", "flow"])))
    with pytest.raises(ConfigError, match="tracker.layerwise_methods must be a list"):
        validate(Config(tracker=TrackerConfig(layerwise_methods="alti")))
    with pytest.raises(ValueError, match="one of"):
        EvidenceProbe(pairs_of(CAUSAL_PAIRS), bpe, layerwise=["flow"])

    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"one_prefix_prefix": p, "one_prefix_word_good": g,
                                        "one_prefix_word_bad": b, "cue_word_indices": list(c)})
                            + "\n" for p, g, b, c in MASKED_PAIRS))
    held_out = np.zeros(0, dtype=np.int32)
    t = TrackerConfig(layerwise_methods=["alti", "rollout"])
    causal, = build_probes(t, 0, bpe, path, held_out, max_length=32, arch="gpt2")
    masked, = build_probes(t, 0, bert_bpe, path, held_out, max_length=32, masked=True,
                           arch="bert")
    assert isinstance(causal, EvidenceProbe) and isinstance(masked, MaskedEvidenceProbe)
    for probe in (causal, masked):
        assert [m.name for m in probe.layerwise] == ["alti", "rollout"]
        assert all(m.layers == "all" for m in probe.layerwise)
    last, = build_probes(TrackerConfig(layerwise_methods=["alti"], evidence_by_layer=False), 0,
                         bpe, path, held_out, max_length=32, arch="gpt2")
    assert last.layerwise[0].layers == "last"
    off, = build_probes(TrackerConfig(), 0, bpe, path, held_out, max_length=32, arch="gpt2")
    assert off.layerwise == ()


def test_a_method_the_architecture_lacks_is_refused_at_start_up(tmp_path, bpe):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"one_prefix_prefix": "the keys to the cabinet",
                                "one_prefix_word_good": "are", "one_prefix_word_bad": "is",
                                "cue_word_indices": [1]}) + "\n")
    t = TrackerConfig(layerwise_methods=["rollout", "alti"])
    with pytest.raises(ConfigError, match=r"tracker.layerwise_methods: alti .*gemma2") as err:
        build_probes(t, 0, bpe, path, np.zeros(0, dtype=np.int32), arch="gemma2")
    assert "\n" not in str(err.value)
    gemma = Gemma2ForCausalLM(Gemma2Config(num_hidden_layers=1, hidden_size=16,
                                           num_attention_heads=2, num_key_value_heads=1,
                                           head_dim=8, intermediate_size=32,
                                           vocab_size=len(bpe)))
    with pytest.raises(UnsupportedModel, match="globenc.*gemma2"):
        EvidenceProbe(pairs_of(CAUSAL_PAIRS), bpe, layerwise=["attention", "globenc"],
                      model=gemma)
    probe = EvidenceProbe(pairs_of(CAUSAL_PAIRS), bpe, layerwise=["alti"])  # no model yet
    with pytest.raises(UnsupportedModel, match="alti.*gemma2"):
        probe(gemma)  # refused before anything is computed
