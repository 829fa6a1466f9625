"""The HTML page of ``tasknorm simplify``: the chosen tree drawn over the tasks, next to the
per-stage gate agreement (cosine) matrices it was read from, and the tables of numbers."""

from __future__ import annotations

import base64
import io
from html import escape
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

DPI = 110


def leaf_order(levels: list[list[list[str]]]) -> list[str]:
    """The tasks ordered so that every group of every level is a contiguous run.

    Example:
        >>> leaf_order([[["a", "b", "c"]], [["a", "c"], ["b"]]])
        ['a', 'c', 'b']
    """
    order = [task for group in levels[0] for task in group]
    for level in levels[1:]:
        position = {task: index for index, task in enumerate(order)}
        groups = sorted(level, key=lambda group: min(position[t] for t in group))
        order = [task for group in groups for task in sorted(group, key=position.__getitem__)]
    return order


def plot_tree(levels: list[list[list[str]]]) -> Figure:
    """One row per level, one box per group spanning its tasks."""
    order = leaf_order(levels)
    column = {task: index for index, task in enumerate(order)}
    figure = Figure(figsize=(max(4.0, 0.45 * len(order) + 1), 0.6 * len(levels) + 1.6))
    ax = figure.subplots()
    for depth, level in enumerate(levels):
        for group in level:
            left = min(column[t] for t in group)
            ax.add_patch(Rectangle((left + 0.05, -depth - 0.4), len(group) - 0.1, 0.8,
                                       facecolor="#9ecae1", edgecolor="#3182bd"))
    ax.set_xlim(0, len(order))
    ax.set_ylim(-len(levels) + 0.4, 0.6)
    ax.set_xticks([i + 0.5 for i in range(len(order))], order, rotation=90)
    ax.set_yticks([-d for d in range(len(levels))], [f"stage {d + 1}" for d in range(len(levels))])
    ax.set_title("chosen tree: one box per group and stage")
    figure.tight_layout()
    return figure


def plot_agreement(cosines: list[list[list[float]]], tasks: list[str]) -> Figure:
    """The gate cosine matrix of every stage."""
    count = len(cosines)
    figure = Figure(figsize=(3.2 * count + 1, 3.6))
    axes = figure.subplots(1, count, squeeze=False)
    for index, (ax, matrix) in enumerate(zip(axes[0], cosines, strict=True)):
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"stage {index + 1}")
        ax.set_xticks(range(len(tasks)), tasks, rotation=90, fontsize=6)
        ax.set_yticks(range(len(tasks)), tasks, fontsize=6)
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="gate cosine")
    return figure


def render_report(report: dict[str, Any]) -> str:
    """The self-contained page (figures embedded as base64 PNG)."""
    figures = [plot_tree(report["tree"]["levels"]),
               plot_agreement(report["gate_cosine"], report["tasks"])]
    images = "".join(f'<p><img src="data:image/png;base64,{_png(f)}"></p>' for f in figures)
    numbers = [
        ("tree", report["tree"]["text"]), ("groups started from", report["merge"]),
        ("FLOPs per image, simplified ÷ original", f"{report['flops_ratio']:.3f}"),
        ("FLOPs per image ÷ hard sharing (simplified, original)",
         f"{report['flops_vs_hard']['simplified']:.3f}, {report['flops_vs_hard']['original']:.3f}"),
        ("parameters (simplified, original)",
         f"{report['params']['simplified']:,}, {report['params']['original']:,}"),
        ("latency ms per batch of "
         f"{report['latency_ms']['batch']} (simplified, original)",
         f"{report['latency_ms']['simplified']:.1f}, {report['latency_ms']['original']:.1f}"),
    ]
    tests = [[task, *(f"{report[which]['test'][task][metric]:.4f}"
                      for which in ("original", "simplified"))]
             for task in report["tasks"]
             for metric in list(report["original"]["test"][task])[:1]]
    candidates = [[c["text"], f"{c['flops_vs_hard']:.2f}",
                   f"{c['val_before_finetuning']['mean']:.4f}",
                   f"{c['val_before_finetuning']['central']:.4f}"] for c in report["candidates"]]
    finetuned = [[f["text"], f["merge"], f"{f['val_selection']:.4f}"]
                 for f in report["finetuned"]]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>tasknorm simplify</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
            "td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style></head><body>"
            f"<h1>tasknorm simplify</h1><p>{escape(report['checkpoint'])}</p>"
            + _table(["", ""], [list(row) for row in numbers]) + images
            + "<h2>Test (primary metric)</h2>" + _table(["task", "original", "simplified"], tests)
            + "<h2>Candidates, validation score before fine-tuning</h2>"
            + _table(["tree", "FLOPs ÷ hard", "mean rule", "central rule"], candidates)
            + "<h2>Fine-tuned</h2>" + _table(["tree", "rule", "val"], finetuned)
            + "</body></html>\n")


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return base64.b64encode(buffer.getvalue()).decode()


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
