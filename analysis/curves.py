"""Figures of one run's record.

    python -m analysis.curves RUN_DIR [--out DIR] [--no-log-steps] [--formats png svg]

Writes, as PNG and SVG (by default into RUN_DIR/figures), on a log step axis by default:
  correlations        norm vs each gold signal (Spearman, Pearson, partial), AUROC, and the
                      train/validation loss (when the record has it), per step
  frequency_control   per gold signal, plain Spearman beside partial Spearman | log frequency
  beyond_frequency    per gold signal, Spearman within log-frequency bins beside the partial
  frequency_deciles   mean norm per frequency decile (snapshots + gold counts)
  function_content    function vs content words (gold function_word labels)
  evidence_by_layer   evidence AP per layer and step, a heatmap per method
  layerwise_comparison  evidence AP by layer per method at the last snapshot, and the last
                      layer over training, beside the random baseline
  evidence            minimal-pair accuracy, evidence AP and DP per method
  faithfulness        comprehensiveness, sufficiency, leave-one-out Spearman per method
and min_count_robustness.csv: Spearman and partial Spearman at min_count 1, 5, 10, 20, 50,
100 for the last and the peak snapshot (analysis.robustness).
A figure whose data the record lacks is skipped, saying so. A damaged record's damaged
lines and snapshots are skipped, with a warning naming the file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

FIGURES = ("correlations", "frequency_control", "beyond_frequency", "frequency_deciles",
           "function_content", "evidence_by_layer", "layerwise_comparison", "evidence",
           "faithfulness")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.curves", description=__doc__.split(
        "\n\n")[0], epilog="Figures: " + ", ".join(FIGURES))
    p.add_argument("run_dir", type=Path, help="a run's output dir (holding normx/)")
    p.add_argument("--out", type=Path, help="where to write the figures (default RUN_DIR/figures)")
    p.add_argument("--log-steps", action=argparse.BooleanOptionalAction, default=True,
                   help="log-scaled step axis (symlog: step 0 stays visible; the default)")
    p.add_argument("--formats", nargs="+", default=["png", "svg"], metavar="FMT",
                   help="file formats (default: png svg)")
    return p


if __name__ == "__main__":  # --help and a bad option answer before the imports below
    parser().parse_args()

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from normx_track.gold.metrics import correlations as _correlations  # noqa: E402

from . import figures as F  # noqa: E402
from . import robustness  # noqa: E402
from .load import Run, cli_load_run, cli_warnings, unwritable  # noqa: E402


def build_figures(run: Run, log_steps: bool = True) -> dict[str, Figure | str]:
    """{name: Figure, or the reason it was skipped}, in FIGURES order."""
    frame = run.frame
    out: dict[str, Figure | str] = {}

    def attempt(name, make):
        try:
            out[name] = make()
        except F.Skipped as why:
            out[name] = str(why)

    if frame.empty:
        return {name: f"{run.record / 'metrics.jsonl'} has no readable rows" for name in FIGURES}
    attempt("correlations", lambda: F.correlations(frame, log_steps, title=f"{run.name}: "
                                                   "embedding norm vs gold importance"))
    gold = run.gold
    steps, norms = run.norms("input_norm")
    counts = gold.get("counts")
    attempt("frequency_control", lambda: F.frequency_control(
        frame, frequency_confound(gold, run.min_count), log_steps,
        title=f"{run.name}: what the norm knows beyond frequency"))
    attempt("beyond_frequency", lambda: F.beyond_frequency(
        *robustness.beyond_frequency(run), frame, log_steps,
        title=f"{run.name}: Spearman within log-frequency bins (types with count >= "
              f"{run.min_count})"))
    attempt("frequency_deciles", lambda: F.frequency_deciles(
        steps, norms, counts if counts is not None else [], log_steps=log_steps))
    attempt("function_content", lambda: F.function_content(
        steps, norms, gold.get("function_word"), counts if counts is not None else [],
        run.min_count, frame, log_steps))
    attempt("evidence_by_layer", lambda: F.evidence_by_layer(frame))
    attempt("layerwise_comparison", lambda: F.layerwise_comparison(
        frame, log_steps, title=f"{run.name}: evidence alignment by layer"))
    attempt("evidence", lambda: F.probe_curves(frame, F.EVIDENCE, log_steps,
                                               "Evidence alignment"))
    attempt("faithfulness", lambda: F.probe_curves(frame, F.FAITHFULNESS, log_steps,
                                                   "Faithfulness"))
    return out


def spearman_over_types(values, counts, min_count: int) -> float:
    return float(_correlations(values, counts, counts, min_count)["spearman"])


def frequency_confound(gold: dict, min_count: int) -> dict[str, float]:
    """Spearman of each gold signal with the counts, over the types the record correlates
    (count >= min_count): how much of the signal is frequency."""
    counts = gold.get("counts")
    if counts is None:
        return {}
    out = {}
    for name, values in gold.items():
        if name in ("counts", "function_word") or np.shape(values) != np.shape(counts):
            continue
        out[name] = spearman_over_types(values, counts, min_count)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with cli_warnings():
        run = cli_load_run(args.run_dir)
        if run is None:
            return 2
        out = args.out or args.run_dir / "figures"
        problem = unwritable(out, default=args.out is None)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        F.write_all(build_figures(run, args.log_steps), out, args.formats)
        table = robustness.min_count_table(run)
        if not table.empty:
            out.mkdir(parents=True, exist_ok=True)
            table.to_csv(out / "min_count_robustness.csv", index=False)
            print(f"wrote {out / 'min_count_robustness.csv'} ({len(table)} rows)")
        if run.problems:
            print(f"{len(run.problems)} record problem(s); see the warnings above",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
