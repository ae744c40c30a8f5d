"""Probe files, pair encoding, the evidence and faithfulness probes, against constructions
whose answer is known and by-hand computations."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from normx_track.data.synthetic import SyntheticConfig, generate_corpus, write_corpus
from normx_track.data.tokenizer import train_bpe
from normx_track.probe_files import (
    MinimalPair,
    ProbeFileError,
    encode_pairs,
    load_blimp_from_hub,
    load_probe_file,
)
from normx_track.probes import EvidenceProbe, FaithfulnessProbe

hf_logging.set_verbosity_error()

WORDS = ("the keys to cabinet are is dogs near run runs cat cats sleep sleeps on mat red big "
         "a of my your old new small").split()
RARE = "zyzzogeton"  # never in the corpus: the BPE splits it


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=12)) for _ in range(400)]
    texts += ["The keys to the cabinet are red"] * 20
    return train_bpe(texts, 400, tmp_path_factory.mktemp("bpe"))


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def gpt2(tok, n_layer=2, n_embd=32, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_layer=n_layer, n_embd=n_embd, n_head=2,
                     n_positions=64, **kw)
    return GPT2LMHeadModel(cfg).eval()


def zero_blocks(model):
    """Attention/MLP outputs and position embeddings zeroed: h_i^(l) = E[x_i] at every l,
    so the prediction at t depends on x_t alone."""
    with torch.no_grad():
        model.transformer.wpe.weight.zero_()
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
    return model


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD_LINE = json.dumps({"one_prefix_prefix": "The keys to the cabinet",
                        "one_prefix_word_good": "are", "one_prefix_word_bad": "is",
                        "cue_word_indices": [1], "UID": "agr"})


# ------------------------------------------------------------------------ probe files
BAD_LINES = {
    "invalid json": '{"one_prefix_prefix": "The keys"',
    "not an object": '["The keys", "are", "is"]',
    "missing field": json.dumps({"one_prefix_prefix": "The keys", "one_prefix_word_good": "are"}),
    "empty prefix": json.dumps({"one_prefix_prefix": "   ", "one_prefix_word_good": "are",
                                "one_prefix_word_bad": "is"}),
    "empty word": json.dumps({"one_prefix_prefix": "The keys", "one_prefix_word_good": " ",
                              "one_prefix_word_bad": "is"}),
    "cue out of range": json.dumps({"one_prefix_prefix": "The keys", "one_prefix_word_good": "are",
                                    "one_prefix_word_bad": "is", "cue_word_indices": [2]}),
    "negative cue": json.dumps({"one_prefix_prefix": "The keys", "one_prefix_word_good": "are",
                                "one_prefix_word_bad": "is", "cue_word_indices": [-1]}),
    "string cue": json.dumps({"one_prefix_prefix": "The keys", "one_prefix_word_good": "are",
                              "one_prefix_word_bad": "is", "cue_word_indices": ["1"]}),
    "float cue": json.dumps({"one_prefix_prefix": "The keys", "one_prefix_word_good": "are",
                             "one_prefix_word_bad": "is", "cue_word_indices": [1.5]}),
    "bool cue": json.dumps({"one_prefix_prefix": "The keys", "one_prefix_word_good": "are",
                            "one_prefix_word_bad": "is", "cue_word_indices": [True]}),
    "cues not a list": json.dumps({"one_prefix_prefix": "The keys", "one_prefix_word_good": "are",
                                   "one_prefix_word_bad": "is", "cue_word_indices": 1}),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_bad_probe_line_names_file_and_line(tmp_path, kind):
    path = write_lines(tmp_path / "probes.jsonl", [GOOD_LINE, "", GOOD_LINE, BAD_LINES[kind]])
    with pytest.raises(ProbeFileError, match=rf"probes\.jsonl:4: ") as info:
        load_probe_file(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_probe_file_is_a_probe_file_error(tmp_path):
    with pytest.raises(ProbeFileError, match="nope.jsonl"):
        load_probe_file(tmp_path / "nope.jsonl")


def test_probe_file_loads_cues_plain_blimp_lines_and_synthetic_probes(tmp_path):
    plain = json.dumps({"one_prefix_prefix": "Who should Derek hug", "one_prefix_word_good":
                        "after", "one_prefix_word_bad": "by", "UID": "adjunct_island",
                        "pair_id": 0})
    pairs = load_probe_file(write_lines(tmp_path / "p.jsonl", [GOOD_LINE, plain]))
    assert pairs[0] == MinimalPair("The keys to the cabinet", "are", "is", (1,), "agr",
                                   source=f"{tmp_path / 'p.jsonl'}:1")
    assert pairs[1].cue_word_indices == () and pairs[1].good == "after"
    corpus = generate_corpus(SyntheticConfig(n_documents=30, n_topics=2,
                                             content_words_per_topic=6, n_probes=10))
    synthetic = load_probe_file(write_corpus(corpus, tmp_path / "syn")["probes"])
    assert len(synthetic) == 10 and all(len(p.cue_word_indices) == 1 for p in synthetic)


# --------------------------------------------------------------------------- encoding
def test_split_cue_word_marks_all_its_pieces(tok):
    pieces = ids_of(tok, " " + RARE)
    assert len(pieces) >= 3, "precondition: the rare cue word splits into several tokens"
    first_pieces = ids_of(tok, RARE.capitalize())
    assert len(first_pieces) >= 3
    pairs = [MinimalPair(f"the {RARE} near the cat", "are", "is", (1,)),
             MinimalPair(f"{RARE.capitalize()} of the dogs", "run", "runs", (0, 3)),
             MinimalPair("the cat", "sleeps", "sleep")]
    enc = encode_pairs(pairs, tok)
    n_the = len(ids_of(tok, "the"))
    expected0 = [False] * n_the + [True] * len(pieces) + [False] * len(ids_of(tok, " near the cat"))
    row0 = ids_of(tok, pairs[0].prefix)
    assert enc.input_ids[0, : len(row0)].tolist() == row0
    assert enc.cue_mask[0, : len(row0)].tolist() == expected0
    row1 = ids_of(tok, pairs[1].prefix)
    dogs = len(ids_of(tok, " dogs"))
    expected1 = ([True] * len(first_pieces) + [False] * len(ids_of(tok, " of the"))
                 + [True] * dogs)
    assert enc.cue_mask[1, : len(row1)].tolist() == expected1
    assert not enc.cue_mask[2].any() and enc.has_cues.tolist() == [True, True, False]
    # right padding: the mask, the pad cue entries and the last prefix token
    assert enc.last.tolist() == [len(row0) - 1, len(row1) - 1, len(ids_of(tok, "the cat")) - 1]
    assert enc.attention_mask.sum(1).tolist() == [len(row0), len(row1), 2]
    assert not enc.cue_mask[enc.attention_mask == 0].any()


def test_good_and_bad_ids_are_the_first_token_of_space_word(tok):
    pairs = [MinimalPair("The keys to the cabinet", "are", "is", (1,)),
             MinimalPair("the cat", RARE, "sleeps", (1,))]
    enc = encode_pairs(pairs, tok)
    assert enc.good_ids.tolist() == [ids_of(tok, " are")[0], ids_of(tok, " " + RARE)[0]]
    assert enc.bad_ids.tolist() == [ids_of(tok, " is")[0], ids_of(tok, " sleeps")[0]]
    assert len(ids_of(tok, " are")) == 1  # a one-token word really is one token


def test_max_length_keeps_the_end_of_the_prefix(tok):
    pair = MinimalPair(f"the {RARE} near the red cat", "sleeps", "sleep", (1, 5))
    full = ids_of(tok, pair.prefix)
    enc = encode_pairs([pair], tok, max_length=3)
    assert enc.input_ids[0].tolist() == full[-3:]
    assert enc.cue_mask[0].tolist() == [False, False, True]  # " cat" kept, the rare word cut


# ---------------------------------------------------------------- evidence alignment
CUED = [  # (prefix, good, bad, cue word index); cue/good tokens are distinct one-token words
    ("the keys to the cabinet", "are", "is", 1),
    ("my dogs near the old mat", "run", "runs", 1),
    ("a small cat on the red mat", "sleeps", "sleep", 2),
    ("the big cats of my", "sleep", "sleeps", 2),
]


def cued_pairs():
    return [MinimalPair(p, g, b, (c,), uid=f"pair{i}") for i, (p, g, b, c) in enumerate(CUED)]


def known_answer_model(tok, sign):
    """Blocks zeroed; each cue word's embedding set to sign * 10 * the good word's."""
    model = zero_blocks(gpt2(tok))
    E = model.get_input_embeddings().weight
    with torch.no_grad():
        for prefix, good, _, c in CUED:
            cue_ids, good_ids = ids_of(tok, " " + prefix.split()[c]), ids_of(tok, " " + good)
            assert len(cue_ids) == len(good_ids) == 1 and good_ids[0] not in ids_of(tok, prefix)
            E[cue_ids[0]] = sign * 10 * E[good_ids[0]]
    return model


def test_evidence_ap_is_one_when_the_cue_carries_the_answer(tok):
    out = EvidenceProbe(cued_pairs(), tok, batch_size=3)(known_answer_model(tok, +1))
    for method in ("normxlogit", "logat", "norm"):
        assert out[f"normx/evidence_ap/{method}"] == pytest.approx(1.0)
    for layer in range(3):  # every layer is h = E[x] here
        assert out[f"normx/evidence_ap_by_layer/normxlogit/layer_{layer:02d}"] == pytest.approx(1.0)
        assert out[f"normx/evidence_ap_by_layer/logat/layer_{layer:02d}"] == pytest.approx(1.0)
    assert out["normx/evidence_dp/normxlogit"] > out["normx/evidence_dp/random"]
    assert out["normx/evidence_n_pairs"] == 4


def test_evidence_ap_separates_norm_from_normxlogit_when_the_cue_argues_against(tok):
    """Cue embedding = -10 x good's: the largest norm, but the most negative LogAt."""
    out = EvidenceProbe(cued_pairs(), tok)(known_answer_model(tok, -1))
    lengths = [len(ids_of(tok, p)) for p, *_ in CUED]
    bottom = np.mean([1 / n for n in lengths])  # the single cue ranked last
    assert out["normx/evidence_ap/norm"] == pytest.approx(1.0)
    assert out["normx/evidence_ap/normxlogit"] == pytest.approx(bottom)
    assert out["normx/evidence_ap/logat"] == pytest.approx(bottom)
    assert out["normx/evidence_ap/random"] == pytest.approx(
        np.mean([(n - 1) * sum(1 / k for k in range(1, n + 1)) / (n * (n - 1))
                 for n in lengths]))


def test_pair_accuracy_matches_a_plain_forward_pass(tok):
    model = gpt2(tok, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    pairs = cued_pairs() + [
        MinimalPair(p, b, g, (), uid=f"swap{i}") for i, (p, g, b, _) in enumerate(CUED)] + [
        MinimalPair("the cat", "sleeps", "sleep", (), uid="short"),
        MinimalPair("my old dogs near the big red cats on the mat", "run", "runs", (1,),
                    uid="long")]
    out = EvidenceProbe(pairs, tok, batch_size=4)(model)
    correct = {}
    for pair in pairs:
        with torch.no_grad():
            logits = model(torch.tensor([ids_of(tok, pair.prefix)])).logits[0, -1]
        good, bad = ids_of(tok, " " + pair.good)[0], ids_of(tok, " " + pair.bad)[0]
        correct[pair.uid] = float(logits[good] > logits[bad])
    for uid, value in correct.items():
        assert out[f"normx/pair_accuracy_by_uid/{uid}"] == value
    assert out["normx/pair_accuracy"] == pytest.approx(np.mean(list(correct.values())))
    assert 0 < out["normx/pair_accuracy"] < 1
    assert out["normx/pair_n_pairs"] == len(pairs) and out["normx/evidence_n_pairs"] == 5


def _ap_by_hand(order: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """AP of rankings ``order`` [S, n] (positions, best first) with relevant mask."""
    rel = relevant[order]  # [S, n]
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, rel.shape[1] + 1)
    return (precision * rel).sum(1) / relevant.sum()


def test_random_baseline_equals_monte_carlo_expectation(tok):
    pairs = cued_pairs() + [MinimalPair(f"the {RARE} near the red cat on my mat", "sleeps",
                                        "sleep", (1, 5)),
                            MinimalPair("the cat", "sleeps", "sleep", (1,))]
    probe = EvidenceProbe(pairs, tok, contrastive=False)
    out = probe(gpt2(tok))
    rng = np.random.default_rng(0)
    mc, dp = [], []
    for b in range(len(pairs)):
        t = int(probe.encoded.last[b])
        relevant = probe.encoded.cue_mask[b, : t + 1].numpy()
        order = np.argsort(rng.random((40000, t + 1)), axis=1)
        mc.append(_ap_by_hand(order, relevant).mean())
        dp.append(relevant.mean())
    assert out["normx/evidence_ap/random"] == pytest.approx(np.mean(mc), abs=3e-3)
    assert out["normx/evidence_dp/random"] == pytest.approx(np.mean(dp))
    assert "normx/evidence_ap/normxlogit_contrastive" not in out


def test_evidence_probe_keeps_train_mode_and_leaves_no_gradients(tok):
    model = gpt2(tok, n_layer=1, resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    model.train()
    probe = EvidenceProbe(cued_pairs(), tok, layers="last")
    first, second = probe(model), probe(model)
    assert first == second  # dropout was off inside the probe
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert not any(k.startswith("normx/evidence_ap_by_layer") for k in first)


# ---------------------------------------------------------------------- faithfulness
def basis_model(V=48, d=64):
    """E[w] = 3 e_w (orthogonal, equal norms), blocks and positions zeroed: the prediction
    at t is x_t itself and depends on position t alone; LogAt ranks t first, strictly."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_layer=2, n_embd=d, n_head=2,
                                       n_positions=32, eos_token_id=0)).eval()
    zero_blocks(model)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(3 * torch.eye(V, d))
    return model


def distinct_blocks(n, length, V, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.arange(1, V))[:length].tolist() for _ in range(n)]


def test_faithfulness_on_a_model_whose_important_position_is_known():
    model, blocks = basis_model(), distinct_blocks(12, 16, 48)
    with torch.no_grad():  # precondition: the prediction is the last token itself
        logits = model(torch.tensor(blocks)).logits[:, -1]
    assert logits.argmax(-1).tolist() == [b[-1] for b in blocks]
    p_full = logits.softmax(-1).max(-1).values
    x = torch.tensor(blocks)
    x[:, -1] = 0
    with torch.no_grad():
        p_gone = model(x).logits[:, -1].softmax(-1)[torch.arange(12), torch.tensor(blocks)[:, -1]]
    drop = float((p_full - p_gone).mean())
    assert drop > 0.1

    out = FaithfulnessProbe(blocks, n_examples=12, length=16, baseline_token_id=0, captum=True,
                            methods=("normxlogit", "logat", "norm", "random", "loo"))(model)
    for m in ("loo", "logat", "normxlogit", "saliency"):  # rank t first: full drop, suffice
        assert out[f"normx/comprehensiveness/{m}"] == pytest.approx(drop, abs=1e-5), m
        assert out[f"normx/sufficiency/{m}"] == pytest.approx(0.0, abs=1e-5), m
    # Equal norms tie; ties keep position order, so t (last) is never in the top 50%.
    assert out["normx/comprehensiveness/norm"] == pytest.approx(0.0, abs=1e-6)
    assert out["normx/sufficiency/norm"] == pytest.approx(drop, abs=1e-5)
    assert 0 < out["normx/comprehensiveness/random"] < drop
    assert out["normx/loo_spearman/loo"] == pytest.approx(1.0)
    assert math.isnan(out["normx/loo_spearman/norm"])  # constant scores
    assert out["normx/faithfulness_n_examples"] == 12
    assert out["normx/faithfulness_mean_p_full"] == pytest.approx(float(p_full.mean()), abs=1e-6)
    for m in ("input_x_gradient", "integrated_gradients"):
        assert math.isfinite(out[f"normx/comprehensiveness/{m}"])


def perturbed_gpt2(tok, seed=1):
    model = gpt2(tok, seed=seed, n_embd=48, resid_pdrop=0.3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def test_faithfulness_properties_on_a_random_model(tok):
    model = perturbed_gpt2(tok)
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, size=30)) for _ in range(20)]
    everything = FaithfulnessProbe(texts, tok, n_examples=10, length=12, fractions=(1.0,),
                                   methods=("normxlogit", "norm", "random", "loo"))(model)
    for m in ("normxlogit", "norm", "random", "loo"):  # all kept: no change; all removed: same
        assert everything[f"normx/sufficiency/{m}"] == pytest.approx(0.0, abs=1e-6)
        assert everything[f"normx/comprehensiveness/{m}"] == pytest.approx(
            everything["normx/comprehensiveness/loo"], abs=1e-6)
    out = FaithfulnessProbe(texts, tok, n_examples=10, length=12,
                            methods=("normxlogit", "logat", "random", "loo"))(model)
    assert out["normx/faithfulness_n_examples"] == 10
    assert out["normx/comprehensiveness/loo"] > out["normx/comprehensiveness/random"]
    assert out["normx/loo_spearman/loo"] == pytest.approx(1.0)
    assert -1 <= out["normx/loo_spearman/normxlogit"] <= 1


def test_faithfulness_probe_restores_mode_leaves_no_gradients_and_is_deterministic(tok):
    model = perturbed_gpt2(tok)
    model.train()
    blocks = torch.randint(1, len(tok), (6, 10), generator=torch.Generator().manual_seed(0))
    probe = FaithfulnessProbe(blocks, tok, n_examples=6, length=10, captum=True, ig_steps=4)
    first, second = probe(model), probe(model)
    assert first.keys() == second.keys()
    for key in first:
        assert first[key] == pytest.approx(second[key], abs=1e-6, nan_ok=True), key
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    expected = {f"normx/{kind}/{m}" for kind in ("comprehensiveness", "sufficiency",
                                                  "loo_spearman")
                for m in ("normxlogit", "logat", "norm", "random", "saliency",
                          "input_x_gradient", "integrated_gradients")}
    assert expected <= first.keys()


def test_faithfulness_rejects_bad_arguments(tok):
    with pytest.raises(ValueError, match="unknown faithfulness methods"):
        FaithfulnessProbe([[1, 2, 3]], methods=("lime",))
    with pytest.raises(ValueError, match="fractions"):
        FaithfulnessProbe([[1, 2, 3]], fractions=(0.0,))
    with pytest.raises(ValueError, match="tokenizer"):
        FaithfulnessProbe(["some text"])


def test_faithfulness_of_padded_examples_equals_each_alone(tok):
    """Blocks of different lengths are right-padded together; each scores as if alone."""
    model = perturbed_gpt2(tok, seed=2)
    g = torch.Generator().manual_seed(1)
    long, short = (torch.randint(1, len(tok), (n,), generator=g).tolist() for n in (14, 6))
    kw = dict(length=20, methods=("normxlogit", "logat", "norm", "loo"), baseline_token_id=0)
    both = FaithfulnessProbe([long, short], **kw)(model)
    alone = [FaithfulnessProbe([b], **kw)(model) for b in (long, short)]
    for key, value in both.items():
        if key.endswith("n_examples"):
            continue
        assert value == pytest.approx((alone[0][key] + alone[1][key]) / 2, abs=1e-5), key


class _SlowTokenizer:
    """The fast tokenizer seen through a slow one's interface (no offsets mapping)."""

    is_fast = False

    def __init__(self, fast):
        self.fast, self.eos_token_id, self.pad_token_id = fast, fast.eos_token_id, None

    def __call__(self, text, add_special_tokens=False, **kw):
        assert "return_offsets_mapping" not in kw
        return self.fast(text, add_special_tokens=add_special_tokens)


def test_slow_tokenizers_are_encoded_word_by_word_to_the_same_cues(tok):
    pairs = [MinimalPair(f"the {RARE} near the cat", "are", "is", (1, 4)),
             MinimalPair(f"{RARE.capitalize()} of the dogs", "run", "runs", (0,))]
    fast, slow = encode_pairs(pairs, tok), encode_pairs(pairs, _SlowTokenizer(tok))
    for name in ("input_ids", "attention_mask", "cue_mask", "good_ids", "bad_ids", "last"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name


def test_blimp_hub_rows_map_to_minimal_pairs(monkeypatch):
    import datasets

    rows = [
        {"sentence_good": "The keys to the cabinet are red.", "sentence_bad":
         "The keys to the cabinet is red.", "UID": "agr", "one_prefix_method": True},
        {"sentence_good": "Who did Bo see?", "sentence_bad": "Who Bo did see?", "UID": "q",
         "one_prefix_method": False},
        {"sentence_good": "Dogs bark.", "sentence_bad": "Dogs barks.", "UID": "agr",
         "one_prefix_method": True},
    ]
    calls = []
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **kw: calls.append((a, kw)) or rows)
    pairs = load_blimp_from_hub("regular_plural_subject_verb_agreement_1")
    assert calls[0][0] == ("nyu-mll/blimp", "regular_plural_subject_verb_agreement_1")
    assert [(p.prefix, p.good, p.bad, p.cue_word_indices, p.uid) for p in pairs] == [
        ("The keys to the cabinet", "are", "is", (), "agr"), ("Dogs", "bark", "barks", (), "agr")]
