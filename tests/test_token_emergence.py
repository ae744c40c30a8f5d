"""Per-token emergence (normx_track.gold.emergence, analysis.emergence) on a record built here
with trajectories whose settling and peak steps are known by construction, the settling null
against hand-worked shares and reproducible with its seed, the order statistics against a
direct scipy computation, and the sweep/report/W&B outputs."""
from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import emergence as AE
from analysis import report, sweep
from analysis.load import load_sweep
from normx_track.gold import emergence as E
from normx_track.gold.statistics import GoldStatistics
from normx_track.record.store import RecordWriter

STEPS = [0, 10, 20, 30, 40, 50]
# 7 anchors at fixed norms 10..70 and 4 movers; n = 11 types, so percentiles are 10 (r - 1).
ANCHORS = np.tile(np.arange(10.0, 71.0, 10.0), (len(STEPS), 1))
MOVERS = np.array([
    # A: out of its final band (90) at step 20, within from 30: settles at 30; peak at 10
    [5, 75, 6, 66, 67, 68],
    # B: final 0 but 40 at the second-to-last snapshot: never settles; peak at 40
    [3, 3, 3, 3, 44, 3],
    # C: 45 throughout, within +-10 of its final 55 (tied with D at the end): within its
    # band from initialisation on, which any order of its snapshots is too: by chance
    [45, 45, 45, 45, 45, 45],
    # D: on top until it drops to tie with C at the last snapshot: never settles
    [90, 90, 90, 90, 90, 45],
], dtype=float).T
EXPECTED = {7: (30, 10), 8: (math.nan, 40), 9: (math.nan, 0), 10: (math.nan, 0)}  # settling, peak
# Anchor 6 (norm 70) is pushed from 90 to 80 by A at step 10 and ends on top (100): it
# settles at 20. The other anchors and C stay in their band from step 0 on: by chance.
BY_CHANCE = set(range(6)) | {9}
RARE = 11  # a twelfth type, seen too rarely to count


def norms_matrix() -> np.ndarray:
    rare = np.full((len(STEPS), 1), 1000.0)  # would top every ranking if it counted
    return np.hstack([ANCHORS, MOVERS, rare])


def write_record(run_dir, damage: bool = False):
    counts = np.array([100] * 11 + [3])
    gold = GoldStatistics(counts=counts, self_information=-np.log(counts / counts.sum()),
                          information_gain=np.linspace(0, 1, 12), window=5, n_tokens=1103,
                          seed=0, information_gain_corrected=None)
    gold.function_word = np.array([0.0] * 6 + [1.0] * 6)
    writer = RecordWriter(run_dir)
    writer.write_meta({"config": {}, "tracker": {"min_count": 10}})
    writer.write_vocab([f"tok{i}" for i in range(12)])
    gold.save(writer.dir / "gold.npz")
    spearman = [0.0, 0.6, 0.5, 0.29, 0.4, 0.1]
    for step, row, rho in zip(STEPS, norms_matrix(), spearman):
        writer.write_snapshot(step, {"input_norm": row})
        writer.append_metrics({"step": step, "tokens_seen": step * 64,
                               "normx/spearman/information_gain": rho,
                               "normx/partial_spearman/information_gain": rho / 10})
    if damage:  # a truncated record: a corrupt snapshot and a cut-off row after the last good
        (writer.dir / "snapshots" / "step_00000060.npz").write_bytes(b"PK\x03\x04 cut")
        with open(writer.dir / "metrics.jsonl", "a") as f:
            f.write('{"step": 60, "normx/spearman/informa')
    return run_dir


def test_percentiles_settling_and_peaks_are_the_constructed_ones():
    em = E.emergence(STEPS, norms_matrix(), np.array([100] * 11 + [3]), min_count=10)
    assert em.types.tolist() == list(range(11))  # the rare type is left out
    final = em.percentiles[-1]
    assert final[7] == 90 and final[8] == 0 and final[9] == final[10] == 55  # a tie: 5.5 * 10
    for t, (settle, peak) in EXPECTED.items():
        got = em.settling_step[t]
        assert (math.isnan(got) and math.isnan(settle)) or got == settle, (t, got)
        assert em.peak_step[t] == peak, t
    assert set(np.flatnonzero(em.settles_by_chance)) == BY_CHANCE
    assert em.settling_index[9] == 0 and np.isnan(em.settling_step[9])  # raw rule: step 0
    assert em.settling_step[6] == 20
    assert not (em.settling_step == 0).any()  # nothing "settles" at initialisation


def _brute_settling(pct: np.ndarray, steps, band) -> float:
    """The definition as a plain loop: walk back from the end while within the band."""
    first = len(steps) - 1
    for i in range(len(steps) - 1, -1, -1):
        if abs(pct[i] - pct[-1]) > band:
            break
        first = i
    return math.nan if first == len(steps) - 1 else steps[first]


@pytest.mark.parametrize("seed", range(3))
def test_settling_equals_a_plain_loop_on_random_trajectories(seed):
    rng = np.random.default_rng(seed)
    norms = rng.random((9, 40)).round(1)  # rounding makes ties
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 100]
    pct = np.empty_like(norms)
    for s, row in enumerate(norms):  # brute-force percentiles: pairwise comparisons
        below = (row[None, :] < row[:, None]).sum(1)
        equal = (row[None, :] == row[:, None]).sum(1) - 1
        pct[s] = 100 * (below + equal / 2) / (len(row) - 1)
    np.testing.assert_allclose(E.percentile_ranks(norms), pct)
    for band in (5.0, 10.0, 30.0):
        got = E.settling_steps(pct, steps, band)
        want = np.array([_brute_settling(pct[:, t], steps, band) for t in range(40)])
        np.testing.assert_array_equal(got, want)


def test_the_null_gives_the_hand_worked_shares():
    """One type at percentiles [0, 100, 100, 100]: its 0 lands at each of the 4 places with
    chance 1/4: first -> settles at index 1, second -> 2, third or last -> never. A constant
    type settles at index 0 in every order."""
    pct = np.array([[0, 100, 100, 100], [50, 50, 50, 50]], float).T
    null = E.settling_null(pct, band=10, n_perm=4000, seed=3)
    np.testing.assert_allclose(null.counts.mean(axis=0), [1, 0.25, 0.25, 0], atol=0.03)
    np.testing.assert_allclose(null.cumulative[:, 0], [0, 0.25, 0.5, 0.5], atol=0.03)
    np.testing.assert_array_equal(null.cumulative[:, 1], [1, 1, 1, 1])
    assert null.counts.sum(axis=1).max() <= 2


def test_the_null_is_reproducible_with_its_seed():
    rng = np.random.default_rng(5)
    pct = rng.random((12, 30)) * 100
    a, b = (E.settling_null(pct, 10, n_perm=50, seed=7, chunk_cells=1000) for _ in range(2))
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.cumulative, b.cumulative)
    whole = E.settling_null(pct, 10, n_perm=50, seed=7)  # chunking does not change draws
    np.testing.assert_array_equal(whole.cumulative.sum(), a.cumulative.sum())
    other = E.settling_null(pct, 10, n_perm=50, seed=8)
    assert not np.array_equal(a.counts, other.counts)
    norms = rng.random((12, 30))
    counts = np.full(30, 50)
    one, two = (E.emergence(range(12), norms, counts, n_perm=40, seed=1) for _ in range(2))
    np.testing.assert_array_equal(one.settling_p, two.settling_p)
    assert one.settling_table() == two.settling_table()


def test_settling_at_the_start_counts_only_beyond_the_null():
    """40 snapshots from step 0; ten anchors keep their norms, a jumper starts below all of
    them and ends above: it settles at the first snapshot after initialisation, and only 1
    order in 40 puts its outlier first (p = 0.025 < 0.05). The anchors, within their band
    from step 0 on in any order, settle by chance."""
    steps = list(range(0, 400, 10))
    anchors = np.tile(np.arange(1.0, 11.0), (len(steps), 1))
    jumper = np.full((len(steps), 1), 100.0)
    jumper[0] = 0.0
    em = E.emergence(steps, np.hstack([anchors, jumper]), np.full(11, 20), min_count=10,
                     n_perm=2000, seed=0)
    assert em.settling_index[10] == 1 and em.settling_step[10] == 10
    assert em.settling_p[10] == pytest.approx(1 / 40, abs=0.01)
    assert not em.settles_by_chance[10]
    assert em.settles_by_chance[:10].all() and np.isnan(em.settling_step[:10]).all()
    table = {r["step"]: r for r in em.settling_table()}
    assert table[0]["settle"] == 10 and table[0]["settle_counted"] == 0
    assert table[10]["settle"] == 1 and table[10]["settle_counted"] == 1
    assert table[0]["null_mean"] == pytest.approx(10, abs=0.5)  # the anchors, every draw
    # a record that starts after initialisation: its first snapshot is the earliest
    late = E.emergence([s + 5 for s in steps], np.hstack([anchors, jumper]), np.full(11, 20),
                       min_count=10, n_perm=2000, seed=0)
    assert late.settling_step[10] == 15 and late.settles_by_chance[:10].all()


def test_order_statistics_equal_scipy():
    rng = np.random.default_rng(0)
    n = 300
    counts = rng.integers(10, 5000, n)
    ig = rng.random(n) + 0.3 * np.log(counts)
    settling = np.round(200 / np.log(counts) + 20 * rng.random(n))
    settling[:17] = np.nan  # never settle: left out
    rows = {(r["statistic"], r["against"]): r for r in
            E.order_statistics(settling, counts, {"information_gain": ig}, n_boot=300, seed=1)}
    ok = np.isfinite(settling)
    x, f, y = settling[ok], np.log(counts[ok]), ig[ok]
    r_xf, r_xy, r_yf = (stats.spearmanr(a, b).statistic for a, b in ((x, f), (x, y), (y, f)))
    assert rows[("spearman", "log_frequency")]["value"] == pytest.approx(r_xf)
    assert rows[("spearman", "information_gain")]["value"] == pytest.approx(r_xy)
    partial = (r_xy - r_xf * r_yf) / math.sqrt((1 - r_xf ** 2) * (1 - r_yf ** 2))
    assert rows[("partial_spearman", "information_gain")]["value"] == pytest.approx(partial)
    for row in rows.values():
        assert row["n"] == n - 17
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
    assert rows[("spearman", "log_frequency")]["ci_high"] < 0  # frequent types settle early


def test_order_intervals_are_each_plans_own_bootstrap():
    """The plans share their resamples and ranks: each interval must be the one a bootstrap
    of that plan alone gives from the seed, also for a signal with missing values (its own
    types, so its own resamples)."""
    rng = np.random.default_rng(5)
    n, n_boot, seed = 120, 200, 7
    counts = rng.integers(10, 3000, n)
    ig, other = rng.random(n) + 0.2 * np.log(counts), rng.random(n)
    other[:9] = np.nan
    settling = np.round(100 / np.log(counts) + 10 * rng.random(n))
    settling[-5:] = np.nan
    rows = E.order_statistics(settling, counts, {"ig": ig, "other": other}, n_boot=n_boot,
                              seed=seed)
    log_freq = np.log(counts)
    plans = [(log_freq, None), (ig, None), (ig, log_freq), (other, None), (other, log_freq)]
    assert [(r["statistic"], r["against"]) for r in rows] == [
        ("spearman", "log_frequency"), ("spearman", "ig"), ("partial_spearman", "ig"),
        ("spearman", "other"), ("partial_spearman", "other")]
    for row, (y, z) in zip(rows, plans):
        use = np.isfinite(settling) & np.isfinite(y)
        x_, y_, z_ = settling[use], y[use], None if z is None else z[use]
        take = np.random.default_rng(seed).integers(0, use.sum(), (n_boot, use.sum()))
        alone = E.resampled_spearman(x_, y_, z_, take)
        alone = alone[np.isfinite(alone)]
        assert row["n"] == use.sum()
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(
            (np.percentile(alone, 2.5), np.percentile(alone, 97.5)), rel=1e-12)


def test_resampled_spearman_equals_one_resample_at_a_time():
    """The bootstrap ranks every resample at once; each row must be the coefficient
    `correlations()` gives that resample alone (ties from repeated draws included)."""
    rng = np.random.default_rng(4)
    n = 40
    x = np.round(rng.random(n) * 8)  # ties
    y, z = x + rng.random(n), rng.integers(1, 30, n).astype(float)
    take = rng.integers(0, n, (25, n))
    take[0] = 0  # a constant resample: NaN, as correlations() says
    for control in (None, z):
        got = E.resampled_spearman(x, y, control, take)
        one_by_one = [E._spearman(x[t], y[t], None if control is None else control[t])
                      for t in take]
        np.testing.assert_allclose(got, one_by_one, rtol=1e-10, atol=1e-12)
        assert np.isnan(got[0])


def test_curve_summary_by_hand():
    summary = E.curve_summary([0, 10, 20, 30, 40], [0.0, 0.6, 0.5, 0.29, 0.4])
    assert summary == {"peak": 0.6, "peak_step": 10.0, "half_life_steps": 20.0}
    assert math.isnan(E.curve_summary([0, 10, 20], [0.1, 0.5, 0.4])["half_life_steps"])
    assert math.isnan(E.curve_summary([0, 10], [-0.2, -0.1])["half_life_steps"])  # peak <= 0
    assert math.isnan(E.curve_summary([0, 10], [math.nan, math.nan])["peak"])


def test_frequency_bins_average_the_types_in_each_bin():
    values = np.array([[1.0, 2.0, 3.0, 4.0]])
    means, edges = E.frequency_bins(values, np.array([10, 11, 1000, 1000]), n_bins=2)
    assert means.tolist() == [[1.5, 3.5]] and edges[0] == pytest.approx(10)


@pytest.mark.parametrize("damage", [False, True])
def test_the_cli_writes_the_table_and_figures(tmp_path, damage, capsys):
    run_dir = write_record(tmp_path / "run", damage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert AE.main([str(run_dir), "--formats", "png"]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(run_dir / "figures" / "emergence.csv")
    assert table["token_id"].tolist() == list(range(11))
    for t, (settle, peak) in EXPECTED.items():
        row = table.set_index("token_id").loc[t]
        assert (math.isnan(row["settling_step"]) and math.isnan(settle)) or \
            row["settling_step"] == settle
        assert row["peak_step"] == peak and row["final_norm"] == norms_matrix()[-1, t]
    assert set(table.loc[table["settles_by_chance"], "token_id"]) == BY_CHANCE
    assert {"count", "self_information", "information_gain", "function_word"} <= set(table)
    settling = pd.read_csv(run_dir / "figures" / "emergence_settling.csv")
    assert settling["step"].tolist() == STEPS
    raw = settling.set_index("step")["settle"]
    assert raw[0] == len(BY_CHANCE) and raw[20] == raw[30] == 1
    assert raw.sum() == len(BY_CHANCE) + 2
    assert settling.set_index("step")["settle_counted"].to_dict() == {
        0: 0, 10: 0, 20: 1, 30: 1, 40: 0, 50: 0}
    assert (settling["null_low"] <= settling["null_mean"]).all()
    assert (settling["null_mean"] <= settling["null_high"]).all()
    curves = pd.read_csv(run_dir / "figures" / "emergence_curves.csv")
    row = curves[curves["statistic"] == "spearman"].iloc[0]
    assert (row["peak"], row["peak_step"], row["half_life_steps"]) == (0.6, 10, 20)
    for name in ("emergence_scatter.png", "emergence_null.png", "emergence_bins.png",
                 "emergence_order.csv"):
        assert (run_dir / "figures" / name).exists(), name
    assert "settle first:" in out


def test_the_sweep_aggregates_peaks_and_decay_with_intervals(tiny_sweep, tmp_path):
    assert sweep.main([str(tiny_sweep), "--out", str(tmp_path / "out"), "--formats", "png"]) == 0
    summary = pd.read_csv(tmp_path / "out" / "emergence_summary.csv")
    runs = load_sweep(tiny_sweep)
    frame, _ = sweep.sweep_frame(runs, sweep.default_group_keys(runs))
    groups = frame.groupby("run")["group"].first()
    for (group, signal, stat), part in summary.groupby(["group", "signal", "statistic"]):
        peaks = [AE.curve_table(r).set_index(["signal", "statistic"]).loc[(signal, stat), "peak"]
                 for r in runs if groups[r.name] == group]
        peaks = np.array([p for p in peaks if np.isfinite(p)])
        row = part.iloc[0]
        assert row["peak_n"] == len(peaks)
        if len(peaks) == 0:  # e.g. a partial Spearman undefined at every step
            assert math.isnan(row["peak_mean"])
            continue
        assert row["peak_mean"] == pytest.approx(peaks.mean())
        if len(peaks) >= 2:
            half = stats.t.ppf(0.975, len(peaks) - 1) * peaks.std(ddof=1) / np.sqrt(len(peaks))
            assert row["peak_ci_high"] - row["peak_mean"] == pytest.approx(half)


def test_the_run_report_holds_the_emergence_section(tmp_path):
    from test_analysis import render

    run_dir = write_record(tmp_path / "run")
    out = tmp_path / "report.html"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert report.main([str(run_dir), "--out", str(out)]) == 0
    text = out.read_text()
    section = text.split("Emergence: when each token becomes important")[1]
    assert "Emergence order" in section and "Settle first" in section
    assert "against the null" in section and f"{len(BY_CHANCE)} type(s) settle" in section
    assert section.count("<img ") == 3
    first = re.search(r'Settle first</h3>.*?<td class="t">(tok\d+)</td>', section,
                      re.S).group(1)
    assert first == "tok6"  # settles at 20; tok7 at 30; the rest never or by chance
    loaded, dom = render(out)
    n = len(re.findall(r"<img ", text))
    assert loaded == f"{n}/{n}" and "Settle last" in dom


def test_a_wandb_run_gets_the_emergence_files_at_the_end(tiny_run):
    (run,) = list((tiny_run / "wandb").glob("offline-run-*"))
    saved = {p.name for p in (run / "files").rglob("*")}
    assert {"emergence.csv", "emergence_order.csv", "emergence_scatter.png"} <= saved
    local = pd.read_csv(tiny_run / "figures" / "emergence.csv")
    counts = np.load(tiny_run / "normx" / "gold.npz")["counts"]
    min_count = json.loads((tiny_run / "normx" / "meta.json").read_text())["tracker"]["min_count"]
    assert local["token_id"].tolist() == np.flatnonzero(counts >= min_count).tolist()
