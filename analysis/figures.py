"""Plot functions: each takes DataFrames/arrays and returns a matplotlib Figure (Agg backend),
or raises `Skipped` saying which data is absent. Every plotted line carries the metric key
it shows as its gid (`line.get_gid()`), every heatmap image its method, so the figures can
be checked against the record they were drawn from."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from normx_track import keys as K  # noqa: E402
from normx_track.gold.metrics import norm_statistics  # noqa: E402
from normx_track.keys import (OUTPUT_PREFIX, PREFIX, auroc_key,  # noqa: E402
                                  correlation_key)

STATS = {"spearman": "Spearman", "pearson": "Pearson",
         "partial_spearman": "partial Spearman (| log freq)"}
# Probe keys (templates with {method}/{uid} for families of keys), as the probes define them.
EVIDENCE = {K.PAIR_ACCURACY: "minimal-pair accuracy (whole-word log-probability)",
            K.PAIR_ACCURACY_BY_UID: "minimal-pair accuracy by paradigm (UID)",
            K.BLIMP_ACCURACY: "BLiMP accuracy (whole sentence)",
            K.BLIMP_ACCURACY_BY_UID: "BLiMP accuracy by paradigm (UID)",
            K.EVIDENCE_AP: "evidence AP", K.EVIDENCE_DP: "evidence DP"}
FAITHFULNESS = {K.COMPREHENSIVENESS: "comprehensiveness (higher = more faithful)",
                K.SUFFICIENCY: "sufficiency (lower = more faithful)",
                K.LOO_SPEARMAN: "Spearman with leave-one-out"}
# The y-axis label of each probe key family (every panel names its unit).
YLABELS = {K.PAIR_ACCURACY: "accuracy", K.PAIR_ACCURACY_BY_UID: "accuracy",
           K.BLIMP_ACCURACY: "accuracy", K.BLIMP_ACCURACY_BY_UID: "accuracy",
           K.EVIDENCE_AP: "average precision of the cue",
           K.EVIDENCE_DP: "softmax mass on the cue",
           K.COMPREHENSIVENESS: "drop in p(target)", K.SUFFICIENCY: "drop in p(target)",
           K.LOO_SPEARMAN: "Spearman"}
LOSS_LABELS = {K.TRAIN_LOSS: "train loss", K.VAL_LOSS: "validation loss"}
MAX_INSIDE_LEGEND = 4  # more entries than this go beside the axes, not over the curves
_BY_LAYER = re.compile("^" + re.escape(K.EVIDENCE_AP_BY_LAYER.split("{")[0])
                       + r"(.+)/layer_(\d+)$")


class Skipped(Exception):
    """The data a figure needs is absent from the record (the message says which)."""


# -- what the record holds ---------------------------------------------------------------
def signals(frame: pd.DataFrame, prefix: str = PREFIX) -> list[str]:
    """Gold signals with a correlation column (any statistic) under `prefix`."""
    found: dict[str, None] = {}
    for column in frame.columns:
        for stat in STATS:
            head = correlation_key(stat, "", prefix)
            if column.startswith(head):
                found[column[len(head):]] = None
    return list(found)


def family_keys(frame: pd.DataFrame, template: str) -> list[str]:
    """The recorded keys of a probe key template: the key itself when it is a plain key,
    else one per method/UID (``normx/evidence_ap/{method}``), the random baselines last."""
    if "{" not in template:
        return [template] if template in frame else []
    head = template.split("{")[0]
    names = [c[len(head):] for c in frame.columns
             if c.startswith(head) and "/" not in c[len(head):]]
    return [head + m for m in sorted(names, key=lambda m: (m.startswith("random"), m))]


def layer_matrix(frame: pd.DataFrame) -> dict[str, tuple[list[int], np.ndarray]]:
    """{method: (layers, AP array [n_layers, n_steps])} from the per-layer evidence keys."""
    found: dict[str, dict[int, str]] = {}
    for column in frame.columns:
        match = _BY_LAYER.match(column)
        if match:
            found.setdefault(match.group(1), {})[int(match.group(2))] = column
    out = {}
    for method in sorted(found, key=lambda m: (m == "random", m)):
        layers = sorted(found[method])
        out[method] = (layers, np.stack([frame[found[method][l]].to_numpy(np.float64)
                                         for l in layers]))
    return out


# -- helpers -----------------------------------------------------------------------------
def _axes(n: int, ncols: int = 3, width: float = 4.2, height: float = 3.2):
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _step_axis(ax, log_steps: bool, label: str = "step") -> None:
    """Call after plotting: on a log axis the limits leave a marker's room at both ends."""
    if log_steps:
        ax.set_xscale("symlog", linthresh=1)  # step 0 (the initialisation) stays visible
        low, high = ax.dataLim.intervalx
        if np.isfinite([low, high]).all() and high >= low >= 0:
            ax.set_xlim(-0.3 if low < 1 else low / 1.3, max(high * 1.3, 1.0))
    ax.set_xlabel(f"{label} (log)" if log_steps else label)
    ax.grid(True, alpha=0.3)


def _colors(n: int, cmap: str = "tab10") -> list:
    """n colours: tab10 up to 10, tab20 up to 20 (each distinct), a sampled continuous map
    beyond; a sequential ``cmap`` is sampled evenly."""
    if cmap.startswith("tab"):
        if n <= 10:
            return [plt.get_cmap("tab10")(i) for i in range(n)]
        if n <= 20:  # tab20's dark shades first (tab10's hues), then the light ones
            cm = plt.get_cmap("tab20")
            return [cm(2 * i if i < 10 else 2 * (i - 10) + 1) for i in range(n)]
        cmap = "turbo"
    cm = plt.get_cmap(cmap)
    return [cm(x) for x in np.linspace(0.05, 0.95, max(n, 1))]


def _legend(ax, n_entries: int | None = None, fontsize: str = "small") -> None:
    """A legend inside the axes when it is short, beside them (right) when it would cover
    the curves; constrained layout makes room for it."""
    handles, _ = ax.get_legend_handles_labels()
    n = len(handles) if n_entries is None else n_entries
    if n == 0:
        return
    if n <= MAX_INSIDE_LEGEND:
        ax.legend(fontsize=fontsize)
    else:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0, ncols=1 if n <= 20 else 2)


def _figure_legend(fig, axes) -> None:
    """One legend beside the whole figure, each label once (panels sharing their series)."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right upper",
                   fontsize="x-small")


def loss_keys(frame: pd.DataFrame) -> list[str]:
    """The loss columns a record holds with at least one finite value (older records have
    none: the loss panel is left out)."""
    return [k for k in K.LOSS_KEYS if k in frame and np.isfinite(_column(frame, k)).any()]


def loss_points(frame: pd.DataFrame, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) at the steps each loss was measured at (``<key>_step``; the row's
    step where a record lacks it), each measurement once."""
    step_key = K.loss_step_key(key)
    steps = _column(frame, step_key) if step_key in frame else _column(frame, "step")
    losses = _column(frame, key)
    ok = np.isfinite(steps) & np.isfinite(losses)
    steps, first = np.unique(steps[ok], return_index=True)
    return steps, losses[ok][first]


def loss_panel(ax, frame: pd.DataFrame, log_steps: bool) -> None:
    """Train and validation loss against step, on the same step axis as the metrics."""
    for key, color in zip(loss_keys(frame), ("tab:gray", "k")):
        steps, losses = loss_points(frame, key)
        ax.plot(steps, losses, marker=".", color=color, label=LOSS_LABELS[key], gid=key)
    ax.set_title("Loss")
    ax.set_ylabel("cross-entropy (nats)")
    _step_axis(ax, log_steps)
    _legend(ax)


def _column(frame: pd.DataFrame, key: str) -> np.ndarray:
    return frame[key].to_numpy(np.float64)


def save(fig: Figure, out_dir: str | Path, name: str,
         formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def write_all(figures: dict[str, Figure | str], out_dir: str | Path,
              formats: Sequence[str]) -> None:
    """Save each figure (then close it) and say so; a string is why it was skipped."""
    for name, fig in figures.items():
        if isinstance(fig, str):
            print(f"skipped {name}: {fig}")
            continue
        paths = save(fig, out_dir, name, formats)
        plt.close(fig)
        print("wrote " + ", ".join(str(p) for p in paths))


# -- one run -----------------------------------------------------------------------------
def correlations(frame: pd.DataFrame, log_steps: bool = False, title: str = "") -> Figure:
    """Correlation of the norms with each gold signal against step: a panel per statistic,
    a line per signal (input norms solid, output norms dashed when untied), and the
    function-word AUROC when recorded."""
    inputs, outputs = signals(frame), signals(frame, OUTPUT_PREFIX)
    stats = [s for s in STATS if any(correlation_key(s, g) in frame for g in inputs)
             or any(correlation_key(s, g, OUTPUT_PREFIX) in frame for g in outputs)]
    aurocs = [k for k in (auroc_key(), auroc_key(OUTPUT_PREFIX)) if k in frame]
    if not stats and not aurocs:
        raise Skipped("no normx/<statistic>/<signal> correlation columns in metrics.jsonl")
    losses = bool(loss_keys(frame))
    n_panels = len(stats) + bool(aurocs) + losses
    fig, axes = _axes(n_panels, ncols=3 if n_panels in (5, 6) else 4)
    names = list(dict.fromkeys(inputs + outputs))
    color = dict(zip(names, _colors(len(names))))
    steps = _column(frame, "step")
    for ax, stat in zip(axes, stats):
        for prefix, style, tag, sigs in ((PREFIX, "-", "", inputs),
                                         (OUTPUT_PREFIX, "--", "output: ", outputs)):
            for sig in sigs:
                key = correlation_key(stat, sig, prefix)
                if key in frame:
                    ax.plot(steps, _column(frame, key), style, marker=".", color=color[sig],
                            label=f"{tag}{sig}", gid=key)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(STATS[stat])
        ax.set_ylabel("correlation with norm")
        _step_axis(ax, log_steps)
    if aurocs:
        ax = axes[len(stats)]
        for key in aurocs:
            output = key.startswith(OUTPUT_PREFIX)
            ax.plot(steps, _column(frame, key), "--" if output else "-", marker=".",
                    color="k", label="output norm" if output else "input norm",
                    gid=key)
        ax.axhline(0.5, color="0.6", lw=0.8)
        ax.set_title("AUROC: content vs function words")
        ax.set_ylabel("AUROC")
        _step_axis(ax, log_steps)
        _legend(ax)
    if losses:
        loss_panel(axes[-1], frame, log_steps)
    if stats:
        _legend(axes[0])
    fig.suptitle(title or "Embedding norm vs gold importance")
    return fig


def frequency_control(frame: pd.DataFrame, confound: dict[str, float] | None = None,
                      log_steps: bool = False, title: str = "") -> Figure:
    """A panel per gold signal: the plain Spearman of the norm with it (solid) beside the
    partial Spearman controlling for log frequency (dashed). ``confound``: the Spearman of
    each signal with the token counts (from gold.npz), shown in the panel title: near +-1,
    the plain Spearman mostly measures frequency and the partial one is what the norm
    knows beyond it."""
    pairs = [s for s in signals(frame) if correlation_key("spearman", s) in frame
             and correlation_key("partial_spearman", s) in frame]
    if not pairs:
        raise Skipped("no normx/spearman/<signal> with normx/partial_spearman/<signal> "
                      "columns in metrics.jsonl")
    fig, axes = _axes(len(pairs), ncols=3)
    steps = _column(frame, "step")
    for ax, sig, color in zip(axes, pairs, _colors(len(pairs))):
        for stat, style, label in (("spearman", "-", "Spearman"),
                                   ("partial_spearman", "--", "partial | log freq")):
            key = correlation_key(stat, sig)
            ax.plot(steps, _column(frame, key), style, marker=".", color=color, label=label,
                    gid=key)
        if not np.isfinite(_column(frame, correlation_key("partial_spearman", sig))).any():
            ax.text(0.5, 0.5, "partial undefined: the signal is\na function of frequency",
                    ha="center", va="center", transform=ax.transAxes, color="0.4",
                    fontsize="small")
        ax.axhline(0, color="0.6", lw=0.8)
        rho = (confound or {}).get(sig)
        ax.set_title(sig + (f"\n(Spearman of signal with frequency {rho:+.2f})"
                            if rho is not None and np.isfinite(rho) else ""), fontsize="medium")
        ax.set_ylabel("correlation with norm")
        _step_axis(ax, log_steps)
        ax.legend(fontsize="small")
    fig.suptitle(title or "Plain vs frequency-controlled correlation, per gold signal")
    return fig


def beyond_frequency(steps: Sequence[int], binned: dict[str, np.ndarray], labels: Sequence[str],
                     frame: pd.DataFrame | None = None, log_steps: bool = False,
                     title: str = "") -> Figure:
    """A panel per gold signal: the Spearman of the norm with it inside each log-frequency
    bin (a line per bin, rare to frequent), beside the recorded partial Spearman | log
    frequency (black, dashed) and plain Spearman (grey) over all the types."""
    binned = {k: v for k, v in binned.items() if np.isfinite(v).any()}
    if len(steps) == 0 or not binned:
        raise Skipped("no snapshots with gold signals and enough types per frequency bin")
    fig, axes = _axes(len(binned), ncols=3, width=4.6)
    colors = _colors(len(labels), "viridis")
    for ax, (signal, matrix) in zip(axes, binned.items()):
        for b, (label, color) in enumerate(zip(labels, colors)):
            ax.plot(steps, matrix[:, b], marker=".", ms=3, color=color, lw=1.2,
                    label=f"within {label}", gid=f"{signal}|bin_{b}")
        for stat, style, color, label in (("partial_spearman", "--", "k",
                                           "partial | log freq (all types)"),
                                          ("spearman", "-", "0.6", "Spearman (all types)")):
            key = correlation_key(stat, signal)
            if frame is not None and key in frame:
                ax.plot(_column(frame, "step"), _column(frame, key), style, color=color,
                        lw=1.8, label=label, gid=key)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(signal, fontsize="medium")
        ax.set_ylabel("Spearman with norm")
        _step_axis(ax, log_steps)
    _figure_legend(fig, axes)
    fig.suptitle(title or "Beyond frequency: Spearman within log-frequency bins")
    return fig


def frequency_deciles(steps: Sequence[int], norms: np.ndarray, counts: np.ndarray,
                      n_buckets: int = 10, log_steps: bool = False, title: str = "") -> Figure:
    """Mean norm of the token types in each frequency decile against step. Deciles as in the
    record's `normx/norm/bucket_XX/mean` (seen types sorted by count, descending; 1 = most
    frequent), computed here from the snapshots and the gold counts."""
    counts = np.asarray(counts)
    if len(steps) == 0 or norms.size == 0:
        raise Skipped("no readable snapshots")
    if counts.size == 0 or not (counts > 0).any():
        raise Skipped("no gold counts (gold.npz) to group token types by frequency")
    vocab = len(counts)
    means = np.array([[norm_statistics(row[:vocab], counts, n_buckets)[f"bucket_{b:02d}/mean"]
                       for b in range(n_buckets)] for row in norms])
    seen = np.flatnonzero(counts > 0)
    groups = np.array_split(seen[np.argsort(-counts[seen], kind="stable")], n_buckets)
    fig, (ax,) = _axes(1, width=7.5, height=4.5)
    for b, (color, group) in enumerate(zip(_colors(n_buckets, "viridis"), groups)):
        span = (f"count {counts[group].max()}–{counts[group].min()}, {len(group)} types"
                if len(group) else "empty")
        ax.plot(steps, means[:, b], marker=".", color=color, gid=f"bucket_{b:02d}",
                label=f"decile {b + 1} ({span})")
    ax.set_ylabel("mean input-embedding norm")
    _step_axis(ax, log_steps)
    ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(title or "Norm trajectories by frequency decile (1 = most frequent)")
    return fig


def function_content(steps: Sequence[int], norms: np.ndarray, function_word: np.ndarray | None,
                     counts: np.ndarray, min_count: int = 1, frame: pd.DataFrame | None = None,
                     log_steps: bool = False, title: str = "") -> Figure:
    """Mean norm (band: interquartile range) of function vs content words with count >=
    min_count, against step; and the recorded AUROC beside it when present."""
    if function_word is None or not np.isfinite(function_word).any():
        raise Skipped("no function_word labels in gold.npz")
    if len(steps) == 0 or norms.size == 0:
        raise Skipped("no readable snapshots")
    counts = np.asarray(counts)
    vocab = len(counts)
    labelled = {"function words": (function_word == 1) & (counts >= min_count),
                "content words": (function_word == 0) & (counts >= min_count)}
    if not any(m.any() for m in labelled.values()):
        raise Skipped(f"no labelled function/content words with count >= {min_count}")
    auroc = frame is not None and auroc_key() in frame
    fig, axes = _axes(1 + auroc, ncols=2, width=5.5)
    ax = axes[0]
    for (label, mask), color in zip(labelled.items(), ("tab:red", "tab:blue")):
        if not mask.any():
            continue
        values = norms[:, :vocab][:, mask]
        with np.errstate(all="ignore"):
            mean = np.nanmean(values, axis=1)
            lo, hi = np.nanpercentile(values, [25, 75], axis=1)
        ax.plot(steps, mean, marker=".", color=color, gid=label,
                label=f"{label} ({int(mask.sum())} types)")
        ax.fill_between(steps, lo, hi, color=color, alpha=0.15, lw=0)
    ax.set_ylabel("input-embedding norm (mean, IQR band)")
    ax.set_title(f"Function vs content words (count >= {min_count})")
    _step_axis(ax, log_steps)
    ax.legend(fontsize="small")
    if auroc:
        ax = axes[1]
        ax.plot(_column(frame, "step"), _column(frame, auroc_key()), marker=".",
                color="k", gid=auroc_key())
        ax.axhline(0.5, color="0.6", lw=0.8)
        ax.set_ylabel("AUROC")
        ax.set_title("AUROC of the norm (content > function)")
        _step_axis(ax, log_steps)
    if title:
        fig.suptitle(title)
    return fig


def evidence_by_layer(frame: pd.DataFrame, title: str = "") -> Figure:
    """Evidence AP per layer (rows; 0 = embedding output) against snapshot (columns, one per
    recorded step, evenly spaced and labelled with the step), a heatmap per method."""
    matrices = layer_matrix(frame)
    if not matrices:
        raise Skipped("no normx/evidence_ap_by_layer/<method>/layer_NN columns in metrics.jsonl")
    steps = frame["step"].to_numpy()
    values = np.concatenate([m.ravel() for _, m in matrices.values()])
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig, axes = _axes(len(matrices), ncols=2, width=5.5, height=3.6)
    image = None
    for ax, (method, (layers, matrix)) in zip(axes, matrices.items()):
        image = ax.imshow(matrix, aspect="auto", origin="lower", interpolation="nearest",
                          cmap="magma", vmin=vmin, vmax=vmax)
        image.set_gid(method)
        ticks = (np.arange(len(steps)) if len(steps) <= 16 else
                 np.unique(np.linspace(0, len(steps) - 1, 12).round().astype(int)))
        ax.set_xticks(ticks, [str(steps[t]) for t in ticks], rotation=45, fontsize="small")
        ax.set_yticks(range(len(layers)),
                      [f"{l} (emb)" if l == 0 else str(l) for l in layers], fontsize="small")
        ax.set_xlabel("step (one column per snapshot)")
        ax.set_ylabel("layer")
        ax.set_title(method)
    fig.colorbar(image, ax=axes, label="evidence AP")
    fig.suptitle(title or "Evidence alignment (AP) by layer")
    return fig


def layerwise_table(frame: pd.DataFrame) -> tuple[int, pd.DataFrame]:
    """(step, table): evidence AP by layer at the last snapshot that recorded it, a row per
    method, a column per layer (NaN where a method has no such layer: the context-mixing
    methods start at layer 1, after the first block)."""
    return _layerwise_table(frame, layer_matrix(frame))


def _layerwise_table(frame: pd.DataFrame, matrices: dict[str, tuple[list[int], np.ndarray]]
                     ) -> tuple[int, pd.DataFrame]:
    if not matrices:
        raise Skipped("no normx/evidence_ap_by_layer/<method>/layer_NN columns in metrics.jsonl")
    recorded = np.any([np.isfinite(m).any(axis=0) for _, m in matrices.values()], axis=0)
    last = int(np.flatnonzero(recorded)[-1]) if recorded.any() else len(frame) - 1
    layers = sorted({l for ls, _ in matrices.values() for l in ls})
    rows = {method: {l: m[ls.index(l), last] if l in ls else np.nan for l in layers}
            for method, (ls, m) in matrices.items()}
    return int(frame["step"].iloc[last]), pd.DataFrame.from_dict(rows, orient="index")


def random_ap_at(frame: pd.DataFrame, step: int) -> float:
    """The random ranking's evidence AP recorded at `step` (NaN when it was not)."""
    key = K.EVIDENCE_AP.format(method="random")
    values = frame.loc[frame["step"] == step, key] if key in frame else pd.Series(dtype=float)
    return float(values.iloc[0]) if len(values) else float("nan")


def layerwise_comparison(frame: pd.DataFrame, log_steps: bool = True, title: str = "") -> Figure:
    """Evidence AP by layer for every method at the last snapshot (left), and each method's
    last layer over training (right), the random ranking's AP a grey dashed line in both:
    NormXLogit's logit lens beside the context-mixing methods."""
    matrices = layer_matrix(frame)
    step, table = _layerwise_table(frame, matrices)
    # The logit-lens methods (from layer 0) first.
    matrices = dict(sorted(matrices.items(), key=lambda kv: (kv[1][0][0] != 0, kv[0])))
    known = ("normxlogit", "logat", *K.CONTEXT_MIXING_METHODS)  # one colour a method, any run
    palette = _colors(len(known) + len(matrices))
    colors = [palette[known.index(m)] if m in known else palette[len(known) + i]
              for i, m in enumerate(matrices)]
    steps = _column(frame, "step")
    random_key = K.EVIDENCE_AP.format(method="random")
    fig, (by_layer, over_training) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for (method, (layers, matrix)), color in zip(matrices.items(), colors):
        row = table.loc[method, layers].to_numpy(np.float64)
        by_layer.plot(layers, row, marker="o", color=color, label=method, gid=method)
        key = K.EVIDENCE_AP_BY_LAYER.format(method=method, layer=layers[-1])
        ok = np.isfinite(matrix[-1])
        over_training.plot(steps[ok], matrix[-1][ok], marker=".", color=color,
                           label=f"{method} (layer {layers[-1]})", gid=key)
    if np.isfinite(level := random_ap_at(frame, step)):
        by_layer.axhline(level, color="0.5", ls="--", label="random", gid=random_key)
    if random_key in frame:
        values = _column(frame, random_key)
        ok = np.isfinite(values)
        over_training.plot(steps[ok], values[ok], "--", color="0.5", label="random",
                           gid=random_key)
    layers = list(table.columns)
    by_layer.set_xticks(layers, [f"{l}\n(emb)" if l == 0 else str(l) for l in layers])
    by_layer.set_xlabel("layer (the matrix or logit lens after it)")
    by_layer.set_ylabel("average precision of the cue")
    by_layer.set_title(f"By layer at step {step}")
    _legend(by_layer)
    over_training.set_ylabel("average precision of the cue")
    over_training.set_title("Last layer over training")
    _step_axis(over_training, log_steps)
    _legend(over_training)
    fig.suptitle(title or "Evidence alignment by layer: NormXLogit against context mixing")
    return fig


def probe_curves(frame: pd.DataFrame, families: dict[str, str], log_steps: bool = False,
                 title: str = "") -> Figure:
    """A panel per probe key family present (e.g. pair_accuracy, evidence_ap/<method>), a
    line per method, each method one colour in every panel and named once in a key above
    them; the random baselines grey (dashed, dotted, ...). A per-paradigm family (one key per
    UID, up to BLiMP's dozens) gets a full-width panel below, its legend beside it."""
    panels = [(label, YLABELS.get(template, ""), keys, "{uid}" in template)
              for template, label in families.items() if (keys := family_keys(frame, template))]
    if not panels:
        raise Skipped("none of " + ", ".join(t.split("{")[0].rstrip("/") for t in families)
                      + " in metrics.jsonl")
    panels.sort(key=lambda p: p[3])  # per-paradigm panels last (stable)
    fig, axes = _axes_with_wide(sum(not p[3] for p in panels), sum(p[3] for p in panels))
    steps = _column(frame, "step")
    methods = list(dict.fromkeys(k.rsplit("/", 1)[-1] for *_, keys, by_uid in panels
                                 if not by_uid for k in keys))
    real = [m for m in methods if not m.startswith("random")]
    style = {m: ("0.5", ("--", ":", "-.")[i % 3])
             for i, m in enumerate(m for m in methods if m.startswith("random"))}
    style.update({m: (c, "-") for m, c in zip(real, _colors(len(real)))})
    key_axes = []
    for ax, (label, ylabel, keys, by_uid) in zip(axes, panels):
        names = [k.rsplit("/", 1)[-1] for k in keys]
        own = dict(zip(names, ((c, "-") for c in _colors(len(names)))))  # distinct UIDs
        for key, method in zip(keys, names):
            color, line = (own if by_uid else style)[method]
            ax.plot(steps, _column(frame, key), line, marker=".", color=color, label=method,
                    gid=key)
        ax.set_title(textwrap.fill(label, 40), fontsize="medium")
        ax.set_ylabel(ylabel)
        _step_axis(ax, log_steps)
        if by_uid:
            _legend(ax)
        elif len(keys) > 1:
            key_axes.append(ax)
    if key_axes:  # one key for the method panels, above them, the title its heading
        seen: dict[str, object] = {}  # (a suptitle beside an "outside" legend overlaps it)
        for ax in key_axes:
            for handle, name in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(name, handle)
        fig.legend(list(seen.values()), list(seen), loc="outside upper center",
                   ncols=min(len(seen), 7), fontsize="small", title=title or None,
                   title_fontsize="large", frameon=False)
    elif title:
        fig.suptitle(title)
    return fig


def _axes_with_wide(n: int, n_wide: int, ncols: int = 3, width: float = 4.2,
                    height: float = 3.2):
    """n panels in a grid of ncols, then n_wide panels each the figure's width on a row of
    its own (constrained layout narrows them to make room for a legend beside them)."""
    ncols = max(1, min(ncols, n)) if not n_wide else ncols
    rows = -(-n // ncols) if n else 0
    fig = plt.figure(figsize=(width * ncols, height * (rows + n_wide)), layout="constrained")
    grid = fig.add_gridspec(rows + n_wide, ncols)
    axes = [fig.add_subplot(grid[i // ncols, i % ncols]) for i in range(n)]
    axes += [fig.add_subplot(grid[rows + i, :]) for i in range(n_wide)]
    return fig, axes


# -- sweeps ------------------------------------------------------------------------------
def metric_ylabel(key: str) -> str:
    """The unit of a recorded metric key, for a y-axis label."""
    for stat in STATS:
        if correlation_key(stat, "") in key or correlation_key(stat, "", OUTPUT_PREFIX) in key:
            return "correlation with norm"
    if "/auroc/" in key:
        return "AUROC"
    for template, label in YLABELS.items():
        head = template.split("{")[0]
        if key == template or ("{" in template and key.startswith(head)):
            return label
    return key.rsplit("/", 1)[-1].replace("_", " ")


def grouped_curves(agg: pd.DataFrame, panels: list[tuple[str, str]], labels: Sequence[str],
                   band: str = "std", log_steps: bool = False, ncols: int = 3,
                   title: str = "") -> Figure:
    """A panel per (title, metric key), a line per group: the mean over the group's runs at
    each step, with a band (±1 std, or min–max). `agg` has columns group, metric, step,
    mean, std, min, max, n (see `analysis.sweep.aggregate`). Lines have gid
    "<group>|<metric>"."""
    if not any((agg["metric"] == k).any() for _, k in panels):
        raise Skipped("none of the metrics has a finite value in any run")
    fig, axes = _axes(len(panels), ncols=ncols)
    color = dict(zip(labels, _colors(len(labels))))
    for ax, (panel_title, key) in zip(axes, panels):
        rows = agg[agg["metric"] == key]
        if rows.empty:  # keep the grid aligned; say why the panel is empty
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center",
                    transform=ax.transAxes, color="0.5")
        for label in labels:
            curve = rows[rows["group"] == label].sort_values("step")
            if curve.empty:
                continue
            steps, mean = curve["step"].to_numpy(), curve["mean"].to_numpy(np.float64)
            if band == "minmax":
                lo, hi = curve["min"].to_numpy(np.float64), curve["max"].to_numpy(np.float64)
            else:
                std = curve["std"].to_numpy(np.float64)
                lo, hi = mean - std, mean + std
            ax.plot(steps, mean, marker=".", color=color[label], gid=f"{label}|{key}",
                    label=f"{label} (n={int(curve['n'].max())})")
            ax.fill_between(steps, lo, hi, color=color[label], alpha=0.18, lw=0)
        ax.set_title(textwrap.fill(panel_title, 44), fontsize="medium")
        ax.set_ylabel(metric_ylabel(key))
        _step_axis(ax, log_steps)
    _legend(axes[0], fontsize="x-small")
    spread = "min–max" if band == "minmax" else "±1 std"
    fig.suptitle(f"{title} (mean over seeds, band {spread})" if title else
                 f"mean over seeds, band {spread}")
    return fig
