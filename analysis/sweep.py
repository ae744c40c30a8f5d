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
Per run, "final" is the metric's last finite value, "peak" its maximum over steps, and the
peak step the first step reaching it; runs where the metric is never finite are not counted.
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import figures as F
from .load import (NoRecordError, RecordWarning, Run, cli_warnings, default_group_keys,
                   load_sweep, metric_columns, sweep_frame, varying_keys)

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
    stats = [s for s in F.STATS if any(f"{prefix}{s}/{g}" in frame for g in sigs)]
    panels = [(f"{F.STATS[s]}: {g}", f"{prefix}{s}/{g}") for g in sigs for s in stats]
    if f"{prefix}auroc/function_word" in frame:
        panels.append(("AUROC: content vs function words", f"{prefix}auroc/function_word"))
    return panels, max(len(stats), 1)


def _probe_panels(frame: pd.DataFrame, families: dict[str, str]) -> list[tuple[str, str]]:
    panels = []
    for family, label in families.items():
        if f"normx/{family}" in frame:
            panels.append((label, f"normx/{family}"))
        panels += [(f"{label}: {m}", f"normx/{family}/{m}") for m in F.methods(frame, family)]
    return panels


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

    plans = {"correlations": _correlation_panels(frame, "normx/"),
             "output_correlations": _correlation_panels(frame, "normx/output/"),
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with cli_warnings():
        try:
            runs = load_sweep(args.multirun_dir)
        except NoRecordError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        figures, table, _, labels = build_sweep(runs, args.group_by, args.band,
                                                args.log_steps, args.metrics)
        out = args.out or args.multirun_dir / "analysis"
        out.mkdir(parents=True, exist_ok=True)
        print(f"{len(runs)} runs in {len(labels)} group(s): " + "; ".join(labels))
        F.write_all(figures, out, args.formats)
        table.to_csv(out / "summary.csv", index=False)
        print(f"wrote {out / 'summary.csv'} ({len(table)} rows)")
        problems = sum(len(run.problems) for run in runs)
        if problems:
            print(f"{problems} record problem(s); see the warnings above", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
