"""When does each token become important? Per-token emergence from the snapshots of a
record (no extra training cost): percentile trajectories, settling and peak steps, the
order in which tokens settle, frequency-binned dynamics, and a run's curve summary.

Definitions (documented here once)
----------------------------------
* Types: token types with count >= min_count (the ones the correlations use).
* Percentile rank of a type at a snapshot: 100 (r - 1) / (n - 1) among the n types, r its
  rank by norm (ties share their average rank), so the shortest is 0 and the longest 100.
* Settling step: the first snapshot from which the type's percentile stays within +-band
  points of its final one at every later snapshot. A type still outside the band at the
  second-to-last snapshot settles only at the last one, which says nothing: it "never
  settles" (NaN). With fewer than two snapshots nothing settles.
* The null: the same settling rule on each type's trajectory with its snapshots in a
  random order (an independent permutation per type and draw, seeded). It gives the number
  of types that would settle at each snapshot by chance (the settling curve is read against
  it) and, per type, ``settling_p``: the share of draws settling at or before the type's
  own settling snapshot.
* The earliest a type can settle is the first snapshot after initialisation (step 0), or
  the first snapshot of a record that starts later: a type within its band from the
  initialisation on (its percentile was already the random one it keeps) is dated there,
  never at step 0. Settling at that earliest snapshot only counts when it beats the null
  (``settling_p < alpha``, default 0.05); otherwise the type ``settles_by_chance`` and its
  settling step is NaN, like a type that never settles.
* Peak step: the snapshot of the type's largest norm (the first, on ties).
* Emergence order: Spearman of the settling step with log frequency and with each gold
  signal, and the partial Spearman controlling log frequency; 95 % bootstrap intervals
  over types (percentile method, seeded). Types that never settle are left out.
* Curve summary (for sweeps): per correlation curve, the peak value and its step, and the
  decay: steps from the peak to the first later snapshot at or below half the peak (NaN
  if it never falls that far, or the peak is not positive).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from normx_track.gold.metrics import correlations, partial_coefficient

__all__ = ["Emergence", "SettlingNull", "curve_summary", "emergence", "frequency_bins",
           "order_statistics", "percentile_ranks", "settling_counts", "settling_null",
           "settling_steps"]

DEFAULT_BAND = 10.0
DEFAULT_N_PERM, DEFAULT_ALPHA = 200, 0.05


def percentile_ranks(norms: np.ndarray) -> np.ndarray:
    """[n_snapshots, n_types] norms -> percentile ranks in [0, 100], ties averaged."""
    norms = np.asarray(norms, np.float64)
    n = norms.shape[1]
    if n < 2:
        return np.full(norms.shape, 50.0)
    ranks = stats.rankdata(norms, axis=1, method="average")
    return 100.0 * (ranks - 1) / (n - 1)


def settling_index(percentiles: np.ndarray, band: float = DEFAULT_BAND) -> np.ndarray:
    """Per type (column), the index of the snapshot from which its percentile stays within
    +-band of its final one; -1: never settles before the last snapshot."""
    percentiles = np.asarray(percentiles, np.float64)
    n_snap = percentiles.shape[0]
    if n_snap < 2:
        return np.full(percentiles.shape[1], -1)
    outside = np.abs(percentiles - percentiles[-1]) > band  # [n_snap, n_types]
    # The last snapshot outside the band; the type settles at the one after it.
    last_out = np.where(outside.any(axis=0),
                        n_snap - 1 - np.argmax(outside[::-1], axis=0), -1)
    first_in = last_out + 1
    return np.where(first_in < n_snap - 1, first_in, -1)


def settling_steps(percentiles: np.ndarray, steps: Sequence[int],
                   band: float = DEFAULT_BAND) -> np.ndarray:
    """Per type, the step from which its percentile stays within +-band of its final one
    (NaN: never settles before the last snapshot). percentiles: [n_snapshots, n_types]."""
    index = settling_index(percentiles, band)
    out = np.full(index.shape, np.nan)
    out[index >= 0] = np.asarray(steps, np.float64)[index[index >= 0]]
    return out


def settling_counts(index: np.ndarray, n_snap: int) -> np.ndarray:
    """How many types settle at each snapshot, from settling indices (-1: never)."""
    index = np.asarray(index)
    return np.bincount(index[index >= 0], minlength=n_snap)[:n_snap]


@dataclass
class SettlingNull:
    """Settling of the types' trajectories with their snapshots shuffled (module docstring).
    counts: [n_perm, n_snapshots] types settling at each snapshot in each draw;
    cumulative: [n_snapshots, n_types] share of draws in which the type settles at or
    before each snapshot."""

    counts: np.ndarray
    cumulative: np.ndarray
    seed: int

    def p_at_or_before(self, index: np.ndarray) -> np.ndarray:
        """Per type, the null share settling at or before ``index`` (NaN where -1)."""
        index = np.asarray(index)
        out = np.full(index.shape, np.nan)
        ok = index >= 0
        out[ok] = self.cumulative[index[ok], np.flatnonzero(ok)]
        return out


def settling_null(percentiles: np.ndarray, band: float = DEFAULT_BAND,
                  n_perm: int = DEFAULT_N_PERM, seed: int = 0,
                  chunk_cells: int = 4_000_000) -> SettlingNull:
    """The permutation null of `settling_index`: each draw shuffles every type's trajectory
    over the snapshots independently (numpy Generator.permuted, seeded), in chunks of about
    ``chunk_cells`` values to bound memory."""
    percentiles = np.asarray(percentiles, np.float64)
    n_snap, n_types = percentiles.shape
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_perm, n_snap), np.int64)
    hits = np.zeros((n_snap, n_types), np.int64)
    per_chunk = max(1, chunk_cells // max(1, n_snap * n_types))
    for start in range(0, n_perm, per_chunk):
        draws = min(per_chunk, n_perm - start)
        shuffled = rng.permuted(np.broadcast_to(percentiles.T, (draws, n_types, n_snap)),
                                axis=2)  # [draws, types, snaps]
        index = settling_index(shuffled.reshape(-1, n_snap).T, band).reshape(draws, n_types)
        for d in range(draws):
            counts[start + d] = settling_counts(index[d], n_snap)
        settled = index >= 0
        np.add.at(hits, (index[settled], np.nonzero(settled)[1]), 1)
    cumulative = np.cumsum(hits, axis=0) / max(n_perm, 1)
    return SettlingNull(counts=counts, cumulative=cumulative, seed=seed)


def earliest_index(steps: Sequence[int]) -> int:
    """The first snapshot a type can settle at: the one after initialisation (step 0), or
    the first of a record that starts later."""
    return 1 if len(steps) and int(steps[0]) == 0 else 0


def counted_settling(index: np.ndarray, null: SettlingNull, steps: Sequence[int],
                     alpha: float = DEFAULT_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """(settling step per type, settles_by_chance per type): settling at or before the
    earliest snapshot is dated at it, and only counts when its null share is < alpha."""
    index = np.asarray(index)
    early = earliest_index(steps)
    at_start = (index >= 0) & (index <= early)
    dated = np.where(at_start, early, index)
    p_start = null.p_at_or_before(np.where(at_start, early, -1))
    chance = at_start & ~(p_start < alpha)
    settling = np.full(index.shape, np.nan)
    keep = (dated >= 0) & ~chance
    settling[keep] = np.asarray(steps, np.float64)[dated[keep]]
    return settling, chance


def peak_steps(norms: np.ndarray, steps: Sequence[int]) -> np.ndarray:
    """Per type, the step of its largest (finite) norm, the first on ties."""
    norms = np.where(np.isfinite(norms), norms, -np.inf)
    return np.asarray(steps, np.float64)[np.argmax(norms, axis=0)]


def _bootstrap_cis(columns: Mapping[int, np.ndarray],
                   plans: Sequence[tuple[int, int | None]], n_boot: int,
                   seed: int) -> list[tuple[float, float]]:
    """95 % percentile interval of each plan's (partial) Spearman of column 0 (x) with column
    y (controlling column z) over types resampled, all plans on the same resamples (the
    draws one plan alone would get from `seed`), each column ranked once a block: a block
    is about 4 M values, so a 50k-type vocabulary stays in tens of MB."""
    n = len(columns[0])
    rng = np.random.default_rng(seed)
    block = max(1, 4_000_000 // max(n, 1))
    values: list[list[np.ndarray]] = [[] for _ in plans]
    for done in range(0, n_boot, block):
        take = rng.integers(0, n, (min(block, n_boot - done), n))
        ranks = {j: _centred_ranks(column[take]) for j, column in columns.items()}
        for out, (y, z) in zip(values, plans):
            out.append(_spearman_of_ranks(ranks[0], ranks[y], None if z is None else ranks[z]))
    return [_percentile_interval(np.concatenate(v)) for v in values]


def _percentile_interval(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def resampled_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray | None,
                       take: np.ndarray) -> np.ndarray:
    """`_spearman` of each resample (a row of indices in ``take``), all rows at once."""
    return _spearman_of_ranks(_centred_ranks(x[take]), _centred_ranks(y[take]),
                              None if z is None else _centred_ranks(z[take]))


def _spearman_of_ranks(rx: np.ndarray, ry: np.ndarray, rz: np.ndarray | None) -> np.ndarray:
    """Row by row, the Spearman of x and y from their centred ranks (partial, controlling
    z, where rz is given)."""
    r_xy = _row_pearson(rx, ry)
    if rz is None:
        return r_xy
    return partial_coefficient(r_xy, _row_pearson(rx, rz), _row_pearson(ry, rz))


def _centred_ranks(m: np.ndarray) -> np.ndarray:
    """Each row's ranks (ties averaged) less their mean."""
    ranks = stats.rankdata(m, axis=1)
    return ranks - ranks.mean(axis=1, keepdims=True)


def _row_pearson(ra: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """Pearson of each row of centred ra with the same row of rb: NaN where a row is
    constant."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ra * rb).sum(axis=1) / np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    return np.clip(r, -1, 1)


def _spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray | None) -> float:
    """Spearman of x and y, or their partial Spearman controlling z (metrics.correlations:
    one definition of the partial coefficient for the whole project)."""
    if z is None:
        return correlations(x, y, np.ones_like(x), min_count=0)["spearman"]
    return correlations(x, y, z, min_count=-np.inf)["partial_spearman"]


def order_statistics(settling: np.ndarray, counts: np.ndarray,
                     signals: Mapping[str, np.ndarray], n_boot: int = 1000,
                     seed: int = 0) -> list[dict]:
    """Rows {statistic, against, value, ci_low, ci_high, n}: Spearman of the settling step
    with log frequency and with each signal, and the partial Spearman controlling log
    frequency, over the types that settle."""
    settling, counts = np.asarray(settling, np.float64), np.asarray(counts, np.float64)
    ok = np.isfinite(settling) & (counts > 0)
    log_freq = np.log(np.where(counts > 0, counts, 1.0))
    # Columns by index (0: settling, 1: log frequency, then the signals); plans name them.
    columns = [settling, log_freq, *(np.asarray(v, np.float64) for v in signals.values())]
    plans = [("spearman", "log_frequency", 1, None)]
    for j, name in enumerate(signals, start=2):
        plans += [("spearman", name, j, None), ("partial_spearman", name, j, 1)]
    uses = [ok & np.isfinite(columns[y]) for _, _, y, _ in plans]
    intervals = _intervals_by_types(columns, [(y, z) for _, _, y, z in plans], uses,
                                    n_boot, seed)
    rows = []
    for (statistic, against, y, z), use, (low, high) in zip(plans, uses, intervals):
        x_, y_ = settling[use], columns[y][use]
        value = (_spearman(x_, y_, None if z is None else columns[z][use])
                 if use.sum() >= 3 else math.nan)
        rows.append(dict(statistic=statistic, against=against, value=float(value),
                         ci_low=low, ci_high=high, n=int(use.sum())))
    return rows


def _intervals_by_types(columns: Sequence[np.ndarray], plans: list[tuple[int, int | None]],
                        uses: list[np.ndarray], n_boot: int, seed: int
                        ) -> list[tuple[float, float]]:
    """`_bootstrap_cis` of each plan over its types (``uses``): plans over the same types
    share their resamples and the ranks on them; fewer than 3 types give NaN."""
    out = [(math.nan, math.nan)] * len(plans)
    groups: dict[bytes, list[int]] = {}
    for i, use in enumerate(uses):
        groups.setdefault(use.tobytes(), []).append(i)
    for members in groups.values():
        use = uses[members[0]]
        if use.sum() < 3:
            continue
        needed = {0} | {j for i in members for j in plans[i] if j is not None}
        restricted = {j: columns[j][use] for j in needed}
        for i, ci in zip(members, _bootstrap_cis(restricted, [plans[i] for i in members],
                                                 n_boot, seed)):
            out[i] = ci
    return out


def frequency_bins(values: np.ndarray, counts: np.ndarray, n_bins: int = 8
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` [n_snapshots, n_types] per log-frequency bin: (means [n_snapshots,
    n_bins], bin edges in count [n_bins + 1]). Bins split log(count) into equal widths;
    an empty bin gives NaN."""
    counts = np.asarray(counts, np.float64)
    logs = np.log10(counts)
    edges = (np.linspace(logs.min(), logs.max(), n_bins + 1) if logs.size
             else np.zeros(n_bins + 1))
    which = np.clip(np.searchsorted(edges, logs, side="right") - 1, 0, n_bins - 1)
    means = np.full((values.shape[0], n_bins), np.nan)
    for b in range(n_bins):
        members = which == b
        if members.any():
            means[:, b] = np.nanmean(values[:, members], axis=1)
    return means, 10 ** edges


def curve_summary(steps: Sequence[int], values: Sequence[float]) -> dict[str, float]:
    """Peak value, its step, and the steps from the peak until the curve first falls to
    half the peak or below (NaN if it never does, or the peak is not positive)."""
    steps = np.asarray(steps, np.float64)
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    out = dict(peak=math.nan, peak_step=math.nan, half_life_steps=math.nan)
    if not finite.any():
        return out
    i = int(np.nanargmax(np.where(finite, values, -np.inf)))
    out.update(peak=float(values[i]), peak_step=float(steps[i]))
    if values[i] > 0:
        after = np.flatnonzero(finite[i + 1:] & (values[i + 1:] <= values[i] / 2))
        if after.size:
            out["half_life_steps"] = float(steps[i + 1 + after[0]] - steps[i])
    return out


@dataclass
class Emergence:
    """Per-type emergence of one run: ``types`` index the vocabulary."""

    steps: np.ndarray  # [n_snapshots]
    types: np.ndarray  # [n_types] token ids with count >= min_count
    norms: np.ndarray  # [n_snapshots, n_types]
    percentiles: np.ndarray  # [n_snapshots, n_types]
    settling_step: np.ndarray  # [n_types], NaN: never settles, or settles by chance
    peak_step: np.ndarray  # [n_types]
    band: float
    settling_index: np.ndarray  # [n_types] the raw rule's snapshot index, -1: never
    settles_by_chance: np.ndarray  # [n_types] bool: at the earliest snapshot, not beating the null
    settling_p: np.ndarray  # [n_types] null share settling at or before the raw index
    null: SettlingNull

    def settling_table(self) -> list[dict]:
        """Per snapshot: types settling there (raw rule; counted), the null's mean and its
        2.5-97.5 % range over draws."""
        raw = settling_counts(self.settling_index, len(self.steps))
        counted = np.array([(self.settling_step == s).sum() for s in self.steps])
        low, high = (np.percentile(self.null.counts, q, axis=0) for q in (2.5, 97.5))
        return [dict(step=int(s), settle=int(r), settle_counted=int(c), null_mean=float(m),
                     null_low=float(lo), null_high=float(hi))
                for s, r, c, m, lo, hi in zip(self.steps, raw, counted,
                                             self.null.counts.mean(axis=0), low, high)]


def emergence(steps: Sequence[int], norms: np.ndarray, counts: np.ndarray, min_count: int = 10,
              band: float = DEFAULT_BAND, n_perm: int = DEFAULT_N_PERM, seed: int = 0,
              alpha: float = DEFAULT_ALPHA) -> Emergence:
    """Per-type trajectories of the snapshots ``norms`` [n_snapshots, V] (module docstring)."""
    counts = np.asarray(counts)
    norms = np.asarray(norms, np.float64)[:, : len(counts)]
    types = np.flatnonzero((counts >= min_count) & np.isfinite(norms).all(axis=0))
    chosen = norms[:, types]
    pct = percentile_ranks(chosen)
    steps = np.asarray(steps)
    index = settling_index(pct, band)
    null = settling_null(pct, band, n_perm, seed)
    settling, chance = counted_settling(index, null, steps, alpha)
    return Emergence(steps=steps, types=types, norms=chosen, percentiles=pct,
                     settling_step=settling,
                     peak_step=peak_steps(chosen, steps) if len(steps) else np.zeros(0),
                     band=band, settling_index=index, settles_by_chance=chance,
                     settling_p=null.p_at_or_before(index), null=null)
