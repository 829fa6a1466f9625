"""Validation curves of training runs: read them from CSVLogger logs, check convergence, plot.

A run converged when its last 20 % of validation epochs (``k = max(1, ceil(n / 5))`` of ``n``)
improved the primary validation metric of every task by less than 0.5 points: the improvement is
the best value over all ``n`` epochs minus the best over the first ``n − k``, in the metric's
better direction, in percentage points for fractions and in the metric's units otherwise. One
validation epoch says nothing about convergence, so such a run counts as not converged.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from tasknorm.io import atomic_write

Curve = dict[int, float]
"""Validation values of one metric by epoch (1-based: the epochs trained so far)."""

CONVERGENCE_POINTS = 0.5
"""A converged run improved by less than this over its last 20 % of validation epochs."""


def read_curves(log_dir: str | Path, metrics: Mapping[str, str]) -> dict[str, Curve]:
    """Each task's curve of ``val/<task>/<metric>`` (``metrics`` maps task → metric) from the
    ``metrics.csv`` a CSVLogger wrote to ``log_dir``."""
    return read_columns(log_dir, {task: f"val/{task}/{metric}" for task, metric in metrics.items()})


def read_columns(log_dir: str | Path, columns: Mapping[str, str]) -> dict[str, Curve]:
    """The curve of each logged column (``columns`` maps a key → a column of ``metrics.csv``,
    e.g. ``{"selection": "val/selection"}``) from the CSVLogger log in ``log_dir``."""
    path = Path(log_dir) / "metrics.csv"
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise FileNotFoundError(f"no validation curves: {path} does not exist (the run needs a "
                                "CSVLogger)") from None
    return {key: {int(row["epoch"]) + 1: float(row[column]) for row in rows if row.get(column)}
            for key, column in columns.items()}


def improvement(values: Sequence[float], higher_is_better: bool, scale: float = 1.0
                ) -> float | None:
    """How much the last 20 % of ``values`` (one per validation epoch, in order) improved on the
    best before them, times ``scale``; ``None`` for fewer than two values.

    Example:
        >>> improvement([0.5, 0.75, 0.875, 0.875, 0.9375], True, scale=100)  # last 1 of 5
        6.25
        >>> improvement([3.0, 2.0, 2.5], False)  # last 1 of 3, lower is better
        0.0
    """
    n = len(values)
    if n < 2:
        return None
    k = max(1, -(-n // 5))  # ceil(n / 5) in integers: 0.2 * 15 is 3.0000000000000004
    best = max if higher_is_better else min
    overall, before = best(values), best(values[: n - k])
    return scale * (overall - before if higher_is_better else before - overall)


def convergence(curves: Mapping[str, Curve], higher_is_better: Mapping[str, bool],
                fractions: Mapping[str, bool]) -> tuple[bool, dict[str, float | None]]:
    """Whether a run converged (every task improved by less than :data:`CONVERGENCE_POINTS` over
    its last 20 % of validation epochs) and each task's improvement (fractions in points)."""
    gains = {task: improvement([curve[e] for e in sorted(curve)], higher_is_better[task],
                               100.0 if fractions[task] else 1.0)
             for task, curve in curves.items()}
    converged = all(g is not None and g < CONVERGENCE_POINTS for g in gains.values())
    return converged, gains


def line_styles(count: int) -> list[tuple[str, str]]:
    """``count`` (colour, line style) pairs, distinct for up to 80 lines: the 20 colours of
    matplotlib's ``tab20`` with a solid line, then dashed, dotted and dash-dotted."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    colours = [to_hex(c) for c in colormaps["tab20"].colors]
    dashes = ("-", "--", ":", "-.")
    return [(colours[i % len(colours)], dashes[i // len(colours) % len(dashes)])
            for i in range(count)]


def plot_curves(runs: Mapping[str, Sequence[Mapping[str, Curve]]], ylabels: Mapping[str, str],
                scales: Mapping[str, float], path: str | Path) -> Path:
    """Save one panel per task with one line per entry of ``runs`` (label → its runs' curves):
    the mean over runs at each epoch and a light min–max band. ``ylabels`` and ``scales`` (e.g.
    100 for fractions in percent) are per task. Each line has its own colour and style
    (:func:`line_styles`) and the legend sits below the panels, so a comparison of many rows
    stays readable; points are marked only on curves of at most 20 epochs."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    tasks = list(ylabels)
    columns = min(4, len(runs))
    legend_rows = -(-len(runs) // columns)
    fig = Figure(figsize=(4 * len(tasks), 3 + 0.22 * legend_rows), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    styles = line_styles(len(runs))
    for ax, task in zip(axes, tasks, strict=True):
        for (label, curves), (colour, dash) in zip(runs.items(), styles, strict=True):
            by_epoch: dict[int, list[float]] = {}
            for curve in curves:
                for epoch, value in curve[task].items():
                    by_epoch.setdefault(epoch, []).append(value * scales[task])
            epochs = sorted(by_epoch)
            ax.plot(epochs, [statistics.fmean(by_epoch[e]) for e in epochs], color=colour,
                    linestyle=dash, marker="." if len(epochs) <= 20 else None, label=label)
            ax.fill_between(epochs, [min(by_epoch[e]) for e in epochs],
                            [max(by_epoch[e]) for e in epochs], color=colour, alpha=0.2,
                            linewidth=0)
        ax.set(title=task, xlabel="epoch", ylabel=ylabels[task])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=columns,
               fontsize=8, frameon=False)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
