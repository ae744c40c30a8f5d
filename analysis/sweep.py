"""Aggregate a Hydra multirun: runs grouped by config, mean and spread over seeds.

    python -m analysis.sweep MULTIRUN_DIR [--group-by KEY ...] [--out DIR] [--band std|minmax]
                             [--log-steps] [--metrics PATTERN ...] [--formats png svg]

Groups runs by the given keys (Hydra override keys, or dotted config keys such as
model.tie_word_embeddings, looked up in each run's recorded config when not overridden);
by default by every override key except `seed`. Writes, by default into MULTIRUN_DIR/analysis:
  correlations.{png,svg}         a panel per (gold signal, statistic), a line per group
                                 (mean over its runs) with a band (±1 std, or min–max)
  output_correlations, evidence, faithfulness   the same for those metrics, when recorded
  summary.csv                    per group and metric: the final value, the peak value and the
                                 step of the peak, each the mean (and std) over the group's
                                 runs, with n_runs
  emergence_summary.csv          per group, gold signal and statistic (Spearman, partial):
                                 peak, its step, steps to half the peak; mean and 95 % CI
                                 over the group's runs (which emerges earlier, by how much)
Per run, "final" is the metric's last finite value, "peak" its maximum over steps, and the
peak step the first step reaching it; runs where the metric is never finite are not counted.
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
import warnings
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.sweep",
                                description=__doc__.split("\n\n")[0],
                                epilog="Example: python -m analysis.sweep multirun/2025-01-01/"
                                       "12-00-00 --group-by model.tie_word_embeddings")
    p.add_argument("multirun_dir", type=Path, help="a Hydra multirun dir (job subdirs 0/, 1/, ...)")
    p.add_argument("--group-by", nargs="+", metavar="KEY",
                   help="override/config keys to group runs by (default: every override key "
                        "except seed)")
    p.add_argument("--out", type=Path, help="output dir (default MULTIRUN_DIR/analysis)")
    p.add_argument("--band", choices=("std", "minmax"), default="std",
                   help="spread over seeds drawn around each mean (default: std)")
    p.add_argument("--log-steps", action="store_true", help="log-scaled (symlog) step axis")
    p.add_argument("--metrics", nargs="+", metavar="PATTERN",
                   help="fnmatch patterns of the metric keys in summary.csv (default: all), "
                        "e.g. 'normx/spearman/*'")
    p.add_argument("--formats", nargs="+", default=["png", "svg"], metavar="FMT",
                   help="figure formats (default: png svg)")
    p.add_argument("--mix-vocabularies", action="store_true",
                   help="average runs of different vocabularies (vocab_hash) within a group")
    return p


if __name__ == "__main__":  # --help and a bad option answer before the imports below
    parser().parse_args()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from normx_track.keys import OUTPUT_PREFIX, PREFIX, auroc_key, correlation_key  # noqa: E402

from . import figures as F  # noqa: E402
from .emergence import curve_table  # noqa: E402
from .load import (NoRecordError, RecordWarning, Run, cli_warnings, default_group_keys,  # noqa: E402
                   load_sweep, metric_columns, mixed_vocabularies, sweep_frame, varying_keys)

SUMMARY_COLUMNS = ["n_runs", "final_mean", "final_std", "peak_mean", "peak_std",
                   "peak_step_mean", "peak_step_std"]


def aggregate(frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Long table: group, metric, step, mean, std, min, max, n (runs with a finite value)."""
    metrics = [m for m in metrics if m in frame]
    if not metrics:
        return pd.DataFrame(columns=["group", "metric", "step", "mean", "std", "min", "max", "n"])
    long = frame.melt(id_vars=["run", "group", "step"], value_vars=metrics, var_name="metric",
                      value_name="value").dropna(subset=["value"])
    agg = (long.groupby(["group", "metric", "step"], sort=False)["value"]
           .agg(mean="mean", std="std", min="min", max="max", n="count").reset_index())
    return agg.sort_values(["group", "metric", "step"], kind="stable").reset_index(drop=True)


def per_run_summary(frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per (run, metric): final, peak, peak_step (NaN-free runs only)."""
    rows = []
    for run, runs in frame.groupby("run", sort=False):
        runs = runs.sort_values("step", kind="stable")
        steps = runs["step"].to_numpy()
        for metric in metrics:
            if metric not in runs:
                continue
            values = runs[metric].to_numpy(np.float64)
            ok = np.isfinite(values)
            if not ok.any():
                continue
            best = int(np.argmax(np.where(ok, values, -np.inf)))
            rows.append({"run": run, "group": runs["group"].iloc[0], "metric": metric,
                         "final": values[ok][-1], "peak": values[best],
                         "peak_step": int(steps[best])})
    return pd.DataFrame(rows, columns=["run", "group", "metric", "final", "peak", "peak_step"])


def summary_table(frame: pd.DataFrame, group_by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Per group and metric: n_runs and the mean and std over runs of final, peak, peak_step."""
    per_run = per_run_summary(frame, metrics)
    keys = frame.groupby("group", sort=False)[group_by].first() if group_by else None
    out = []
    for (group, metric), rows in per_run.groupby(["group", "metric"], sort=False):
        row = {"group": group}
        if keys is not None:
            row.update(keys.loc[group].to_dict())
        row.update(metric=metric, n_runs=len(rows),
                   final_mean=rows["final"].mean(), final_std=rows["final"].std(),
                   peak_mean=rows["peak"].mean(), peak_std=rows["peak"].std(),
                   peak_step_mean=rows["peak_step"].mean(),
                   peak_step_std=rows["peak_step"].std())
        out.append(row)
    columns = ["group", *group_by, "metric", *SUMMARY_COLUMNS]
    return pd.DataFrame(out, columns=columns)


def _correlation_panels(frame: pd.DataFrame, prefix: str) -> tuple[list[tuple[str, str]], int]:
    sigs = F.signals(frame, prefix)
    stats = [s for s in F.STATS if any(correlation_key(s, g, prefix) in frame for g in sigs)]
    panels = [(f"{F.STATS[s]}: {g}", correlation_key(s, g, prefix)) for g in sigs for s in stats]
    if auroc_key(prefix) in frame:
        panels.append(("AUROC: content vs function words", auroc_key(prefix)))
    return panels, max(len(stats), 1)


def _probe_panels(frame: pd.DataFrame, families: dict[str, str]) -> list[tuple[str, str]]:
    panels = []
    for template, label in families.items():
        keys = F.family_keys(frame, template)
        panels += [(label if "{" not in template else f"{label}: {k.rsplit('/', 1)[-1]}", k)
                   for k in keys]
    return panels


def emergence_summary(runs: list[Run], frame: pd.DataFrame) -> pd.DataFrame:
    """Per group, gold signal and statistic (Spearman, partial Spearman): the peak, its step
    and the steps to half the peak (`normx_track.gold.emergence.curve_summary`), each as the
    mean over the group's runs with a 95 % t-interval; n counts the runs where it is finite."""
    group_of = frame.groupby("run", sort=False)["group"].first()
    rows = []
    for run in runs:
        for row in curve_table(run).to_dict("records"):
            rows.append({"group": group_of.get(run.name, "all runs"), **row})
    per_run = pd.DataFrame(rows, columns=["group", "signal", "statistic", *CURVE_STATS])
    out = []
    for (group, signal, stat), part in per_run.groupby(["group", "signal", "statistic"],
                                                       sort=False):
        row = {"group": group, "signal": signal, "statistic": stat}
        for name in CURVE_STATS:
            row.update({f"{name}_{k}": v for k, v in _mean_ci(part[name]).items()})
        out.append(row)
    return pd.DataFrame(out)


CURVE_STATS = ("peak", "peak_step", "half_life_steps")


def _mean_ci(values: pd.Series) -> dict[str, float]:
    """Mean, 95 % t-interval and n over the finite values (the interval needs n >= 2)."""
    x = values.to_numpy(np.float64)
    x = x[np.isfinite(x)]
    out = dict(mean=np.nan, ci_low=np.nan, ci_high=np.nan, n=len(x))
    if len(x):
        out["mean"] = float(x.mean())
    if len(x) >= 2:
        half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
        out.update(ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def build_sweep(runs: list[Run], group_by: list[str] | None = None, band: str = "std",
                log_steps: bool = False, metrics: list[str] | None = None
                ) -> tuple[dict[str, Figure | str], pd.DataFrame, pd.DataFrame, list[str]]:
    """(figures {name: Figure or skip reason}, summary table, the per-(run, step) frame,
    group labels). `metrics`: fnmatch patterns selecting the summary's metrics (default all)."""
    explicit = group_by is not None
    group_by = list(group_by) if explicit else default_group_keys(runs)
    for key in group_by:
        if all(run.setting(key) is None for run in runs):
            warnings.warn(f"--group-by {key}: neither an override nor a config key of any run",
                          RecordWarning)
    frame, labels = sweep_frame(runs, group_by)
    columns = metric_columns(frame)
    chosen = [c for c in columns if not metrics or any(fnmatch.fnmatch(c, p) for p in metrics)]
    # The table names the keys asked for, or by default those that differ between groups.
    table = summary_table(frame, group_by if explicit else varying_keys(runs, group_by), chosen)

    plans = {"correlations": _correlation_panels(frame, PREFIX),
             "output_correlations": _correlation_panels(frame, OUTPUT_PREFIX),
             "evidence": (_probe_panels(frame, F.EVIDENCE), 3),
             "faithfulness": (_probe_panels(frame, F.FAITHFULNESS), 3)}
    titles = {"correlations": "Embedding norm vs gold importance",
              "output_correlations": "Output-embedding norm vs gold importance (untied)",
              "evidence": "Evidence alignment", "faithfulness": "Faithfulness"}
    agg = aggregate(frame, [key for panels, _ in plans.values() for _, key in panels])
    figures: dict[str, Figure | str] = {}
    for name, (panels, ncols) in plans.items():
        if not panels:
            figures[name] = f"no {name.replace('_', ' ')} metrics in any run's metrics.jsonl"
            continue
        try:
            figures[name] = F.grouped_curves(agg, panels, labels, band, log_steps, ncols,
                                             titles[name])
        except F.Skipped as why:
            figures[name] = str(why)
    return figures, table, frame, labels


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with cli_warnings():
        try:
            runs = load_sweep(args.multirun_dir)
        except NoRecordError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        mixed = [] if args.mix_vocabularies else mixed_vocabularies(
            runs, args.group_by if args.group_by is not None else default_group_keys(runs))
        if mixed:
            print(f"error: {mixed[0]}: their curves would be averaged across corpora or "
                  "tokenizers; group by the data keys too (e.g. --group-by data.files seed) "
                  "or pass --mix-vocabularies", file=sys.stderr)
            return 2
        figures, table, frame, labels = build_sweep(runs, args.group_by, args.band,
                                                args.log_steps, args.metrics)
        out = args.out or args.multirun_dir / "analysis"
        out.mkdir(parents=True, exist_ok=True)
        print(f"{len(runs)} runs in {len(labels)} group(s): " + "; ".join(labels))
        F.write_all(figures, out, args.formats)
        table.to_csv(out / "summary.csv", index=False)
        print(f"wrote {out / 'summary.csv'} ({len(table)} rows)")
        curves = emergence_summary(runs, frame)
        curves.to_csv(out / "emergence_summary.csv", index=False)
        print(f"wrote {out / 'emergence_summary.csv'} ({len(curves)} rows)")
        problems = sum(len(run.problems) for run in runs)
        if problems:
            print(f"{problems} record problem(s); see the warnings above", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
