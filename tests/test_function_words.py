"""Function words on real text: the built-in English closed-class list, a user's file for
other languages, labels on whole words of a real BPE vocabulary (not its pieces,
placeholders or names; clitics as their tokens occur), and a run on English text files
that gets its function-word curve and class counts."""
from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from conftest import train_here
from normx_track.gold.statistics import function_word_labels
from normx_track.gold.word_labels import REASONS, label_function_words
from normx_track.probes.function_words import ENGLISH, FunctionWordsError, resolve_function_words
from normx_track.training.data.tokenizer import surface_forms, train_bpe


def test_english_list_holds_each_closed_class_and_no_content_words():
    for word in ("the", "these", "she", "themselves", "of", "between", "and", "because", "is",
                 "could", "not", "n't"):
        assert word in ENGLISH, word
    for word in ("cat", "run", "red", "very", "house", "quickly"):
        assert word not in ENGLISH, word


def test_resolution_order_and_a_users_file(tmp_path):
    own = {"zo", "ka"}
    assert resolve_function_words(None, own) == own  # the synthetic corpus knows its own
    assert resolve_function_words(None, None) == set(ENGLISH)
    assert resolve_function_words("english", own) == set(ENGLISH)
    assert resolve_function_words("none", own) is None
    words = tmp_path / "de.txt"
    words.write_text("der die das\nund\n")
    assert resolve_function_words(str(words), None) == {"der", "die", "das", "und"}


@pytest.mark.parametrize("content", [None, b"", b"\xff\xfe\x00"])
def test_unreadable_lists_name_the_file_and_the_key(tmp_path, content):
    path = tmp_path / "words.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FunctionWordsError, match=r"tracker.function_words: .*words\.txt"):
        resolve_function_words(str(path), None)


def test_byte_level_tokens_are_labelled_by_their_decoded_text(tmp_path):
    # GPT-2's byte-level vocabulary spells a newline "Ċ" and "’" as "âĢĻ": both look
    # alphabetic as vocabulary strings, and neither is a word.
    text = "the cat sat on the mat\nit’s between the dog and a cat\t\u2014 ok 1990"
    tokenizer = train_bpe([text] * 200, vocab_size=400, directory=tmp_path)
    docs = [np.array(tokenizer.encode(text))] * 3
    labels = function_word_labels(surface_forms(tokenizer), ENGLISH, docs,
                                  tokens=tokenizer.convert_ids_to_tokens(range(len(tokenizer))),
                                  special_ids=tokenizer.all_special_ids)
    by_token = {t: labels[i] for t, i in tokenizer.get_vocab().items()}
    # "the" begins the document: a whole word without a leading space
    assert [by_token[t] for t in ("Ġthe", "the", "Ġbetween", "Ġand")] == [1.0] * 4
    assert [by_token[t] for t in ("Ġcat", "Ġmat", "Ġdog")] == [0.0] * 3
    for token in ("Ċ", "ĉ", "âĢĻ", "âĢĶ", "Ġ1990", ".", "<|endoftext|>"):
        if token in by_token:
            assert np.isnan(by_token[token]), token
    assert np.isnan(by_token["Ċ"]) and np.isnan(by_token["âĢĻ"])


def test_without_a_corpus_marked_tokens_are_labelled_by_their_text():
    # Metaspace decodes "▁the" alone as "the": the vocabulary string carries the mark.
    # Unmarked tokens may be pieces ("ing"): neither class without a corpus to tell.
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(
        {"▁the": 0, "▁cat": 1, "▁of": 2, "<0x0A>": 3, "ing": 4, "<unk>": 5, "'s": 6},
        unk_token="<unk>")))
    tokenizer.backend_tokenizer.decoder = decoders.Metaspace()
    surfaces = surface_forms(tokenizer)
    assert surfaces[0] == "the"
    labels = function_word_labels(surfaces, ENGLISH,
                                  tokens=tokenizer.convert_ids_to_tokens(range(7)))
    np.testing.assert_array_equal(labels, [1.0, 0.0, 1.0, np.nan, np.nan, np.nan, 1.0])
    # ... and with a corpus: "▁the" begins a word though "cat"'s text has no space
    labels = function_word_labels(["the", "cat", "s", "of"], ENGLISH,
                                  [np.array([0, 1, 2, 3, 0, 1])], tokens=["▁the", "▁cat", "s", "▁of"])
    np.testing.assert_array_equal(labels, [1.0, 0.0, np.nan, 1.0])
    # WordPiece marks the other side: "##" pieces continue a word
    labels = function_word_labels(["the", "cat", "s", "of", "ing"], ENGLISH,
                                  tokens=["the", "cat", "##s", "of", "##ing"])
    np.testing.assert_array_equal(labels, [1.0, 0.0, np.nan, 1.0, np.nan])


# A hand-worked stream: token id -> decoded text, and documents of ids.
HAND = [" The", " Sam", "oa", " is", " a", " <", "unk", ">", " .", " it",      # 0-9
        " '", "s", " the", " US", " don", "'t", " know", "do", "n", " Dubl",   # 10-19
        "in", "a", " went", "ing", "\n", " May", ",", " Don", "<|endoftext|>"]  # 20-28
HAND_DOCS = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 28],   # " The Samoa is a <unk> ."
             [9, 10, 11, 12, 13, 8],            # " it 's the US ."
             [14, 15, 16, 8],                   # " don't know ."
             [17, 18, 15, 16],                  # "don't know" split do + n + 't
             [19, 20, 3, 4, 13, 26, 8],         # " Dublin is a US, ."
             [25, 3, 12, 27, 8, 24, 0, 27]]     # " May is the Don .\n The Don"


def test_hand_worked_labels_sit_on_whole_words():
    result = label_function_words(HAND, ENGLISH, [np.array(d) for d in HAND_DOCS],
                                  special_ids=[28])
    expected = {
        " The": "function", " is": "function", " a": "function", " it": "function",
        " the": "function", "do": "clitic_host",   # "do" + "n't": a whole word
        " May": "function",                     # sentence-initial: not a name
        " Sam": "piece", "oa": "piece", " Dubl": "piece", "in": "piece",
        "s": "clitic", "'t": "clitic", "n": "clitic",   # ' + s, do + n + 't
        " don": "clitic_host",                            # don + 't: negated auxiliary
        " <": "not_a_word", "unk": "placeholder", ">": "not_a_word", " .": "not_a_word",
        " US": "proper_noun",                             # after " the", " a": mid-sentence
        " know": "content", " Don": "content",
        " went": "content", "ing": "piece", "a": "piece",   # unseen: the surface rule
        "\n": "not_a_word", "<|endoftext|>": "special", " '": "not_a_word", ",": "not_a_word"}
    assert set(expected) == set(HAND)
    assert {t: REASONS[r] for t, r in zip(HAND, result.reasons)} == expected
    want = [1.0 if expected[t] in ("function", "clitic", "clitic_host")
            else 0.0 if expected[t] == "content" else np.nan for t in HAND]
    np.testing.assert_array_equal(result.labels, want)
    by_reason = Counter(expected.values())
    assert result.summary() == {
        "n_function": 11, "n_content": 3, "n_unlabelled": 15,
        "by_reason": {r: by_reason[r] for r in REASONS}}


def test_a_capitalised_listed_word_is_never_taken_for_a_name():
    # "I" mid-sentence is as capitalised as "US"; the list spells it with its capital.
    surfaces = [" and", " I", " US", " the"]
    docs = [np.array([3, 2, 0, 1, 0, 1])]
    labels = function_word_labels(surfaces, ENGLISH, docs)
    np.testing.assert_array_equal(labels, [1.0, 1.0, np.nan, 1.0])
    lowered = function_word_labels(surfaces, {w.lower() for w in ENGLISH}, docs)
    assert np.isnan(lowered[1])


# ------------------------------------------------------ a WikiText-like sample, real BPE
WIKI = """ = Samoa = 
 Samoa is a country in the South Pacific . The US and New Zealand were its partners in the war .
 In May 1962 , Samoa became the first country of the region to be independent .
 The <unk> of Samoa is Apia , and it 's on the island of Upolu .
 = = History = = 
 The people of Samoa did n't want a ruler from the US . It 's said that they were sailing .
 They don't know what it's like , but they're hoping for a <unk> in May .
 The band played in Dublin in May , and the US tour came after it .
 = = Dublin = = 
 Dublin is a city in Ireland . It is the largest city on the island , and it 's growing .
 In Dublin the main road is the M50 @-@ motorway , built in the 1990s for 1 @,@ 000 million .
 The writers of Dublin were reading and singing ; the <unk> was amazing .
 He said that he did n't go , and she said that she could n't stay in the city .
 The US ambassador met the mayor of Dublin in May 2001 , when the city was changing .
 A ruler of Samoa and a ruler of Dublin met at the meeting in Apia .
 Samoa 's team was training and playing in the US during the spring .
 They 've been to Samoa , and we 'll go to Dublin in May with the US team .
 I think that the island is beautiful , and I know it was a long way , as I said .
 The amazing sailing of the Samoan people is n't a thing of the past .
 = = = Samoa in the US = = = 
 It was n't the first time that the <unk> band had played in Dublin , and it is n't the last .
 In the morning the Samoan team went to the US embassy , but it was closed .
 I was there in May , and I saw the <unk> of the island .
"""


@pytest.fixture(scope="module")
def wiki(tmp_path_factory):
    lines = WIKI.splitlines(keepends=True)
    tokenizer = train_bpe(lines, vocab_size=400, directory=tmp_path_factory.mktemp("bpe"))
    docs = [np.array(tokenizer.encode(line) + [tokenizer.eos_token_id]) for line in lines]
    surfaces = surface_forms(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
    result = label_function_words(surfaces, ENGLISH, docs, tokens=tokens,
                                  special_ids=tokenizer.all_special_ids)
    by_token = {t: i for i, t in enumerate(tokens)}
    return tokenizer, docs, surfaces, result, by_token


def brute_force_labels(surfaces, docs, words, special_ids):
    """The documented rule, one occurrence at a time on the decoded text."""
    def low(s):
        return s.strip().replace("\u2019", "'").lower()

    lexicon = {w.lower() for w in words}
    exempt = {w.lower() for w in words if w != w.lower()}
    clitics = {w for w in lexicon if w.startswith("'") or w == "n't"}
    suffixes = {w[1:] for w in clitics if w.startswith("'")}
    tally = defaultdict(Counter)
    for doc in docs:
        p = [surfaces[t] for t in doc]
        text = "".join(p)
        start = np.cumsum([0] + [len(x) for x in p])
        in_placeholder = {k for m in re.finditer(r"<[^\s<>]+>", text) for k in range(len(p))
                          if start[k] < m.end() and start[k + 1] > m.start()}
        # joins[k]: the boundary before token k lies inside a run of letters/digits
        joins = [False] + [text[start[k] - 1].isalnum() and text[start[k]].isalnum()
                           for k in range(1, len(p))] + [False]

        def bare(k, form):   # "s", "t" right after an apostrophe token, ending its word
            return (low(p[k]) == form and form in suffixes and not p[k][0].isspace()
                    and k > 0 and low(p[k - 1]) == "'" and not joins[k + 1])

        def negation_at(k):   # the clitic 't begins at token k
            if k >= len(p):
                return False
            if low(p[k]) in ("'t", "n't") and low(p[k]) in clitics and not joins[k + 1]:
                return True
            return low(p[k]) == "'" and k + 1 < len(p) and bare(k + 1, "t")

        n_clitic = ["n't" in clitics and low(x) == "n" and negation_at(k + 1)
                    for k, x in enumerate(p)]
        for k in range(len(p)):
            if n_clitic[k]:
                joins[k] = False
        for k, x in enumerate(p):
            c = tally[doc[k]]
            c["n"] += 1
            if k in in_placeholder:
                c["placeholder"] += 1
                continue
            clitic = n_clitic[k] or (low(x) in clitics and not joins[k + 1]) or any(
                bare(k, s) for s in suffixes)
            if clitic:
                c["clitic"] += 1
            elif not joins[k] and not joins[k + 1]:
                c["whole"] += 1
                before = text[start[k] - 1] if start[k] > 0 else "\n"
                if x.strip()[:1].isupper():
                    c["capital_mid"] += before.isalnum() or before == ","
            if not joins[k] and not n_clitic[k] and (negation_at(k + 1)
                                                     or (k + 1 < len(p) and n_clitic[k + 1])):
                c["host"] += 1
    labels = np.full(len(surfaces), np.nan)
    for v, surface in enumerate(surfaces):
        core, c = low(surface), tally[v]
        if v in special_ids or re.fullmatch(r"<[^\s<>]+>", core):
            continue
        if not re.search(r"[^\W\d_]", core) and core not in lexicon:
            continue
        if c["n"] == 0:
            continue   # the surface rule, tested above
        if c["placeholder"] >= c["n"] / 2:
            continue
        if c["clitic"] >= c["n"] / 2 or c["host"] >= c["n"] / 2:
            labels[v] = 1.0
        elif c["whole"] < c["n"] / 2 or not (core.isalpha() or core in lexicon):
            continue
        elif core in lexicon:
            name = surface.strip()[:1].isupper() and core not in exempt and \
                c["capital_mid"] >= c["whole"] / 2
            labels[v] = np.nan if name else 1.0
        else:
            labels[v] = 0.0
    return labels


def test_wikitext_like_labels_equal_a_brute_force_loop(wiki):
    tokenizer, docs, surfaces, result, _ = wiki
    seen = np.bincount(np.concatenate(docs), minlength=len(surfaces)) > 0
    expected = brute_force_labels(surfaces, docs, ENGLISH, set(tokenizer.all_special_ids))
    np.testing.assert_array_equal(result.labels[seen], expected[seen])


def test_wikitext_like_pieces_placeholders_names_and_clitics(wiki):
    tokenizer, docs, surfaces, result, ids = wiki
    label = {t: result.labels[ids[t]] for t in ids}
    # word-internal pieces of "Samoa", "Dublin", "-ing" words: neither class
    for piece in ("a", "in", "oa", "ing", "ed"):
        assert np.isnan(label[piece]), piece
    assert "ĠSamoa" in ids and "ĠDublin" in ids and label["ĠSamoa"] == label["ĠDublin"] == 0.0
    # every piece of every "<unk>" occurrence is neither class
    unk = tokenizer.encode(" <unk>")
    assert len(unk) == 3 and all(np.isnan(result.labels[i]) for i in unk)
    assert REASONS[result.reasons[ids["unk"]]] == "placeholder"
    # names spelled like function words; " The" and " I" stay function words
    assert np.isnan(label["ĠUS"]) and np.isnan(label["ĠMay"])
    assert label["ĠThe"] == label["ĠI"] == label["Ġthe"] == label["Ġa"] == label["Ġin"] == 1.0
    # clitics as the tokens occur: "it 's" -> ' + s, "did n't" -> n + 't
    assert tokenizer.tokenize(" it 's") == ["Ġit", "Ġ'", "s"]
    assert tokenizer.tokenize(" did n't")[-2:] == ["Ġn", "'t"]
    assert label["s"] == label["'t"] == label["Ġn"] == 1.0
    # what the old rule (decoded text alone, no corpus) got wrong on this vocabulary
    old = {t: (1.0 if surfaces[i].strip().lower() in ENGLISH
               else 0.0 if surfaces[i].strip().isalpha() else np.nan) for t, i in ids.items()}
    assert (old["a"], old["in"], old["ing"], old["unk"], old["s"], old["ĠUS"]) == (
        1.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_wikitext_like_class_counts_are_recorded(wiki):
    from normx_track.tracker.snapshot import NormMetrics

    tokenizer, docs, surfaces, result, _ = wiki
    counts = np.bincount(np.concatenate(docs), minlength=len(surfaces))
    for min_count in (1, 3):
        keep = counts >= min_count
        summary = result.summary(counts, min_count)
        assert summary["n_function"] == sum(result.labels[keep] == 1)
        assert summary["n_unlabelled"] == keep.sum() - summary["n_function"] - summary["n_content"]
        neither = ("piece", "placeholder", "proper_noun", "not_a_word", "special")
        assert sum(summary["by_reason"][r] for r in neither) == summary["n_unlabelled"]
        gold = {"counts": counts, "function_word": result.labels}
        row = NormMetrics(gold, counts, min_count)({"input_norm": np.arange(len(counts)) + 1.0})
        assert {k: row[f"normx/function_word/n_{k}"] for k in ("function", "content",
                                                                "unlabelled")} == {
            k: summary[f"n_{k}"] for k in ("function", "content", "unlabelled")}
    assert 0 < summary["n_function"] and 0 < summary["n_content"]
    assert summary["by_reason"]["piece"] > 10


def test_a_run_on_english_text_files_gets_a_function_word_curve(cache_dir, tmp_path):
    rng = np.random.default_rng(0)
    nouns = "cat dog house garden teacher river window letter market story".split()
    verbs = "sees finds likes paints opens reads".split()
    lines = [f"the {rng.choice(nouns)} {rng.choice(verbs)} a {rng.choice(nouns)} of the "
             f"{rng.choice(nouns)} and it is near {rng.choice(nouns)}" for _ in range(1500)]
    corpus = tmp_path / "english.txt"
    corpus.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    train_here(out, cache_dir, "trainer.max_steps=1", "logger=csv", "data=text_files",
               f"data.files=[{corpus}]", "data.vocab_size=300", "tracker.evidence=false")
    row = json.loads((out / "normx" / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["normx/auroc/function_word"])
    gold = np.load(out / "normx" / "gold.npz")
    vocab = json.loads((out / "normx" / "vocab.json").read_text())
    labelled = {vocab[i].replace("Ġ", "") for i in np.flatnonzero(gold["function_word"] == 1)}
    assert {"the", "of", "and", "it", "is", "a"} <= labelled
    # the row says how many types of the AUROC's each class holds
    min_count = json.loads((out / "normx" / "meta.json").read_text())["tracker"]["min_count"]
    kept = gold["function_word"][gold["counts"] >= min_count]
    assert [row[f"normx/function_word/n_{k}"] for k in ("function", "content", "unlabelled")] \
        == [(kept == 1).sum(), (kept == 0).sum(), np.isnan(kept).sum()]
    assert (kept == 1).sum() >= 6 and (kept == 0).sum() >= 3   # nouns split at vocab 300
