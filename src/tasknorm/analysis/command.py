"""``tasknorm analyze CKPT [--out DIR] [--tau 0.5]``: the gate and gradient analysis of a
``tasknorm fit`` checkpoint as PNG figures, one self-contained ``report.html`` and
``report.json`` with every number shown.

The backbone is rebuilt from the checkpoint (no dataset needed). A model without task-specific
gates (architectures ``single_task``, ``hard``, ``sigma``, ``task``) is refused with the reason,
unless the checkpoint holds a :class:`~tasknorm.train.callbacks.GradientCosineMonitor` history:
then the report has the gradient part only. The output folder defaults to
``<run>/analysis-<checkpoint name>/`` and is never overwritten.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from tasknorm.analysis.capacity import DEFAULT_TAU, check_tau
from tasknorm.analysis.checkpoint import (
    describe,
    gated_backbone,
    gradient_histories,
    read_checkpoint,
)
from tasknorm.analysis.gates import NoGatesError, gate_matrices, model_tasks
from tasknorm.analysis.html import EXPLANATIONS, Panel, render_html
from tasknorm.analysis.plots import (
    plot_capacity,
    plot_gate_matrices,
    plot_specialization,
    plot_tau_sweep,
)
from tasknorm.analysis.relation_plots import (
    plot_dendrogram,
    plot_gradient_cosines,
    plot_layer_similarity,
    plot_similarity,
)
from tasknorm.analysis.report import analyze_gates, analyze_gradients
from tasknorm.errors import ArgumentParser, UsageError, command
from tasknorm.io import atomic_write, write_json, write_text

DPI = 110


def default_output(checkpoint: Path) -> Path:
    """``<run>/analysis-<stem>/`` for ``<run>/checkpoints/<stem>.ckpt``; next to the checkpoint
    when it is not in a ``checkpoints`` folder.

    Example:
        >>> default_output(Path("runs/multidigits/version_0/checkpoints/best-epoch=7.ckpt"))
        PosixPath('runs/multidigits/version_0/analysis-best-epoch=7')
    """
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else \
        checkpoint.parent
    return run / f"analysis-{checkpoint.stem}"


def build_report(checkpoint_path: str | Path, tau: float = DEFAULT_TAU) -> dict[str, Any]:
    """Every number of the analysis of the checkpoint at ``checkpoint_path`` (see
    :mod:`tasknorm.analysis.report`): ``source``, ``gates`` (``None`` without gates, with a
    ``note`` saying why) and ``gradients`` (one summary per monitor history).

    Raises:
        FileNotFoundError, ValueError: a missing or unusable checkpoint; NoGatesError (a
            ``ValueError``) when it has neither gates nor a gradient history.
    """
    check_tau(tau)
    checkpoint = read_checkpoint(checkpoint_path)
    histories = gradient_histories(checkpoint)
    report: dict[str, Any] = {"source": describe(checkpoint, checkpoint_path)}
    try:
        backbone = gated_backbone(checkpoint)
    except NoGatesError as error:
        if not histories:
            raise
        report["gates"] = None
        report["note"] = f"No gate analysis: {error}. Gradient cosines only."
    else:
        report["gates"] = analyze_gates(gate_matrices(backbone), model_tasks(backbone), tau)
    report["gradients"] = {key: analyze_gradients(h) for key, h in histories.items()}
    return report


def figures(report: dict[str, Any]) -> list[tuple[str, str, Figure]]:
    """``(file name, explanation key, figure)`` for every figure of ``report``."""
    result: list[tuple[str, str, Figure]] = []
    gates = report.get("gates")
    if gates is not None:
        matrices = plot_gate_matrices(gates)
        for i, figure in enumerate(matrices, start=1):
            name = "gates.png" if len(matrices) == 1 else f"gates-{i}.png"
            result.append((name, "gates", figure))
        result += [("capacity.png", "capacity", plot_capacity(gates)),
                   ("tau_sweep.png", "tau_sweep", plot_tau_sweep(gates)),
                   ("specialization.png", "specialization", plot_specialization(gates))]
        if len(gates["tasks"]) > 1:
            result += [("similarity.png", "similarity", plot_similarity(gates)),
                       ("dendrogram.png", "dendrogram", plot_dendrogram(gates)),
                       ("layer_similarity.png", "layer_similarity",
                        plot_layer_similarity(gates))]
    summaries = list((report.get("gradients") or {}).values())
    for i, summary in enumerate(summaries, start=1):
        name = "gradient_cosines.png" if len(summaries) == 1 else f"gradient_cosines-{i}.png"
        result.append((name, "gradients", plot_gradient_cosines(summary)))
    return result


def write_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Write the figures (PNG), ``report.html`` and ``report.json`` into ``out``; return the
    paths written. Every file is written atomically."""
    out = Path(out)
    panels, written = [], []
    for filename, key, figure in figures(report):
        path = atomic_write(out / filename, lambda f, fig=figure: fig.savefig(f, format="png",
                                                                            dpi=DPI))
        title, explanation = EXPLANATIONS[key]
        panels.append(Panel(filename, path.read_bytes(), title, explanation))
        written.append(path)
    written.append(write_json(out / "report.json", report))
    written.append(write_text(out / "report.html", render_html(report, panels)))
    return written


@command("tasknorm analyze")
def main(argv: Sequence[str]) -> None:
    parser = ArgumentParser(
        prog="tasknorm analyze",
        description="Gate analysis (capacity, specialization, task relationships) and gradient "
                    "cosines of a tasknorm checkpoint, as figures, an HTML report and JSON.")
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by tasknorm fit")
    parser.add_argument("--out", type=Path, help="output folder (default: "
                        "<run>/analysis-<checkpoint name>/); must not exist or be empty")
    parser.add_argument("--tau", type=float, default=DEFAULT_TAU,
                        help="activity threshold on the gates (default: %(default)s, "
                             "sigmoid(0))")
    args = parser.parse_args(argv)
    if not 0.0 <= args.tau <= 1.0:
        parser.error(f"--tau must lie in [0, 1] (gates are sigmoids), got {args.tau}")
    start = time.perf_counter()
    try:
        report = build_report(args.checkpoint, args.tau)
    except NoGatesError as error:
        raise UsageError(f"{args.checkpoint}: {error}") from None
    out = args.out if args.out is not None else default_output(args.checkpoint)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists already and is not an empty folder; move it away or "
                         "pass another --out")
    written = write_report(report, out)
    if report["gates"] is None:
        print(report["note"])
    else:
        _print_summary(report["gates"])
    print(f"\nreport:  {out / 'report.html'}\nnumbers: {out / 'report.json'}\n"
          f"figures: {len(written) - 2} PNG in {out} ({time.perf_counter() - start:.1f} s)")


def _print_summary(gates: dict[str, Any]) -> None:
    network = gates["specialization"]["network"]
    capacity = gates["capacity"]["network"]
    print(f"{network['channels']} gated channels in {len(gates['layers'])} layers, "
          f"τ = {gates['tau']:g}: {network['unused']} unused, {network['exclusive']} exclusive, "
          f"{network['shared']} shared ({network['shared_by_all']} by all tasks)")
    print(f"{'task':<16}{'mean gate':>10}{'active':>9}{'exclusive':>11}")
    for task in gates["tasks"]:
        print(f"{task:<16}{capacity['mean_gate'][task]:>10.3f}"
              f"{capacity['active_fraction'][task]:>9.3f}"
              f"{network['exclusive_per_task'][task]:>11}")
