"""Metrics against scipy, brute force and hand-worked examples."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from normx_track.gold import metrics as M


def vocab_arrays(seed=0, v=400):
    rng = np.random.default_rng(seed)
    counts = rng.zipf(1.5, v).astype(float)
    gold = rng.normal(size=v) + 0.5 * np.log(counts)
    norms = gold + rng.normal(size=v)
    gold[::17] = np.nan
    norms[::23] = np.inf
    return norms, gold, counts


# ------------------------------------------------------------------ correlations
def test_correlations_match_scipy_on_filtered_arrays():
    norms, gold, counts = vocab_arrays()
    out = M.correlations(norms, gold, counts, min_count=3)
    keep = (counts >= 3) & np.isfinite(norms) & np.isfinite(gold)
    assert out["n"] == keep.sum() > 20
    assert out["spearman"] == pytest.approx(stats.spearmanr(norms[keep], gold[keep])[0])
    assert out["pearson"] == pytest.approx(stats.pearsonr(norms[keep], gold[keep])[0])


def test_partial_spearman_equals_residual_regression():
    norms, gold, counts = vocab_arrays(1)
    out = M.correlations(norms, gold, counts, min_count=2)
    keep = (counts >= 2) & np.isfinite(norms) & np.isfinite(gold)
    x, y, z = (stats.rankdata(a[keep]) for a in (norms, gold, np.log(counts)))
    design = np.column_stack([np.ones_like(z), z])

    def residual(v):
        return v - design @ np.linalg.lstsq(design, v, rcond=None)[0]

    expected = np.corrcoef(residual(x), residual(y))[0, 1]
    assert out["partial_spearman"] == pytest.approx(expected, rel=1e-9)


def test_correlations_degenerate_give_nan():
    counts = np.array([50, 50, 50, 1, 1])
    out = M.correlations(np.array([1.0, 2, 3, 4, 5]), np.array([3.0, 2, 1, 0, 0]), counts,
                         min_count=10)
    assert out["n"] == 3 and out["spearman"] == pytest.approx(-1)
    assert math.isnan(out["partial_spearman"])            # counts constant among the 3
    few = M.correlations(np.ones(5), np.arange(5.0), counts, min_count=50)
    assert few["n"] == 3 and math.isnan(few["spearman"]) and math.isnan(few["pearson"])
    none = M.correlations(np.arange(5.0), np.arange(5.0), counts, min_count=100)
    assert none["n"] == 0 and all(math.isnan(none[k]) for k in ("spearman", "pearson"))


# ------------------------------------------------------------------------- AUROC
def brute_auroc(scores, labels):
    pos = [s for s, l in zip(scores, labels) if l == 1 and np.isfinite(s)]
    neg = [s for s, l in zip(scores, labels) if l == 0 and np.isfinite(s)]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_matches_pair_count_with_ties_and_nans():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 5, 60).astype(float)         # many ties
    labels = rng.integers(0, 2, 60).astype(float)
    labels[::7] = np.nan
    scores[::11] = np.nan
    assert M.auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels))
    assert math.isnan(M.auroc(scores, np.ones(60)))


def test_function_word_auroc_content_is_positive():
    norms = np.array([1.0, 2.0, 3.0, 4.0, 9.0])
    fw = np.array([1.0, 1.0, 0.0, 0.0, np.nan])
    counts = np.array([100, 100, 100, 100, 100])
    assert M.function_word_auroc(norms, fw, counts, 10) == 1.0   # content norms larger
    counts[2] = 1     # content word 2 dropped: still perfect
    assert M.function_word_auroc(norms, fw, counts, 10) == 1.0
    assert M.function_word_auroc(norms, 1 - fw, counts, 1) == 0.0   # labels swapped


def test_norm_statistics():
    norms = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 6.0])
    counts = np.array([10, 40, 30, 20, 5, 0])
    out = M.norm_statistics(norms, counts, n_buckets=2)
    finite = np.array([1.0, 2, 3, 4, 6])
    assert out["n_nonfinite"] == 1 and out["mean"] == pytest.approx(finite.mean())
    assert out["std"] == pytest.approx(finite.std()) and out["median"] == 3.0
    assert (out["min"], out["max"]) == (1.0, 6.0)
    # seen & finite by count: ids 1 (40), 2 (30), 3 (20), 0 (10) -> [2,3] and [4,1]
    assert out["bucket_00/mean"] == 2.5 and out["bucket_01/mean"] == 2.5
    assert math.isnan(M.norm_statistics(norms, counts, n_buckets=6)["bucket_05/mean"])


# ------------------------------------------------------------ evidence alignment
def test_average_precision_hand_example():
    # ranking by importance: pos 2 (0.9, cue), pos 0 (0.5), pos 3 (0.3, cue), pos 1 (0.1)
    # precision at the cues: 1/1 and 2/3 -> AP = (1 + 2/3) / 2 = 5/6
    imp = np.array([0.5, 0.1, 0.9, 0.3])
    cue = np.array([False, False, True, True])
    assert M.average_precision(imp, cue) == pytest.approx(5 / 6)


def test_average_precision_ties_are_averaged():
    # pos 0 and 1 tie at the top, pos 0 is the cue: rank 1 or 2 with prob 1/2 each
    # -> E[AP] = (1/1 + 1/2) / 2 = 3/4, whatever the position order
    assert M.average_precision(np.array([1.0, 1.0, 0.0]), np.array([1, 0, 0])) == 0.75
    assert M.average_precision(np.array([1.0, 1.0, 0.0]), np.array([0, 1, 0])) == 0.75


def brute_expected_ap(importance, relevant):
    """Mean AP over all permutations consistent with the scores (ties in any order)."""
    n, aps = len(importance), []
    for perm in itertools.permutations(range(n)):
        if any(importance[perm[i]] < importance[perm[i + 1]] for i in range(n - 1)):
            continue
        hits, ap = 0, 0.0
        for rank, pos in enumerate(perm, start=1):
            if relevant[pos]:
                hits += 1
                ap += hits / rank
        aps.append(ap / sum(relevant))
    return np.mean(aps)


@pytest.mark.parametrize("seed", range(6))
def test_average_precision_with_ties_vs_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    imp = rng.integers(0, 3, n).astype(float)
    rel = rng.integers(0, 2, n).astype(bool)
    rel[rng.integers(n)] = True
    assert M.average_precision(imp, rel) == pytest.approx(brute_expected_ap(imp, rel))


@pytest.mark.parametrize("n", range(1, 7))
def test_random_average_precision_closed_form(n):
    for r in range(1, n + 1):
        mask = np.arange(n) < r
        expected = brute_expected_ap(np.zeros(n), mask)   # all tied = uniform random order
        assert M.random_average_precision(mask) == pytest.approx(expected)
        assert M.average_precision(np.zeros(n), mask) == pytest.approx(expected)


def test_random_baselines_of_padded_rows_equal_the_scalar_ones():
    rng = np.random.default_rng(0)
    valid = np.arange(9)[None, :] < rng.integers(1, 10, size=40)[:, None]  # n = 1..9
    relevant = rng.random((40, 9)) < 0.3
    relevant[:3] = False  # no cue: NaN
    ap, dp = M.random_baselines_rows(relevant, valid)
    for b in range(40):
        cue = relevant[b][valid[b]]
        np.testing.assert_allclose([ap[b], dp[b]], [M.random_average_precision(cue),
                                                    M.random_dot_product(cue)], rtol=1e-12)


def test_dot_product_hand_example():
    # softmax([0, log 3]) = (1/4, 3/4); cue at position 1 -> 0.75; random baseline 1/2
    imp, cue = np.array([0.0, math.log(3)]), np.array([False, True])
    assert M.dot_product_alignment(imp, cue) == pytest.approx(0.75)
    assert M.random_dot_product(cue) == 0.5
    assert M.dot_product_alignment(np.zeros(4), np.array([1, 1, 0, 0])) == pytest.approx(0.5)
    assert math.isnan(M.dot_product_alignment(imp, np.zeros(2, bool)))
    assert math.isnan(M.average_precision(imp, np.zeros(2, bool)))


# ------------------------------------------------------------------ faithfulness
def test_topk_positions():
    imp = np.array([0.2, 0.9, 0.5, 0.9, 0.1, 0.0, 0.3, 0.4, 0.6, 0.7])
    np.testing.assert_array_equal(M.topk_positions(imp, 0.3), [1, 3, 9])  # 0.3*10 -> 3
    assert len(M.topk_positions(imp, 0.01)) == 0                          # floor(0.1)
    assert len(M.topk_positions(imp, 0.0)) == 0
    assert len(M.topk_positions(imp[:3], 0.5)) == 1                       # floor(1.5)
    assert len(M.topk_positions(imp[:7], 0.7)) == 4                       # 4.8999.. -> 4
    np.testing.assert_array_equal(M.topk_positions(imp, 1.0), np.argsort(-imp, kind="stable"))
    for n in range(1, 30):  # k% of n rounded down, as a loop over the authors' fractions
        for k in range(11):
            assert len(M.topk_positions(np.arange(n), k / 10)) == (k * n) // 10


def test_comprehensiveness_and_sufficiency():
    # p_full 0.8; removing top 10..50% -> 0.6, 0.5, 0.4, 0.3, 0.2: drops 0.2..0.6, mean 0.4
    assert M.comprehensiveness(0.8, [0.6, 0.5, 0.4, 0.3, 0.2]) == pytest.approx(0.4)
    # keeping only the top k%: 0.7, 0.75, 0.8, 0.8, 0.85 -> drops .1 .05 0 0 -.05, mean 0.02
    assert M.sufficiency(0.8, [0.7, 0.75, 0.8, 0.8, 0.85]) == pytest.approx(0.02)
    batch = M.comprehensiveness(np.array([0.8, 0.5]), np.array([[0.6, 0.5], [0.4, 0.3]]))
    np.testing.assert_allclose(batch, [0.3, 0.1])
    assert M.AUTHORS_FRACTIONS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert M.ERASER_FRACTIONS == (0.01, 0.05, 0.1, 0.2, 0.5)


def test_prepared_gold_equals_plain_correlations():
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 40, size=300)
    info_gain = rng.normal(size=300)
    info_gain[rng.integers(0, 300, 20)] = np.nan  # a different type filter per signal
    signals = {"ig": info_gain, "si": -np.log((counts + 1) / counts.sum()),
               "tied": rng.integers(0, 4, size=300).astype(float)}
    prepared = M.PreparedGold(signals, counts, min_count=10)
    for trial in range(3):
        norms = rng.gamma(2.0, size=300) + 0.01 * counts
        if trial == 2:
            norms[np.flatnonzero(counts >= 10)[0]] = np.nan  # falls back to the plain path
        fast = prepared.correlations(norms)
        for name, gold in signals.items():
            slow = M.correlations(norms, gold, counts, min_count=10)
            assert fast[name]["n"] == slow["n"]
            for stat in ("spearman", "pearson", "partial_spearman"):
                np.testing.assert_allclose(fast[name][stat], slow[stat], rtol=1e-9, atol=1e-12,
                                           err_msg=f"{name} {stat}")


def test_average_precision_fast_path_equals_tie_aware_path():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        scores = rng.normal(size=n)
        relevant = rng.random(n) < 0.3
        if not relevant.any():
            continue
        # Brute force: precision at each relevant position's rank, no ties.
        order = np.argsort(-scores)
        hits = relevant[order]
        expected = np.mean([hits[: k + 1].sum() / (k + 1) for k in range(n) if hits[k]])
        assert M.average_precision(scores, relevant) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("distinct", [True, False])
def test_row_metrics_equal_the_scalar_ones_row_by_row(distinct):
    """Padded batches (leading layer axis, prefixes of random length, ties, a NaN row, a
    row without cues) give what the scalar functions give on each row's valid prefix."""
    rng = np.random.default_rng(3)
    layers, batch, width = 3, 40, 12
    scores = (rng.normal(size=(layers, batch, width)) if distinct
              else rng.integers(0, 3, size=(layers, batch, width)).astype(float))
    lengths = rng.integers(1, width + 1, size=batch)
    valid = np.arange(width)[None, :] < lengths[:, None]
    relevant = rng.random((batch, width)) < 0.3
    relevant[0] = False
    scores[1, 5, 0] = np.nan
    scores[:, 6, lengths[6]:] = np.nan  # padding may hold anything
    ap = M.average_precision_rows(scores, relevant, valid)
    dp = M.dot_product_alignment_rows(scores, relevant, valid)
    assert ap.shape == dp.shape == (layers, batch)
    for j in range(layers):
        for b in range(batch):
            row, cue = scores[j, b, :lengths[b]], relevant[b, :lengths[b]]
            if not cue.any() or not np.isfinite(row).all():
                assert np.isnan(ap[j, b]) and np.isnan(dp[j, b])
                continue
            assert ap[j, b] == pytest.approx(M.average_precision(row, cue), abs=1e-12)
            assert dp[j, b] == pytest.approx(M.dot_product_alignment(row, cue), abs=1e-12)
