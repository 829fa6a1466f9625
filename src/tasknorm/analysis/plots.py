"""Figures of the gates: gate matrices, capacity allocation, τ sweep, filter specialization.

Every function takes the dict of :func:`tasknorm.analysis.analyze_gates` and returns
``matplotlib.figure.Figure`` objects (no pyplot, so no global state and no display needed; save
with ``figure.savefig``). Layouts scale with the number of tasks and layers so that labels stay
legible from 2 to 40 tasks and from a few to a few thousand channels per layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

from tasknorm.analysis.specialization import channel_groups, channel_order

Report = dict[str, Any]
LAYERS_PER_FIGURE = 12
MAX_HEIGHT = 20.0
"""Height limit of one gate-matrix figure in inches; more layers go to further figures."""
MANY_TASKS = 10
"""Above this many tasks, per-task lines and legends give way to a mean and a range."""
CATEGORY_COLOURS = {"unused": "#bdbdbd", "shared": "#9ecae1", "shared_by_all": "#08519c"}


def task_fontsize(num_tasks: int) -> float:
    """Tick-label size for task names: smaller as tasks grow, never below 5 pt."""
    return 9.0 if num_tasks <= MANY_TASKS else 7.0 if num_tasks <= 20 else 5.0


def gate_norm(tau: float) -> Normalize:
    """Colour scale of gates on [0, 1], diverging at τ (active above, inactive below)."""
    if 0.0 < tau < 1.0:
        return TwoSlopeNorm(vcenter=tau, vmin=0.0, vmax=1.0)
    return Normalize(0.0, 1.0)


def plot_gate_matrices(report: Report) -> list[Figure]:
    """Heatmaps of each layer's gate matrix (tasks × channels), up to ``LAYERS_PER_FIGURE``
    layers per figure (fewer with many tasks, to stay within ``MAX_HEIGHT``). Channels are sorted
    by :func:`~tasknorm.analysis.channel_order`: shared, then each task's exclusive ones, then
    unused; red is above τ (active), blue below."""
    tasks, tau, layers = report["tasks"], report["tau"], report["layers"]
    panel_height = 0.6 + 0.11 * max(len(tasks), 4)
    rows_per_figure = max(1, int((MAX_HEIGHT - 0.8) // (panel_height + 0.45)))
    cols = 1 if len(layers) <= 4 else 2
    per_figure = min(LAYERS_PER_FIGURE, rows_per_figure * cols)
    count = -(-len(layers) // per_figure)
    figures = []
    for start in range(0, len(layers), per_figure):
        chunk = layers[start:start + per_figure]
        rows = -(-len(chunk) // cols)
        figure = Figure(figsize=(11 if cols == 2 else 9, 0.8 + rows * (panel_height + 0.45)),
                        layout="constrained")
        axes = figure.subplots(rows, cols, squeeze=False)
        norm = gate_norm(tau)
        image = None
        for i, ax in enumerate(axes.flat):
            if i >= len(chunk):
                ax.set_axis_off()
                continue
            layer = chunk[i]
            gates = torch.tensor(layer["gates"])
            order = channel_order(gates, tau)
            image = ax.imshow(gates[:, order].numpy(), aspect="auto", interpolation="nearest",
                              cmap="RdBu_r", norm=norm)
            blocks = _blocks(channel_groups(gates, tau)[order], len(tasks))
            for boundary in torch.nonzero(blocks[1:] != blocks[:-1]).flatten().tolist():
                ax.axvline(boundary + 0.5, color="black", linewidth=0.8)
            ax.set_title(f"{layer['short_name']}  ({layer['channels']} channels)", fontsize=9,
                         loc="left")
            ax.set_yticks(range(len(tasks)))
            ax.set_yticklabels(tasks if i % cols == 0 else [""] * len(tasks),
                               fontsize=task_fontsize(len(tasks)))
            ax.tick_params(axis="x", labelsize=7)
            if i >= len(chunk) - cols:
                ax.set_xlabel("channel, sorted into blocks: shared | exclusive to each task | "
                              "unused", fontsize=8)
        colorbar = figure.colorbar(image, ax=axes, shrink=0.9, aspect=30, pad=0.01)
        colorbar.set_label(f"gate sigmoid(γ)  (τ = {tau:g} at white)", fontsize=8)
        colorbar.ax.tick_params(labelsize=7)
        part = f" ({start // per_figure + 1}/{count})" if count > 1 else ""
        figure.suptitle(f"Gate matrices per layer{part}", fontsize=11)
        figures.append(figure)
    return figures


def plot_capacity(report: Report) -> Figure:
    """Two heatmaps, tasks × layers (+ the whole network): mean gate and active fraction."""
    tasks, layers = report["tasks"], report["layers"]
    capacity = report["capacity"]
    columns = [layer["short_name"] for layer in layers] + ["NETWORK"]
    width = min(max(6.5, 2.8 + 0.42 * len(columns)), 22)
    height = 1.2 + 0.16 * max(len(tasks), 3)
    figure = Figure(figsize=(width, 2 * height + 1.6), layout="constrained")
    axes = figure.subplots(2, 1)
    panels = [("mean_gate", "mean gate per task and layer (soft capacity)"),
              ("active_fraction", f"fraction of channels with gate > τ = {report['tau']:g} "
                                  "(hard capacity)")]
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = np.array([capacity[key][t] + [capacity["network"][key][t]] for t in tasks])
        image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis",
                          vmin=0.0, vmax=1.0)
        ax.axvline(len(columns) - 1.5, color="white", linewidth=3)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_yticks(range(len(tasks)))
        ax.set_yticklabels(tasks, fontsize=task_fontsize(len(tasks)))
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels(columns, rotation=45 if len(columns) > 6 else 0,
                           ha="right" if len(columns) > 6 else "center", fontsize=8)
        if values.size <= 120:
            _annotate(ax, values)
        figure.colorbar(image, ax=ax, shrink=0.9, pad=0.01).ax.tick_params(labelsize=7)
    axes[1].set_xlabel("layer (input → output), then the whole network", fontsize=9)
    return figure


def plot_tau_sweep(report: Report) -> Figure:
    """Sensitivity to τ over the whole network: each task's active fraction, and the fractions of
    unused / exclusive / shared channels."""
    tasks, sweep, tau = report["tasks"], report["tau_sweep"], report["tau"]
    taus = np.array(sweep["taus"])
    figure = Figure(figsize=(11, 4), layout="constrained")
    left, right = figure.subplots(1, 2)
    curves = np.array([sweep["active_fraction"][t] for t in tasks])
    if len(tasks) <= MANY_TASKS:
        for task, curve in zip(tasks, curves, strict=True):
            left.plot(taus, curve, marker=".", label=task)
        left.legend(fontsize=8, title="task", title_fontsize=8)
    else:
        for curve in curves:
            left.plot(taus, curve, color="0.7", linewidth=0.7)
        left.plot(taus, curves.mean(axis=0), color="black", linewidth=2,
                  label=f"mean of {len(tasks)} tasks (grey: each task)")
        left.legend(fontsize=8)
    left.set_title("active fraction per task", fontsize=10, loc="left")
    left.set_ylabel("fraction of all channels with gate > τ", fontsize=9)
    colours = [CATEGORY_COLOURS["unused"], "#fd8d3c", CATEGORY_COLOURS["shared"]]
    labels = ["unused (no task)", "exclusive (one task)", "shared (≥ 2 tasks)"]
    right.stackplot(taus, sweep["unused"], sweep["exclusive"], sweep["shared"], colors=colours,
                    labels=labels)
    right.set_title("channel categories", fontsize=10, loc="left")
    right.set_ylabel("fraction of all channels", fontsize=9)
    right.legend(fontsize=8, loc="center right")
    for ax in (left, right):
        ax.axvline(tau, color="black", linestyle="--", linewidth=1)
        right_side = tau < 0.8
        ax.text(tau + (0.01 if right_side else -0.01), 1.03, f"τ = {tau:g}",
                ha="left" if right_side else "right", fontsize=8)
        ax.set_xlabel("threshold τ", fontsize=9)
        ax.set_xlim(taus[0], taus[-1])
        ax.set_ylim(0, 1.08)
        ax.tick_params(labelsize=8)
    return figure


def plot_specialization(report: Report) -> Figure:
    """Per layer (and the network), the fraction of channels used by no task, exclusively by one
    task (coloured by task up to ``MANY_TASKS`` tasks), by several, and by all tasks."""
    tasks, layers = report["tasks"], report["layers"]
    spec = report["specialization"]
    rows = [(layer["short_name"], spec["layers"][layer["name"]]) for layer in layers]
    rows.append(("NETWORK", spec["network"]))
    figure = Figure(figsize=(10, 1.6 + 0.32 * len(rows)), layout="constrained")
    ax = figure.subplots()
    y = np.arange(len(rows))[::-1]
    per_task = len(tasks) <= MANY_TASKS
    segments: list[tuple[str, str, list[float]]] = [
        ("unused (no task)", CATEGORY_COLOURS["unused"],
         [r["unused"] / r["channels"] for _, r in rows])]
    if per_task:
        colours = _task_colours(len(tasks))
        for t, task in enumerate(tasks):
            segments.append((f"exclusive: {task}", colours[t],
                             [r["exclusive_per_task"][task] / r["channels"] for _, r in rows]))
    else:
        segments.append(("exclusive (one task)", "#fd8d3c",
                         [r["exclusive"] / r["channels"] for _, r in rows]))
    if len(tasks) > 2:
        segments.append((f"shared by 2–{len(tasks) - 1} tasks", CATEGORY_COLOURS["shared"],
                         [(r["shared"] - r["shared_by_all"]) / r["channels"] for _, r in rows]))
    if len(tasks) > 1:
        segments.append((f"shared by all {len(tasks)} tasks", CATEGORY_COLOURS["shared_by_all"],
                         [r["shared_by_all"] / r["channels"] for _, r in rows]))
    left = np.zeros(len(rows))
    for label, colour, widths in segments:
        ax.barh(y, widths, left=left, color=colour, label=label, edgecolor="white",
                linewidth=0.5)
        left += np.array(widths)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{name} ({r['channels']})" for name, r in rows], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"fraction of the layer's channels (τ = {report['tau']:g}); "
                  "layer (channels), input at the top", fontsize=9)
    ax.set_title("filter specialization", fontsize=10, loc="left")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.tick_params(axis="x", labelsize=8)
    return figure


def _blocks(groups: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """Blocks separated by lines in the gate heatmaps: shared, each task's exclusive channels
    (one block for all of them above ``MANY_TASKS`` tasks) and unused."""
    exclusive = groups if num_tasks <= MANY_TASKS else torch.zeros_like(groups)
    return torch.where(groups < 0, -1, torch.where(groups < num_tasks, exclusive, num_tasks))


def _task_colours(num_tasks: int) -> list[Any]:
    from matplotlib import colormaps

    return [colormaps["tab10"](i % 10) for i in range(num_tasks)]


def _annotate(ax: Any, values: np.ndarray) -> None:
    """Write each cell's value, in a colour readable on viridis."""
    for (row, col), value in np.ndenumerate(values):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="black" if value > 0.6 else "white")
