"""``tasknorm compare``: train every sharing architecture over several seeds and tabulate.

For each architecture and seed, one ``tasknorm fit`` run (same configuration, the architecture and
seed overridden) is trained, its best validation checkpoint tested, and its test metrics,
parameters, FLOPs per image (``torch.utils.flop_counter``, all tasks' outputs) and wall time
recorded. The single-task runs give the baseline of Δm (saved as ``baseline.json``; pass
``--baseline FILE`` to reuse one). Writes ``compare.json``, ``compare.csv`` and ``compare.md``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasknorm.cli import resolve_config, run_cli
from tasknorm.io import write_json, write_text
from tasknorm.models import ARCHITECTURES, count_flops, count_parameters
from tasknorm.tasks import delta_m

LABELS = {"single_task": "single-task", "hard": "hard sharing (BN)", "sigma": "hard sharing (σBN)",
          "task": "TSBN", "task_sigma": "TSσBN"}
DELTA_CONVENTION = ("Δm: per-task mean of ±(M−B)/B over all metrics, then mean over tasks; "
                    "+ = better")


def run_one(architecture: str, seed: int, output: Path, config: str | None,
            overrides: Sequence[str]) -> dict[str, Any]:
    """Train and test one architecture with one seed; return its record."""
    logger = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
               "init_args": {"save_dir": str(output), "name": architecture,
                             "version": f"seed{seed}"}}]
    args = ["fit", *(["--config", config] if config else []),
            "--model.architecture", architecture, "--seed_everything", str(seed),
            "--trainer.logger", json.dumps(logger), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *overrides]
    start = time.perf_counter()
    cli = run_cli(args, quiet=True)
    seconds = time.perf_counter() - start
    example = cli.datamodule.splits["test"][0]["image"].unsqueeze(0)
    model = cli.model.model.eval()
    return {"architecture": architecture, "seed": seed, "test": cli.results["test"],
            "parameters": count_parameters(model), "flops": count_flops(model, example),
            "seconds": seconds, "checkpoint": cli.results["checkpoint"],
            "higher_is_better": {name: task.higher_is_better
                                 for name, task in cli.model.tasks.items()},
            "fractions": {name: task.fractions for name, task in cli.model.tasks.items()}}


def summarise(records: list[dict[str, Any]], baseline: dict[str, dict[str, float]] | None
              ) -> dict[str, Any]:
    """Mean ± std over seeds per architecture and metric, and Δm against ``baseline``."""
    summary: dict[str, Any] = {}
    for arch in dict.fromkeys(r["architecture"] for r in records):
        runs = [r for r in records if r["architecture"] == arch]
        metrics = {task: {m: _mean_std([r["test"][task][m] for r in runs]) for m in values}
                   for task, values in runs[0]["test"].items()}
        means = {task: {m: v["mean"] for m, v in values.items()}
                 for task, values in metrics.items()}
        summary[arch] = {
            "seeds": [r["seed"] for r in runs], "metrics": metrics,
            "delta_m": (delta_m(means, baseline, runs[0]["higher_is_better"])
                        if baseline is not None else None),
            "parameters": runs[0]["parameters"], "flops": runs[0]["flops"],
            "seconds": _mean_std([r["seconds"] for r in runs]),
            "fractions": runs[0]["fractions"],
        }
    return summary


def markdown(summary: dict[str, Any]) -> str:
    """One row per architecture: metrics (mean ± std; fractions in percent), Δm, parameters,
    FLOPs, time."""
    first = next(iter(summary.values()))
    fractions = first["fractions"]
    columns = [(task, m) for task, values in first["metrics"].items() for m in values]
    header = ["architecture", *[f"{t} {m}" + (" %" if fractions[t][m] else "")
                                for t, m in columns],
              "Δm %", "params", "MFLOPs/img", "time s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arch, row in summary.items():
        cells = [LABELS.get(arch, arch)]
        cells += [_pm(row["metrics"][t][m], 100 if fractions[t][m] else 1) for t, m in columns]
        cells.append("—" if row["delta_m"] is None else f"{row['delta_m']:+.2f}")
        seconds = row["seconds"]
        cells += [f"{row['parameters']:,}", f"{row['flops'] / 1e6:.1f}",
                  f"{seconds['mean']:.1f} ± {seconds['std']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tasknorm compare", description=__doc__)
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES),
                        choices=ARCHITECTURES)
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="training epochs per run (3 keeps the default within 15 minutes "
                             "on 2 CPU cores)")
    parser.add_argument("--config", help="a tasknorm fit config, a file or a packaged config name "
                        "(default: the MultiDigits one)")
    parser.add_argument("--baseline", help="single-task results JSON ({task: {metric: value}})")
    parser.add_argument("--output", default="runs/compare", help="folder for logs and tables")
    parser.add_argument("overrides", nargs="*",
                        help="extra fit options after --, e.g. -- --trainer.max_epochs 4")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    output = Path(args.output)
    if output.exists() and any(output.iterdir()):
        parser.error(f"output folder {output} is not empty; choose another --output")
    config = resolve_config(args.config) if args.config else None
    given = _read_baseline(args.baseline) if args.baseline else None
    overrides = ["--trainer.max_epochs", str(args.epochs), *args.overrides]
    records = [run_one(arch, seed, output, config, overrides)
               for arch in args.architectures for seed in range(args.seeds)]
    baseline = given if given is not None else _single_task_baseline(records, output)
    summary = summarise(records, baseline)
    table = markdown(summary)
    command = "tasknorm compare " + " ".join(argv if argv is not None else [])
    write_json(output / "compare.json", {"command": command.strip(), "records": records,
                                         "summary": summary, "baseline": baseline})
    write_text(output / "compare.csv", _csv(records))
    write_text(output / "compare.md", f"`{command.strip()}`\n\n{table}\n\n{DELTA_CONVENTION}\n")
    print(table)
    print(f"\n{DELTA_CONVENTION}\nwritten: {output}/compare.{{json,csv,md}}")


def _read_baseline(path: str) -> dict[str, dict[str, float]]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"tasknorm compare: cannot read baseline {path}: {error}") from None


def _single_task_baseline(records: list[dict[str, Any]], output: Path
                          ) -> dict[str, dict[str, float]] | None:
    """Mean test metrics of the single-task runs (saved as ``baseline.json``), if any."""
    runs = [r for r in records if r["architecture"] == "single_task"]
    if not runs:
        return None
    baseline = {task: {m: statistics.fmean(r["test"][task][m] for r in runs) for m in values}
                for task, values in runs[0]["test"].items()}
    write_json(output / "baseline.json", baseline)
    return baseline


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def _pm(value: dict[str, float], scale: float) -> str:
    """``mean ± std`` times ``scale``, with 2 decimals (4 for unscaled values below 10)."""
    digits = 4 if scale == 1 and abs(value["mean"]) < 10 else 2
    return f"{value['mean'] * scale:.{digits}f} ± {value['std'] * scale:.{digits}f}"


def _csv(records: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["architecture", "seed", "task", "metric", "value", "parameters", "flops",
                     "seconds"])
    for r in records:
        for task, values in r["test"].items():
            for metric, value in values.items():
                writer.writerow([r["architecture"], r["seed"], task, metric, value,
                                 r["parameters"], r["flops"], f"{r['seconds']:.1f}"])
    return buffer.getvalue()
