"""Gold signals against independent references: plain-Python pair counting, scipy.sparse."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp

from normx_track.gold import statistics as gold_mod
from normx_track.gold.statistics import (GoldStatistics, cache_key, compute_gold, cooccurrence_kl,
                              function_word_labels, load_lexicon, shuffle_documents,
                              LexiconError)


def brute_force_kl(documents, vocab_size, window):
    """KL(p(.|w) || p(.)) with dict counts over all ordered pairs 0<|i-j|<=W per document."""
    pairs = Counter()
    for doc in documents:
        doc = [int(t) for t in doc]
        for i in range(len(doc)):
            for j in range(len(doc)):
                if 0 < abs(i - j) <= window:
                    pairs[doc[i], doc[j]] += 1
    row = Counter()
    for (w, _), k in pairs.items():
        row[w] += k
    total = sum(pairs.values())
    col = row  # symmetric
    kl = [math.nan] * vocab_size
    for w in range(vocab_size):
        if row[w]:
            kl[w] = sum(k / row[w] * math.log((k / row[w]) / (col[c] / total))
                        for (a, c), k in pairs.items() if a == w)
    return np.array(kl)


def scipy_kl(documents, vocab_size, window):
    """Co-occurrence matrix via scipy COO -> CSR (duplicates summed), KL per row."""
    rows, cols = [], []
    for doc in documents:
        for d in range(1, window + 1):
            rows += [doc[:-d], doc[d:]]
            cols += [doc[d:], doc[:-d]]
    r, c = np.concatenate(rows), np.concatenate(cols)
    C = sp.coo_matrix((np.ones(r.size), (r, c)), shape=(vocab_size, vocab_size)).tocsr()
    n = np.asarray(C.sum(axis=1)).ravel()
    p = n / n.sum()
    row_of = np.repeat(np.arange(vocab_size), np.diff(C.indptr))
    p_cond = C.data / n[row_of]
    terms = p_cond * np.log(p_cond / p[C.indices])
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, np.bincount(row_of, terms, minlength=vocab_size), np.nan)


def random_docs(seed, vocab_size, n_docs, max_len, zipf=False):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab_size + 1) if zipf else np.ones(vocab_size)
    return [rng.choice(vocab_size, size=rng.integers(1, max_len), p=p / p.sum())
            for _ in range(n_docs)]


@pytest.mark.parametrize("window", [1, 2, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_information_gain_matches_brute_force(seed, window):
    docs = random_docs(seed, 15, 6, 25)
    docs.append(np.array([3]))  # a one-token document has no co-occurrences
    np.testing.assert_allclose(cooccurrence_kl(docs, 15, window),
                               brute_force_kl(docs, 15, window), rtol=1e-10, atol=1e-12)


def test_information_gain_hand_example():
    # one document [0, 1, 0], W=1: pairs (0,1),(1,0),(1,0),(0,1): C = [[0,2],[2,0]].
    # p(.|0) = (0, 1), p(.) = (1/2, 1/2): KL = log 2 for both tokens; token 2 unseen.
    ig = cooccurrence_kl([np.array([0, 1, 0])], 3, window=1)
    np.testing.assert_allclose(ig[:2], [math.log(2), math.log(2)])
    assert np.isnan(ig[2])


def test_repeated_token_diagonal():
    # [0, 0, 1], W=2: ordered pairs (0,0)x2, (0,1)x2, (1,0)x2: C = [[2,2],[2,0]];
    # p(.|0) = (1/2,1/2), p(.) = (4/6, 2/6): KL = 1/2 log(3/4) + 1/2 log(3/2).
    ig = cooccurrence_kl([np.array([0, 0, 1])], 2, window=2)
    assert ig[0] == pytest.approx(0.5 * math.log(0.75) + 0.5 * math.log(1.5))
    assert ig[1] == pytest.approx(math.log(1.5))  # p(.|1) = (1, 0)


def test_pairs_never_cross_documents():
    # [0,1] and [2,3]: each token sees only its partner, p(.|w) is one-hot and every
    # p(c) = 1/4, so KL = log 4. As one document [0,1,2,3] the 1-2 pairs etc. would exist.
    split = cooccurrence_kl([np.array([0, 1]), np.array([2, 3])], 4, window=5)
    np.testing.assert_allclose(split, [math.log(4)] * 4)
    np.testing.assert_allclose(split, brute_force_kl([[0, 1], [2, 3]], 4, 5))
    joined = cooccurrence_kl([np.array([0, 1, 2, 3])], 4, window=5)
    assert np.all(joined < split - 0.5)


@pytest.mark.parametrize("vocab_size", [300, 70_000])   # uint32 and uint64 key paths
def test_moderate_stream_matches_scipy(vocab_size):
    docs = random_docs(7, vocab_size, 60, 400, zipf=True)
    np.testing.assert_allclose(cooccurrence_kl(docs, vocab_size, 5),
                               scipy_kl(docs, vocab_size, 5), rtol=1e-9, atol=1e-12)


def test_chunked_counting_equals_single_pass():
    docs = random_docs(3, 500, 40, 300, zipf=True)
    whole = cooccurrence_kl(docs, 500, 5)
    for chunk in (1, 97, 1000):
        np.testing.assert_allclose(cooccurrence_kl(docs, 500, 5, chunk_tokens=chunk), whole,
                                   rtol=1e-12, atol=1e-12)


def test_self_information_and_counts():
    docs = [np.array([0, 1, 1]), np.array([1, 2])]
    g = compute_gold(docs, 4, shuffle_correction=False)
    np.testing.assert_array_equal(g.counts, [1, 3, 1, 0])
    np.testing.assert_allclose(g.self_information[:3], -np.log(np.array([1, 3, 1]) / 5))
    assert np.isnan(g.self_information[3])
    assert g.n_tokens == 5 and g.names() == ["counts", "self_information", "information_gain"]


def test_max_tokens_truncates_stream():
    docs = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    g = compute_gold(docs, 6, shuffle_correction=False, max_tokens=4)
    np.testing.assert_array_equal(g.counts, [1, 1, 1, 1, 0, 0])
    np.testing.assert_allclose(g.information_gain, cooccurrence_kl([docs[0], docs[1][:1]], 6))


def test_corrected_is_ig_minus_seeded_shuffle():
    docs = random_docs(4, 40, 10, 50, zipf=True)
    g = compute_gold(docs, 40, seed=11)
    shuffled = shuffle_documents(docs, 11)
    assert [len(d) for d in shuffled] == [len(d) for d in docs]
    np.testing.assert_array_equal(np.sort(np.concatenate(shuffled)), np.sort(np.concatenate(docs)))
    expected = brute_force_kl(docs, 40, 5) - brute_force_kl(shuffled, 40, 5)
    np.testing.assert_allclose(g.information_gain_corrected, expected, rtol=1e-9, atol=1e-12)
    again = compute_gold(docs, 40, seed=11).information_gain_corrected
    np.testing.assert_array_equal(again, g.information_gain_corrected)
    other = compute_gold(docs, 40, seed=12).information_gain_corrected
    assert not np.allclose(other, g.information_gain_corrected, equal_nan=True)


def test_invalid_ids_rejected():
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        compute_gold([np.array([0, 5])], 5)


# ---------------------------------------------------------------- save / load
def small_gold():
    g = compute_gold(random_docs(5, 20, 5, 30), 20, seed=3)
    g.function_word = np.where(np.arange(20) < 5, 1.0, np.nan)
    return g


def test_save_load_round_trip(tmp_path):
    g = small_gold()
    g.save(tmp_path / "gold.npz")
    back = GoldStatistics.load(tmp_path / "gold.npz", vocab_size=20)
    assert back.names() == g.names() == list(gold_mod.SIGNALS)
    for name in g.names():
        np.testing.assert_array_equal(getattr(back, name), getattr(g, name))
    assert (back.window, back.n_tokens, back.seed) == (g.window, g.n_tokens, g.seed)
    assert list(tmp_path.iterdir()) == [tmp_path / "gold.npz"]   # no temp file left


def test_load_rejects_wrong_vocab_size(tmp_path):
    small_gold().save(tmp_path / "gold.npz")
    with pytest.raises(ValueError, match=r"gold\.npz.*expected length 50257"):
        GoldStatistics.load(tmp_path / "gold.npz", vocab_size=50257)


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "gold.npz"
    small_gold().save(path)
    before = path.read_bytes()

    def broken_savez(file, **arrays):
        file.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        compute_gold([np.array([1, 2, 3])], 20).save(path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_cache_key_stable_and_unambiguous():
    key = cache_key("gpt2", b"\x00data", 5, 1_000_000)
    assert key == cache_key("gpt2", b"\x00data", 5, 1_000_000) and len(key) == 64
    assert cache_key("ab", "c") != cache_key("a", "bc")
    assert cache_key(1) != cache_key("1") != cache_key(b"1")
    with pytest.raises(TypeError):
        cache_key(1.5)


# ----------------------------------------------------------- labels, lexicons
def test_function_word_labels():
    surfaces = [" the", "The", " cat", "ing", ",", "<|endoftext|>", " ", " 1990", " Of ", "\n",
                "\u2019", "\ufffd", "\u010a"]
    labels = function_word_labels(surfaces, {"the", "of"})
    # no corpus: tokens without a word-start mark ("The", "ing", "Ċ") may be pieces
    np.testing.assert_array_equal(
        labels, [1, np.nan, 0, np.nan, np.nan, np.nan, np.nan, np.nan, 1, np.nan, np.nan, np.nan,
                 np.nan])
    # with a corpus: "The" begins its document, "ing" continues " cat"
    labels = function_word_labels(surfaces, {"the", "of"}, [np.array([1, 2, 3, 0, 2])])
    np.testing.assert_array_equal(labels[:4], [1, 1, 0, np.nan])


WORDS = {" cat": [7], "cat": [7], " dog": [3], " big": [9], "big": [9], " unbelievable": [4, 5],
         "unbelievable": [4, 5, 6], "kitten": [8], " kitten": [8, 1], " huge": [99]}


def encode(text):
    return WORDS[text]


def write(tmp_path, text):
    path = tmp_path / "lex.tsv"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_lexicon_maps_single_tokens(tmp_path):
    path = write(tmp_path, "# comment\ncat\t1.5\ndog\t-2\nunbelievable\t3\n\nkitten\t0.5\n"
                           "cat\t9\nbig\tnan\nbig\tinf\n")
    scores, stats = load_lexicon(path, encode, 10)
    assert stats == dict(n_lines=7, n_mapped=3, n_skipped_multitoken=1, n_skipped_duplicate=1,
                         n_skipped_nonfinite=2)
    assert scores[7] == 1.5 and scores[3] == -2.0 and scores[8] == 0.5   # kitten: bare form
    assert np.isnan(scores[[0, 1, 2, 4, 5, 6, 9]]).all()


@pytest.mark.parametrize("line", ["cat 1.5", "cat\tbig", "cat\t1\t2"])
def test_load_lexicon_malformed_line_names_file_and_line(tmp_path, line):
    path = write(tmp_path, f"dog\t1\n{line}\n")
    with pytest.raises(ValueError, match=r"lex\.tsv:2"):
        load_lexicon(path, encode, 10)


@pytest.mark.parametrize("content", [None, "dir", b"", b"unbelievable\t1\n", b"\xff\xfe\t1\n"])
def test_unreadable_or_unmapped_lexicon_names_the_file(tmp_path, content):
    path = tmp_path / "lex.tsv"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(LexiconError, match=r"lex\.tsv"):
        load_lexicon(path, encode, 10)


def test_load_lexicon_token_outside_vocab(tmp_path):
    path = write(tmp_path, "huge\t1\n")
    with pytest.raises(ValueError, match=r"lex\.tsv.*99.*vocab_size=10"):
        load_lexicon(path, encode, 10)


def test_no_tokens_and_a_negative_min_count_are_refused():
    with pytest.raises(ValueError, match="no tokens"):
        compute_gold([], 10)
    with pytest.raises(ValueError, match="no tokens"):
        compute_gold([np.array([], dtype=np.int64)], 10)
    from normx_track import NormTracker

    gold = compute_gold([np.arange(20) % 10], 10, shuffle_correction=False)
    with pytest.raises(ValueError, match="min_count must be >= 0, got -1"):
        NormTracker(gold, min_count=-1)
