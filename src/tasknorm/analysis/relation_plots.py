"""Figures of task relationships: similarity matrices, dendrogram, similarity by layer, and the
gradient cosines recorded during training.

Like :mod:`tasknorm.analysis.plots`, every function reads a dict of
:func:`~tasknorm.analysis.analyze_gates` (or :func:`~tasknorm.analysis.analyze_gradients`) and
returns a ``matplotlib.figure.Figure``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from tasknorm.analysis.plots import task_fontsize

Report = dict[str, Any]
MANY_PAIRS = 6
"""Above this many task pairs, per-pair lines give way to the mean over pairs and its range."""


def plot_similarity(report: Report) -> Figure:
    """Network-level task × task gate cosine and active-set Jaccard, tasks in dendrogram order.
    With three tasks or more the colours span the off-diagonal values, so small differences
    between pairs show; the diagonal (1 by definition) is grey, as is NaN (no active channel in
    either task)."""
    tasks = report["tasks"]
    order = report["clustering"]["order"] if report["clustering"] else list(range(len(tasks)))
    names = [tasks[i] for i in order]
    similarity = report["similarity"]["network"]
    side = min(max(3.2, 0.16 * len(tasks) + 1.8), 10)
    figure = Figure(figsize=(2 * side + 1.4, side + 0.6), layout="constrained")
    axes = figure.subplots(1, 2)
    panels = [("cosine", "gate cosine"),
              ("jaccard", f"Jaccard of active sets (τ = {report['tau']:g})")]
    diagonal = np.eye(len(tasks), dtype=bool)
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = np.array(similarity[key], dtype=float)[np.ix_(order, order)]
        chance = np.array(similarity[f"{key}_chance"], dtype=float)[np.ix_(order, order)]
        off = np.ma.masked_invalid(np.where(diagonal, np.nan, values))
        low, high = (float(off.min()), float(off.max())) if off.count() else (0.0, 1.0)
        if len(tasks) < 3:  # a single pair: nothing to contrast, keep the absolute scale
            low, high = 0.0, 1.0
        elif high - low < 0.02:
            low, high = low - 0.01, high + 0.01
        image = ax.imshow(off, vmin=low, vmax=high, interpolation="nearest",
                          cmap=colormaps["viridis"].with_extremes(bad="0.85"))
        level = float(_column_stats(chance[~diagonal][:, None])[1][0])
        ax.set_title(f"{title}\nchance ≈ {level:.2f}", fontsize=10, loc="left")
        ticks = range(len(names))
        size = task_fontsize(len(tasks))
        ax.set_xticks(ticks)
        ax.set_xticklabels(names, rotation=90 if len(tasks) > 6 else 0, fontsize=size)
        ax.set_yticks(ticks)
        ax.set_yticklabels(names, fontsize=size)
        if len(tasks) <= 12:
            middle = (low + high) / 2
            for (row, col), value in np.ndenumerate(values):
                dark = row == col or np.isnan(value) or value > middle
                ax.text(col, row, "–" if np.isnan(value) else f"{value:.2f}", ha="center",
                        va="center", fontsize=8, color="black" if dark else "white")
        figure.colorbar(image, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)
    return figure


def plot_dendrogram(report: Report) -> Figure:
    """The hierarchical clustering of the tasks (scipy ``dendrogram``), leaves labelled."""
    from scipy.cluster.hierarchy import dendrogram

    tasks, clustering = report["tasks"], report["clustering"]
    figure = Figure(figsize=(8, min(max(2.5, 0.2 * len(tasks) + 1.2), 12)), layout="constrained")
    ax = figure.subplots()
    dendrogram(np.array(clustering["linkage"]), labels=tasks, orientation="left", ax=ax,
               color_threshold=0, above_threshold_color="#08519c",
               leaf_font_size=task_fontsize(len(tasks)))
    ax.set_xlabel(f"distance = {clustering['measure']} ({clustering['linkage_method']} linkage)",
                  fontsize=9)
    ax.set_title("task clustering by gates", fontsize=10, loc="left")
    ax.tick_params(axis="x", labelsize=8)
    return figure


def plot_layer_similarity(report: Report) -> Figure:
    """Gate cosine and Jaccard of each task pair, layer by layer (input → output), with the
    chance level of each (dashed); with many pairs the mean over pairs and its min–max range."""
    layers = report["layers"]
    per_layer = report["similarity"]["layers"]
    x = np.arange(len(layers))
    figure = Figure(figsize=(min(max(7.0, 2.5 + 0.35 * len(layers)), 20), 4),
                    layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    pairs = list(per_layer[layers[0]["name"]]["cosine"])
    for ax, key, title in ((axes[0], "cosine", "gate cosine"),
                           (axes[1], "jaccard", f"Jaccard of active sets (τ = {report['tau']:g})")):
        values, chance = (np.array([[_value(per_layer[layer["name"]][k][p]) for layer in layers]
                                    for p in pairs]) for k in (key, f"{key}_chance"))
        if len(pairs) <= MANY_PAIRS:
            for pair, row, level in zip(pairs, values, chance, strict=True):
                (line,) = ax.plot(x, row, marker="o", label=pair)
                ax.plot(x, level, linestyle="--", linewidth=1, color=line.get_color())
        else:
            low, mean, high = _column_stats(values)
            ax.fill_between(x, low, high, color="#c6dbef", label="range over pairs")
            ax.plot(x, mean, color="#08519c", marker="o", label=f"mean of {len(pairs)} pairs")
            ax.plot(x, _column_stats(chance)[1], color="#08519c", linestyle="--", linewidth=1)
        ax.plot([], [], linestyle="--", linewidth=1, color="0.4", label="chance level")
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xticks(x)
        ax.set_xticklabels([layer["short_name"] for layer in layers],
                           rotation=45 if len(layers) > 2 else 0,
                           ha="right" if len(layers) > 2 else "center", fontsize=8)
        ax.set_xlabel("layer (input → output)", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="task pair" if len(pairs) <= MANY_PAIRS else None,
                  title_fontsize=8)
    axes[0].set_ylabel("similarity", fontsize=9)
    return figure


def plot_gradient_cosines(summary: Report) -> Figure:
    """Gradient cosines over training, their rolling standard deviation and their histogram
    (per pair up to ``MANY_PAIRS`` pairs, else the mean over pairs / all pairs pooled)."""
    steps = np.array(summary["steps"])
    pairs = summary["pairs"]
    figure = Figure(figsize=(13, 3.8), layout="constrained")
    trace, spread, histogram = figure.subplots(1, 3)
    few = len(pairs) <= MANY_PAIRS
    if few:
        for name, pair in pairs.items():
            trace.plot(steps, pair["cosine"], linewidth=0.8, label=name)
            spread.plot(steps, pair["rolling_std"], linewidth=1.2, label=name)
            histogram.hist(pair["cosine"], bins=np.linspace(-1, 1, 41), histtype="step",
                           linewidth=1.2, label=name)
    else:
        overall = summary["overall"]
        trace.plot(steps, overall["mean_cosine"], linewidth=0.8, color="#08519c",
                   label=f"mean of {len(pairs)} pairs")
        spread.plot(steps, overall["rolling_std"], linewidth=1.2, color="#08519c",
                    label="all pairs pooled")
        histogram.hist(np.concatenate([p["cosine"] for p in pairs.values()]),
                       bins=np.linspace(-1, 1, 41), color="#6baed6", label="all pairs pooled")
    trace.axhline(0, color="black", linewidth=0.6)
    trace.set_ylim(-1, 1)
    trace.set_title("cosine of task gradients", fontsize=10, loc="left")
    trace.set_ylabel("cosine", fontsize=9)
    spread.set_title(f"rolling std (window {summary['window']} measurements)", fontsize=10,
                     loc="left")
    spread.set_ylabel("std of cosine", fontsize=9)
    spread.set_ylim(bottom=0)
    for ax in (trace, spread):
        ax.set_xlabel(f"training step (measured every {summary['every_n_steps']})", fontsize=9)
    histogram.set_title(f"distribution (σ = {summary['overall']['std']:.3f})", fontsize=10,
                        loc="left")
    histogram.set_xlabel("cosine", fontsize=9)
    histogram.set_ylabel("measurements", fontsize=9)
    histogram.set_xlim(-1, 1)
    for ax in (trace, spread, histogram):
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="task pair" if few else None, title_fontsize=7)
    figure.suptitle(f"Task-gradient interaction on {summary['num_parameters']:,} shared "
                    f"parameters ({len(summary['parameters'])} tensors)", fontsize=11)
    return figure


def _column_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column, min, mean and max over the rows that are not NaN (NaN for a column that has
    none: a layer where no task has an active channel)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmin(values, 0), np.nanmean(values, 0), np.nanmax(values, 0)


def _value(value: float | None) -> float:
    return float("nan") if value is None else value
