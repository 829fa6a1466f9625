"""``tasknorm compare``: train every sharing architecture over several seeds and tabulate.

For each architecture and seed, one ``tasknorm fit`` run (same configuration, the architecture and
seed overridden) is trained, its best validation checkpoint tested, and its test metrics,
parameters, FLOPs per image (``torch.utils.flop_counter``, all tasks' outputs) and wall time
recorded. The single-task runs give the baseline of Δm (saved as ``baseline.json``; pass
``--baseline FILE`` to reuse one). Writes ``compare.json``, ``compare.csv``, ``compare.md`` and
``curves.png`` (validation curves); the table says how many runs converged
(:mod:`tasknorm.curves`).

``--grid KEY=V1,V2 ...`` gives every architecture the same tuning budget: seed 0 is trained at
every grid point (at most 4) and the point with the best validation ``val/selection`` is picked
per architecture (``tuning.json``; under ``selection: relative``, whose scores are not comparable
across runs, by :func:`relative_scores` instead); seeds 1, 2, ... train at the pick, and the
seed-0 tuning run at the pick is reused as the seed-0 record rather than trained again.

``--methods NAME ...`` adds a second axis: every architecture is trained with every balancing
method named (:data:`tasknorm.train.METHODS`), each pair a row of its own (``hard+pcgrad``; a row
trained with ``equal`` keeps the architecture's name), tuned and seeded alike.

``--merge DIR ...`` trains nothing: it tabulates the runs of earlier comparisons together (for
example architectures compared in parallel processes), as if one command had run them all.

``--resume`` continues an interrupted comparison in ``--output``: each finished run saved its
record (:data:`RECORD`) beside its logs and is reused; the rest are trained.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasknorm.curves import Curve, convergence, plot_curves, read_columns, read_curves
from tasknorm.errors import ArgumentParser, RunFailed, UsageError, command
from tasknorm.fit import model_defaults, resolve_config, run_cli
from tasknorm.io import write_json, write_text
from tasknorm.models import ARCHITECTURES, NORM_ARCHITECTURES, count_flops, count_parameters
from tasknorm.tasks import delta_m
from tasknorm.train import METHODS, SELECTION_METRIC
from tasknorm.train.options import grouped_name

LABELS = {"single_task": "single-task", "hard": "hard sharing (BN)", "sigma": "hard sharing (σBN)",
          "task": "TSBN", "task_sigma": "TSσBN", "cross_stitch": "cross-stitch", "mtan": "MTAN",
          "mmoe": "MMoE", "cgc": "CGC", "ple": "PLE", "dselect_k": "DSelect-k",
          "ltb": "Learning to Branch"}
DELTA_CONVENTION = ("Δm: per-task mean of ±(M−B)/B over all metrics, then mean over tasks; "
                    "+ = better")
RECORD = "record.json"
"""Each finished run's record, saved beside its logs; ``--resume`` reuses it."""
SETTINGS = "settings.json"
"""What every run of one comparison shares; ``--resume`` checks it."""
SETTING_NAMES = {"config": "config file", "grid": "--grid",
                 "overrides": "--epochs or fit options after --"}
"""How an error names each entry of :data:`SETTINGS`."""
MAX_POINTS = 4
"""Largest tuning grid: each point costs one run per architecture."""
Point = dict[str, int | float]
Row = tuple[str, str | None]
"""An architecture and the balancing method given by ``--methods`` (``None``: the config's)."""
RELATIVE_TUNING = ("Δm % of the primary validation metrics at the best epoch against their mean "
                   "over the grid points")
"""The tuning score under ``selection: relative`` (:func:`relative_scores`)."""


def parse_grid(entries: Sequence[str]) -> dict[str, list[int | float]]:
    """``["optimization.lr=0.02,0.05", ...]`` → ``{"optimization.lr": [0.02, 0.05], ...}``:
    numeric values of :class:`~tasknorm.train.MultiTaskModule` options, by their grouped or
    old flat names (``lr``), at most :data:`MAX_POINTS` combinations.

    Example:
        >>> parse_grid(["optimization.lr=0.02,0.05", "norm_lr_mult=10"])
        {'optimization.lr': [0.02, 0.05], 'norm_lr_mult': [10]}
    """
    grouped = sorted(set(model_defaults()) - {"architecture", "architecture_args"})
    grid: dict[str, list[int | float]] = {}
    for entry in entries:
        key, equals, text = entry.partition("=")
        if not equals or not key or not text:
            raise ValueError(f"--grid entry {entry!r} is not KEY=V1,V2,...")
        if grouped_name(key) not in grouped:
            raise ValueError(f"--grid key {key!r} is not a model option ({', '.join(grouped)}; "
                             "or an old flat name such as lr)")
        if any(grouped_name(key) == grouped_name(other) for other in grid):
            raise ValueError(f"--grid key {key!r} is given twice")
        values = [_number(value) for value in text.split(",")]
        if None in values:
            raise ValueError(f"--grid {key}: values must be finite numbers, got {text!r}")
        if len(set(values)) < len(values):
            raise ValueError(f"--grid {key}: repeated value in {text!r}")
        grid[key] = values
    count = math.prod(len(values) for values in grid.values())
    if count > MAX_POINTS:
        sizes = " × ".join(str(len(values)) for values in grid.values())
        raise ValueError(f"--grid has {count} points ({sizes}); at most {MAX_POINTS} are allowed")
    return grid


def grid_points(grid: dict[str, list[int | float]]) -> list[Point]:
    """Every combination of the grid's values, the first key varying slowest."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def point_label(point: Point) -> str:
    """``{"lr": 0.02, "norm_lr_mult": 10}`` → ``lr=0.02,norm_lr_mult=10`` (also the name of the
    point's tuning folder)."""
    return ",".join(f"{key}={value}" for key, value in point.items())


def row_name(architecture: str, method: str | None) -> str:
    """``hard``, ``pcgrad`` → ``hard+pcgrad``; a row trained with ``equal`` or the config's
    method (``None``) keeps the architecture's name."""
    return architecture if method in (None, "equal") else f"{architecture}+{method}"


def row_key(record: dict[str, Any]) -> str:
    """The table row of a run (:func:`row_name` of its architecture and method)."""
    return row_name(record["architecture"], _method(record))


def row_label(key: str) -> str:
    """``hard+pcgrad`` → ``hard sharing (BN) + pcgrad``."""
    architecture, plus, method = key.partition("+")
    return LABELS.get(architecture, architecture) + (f" + {method}" if plus else "")


def run_one(architecture: str, seed: int, output: Path, config: str | None,
            overrides: Sequence[str], version: str, name: str) -> dict[str, Any]:
    """Train and test one architecture with one seed, logging to ``<output>/<name>/<version>``;
    return its record, with ``method`` (the balancing method, ``weighting+aggregator`` when both
    are given) and ``val_score``, the best validation ``val/selection`` (``None`` unless the
    checkpoint callback selects on its maximum and it is finite)."""
    logger = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
               "init_args": {"save_dir": str(output), "name": name, "version": version}}]
    args = ["fit", *(["--config", config] if config else []),
            "--model.architecture", architecture, "--seed_everything", str(seed),
            "--trainer.logger", json.dumps(logger), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *overrides]
    start = time.perf_counter()
    cli = run_cli(args, quiet=True)
    seconds = time.perf_counter() - start
    example = cli.datamodule.splits["test"][0]["image"].unsqueeze(0)
    model = cli.model.model.eval()
    checkpoint = cli.trainer.checkpoint_callback
    score = (checkpoint.best_model_score if checkpoint is not None
             and checkpoint.monitor == SELECTION_METRIC and checkpoint.mode == "max" else None)
    tasks = cli.model.tasks
    balancing = cli.model.balancing
    method = "+".join(m for m in (balancing.weighting, balancing.aggregator) if m is not None)
    return {"architecture": architecture, "method": method, "seed": seed,
            "test": cli.results["test"],
            "val_score": float(score) if score is not None and score.isfinite() else None,
            "parameters": count_parameters(model), "flops": count_flops(model, example),
            "seconds": seconds, "checkpoint": cli.results["checkpoint"],
            "log_dir": cli.results["log_dir"], "selection": cli.model.hparams.selection,
            "primary": {name: task.primary for name, task in tasks.items()},
            "higher_is_better": {name: task.higher_is_better for name, task in tasks.items()},
            "fractions": {name: task.fractions for name, task in tasks.items()}}


def tune(rows: Sequence[Row], grid: dict[str, list[int | float]], output: Path,
         config: str | None, overrides: Sequence[str], resume: bool = False
         ) -> tuple[dict[str, Any], dict[Row, dict[str, Any]]]:
    """Train seed 0 of every row (architecture and balancing method, ``None``: the config's) at
    every point of ``grid`` (logs in ``<output>/tuning/<row>/<point>``) and pick, per row, the
    point with the highest score (the first on ties; a point whose loss diverged scores
    ``None``). The score is the best validation ``val/selection`` under ``selection: mean``;
    under ``relative``, whose values are gains over each run's own first epoch and so not
    comparable across runs, it is :func:`relative_scores`. Returns the tuning summary (``grid``,
    ``metric``, ``scores`` per row key and point label, ``picks``) and each row's record at its
    pick, which serves as its seed-0 record. ``resume``: reuse saved runs (:func:`_run`)."""
    scores: dict[str, dict[str, float | None]] = {}
    picks: dict[str, Point] = {}
    picked: dict[Row, dict[str, Any]] = {}
    metric = f"best validation {SELECTION_METRIC}"
    for row in rows:
        name = row_name(*row)
        row_scores: dict[str, float | None] = {}
        runs: dict[str, dict[str, Any]] = {}
        for point in grid_points(grid):
            label = point_label(point)
            try:
                run = _run(row, 0, output / "tuning", config, overrides, point, label, resume)
            except FloatingPointError as error:
                print(f"tasknorm compare: {name} at {label} diverged: {error}")
                row_scores[label] = None
                continue
            if run["val_score"] is None:
                raise UsageError(f"--grid needs a finite best {SELECTION_METRIC}"
                                 f" from a ModelCheckpoint with mode max; {name} at {label} has "
                                 "none (check the config's checkpoint callback)")
            row_scores[label], runs[label] = run["val_score"], run
        if not runs:
            raise RunFailed(f"{name} diverged at every grid point")
        if next(iter(runs.values())).get("selection") == "relative":
            row_scores.update(relative_scores(runs))
            metric = RELATIVE_TUNING
        label = max(runs, key=lambda label: row_scores[label])
        key = row_key(runs[label])
        scores[key], picks[key], picked[row] = row_scores, runs[label]["point"], runs[label]
    return {"grid": grid, "metric": metric, "seed": 0, "scores": scores, "picks": picks}, picked


def relative_scores(runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Scores of one architecture's grid points that compare across runs when tasks live on
    different scales: Δm % (:func:`~tasknorm.tasks.delta_m`) of each run's primary validation
    metrics at its best ``val/selection`` epoch against their mean over the points."""
    values = {label: best_epoch_primaries(run) for label, run in runs.items()}
    first = next(iter(runs.values()))
    reference = {task: {metric: statistics.fmean(v[task][metric] for v in values.values())}
                 for task, metric in first["primary"].items()}
    directions = {task: {metric: first["higher_is_better"][task][metric]}
                  for task, metric in first["primary"].items()}
    return {label: delta_m(v, reference, directions) for label, v in values.items()}


def best_epoch_primaries(record: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each task's primary validation metric (``{task: {metric: value}}``) at the epoch of the
    run's best ``val/selection``, read from its ``metrics.csv``."""
    primary = record["primary"]
    curves = read_columns(record["log_dir"], {"": SELECTION_METRIC, **{
        task: f"val/{task}/{metric}" for task, metric in primary.items()}})
    selection = curves.pop("")
    if not selection:
        raise UsageError(f"{record['log_dir']}/metrics.csv has no "
                         f"{SELECTION_METRIC} column")
    epoch = max(selection, key=selection.__getitem__)
    return {task: {primary[task]: curve[epoch]} for task, curve in curves.items()}


def tuning_table(tuning: dict[str, Any]) -> str:
    """Markdown table: one row per compared row, its score at every grid point and its pick."""
    labels = list(next(iter(tuning["scores"].values())))
    header = ["architecture", *labels, "pick"]
    lines = [f"Tuning, seed {tuning['seed']}: {tuning['metric']}",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, scores in tuning["scores"].items():
        cells = [row_label(key),
                 *["diverged" if s is None else f"{s:.4f}" for s in scores.values()],
                 point_label(tuning["picks"][key])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise(records: list[dict[str, Any]], baseline: dict[str, dict[str, float]] | None
              ) -> dict[str, Any]:
    """Mean ± std over seeds per row (:func:`row_key`) and metric, and Δm against
    ``baseline``: the mean of the seeds' own Δm (``delta_m``, which is the Δm of the mean metrics,
    Δm being linear in them) and their std (``delta_m_std``), the spread that tells two rows'
    Δm apart."""
    summary: dict[str, Any] = {}
    for key in dict.fromkeys(map(row_key, records)):
        runs = [r for r in records if row_key(r) == key]
        metrics = {task: {m: _mean_std([r["test"][task][m] for r in runs]) for m in values}
                   for task, values in runs[0]["test"].items()}
        deltas = (_mean_std([delta_m(r["test"], baseline, runs[0]["higher_is_better"])
                             for r in runs]) if baseline is not None else None)
        summary[key] = {
            "architecture": runs[0]["architecture"], "method": _method(runs[0]),
            "seeds": [r["seed"] for r in runs], "metrics": metrics,
            "delta_m": deltas["mean"] if deltas is not None else None,
            "delta_m_std": deltas["std"] if deltas is not None else None,
            "parameters": runs[0]["parameters"], "flops": runs[0]["flops"],
            "seconds": _mean_std([r["seconds"] for r in runs]),
            "fractions": runs[0]["fractions"], "point": runs[0]["point"],
            "converged": sum(r["converged"] for r in runs),
        }
    return summary


def markdown(summary: dict[str, Any]) -> str:
    """One row per architecture (and balancing method): metrics (mean ± std; fractions in
    percent), Δm, parameters, FLOPs, time, runs that converged."""
    first = next(iter(summary.values()))
    fractions = first["fractions"]
    columns = [(task, m) for task, values in first["metrics"].items() for m in values]
    header = ["architecture", *[f"{t} {m}" + (" %" if fractions[t][m] else "")
                                for t, m in columns],
              "Δm %", "params", "MFLOPs/img", "time s", "converged"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in summary.items():
        cells = [row_label(key)]
        cells += [_pm(row["metrics"][t][m], 100 if fractions[t][m] else 1) for t, m in columns]
        cells.append("—" if row["delta_m"] is None
                     else f"{row['delta_m']:+.2f} ± {row['delta_m_std']:.2f}")
        seconds = row["seconds"]
        cells += [f"{row['parameters']:,}", f"{row['flops'] / 1e6:.1f}",
                  f"{seconds['mean']:.1f} ± {seconds['std']:.1f}",
                  f"{row['converged']}/{len(row['seeds'])}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@command("tasknorm compare")
def main(argv: Sequence[str]) -> None:
    parser = ArgumentParser(prog="tasknorm compare", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", nargs="+", default=list(NORM_ARCHITECTURES),
                        choices=ARCHITECTURES,
                        help="default: " + " ".join(NORM_ARCHITECTURES))
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), metavar="METHOD",
                        help="train every architecture with each of these balancing methods "
                             "(default: the config's); one of " + " ".join(sorted(METHODS)))
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="training epochs per run (3 keeps the default within 15 minutes "
                             "on 2 CPU cores)")
    parser.add_argument("--config", help="a tasknorm fit config, a file or a packaged config name "
                        "(default: the MultiDigits one)")
    parser.add_argument("--baseline", help="single-task results JSON ({task: {metric: value}})")
    parser.add_argument("--grid", nargs="+", metavar="KEY=V1,V2",
                        help=f"tune model options on seed 0 (at most {MAX_POINTS} points), e.g. "
                             "optimization.lr=0.02,0.05 optimization.norm_lr_mult=1,10 (old flat "
                             "names such as lr work too)")
    parser.add_argument("--merge", nargs="+", metavar="DIR",
                        help="tabulate the runs of earlier compare outputs together, training "
                             "nothing")
    parser.add_argument("--output", default="runs/compare", help="folder for logs and tables")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted comparison in --output: its finished runs "
                             "are reused, the others trained (same config, epochs, grid and fit "
                             "options; rows and seeds may be added)")
    parser.add_argument("overrides", nargs="*",
                        help="extra fit options after --, e.g. -- --trainer.max_epochs 4")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1:
        parser.error(f"--seeds and --epochs must be at least 1, got {args.seeds} and "
                     f"{args.epochs}")
    grid = parse_grid(args.grid) if args.grid else None
    given = {grouped_name(o.partition("=")[0].removeprefix("--model.")): o.partition("=")[0]
             for o in args.overrides if o.startswith("--model.")}
    for key in grid or {}:
        if grouped_name(key) in given:
            parser.error(f"--grid {key} and the fit option {given[grouped_name(key)]} "
                         "contradict each other")
    for key in ("balancing", "balancing.weighting"):
        if args.methods and key in given:
            parser.error(f"--methods and the fit option {given[key]} contradict each other")
    output = Path(args.output)
    if output.exists() and any(output.iterdir()) and not args.resume:
        parser.error(f"output folder {output} is not empty; choose another --output, or "
                     "--resume to continue the comparison in it")
    given = _read_baseline(args.baseline) if args.baseline else None
    command = "tasknorm compare " + " ".join(argv if argv is not None else [])
    if args.merge:
        if args.grid or args.methods or args.overrides or args.resume:
            parser.error("--merge trains nothing; it takes no --grid, --methods, --resume or fit "
                         "options")
        records, tuning = merged_runs([Path(folder) for folder in args.merge])
        _write_results(output, records, tuning, given, command)
        return
    config = resolve_config(args.config) if args.config else None
    overrides = ["--trainer.max_epochs", str(args.epochs), *args.overrides]
    _check_settings(output, {"config": Path(config).read_text() if config else None,
                             "grid": grid, "overrides": overrides}, args.resume)
    rows = [(arch, method) for arch in args.architectures for method in args.methods or [None]]
    tuning, picked = None, {}
    if grid is not None:
        tuning, picked = tune(rows, grid, output, config, overrides, args.resume)
        write_json(output / "tuning.json", tuning)
        print(tuning_table(tuning) + "\n")
    records = []
    for row in rows:
        first = [picked[row]] if row in picked else []  # seed 0: the tuning run at the pick
        point = picked[row]["point"] if first else {}
        records += first + [_run(row, seed, output, config, overrides, point, resume=args.resume)
                            for seed in range(len(first), args.seeds)]
    _write_results(output, records, tuning, given, command)


def _check_settings(output: Path, settings: dict[str, Any], resume: bool) -> None:
    """Save what every run of a comparison shares (:data:`SETTINGS`: the config's text, the grid
    and the fit options including the epochs); under ``resume``, refuse a folder saved with other
    settings, whose runs would not be comparable with new ones."""
    path = output / SETTINGS
    if resume and path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise UsageError(f"cannot read {path}: {error}") from None
        changed = [SETTING_NAMES[key] for key in settings
                   if saved.get(key) != json.loads(json.dumps(settings[key]))]
        if changed:
            raise UsageError(f"--resume: {output} was run with another {' and '.join(changed)} "
                             f"(saved in {path}); resume with the same ones or choose another "
                             "--output")
    elif resume and output.exists() and any(output.iterdir()):
        raise UsageError(f"--resume: {output} has no {SETTINGS}; it is not a tasknorm compare "
                         "folder")
    write_json(path, settings)


def merged_runs(folders: Sequence[Path]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The records and tuning of the ``compare.json`` in each of ``folders``, joined. Refuses
    folders whose runs cannot share a table: other tasks, other grids, or a row (architecture
    and method) and seed that two folders both ran."""
    records: list[dict[str, Any]] = []
    tunings = []
    for folder in folders:
        path = folder / "compare.json"
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise UsageError(f"cannot read {path}: {error}") from None
        for record in result["records"]:
            if records and set(record["test"]) != set(records[0]["test"]):
                raise UsageError(f"{path} has tasks {sorted(record['test'])}, the runs before "
                                 f"it {sorted(records[0]['test'])}")
            if any((row_key(r), r["seed"]) == (row_key(record), record["seed"])
                   for r in records):
                raise UsageError(f"{path} repeats {row_key(record)} seed {record['seed']}")
            records.append(record)
        if result["tuning"] is not None:
            tunings.append(result["tuning"])
    if not tunings:
        return records, None
    if any((t["grid"], t["metric"]) != (tunings[0]["grid"], tunings[0]["metric"])
           for t in tunings):
        raise UsageError("the folders were tuned on different grids: "
                         + "; ".join(json.dumps(t["grid"]) for t in tunings))
    if len(tunings) < len(folders):
        raise UsageError("some folders were tuned with --grid and some were not")
    return records, {**tunings[0],
                     "scores": {a: v for t in tunings for a, v in t["scores"].items()},
                     "picks": {a: v for t in tunings for a, v in t["picks"].items()}}


def _write_results(output: Path, records: list[dict[str, Any]], tuning: dict[str, Any] | None,
                   given: dict[str, dict[str, float]] | None, command: str) -> None:
    """Δm against ``given`` (else the single-task runs), the tables, records and curves."""
    baseline = given if given is not None else _single_task_baseline(records, output)
    summary = summarise(records, baseline)
    table = markdown(summary)
    notes = ([tuning_table(tuning)] if tuning else []) + [DELTA_CONVENTION]
    write_json(output / "compare.json", {"command": command.strip(), "records": records,
                                         "summary": summary, "baseline": baseline,
                                         "tuning": tuning})
    write_text(output / "compare.csv", _csv(records))
    write_text(output / "compare.md", "\n\n".join([f"`{command.strip()}`", table, *notes]) + "\n")
    _plot(records, output / "curves.png")
    print(table)
    print(f"\n{DELTA_CONVENTION}\nwritten: {output}/compare.{{json,csv,md}}, curves.png"
          + (", tuning.json" if tuning else ""))


def _run(row: Row, seed: int, output: Path, config: str | None, overrides: Sequence[str],
         point: Point, version: str | None = None, resume: bool = False) -> dict[str, Any]:
    """:func:`run_one` of ``row`` with the grid ``point``'s model options; the record keeps the
    point, whether the run converged and each task's late improvement (:func:`convergence`).
    The record (or the divergence) is saved as :data:`RECORD` in the run's folder; with
    ``resume`` a saved one is returned instead of training again, and the folder of a run that
    never finished is cleared and trained anew."""
    architecture, method = row
    name, version = row_name(*row), version or f"seed{seed}"
    saved = output / name / version / RECORD
    if resume and saved.is_file():
        print(f"tasknorm compare: {name} {version}: reusing the finished run in {saved.parent}")
        return _saved_record(saved)
    shutil.rmtree(saved.parent, ignore_errors=True)
    options = [arg for key, value in point.items() for arg in (f"--model.{key}", str(value))]
    if method is not None:
        options += ["--model.balancing.weighting", method]
    try:
        record = {**run_one(architecture, seed, output, config, [*overrides, *options], version,
                            name), "point": point}
    except FloatingPointError as error:
        write_json(saved, {"diverged": str(error)})
        raise
    record["converged"], record["improvements"] = convergence(
        read_curves(record["log_dir"], record["primary"]), _primary(record, "higher_is_better"),
        _primary(record, "fractions"))
    write_json(saved, record)
    return record


def _saved_record(path: Path) -> dict[str, Any]:
    """The record :func:`_run` saved at ``path``; a saved divergence is raised again."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot read the saved run {path}: {error}; delete it to train "
                         "that run again") from None
    if "diverged" in record:
        raise FloatingPointError(record["diverged"])
    return record


def _method(record: dict[str, Any]) -> str:
    """A record's balancing method; records written before methods were recorded count as
    ``equal``."""
    return record.get("method", "equal")


def _primary(record: dict[str, Any], key: str) -> dict[str, Any]:
    """``record[key]`` (per task and metric) of each task's primary metric."""
    return {task: record[key][task][metric] for task, metric in record["primary"].items()}


def _plot(records: list[dict[str, Any]], path: Path) -> None:
    """``curves.png``: each task's primary validation metric, one line per row."""
    runs: dict[str, list[dict[str, Curve]]] = {}
    for record in records:
        runs.setdefault(row_label(row_key(record)), []).append(
            read_curves(record["log_dir"], record["primary"]))
    fraction = _primary(records[0], "fractions")
    primary = records[0]["primary"]
    plot_curves(runs, {t: f"val {primary[t]}" + (" %" if f else "") for t, f in fraction.items()},
                {t: 100.0 if f else 1.0 for t, f in fraction.items()}, path)


def _read_baseline(path: str) -> dict[str, dict[str, float]]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"cannot read baseline {path}: {error}") from None


def _single_task_baseline(records: list[dict[str, Any]], output: Path
                          ) -> dict[str, dict[str, float]] | None:
    """Mean test metrics of the first single-task row's runs (saved as ``baseline.json``), if
    any."""
    single = [row_key(r) for r in records if r["architecture"] == "single_task"]
    if not single:
        return None
    runs = [r for r in records if row_key(r) == single[0]]
    baseline = {task: {m: statistics.fmean(r["test"][task][m] for r in runs) for m in values}
                for task, values in runs[0]["test"].items()}
    write_json(output / "baseline.json", baseline)
    return baseline


def _number(text: str) -> int | float | None:
    """``text`` as an int or a finite float, else ``None``."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


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
    writer.writerow(["architecture", "method", "seed", "task", "metric", "value", "parameters",
                     "flops", "seconds"])
    for r in records:
        for task, values in r["test"].items():
            for metric, value in values.items():
                writer.writerow([r["architecture"], _method(r), r["seed"], task, metric, value,
                                 r["parameters"], r["flops"], f"{r['seconds']:.1f}"])
    return buffer.getvalue()
