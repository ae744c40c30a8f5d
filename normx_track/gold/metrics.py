"""Agreement of embedding norms / attributions with gold importance (plain numpy in/out).

DESIGN.md "Definitions": correlations over token types with count >= min_count
(Spearman, Pearson, partial Spearman controlling for log frequency), the AUROC of norms
separating content from function words, norm summaries, evidence alignment (average
precision, dot product, and their random baselines) and faithfulness helpers.
Degenerate inputs (too few items, constant values, no positives) give NaN, never raise.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
from scipy import special, stats

# The k of top-k% in comprehensiveness/sufficiency: the authors' 0, 10, ..., 100 %, and
# ERASER's (DeYoung et al., 2020) as the documented alternative.
AUTHORS_FRACTIONS = tuple(k / 10 for k in range(11))
ERASER_FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.5)


# ------------------------------------------------------------------ correlations
def _same_length(*arrays: np.ndarray) -> None:
    if len({len(a) for a in arrays}) != 1:
        raise ValueError(f"arrays over the vocabulary differ in length: "
                         f"{[len(a) for a in arrays]}")


def _corr(fn, x: np.ndarray, y: np.ndarray) -> float:
    """scipy correlation, NaN (no warning) for constant input."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(x, y).statistic)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman of two score vectors; NaN (never an exception) when fewer than 2 items,
    non-finite values or a constant input leave it undefined."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan
    return _corr(stats.spearmanr, x, y)


def partial_coefficient(r_xy, r_xz, r_yz) -> np.ndarray:
    """(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)), elementwise over arrays of
    coefficients; NaN where the control determines x or y (|r| = 1 up to rounding)."""
    r_xy, r_xz, r_yz = (np.asarray(r, np.float64) for r in (r_xy, r_xz, r_yz))
    spare_x, spare_y = 1 - r_xz**2, 1 - r_yz**2
    defined = (spare_x > 1e-10) & (spare_y > 1e-10)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (r_xy - r_xz * r_yz) / np.sqrt(np.where(defined, spare_x * spare_y, 1.0))
    return np.where(defined, out, np.nan)


def _partial(r_xy: float, r_xz: float, r_yz: float) -> float:
    value = float(partial_coefficient(r_xy, r_xz, r_yz))
    # math.nan itself, as every other undefined statistic here: two rows holding it compare
    # equal (container equality checks identity first), a fresh float('nan') would not.
    return value if math.isfinite(value) else math.nan


def correlations(norms: np.ndarray, gold: np.ndarray, counts: np.ndarray,
                 min_count: int = 10) -> dict[str, float | int]:
    """Spearman, Pearson and partial Spearman of ``norms`` vs ``gold`` over token types.

    Types used: count >= min_count and both values finite; ``n`` says how many.
    partial_spearman controls for log frequency: (r_xy - r_xz r_yz) /
    sqrt((1 - r_xz^2)(1 - r_yz^2)) on Spearman coefficients (z = count; ranks of log
    count equal ranks of count). NaN when n < 3 or an input is constant.
    """
    norms, gold, counts = (np.asarray(a, dtype=np.float64) for a in (norms, gold, counts))
    _same_length(norms, gold, counts)
    use = (counts >= min_count) & np.isfinite(norms) & np.isfinite(gold)
    x, y, z = norms[use], gold[use], counts[use]
    out = dict(spearman=math.nan, pearson=math.nan, partial_spearman=math.nan, n=int(use.sum()))
    if out["n"] < 3:
        return out
    out["spearman"] = _corr(stats.spearmanr, x, y)
    out["pearson"] = _corr(stats.pearsonr, x, y)
    out["partial_spearman"] = _partial(out["spearman"], _corr(stats.spearmanr, x, z),
                                       _corr(stats.spearmanr, y, z))
    return out


def _standardise(x: np.ndarray) -> np.ndarray | None:
    sd = x.std()
    return None if sd == 0 else (x - x.mean()) / sd


def _r(zx: np.ndarray | None, zy: np.ndarray | None) -> float:
    return math.nan if zx is None or zy is None else float(np.clip(np.mean(zx * zy), -1, 1))


class PreparedGold:
    """`correlations()` against fixed gold signals, with the gold side (type filter, ranks,
    z-scores) prepared once: a snapshot then ranks its norms once per distinct filter.
    This is what keeps a 50k-type snapshot in milliseconds; results equal `correlations()`
    (Pearson of ranks is Spearman)."""

    def __init__(self, signals: dict[str, np.ndarray], counts: np.ndarray, min_count: int):
        counts = np.asarray(counts, np.float64)
        self.counts, self.min_count = counts, min_count
        self.signals = {}
        for name, gold in signals.items():
            gold = np.asarray(gold, np.float64)
            _same_length(gold, counts)
            use = (counts >= min_count) & np.isfinite(gold)
            zr_gold = _standardise(stats.rankdata(gold[use]))
            zr_count = _standardise(stats.rankdata(counts[use]))
            self.signals[name] = dict(use=use, key=use.tobytes(), gold=gold,
                                      z_gold=_standardise(gold[use]), zr_gold=zr_gold,
                                      zr_count=zr_count, r_yz=_r(zr_gold, zr_count))

    def correlations(self, norms: np.ndarray) -> dict[str, dict[str, float | int]]:
        norms = np.asarray(norms, np.float64)
        ranked: dict[bytes, tuple[np.ndarray | None, np.ndarray | None]] = {}
        out = {}
        for name, g in self.signals.items():
            x = norms[g["use"]]
            if x.size < 3 or not np.isfinite(x).all():  # rare: the plain path filters
                out[name] = correlations(norms, g["gold"], self.counts, self.min_count)
                continue
            if g["key"] not in ranked:
                ranked[g["key"]] = (_standardise(x), _standardise(stats.rankdata(x)))
            z_x, zr_x = ranked[g["key"]]
            spearman = _r(zr_x, g["zr_gold"])
            out[name] = dict(spearman=spearman, pearson=_r(z_x, g["z_gold"]), n=int(x.size),
                             partial_spearman=_partial(spearman, _r(zr_x, g["zr_count"]),
                                                       g["r_yz"]))
        return out


# ------------------------------------------------------------------------- AUROC
def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2.

    Labels are 1 (positive), 0 (negative); NaN labels or non-finite scores are ignored.
    This is the Mann-Whitney U of the positives over n_pos * n_neg. NaN when a class is
    empty.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    _same_length(scores, labels)
    ok = np.isfinite(scores) & np.isfinite(labels)
    pos, neg = scores[ok & (labels == 1)], scores[ok & (labels == 0)]
    if pos.size == 0 or neg.size == 0:
        return math.nan
    u = stats.mannwhitneyu(pos, neg, method="asymptotic").statistic
    return float(u / (pos.size * neg.size))


def function_word_auroc(norms: np.ndarray, function_word: np.ndarray, counts: np.ndarray,
                        min_count: int = 10) -> float:
    """AUROC of norms separating content words (positive class: label 0.0) from function
    words (label 1.0), over types with count >= min_count. Content words are expected
    to have larger norms, so 1.0 is perfect agreement and 0.5 chance."""
    norms, function_word, counts = (np.asarray(a, np.float64)
                                    for a in (norms, function_word, counts))
    _same_length(norms, function_word, counts)
    content = np.where(counts >= min_count, 1.0 - function_word, np.nan)
    return auroc(norms, content)


# ---------------------------------------------------------------- norm summaries
def norm_statistics(norms: np.ndarray, counts: np.ndarray,
                    n_buckets: int = 10) -> dict[str, float | int]:
    """Summary of the norm vector, and mean norm per frequency bucket.

    mean/std/min/max/median are over all finite norms; ``n_nonfinite`` counts the rest.
    ``bucket_XX/mean``: seen tokens (count > 0, finite norm) sorted by count descending
    (ties by id) are cut into ``n_buckets`` near-equal groups; bucket 00 is the most
    frequent. Empty buckets give NaN.
    """
    norms, counts = np.asarray(norms, np.float64), np.asarray(counts)
    _same_length(norms, counts)
    finite = np.isfinite(norms)
    vals = norms[finite]
    out: dict[str, float | int] = {"n_nonfinite": int((~finite).sum())}
    for name, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max),
                     ("median", np.median)):
        out[name] = float(fn(vals)) if vals.size else math.nan
    seen = np.flatnonzero((counts > 0) & finite)
    by_freq = seen[np.argsort(-counts[seen], kind="stable")]
    for b, group in enumerate(np.array_split(by_freq, n_buckets)):
        out[f"bucket_{b:02d}/mean"] = float(norms[group].mean()) if group.size else math.nan
    return out


# ------------------------------------------------------------ evidence alignment
def _cues(importance: np.ndarray, relevant_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    importance = np.asarray(importance, np.float64)
    relevant = np.asarray(relevant_mask, dtype=bool)
    _same_length(importance, relevant)
    if not np.isfinite(importance).all():
        raise ValueError("importance scores must be finite")
    return importance, relevant


def average_precision(importance: np.ndarray, relevant_mask: np.ndarray) -> float:
    """AP of positions ranked by importance (descending), cue positions relevant.

    AP = mean over relevant positions of (relevant at or above its rank) / rank. Ties are
    resolved by the *expectation over all orderings of tied positions*, so the result does
    not depend on position order; with every score tied this is the random baseline.
    For a tie group of g positions, m of them relevant, after ``b`` positions of which
    ``rb`` relevant: a relevant position lands at slot j (uniform in 1..g) with on
    average (j-1)(m-1)/(g-1) other relevant ones above it, so its expected precision is
    (rb + 1 + (j-1)(m-1)/(g-1)) / (b + j). NaN when there is no relevant position.
    """
    importance, relevant = _cues(importance, relevant_mask)
    r = int(relevant.sum())
    if r == 0:
        return math.nan
    order = np.argsort(-importance, kind="stable")
    ranked = importance[order]
    if (ranked[1:] != ranked[:-1]).all():  # no ties (the usual case): the plain formula
        ranks = np.flatnonzero(relevant[order]) + 1
        return float(np.mean(np.arange(1, r + 1) / ranks))
    values, group = np.unique(-importance, return_inverse=True)   # group 0 = highest
    g = np.bincount(group, minlength=values.size)
    m = np.bincount(group, weights=relevant, minlength=values.size)
    before, rel_before = np.cumsum(g) - g, np.cumsum(m) - m
    total = 0.0
    for gi, mi, b, rb in zip(g, m, before, rel_before):
        if mi == 0:
            continue
        j = np.arange(1, gi + 1)
        others = (j - 1) * (mi - 1) / (gi - 1) if gi > 1 else 0.0
        total += mi * np.mean((rb + 1 + others) / (b + j))
    return float(total / r)


def random_average_precision(relevant_mask: np.ndarray) -> float:
    """Exact E[AP] under a uniformly random ranking of n positions with r relevant:
    ((n - r) H_n + (r - 1) n) / (n (n - 1)), H_n the harmonic number (1.0 when n = 1).
    It is :func:`average_precision` with all scores tied (one group, b = rb = 0)."""
    relevant = np.asarray(relevant_mask, dtype=bool)
    n, r = relevant.size, int(relevant.sum())
    if r == 0:
        return math.nan
    if n == 1:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    return ((n - r) * harmonic + (r - 1) * n) / (n * (n - 1))


def random_baselines_rows(relevant: np.ndarray, valid: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """`random_average_precision` and `random_dot_product` of each [B, T] row over its
    valid positions, vectorised (both depend on a row's n and r alone)."""
    valid = np.asarray(valid, bool)
    n = valid.sum(axis=1)
    r = (np.asarray(relevant, bool) & valid).sum(axis=1)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n.max(initial=1) + 1))])
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = ((n - r) * harmonic[n] + (r - 1) * n) / (n * (n - 1))
        dp = r / n
    ap = np.where(n == 1, 1.0, ap)
    ap[r == 0], dp[r == 0] = np.nan, np.nan
    return ap, dp


def dot_product_alignment(importance: np.ndarray, relevant_mask: np.ndarray) -> float:
    """Softmax of importance over positions, summed at the cue positions (NaN: no cue)."""
    importance, relevant = _cues(importance, relevant_mask)
    if not relevant.any():
        return math.nan
    return float(special.softmax(importance)[relevant].sum())


def random_dot_product(relevant_mask: np.ndarray) -> float:
    """Uniform softmax baseline: r / n (NaN: no cue)."""
    relevant = np.asarray(relevant_mask, dtype=bool)
    return float(relevant.mean()) if relevant.any() else math.nan


def _rows(importance: np.ndarray, relevant: np.ndarray, valid: np.ndarray):
    """Padded rows [..., B, T] as [N, T] float scores and [N, T] masks (relevant & valid),
    with NaN-free rows flagged; `relevant` and `valid` [B, T] broadcast over leading axes."""
    importance = np.asarray(importance, np.float64)
    shape = importance.shape
    valid = np.broadcast_to(np.asarray(valid, bool), shape).reshape(-1, shape[-1])
    relevant = np.broadcast_to(np.asarray(relevant, bool), shape).reshape(-1, shape[-1]) & valid
    importance = importance.reshape(-1, shape[-1])
    finite = (np.isfinite(importance) | ~valid).all(axis=1)
    return importance, relevant, valid, finite, shape[:-1]


def average_precision_rows(importance: np.ndarray, relevant: np.ndarray,
                           valid: np.ndarray) -> np.ndarray:
    """`average_precision` of each padded row over its valid positions, vectorised: rows
    without ties take one sort; rows with ties take the exact scalar path. NaN for a row
    with no relevant position or a non-finite score (a diverged model)."""
    scores, relevant, valid, finite, shape = _rows(importance, relevant, valid)
    masked = np.where(valid, scores, -np.inf)
    order = np.argsort(-masked, axis=1, kind="stable")  # valid positions first
    ranked = np.take_along_axis(masked, order, axis=1)
    hits = np.take_along_axis(relevant, order, axis=1)
    n_valid, n_relevant = valid.sum(axis=1), hits.sum(axis=1)
    inside = np.arange(1, scores.shape[1])[None, :] < n_valid[:, None]
    tied = ((ranked[:, 1:] == ranked[:, :-1]) & inside).any(axis=1)
    precision = np.cumsum(hits, axis=1) / np.arange(1, scores.shape[1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(hits, precision, 0.0).sum(axis=1) / n_relevant
    out[~finite | (n_relevant == 0)] = np.nan
    for i in np.flatnonzero(tied & finite & (n_relevant > 0)):
        out[i] = average_precision(scores[i, valid[i]], relevant[i, valid[i]])
    return out.reshape(shape)


def dot_product_alignment_rows(importance: np.ndarray, relevant: np.ndarray,
                               valid: np.ndarray) -> np.ndarray:
    """`dot_product_alignment` of each padded row over its valid positions, vectorised."""
    scores, relevant, valid, finite, shape = _rows(importance, relevant, valid)
    masked = np.where(valid & np.isfinite(scores), scores, -np.inf)
    weights = np.exp(masked - masked.max(axis=1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (weights * relevant).sum(axis=1) / weights.sum(axis=1)
    out[~finite | ~relevant.any(axis=1)] = np.nan
    return out.reshape(shape)


# ------------------------------------------------------------------ faithfulness
def topk_positions(importance: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the floor(fraction * n) most important positions (none at 0 %, all at
    100 %), most important first; ties keep position order (stable)."""
    importance = np.asarray(importance, np.float64)
    k = math.floor(round(fraction * importance.size, 9))  # round: 0.3*10 is 3.0000000004
    return np.argsort(-importance, kind="stable")[:k]


def comprehensiveness(p_full: float | np.ndarray,
                      p_removed_by_k: Sequence[float] | np.ndarray) -> float | np.ndarray:
    """Mean over k of p_full - p(target | top-k% positions removed); higher = the
    attribution found what the prediction needs. ``p_removed_by_k`` has k first."""
    return np.mean(np.asarray(p_full) - np.asarray(p_removed_by_k, np.float64), axis=0)


def sufficiency(p_full: float | np.ndarray,
                p_kept_by_k: Sequence[float] | np.ndarray) -> float | np.ndarray:
    """Mean over k of p_full - p(target | only top-k% positions kept); lower = the top
    positions suffice. ``p_kept_by_k`` has k first."""
    return np.mean(np.asarray(p_full) - np.asarray(p_kept_by_k, np.float64), axis=0)
