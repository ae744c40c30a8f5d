"""One self-contained HTML page for a run or a Hydra multirun: figures embedded as base64
PNG, the config, the top/bottom-norm tokens at chosen steps, and every record problem met.
It needs no network and no other file: open it offline, mail it, attach it to a ticket.

    python -m analysis.report RUN_OR_MULTIRUN_DIR [--out FILE] [--steps STEP ...] [--top-k K]
                              [--no-log-steps] [--group-by KEY ...] [--band std|minmax]

Step axes are log-scaled by default (most happens in the first hundred steps).
"""
from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import io
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.report",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path, metavar="RUN_OR_MULTIRUN_DIR",
                   help="a run dir (holding normx/) or a Hydra multirun dir")
    p.add_argument("--out", type=Path, help="the HTML file (default DIR/report.html)")
    p.add_argument("--steps", type=int, nargs="+", metavar="STEP",
                   help="steps for the token tables (default: first, middle, last snapshot; "
                        "a step without a snapshot shows the nearest one)")
    p.add_argument("--top-k", type=int, default=15, help="tokens per table (default 15)")
    p.add_argument("--log-steps", action=argparse.BooleanOptionalAction, default=True,
                   help="log-scaled (symlog) step axis (the default; --no-log-steps: linear)")
    p.add_argument("--group-by", nargs="+", metavar="KEY",
                   help="multirun only: keys to group runs by (see analysis.sweep)")
    p.add_argument("--band", choices=("std", "minmax"), default="std",
                   help="multirun only: spread over seeds (default std)")
    return p


if __name__ == "__main__":  # --help and a bad option answer before the imports below
    parser().parse_args()

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from normx_track import keys as K  # noqa: E402
from normx_track.keys import auroc_key, correlation_key  # noqa: E402

from . import robustness  # noqa: E402
from .figures import Skipped, layerwise_table, random_ap_at  # noqa: E402
from .curves import build_figures  # noqa: E402
from .load import (NoRecordError, RecordWarning, Run, cli_warnings, has_record, load_run,  # noqa: E402
                   load_sweep, no_record_message, unwritable)
from .sweep import build_sweep, emergence_summary  # noqa: E402

# The summary's metrics: plain and frequency-controlled Spearman side by side, the AUROC,
# accuracy and evidence AP (key prefixes, as the tracker and probes define them), and the
# losses with the steps they were measured at.
HEADLINE = (correlation_key("spearman", ""), correlation_key("partial_spearman", ""),
            auroc_key(), K.PAIR_ACCURACY, K.BLIMP_ACCURACY, K.EVIDENCE_AP.split("{")[0],
            *K.LOSS_KEYS)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}th{background:#f4f4f4}
td.t{text-align:left;font-family:ui-monospace,monospace;white-space:pre}
.problems{background:#fff4e5;border:1px solid #f0b060;padding:.5em 1em}
.skipped{color:#777}.tokens{display:flex;flex-wrap:wrap;gap:2em}
pre{background:#f7f7f7;padding:.5em;overflow:auto;max-height:40em;font-size:.8em}
"""


# -- pieces ------------------------------------------------------------------------------
def png_data_uri(fig: Figure, dpi: int = 100) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figures_html(figures: dict[str, Figure | str]) -> str:
    parts, skipped = [], []
    for name, fig in figures.items():
        if isinstance(fig, str):
            skipped.append(f"<li><b>{html.escape(name)}</b>: {html.escape(fig)}</li>")
            continue
        parts.append(f'<figure id="fig-{html.escape(name)}"><img alt="{html.escape(name)}" '
                     f'src="{png_data_uri(fig)}"><figcaption>{html.escape(name)}'
                     "</figcaption></figure>")
        plt.close(fig)
    if skipped:
        parts.append('<div class="skipped">Skipped (data absent from the record):<ul>'
                     + "".join(skipped) + "</ul></div>")
    return "\n".join(parts)


def table_html(frame: pd.DataFrame, text_columns: Iterable[str] = (), float_format: str = "{:.4g}"
               ) -> str:
    text_columns = set(text_columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, record):
            if isinstance(value, float):
                shown = float_format.format(value)
            else:
                shown = str(value)
            css = ' class="t"' if column in text_columns else ""
            cells.append(f"<td{css}>{html.escape(shown)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def choose_steps(available: Sequence[int], requested: Sequence[int] | None,
                 where: str = "") -> list[int]:
    """First, middle and last snapshot by default; a requested step without a snapshot is
    replaced by the nearest one (with a warning)."""
    available = sorted(available)
    if not available:
        return []
    if not requested:
        return sorted({available[0], available[len(available) // 2], available[-1]})
    chosen = []
    for step in requested:
        nearest = min(available, key=lambda s: (abs(s - step), s))
        if nearest != step:
            warnings.warn(f"{where}: no snapshot at step {step}; showing step {nearest}",
                          RecordWarning)
        if nearest not in chosen:
            chosen.append(nearest)
    return chosen


def tokens_html(run: Run, steps: Sequence[int] | None, top_k: int) -> str:
    from normx_track.tracker.snapshot import extreme_tokens

    counts = run.gold.get("counts")
    if counts is None:
        return "<p class='skipped'>No gold counts (gold.npz): token tables skipped.</p>"
    vocab = run.vocab
    note = "" if vocab is not None else \
        "<p class='skipped'>vocab.json missing or unreadable: token strings unknown.</p>"
    parts = []
    readable, _ = run.norms("input_norm")
    for step in choose_steps(readable, steps, str(run.record / "snapshots")):
        arrays = run.snapshot(step)
        if arrays is None:
            parts.append(f"<p class='skipped'>step {step}: snapshot unreadable.</p>")
            continue
        rows = pd.DataFrame(extreme_tokens(arrays["input_norm"], vocab or [], counts, top_k,
                                           run.min_count))
        tables = []
        for rank in ("top", "bottom"):
            part = rows[rows["rank"] == rank].drop(columns="rank") if not rows.empty else rows
            tables.append(f"<div><h4>{'highest' if rank == 'top' else 'lowest'} norms</h4>"
                          f"{table_html(part, text_columns=['token'])}</div>")
        parts.append(f"<h3>step {step}</h3><div class='tokens'>{''.join(tables)}</div>")
    if not parts:
        return "<p class='skipped'>No readable snapshots: token tables skipped.</p>"
    return (note + f"<p>Token types with count &ge; {run.min_count}, by input-embedding "
            "norm.</p>" + "\n".join(parts))


def emergence_html(run: Run, top_k: int, log_steps: bool = True) -> str:
    """Per-token emergence (analysis.emergence): when each type settles, in what order, and
    the norm dynamics by frequency bin."""
    from . import emergence

    tables, figures = emergence.build(run, log_steps=log_steps)
    parts = [figures_html(figures)]
    if "emergence" in tables:
        first, last = emergence.first_and_last(tables["emergence"], top_k)
        band = f"±{emergence.E.DEFAULT_BAND:g}"
        chance = int(tables["emergence"]["settles_by_chance"].sum())
        settling = tables["emergence_settling"]
        parts += [f"<p>A type settles at the first snapshot after which its norm percentile "
                  f"stays within {band} points of its final one. The null shuffles each "
                  f"type's snapshots ({emergence.E.DEFAULT_N_PERM} seeded draws): the "
                  "settling curve is read against the number of types that settle at each "
                  "snapshot by chance. No type settles at initialisation: the earliest is the "
                  "first snapshot after it, and settling there counts only when it beats the "
                  f"null (p &lt; {emergence.E.DEFAULT_ALPHA:g}); {chance} type(s) settle there "
                  "by chance and are left out.</p>",
                  "<h3>Types settling at each snapshot, against the null</h3>",
                  table_html(settling),
                  "<h3>Emergence order (Spearman of the settling step; 95 % bootstrap CI)</h3>",
                  table_html(tables["emergence_order"], text_columns=["statistic", "against"]),
                  "<h3>Settle first</h3>", table_html(first, text_columns=["token"]),
                  "<h3>Settle last</h3>", table_html(last, text_columns=["token"])]
    parts += ["<h3>Correlation curves: peak and decay</h3>",
              table_html(tables["emergence_curves"], text_columns=["signal", "statistic"])]
    return "".join(parts)


def information_gain_html(run: Run, steps: Sequence[int] | None) -> str:
    """Each chosen snapshot's input norms against information gain (colour: log count),
    over the token types the tracker correlates; the caption gives each panel's Spearman,
    the record's `normx/spearman/information_gain` recomputed from the snapshot."""
    from normx_track.gold.metrics import spearman

    ig, counts = run.gold.get("information_gain"), run.gold.get("counts")
    if ig is None or counts is None:
        return "<p class='skipped'>No information gain in gold.npz: scatter skipped.</p>"
    readable, _ = run.norms("input_norm")
    chosen = [(step, run.snapshot(step)) for step in choose_steps(readable, steps,
                                                                 str(run.record / "snapshots"))]
    chosen = [(step, arrays["input_norm"][:len(counts)]) for step, arrays in chosen if arrays]
    if not chosen:
        return "<p class='skipped'>No readable snapshots: scatter skipped.</p>"
    fig, axes = plt.subplots(1, len(chosen), figsize=(4 * len(chosen), 3.4), squeeze=False)
    captions = []
    for ax, (step, norms) in zip(axes[0], chosen):
        keep = (counts >= run.min_count) & np.isfinite(ig) & np.isfinite(norms)
        rho = spearman(norms[keep], ig[keep])
        ax.scatter(ig[keep], norms[keep], s=4, alpha=0.6, c=np.log(counts[keep]), cmap="viridis")
        ax.set(title=f"step {step}: Spearman {rho:.3f}", xlabel="information gain (nats)",
               ylabel="input-embedding norm")
        captions.append(f"step {step}: {rho:.4f}")
    fig.tight_layout()
    uri = png_data_uri(fig)
    plt.close(fig)
    return (f'<figure id="fig-norm_vs_information_gain"><img alt="norm vs information gain" '
            f'src="{uri}"><figcaption>Input-embedding norm against information gain, token '
            f'types with count &ge; {run.min_count} (colour: log count). Spearman: '
            f'{"; ".join(captions)}.</figcaption></figure>')


def problems_html(problems: Sequence[str]) -> str:
    if not problems:
        return ""
    items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
    return (f"<div class='problems' id='problems'><b>{len(problems)} record problem(s)</b> — "
            f"damaged parts of the record were skipped:<ul>{items}</ul></div>")


def page(title: str, body: str) -> str:
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Generated {stamp} by analysis.report.</p>"
            f"{body}</body></html>\n")


def _json_block(obj: Any) -> str:
    return f"<pre>{html.escape(json.dumps(obj, indent=1, default=str))}</pre>"


# -- reports -----------------------------------------------------------------------------
def robustness_html(run: Run) -> str:
    """Spearman and partial Spearman at each count cutoff, last and peak snapshot."""
    table = robustness.wide_table(robustness.min_count_table(run))
    if table.empty:
        return "<p class='skipped'>No readable snapshots or gold: cutoff table skipped.</p>"
    return (f"<p>Computed from the snapshots and gold.npz over the token types seen at least "
            f"min_count times (the run uses {run.min_count}); peak: the snapshot of the "
            "highest Spearman at the run's min_count. A correlation that holds only at low "
            "cutoffs comes from the rare tail.</p>"
            + table_html(table, text_columns=["signal", "snapshot", "statistic"],
                         float_format="{:.3f}"))


def layerwise_html(run: Run) -> str:
    """Evidence AP by layer at the last snapshot, a row per method (NormXLogit's logit lens
    from the embeddings, layer 0; the context-mixing methods from layer 1)."""
    try:
        step, table = layerwise_table(run.frame)
    except Skipped as why:
        return f"<p class='skipped'>{html.escape(str(why))}</p>"
    table = table.rename(columns=lambda l: "0 (emb)" if l == 0 else str(l))
    table.insert(0, "method", table.index)
    random = random_ap_at(run.frame, step)
    baseline = (f" The random ranking's AP at this step: {random:.3f}."
                if np.isfinite(random) else "")
    return (f"<p>Evidence AP by layer at step {step}.{baseline} For the context-mixing "
            "methods read AP, not DP: DP is the softmax mass on the cue, and a mixing weight "
            "lies in [0, 1], so its softmax stays near the uniform share whatever the "
            "ranking.</p>"
            + table_html(table, text_columns=["method"], float_format="{:.3f}"))


def run_report(run: Run, steps: Sequence[int] | None = None, top_k: int = 15,
               log_steps: bool = True) -> str:
    figures = figures_html(build_figures(run, log_steps))
    tokens = tokens_html(run, steps, top_k)
    frame = run.frame
    last = ""
    if not frame.empty:
        final = frame.iloc[-1]
        keys = [k for k in frame.columns if k.startswith(HEADLINE)]
        last = (f"<p>Last recorded step {int(final['step'])} "
                f"({len(frame)} snapshots recorded).</p>" +
                table_html(pd.DataFrame({"metric": keys, "value": [final[k] for k in keys]}),
                           text_columns=["metric"]))
    body = (problems_html(run.problems)
            + f"<p>Record: <code>{html.escape(str(run.record))}</code></p>"
            + f"<h2>Summary</h2>{last}"
            + f"<h2>Robustness: the count cutoff</h2>{robustness_html(run)}"
            + f"<h2>Figures</h2>{figures}"
            + f"<h2>Evidence alignment by layer</h2>{layerwise_html(run)}"
            + f"<h2>Norm against information gain</h2>{information_gain_html(run, steps)}"
            + "<h2>Emergence: when each token becomes important</h2>"
            + emergence_html(run, top_k, log_steps)
            + f"<h2>Top and bottom norm tokens</h2>{tokens}"
            + f"<h2>Config</h2>{_json_block(run.config)}"
            + "<details><summary>Full meta.json</summary>"
            + _json_block(run.meta) + "</details>")
    return page(f"normx-track report: {run.path}", body)


def sweep_report(runs: list[Run], root: Path, steps: Sequence[int] | None = None,
                 top_k: int = 15, log_steps: bool = True, group_by: list[str] | None = None,
                 band: str = "std") -> str:
    figures, table, frame, labels = build_sweep(runs, group_by, band, log_steps)
    curves = emergence_summary(runs, frame)
    headline = table[table["metric"].str.startswith(HEADLINE)]
    text = [c for c in table.columns if c not in
            ("n_runs", "final_mean", "final_std", "peak_mean", "peak_std", "peak_step_mean",
             "peak_step_std")]
    overrides = pd.DataFrame([{"run": r.name, "group": frame.loc[frame["run"] == r.name,
                                                                  "group"].iloc[0]
                               if (frame["run"] == r.name).any() else "",
                               "snapshots": len(r.frame),
                               "overrides": " ".join(f"{k}={v}" for k, v in r.overrides.items())}
                              for r in runs])
    per_run = "".join(
        f"<details><summary>{html.escape(r.name)}: top and bottom norm tokens</summary>"
        f"{tokens_html(r, steps, top_k)}</details>" for r in runs)
    problems = [p for r in runs for p in r.problems]
    body = (problems_html(problems)
            + f"<p>{len(runs)} runs in {len(labels)} group(s): "
            + html.escape("; ".join(labels)) + "</p>"
            + "<h2>Figures</h2>" + figures_html(figures)
            + "<h2>Summary (mean over each group's runs)</h2>"
            + table_html(headline, text_columns=text)
            + "<details><summary>All metrics</summary>" + table_html(table, text_columns=text)
            + "</details>"
            + "<h2>Emergence: peak and decay of each correlation (mean, 95 % CI over runs)"
            + "</h2>" + table_html(curves, text_columns=["group", "signal", "statistic"])
            + "<h2>Runs</h2>" + table_html(overrides, text_columns=["run", "group", "overrides"])
            + "<h2>Top and bottom norm tokens</h2>" + per_run
            + "<h2>Config (first run)</h2>" + _json_block(runs[0].config))
    return page(f"normx-track sweep report: {root}", body)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = args.out or args.path / "report.html"
    problem = unwritable(out.parent, default=args.out is None)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    with cli_warnings():
        try:
            if has_record(args.path):
                text = run_report(load_run(args.path), args.steps, args.top_k, args.log_steps)
            else:
                try:
                    runs = load_sweep(args.path)
                except NoRecordError:
                    raise NoRecordError(no_record_message(args.path)) from None
                text = sweep_report(runs, args.path, args.steps, args.top_k, args.log_steps,
                                    args.group_by, args.band)
        except NoRecordError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out} ({len(text) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
