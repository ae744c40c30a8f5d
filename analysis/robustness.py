"""How much a correlation depends on which token types it counts, computed offline from a
record's snapshot norms and gold.npz (`normx_track.gold.metrics.correlations`, the tracker's
own definition):

* the count cutoff: Spearman and partial Spearman (| log frequency) at min_count 1, 5, 10,
  20, 50, 100, for the last snapshot and the peak one (the highest Spearman at the run's
  min_count; the first on ties);
* within frequency: the Spearman inside each log-frequency bin at every snapshot, the
  bin-wise answer to "what does the norm know beyond frequency" beside the partial
  correlation. Bins split log count into equal widths over the types with count >= the
  run's min_count (each spans the same factor of frequency); a bin of fewer than 30 types
  joins its neighbour.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from normx_track.gold.metrics import correlations

from .load import Run

CUTOFFS = (1, 5, 10, 20, 50, 100)
N_BINS, MIN_TYPES = 6, 30
NOT_SIGNALS = ("counts", "function_word")


def gold_signals(gold: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-type gold signals of gold.npz (arrays shaped like the counts)."""
    counts = gold.get("counts")
    if counts is None:
        return {}
    return {name: np.asarray(values, np.float64) for name, values in gold.items()
            if name not in NOT_SIGNALS and np.shape(values) == np.shape(counts)}


def peak_index(norms: np.ndarray, values: np.ndarray, counts: np.ndarray,
               min_count: int) -> int | None:
    """The snapshot with the highest Spearman at ``min_count`` (first on ties; None when
    no snapshot gives a finite one)."""
    rho = np.array([correlations(row, values, counts, min_count)["spearman"] for row in norms])
    if not np.isfinite(rho).any():
        return None
    return int(np.argmax(np.where(np.isfinite(rho), rho, -np.inf)))


def min_count_table(run: Run, cutoffs: Sequence[int] = CUTOFFS) -> pd.DataFrame:
    """Long table: signal, snapshot (last | peak), step, min_count, n, spearman,
    partial_spearman. Empty when the record has no snapshots or no gold."""
    columns = ["signal", "snapshot", "step", "min_count", "n", "spearman", "partial_spearman"]
    steps, norms = run.norms("input_norm")
    counts = run.gold.get("counts")
    if not steps or counts is None:
        return pd.DataFrame(columns=columns)
    norms = norms[:, : len(counts)]
    rows = []
    for signal, values in gold_signals(run.gold).items():
        picks = [("last", len(steps) - 1)]
        peak = peak_index(norms, values, counts, run.min_count)
        if peak is not None:
            picks.append(("peak", peak))
        for snapshot, i in picks:
            for cutoff in cutoffs:
                c = correlations(norms[i], values, counts, cutoff)
                rows.append(dict(signal=signal, snapshot=snapshot, step=steps[i],
                                 min_count=cutoff, n=c["n"], spearman=c["spearman"],
                                 partial_spearman=c["partial_spearman"]))
    return pd.DataFrame(rows, columns=columns)


def wide_table(table: pd.DataFrame) -> pd.DataFrame:
    """For the report: a row per (signal, snapshot, statistic), a column per cutoff, and a
    row of type counts per signal."""
    if table.empty:
        return pd.DataFrame()
    out = []
    for signal, part in table.groupby("signal", sort=False):
        last = part[part["snapshot"] == "last"]
        out.append({"signal": signal, "snapshot": "", "statistic": "n types",
                    **{f"≥ {c}": str(n) for c, n in zip(last["min_count"], last["n"])}})
        for (snapshot, step), rows in part.groupby(["snapshot", "step"], sort=False):
            for stat, label in (("spearman", "Spearman"), ("partial_spearman", "partial")):
                out.append({"signal": signal, "snapshot": f"{snapshot} (step {step})",
                            "statistic": label,
                            **{f"≥ {c}": v for c, v in zip(rows["min_count"], rows[stat])}})
    return pd.DataFrame(out)


def frequency_bins(counts: np.ndarray, min_count: int, n_bins: int = N_BINS,
                   min_types: int = MIN_TYPES) -> tuple[np.ndarray, list[str]]:
    """Per type, its log-frequency bin (-1: count < min_count), and each bin's label
    ("count lo–hi, n types"). Bins split log(count) into equal widths, so each spans the same
    factor of frequency; while a bin holds fewer than ``min_types`` types (the frequent end
    of a Zipfian vocabulary), the smallest joins its smaller neighbour."""
    counts = np.asarray(counts, np.float64)
    use = (counts >= max(min_count, 1)) & (counts > 0)
    which = np.full(counts.shape, -1)
    if not use.any():
        return which, []
    logs = np.log(counts[use])
    edges = np.linspace(logs.min(), logs.max(), n_bins + 1)[1:-1]
    raw = np.searchsorted(edges, logs, side="right")  # a count's ties share a bin
    groups = [[b] for b in range(n_bins) if (raw == b).any()]
    size = lambda g: int(np.isin(raw, g).sum())  # noqa: E731
    while len(groups) > 1 and min(map(size, groups)) < min_types:
        i = min(range(len(groups)), key=lambda j: size(groups[j]))  # the smallest joins
        neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(groups)]
        j = min(neighbours, key=lambda j: size(groups[j]))  # its smaller neighbour
        groups[min(i, j)] = groups[min(i, j)] + groups[max(i, j)]
        del groups[max(i, j)]
    for k, group in enumerate(groups):
        which[np.flatnonzero(use)[np.isin(raw, group)]] = k
    labels = []
    for b in range(len(groups)):
        members = counts[which == b]
        labels.append(f"count {members.min():.0f}–{members.max():.0f}, {members.size} types")
    return which, labels


def binned_spearman(norms: np.ndarray, values: np.ndarray, bins: np.ndarray,
                    n_bins: int) -> np.ndarray:
    """[n_snapshots, n_bins] Spearman of the norms with ``values`` inside each bin (NaN
    where a bin has fewer than 3 finite types)."""
    out = np.full((len(norms), n_bins), math.nan)
    for b in range(n_bins):
        members = bins == b
        ones = np.ones(int(members.sum()))
        for s, row in enumerate(norms):
            out[s, b] = correlations(row[members], values[members], ones, 0)["spearman"]
    return out


def beyond_frequency(run: Run, n_bins: int = N_BINS, min_types: int = MIN_TYPES
                     ) -> tuple[list[int], dict[str, np.ndarray], list[str]]:
    """(snapshot steps, {signal: [n_snapshots, n_bins] within-bin Spearman}, bin labels)."""
    steps, norms = run.norms("input_norm")
    counts = run.gold.get("counts")
    if not steps or counts is None:
        return steps, {}, []
    bins, labels = frequency_bins(counts, run.min_count, n_bins, min_types)
    norms = norms[:, : len(counts)]
    return steps, {signal: binned_spearman(norms, values, bins, len(labels))
                   for signal, values in gold_signals(run.gold).items()}, labels
