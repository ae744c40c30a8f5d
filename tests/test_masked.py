"""Masked LMs (BERT / RoBERTa): LogAt / NormXLogit through the whole MLM head and the
classifier heads, PLL-word-l2r and the masked evidence probe, each against an independent
hand-written computation on tiny random models and tokenizers trained here."""
import itertools
import math

import numpy as np
import pytest
import torch
from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer, processors
from transformers import (BertConfig, BertForMaskedLM, BertForSequenceClassification,
                          PreTrainedTokenizerFast, RobertaConfig, RobertaForMaskedLM,
                          RobertaForSequenceClassification)
from transformers.utils import logging as hf_logging

from normx_track.attribution.masked import attribute_masked, encoder_context_size, is_masked_lm
from normx_track.attribution.normxlogit import attribute, logat
from normx_track.keys import (BLIMP_ACCURACY, EVIDENCE_AP, EVIDENCE_AP_BY_LAYER, EVIDENCE_DP,
                              EVIDENCE_N_MULTITOKEN_TARGET, EVIDENCE_N_PAIRS, MASK_ACCURACY,
                              MASK_N_PAIRS, PAIR_ACCURACY, PAIR_N_PAIRS)
from normx_track.probes.files import MinimalPair
from normx_track.probes.masked_evidence import MaskedEvidenceProbe, masked_rows
from normx_track.probes.pll import encode_with_word_ids, masked_copies, pll_scores, pll_token_logprobs

hf_logging.set_verbosity_error()
L, D = 3, 32
ATOL = 1e-5
TEXT = [
    "the keys to the cabinet are on the table .",
    "the key to the cabinets is on the table .",
    "a dog near the windows barks loudly .",
    "the dogs near the window bark loudly .",
    "the author that the guards like laughs .",
    "the authors that the guard likes laugh .",
    "there is a key .", "there are keys .", "it is here .", "they are here .",
] * 3


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def wordpiece():
    """A WordPiece vocabulary small enough that many words are several pieces ("is" and
    "are" are one, "barks" and "laughs" several)."""
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(TEXT, vocab_size=80, min_frequency=1, show_progress=False,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    wp.post_processor = processors.BertProcessing(("[SEP]", wp.token_to_id("[SEP]")),
                                                  ("[CLS]", wp.token_to_id("[CLS]")))
    return PreTrainedTokenizerFast(tokenizer_object=wp, cls_token="[CLS]", sep_token="[SEP]",
                                   mask_token="[MASK]", pad_token="[PAD]", unk_token="[UNK]")


@pytest.fixture(scope="module")
def bytelevel():
    """A byte-level BPE with RoBERTa's specials (<s>=0, <pad>=1, </s>=2)."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXT, vocab_size=290, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                   cls_token="<s>", sep_token="</s>", mask_token="<mask>",
                                   pad_token="<pad>", unk_token="<unk>")


def _perturbed(model):
    # Random init leaves LayerNorms at identity and biases at 0; perturb so that bugs show.
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def bert_config(vocab, **kw):
    return BertConfig(**{**dict(vocab_size=vocab, hidden_size=D, num_hidden_layers=L,
                                num_attention_heads=4, intermediate_size=64,
                                max_position_embeddings=64, pad_token_id=0), **kw})


def roberta_config(vocab, **kw):
    return RobertaConfig(**{**dict(vocab_size=vocab, hidden_size=D, num_hidden_layers=L,
                                   num_attention_heads=4, intermediate_size=64,
                                   max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                                   eos_token_id=2), **kw})


def make(arch, kind="mlm", vocab=120, **kw):
    torch.manual_seed(0)
    config = (bert_config if arch == "bert" else roberta_config)(vocab, **kw)
    cls = {("bert", "mlm"): BertForMaskedLM, ("roberta", "mlm"): RobertaForMaskedLM,
           ("bert", "cls"): BertForSequenceClassification,
           ("roberta", "cls"): RobertaForSequenceClassification}[arch, kind]
    return _perturbed(cls(config))


def batch(arch, vocab=120, mask_id=4):
    """Two rows, the second right-padded; a mask at position 3 / 2."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, vocab, (2, 8), generator=g)
    pad = 0 if arch == "bert" else 1
    ids[:, 0] = 2 if arch == "bert" else 0  # [CLS] / <s>
    ids[0, 7], ids[1, 5] = (3, 3) if arch == "bert" else (2, 2)
    ids[1, 6:] = pad
    attention = torch.ones_like(ids)
    attention[1, 6:] = 0
    position = torch.tensor([3, 2])
    ids[0, 3], ids[1, 2] = mask_id, mask_id
    return ids, attention, position


def mlm_head(model):
    return model.cls if isinstance(model, BertForMaskedLM) else model.lm_head


# --------------------------------------------------------------------------- attribution
@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_mlm_logat_is_the_whole_head_on_each_hidden_state(arch):
    model = make(arch)
    ids, attention, position = batch(arch)
    a = attribute(model, ids, attention, position=position, layers=[1, L])
    out = model(input_ids=ids, attention_mask=attention, output_hidden_states=True)
    rows = torch.arange(2)
    assert torch.allclose(a.logits, out.logits[rows, position], atol=ATOL)
    assert torch.equal(a.target, out.logits[rows, position].argmax(-1))
    E = model.get_input_embeddings().weight
    for k, layer in enumerate([1, L]):
        full = mlm_head(model)(out.hidden_states[layer])  # [B, T, V], the head as the model has it
        for b in range(2):
            real = [i for i in range(8) if attention[b, i] and i != position[b]]
            ref = full[b, real, a.target[b]]
            assert torch.allclose(a.logat_layers[k, b, real], ref, atol=ATOL)
            norm = E[ids[b, real]].norm(dim=-1)
            assert torch.allclose(a.normxlogit_layers[k, b, real], norm * ref, atol=ATOL)
    assert torch.allclose(a.logat.nan_to_num(), a.logat_layers[-1].nan_to_num())
    # Not attributed: the mask position itself and the pads.
    assert a.logat[0, 3].isnan() and a.logat[1, 2].isnan() and a.logat[1, 6:].isnan().all()
    assert a.mask.sum().item() == 7 + 5


def _embedding_output_by_hand(model, ids, attention):
    emb = model.base_model.embeddings
    if isinstance(model, (BertForMaskedLM, BertForSequenceClassification)):
        pos = torch.arange(ids.shape[1])[None].expand_as(ids)
    else:  # RoBERTa counts real tokens after padding_idx
        pos = (attention.cumsum(1) * attention) + 1
    x = emb.word_embeddings(ids) + emb.position_embeddings(pos) + \
        emb.token_type_embeddings(torch.zeros_like(ids))
    return emb.LayerNorm(x)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_embedding_output_norm_factor_is_after_the_embedding_layernorm(arch):
    model = make(arch)
    ids, attention, position = batch(arch)
    a = attribute_masked(model, ids, attention, position=position, norm_factor="embedding_output")
    ref = _embedding_output_by_hand(model, ids, attention).norm(dim=-1)
    m = a.mask
    assert torch.allclose(a.norm[m], ref[m], atol=ATOL)
    assert torch.allclose(a.normxlogit[m], ref[m] * a.logat[m], atol=ATOL)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_mlm_padded_row_and_foil_and_train_mode(arch):
    model = make(arch)
    ids, attention, position = batch(arch)
    a = attribute_masked(model, ids, attention, target=[7, 9], foil=[11, 12], position=position)
    alone = attribute_masked(model, ids[1:, :6], target=7 + 2, foil=12, position=2)
    assert torch.allclose(a.logat[1, :6].nan_to_num(), alone.logat[0].nan_to_num(), atol=ATOL)
    good = attribute_masked(model, ids, attention, target=[7, 9], position=position)
    bad = attribute_masked(model, ids, attention, target=[11, 12], position=position)
    assert torch.allclose((good.logat - bad.logat)[a.mask], a.logat[a.mask], atol=ATOL)
    model.train()  # dropout must be off for the call, and the flag restored
    again = logat(model, ids, attention, target=[7, 9], foil=[11, 12], position=position)
    assert model.training
    assert torch.allclose(again[a.mask], a.logat[a.mask], atol=ATOL)
    with pytest.raises(ValueError, match="pass position"):
        attribute(model.eval(), ids, attention)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_classifier_logat_is_the_head_in_place_of_cls(arch):
    model = make(arch, "cls", num_labels=3)
    assert not is_masked_lm(model)
    ids, attention, _ = batch(arch)
    a = attribute(model, ids, attention, layers=[1, L])
    out = model(input_ids=ids, attention_mask=attention, output_hidden_states=True)
    assert torch.allclose(a.logits, out.logits, atol=ATOL)
    assert torch.equal(a.position, torch.zeros(2, dtype=torch.long))
    for k, layer in enumerate([1, L]):
        h = out.hidden_states[layer]
        if arch == "bert":  # classifier(pooler(h_i)): pooler = tanh(dense(.))
            ref = model.classifier(torch.tanh(model.bert.pooler.dense(h)))
        else:  # dense, tanh, out_proj
            ref = model.classifier.out_proj(torch.tanh(model.classifier.dense(h)))
        for b in range(2):
            real = [i for i in range(1, 8) if attention[b, i]]
            assert torch.allclose(a.logat_layers[k, b, real], ref[b, real, a.target[b]],
                                  atol=ATOL)
    assert a.logat[:, 0].isnan().all()  # [CLS] is the explained position: not attributed


def test_regression_classifier_is_minus_distance_to_the_output():
    model = make("bert", "cls", num_labels=1)
    ids, attention, _ = batch("bert")
    a = attribute(model, ids, attention)
    out = model(input_ids=ids, attention_mask=attention, output_hidden_states=True)
    h = out.hidden_states[-1]
    ref = -(model.classifier(torch.tanh(model.bert.pooler.dense(h))) - out.logits[:, None]).abs()
    assert torch.allclose(a.logat[a.mask], ref.squeeze(-1)[a.mask], atol=ATOL)


def test_roberta_context_size_leaves_out_the_position_offset():
    assert encoder_context_size(make("roberta")) == 66 - 2
    assert encoder_context_size(make("bert")) == 64


# --------------------------------------------------------------------------- PLL
def test_masked_copies_hand_worked():
    copies, pos = masked_copies([2, 10, 11, 12, 3], [None, 0, 0, 1, None], mask_id=4)
    assert pos.tolist() == [1, 2, 3]
    assert copies.tolist() == [[2, 4, 4, 12, 3], [2, 10, 4, 12, 3], [2, 10, 11, 4, 3]]


def brute_force_pll(model, tokenizer, text):
    """Token by token: mask t and the later tokens of its word, one copy per forward."""
    enc = tokenizer(text)
    ids, words = list(enc["input_ids"]), enc.word_ids()
    out = []
    for t, w in enumerate(words):
        if w is None:
            continue
        copy = list(ids)
        for j in range(t, len(ids)):
            if words[j] == w:
                copy[j] = tokenizer.mask_token_id
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([copy])).logits[0, t]
        out.append(logits.log_softmax(-1)[ids[t]].item())
    return out


SENTENCES = ["The keys to the cabinets are on the table.", "A dog barks.",
             "The authors that the guards like laugh loudly.", "The dogs near the window bark."]


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_pll_word_l2r_equals_one_copy_at_a_time(arch, wordpiece, bytelevel):
    tokenizer = wordpiece if arch == "bert" else bytelevel
    model = make(arch, vocab=len(tokenizer))
    ids, words = encode_with_word_ids(tokenizer, SENTENCES)
    sizes = [np.bincount([w for w in ws if w is not None]) for ws in words]
    assert max(s.max() for s in sizes) >= 3  # words of several tokens are exercised
    # batch_size 7: sentences of several passes, and passes of several sentences
    got = pll_token_logprobs(model, ids, words, tokenizer.mask_token_id,
                             tokenizer.pad_token_id, batch_size=7)
    totals = pll_scores(model, ids, words, tokenizer.mask_token_id, tokenizer.pad_token_id)
    for text, tokens, total in zip(SENTENCES, got, totals):
        ref = brute_force_pll(model, tokenizer, text)
        np.testing.assert_allclose(tokens, ref, atol=ATOL)
        assert total == pytest.approx(sum(ref), abs=1e-4)


# --------------------------------------------------------------------------- evidence probe
PAIRS = [
    MinimalPair("the keys to the cabinet", "are", "is", (1,), "agr", "f:1"),
    MinimalPair("the key to the cabinets", "is", "are", (1,), "agr", "f:2"),
    MinimalPair("the dogs near the window", "bark", "barks", (1,), "agr2", "f:3"),
    MinimalPair("the author that the guards like", "laughs", "laugh", (1,), "agr2", "f:4"),
    MinimalPair("the table", "is", "are", (), "agr", "f:5",
                "the table is on the key .", "the table are on the key ."),
]


def brute_force_ap(scores, relevant):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits = [relevant[i] for i in order]
    precisions = [sum(hits[: k + 1]) / (k + 1) for k, h in enumerate(hits) if h]
    return sum(precisions) / len(precisions)


def brute_force_random_ap(relevant):
    """The mean AP over every ordering of the positions. AP depends only on the ranks the
    relevant positions get, and every set of ranks is equally likely under a random
    ordering: the mean over the C(n, k) sets equals the mean over the n! orderings
    (checked on a short row below), in milliseconds where n! would take a minute."""
    n, k = len(relevant), sum(relevant)
    values = []
    for ranks in itertools.combinations(range(n), k):
        hits = [r in ranks for r in range(n)]
        values.append(sum(sum(hits[: r + 1]) / (r + 1) for r in ranks) / k)
    return sum(values) / len(values)


def test_the_random_ap_over_rank_sets_equals_the_mean_over_every_ordering():
    relevant = [False, True, False, True, False, False]
    orderings = [brute_force_ap(list(perm), relevant)
                 for perm in itertools.permutations(range(len(relevant)))]
    assert brute_force_random_ap(relevant) == pytest.approx(sum(orderings) / len(orderings))


@pytest.mark.parametrize("rank_specials", [False, True])
def test_masked_evidence_by_brute_force(wordpiece, rank_specials):
    tok = wordpiece
    model = make("bert", vocab=len(tok))
    probe = MaskedEvidenceProbe(PAIRS, tok, layers=[0, L], rank_specials=rank_specials)
    row = probe(model)
    rows, single = masked_rows([p for p in PAIRS if p.has_prefix], tok)
    specials = {tok.cls_token_id, tok.sep_token_id}
    ap, ap_random, dp, n_multi, mask_right = [], [], [], 0, []
    for b, i in enumerate(single):
        pair = PAIRS[i]
        n = int(rows.attention_mask[b].sum())
        ids = rows.input_ids[b, :n]
        t = ids.tolist().index(tok.mask_token_id)
        assert t == n - 2 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        out = model(input_ids=ids[None]).logits[0, t].detach()
        good, bad = (tok.convert_tokens_to_ids(w) for w in (pair.good, pair.bad))
        mask_right.append(bool(out[good] > out[bad]))
        full = model.cls(model(input_ids=ids[None], output_hidden_states=True)
                         .hidden_states[-1])[0, :, good].detach()
        norms = model.get_input_embeddings().weight[ids].norm(dim=-1).detach()
        if not pair.cue_word_indices:
            continue  # accuracy only
        ranked = [j for j in range(n) if j != t and (rank_specials or int(ids[j]) not in specials)]
        # cue: every piece of prefix word 1, at positions 1 + its token offsets
        words = tok(pair.prefix, add_special_tokens=False).word_ids()
        cue = {1 + k for k, w in enumerate(words) if w == 1}
        scores = [float(norms[j] * full[j]) for j in ranked]
        relevant = [j in cue for j in ranked]
        ap.append(brute_force_ap(scores, relevant))
        ap_random.append(brute_force_random_ap(relevant))
        weights = np.exp(np.array(scores) - max(scores))
        dp.append(float(weights[relevant].sum() / weights.sum()))
    n_multi = sum(1 for p in PAIRS if p.has_prefix) - len(single)
    assert len(ap) >= 2 and n_multi >= 1  # both kinds of pairs are exercised
    assert row[EVIDENCE_N_PAIRS] == len(ap)
    assert row[EVIDENCE_N_MULTITOKEN_TARGET] == n_multi
    assert row[EVIDENCE_AP.format(method="normxlogit")] == pytest.approx(np.mean(ap), abs=1e-6)
    assert row[EVIDENCE_AP.format(method="random")] == pytest.approx(np.mean(ap_random))
    assert row[EVIDENCE_DP.format(method="normxlogit")] == pytest.approx(np.mean(dp), abs=1e-6)
    assert row[EVIDENCE_AP_BY_LAYER.format(method="normxlogit", layer=L)] == pytest.approx(
        np.mean(ap), abs=1e-6)
    assert row[MASK_N_PAIRS] == len(single)
    assert row[MASK_ACCURACY] == pytest.approx(np.mean(mask_right))


def test_masked_rows_rank_neither_the_mask_nor_specials_by_default(wordpiece):
    rows, _ = masked_rows(PAIRS[:4], wordpiece)
    ranked, with_specials = rows.ranked(), rows.ranked(rank_specials=True)
    for b in range(len(rows)):
        n = int(rows.attention_mask[b].sum())
        ids = rows.input_ids[b].tolist()
        t = int(rows.mask_position[b])
        assert ids[t] == wordpiece.mask_token_id
        assert ranked[b].tolist() == [0 < j < n - 2 for j in range(len(ids))]
        assert with_specials[b].tolist() == [j < n and j != t for j in range(len(ids))]


@pytest.mark.parametrize("leading_space", [True, False])
def test_pair_and_blimp_accuracy_by_pll(bytelevel, leading_space):
    tok = bytelevel
    model = make("roberta", vocab=len(tok))
    probe = MaskedEvidenceProbe(PAIRS, tok, leading_space=leading_space)
    row = probe(model)
    # Byte-level BPE marks word starts: running text puts a space before the sentence.
    space = " " if leading_space else ""
    first = f"{space}{PAIRS[0].prefix} {PAIRS[0].good}"
    assert probe.sentences[0][0] == tok(first)["input_ids"]
    assert tok.convert_ids_to_tokens(probe.sentences[0][0])[1] == ("Ġthe" if space else "the")
    prefixed = [p for p in PAIRS if p.has_prefix]
    plls = {s: sum(brute_force_pll(model, tok, space + s))
            for p in prefixed for s in (f"{p.prefix} {p.good}", f"{p.prefix} {p.bad}")}
    correct = [plls[f"{p.prefix} {p.good}"] > plls[f"{p.prefix} {p.bad}"] for p in prefixed]
    assert row[PAIR_N_PAIRS] == len(prefixed)
    assert row[PAIR_ACCURACY] == pytest.approx(np.mean(correct))
    blimp = PAIRS[-1]
    good, bad = (sum(brute_force_pll(model, tok, space + s))
                 for s in (blimp.sentence_good, blimp.sentence_bad))
    assert row[BLIMP_ACCURACY] == float(good > bad)
    # The same metric names as the causal probe, so curves line up across objectives.
    for method in ("normxlogit", "logat", "norm", "random", "normxlogit_contrastive"):
        assert math.isfinite(row[EVIDENCE_AP.format(method=method)])


def test_random_mlm_scores_half_on_pairs_in_both_orders(wordpiece):
    model = make("bert", vocab=len(wordpiece))
    pairs = [q for p in PAIRS[:4] for q in (p, MinimalPair(p.prefix, p.bad, p.good,
                                                           p.cue_word_indices))]
    row = MaskedEvidenceProbe(pairs, wordpiece)(model)
    # Each pair wins in exactly one of its orders (no ties on a random model).
    assert row[PAIR_ACCURACY] == 0.5
    assert row[MASK_ACCURACY] == 0.5


def test_probe_refuses_a_causal_model_and_long_sentences(wordpiece):
    from transformers import GPT2Config, GPT2LMHeadModel
    probe = MaskedEvidenceProbe(PAIRS[:2], wordpiece)
    with pytest.raises(ValueError, match="needs a masked LM"):
        probe(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=80)))
    short = BertForMaskedLM(bert_config(len(wordpiece), max_position_embeddings=8))
    with pytest.raises(ValueError, match=r"f:\d: a sentence takes \d+ positions .* has 8"):
        probe(short)


# --------------------------------------------------------------------------- training
def test_masking_collator_follows_bert_recipe_and_seeds_by_block(bytelevel):
    from normx_track.training.data.masking import MaskingCollator
    tok = bytelevel
    g = torch.Generator().manual_seed(0)
    body = torch.randint(5, len(tok), (256, 30), generator=g)
    ids = torch.cat([torch.zeros(256, 1, dtype=torch.long), body,
                     torch.full((256, 1), 2)], dim=1)  # <s> ... </s>
    items = [{"input_ids": row, "index": i} for i, row in enumerate(ids)]
    batch = MaskingCollator(tok, 0.15, seed=7)(items)
    chosen = batch["labels"] != -100
    assert torch.equal(batch["labels"][chosen], ids[chosen])  # labels: the original tokens
    assert not chosen[:, [0, -1]].any()  # specials are never chosen
    share = chosen[:, 1:-1].float().mean().item()
    assert 0.13 < share < 0.17  # 15 % of 7,680 tokens
    as_mask = (batch["input_ids"] == tok.mask_token_id)[chosen].float().mean().item()
    kept = (batch["input_ids"] == ids)[chosen].float().mean().item()
    assert 0.75 < as_mask < 0.85 and 0.06 < kept < 0.15  # 80 % [MASK], 10 % kept (+ chance)
    assert torch.equal(batch["input_ids"][~chosen], ids[~chosen])
    again = MaskingCollator(tok, 0.15, seed=7)(items)
    assert torch.equal(again["input_ids"], batch["input_ids"])  # a pure function of the blocks
    other = MaskingCollator(tok, 0.15, seed=7)([{**x, "index": x["index"] + 1} for x in items])
    assert not torch.equal(other["labels"], batch["labels"])
    # Each block's mask is its own: two half batches (two DDP ranks) mask as one batch does.
    halves = [MaskingCollator(tok, 0.15, seed=7)(part) for part in (items[:100], items[100:])]
    assert torch.equal(torch.cat([h["labels"] for h in halves]), batch["labels"])


def test_masked_lm_sampler_carries_the_epoch_in_the_index():
    from normx_track.training.data.datamodule import ResumableBatchSampler
    plain = ResumableBatchSampler(10, 5, seed=0)
    epochs = ResumableBatchSampler(10, 5, seed=0, epoch_in_index=True)
    assert epochs.batch(1) == plain.batch(1)  # epoch 0: the block indices
    assert epochs.batch(3) == [i + 10 for i in plain.batch(3)]  # epoch 1: + 1 * n_items


def test_whole_word_masking_masks_every_piece_of_a_word(bytelevel):
    from normx_track.training.data.masking import MaskingCollator, word_starts
    tok = bytelevel
    text = " ".join(TEXT[:6])
    ids = torch.tensor(tok(text)["input_ids"])
    items = [{"input_ids": ids, "index": i} for i in range(64)]
    batch = MaskingCollator(tok, 0.3, whole_word=True, seed=1)(items)
    special = np.isin(ids.numpy(), tok.all_special_ids)
    # A word starts at a "Ġ" piece, at a special token and right after one.
    starts = word_starts(tok)[ids.numpy()] | special | np.roll(special, 1)
    word = np.cumsum(starts)
    assert (np.bincount(word) >= 2).any()  # words of several pieces are exercised
    chosen = (batch["labels"] != -100).numpy()
    assert chosen.any()
    for row in chosen:
        for w in np.unique(word[row]):
            assert row[word == w].all()  # a chosen word is chosen whole
    assert (batch["input_ids"].numpy()[chosen] == tok.mask_token_id).all()


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_masked_language_model_builds_tied_and_trains_on_masked_tokens(arch):
    from normx_track.training.config import ModelConfig, OptimConfig
    from normx_track.training.model import LanguageModel
    pad = 1 if arch == "roberta" else 0
    cfg = ModelConfig(arch=arch, n_layer=1, n_embd=32, n_head=2, n_positions=16)
    module = LanguageModel.from_configs(cfg, OptimConfig(), 90, 2, 10, pad_token_id=pad,
                                        bos_token_id=0)
    model = module.model
    assert is_masked_lm(model)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert encoder_context_size(model) == 16  # n_positions real positions, RoBERTa too
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 90, (2, 16), generator=g)
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 7] = 11, 12
    loss = module._loss({"input_ids": ids, "labels": labels})
    module.eval()
    logits = model(input_ids=ids).logits
    ref = torch.nn.functional.cross_entropy(logits[[0, 1], [3, 7]], torch.tensor([11, 12]))
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)


@pytest.fixture(scope="module")
def roberta_run(tmp_path_factory, cache_dir):
    """`train.py model=roberta_tiny debug=tiny`, 4 steps, a snapshot and checkpoint at 4."""
    from conftest import train_here
    out = tmp_path_factory.mktemp("roberta") / "run"
    train_here(out, cache_dir, "model=roberta_tiny", "logger=none", "trainer.max_steps=4",
               "tracker.every_n_steps=4", "tracker.faithfulness_examples=2",
               "tracker.faithfulness_length=12")
    return out


def _rows(record):
    import json
    return [json.loads(line) for line in (record / "metrics.jsonl").read_text().splitlines()]


def test_roberta_tiny_run_records_the_masked_curves(roberta_run):
    import json
    last = _rows(roberta_run / "normx")[-1]
    for key in (EVIDENCE_AP.format(method="normxlogit"), EVIDENCE_N_PAIRS, MASK_ACCURACY,
                PAIR_ACCURACY, EVIDENCE_N_MULTITOKEN_TARGET, "normx/spearman/information_gain",
                "normx/comprehensiveness/normxlogit", "val/loss"):
        assert key in last, key
    assert math.isfinite(last["val/loss"]) and last[EVIDENCE_N_PAIRS] > 0
    meta = json.loads((roberta_run / "normx" / "meta.json").read_text())
    assert meta["config"]["model"]["arch"] == "roberta"
    gold = np.load(roberta_run / "normx" / "gold.npz")
    assert gold["counts"][2] > 0  # </s> ends every document ...
    assert np.isnan(gold["information_gain"][[0, 1, 2, 3, 4]]).all()  # ... but no special
    seen = np.flatnonzero(gold["counts"] > 0)
    assert np.isfinite(gold["information_gain"][seen[seen >= 5]]).all()  # is gold


def test_replay_of_masked_lm_checkpoints_gives_the_live_rows(roberta_run, tmp_path):
    from analysis.replay import main
    from normx_track.record.checkpoint_loader import load_model
    ckpt = roberta_run / "checkpoints" / "step_00000004.ckpt"
    assert isinstance(load_model(ckpt).model, RobertaForMaskedLM)
    main([str(roberta_run / "checkpoints" / "step_00000004.ckpt"), "--like", str(roberta_run),
          "--out", str(tmp_path / "replayed")])
    live = {r["step"]: r for r in _rows(roberta_run / "normx")}[4]
    replayed = _rows(tmp_path / "replayed" / "normx")[-1]
    assert replayed["step"] == 4
    for key in (EVIDENCE_AP.format(method="normxlogit"), PAIR_ACCURACY, MASK_ACCURACY,
                "normx/spearman/information_gain", "normx/comprehensiveness/normxlogit"):
        assert replayed[key] == pytest.approx(live[key], abs=1e-6), key


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_trained_tokenizer_has_the_masked_specials(tmp_path, family):
    from normx_track.training.data.tokenizer import MASKED_SPECIALS, train_bpe
    tok = train_bpe(TEXT, 300, tmp_path, family)
    order, names = MASKED_SPECIALS[family]
    for name in ("pad_token", "cls_token", "sep_token", "mask_token"):
        assert getattr(tok, name + "_id") == order.index(names[name])
    tokens = tok.convert_ids_to_tokens(tok(f"the keys {tok.mask_token} on")["input_ids"])
    # [CLS] ... [SEP] around the text; the mask takes the space before it (no lone "Ġ")
    assert tokens[0] == names["cls_token"] and tokens[-1] == names["sep_token"]
    assert tokens[tokens.index(names["mask_token"]) - 1] != "Ġ"


@pytest.fixture(scope="module")
def trained_roberta(tmp_path_factory):
    from normx_track.training.data.tokenizer import train_bpe
    tok = train_bpe(TEXT, 300, tmp_path_factory.mktemp("tok"), "roberta")
    return make("roberta", vocab=len(tok)), tok


def test_explain_a_masked_lm_at_its_mask(trained_roberta):
    from normx_track.attribution.explain import ExplainError, explain, format_table
    from normx_track.text import continuation_tokens
    model, tok = trained_roberta
    text = "the keys to the cabinet <mask> on the table ."
    e = explain(model, tok, text, target="are", foil="is")
    ids = tok(text)["input_ids"]
    t = ids.index(tok.mask_token_id)
    good, bad = (continuation_tokens(tok, w, "the keys to the cabinet")[0] for w in ("are", "is"))
    a = attribute_masked(model, torch.tensor([ids]), target=good, foil=bad, position=t)
    assert e.masked and e.position == t and e.token_ids == ids
    assert e.target_id == good and e.foil_id == bad
    np.testing.assert_allclose(e.normxlogit, a.normxlogit[0].numpy(), atol=ATOL)
    assert np.isnan(e.normxlogit[t]) and np.isfinite(np.delete(e.normxlogit, t)).all()
    assert f"at the mask, position {t}" in format_table(e)
    for bad_text in ("the keys to the cabinet are", "the <mask> to the <mask>"):
        with pytest.raises(ExplainError, match="one mask"):
            explain(model, tok, bad_text)


def test_explain_cli_on_a_masked_lm_checkpoint(roberta_run, capsys):
    from normx_track.attribution.explain import main
    ckpt = roberta_run / "checkpoints" / "step_00000004.ckpt"
    assert main([str(ckpt), "the cat <mask> here"]) == 0
    assert "at the mask" in capsys.readouterr().out


def test_masked_lm_settings_are_checked():
    from normx_track.training.config import Config, ConfigError, validate
    cfg = Config()
    cfg.model.arch = "roberta"
    validate(cfg)
    for key, value, message in (("data.mlm_probability", 0.0, "data.mlm_probability must be > 0"),
                                ("data.mlm_probability", 1.0, r"data.mlm_probability must be in"),
                                ("data.block_size", 2, "block_size must be >= 3")):
        bad = Config()
        bad.model.arch = "roberta"
        section, name = key.split(".")
        setattr(getattr(bad, section), name, value)
        with pytest.raises(ConfigError, match=message):
            validate(bad)


def test_a_masked_lm_keeps_hfs_loss_whatever_loss_chunk_tokens_says():
    """conf/trainer/cpu.yaml chunks the loss (a causal LM's): a masked LM's loss, over its
    masked tokens, stays HF's."""
    from normx_track.training.config import Config, ModelConfig, OptimConfig, validate
    from normx_track.training.model import LanguageModel

    cfg = Config()
    cfg.model.arch, cfg.trainer.loss_chunk_tokens = "roberta", 64
    validate(cfg)
    small = ModelConfig(arch="bert", n_layer=1, n_embd=16, n_head=2, n_positions=16)
    ids = torch.randint(5, 60, (2, 16), generator=torch.Generator().manual_seed(0))
    labels = torch.where(torch.arange(16) % 4 == 1, ids, -100)
    losses = []
    for chunk in (None, 64):
        torch.manual_seed(0)
        module = LanguageModel.from_configs(small, OptimConfig(), 64, 2, 10,
                                            loss_chunk_tokens=chunk, pad_token_id=0,
                                            bos_token_id=1)
        assert module.loss_chunk_tokens is None
        losses.append(module._loss({"input_ids": ids, "labels": labels}))
    reference = module.model(input_ids=ids, labels=labels).loss  # HF's masked-LM loss
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=0)
    torch.testing.assert_close(losses[1], reference, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- faithfulness
def test_masked_faithfulness_by_brute_force(wordpiece):
    from scipy.stats import spearmanr

    from normx_track.keys import COMPREHENSIVENESS, LOO_SPEARMAN, SUFFICIENCY
    from normx_track.probes.masked_faithfulness import MaskedFaithfulnessProbe
    tok = wordpiece
    model = make("bert", vocab=len(tok))
    stream = np.array(tok(" ".join(TEXT[:8]), add_special_tokens=False)["input_ids"])
    fractions = (0.0, 0.3, 0.5, 1.0)
    probe = MaskedFaithfulnessProbe([stream], tok, n_examples=3, length=10, fractions=fractions,
                                    methods=["normxlogit", "logat", "norm", "loo"])
    row = probe(model)

    def p(ids, t, y):
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, t].softmax(-1)[y].item()

    E = model.get_input_embeddings().weight.detach()
    comp = {m: [] for m in ("normxlogit", "logat", "norm", "loo")}
    suff, rho = {m: [] for m in comp}, {m: [] for m in comp}
    for ids, t in zip(probe.input_ids.tolist(), probe.t.tolist()):
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert ids[t] == tok.mask_token_id and 0 < t < len(ids) - 1
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        y = int(out.logits[0, t].argmax())
        p_full = p(ids, t, y)
        cands = [i for i in range(1, len(ids) - 1) if i != t]
        head = model.cls(out.hidden_states[-1])[0, :, y].detach()
        by_hand = {"logat": [float(head[i]) for i in cands],
                   "norm": [float(E[ids[i]].norm()) for i in cands]}
        by_hand["normxlogit"] = [a * b for a, b in zip(by_hand["logat"], by_hand["norm"])]
        loo = []
        for i in cands:
            copy = list(ids)
            copy[i] = tok.mask_token_id
            loo.append(p_full - p(copy, t, y))
        by_hand["loo"] = loo
        for m, s in by_hand.items():
            order = sorted(range(len(cands)), key=lambda k: -s[k])  # stable: ties by position
            c_vals, s_vals = [], []
            for frac in fractions:
                top = {cands[k] for k in order[: int(frac * len(cands) + 1e-9)]}
                removed = [tok.mask_token_id if i in top else x for i, x in enumerate(ids)]
                kept = [tok.mask_token_id if i in cands and i not in top else x
                        for i, x in enumerate(ids)]
                c_vals.append(p_full - p(removed, t, y))
                s_vals.append(p_full - p(kept, t, y))
            comp[m].append(np.mean(c_vals))
            suff[m].append(np.mean(s_vals))
            rho[m].append(spearmanr(s, loo).statistic)
    for m in comp:
        assert row[COMPREHENSIVENESS.format(method=m)] == pytest.approx(np.mean(comp[m]), abs=1e-5)
        assert row[SUFFICIENCY.format(method=m)] == pytest.approx(np.mean(suff[m]), abs=1e-5)
        assert row[LOO_SPEARMAN.format(method=m)] == pytest.approx(np.mean(rho[m]), abs=1e-6)


def test_masked_faithfulness_with_captum_leaves_no_gradients(wordpiece):
    from normx_track.keys import COMPREHENSIVENESS, IG_COMPLETENESS_ERROR
    from normx_track.probes.masked_faithfulness import MaskedFaithfulnessProbe
    model = make("bert", vocab=len(wordpiece))
    stream = np.array(wordpiece(" ".join(TEXT[:8]), add_special_tokens=False)["input_ids"])
    row = MaskedFaithfulnessProbe([stream], wordpiece, n_examples=2, length=10, captum=True,
                                  ig_steps=8, fractions=(0.0, 0.5))(model)
    for m in ("saliency", "input_x_gradient", "integrated_gradients", "normxlogit", "random"):
        assert math.isfinite(row[COMPREHENSIVENESS.format(method=m)]), m
    assert math.isfinite(row[IG_COMPLETENESS_ERROR])
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_masked_lm_under_ddp_gives_the_single_process_rows(cache_dir, tmp_path):
    """Two DDP ranks x batch 2 see (and mask) the single process's batches of 4."""
    from conftest import TINY, run_train
    from test_tracker import assert_rows_close, rows_of
    common = [*TINY, "model=roberta_tiny", "logger=none", "trainer.precision=32-true"]
    run_train(cache_dir, *common, f"hydra.run.dir={tmp_path / 'single'}")
    run_train(cache_dir, *common, "data.batch_size=2", "trainer=ddp", "trainer.accelerator=cpu",
              "trainer.devices=2", f"hydra.run.dir={tmp_path / 'ddp'}")
    single = rows_of(tmp_path / "single")
    assert any(key == MASK_ACCURACY for key in single[-1])
    assert_rows_close(rows_of(tmp_path / "ddp"), single, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # two train.py jobs and the sweep analysis: ~30 s on 2 busy cores
def test_clm_vs_mlm_sweep_runs_and_groups_by_objective(cache_dir, tmp_path):
    import csv

    from analysis.sweep import main
    from conftest import TINY, run_train
    sweep = tmp_path / "sweep"
    run_train(cache_dir, "-m", "experiment=clm_vs_mlm", *TINY, "logger=none", "seed=0",
              f"hydra.sweep.dir={sweep}")
    archs = {json_load(job / "normx" / "meta.json")["config"]["model"]["arch"]
             for job in sweep.iterdir() if (job / "normx").is_dir()}
    assert archs == {"gpt2", "roberta"}
    assert main([str(sweep)]) == 0
    with open(sweep / "analysis" / "summary.csv") as handle:
        groups = {row["group"] for row in csv.DictReader(handle)}
    assert groups == {"model=gpt2_nano", "model=roberta_tiny"}


def json_load(path):
    import json
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- misuse (issue 30 §4)
def test_whole_word_masking_refuses_a_tokenizer_that_marks_no_word_starts():
    from tokenizers import Tokenizer, models, pre_tokenizers

    from normx_track.errors import InputError
    from normx_track.training.data.masking import MaskingCollator
    words = sorted({w for line in TEXT for w in line.split()})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[MASK]", *words])}
    level = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    level.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=level, pad_token="[PAD]", unk_token="[UNK]",
                                  mask_token="[MASK]")
    with pytest.raises(InputError, match=r"marks word starts; .*'Ġ' or '▁' and no '##'"
                                         r".*data.whole_word_mask=false"):
        MaskingCollator(tok, 0.15, whole_word=True)
    MaskingCollator(tok, 0.15)  # token-level masking needs no word starts


@pytest.mark.parametrize("probability", [0.0, 1.0, 1.5, -0.1])
def test_masking_collator_checks_its_probability_as_the_config_does(bytelevel, probability):
    from normx_track.errors import InputError
    from normx_track.training.data.masking import MaskingCollator
    with pytest.raises(InputError, match=r"probability must be in \(0, 1\)"):
        MaskingCollator(bytelevel, probability)


def test_whole_word_mask_on_a_causal_model_is_a_config_error():
    from normx_track.training.config import Config, ConfigError, validate
    cfg = Config()
    cfg.data.whole_word_mask = True
    with pytest.raises(ConfigError, match="data.whole_word_mask is for masked LMs.*gpt2"):
        validate(cfg)
    cfg.model.arch = "bert"
    validate(cfg)


def test_a_batch_without_a_masked_token_is_left_out_of_the_loss_and_the_row(tmp_path):
    from normx_track import Tracker, compute_gold
    from normx_track.record.store import read_metrics
    from normx_track.training.config import ModelConfig, OptimConfig
    from normx_track.training.model import LanguageModel
    cfg = ModelConfig(arch="bert", n_layer=1, n_embd=32, n_head=2, n_positions=16)
    module = LanguageModel.from_configs(cfg, OptimConfig(), 90, 2, 10, pad_token_id=0)
    ids = torch.randint(5, 90, (2, 16), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(ids, -100)
    logged = {}
    module.log = lambda key, value, **kwargs: logged.__setitem__(key, value)
    out = module.training_step({"input_ids": ids, "labels": labels}, 0)
    assert out["loss_tokens"] == 0 and torch.isnan(logged["train/loss"])  # not 0.0
    out["loss"].backward()  # a zero gradient: nothing learned from it
    assert all(p.grad is None or not p.grad.any() for p in module.parameters())
    labels[0, 3] = 11
    masked = module.training_step({"input_ids": ids, "labels": labels}, 1)
    gold = compute_gold([np.arange(90)], 90, shuffle_correction=False)
    with Tracker(gold, out_dir=tmp_path, every_n_steps=100, min_count=1) as tracker:
        tracker.step(module.model, 0)
        tracker.record_loss("train/loss", out["loss"], 1, tokens=out["loss_tokens"])
        tracker.snapshot(module.model, 1)  # only a loss over no token so far: no column
        tracker.record_loss("train/loss", masked["loss"], 2, tokens=masked["loss_tokens"])
        tracker.record_loss("train/loss", out["loss"], 3, tokens=out["loss_tokens"])
        tracker.snapshot(module.model, 3)
    rows = read_metrics(tmp_path)
    assert "train/loss" not in rows[1]
    assert rows[2]["train/loss"] == pytest.approx(masked["loss"].item())
    assert rows[2]["train/loss_step"] == 2  # the masked batch's, not the empty one's 0.0


# --------------------------------------------------------------------------- layer-wise hook
def test_a_layerwise_method_is_ranked_as_normxlogit_per_layer_at_the_mask(wordpiece):
    """The evidence base calls a layer-wise method with the rows and their [MASK]
    position and ranks its scores with the probe's rules (specials, the mask dropped)."""
    class Lens:
        name = "lens"

        def __call__(self, model, inputs):
            a = attribute(model, inputs.input_ids, inputs.attention_mask, layers="all",
                          target=inputs.target, position=inputs.position)
            return a.layers, a.normxlogit_layers

    model = make("bert", vocab=len(wordpiece))
    out = MaskedEvidenceProbe(PAIRS, wordpiece, layerwise=[Lens()])(model)
    for layer in range(L + 1):
        key = "normx/evidence_ap_by_layer/{}/layer_%02d" % layer
        assert out[key.format("lens")] == pytest.approx(out[key.format("normxlogit")])
    assert out[EVIDENCE_AP.format(method="lens")] == pytest.approx(
        out[EVIDENCE_AP.format(method="normxlogit")])
    assert out[EVIDENCE_DP.format(method="lens")] == pytest.approx(
        out[EVIDENCE_DP.format(method="normxlogit")])
