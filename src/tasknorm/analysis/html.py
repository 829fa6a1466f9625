"""The self-contained HTML report: key numbers, then every figure embedded as a base64 PNG with
a short explanation of what it shows and how to read it."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any


@dataclass(frozen=True)
class Panel:
    """One figure of the report: file name, PNG bytes, title and explanation (plain text)."""

    filename: str
    png: bytes
    title: str
    explanation: str


EXPLANATIONS: dict[str, tuple[str, str]] = {
    "gates": (
        "Gate matrices",
        "One row per task, one column per channel of the layer; the colour is the task's gate "
        "sigmoid(γ), the factor by which TSσBN scales that channel for that task. Red channels "
        "are active (gate above τ), blue ones nearly switched off, white ones at τ. Channels are "
        "sorted into blocks: shared by several tasks (left), exclusive to one task (grouped by "
        "task), unused by every task (right). A red block in one row only is capacity that "
        "task owns; a red column through all rows is a channel every task relies on."),
    "capacity": (
        "Capacity allocation",
        "How much of each layer each task uses. Top: the mean gate (soft: how strongly the task "
        "passes the layer's channels on average). Bottom: the fraction of channels with gate "
        "above τ (hard: how many channels the task keeps). The last column is the whole "
        "network (all channels of all layers together). A task with low values in a layer "
        "needs little of it; differences between tasks show where the network gives one task "
        "more room."),
    "tau_sweep": (
        "Sensitivity to the threshold τ",
        "The hard numbers depend on τ, so here they are for every τ from 0.05 to 0.95. Left: "
        "each task's fraction of active channels (always non-increasing in τ). Right: the "
        "fractions of channels used by no task, by exactly one task and by several. Where the "
        "curves are flat around the dashed line, conclusions do not hinge on the choice of τ; "
        "gates piled up near one value show as a steep drop there."),
    "specialization": (
        "Filter specialization",
        "Each bar splits a layer's channels (count in brackets) by how many tasks use them "
        "(gate above τ): unused by every task (grey; candidates for pruning), exclusive to one "
        "task (coloured by the task), shared by some or by all tasks (blues). Bars run from the "
        "input (top) to the output, then the whole network: where the exclusive parts grow, "
        "the network has split that layer between the tasks."),
    "similarity": (
        "Task similarity",
        "Task × task similarity over the whole network, tasks in dendrogram order. Left: cosine "
        "of the gate vectors (soft). Right: Jaccard overlap |A∩B| / |A∪B| of the sets of active "
        "channels (hard, uses τ). The diagonal (1 by definition) is grey, as are pairs where "
        "neither task has an active channel; with three tasks or more the colours span the "
        "off-diagonal values, so read the numbers (or report.json), not only the colours. Gates "
        "are positive, so even unrelated tasks have a clearly positive cosine: compare with "
        "the chance level in the title, the mean over pairs of the value expected if one task's "
        "gates were shuffled over the channels. Above chance, the tasks keep the same channels; "
        "below, they avoid each other's."),
    "dendrogram": (
        "Task clustering",
        "Hierarchical clustering of the tasks (scipy, average linkage) with distance 1 − gate "
        "cosine over the whole network. Tasks joined at a small distance use the network in the "
        "same way; the height of a join is the average distance between the two groups."),
    "layer_similarity": (
        "Task similarity by layer",
        "The same two similarities per layer, from input to output, each with its chance level "
        "(dashed: the value for randomly placed gates of the same sizes). Above chance, the "
        "tasks keep the same channels of that layer; below it, they avoid each other's "
        "channels. Where the curves cross the chance level is where the tasks' needs part."),
    "gradients": (
        "Gradient interaction during training",
        "Recorded by the GradientCosineMonitor callback: the cosine between the gradients of two "
        "task losses on the shared parameters. Left: per measured step (positive: the tasks pull "
        "the shared weights the same way; negative: they conflict). Middle: its standard "
        "deviation over a rolling window. Right: the distribution over training. In the CosReg "
        "paper (arXiv:1912.06844) well-performing models have cosines centred on zero with a "
        "small spread, and the spread over the first epoch predicted the final accuracy."),
}


def render_html(report: dict[str, Any], panels: Sequence[Panel]) -> str:
    """The report page: source, key numbers and the figures with their explanations."""
    source = report["source"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>tasknorm analysis: {escape(source['checkpoint'])}</title>",
        f"<style>{_STYLE}</style>", "</head>", "<body>",
        "<h1>tasknorm analysis</h1>",
        _table(["source", ""], [[k, _text(v)] for k, v in source.items()]),
    ]
    if report.get("gates") is None:
        parts.append(f"<p class='note'>{escape(report.get('note', ''))}</p>")
    else:
        parts += _gate_summary(report["gates"])
    for summary in (report.get("gradients") or {}).values():
        setting = (f"measured every {summary['every_n_steps']} steps on "
                   f"{summary['num_parameters']:,} shared parameters, rolling window "
                   f"{summary['window']} measurements")
        parts.append(f"<h2>Gradient cosines <small>({escape(setting)})</small></h2>")
        rows = [[pair, _fmt(v["mean"]), _fmt(v["std"]), _fmt(v["first_epoch_std"]),
                 _fmt(v["final_rolling_std"])] for pair, v in summary["pairs"].items()]
        overall = summary["overall"]
        rows.append(["all pairs", _fmt(overall["mean"]), _fmt(overall["std"]),
                     _fmt(overall["first_epoch_std"]), _fmt(overall["final_rolling_std"])])
        parts.append(_table(["task pair", "mean", "std", "std, first epoch",
                             "last rolling std"], rows[:40]))
    for panel in panels:
        data = base64.b64encode(panel.png).decode("ascii")
        parts += [
            "<figure>", f"<h2>{escape(panel.title)}</h2>",
            f"<p>{escape(panel.explanation)}</p>",
            f'<img src="data:image/png;base64,{data}" alt="{escape(panel.title)}">',
            f"<figcaption>{escape(panel.filename)}</figcaption>", "</figure>",
        ]
    parts += ["<p class='note'>Every number shown is in report.json next to this file.</p>",
              "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _gate_summary(gates: dict[str, Any]) -> list[str]:
    tasks, network = gates["tasks"], gates["specialization"]["network"]
    capacity = gates["capacity"]["network"]
    rows = [[t, _fmt(capacity["mean_gate"][t]), _fmt(capacity["active_fraction"][t]),
             str(network["exclusive_per_task"][t])] for t in tasks]
    total = network["channels"]
    counts = [[name, str(network[key]), f"{network[key] / total:.1%}"]
              for name, key in (("unused", "unused"), ("exclusive to one task", "exclusive"),
                                ("shared by ≥ 2 tasks", "shared"),
                                ("shared by all tasks", "shared_by_all"))]
    similarity = gates["similarity"]["network"]
    pairs = [[f"{tasks[i]} – {tasks[j]}", _fmt(similarity["cosine"][i][j]),
              _fmt(similarity["cosine_chance"][i][j]), _fmt(similarity["jaccard"][i][j]),
              _fmt(similarity["jaccard_chance"][i][j])]
             for i in range(len(tasks)) for j in range(i + 1, len(tasks))]
    return [
        f"<h2>Key numbers <small>(whole network, τ = {gates['tau']:g})</small></h2>",
        _table(["task", "mean gate", "active fraction", "exclusive channels"], rows),
        _table(["channels", "count", f"of {total}"], counts),
        _table(["task pair", "gate cosine", "chance", "Jaccard", "chance"], pairs[:40])
        + (f"<p class='note'>{len(pairs) - 40} more pairs in report.json.</p>"
           if len(pairs) > 40 else ""),
    ]


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "–"
    return "–" if value is None else str(value)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
small { color: #666; font-weight: normal; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
figure { margin: 1.5em 0; } img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { color: #666; font-size: 0.85em; }
"""
