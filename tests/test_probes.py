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

from normx_track.attribution.normxlogit import attribute
from normx_track.training.data.synthetic import SyntheticConfig, generate_corpus, write_corpus
from normx_track.training.data.tokenizer import train_bpe
from normx_track.errors import InputError
from normx_track.probes.encoding import encode_pairs
from normx_track.probes.files import MinimalPair, ProbeFileError, load_probe_file
from normx_track.text import marks_word_starts
from normx_track.probes.faithfulness import gradient_attributions
from normx_track.probes.base import EvidenceProbe, FaithfulnessProbe

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


def running(tok, text):
    """The tokens of ``text`` as running text: after a space, as the probes encode it."""
    return ids_of(tok, " " + text)


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
    "good equals bad": json.dumps({"one_prefix_prefix": "The keys", "one_prefix_word_good": "are",
                                   "one_prefix_word_bad": " are"}),
    "same sentences": json.dumps({"sentence_good": "Dogs bark.", "sentence_bad": "Dogs bark."}),
    "half a sentence pair": json.dumps({"sentence_good": "Dogs bark."}),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_bad_probe_line_names_file_and_line(tmp_path, kind):
    path = write_lines(tmp_path / "probes.jsonl", [GOOD_LINE, "", GOOD_LINE, BAD_LINES[kind]])
    with pytest.raises(ProbeFileError, match=r"probes\.jsonl:4: ") as info:
        load_probe_file(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("content", [b"", b"\n  \n", b'{"one_prefix_prefix": "\xff\xfe"}\n'])
def test_empty_or_binary_probe_file_is_named(tmp_path, content):
    path = tmp_path / "probes.jsonl"
    path.write_bytes(content)
    with pytest.raises(ProbeFileError, match=r"probes\.jsonl"):
        load_probe_file(path)


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


def test_spaces_around_a_prefix_do_not_become_positions(tmp_path, tok):
    spaced = json.dumps({"one_prefix_prefix": "  The keys to the cabinet ",
                         "one_prefix_word_good": "are", "one_prefix_word_bad": "is",
                         "cue_word_indices": [1]})
    pairs = load_probe_file(write_lines(tmp_path / "p.jsonl", [GOOD_LINE, spaced]))
    assert pairs[1].prefix == "The keys to the cabinet"
    enc = encode_pairs(pairs, tok)
    assert torch.equal(enc.input_ids[0], enc.input_ids[1])
    assert enc.last.tolist() == [len(running(tok, "The keys to the cabinet")) - 1] * 2


# --------------------------------------------------------------------------- encoding
@pytest.mark.parametrize("leading_space", [True, False])
def test_split_cue_word_marks_all_its_pieces(tok, leading_space):
    """Every piece of a cue word is a cue, the sentence-initial word included, whether the
    text is encoded as running text (after a space) or as written."""
    lead = " " if leading_space else ""
    pieces = ids_of(tok, " " + RARE)
    assert len(pieces) >= 3, "precondition: the rare cue word splits into several tokens"
    first_pieces = ids_of(tok, lead + RARE.capitalize())
    assert len(first_pieces) >= 3
    pairs = [MinimalPair(f"the {RARE} near the cat", "are", "is", (1,)),
             MinimalPair(f"{RARE.capitalize()} of the dogs", "run", "runs", (0, 3)),
             MinimalPair("the cat", "sleeps", "sleep")]
    enc = encode_pairs(pairs, tok, leading_space=leading_space)
    n_the = len(ids_of(tok, lead + "the"))
    expected0 = [False] * n_the + [True] * len(pieces) + [False] * len(ids_of(tok, " near the cat"))
    row0 = ids_of(tok, lead + pairs[0].prefix)
    assert enc.input_ids[0, : len(row0)].tolist() == row0
    assert enc.cue_mask[0, : len(row0)].tolist() == expected0
    row1 = ids_of(tok, lead + pairs[1].prefix)
    dogs = len(ids_of(tok, " dogs"))
    expected1 = ([True] * len(first_pieces) + [False] * len(ids_of(tok, " of the"))
                 + [True] * dogs)
    assert enc.cue_mask[1, : len(row1)].tolist() == expected1
    assert not enc.cue_mask[2].any() and enc.has_cues.tolist() == [True, True, False]
    # right padding: the mask, the pad cue entries and the last prefix token
    assert enc.last.tolist() == [len(row0) - 1, len(row1) - 1,
                                 len(ids_of(tok, lead + "the cat")) - 1]
    words = [len(ids_of(tok, f"{lead}{p.prefix} {p.good}")) for p in pairs]  # + good word
    assert enc.attention_mask.sum(1).tolist() == words
    assert not enc.cue_mask[enc.attention_mask == 0].any()
    assert enc.stats["normx/probe/leading_space"] == float(leading_space)


def test_words_map_to_all_their_tokens_and_the_contrast_to_where_they_differ(tok):
    stem, other = ids_of(tok, " " + RARE), ids_of(tok, " zyzzogexon")
    shared = next(i for i, (g, b) in enumerate(zip(stem, other)) if g != b)
    assert shared >= 2, "precondition: the two rare words share their first pieces"
    pairs = [MinimalPair("The keys to the cabinet", "are", "is", (1,)),
             MinimalPair("the cat", RARE, "sleeps", (1,)),
             MinimalPair("the cat", RARE, "zyzzogexon", (1,)),
             MinimalPair("the cat", RARE, RARE + "s", (1,))]  # the bad word extends the good
    assert ids_of(tok, " " + RARE + "s")[: len(stem)] == stem, "precondition"
    enc = encode_pairs(pairs, tok)
    assert enc.good_tokens == [ids_of(tok, " are"), stem, stem, stem]
    assert enc.bad_tokens == [ids_of(tok, " is"), ids_of(tok, " sleeps"), other,
                              ids_of(tok, " " + RARE + "s")]
    assert enc.good_ids.tolist() == [ids_of(tok, " are")[0]] + [stem[0]] * 3
    assert enc.bad_ids.tolist() == [ids_of(tok, " is")[0], ids_of(tok, " sleeps")[0],
                                    stem[0], stem[0]]
    # The contrast: the first differing token, the shared ones appended to the prefix.
    last = enc.last.tolist()
    assert enc.contrast_position.tolist()[:3] == [last[0], last[1], last[2] + shared]
    assert enc.contrast_good[2] == stem[shared] and enc.contrast_bad[2] == other[shared]
    assert enc.has_contrast.tolist() == [True, True, True, False]
    row = running(tok, "the cat") + stem  # the prefix and the whole good word
    assert enc.input_ids[2, : len(row)].tolist() == row
    assert enc.attention_mask[2].sum() == len(row) and not enc.cue_mask[2, 2:].any()
    assert enc.context[2] == running(tok, "the cat")


def test_max_length_keeps_the_end_of_the_prefix(tok):
    pair = MinimalPair(f"the {RARE} near the red cat", "sleeps", "sleep", (1, 5))
    full = running(tok, pair.prefix)
    enc = encode_pairs([pair], tok, max_length=4)  # 3 prefix tokens + the one-token word
    assert enc.context[0] == full[-3:] and enc.input_ids[0].tolist() == full[-3:] + \
        ids_of(tok, " sleeps")
    assert enc.cue_mask[0].tolist() == [False, False, True, False]  # " cat" kept, the rare
    # word cut; the good word's position is never a cue
    with pytest.raises(ValueError, match="positions"):
        encode_pairs([MinimalPair("the cat", RARE, "sleeps")], tok, max_length=2)


def test_good_and_bad_that_tokenise_alike_are_rejected_naming_the_pair(tok):
    pair = MinimalPair("the cat", "sleeps", " sleeps ", source="p.jsonl:7")
    with pytest.raises(ValueError, match="p.jsonl:7"):
        encode_pairs([pair], tok)


def fast_tokenizer(model, pre_tokenizer, trainer, texts):
    """An HF tokenizer of the given `tokenizers` parts, trained on ``texts``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizer
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


def test_word_start_marks_are_read_from_what_the_tokenizer_does(tok):
    """Byte-level BPE and Metaspace without a prepended "▁" fold the space into a word's
    first token: a leading space helps. Metaspace prepending "▁" itself, and WordPiece
    (spaces dropped), already tokenise a sentence-initial word as mid-text."""
    from tokenizers import models, pre_tokenizers, trainers

    texts = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 5
    assert marks_word_starts(tok)

    def bpe(scheme):
        return fast_tokenizer(models.BPE(), pre_tokenizers.Metaspace(prepend_scheme=scheme),
                              trainers.BpeTrainer(vocab_size=200, special_tokens=["<eos>"]), texts)

    assert marks_word_starts(bpe("never"))
    assert not marks_word_starts(bpe("always")) and not marks_word_starts(bpe("first"))
    wordpiece = fast_tokenizer(models.WordPiece(unk_token="<eos>"), pre_tokenizers.Whitespace(),
                               trainers.WordPieceTrainer(vocab_size=200,
                                                         special_tokens=["<eos>"]), texts)
    assert not marks_word_starts(wordpiece)
    pair = MinimalPair("the keys to the cabinet", "are", "is", (1,))
    spaced, written = (encode_pairs([pair], wordpiece, leading_space=flag) for flag in (True, False))
    assert torch.equal(spaced.input_ids, written.input_ids)  # no space put before it
    assert spaced.stats["normx/probe/leading_space"] == 0.0


@pytest.fixture(scope="module")
def mid_text_tok(tmp_path_factory):
    """A BPE whose probe words only ever occur mid-text (every line starts with "so")."""
    rng = np.random.default_rng(1)
    vocab = "The keys to the cabinet Dogs near cat are is run runs red".split()
    texts = ["so " + " ".join(rng.choice(vocab, size=10)) for _ in range(300)]
    return train_bpe(texts, 320, tmp_path_factory.mktemp("mid_text_bpe"))


def test_sentence_initial_words_are_tokenised_as_mid_text(mid_text_tok):
    """By default a prefix is encoded as running text: its first word takes the pieces it
    has mid-text, cues and counts follow; ``leading_space=False`` encodes as written. The
    reference is each word encoded alone after a space (as written: the first without)."""
    tok = mid_text_tok
    pairs = [MinimalPair("the keys to the cabinet", "are", "is", (1,)),
             MinimalPair("Dogs near the cat", "run", "runs", (0,))]
    for leading_space in (True, False):
        enc = encode_pairs(pairs, tok, leading_space=leading_space)
        pieces_per_word, cue_pieces = [], []
        for b, pair in enumerate(pairs):
            words = pair.prefix.split()
            pieces = [ids_of(tok, (" " if w or leading_space else "") + word)
                      for w, word in enumerate(words)]
            row = [i for piece in pieces for i in piece]
            assert enc.context[b] == row
            assert enc.cue_mask[b, : len(row)].tolist() == [
                w in pair.cue_word_indices for w, piece in enumerate(pieces) for _ in piece]
            pieces_per_word += [len(piece) for piece in pieces]
            cue_pieces += [len(pieces[c]) for c in pair.cue_word_indices]
        assert enc.stats["normx/probe/mean_pieces_per_word"] == pytest.approx(
            np.mean(pieces_per_word))
        assert enc.stats["normx/probe/cue_split_share"] == np.mean([n >= 2 for n in cue_pieces])
        if leading_space:  # every word is one token mid-text
            assert pieces_per_word == [1] * 9 and enc.stats["normx/probe/cue_split_share"] == 0
        else:  # precondition: sentence-initially "the" and "Dogs" split
            assert pieces_per_word[0] >= 2 and pieces_per_word[5] >= 2
            assert enc.stats["normx/probe/cue_split_share"] == 0.5
    sentence = MinimalPair("", "", "", (), "s", "", "Dogs near the cat run.",
                           "Dogs near the cat runs.")
    for leading_space, lead in ((True, " "), (False, "")):
        probe = EvidenceProbe(pairs + [sentence], tok, leading_space=leading_space)
        assert probe.sentences.good == [ids_of(tok, lead + p.sentence_good) for p in [sentence]]
        assert probe.sentences.bad == [ids_of(tok, lead + sentence.sentence_bad)]


def test_a_cut_cue_and_pairs_too_long_are_counted_and_warned_once(tok, caplog):
    """A prefix longer than the context keeps its end: a pair whose cue was cut gives
    accuracy only and is counted; a pair whose words alone do not fit, and a BLiMP
    sentence that does not, are skipped and counted; one warning each, not per call."""
    pairs = [MinimalPair("my dogs " + "near the big cat " * 3 + "on the", "mat", "cats", (1,)),
             MinimalPair("the dogs near the cat", "sleep", "sleeps", (1,)),
             MinimalPair("the cat", RARE, "sleeps", ()),  # the words alone take 10 tokens
             MinimalPair("", "", "", (), "s", "", "the cat sleeps", "the cat sleep"),
             MinimalPair("", "", "", (), "s", "", "the big cat on the red mat sleeps",
                         "the big cat on the red mat sleep")]
    assert len(running(tok, pairs[0].prefix)) > 7 and len(ids_of(tok, " " + RARE)) > 8
    model = perturbed_gpt2(tok, seed=8)
    with caplog.at_level("WARNING", logger="normx_track.probes.evidence"):
        probe = EvidenceProbe(pairs, tok, max_length=8)
        first, second = probe(model), probe(model)
    assert first == second
    assert first["normx/evidence_n_cue_truncated"] == 1 and first["normx/evidence_n_pairs"] == 1
    assert first["normx/evidence_n_cue_at_prediction"] == 0
    assert first["normx/pair_n_too_long"] == 1 and first["normx/pair_n_pairs"] == 2
    assert first["normx/blimp_n_too_long"] == 1 and first["normx/blimp_n_pairs"] == 1
    for key in ("evidence_n_cue_truncated", "pair_n_too_long", "blimp_n_too_long"):
        assert sum(f"normx/{key}" in r.getMessage() for r in caplog.records) == 1, key
    with pytest.raises(InputError, match="positions"):
        EvidenceProbe([pairs[2], pairs[4]], tok, max_length=8)


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
    ranked = [len(running(tok, p)) - 1 for p, *_ in CUED]  # positions 0..t-1
    bottom = np.mean([1 / n for n in ranked])  # the single cue ranked last
    assert out["normx/evidence_ap/norm"] == pytest.approx(1.0)
    assert out["normx/evidence_ap/normxlogit"] == pytest.approx(bottom)
    assert out["normx/evidence_ap/logat"] == pytest.approx(bottom)
    assert out["normx/evidence_ap/random"] == pytest.approx(
        np.mean([(n - 1) * sum(1 / k for k in range(1, n + 1)) / (n * (n - 1))
                 for n in ranked]))


def _ap_loop(scores, relevant) -> float:
    """Average precision by a plain loop over the ranking (scores distinct)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, total = 0, 0.0
    for rank, i in enumerate(order, start=1):
        if relevant[i]:
            hits += 1
            total += hits / rank
    return total / hits


def test_the_prediction_position_is_never_ranked(tok):
    """A random model: AP over positions 0..t-1 by a plain loop equals the probe's, even
    where t (whose LogAt is the output logit itself) would top the ranking; a probe whose
    only cue sits at t is counted and scored for accuracy only."""
    model = perturbed_gpt2(tok, seed=4)
    pairs = cued_pairs() + [MinimalPair("the keys to the cabinet", "are", "is", (4,), "at_t"),
                            MinimalPair("the big cats of my", "sleep", "sleeps", (2, 4), "both")]
    out = EvidenceProbe(pairs, tok, contrastive=False)(model)
    expected = {"normxlogit": [], "logat": [], "norm": []}
    for pair in pairs[:4] + pairs[5:]:
        ids = torch.tensor([running(tok, pair.prefix)])
        a = attribute(model, ids, target=ids_of(tok, " " + pair.good)[0])
        t = ids.shape[1] - 1
        cue = [i in pair.cue_word_indices for i in range(t)]  # one token per word here
        for m in expected:
            expected[m].append(_ap_loop(getattr(a, m)[0, :t].tolist(), cue))
    for m, values in expected.items():
        assert out[f"normx/evidence_ap/{m}"] == pytest.approx(np.mean(values)), m
    assert out["normx/evidence_n_pairs"] == 5 and out["normx/evidence_n_cue_at_prediction"] == 1
    assert out["normx/pair_n_pairs"] == 6


def test_no_piece_of_the_word_at_t_is_ranked(tok):
    """A cue word split into pieces: read at t, none of its pieces is ranked (the pair
    gives accuracy only and is counted); right before the word at t, all of them are. The
    reference: AP by a plain loop and DP by a softmax over the positions of the earlier
    words, from an encoding made word by word."""
    model = perturbed_gpt2(tok, seed=7)
    pairs = [MinimalPair(f"the dogs near {RARE}", "sleep", "sleeps", (3,), "at_t"),
             MinimalPair(f"the dogs near {RARE} cat", "sleep", "sleeps", (3,), "before_t"),
             MinimalPair(f"my {RARE} near the {RARE}", "run", "runs", (1, 4), "both")]
    out = EvidenceProbe(pairs, tok, contrastive=False)(model)
    methods = ("normxlogit", "logat", "norm")
    ap, dp, random_dp = {m: [] for m in methods}, {m: [] for m in methods}, []
    for pair in pairs[1:]:
        words = pair.prefix.split()
        pieces = [ids_of(tok, " " + w) for w in words]
        ids = [i for piece in pieces for i in piece]
        assert ids == running(tok, pair.prefix) and len(pieces[-1]) >= 1, "precondition"
        word_of = [w for w, piece in enumerate(pieces) for _ in piece]
        ranked = [j for j, w in enumerate(word_of) if w < len(words) - 1]
        cue = np.array([word_of[j] in pair.cue_word_indices for j in ranked])
        a = attribute(model, torch.tensor([ids]), target=ids_of(tok, " " + pair.good)[0])
        for m in methods:
            scores = getattr(a, m)[0, ranked].double().numpy()
            ap[m].append(_ap_loop(scores.tolist(), cue))
            weights = np.exp(scores - scores.max())
            dp[m].append(weights[cue].sum() / weights.sum())
        random_dp.append(cue.mean())
    assert len(pieces[-1]) >= 3, "precondition: the word at t is split"
    for m in methods:
        assert out[f"normx/evidence_ap/{m}"] == pytest.approx(np.mean(ap[m])), m
        assert out[f"normx/evidence_dp/{m}"] == pytest.approx(np.mean(dp[m])), m
    assert out["normx/evidence_dp/random"] == pytest.approx(np.mean(random_dp))
    assert out["normx/evidence_n_pairs"] == 2 and out["normx/evidence_n_cue_at_prediction"] == 1
    assert out["normx/pair_n_pairs"] == 3


def _logprob(model, context, continuation) -> float:
    """log p(continuation | context), one token at a time through the full model."""
    total, ids = 0.0, list(context)
    for token in continuation:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        total += float(logits.log_softmax(-1)[token])
        ids.append(token)
    return total


def test_pair_accuracy_compares_whole_words_by_log_probability(tok):
    model = perturbed_gpt2(tok, seed=3)
    pairs = cued_pairs() + [
        MinimalPair(p, b, g, (), uid=f"swap{i}") for i, (p, g, b, _) in enumerate(CUED)] + [
        MinimalPair("the cat", RARE, "sleep", (), uid="multi"),
        MinimalPair("the cat", RARE + "s", RARE, (), uid="shared"),
        MinimalPair("my old dogs near the big red cats on the mat", "run", "runs", (1,),
                    uid="long")]
    out = EvidenceProbe(pairs, tok, batch_size=4)(model)
    correct = {}
    for pair in pairs:
        context = running(tok, pair.prefix)
        good = running(tok, pair.prefix + " " + pair.good)[len(context):]
        bad = running(tok, pair.prefix + " " + pair.bad)[len(context):]
        correct[pair.uid] = float(_logprob(model, context, good) > _logprob(model, context, bad))
    for uid, value in correct.items():
        assert out[f"normx/pair_accuracy_by_uid/{uid}"] == value, uid
    assert out["normx/pair_accuracy"] == pytest.approx(np.mean(list(correct.values())))
    assert 0 < out["normx/pair_accuracy"] < 1
    assert out["normx/pair_n_pairs"] == len(pairs) and out["normx/evidence_n_pairs"] == 5
    assert out["normx/pair_n_shared_first_token"] == 1


def test_bad_words_are_read_from_the_good_words_pass_and_only_longer_ones_take_another(
        tok, monkeypatch):
    """log p(bad | prefix) is read from the pass over prefix + good wherever the bad word
    has at most one token past those it shares with the good word; the rest take one
    more pass of their own rows only. Both against a token-at-a-time loop."""
    from normx_track.probes import evidence
    model = perturbed_gpt2(tok, seed=4)
    pairs = [MinimalPair("the cat", "sleeps", "sleep", (), uid="one_token"),
             MinimalPair("the cat", RARE + "s", RARE, (), uid="bad_within_good"),
             MinimalPair("the cat", RARE, RARE + "s", (), uid="one_past_good"),
             MinimalPair("the cat", "sleep", RARE, (), uid="long_bad")]
    enc = encode_pairs(pairs, tok)
    past = [len(b) - n for b, n in zip(enc.bad_tokens, (enc.contrast_position - enc.last))]
    assert past[:3] == [1, 0, 1] and past[3] >= 2, "precondition: the four cases"
    scored, again = {}, []
    real_pair_accuracy = evidence.EvidenceProbe._pair_accuracy
    real_continuation = evidence.continuation_logprobs

    def spy_accuracy(self, model, good, bad):
        out = real_pair_accuracy(self, model, good, bad)
        scored["good"], scored["bad"] = good, bad
        return out

    def spy_continuation(model, contexts, continuations, *args):
        again.append(len(contexts))
        out = real_continuation(model, contexts, continuations, *args)
        scored["again"] = out
        return out

    monkeypatch.setattr(evidence.EvidenceProbe, "_pair_accuracy", spy_accuracy)
    monkeypatch.setattr(evidence, "continuation_logprobs", spy_continuation)
    EvidenceProbe(pairs, tok, contrastive=False)(model)
    assert again == [1], "only the bad word two tokens past the good one takes a pass"
    for i, pair in enumerate(pairs):
        context = running(tok, pair.prefix)
        for word, tokens in (("good", enc.good_tokens[i]), ("bad", enc.bad_tokens[i])):
            expected = _logprob(model, context, tokens)
            got = scored[word][i] if not (word == "bad" and i == 3) else scored["again"][0]
            assert got == pytest.approx(expected, abs=1e-4), (pair.uid, word)
    assert math.isnan(scored["bad"][3]), "the long bad word is not read from the good pass"


def _shared_first_token_words(tok, n):
    """Pairs of novel words whose tokenisations share the first token, differ later and
    have the same length (so neither is favoured by length alone)."""
    words = ["zy" + a + b + c for a in "zqxjkv" for b in ("ab", "oc", "ud", "ef", "ig", "oh")
             for c in ("", "w")]
    by_first: dict = {}
    for w in words:
        by_first.setdefault(tuple(ids_of(tok, " " + w)[:1]), []).append(w)
    out = []
    for group in by_first.values():
        for i, u in enumerate(group):
            for v in group[i + 1:]:
                tu, tv = ids_of(tok, " " + u), ids_of(tok, " " + v)
                if len(tu) == len(tv) and tu != tv:
                    out.append((u, v))
    assert len(out) >= n, "precondition: enough word pairs that share their first token"
    return out[:n]


def preferring_model(tok, good_tokens, bad_tokens):
    """A unigram model: f(h) is the constant e_0 (ln_f weight 0, bias e_0), so logits are
    U[:, 0] everywhere: +8 for the good words' tokens, -8 for the bad words'."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2,
                                       n_positions=64, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[sorted(good_tokens), 0] = 8.0
        model.lm_head.weight[sorted(bad_tokens), 0] = -8.0
    return model


def _after_shared(g, b):
    n = next((i for i, (x, y) in enumerate(zip(g, b)) if x != y), min(len(g), len(b)))
    return set(g[n:]), set(b[n:])


def test_a_model_preferring_every_good_word_scores_one_whatever_the_tokenisation(tok):
    candidates = [MinimalPair("the dogs near the mat", "zyqab", "runs", uid="longer_good"),
                  MinimalPair("my keys", "are", "zykoc", uid="longer_bad"),
                  MinimalPair("a cat on the mat", "sleeps", "sleep", uid="one_token")]
    candidates += [MinimalPair("the cat", u, v, uid="shared_first")
                   for u, v in _shared_first_token_words(tok, 40)]
    # Orient and keep pairs so that no token is good in one pair and bad in another.
    pairs, good, bad = [], set(), set()
    for pair in candidates:
        enc = encode_pairs([pair], tok)
        g, b = _after_shared(enc.good_tokens[0], enc.bad_tokens[0])
        for (gg, bb), p in (((g, b), pair), ((b, g), MinimalPair(
                pair.prefix, pair.bad, pair.good, uid=pair.uid))):
            if not (gg & (bad | bb)) and not (bb & (good | gg)):
                pairs.append(p)
                good |= gg
                bad |= bb
                break
    enc = encode_pairs(pairs, tok)
    assert sum(g[0] == b[0] for g, b in zip(enc.good_tokens, enc.bad_tokens)) >= 3, \
        "precondition: several pairs share their first token"
    assert {p.uid for p in pairs} == {"shared_first", "longer_good", "longer_bad", "one_token"}
    out = EvidenceProbe(pairs, tok, contrastive=False)(preferring_model(tok, good, bad))
    assert out["normx/pair_accuracy"] == 1.0
    assert out["normx/pair_accuracy_by_uid/shared_first"] == 1.0


def test_random_init_scores_one_half_on_pairs_that_share_their_first_token(tok):
    """Each pair in both orders: a model that tells them apart at all is right exactly
    once per pair, so accuracy is 1/2 (the first-token rule scored these 0)."""
    shared = _shared_first_token_words(tok, 8)
    pairs = [MinimalPair("the cat", u, v) for u, v in shared]
    pairs += [MinimalPair("the cat", v, u) for u, v in shared]
    for seed in range(3):
        out = EvidenceProbe(pairs, tok)(gpt2(tok, seed=seed))
        assert out["normx/pair_accuracy"] == 0.5
        assert out["normx/pair_n_shared_first_token"] == 16


def test_blimp_sentence_score_is_whole_sentence_log_probability(tok):
    model = perturbed_gpt2(tok, seed=5)
    rows = [("the keys to the cabinet are red", "the keys to the cabinet is red", "a"),
            ("my dogs run", "my dogs runs", "a"), ("the cat sleeps", "the cat sleep", "b"),
            ("cats sleep on the mat", "cats sleeps on the mat", "b")]
    pairs = [MinimalPair("", "", "", (), uid, "", g, b) for g, b, uid in rows]
    pairs.append(MinimalPair("the cat", "sleeps", "sleep", (), "b", "", "the cat sleeps",
                             "the cat sleep"))
    out = EvidenceProbe(pairs, tok)(model)
    eos = tok.eos_token_id
    correct = [_logprob(model, [eos], running(tok, p.sentence_good))
               > _logprob(model, [eos], running(tok, p.sentence_bad)) for p in pairs]
    assert out["normx/blimp_n_pairs"] == 5 and out["normx/pair_n_pairs"] == 1
    assert out["normx/blimp_accuracy"] == pytest.approx(np.mean(correct))
    assert out["normx/blimp_accuracy_by_uid/a"] == pytest.approx(np.mean(correct[:2]))
    assert "normx/evidence_ap/normxlogit" in out


def test_contrastive_scores_are_read_where_the_words_first_differ(tok):
    """The contrast of a pair sharing its first tokens is explained at the first differing
    token, on the prefix + shared tokens: never identically zero, and equal to a direct
    `attribute` call there. The word read there is the good word, so its shared pieces are
    not ranked; the whole prefix is."""
    model = perturbed_gpt2(tok, seed=6)
    (u, v), = _shared_first_token_words(tok, 1)
    pair = MinimalPair("the big cats of my", u, v, (2,))
    out = EvidenceProbe([pair], tok, layers="last")(model)
    tu, tv = ids_of(tok, " " + u), ids_of(tok, " " + v)
    n = next(i for i, (x, y) in enumerate(zip(tu, tv)) if x != y)
    prefix = running(tok, pair.prefix)
    ids = torch.tensor([prefix + tu[:n]])
    a = attribute(model, ids, target=tu[n], foil=tv[n])
    ranked = len(prefix)  # positions 0..last: every prefix word, the last one included
    assert torch.isfinite(a.normxlogit[0, :ranked]).all()
    assert a.normxlogit[0, :ranked].abs().sum() > 0
    cue = [i == 2 for i in range(ranked)]
    assert out["normx/evidence_ap/normxlogit_contrastive"] == pytest.approx(
        _ap_loop(a.normxlogit[0, :ranked].tolist(), cue))
    assert out["normx/evidence_ap/random_contrastive"] == pytest.approx(
        (ranked - 1) * sum(1 / k for k in range(1, ranked + 1)) / (ranked * (ranked - 1)))
    assert out["normx/evidence_n_pairs_contrastive"] == 1


def _ap_by_hand(order: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """AP of rankings ``order`` [S, n] (positions, best first) with relevant mask."""
    rel = relevant[order]  # [S, n]
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, rel.shape[1] + 1)
    return (precision * rel).sum(1) / relevant.sum()


def test_random_baseline_equals_monte_carlo_expectation(tok):
    pairs = cued_pairs() + [MinimalPair(f"the {RARE} near the red cat on my mat", "sleeps",
                                        "sleep", (1, 5)),
                            MinimalPair("the cat", "sleeps", "sleep", (0,))]
    probe = EvidenceProbe(pairs, tok, contrastive=False)
    out = probe(gpt2(tok))
    rng = np.random.default_rng(0)
    mc, dp = [], []
    for b in range(len(pairs)):
        t = int(probe.encoded.last[b])
        relevant = probe.encoded.cue_mask[b, :t].numpy()  # positions 0..t-1
        order = np.argsort(rng.random((40000, t)), axis=1)
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
    # The authors' fractions 0, 10, ..., 100 % of 16 positions, rounded down: 0 % removes
    # nothing, every other fraction removes at least t. Ranking t first therefore gives
    # the full drop at 10 of 11 fractions, and keeping t suffices at those 10.
    for m in ("loo", "logat", "normxlogit", "saliency", "integrated_gradients"):
        assert out[f"normx/comprehensiveness/{m}"] == pytest.approx(drop * 10 / 11, abs=1e-5), m
        assert out[f"normx/sufficiency/{m}"] == pytest.approx(drop / 11, abs=1e-5), m
    # Equal norms tie; ties keep position order, so t (last) is only in the top 100 %.
    assert out["normx/comprehensiveness/norm"] == pytest.approx(drop / 11, abs=1e-5)
    assert out["normx/sufficiency/norm"] == pytest.approx(drop * 10 / 11, abs=1e-5)
    assert 0 < out["normx/comprehensiveness/random"] < drop
    assert out["normx/loo_spearman/loo"] == pytest.approx(1.0)
    assert math.isnan(out["normx/loo_spearman/norm"])  # constant scores
    assert out["normx/faithfulness_n_examples"] == 12
    assert out["normx/faithfulness_mean_p_full"] == pytest.approx(float(p_full.mean()), abs=1e-6)
    assert math.isfinite(out["normx/comprehensiveness/input_x_gradient"])


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
    for fractions in ((1.5,), (-0.1,), ()):
        with pytest.raises(ValueError, match="fractions"):
            FaithfulnessProbe([[1, 2, 3]], fractions=fractions)
    with pytest.raises(ValueError, match="gradient_reduction"):
        FaithfulnessProbe([[1, 2, 3]], gradient_reduction="l2")
    with pytest.raises(ValueError, match="tokenizer"):
        FaithfulnessProbe(["some text"])


def test_integrated_gradients_completeness_within_one_percent(tok):
    """Signed IG attributions from the all-zero embedding baseline sum to F(x) - F(0), F the
    logit of y at t, within 1 % (50 steps, as the authors ran it), on GPT-2 test models;
    the probe reports the same error it measures."""
    for seed, n_layer in ((0, 2), (1, 4)):
        torch.manual_seed(seed)
        model = gpt2(tok, n_layer=n_layer, seed=seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        ids = torch.randint(1, len(tok), (4, 12), generator=torch.Generator().manual_seed(2))
        t = torch.full((4,), 11)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, -1]
            y = logits.argmax(-1)
            zero = model(inputs_embeds=torch.zeros(4, 12, 32)).logits[:, -1]
            delta = logits[torch.arange(4), y] - zero[torch.arange(4), y]
        ig = gradient_attributions(model, ids, t, y, ["integrated_gradients"], reduction="sum")
        total = ig["integrated_gradients"].sum(1)
        assert delta.abs().min() > 0.01, "precondition: the logit moves along the path"
        assert torch.allclose(total, delta, rtol=0.01, atol=0), (total, delta)
        assert all(p.grad is None for p in model.parameters())
        out = FaithfulnessProbe(ids, n_examples=4, length=12, baseline_token_id=0,
                                methods=("integrated_gradients",))(model)
        error = ((total - delta).abs() / delta.abs()).mean()
        assert out["normx/ig_completeness_error"] == pytest.approx(float(error), abs=1e-4)
        assert out["normx/ig_completeness_error"] < 0.01


def test_gradient_baselines_reduce_by_the_l1_norm_over_the_embedding(tok):
    model = perturbed_gpt2(tok)
    ids = torch.randint(1, len(tok), (2, 8), generator=torch.Generator().manual_seed(3))
    t, y = torch.tensor([7, 5]), torch.tensor([3, 4])
    raw = gradient_attributions(model, ids, t, y, reduction=None, ig_steps=8)
    l1 = gradient_attributions(model, ids, t, y, reduction="l1", ig_steps=8)
    signed = gradient_attributions(model, ids, t, y, reduction="sum", ig_steps=8)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logit = model(inputs_embeds=embeds).logits[torch.arange(2), t, y].sum()
    grad, = torch.autograd.grad(logit, embeds)
    assert torch.allclose(l1["saliency"], grad.abs().sum(-1), atol=1e-6)
    assert torch.allclose(signed["saliency"], grad.sum(-1), atol=1e-6)
    assert torch.allclose(l1["input_x_gradient"], (grad * embeds).abs().sum(-1), atol=1e-6)
    assert torch.allclose(l1["integrated_gradients"], raw["integrated_gradients"].abs().sum(-1))
    assert (l1["input_x_gradient"] >= signed["input_x_gradient"].abs() - 1e-6).all()


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


def test_a_prefix_longer_than_the_context_is_cut_or_named(tok):
    """A prefix longer than the model's positions: with max_length (what the tracker passes,
    the model's n_positions) it keeps its end and the cue; without, a one-line error."""
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2,
                                       n_positions=12)).eval()
    prefix = "the big cats of my " * 6 + "old dogs near the mat"
    words = prefix.split()
    pair = MinimalPair(prefix, "run", "runs", (len(words) - 4,), uid="long")  # "dogs"
    assert len(ids_of(tok, prefix)) > 12, "precondition: longer than the context"
    out = EvidenceProbe([pair], tok, max_length=12)(model)
    assert out["normx/evidence_n_pairs"] == 1 and out["normx/pair_n_pairs"] == 1
    with pytest.raises(ValueError, match="max_length=12"):
        EvidenceProbe([pair], tok)(model)


def test_max_probe_pairs_null_means_every_pair_and_zero_is_refused(tmp_path, tok):
    from normx_track.training.config import Config, ConfigError, TrackerConfig, validate
    from normx_track.training.tracker_factory import build_probes

    validate(Config(tracker=TrackerConfig(max_probe_pairs=None)))
    with pytest.raises(ConfigError, match="tracker.max_probe_pairs"):
        validate(Config(tracker=TrackerConfig(max_probe_pairs=0)))
    path = write_lines(tmp_path / "p.jsonl", [GOOD_LINE] * 3)
    t = TrackerConfig(max_probe_pairs=None, probe_leading_space=False, evidence_by_layer=False)
    probe, = build_probes(t, 0, tok, path, np.zeros(0, dtype=np.int32), max_length=64)
    assert len(probe.encoded) == 3 and probe.stats["normx/probe/leading_space"] == 0.0
    assert probe.encoded.context[0] == ids_of(tok, "The keys to the cabinet")


# --------------------------------------------------------------------------- layer-wise hook
class _LensMethod:
    """A stand-in layer-wise method: NormXLogit's own per-layer stack at each row's t, so
    the evidence base must rank it exactly as it ranks NormXLogit's."""

    name = "lens"

    def __call__(self, model, inputs):
        a = attribute(model, inputs.input_ids, inputs.attention_mask, layers="all",
                      target=inputs.target, position=inputs.position)
        return a.layers, a.normxlogit_layers


def test_a_layerwise_method_is_ranked_as_normxlogit_per_layer(tok):
    model = perturbed_gpt2(tok)
    out = EvidenceProbe(cued_pairs(), tok, batch_size=3, layerwise=[_LensMethod()])(model)
    plain = EvidenceProbe(cued_pairs(), tok, batch_size=3)(model)
    assert {k: v for k, v in out.items() if "/lens" not in k} == pytest.approx(plain)
    for layer in range(3):
        key = "normx/evidence_ap_by_layer/{}/layer_%02d" % layer
        assert out[key.format("lens")] == pytest.approx(out[key.format("normxlogit")])
    assert out["normx/evidence_ap/lens"] == pytest.approx(out["normx/evidence_ap/normxlogit"])
    assert out["normx/evidence_dp/lens"] == pytest.approx(out["normx/evidence_dp/normxlogit"])
    with pytest.raises(ValueError, match="layer-wise method names"):
        EvidenceProbe(cued_pairs(), tok, layerwise=[type("M", (), {"name": "logat"})()])
