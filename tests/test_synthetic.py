"""Tests for the embedded synthetic corpus (normx_track.training.data.synthetic)."""
import json
from collections import Counter
from dataclasses import replace

import pytest

from normx_track.training.data.synthetic import (
    SyntheticConfig,
    build_lexicon,
    content_forms,
    generate_corpus,
    structured_documents,
    write_corpus,
)

SMALL = SyntheticConfig(n_documents=400, n_probes=200, seed=3)


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(SMALL)


@pytest.fixture(scope="module")
def structured():
    return structured_documents(SMALL)


@pytest.fixture(scope="module")
def lexicon():
    return build_lexicon(SMALL)


def _noun_lemmas(lexicon):
    return {w for part in (*lexicon.topics, lexicon.shared) for w in part["noun"]}


def _is_inflected(word, lemmas):
    return word.endswith("s") and word[:-1] in lemmas


def _is_plural_noun(word, nouns):
    """Plural by the form rule; fails loudly if the word is no noun form at all."""
    assert (word in nouns) != _is_inflected(word, nouns), word
    return _is_inflected(word, nouns)


def _verb_lemmas(lexicon):
    return {w for part in (*lexicon.topics, lexicon.shared) for w in part["verb"]}


def test_deterministic_per_seed():
    cfg = replace(SMALL, n_documents=50, n_probes=20)
    a, b = generate_corpus(cfg), generate_corpus(cfg)
    assert a.documents == b.documents and a.probes == b.probes and a.topics == b.topics
    c = generate_corpus(replace(cfg, seed=cfg.seed + 1))
    assert c.documents != a.documents
    assert c.probes != a.probes


def test_structured_sentences_are_the_documents(corpus, structured):
    assert [t for t, _ in structured] == corpus.topics
    texts = [" ".join(" ".join(s.words) for s in sents) for _, sents in structured]
    assert texts == corpus.documents
    low, high = SMALL.sentences_per_document
    assert all(low <= len(sents) <= high for _, sents in structured)


def test_main_verb_agrees_with_subject(structured, lexicon):
    nouns, verbs = _noun_lemmas(lexicon), _verb_lemmas(lexicon)
    n_checked = 0
    for _, sents in structured:
        for s in sents:
            assert s.words[-1] == "."
            assert s.subject_index < s.verb_index
            assert (s.subject_index, s.verb_index) in s.agreements
            subj, verb = s.words[s.subject_index], s.words[s.verb_index]
            # labels agree with the forms: plural noun = lemma+"s", singular verb = stem+"s"
            assert _is_plural_noun(subj, nouns) == s.plural
            assert verb in verbs if s.plural else _is_inflected(verb, verbs)
            # every recorded agreement (incl. relative clauses, second clauses) re-derived from
            # the word endings alone: noun ends in "s" exactly when the verb does not
            for i, j in s.agreements:
                assert i < j
                assert s.words[i].endswith("s") != s.words[j].endswith("s")
                n_checked += 1
    assert n_checked > 2000


def test_attractors_have_both_numbers_in_training(structured):
    with_attractor = [s for _, ss in structured for s in ss if s.attractor_index is not None]
    without = [s for _, ss in structured for s in ss if s.attractor_index is None]
    n = len(with_attractor) + len(without)
    assert 0.4 < len(with_attractor) / n < 0.6  # attractor_probability = 0.5
    for s in with_attractor:
        assert s.subject_index < s.attractor_index < s.verb_index
    mismatched = sum(s.words[s.attractor_index].endswith("s") != s.plural for s in with_attractor)
    # attractor number independent of the subject's in training: a nearest-noun heuristic fails
    assert 0.35 < mismatched / len(with_attractor) < 0.65


def test_probes(corpus, lexicon):
    nouns, verbs = _noun_lemmas(lexicon), _verb_lemmas(lexicon)
    assert len(corpus.probes) == SMALL.n_probes
    assert [p["pair_id"] for p in corpus.probes] == list(range(SMALL.n_probes))
    uids = Counter(p["UID"] for p in corpus.probes)
    assert uids["synthetic_agreement_attractor"] > 50 and uids["synthetic_agreement_simple"] > 50
    opposite_attractors = 0
    for p in corpus.probes:
        words = p["one_prefix_prefix"].split()
        good, bad = p["one_prefix_word_good"], p["one_prefix_word_bad"]
        [cue] = p["cue_word_indices"]
        subject = words[cue]
        plural = _is_plural_noun(subject, nouns)  # the cue is a subject noun
        assert good != bad
        if plural:  # bad is the other number of the same stem
            assert good in verbs and bad == good + "s"
        else:
            assert bad in verbs and good == bad + "s"
        later_nouns = [w for w in words[cue + 1:] if w in nouns or _is_inflected(w, nouns)]
        if p["UID"] == "synthetic_agreement_attractor":
            assert later_nouns
            opposite_attractors += any(_is_plural_noun(w, nouns) != plural for w in later_nouns)
        else:
            assert not later_nouns
    assert opposite_attractors >= uids["synthetic_agreement_attractor"] // 2


def test_probes_are_held_out(corpus):
    starts = set()
    for doc in corpus.documents:
        sentence = []
        for w in doc.split():
            if w == ".":
                sentence = []
                continue
            sentence.append(w)
            starts.add(" ".join(sentence))
    assert corpus.documents[0].split()[0] in starts
    probed = [p["one_prefix_prefix"] + " " + p["one_prefix_word_good"] for p in corpus.probes]
    assert not starts.intersection(probed)  # no training sentence begins like a probe
    assert len(set(probed)) == len(probed)


def test_function_words(corpus):
    assert not corpus.function_words & corpus.content_words
    assert 30 <= len(corpus.function_words) <= 50
    tokens = [w for doc in corpus.documents for w in doc.split()]
    assert set(tokens) <= corpus.function_words | corpus.content_words
    share = sum(w in corpus.function_words for w in tokens) / len(tokens)
    assert 0.3 < share < 0.6
    counts = Counter(tokens)
    assert counts["the"] > counts["any"] * 3  # function words are Zipf-ish too


def test_zipf_within_topic(structured, lexicon):
    topic = 0
    nouns = lexicon.topics[topic]["noun"]
    assert len(nouns) >= 50
    counts = Counter()
    for t, sents in structured:
        if t == topic:
            counts.update(w.removesuffix("s") if w.endswith("s") else w
                          for s in sents for w in s.words)
    assert counts[nouns[0]] > 10 * max(counts[nouns[49]], 1)
    assert counts[nouns[0]] > counts[nouns[4]] > counts[nouns[49]]


def test_documents_stay_in_topic(corpus, lexicon):
    topic_forms = [content_forms(part) for part in lexicon.topics]
    shared = content_forms(lexicon.shared)
    assert all(not (a & b) for i, a in enumerate(topic_forms) for b in topic_forms[i + 1:])
    n_shared = n_content = 0
    for topic, doc in zip(corpus.topics, corpus.documents):
        assert 0 <= topic < SMALL.n_topics
        content = [w for w in doc.split() if w in corpus.content_words]
        assert all(w in topic_forms[topic] or w in shared for w in content)
        n_shared += sum(w in shared for w in content)
        n_content += len(content)
    assert 0.01 < n_shared / n_content < 0.12  # SHARED_WORD_PROBABILITY = 0.05
    assert len(set(corpus.topics)) == SMALL.n_topics


@pytest.mark.parametrize(
    "field, value",
    [
        ("n_documents", 0),
        ("n_topics", 0),
        ("content_words_per_topic", 2),
        ("n_probes", -1),
        ("seed", -1),
        ("sentences_per_document", (5, 2)),
        ("sentences_per_document", (0, 2)),
        ("zipf_exponent", -0.5),
        ("zipf_exponent", float("nan")),
        ("attractor_probability", 1.5),
    ],
)
def test_config_validation_names_field(field, value):
    with pytest.raises(ValueError, match=rf"SyntheticConfig\.{field} must be"):
        generate_corpus(replace(SMALL, **{field: value}))


def test_edge_configs():
    cfg = SyntheticConfig(n_documents=5, sentences_per_document=(1, 1), n_topics=1,
                          content_words_per_topic=3, attractor_probability=0.0, n_probes=5)
    c = generate_corpus(cfg)
    assert len(c.documents) == 5 and all(d.count(" . ") == 0 for d in c.documents)
    assert {p["UID"] for p in c.probes} == {"synthetic_agreement_simple"}
    c = generate_corpus(replace(cfg, attractor_probability=1.0, n_probes=4))
    assert {p["UID"] for p in c.probes} == {"synthetic_agreement_attractor"}


def test_write_corpus_roundtrip(tmp_path):
    corpus = generate_corpus(replace(SMALL, n_documents=30, n_probes=10))
    paths = write_corpus(corpus, tmp_path / "out")
    assert set(paths) == {"train", "probes", "function_words"}
    train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    assert [row["text"] for row in train] == corpus.documents
    probes = [json.loads(line) for line in paths["probes"].read_text().splitlines()]
    assert probes == corpus.probes
    assert set(paths["function_words"].read_text().split("\n")[:-1]) == corpus.function_words
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "function_words.txt", "probes.jsonl", "train.jsonl"]
    before = paths["train"].read_bytes()
    write_corpus(corpus, tmp_path / "out")  # rewriting is idempotent, no temp files left
    assert paths["train"].read_bytes() == before
    assert len(list((tmp_path / "out").iterdir())) == 3
