"""The analysis tools (analysis/): figures plot the record's numbers, the sweep table equals
an independent computation from the runs' metrics.jsonl, the HTML report renders offline in
headless Chromium, and a damaged record is read around the damage with a warning."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml

from scipy import stats

from analysis import curves, emergence, figures as F, report, robustness, sweep
from analysis.load import RecordWarning, load_run, load_sweep
from normx_track.gold.statistics import GoldStatistics
from normx_track.record.store import RecordWriter, read_metrics
from conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
METHODS = ("normxlogit", "logat", "norm", "random")


# -- independent readers (plain json / numpy, not analysis.load) ---------------------------
def jsonl(run_dir: Path) -> list[dict]:
    rows = []
    for line in (run_dir / "normx" / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            break
        rows.append({k: (math.nan if v is None else v) for k, v in row.items()})
    return rows


def column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r.get(key, math.nan) for r in rows], np.float64)


def snapshots(run_dir: Path) -> dict[int, np.ndarray]:
    out = {}
    for path in sorted((run_dir / "normx" / "snapshots").glob("step_*.npz")):
        with np.load(path) as data:
            out[int(path.stem[5:])] = data["input_norm"].astype(np.float64)
    return out


def gold(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "normx" / "gold.npz") as data:
        return {k: data[k] for k in data.files}


def lines_by_gid(fig) -> dict[str, object]:
    return {line.get_gid(): line for ax in fig.axes for line in ax.get_lines() if line.get_gid()}


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


PROBE_KEY = re.compile(r"normx/(evidence_|pair_|comprehensiveness/|sufficiency/|"
                       r"loo_spearman/|faithfulness_)")


def copy_without_probes(src: Path, dst: Path) -> list[dict]:
    """Copy src's record to dst with every probe metric removed; returns the rows."""
    shutil.copytree(src / "normx", dst / "normx")
    path = dst / "normx" / "metrics.jsonl"
    rows = [{k: v for k, v in json.loads(line).items() if not PROBE_KEY.match(k)}
            for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory, tiny_run) -> Path:
    """tiny_run's record without probe metrics (whatever the tracker's probe defaults)."""
    out = tmp_path_factory.mktemp("plain_run")
    copy_without_probes(tiny_run, out)
    return out


@pytest.fixture(scope="session")
def probe_run(tmp_path_factory, tiny_run) -> Path:
    """tiny_run's record with known probe metrics (per-layer evidence AP, pair accuracy,
    faithfulness; one value null), as a tracker with probes would write them."""
    out = tmp_path_factory.mktemp("probe_run")
    rows = copy_without_probes(tiny_run, out)
    rng = np.random.default_rng(0)
    path = out / "normx" / "metrics.jsonl"
    for row in rows:
        row["normx/pair_accuracy"] = float(rng.uniform())
        for m in METHODS:
            for family in ("evidence_ap", "evidence_dp", "comprehensiveness", "sufficiency",
                           "loo_spearman"):
                row[f"normx/{family}/{m}"] = float(rng.uniform())
        for m in ("normxlogit", "logat"):
            for layer in range(3):
                row[f"normx/evidence_ap_by_layer/{m}/layer_{layer:02d}"] = float(rng.uniform())
    rows[1]["normx/evidence_ap/logat"] = None
    rows[2]["normx/evidence_ap_by_layer/logat/layer_01"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def damaged_copy(src: Path, dst: Path) -> Path:
    """A copy of a run whose metrics.jsonl is cut mid-line, with the snapshot of the second
    step corrupt (half a zip) and that of the third missing."""
    shutil.copytree(src / "normx", dst / "normx")
    metrics = dst / "normx" / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
    snaps = sorted((dst / "normx" / "snapshots").glob("step_*.npz"))
    snaps[1].write_bytes(snaps[1].read_bytes()[:200])
    snaps[2].unlink()
    return dst


HAND_STEPS = [0, 1, 2, 4, 8, 16, 32, 64]
UIDS = [f"paradigm_{i:02d}" for i in range(16)]


def hand_record(run_dir: Path, with_loss: bool = True, vocab: int = 400) -> Path:
    """A record written here (RecordWriter): Zipf-like counts with ties and zeros, gold
    signals, 8 snapshots of norms drifting towards self-information, losses measured at
    steps of their own (validation every 16 steps), and 16 per-paradigm accuracies."""
    rng = np.random.default_rng(0)
    counts = (3000 / np.arange(1, vocab + 1) ** 1.1).astype(int)
    counts[-20:] = 0
    si = np.where(counts > 0, -np.log(np.maximum(counts, 1) / counts.sum()), np.nan)
    ig = 0.3 * np.nan_to_num(si) + rng.normal(0, 1, vocab)
    gold = GoldStatistics(counts=counts, self_information=si, information_gain=ig, window=5,
                          n_tokens=int(counts.sum()), seed=0, information_gain_corrected=None)
    gold.function_word = (np.arange(vocab) < 30).astype(float)
    writer = RecordWriter(run_dir)
    writer.write_meta({"config": {}, "tracker": {"min_count": 5}})
    writer.write_vocab([f"w{i}" for i in range(vocab)])
    gold.save(writer.dir / "gold.npz")
    init = rng.normal(1, 0.05, vocab)
    for step in HAND_STEPS:
        a = 1 - np.exp(-step / 10)
        norms = (1 - a) * init + a * (1 + 0.02 * np.nan_to_num(si)) + rng.normal(0, .01, vocab)
        writer.write_snapshot(step, {"input_norm": norms})
        row = {"step": step, "tokens_seen": 64 * step,
               "normx/spearman/information_gain": 0.1 * a,
               "normx/partial_spearman/information_gain": 0.05 * a,
               "normx/auroc/function_word": 0.5 + 0.3 * a}
        for uid in UIDS:
            row[f"normx/blimp_accuracy_by_uid/{uid}"] = float(rng.uniform())
        row["normx/pair_accuracy"] = 0.5 + 0.2 * a
        if with_loss and step > 0:
            row.update({"train/loss": 6 - a, "train/loss_step": step - 1})
            if step >= 16:  # rows 16 and 32 carry the same validation (measured at 16)
                val = 16 if step < 64 else 64
                row.update({"val/loss": 6.5 - (1 - np.exp(-val / 10)), "val/loss_step": val})
        writer.append_metrics(row)
    return run_dir


def partial_by_residuals(x, y, z) -> float:
    """Partial Spearman as the Pearson correlation of the rank residuals of x and y after a
    least-squares fit on the ranks of z (not the coefficient formula the library uses)."""
    rx, ry, rz = (stats.rankdata(v) for v in (x, y, z))
    design = np.column_stack([np.ones_like(rz), rz])

    def residual(r):
        return r - design @ np.linalg.lstsq(design, r, rcond=None)[0]
    return float(stats.pearsonr(residual(rx), residual(ry)).statistic)


# -- figures plot the record's numbers ----------------------------------------------------
def test_correlation_figure_plots_metrics_jsonl(tiny_run):
    rows = jsonl(tiny_run)
    fig = F.correlations(load_run(tiny_run).frame, log_steps=True)
    lines = lines_by_gid(fig)
    expected = {k for k in rows[0] if re.match(r"normx/(spearman|pearson|partial_spearman)/|"
                                                r"normx/auroc/", k)}
    losses = {k for k in ("train/loss", "val/loss") if k in lines}  # at their own steps
    assert expected and set(lines) - losses == expected
    for key, line in lines.items():
        if key in losses:
            continue
        np.testing.assert_array_equal(line.get_xdata(), column(rows, "step"))
        np.testing.assert_array_equal(line.get_ydata(), column(rows, key))
    assert {ax.get_xscale() for ax in fig.axes if ax.get_visible()} == {"symlog"}


def test_the_loss_panel_plots_each_loss_at_the_step_it_was_measured(tmp_path):
    run_dir = hand_record(tmp_path / "run")
    rows = jsonl(run_dir)
    fig = F.correlations(load_run(run_dir).frame, log_steps=True)
    lines = lines_by_gid(fig)
    for key, want_steps in (("train/loss", [s - 1 for s in HAND_STEPS[1:]]),
                            ("val/loss", [16, 64])):
        steps, losses = column(rows, key + "_step"), column(rows, key)
        ok = np.isfinite(steps)
        expected = {int(s): v for s, v in zip(steps[ok], losses[ok])}  # one per measurement
        assert sorted(expected) == want_steps
        np.testing.assert_array_equal(lines[key].get_xdata(), want_steps)
        np.testing.assert_array_equal(lines[key].get_ydata(), [expected[s] for s in want_steps])
        assert lines[key].axes.get_xscale() == "symlog"  # the correlations' step axis
        assert lines[key].axes.get_ylabel()
    summary = report.run_report(load_run(run_dir)).split("<h2>Summary</h2>")[1].split("<h2>")[0]
    for key in ("train/loss", "val/loss", "val/loss_step"):  # the last row's, in the summary
        assert f'<td class="t">{key}</td><td>{rows[-1][key]:.4g}</td>' in summary
    # an older record (no loss keys): the panel is left out
    old = F.correlations(load_run(hand_record(tmp_path / "old", with_loss=False)).frame)
    assert not {"train/loss", "val/loss"} & set(lines_by_gid(old))
    assert [ax.get_title() for ax in old.axes if ax.get_visible()] == [
        "Spearman", "partial Spearman (| log freq)", "AUROC: content vs function words"]


def test_min_count_table_equals_scipy_at_each_cutoff(tmp_path):
    run_dir = hand_record(tmp_path / "run")
    table = robustness.min_count_table(load_run(run_dir))
    snaps, g = snapshots(run_dir), gold(run_dir)
    counts = g["counts"]
    assert robustness.CUTOFFS == (1, 5, 10, 20, 50, 100)
    for signal in ("self_information", "information_gain"):
        values = g[signal]
        ok = np.isfinite(values)
        rho_at_5 = {s: stats.spearmanr(n[ok & (counts >= 5)], values[ok & (counts >= 5)])
                    .statistic for s, n in snaps.items()}
        peak = max(rho_at_5, key=lambda s: (rho_at_5[s], -s))  # the first on ties
        for snapshot, step in (("last", HAND_STEPS[-1]), ("peak", peak)):
            part = table[(table["signal"] == signal) & (table["snapshot"] == snapshot)]
            assert part["step"].tolist() == [step] * 6
            assert part["min_count"].tolist() == list(robustness.CUTOFFS)
            for row in part.itertuples():
                use = ok & (counts >= row.min_count)
                x, y = snaps[step][use], values[use]
                assert row.n == use.sum()
                assert row.spearman == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
                if signal == "self_information":  # a function of frequency: no partial
                    assert math.isnan(row.partial_spearman)
                else:
                    assert row.partial_spearman == pytest.approx(
                        partial_by_residuals(x, y, counts[use]), abs=1e-9)
            assert part["n"].is_monotonic_decreasing and part["n"].nunique() == 6
    html_table = report.robustness_html(load_run(run_dir))
    assert "≥ 100" in html_table and "peak (step" in html_table
    last = table[(table["signal"] == "information_gain") & (table["snapshot"] == "last")]
    assert f"{last['spearman'].iloc[0]:.3f}" in html_table


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")  # one-count bins
def test_beyond_frequency_is_the_spearman_within_each_bin(tmp_path):
    run_dir = hand_record(tmp_path / "run")
    run = load_run(run_dir)
    steps, binned, labels = robustness.beyond_frequency(run, n_bins=4, min_types=10)
    snaps, g = snapshots(run_dir), gold(run_dir)
    counts = g["counts"]
    which, _ = robustness.frequency_bins(counts, 5, 4, min_types=10)
    # the bins partition the types counted (count >= 5), rare to frequent, ties together
    assert ((which >= 0) == (counts >= 5)).all() and len(labels) == which.max() + 1 >= 3
    ranges = [(counts[which == b].min(), counts[which == b].max()) for b in range(len(labels))]
    assert all(hi < lo for (_, hi), (lo, _) in zip(ranges, ranges[1:]))
    assert labels[0].startswith(f"count {ranges[0][0]}–{ranges[0][1]}, ")
    # equal widths in log count (10 | 46 | 215 | 1000), the small frequent end joined inwards
    hand = np.array([10] * 40 + [30] * 40 + [100] * 40 + [1000] * 5 + [9, 0])
    hand_bins, names = robustness.frequency_bins(hand, 10, n_bins=3, min_types=30)
    assert names == ["count 10–30, 80 types", "count 100–1000, 45 types"]
    assert hand_bins.tolist() == [0] * 80 + [1] * 45 + [-1, -1]
    assert steps == sorted(snaps)
    for signal in ("self_information", "information_gain"):
        for b in range(len(labels)):
            members = (which == b) & np.isfinite(g[signal])
            want = [stats.spearmanr(snaps[s][members], g[signal][members]).statistic
                    for s in steps]
            np.testing.assert_allclose(binned[signal][:, b], want, atol=1e-12)
    fig = curves.build_figures(run)["beyond_frequency"]
    lines = lines_by_gid(fig)
    full = robustness.beyond_frequency(run)[1]
    np.testing.assert_array_equal(lines["information_gain|bin_0"].get_ydata(),
                                  full["information_gain"][:, 0])
    key = "normx/partial_spearman/information_gain"  # beside the recorded partial
    np.testing.assert_array_equal(lines[key].get_ydata(), column(jsonl(run_dir), key))


def test_figures_are_readable(tmp_path):
    """Log step axes by default, a y label on every panel, 16 paradigms in 16 colours with
    the legend beside the axes, and no marker of the emergence scatter on its edge."""
    run = load_run(hand_record(tmp_path / "run"))
    figs = curves.build_figures(run)
    tables, emerged = emergence.build(run, n_perm=50)
    for name, fig in {**figs, **emerged}.items():
        if isinstance(fig, str):
            continue
        for ax in fig.axes:
            if ax.get_visible():
                assert ax.get_ylabel(), (name, ax.get_title())
                if name in ("correlations", "beyond_frequency", "evidence", "emergence_null"):
                    assert ax.get_xscale() == "symlog", (name, ax.get_title())
    fig = figs["evidence"]
    (ax,) = [a for a in fig.axes if "paradigm" in a.get_title()]
    colours = {tuple(line.get_color()) if not isinstance(line.get_color(), str)
               else line.get_color() for line in ax.get_lines()}
    assert len(ax.get_lines()) == len(colours) == 16
    fig.canvas.draw()
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
    scatter = emerged["emergence_scatter"]
    (ax,) = scatter.axes
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    for values, (low, high) in ((points[:, 0], ax.get_xlim()), (points[:, 1], ax.get_ylim())):
        assert np.log10(values.min() / low) >= 0.1 and np.log10(high / values.max()) >= 0.1
    assert (tables["emergence"]["settling_step"].dropna() > 0).all()
    for module in (report, curves):
        assert module.parser().parse_args(["x"]).log_steps is True
        assert module.parser().parse_args(["x", "--no-log-steps"]).log_steps is False


def test_frequency_deciles_from_snapshots_and_gold_counts(tiny_run):
    run = load_run(tiny_run)
    fig = curves.build_figures(run)["frequency_deciles"]
    snaps, counts = snapshots(tiny_run), gold(tiny_run)["counts"]
    seen = np.flatnonzero(counts > 0)
    deciles = np.array_split(seen[np.argsort(-counts[seen], kind="stable")], 10)
    lines = lines_by_gid(fig)
    assert sorted(lines) == [f"bucket_{b:02d}" for b in range(10)]
    rows = jsonl(tiny_run)
    for b, ids in enumerate(deciles):
        line = lines[f"bucket_{b:02d}"]
        np.testing.assert_array_equal(line.get_xdata(), sorted(snaps))
        mine = [snaps[s][ids].mean() for s in sorted(snaps)]
        np.testing.assert_allclose(line.get_ydata(), mine, rtol=1e-12)
        # ... and the same numbers the tracker recorded live
        recorded = column(rows, f"normx/norm/bucket_{b:02d}/mean")
        np.testing.assert_allclose(line.get_ydata(), recorded, rtol=1e-6)


def test_function_content_figure(tiny_run):
    run = load_run(tiny_run)
    g, snaps, rows = gold(tiny_run), snapshots(tiny_run), jsonl(tiny_run)
    min_count = json.loads((tiny_run / "normx" / "meta.json").read_text())["tracker"]["min_count"]
    fig = curves.build_figures(run)["function_content"]
    lines = lines_by_gid(fig)
    for gid, label in (("function words", 1), ("content words", 0)):
        mask = (g["function_word"] == label) & (g["counts"] >= min_count)
        assert mask.any()
        np.testing.assert_allclose(lines[gid].get_ydata(),
                                   [snaps[s][mask].mean() for s in sorted(snaps)], rtol=1e-12)
    np.testing.assert_array_equal(lines["normx/auroc/function_word"].get_ydata(),
                                  column(rows, "normx/auroc/function_word"))


def test_layer_heatmap_and_probe_curves(probe_run):
    rows = jsonl(probe_run)
    figs = curves.build_figures(load_run(probe_run), log_steps=True)
    images = {im.get_gid(): im for ax in figs["evidence_by_layer"].axes for im in ax.get_images()}
    assert set(images) == {"normxlogit", "logat"}
    for method, image in images.items():
        expected = np.array([column(rows, f"normx/evidence_ap_by_layer/{method}/layer_{l:02d}")
                             for l in range(3)])
        np.testing.assert_array_equal(np.ma.filled(image.get_array().astype(float), np.nan),
                                      expected)
    heat_ax = next(ax for ax in figs["evidence_by_layer"].axes if ax.get_images())
    assert [t.get_text() for t in heat_ax.get_xticklabels()] == [str(r["step"]) for r in rows]
    for name, families in (("evidence", ("evidence_ap", "evidence_dp")),
                           ("faithfulness", ("comprehensiveness", "sufficiency",
                                             "loo_spearman"))):
        lines = lines_by_gid(figs[name])
        keys = {f"normx/{f}/{m}" for f in families for m in METHODS}
        if name == "evidence":
            keys.add("normx/pair_accuracy")
        assert set(lines) == keys
        for key, line in lines.items():
            np.testing.assert_array_equal(line.get_xdata(), column(rows, "step"))
            np.testing.assert_array_equal(line.get_ydata(), column(rows, key))
    assert np.isnan(lines_by_gid(figs["evidence"])["normx/evidence_ap/logat"].get_ydata()[1])


def layerwise_frame() -> pd.DataFrame:
    """Three snapshots of NormXLogit (layers 0-2) and ALTI (layers 1-2, as the mixing methods
    are), the random AP beside them; the last row has no per-layer values (a step between
    probe snapshots), so the last snapshot *with* them is step 20."""
    rng = np.random.default_rng(3)
    rows = []
    for step in (0, 10, 20, 25):
        row = {"step": step, "normx/evidence_ap/random": float(rng.uniform(0.2, 0.3))}
        if step != 25:
            row.update({f"normx/evidence_ap_by_layer/normxlogit/layer_{l:02d}":
                        float(rng.uniform()) for l in range(3)})
            row.update({f"normx/evidence_ap_by_layer/alti/layer_{l:02d}": float(rng.uniform())
                        for l in (1, 2)})
        rows.append(row)
    return pd.DataFrame(rows)


def test_layerwise_table_and_comparison_figure_read_the_last_probed_snapshot():
    frame = layerwise_frame()
    at_20 = frame[frame.step == 20].iloc[0]
    step, table = F.layerwise_table(frame)
    assert step == 20 and list(table.columns) == [0, 1, 2]
    assert np.isnan(table.loc["alti", 0])  # mixing methods have no embedding layer
    for method, layers in (("normxlogit", (0, 1, 2)), ("alti", (1, 2))):
        for l in layers:
            assert table.loc[method, l] == at_20[f"normx/evidence_ap_by_layer/{method}/layer_{l:02d}"]
    fig = F.layerwise_comparison(frame)
    by_layer, over_training = fig.axes
    lines = {(ax, line.get_gid()): line for ax in fig.axes for line in ax.get_lines()}
    alti = lines[(by_layer, "alti")]
    assert list(alti.get_xdata()) == [1, 2]
    np.testing.assert_array_equal(alti.get_ydata(), table.loc["alti", [1, 2]].to_numpy(float))
    random_level = lines[(by_layer, "normx/evidence_ap/random")]
    assert random_level.get_ydata()[0] == at_20["normx/evidence_ap/random"]
    last = lines[(over_training, "normx/evidence_ap_by_layer/normxlogit/layer_02")]
    np.testing.assert_array_equal(last.get_xdata(), [0, 10, 20])
    np.testing.assert_array_equal(
        last.get_ydata(), frame["normx/evidence_ap_by_layer/normxlogit/layer_02"][:3])
    np.testing.assert_array_equal(lines[(over_training, "normx/evidence_ap/random")].get_xdata(),
                                  [0, 10, 20, 25])


def test_run_report_holds_the_per_layer_table(probe_run):
    page = report.run_report(load_run(probe_run))
    rows = jsonl(probe_run)
    section = page.split("<h2>Evidence alignment by layer</h2>")[1].split("<h2>")[0]
    assert f"at step {rows[-1]['step']}." in section
    value = rows[-1]["normx/evidence_ap_by_layer/normxlogit/layer_02"]
    assert f"{value:.3f}" in section and "<td class=\"t\">logat</td>" in section


def test_curves_cli_writes_png_and_svg_and_says_what_it_skips(plain_run, probe_run, tmp_path,
                                                              capsys):
    assert curves.main([str(probe_run), "--out", str(tmp_path / "all"), "--log-steps"]) == 0
    for name in curves.FIGURES:
        png, svg = tmp_path / "all" / f"{name}.png", tmp_path / "all" / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in svg.read_text()[:2000]
    assert curves.main([str(plain_run), "--out", str(tmp_path / "plain"), "--formats", "png"]) == 0
    out = capsys.readouterr().out
    for name in ("evidence_by_layer", "evidence", "faithfulness"):
        assert f"skipped {name}: " in out
        assert not (tmp_path / "plain" / f"{name}.png").exists()
    assert (tmp_path / "plain" / "correlations.png").exists()
    assert not (tmp_path / "plain" / "correlations.svg").exists()


# -- sweeps ------------------------------------------------------------------------------
def independent_summary(sweep_dir: Path, key: str) -> dict[tuple[str, str], dict]:
    """{(group value, metric): {n_runs, final_mean, peak_mean, peak_step_mean}} from the jobs'
    metrics.jsonl and overrides.yaml, grouped by `key`."""
    per_group: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    for job in sorted(p for p in sweep_dir.iterdir() if (p / "normx").is_dir()):
        overrides = dict(o.split("=", 1) for o in yaml.safe_load(
            (job / ".hydra" / "overrides.yaml").read_text()))
        rows = jsonl(job)
        steps = column(rows, "step")
        for metric in rows[0]:
            if not metric.startswith("normx/"):
                continue
            values = column(rows, metric)
            ok = np.isfinite(values)
            if not ok.any():
                continue
            peak = np.nanmax(values)
            first = int(np.flatnonzero(values == peak)[0])
            per_group.setdefault((overrides[key].lower(), metric), []).append(
                (values[ok][-1], peak, steps[first]))
    return {k: {"n_runs": len(v), "final_mean": np.mean([x[0] for x in v]),
                "peak_mean": np.mean([x[1] for x in v]),
                "peak_step_mean": np.mean([x[2] for x in v])} for k, v in per_group.items()}


def test_sweep_table_equals_independent_computation(tiny_sweep, tmp_path, capsys):
    assert sweep.main([str(tiny_sweep), "--out", str(tmp_path), "--log-steps"]) == 0
    assert "4 runs in 2 group(s)" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "summary.csv", dtype={"model.tie_word_embeddings": str})
    key = "model.tie_word_embeddings"
    assert list(table.columns[:3]) == ["group", key, "metric"]  # only the varying key named
    expected = independent_summary(tiny_sweep, key)
    assert len(table) == len(expected)
    assert {v for v, _ in expected} == {"true", "false"}
    for row in table.itertuples(index=False):
        want = expected[(getattr(row, "_1"), row.metric)]
        assert row.n_runs == want["n_runs"] == 2
        for stat in ("final_mean", "peak_mean", "peak_step_mean"):
            assert getattr(row, stat) == pytest.approx(want[stat], rel=1e-9, abs=1e-12), \
                (row.metric, stat)
    # output-norm metrics exist only for the untied group
    untied = table[table["metric"].str.startswith("normx/output/")]
    assert set(untied[key]) == {"false"}
    for name in ("correlations", "output_correlations"):
        assert (tmp_path / f"{name}.png").exists() and (tmp_path / f"{name}.svg").exists()


def test_sweep_figure_lines_are_group_means(tiny_sweep):
    runs = load_sweep(tiny_sweep)
    figures, _, _, labels = sweep.build_sweep(runs, band="minmax")
    # one spelling for a value: Hydra's "True" in overrides.yaml, YAML's true
    assert labels == ["model.tie_word_embeddings=true", "model.tie_word_embeddings=false"]
    lines = lines_by_gid(figures["correlations"])
    metric = "normx/spearman/information_gain"
    for label in labels:
        value = label.split("=")[1]
        jobs = [r.path for r in runs
                if r.overrides["model.tie_word_embeddings"].lower() == value]
        per_run = [jsonl(job) for job in jobs]
        steps = column(per_run[0], "step")
        mean = np.mean([column(rows, metric) for rows in per_run], axis=0)
        line = lines[f"{label}|{metric}"]
        np.testing.assert_array_equal(line.get_xdata(), steps)
        np.testing.assert_allclose(line.get_ydata(), mean, rtol=1e-12)
    out_lines = lines_by_gid(figures["output_correlations"])
    assert out_lines and all(gid.startswith(labels[1]) for gid in out_lines)


def test_sweep_group_by_keys(tiny_sweep):
    runs = load_sweep(tiny_sweep)
    _, table, _, labels = sweep.build_sweep(runs, group_by=["seed"])
    assert labels == ["seed=0", "seed=1"]
    inputs = ~table["metric"].str.startswith("normx/output/")  # output norms: untied only
    assert set(table.loc[inputs, "n_runs"]) == {2} and set(table.loc[~inputs, "n_runs"]) == {1}
    # a key not overridden is looked up in the recorded config
    _, table, _, labels = sweep.build_sweep(runs, group_by=["data.synthetic.zipf_exponent"])
    assert labels == ["all runs"]
    n_runs = dict(zip(table["metric"], table["n_runs"]))
    assert n_runs["normx/spearman/information_gain"] == 4
    assert n_runs["normx/output/spearman/information_gain"] == 2  # untied runs only
    assert set(table["data.synthetic.zipf_exponent"]) == {"1.1"}


# -- the HTML report -----------------------------------------------------------------------
def render(page: Path) -> tuple[str, str]:
    """Load `page` in headless Chromium; return (the images-loaded marker, the DOM)."""
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium not installed (/usr/bin/chromium; Debian: apt-get "
                    "install chromium)")
    probe = page.with_name("probe_" + page.name)
    script = ("<script>window.addEventListener('load',function(){var im=document.images,ok=0;"
              "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}"
              "document.body.setAttribute('data-images',ok+'/'+im.length);});</script>")
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--no-first-run",
             "--disable-sync", f"--user-data-dir={profile}",
             "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000",
             "--dump-dom", probe.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
    marker = re.search(r'data-images="(\d+/\d+)"', proc.stdout)
    assert marker, proc.stderr[-2000:]
    return marker.group(1), proc.stdout


def test_run_report_is_self_contained_and_renders(tiny_run, tmp_path):
    out = tmp_path / "report.html"
    assert report.main([str(tiny_run), "--out", str(out)]) == 0
    text = out.read_text()
    sources = re.findall(r'<img[^>]*src="([^"]*)"', text)
    drawn = [n for n, f in curves.build_figures(load_run(tiny_run)).items()
             if not isinstance(f, str)]
    emerged = [n for n, f in emergence.build(load_run(tiny_run))[1].items()
               if not isinstance(f, str)]
    assert len(emerged) == 3  # the settling scatter, its null and the frequency-bin heat maps
    # the curves, the norm-vs-IG scatter and the emergence figures
    assert len(sources) == len(drawn) + 1 + len(emerged) >= 6
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:|//|file:)', text)
    meta = json.loads((tiny_run / "normx" / "meta.json").read_text())
    assert f"&quot;n_embd&quot;: {meta['config']['model']['n_embd']}" in text
    steps = sorted(snapshots(tiny_run))
    shown = [int(s) for s in re.findall(r"<h3>step (\d+)</h3>", text)]
    assert shown == [steps[0], steps[len(steps) // 2], steps[-1]]
    vocab = json.loads((tiny_run / "normx" / "vocab.json").read_text())
    norms, counts = snapshots(tiny_run)[steps[-1]], gold(tiny_run)["counts"]
    seen = np.flatnonzero(counts >= meta["tracker"]["min_count"])
    top = seen[np.argmax(norms[seen])]
    assert f"<td>{top}</td>" in text and vocab[top] in text
    rows = {r["step"]: r for r in read_metrics(tiny_run)}
    shown_rho = dict(re.findall(r"step (\d+): (-?\d+\.\d+|nan)", text.split("Spearman: ")[1]))
    assert [int(s) for s in shown_rho] == shown
    for step, rho in shown_rho.items():  # the scatter's panels are the recorded numbers
        assert float(rho) == pytest.approx(rows[int(step)]["normx/spearman/information_gain"],
                                           abs=1e-4)
    loaded, dom = render(out)
    assert loaded == f"{len(sources)}/{len(sources)}"
    assert "Top and bottom norm tokens" in dom and "Emergence order" in dom


def test_report_steps_option_and_sweep_report(tiny_sweep, tmp_path, capsys):
    out = tmp_path / "sweep.html"
    assert report.main([str(tiny_sweep), "--out", str(out), "--steps", "0", "3"]) == 0
    assert "no snapshot at step 3; showing step 2" in capsys.readouterr().err
    text = out.read_text()
    assert "4 runs in 2 group(s)" in text
    assert set(re.findall(r"<h3>step (\d+)</h3>", text)) == {"0", "2"}
    loaded, _ = render(out)
    n_images = len(re.findall(r"<img ", text))
    assert n_images >= 2 and loaded == f"{n_images}/{n_images}"


# -- damaged records -----------------------------------------------------------------------
def test_damaged_record_is_read_up_to_the_damage(tiny_run, tmp_path):
    run_dir = damaged_copy(tiny_run, tmp_path / "damaged")
    snaps = sorted(snapshots(tiny_run))
    with pytest.warns(RecordWarning) as caught:
        run = load_run(run_dir)
        figs = curves.build_figures(run)
    messages = "\n".join(str(w.message) for w in caught)
    assert f"{run_dir / 'normx' / 'metrics.jsonl'}:{len(snaps)}: damaged line" in messages
    assert f"{run_dir}/normx/snapshots/step_{snaps[1]:08d}.npz: unreadable" in messages
    assert f"{run_dir}/normx/snapshots/step_{snaps[2]:08d}.npz: missing snapshot" in messages
    assert len(run.problems) == 3
    line = lines_by_gid(figs["correlations"])["normx/spearman/information_gain"]
    rows = jsonl(tiny_run)[:-1]
    np.testing.assert_array_equal(line.get_ydata(), column(rows, "normx/spearman/information_gain"))
    readable = [s for s in snaps if s not in snaps[1:3]]
    np.testing.assert_array_equal(lines_by_gid(figs["frequency_deciles"])["bucket_00"].get_xdata(),
                                  readable)


def test_damaged_record_through_the_clis(tiny_run, tiny_sweep, tmp_path, capsys):
    run_dir = damaged_copy(tiny_run, tmp_path / "damaged")
    assert curves.main([str(run_dir), "--out", str(tmp_path / "figs"), "--formats", "png"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {run_dir / 'normx' / 'metrics.jsonl'}:" in err
    assert "unreadable snapshot" in err and "missing snapshot" in err
    assert (tmp_path / "figs" / "frequency_deciles.png").exists()

    assert report.main([str(run_dir), "--out", str(tmp_path / "r.html")]) == 0
    text = (tmp_path / "r.html").read_text()
    assert "3 record problem(s)" in text and "damaged line" in text

    multirun = tmp_path / "multirun"
    shutil.copytree(tiny_sweep, multirun, ignore=shutil.ignore_patterns("checkpoints", "analysis"))
    shutil.rmtree(multirun / "1" / "normx")
    damaged_copy(tiny_sweep / "2", multirun / "2x")
    shutil.rmtree(multirun / "2" / "normx")
    assert sweep.main([str(multirun), "--out", str(tmp_path / "sw"), "--formats", "png"]) == 0
    captured = capsys.readouterr()
    assert f"{multirun / '1'}: job without a normx record" in captured.err
    assert f"{multirun / '2x' / 'normx' / 'metrics.jsonl'}:" in captured.err
    assert "3 runs in" in captured.out
    assert len(pd.read_csv(tmp_path / "sw" / "summary.csv")) > 0


# -- usage -----------------------------------------------------------------------------------
@pytest.mark.parametrize("module", [curves, sweep, report])
def test_no_record_is_a_clear_error(module, tmp_path, capsys):
    assert module.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: no normx record found (expected {tmp_path}/normx/metrics.jsonl" in err
    assert "Traceback" not in err


def test_help(capsys):
    for module in (curves, sweep, report):
        with pytest.raises(SystemExit) as exit_:
            module.main(["--help"])
        assert exit_.value.code == 0
        assert "usage: python -m analysis." in capsys.readouterr().out
    proc = subprocess.run([sys.executable, "-m", "analysis.sweep", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--group-by" in proc.stdout
