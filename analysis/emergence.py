"""When does each token become important? Per-token emergence from one run's record.

    python -m analysis.emergence RUN_DIR [--band 10] [--min-count N] [--out DIR] [--top 15]
                                 [--n-perm 200] [--seed 0]

Writes, by default into RUN_DIR/figures:
  emergence.csv         one row per token type (count >= min_count): id, token, count,
                        gold signals, settling step, whether it settles by chance, its
                        null share (settling_p), peak step, final norm
  emergence_settling.csv  per snapshot: types settling there, and by chance (the null:
                        trajectories with their snapshots shuffled; mean, 2.5-97.5 %)
  emergence_order.csv   Spearman of the settling step with log frequency and each gold
                        signal, partial Spearman controlling log frequency, 95 % bootstrap CIs
  emergence_curves.csv  per correlation curve: peak, peak step, steps to half the peak
  emergence_scatter     settling step against frequency, function words marked
  emergence_null        types settling at each snapshot against the null
  emergence_bins        snapshots x log-frequency bins: mean norm and mean percentile
Definitions: `normx_track.gold.emergence`. Reads only the record.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .cli import non_negative_int

# normx_track.gold.emergence's DEFAULT_BAND and DEFAULT_N_PERM, for the parser: importing
# it (scipy) would slow --help (tests/test_cli_startup.py checks that they agree).
_BAND, _N_PERM = 10.0, 200


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.emergence",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a run's output dir (holding normx/)")
    p.add_argument("--band", type=float, default=_BAND,
                   help="settled = within +-BAND percentile points of the final rank (10)")
    p.add_argument("--min-count", type=non_negative_int,
                   help="types seen at least this often (the run's)")
    p.add_argument("--out", type=Path, help="output dir (default RUN_DIR/figures)")
    p.add_argument("--top", type=int, default=15, help="tokens listed settling first/last")
    p.add_argument("--n-perm", type=int, default=_N_PERM,
                   help="shuffled draws of the settling null (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the null and the bootstrap (default 0)")
    p.add_argument("--formats", nargs="+", default=["png", "svg"], metavar="FMT")
    return p


if __name__ == "__main__":  # --help and a bad option answer before the imports below
    parser().parse_args()

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator  # noqa: E402

from normx_track.gold import emergence as E  # noqa: E402
from normx_track.keys import correlation_key  # noqa: E402

from . import figures as F  # noqa: E402
from .load import Run, cli_load_run, cli_warnings, unwritable  # noqa: E402

GOLD_COLUMNS = ("self_information", "information_gain", "information_gain_corrected")
ORDER_SIGNALS = ("information_gain", "information_gain_corrected")


def compute(run: Run, band: float = E.DEFAULT_BAND, min_count: int | None = None,
            n_perm: int = E.DEFAULT_N_PERM, seed: int = 0) -> E.Emergence:
    counts = run.gold.get("counts")
    if counts is None:
        raise F.Skipped(f"{run.record / 'gold.npz'}: no token counts")
    steps, norms = run.norms("input_norm")
    if len(steps) < 2:
        raise F.Skipped(f"{run.record}: {len(steps)} readable snapshot(s); emergence needs two")
    if norms.shape[1] != len(counts):
        raise F.Skipped(f"{run.record}: the snapshots hold {norms.shape[1]} norms but gold.npz "
                        f"counts {len(counts)} token types (another vocabulary?)")
    min_count = run.min_count if min_count is None else min_count
    frequent = counts >= min_count
    if not (frequent & np.isfinite(norms).all(axis=0)).any():
        raise F.Skipped(f"{run.record}: no token type seen >= {min_count} times has a finite "
                        f"input_norm in every snapshot ({int(frequent.sum())} are seen that "
                        "often: NaN or inf norms, did training diverge?)")
    return E.emergence(steps, norms, counts, min_count, band, n_perm, seed)


def token_table(run: Run, em: E.Emergence) -> pd.DataFrame:
    """One row per type: what `emergence.csv` holds."""
    gold, vocab = run.gold, run.vocab or []
    table = pd.DataFrame({
        "token_id": em.types,
        "token": [vocab[i] if i < len(vocab) else "" for i in em.types],
        "count": gold["counts"][em.types].astype(int)})
    for name in (*GOLD_COLUMNS, "function_word"):
        if name in gold:
            table[name] = np.asarray(gold[name], np.float64)[em.types]
    table["settling_step"] = em.settling_step
    table["settles_by_chance"] = em.settles_by_chance
    table["settling_p"] = em.settling_p
    table["peak_step"] = em.peak_step
    table["final_norm"] = em.norms[-1]
    return table


def order_table(run: Run, em: E.Emergence, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    gold = run.gold
    signals = {n: np.asarray(gold[n], np.float64)[em.types] for n in ORDER_SIGNALS if n in gold}
    return pd.DataFrame(E.order_statistics(em.settling_step, gold["counts"][em.types], signals,
                                           n_boot, seed))


def curve_table(run: Run) -> pd.DataFrame:
    """Per gold signal and statistic (Spearman, partial Spearman): peak, its step, and the
    steps to fall to half of it."""
    frame = run.frame
    rows = []
    for signal in F.signals(frame):
        for stat in ("spearman", "partial_spearman"):
            key = correlation_key(stat, signal)
            if key in frame:
                summary = E.curve_summary(frame["step"], frame[key])
                rows.append({"signal": signal, "statistic": stat, **summary})
    return pd.DataFrame(rows, columns=["signal", "statistic", "peak", "peak_step",
                                       "half_life_steps"])


def settling_table(em: E.Emergence) -> pd.DataFrame:
    """Per snapshot: types settling there, counted, and the null (what emergence_settling.csv
    holds)."""
    return pd.DataFrame(em.settling_table(), columns=["step", "settle", "settle_counted",
                                                       "null_mean", "null_low", "null_high"])


# -- figures ------------------------------------------------------------------------------
def _log_limits(values: np.ndarray, pad: float = 1.6) -> tuple[float, float]:
    """Axis limits around positive values on a log axis, a marker's room on each side."""
    return float(values.min()) / pad, float(values.max()) * pad


def _settling_ticks(ax, steps: np.ndarray, most: int = 10) -> None:
    """Settling steps are snapshot steps: label those when few, else plain log decades
    (100, not 10^2)."""
    if len(steps) <= most:
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_yticks(steps, [f"{s:g}" for s in steps])
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def scatter(table: pd.DataFrame, title: str = "") -> Figure:
    """Settling step against count (log), function words marked; the types that never
    settle, or settle by chance, are counted in the title. Settling steps are never 0 (the
    earliest is the first snapshot after initialisation), so both axes are plain log."""
    settled = table[np.isfinite(table["settling_step"])]
    if settled.empty:
        raise F.Skipped("no token type settles before the last snapshot (beyond chance)")
    fig, (ax,) = F._axes(1, width=7.0, height=4.5)
    function = settled.get("function_word", pd.Series(np.nan, index=settled.index)) == 1
    for mask, label, color in ((~function, "content / unlabelled", "tab:blue"),
                               (function, "function words", "tab:red")):
        part = settled[mask]
        if len(part):
            ax.scatter(part["count"], part["settling_step"], s=9, alpha=0.6, color=color,
                       label=f"{label} ({len(part)})", gid=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*_log_limits(settled["count"].to_numpy(np.float64)))
    ax.set_ylim(*_log_limits(settled["settling_step"].to_numpy(np.float64)))
    _settling_ticks(ax, np.unique(settled["settling_step"]))
    ax.set_xlabel("count in the statistics corpus (log)")
    ax.set_ylabel("settling step (log)")
    chance = int(table.get("settles_by_chance", pd.Series(False)).sum())
    never = int((~np.isfinite(table["settling_step"])).sum()) - chance
    ax.set_title(title or f"When each token type settles ({never} never settle, "
                          f"{chance} settle by chance)", fontsize="medium")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(True, alpha=0.3)
    return fig


def null_curve(settling: pd.DataFrame, log_steps: bool = True, title: str = "") -> Figure:
    """Types settling at each snapshot (the raw rule, and those counted), against the number
    the null settles there (mean, 2.5-97.5 % band over the shuffled draws)."""
    if len(settling) < 3:
        raise F.Skipped(f"{len(settling)} snapshot(s); settling needs at least three")
    fig, (ax,) = F._axes(1, width=7.0, height=4.2)
    settling = settling.iloc[:-1]  # nothing settles at the last snapshot, by definition
    steps = settling["step"].to_numpy(np.float64)
    ax.fill_between(steps, settling["null_low"], settling["null_high"], color="0.6",
                    alpha=0.3, lw=0, label="null 2.5–97.5 %")
    ax.plot(steps, settling["null_mean"], "--", color="0.4", marker=".", gid="null_mean",
            label="null: snapshots shuffled (mean)")
    ax.plot(steps, settling["settle"], color="tab:blue", marker="o", ms=4, gid="settle",
            label="settle here (raw rule)")
    ax.plot(steps, settling["settle_counted"], color="tab:red", marker=".", gid="settle_counted",
            label="counted (beyond chance at the start)")
    ax.set_ylabel("token types settling at the snapshot")
    F._step_axis(ax, log_steps)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(title or "Settling against its null", fontsize="medium")
    return fig


def frequency_heatmaps(em: E.Emergence, counts: np.ndarray, n_bins: int = 8,
                       title: str = "") -> Figure:
    """Snapshots (columns) x log-frequency bins (rows): mean norm, and mean percentile."""
    bin_counts = np.asarray(counts)[em.types]
    fig, axes = F._axes(2, ncols=2, width=6.0, height=3.8)
    for ax, (values, label) in zip(axes, ((em.norms, "mean norm"),
                                          (em.percentiles, "mean percentile rank"))):
        means, edges = E.frequency_bins(values, bin_counts, n_bins)
        image = ax.imshow(means.T, aspect="auto", origin="lower", interpolation="nearest",
                          cmap="viridis")
        image.set_gid(label)
        ticks = (np.arange(len(em.steps)) if len(em.steps) <= 12 else
                 np.unique(np.linspace(0, len(em.steps) - 1, 10).round().astype(int)))
        ax.set_xticks(ticks, [str(em.steps[t]) for t in ticks], rotation=45, fontsize="small")
        ax.set_yticks(range(n_bins), [f"{edges[b]:.0f}–{edges[b + 1]:.0f}"
                                      for b in range(n_bins)], fontsize="x-small")
        ax.set_xlabel("step (one column per snapshot)")
        ax.set_ylabel("count bin")
        ax.set_title(label)
        fig.colorbar(image, ax=ax, label=label)
    fig.suptitle(title or "Norm dynamics by frequency bin")
    return fig


FIGURES = ("emergence_scatter", "emergence_null", "emergence_bins")


def build(run: Run, band: float = E.DEFAULT_BAND, min_count: int | None = None,
          n_boot: int = 1000, n_perm: int = E.DEFAULT_N_PERM, seed: int = 0,
          log_steps: bool = True) -> tuple[dict[str, pd.DataFrame], dict[str, Figure | str]]:
    """({csv name: table}, {figure name: Figure or skip reason})."""
    try:
        em = compute(run, band, min_count, n_perm, seed)
    except F.Skipped as why:
        return {"emergence_curves": curve_table(run)}, {name: str(why) for name in FIGURES}
    table = token_table(run, em)
    settling = settling_table(em)
    tables = {"emergence": table, "emergence_order": order_table(run, em, n_boot, seed),
              "emergence_settling": settling, "emergence_curves": curve_table(run)}
    figures: dict[str, Figure | str] = {}
    for name, make in (("emergence_scatter", lambda: scatter(table)),
                       ("emergence_null", lambda: null_curve(settling, log_steps)),
                       ("emergence_bins", lambda: frequency_heatmaps(em, run.gold["counts"]))):
        try:
            figures[name] = make()
        except F.Skipped as why:
            figures[name] = str(why)
    return tables, figures


def first_and_last(table: pd.DataFrame, top: int = 15) -> tuple[pd.DataFrame, pd.DataFrame]:
    settled = table[np.isfinite(table["settling_step"])]
    order = settled.sort_values(["settling_step", "count"], ascending=[True, False])
    columns = ["token", "token_id", "count", "settling_step", "settling_p", "peak_step"]
    return order.head(top)[columns], order.tail(top)[::-1][columns]


def write(tables: dict[str, pd.DataFrame], figures: dict[str, Figure | str], out: Path,
          formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
        paths.append(out / f"{name}.csv")
        print(f"wrote {out / name}.csv ({len(table)} rows)")
    F.write_all(figures, out, formats)
    paths += [out / f"{n}.{fmt}" for n, f in figures.items() if not isinstance(f, str)
              for fmt in formats]
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not 0 < args.band <= 100:
        print(f"error: --band must be in (0, 100], got {args.band}", file=sys.stderr)
        return 2
    if args.n_perm < 1:
        print(f"error: --n-perm must be at least 1, got {args.n_perm}", file=sys.stderr)
        return 2
    with cli_warnings():
        run = cli_load_run(args.run_dir)
        if run is None:
            return 2
        out = args.out or args.run_dir / "figures"
        problem = unwritable(out, default=args.out is None)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        tables, figures = build(run, args.band, args.min_count, n_perm=args.n_perm,
                                seed=args.seed)
        write(tables, figures, out, args.formats)
        if "emergence" not in tables:  # why, in one line (the figures say it too)
            print(f"no emergence table: {next(iter(figures.values()))}", file=sys.stderr)
        if "emergence" in tables:
            first, last = first_and_last(tables["emergence"], args.top)
            print("settle first:", ", ".join(map(repr, first["token"])))
            print("settle last: ", ", ".join(map(repr, last["token"])))
            chance = int(tables["emergence"]["settles_by_chance"].sum())
            print(f"{chance} type(s) settle at the start by chance (not counted)")
            print(tables["emergence_order"].to_string(index=False))
        plt.close("all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
