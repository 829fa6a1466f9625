"""Task trees on ``multidigits_attributes``: accuracy against FLOPs of hard sharing, a hand-made
tree, TSσBN and ``tasknorm simplify`` of TSσBN (the gates' trees, and random trees with as many
groups per level as a control).

Protocol (the same for every trained architecture): the base learning rate is picked on seed 0
among ``--lrs`` by the best ``val/selection``, then the picked one is run on every seed of
``--seeds``; everything else is the packaged config's (10 epochs). ``simplify`` then runs on each
seed's TSσBN best checkpoint at every ``--budgets`` value with both groupings, seeded like the
run. Finished runs in ``--output`` are reused, so an interrupted study continues where it
stopped. Parts: ``fit`` (the architectures named by ``--architectures``), ``simplify`` and
``report`` (``study.json``, ``study.md`` and ``accuracy_vs_flops.png``)::

    python benchmarks/study_trees.py --part fit --output runs/trees_attributes
    python benchmarks/study_trees.py --part simplify --output runs/trees_attributes
    python benchmarks/study_trees.py --part report --output runs/trees_attributes

The 4-task setting with the exhaustive search (every tree within 1.25× hard sharing's FLOPs,
trained at hard sharing's picked learning rate, the best on validation kept per seed) adds
``--tasks left_even left_large right_even right_large --exhaustive-budget 1.25 --budgets 1.25``
to all three parts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from tasknorm.data.multidigits import ATTRIBUTE_TASKS
from tasknorm.fit import resolve_config, run_cli, run_config
from tasknorm.io import write_json, write_text
from tasknorm.models import StagedBackbone, count_flops
from tasknorm.simplify import flops_ratio, level_flops
from tasknorm.simplify.command import simplify
from tasknorm.trees import TaskTree

CONFIG = "multidigits_attributes"
LABELS = {"hard": "hard sharing", "tree": "hand tree: shared 3 stages, then per digit and pair",
          "task_sigma": "TSσBN"}
Levels = list[list[list[str]]]


def hand_tree(tasks: list[str], depth: int) -> Levels:
    """All tasks together for ``depth - 1`` stages, then one group per digit and one of the
    pair's tasks (a group is left out when no task is in it)."""
    left = [t for t in tasks if t.startswith("left")]
    right = [t for t in tasks if t.startswith("right")]
    pair = [t for t in tasks if t not in left + right]
    return [[tasks]] * (depth - 1) + [[g for g in (left, right, pair) if g]]


def sharing_groups(architecture: str, tasks: list[str], depth: int) -> Levels:
    """The groups of hard sharing (one everywhere) or TSσBN (one per task everywhere); tree
    runs keep theirs in their record."""
    if architecture == "hard":
        return [[tasks]] * depth
    return [[[t] for t in tasks]] * depth


def fit(name: str, lr: float, seed: int, args: argparse.Namespace,
        groups: Levels | None = None) -> dict[str, Any]:
    """One ``tasknorm fit`` run of architecture ``name`` (``"tree"`` with ``groups``), or its
    record when it has finished before. A hard-sharing record also holds the FLOPs per image of
    each stage and of the heads, from which every tree's FLOPs follow."""
    folder = args.output / "fit" / f"{name}_lr{lr:g}" / f"seed{seed}"
    if (folder / "record.json").is_file():
        return json.loads((folder / "record.json").read_text())
    logger = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
               "init_args": {"save_dir": str(args.output / "fit"), "name": folder.parent.name,
                             "version": folder.name}}]
    options = ["--model.architecture", "tree" if groups else name]
    if groups:
        options += ["--model.architecture_args", json.dumps({"groups": groups})]
    if args.tasks:
        options += ["--data.init_args.tasks", json.dumps(args.tasks)]
    start = time.perf_counter()
    cli = run_cli(["fit", "--config", resolve_config(CONFIG), *options,
                   "--model.optimization.lr", str(lr), "--seed_everything", str(seed),
                   "--trainer.logger", json.dumps(logger), "--trainer.enable_progress_bar",
                   "false", "--trainer.enable_model_summary", "false"], quiet=True)
    saver = cli.trainer.checkpoint_callback
    record = {"architecture": name, "lr": lr, "seed": seed, "groups": groups,
              "val_score": float(saver.best_model_score), "checkpoint": saver.best_model_path,
              "test": {t: m["accuracy"] for t, m in cli.results["test"].items()},
              "seconds": time.perf_counter() - start}
    if name == "hard":
        record["flops"] = stage_flops(cli)
    write_json(folder / "record.json", record)
    return record


@torch.no_grad()
def stage_flops(cli: Any) -> dict[str, Any]:
    """FLOPs per image of each stage of the hard-sharing model and of all its heads."""
    model = cli.model.eval()
    example = next(iter(cli.datamodule.val_dataloader()))["image"][:1]
    levels = level_flops(StagedBackbone(model.model.backbone).stages, example)
    return {"levels": levels, "heads": count_flops(model, example) - sum(levels)}


def tuned(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The runs of ``name`` at its learning rate picked on the first seed, one per seed."""
    screening = [fit(name, lr, args.seeds[0], args, _groups(name, args)) for lr in args.lrs]
    best = max(screening, key=lambda r: r["val_score"])
    return [fit(name, best["lr"], seed, args, _groups(name, args)) for seed in args.seeds]


def _groups(name: str, args: argparse.Namespace) -> Levels | None:
    if name != "tree":
        return None
    return hand_tree(args.tasks or list(ATTRIBUTE_TASKS), len(hard_flops(args)["levels"]))


def hard_flops(args: argparse.Namespace) -> dict[str, Any]:
    return fit("hard", args.lrs[0], args.seeds[0], args)["flops"]


def partitions(items: list[str]) -> list[list[list[str]]]:
    """Every partition of ``items`` into non-empty groups."""
    if not items:
        return [[]]
    first, rest = items[0], items[1:]
    found = []
    for partition in partitions(rest):
        found.append([[first], *partition])
        found += [[*partition[:i], [first, *group], *partition[i + 1:]]
                  for i, group in enumerate(partition)]
    return found


def family(tasks: list[str], flops: dict[str, Any], budget: float) -> list[TaskTree]:
    """Every task tree whose FLOPs per image stay within ``budget`` × hard sharing's."""
    every = partitions(tasks)
    depth, found = len(flops["levels"]), []

    def extend(levels: Levels) -> None:
        counts = [len(level) for level in levels]
        least = counts + [counts[-1] if counts else 1] * (depth - len(levels))
        if flops_ratio(least, flops["levels"], flops["heads"]) > budget + 1e-9:
            return
        if len(levels) == depth:
            found.append(TaskTree.from_groups(tasks, levels))
            return
        parent = {t: i for i, group in enumerate(levels[-1]) for t in group} if levels else {}
        for partition in every:
            if all(len({parent.get(t, 0) for t in group}) == 1 for group in partition):
                extend([*levels, partition])

    extend([])
    return sorted(found, key=lambda tree: (tree.groups_per_level, str(tree)))


def exhaustive(args: argparse.Namespace, lr: float) -> list[dict[str, Any]]:
    """Per seed, the run with the best validation score among every tree within
    ``--exhaustive-budget`` (each trained at hard sharing's picked learning rate)."""
    tasks = args.tasks or list(ATTRIBUTE_TASKS)
    trees = family(tasks, hard_flops(args), args.exhaustive_budget)
    best = []
    for seed in args.seeds:
        runs = [fit(f"exhaustive{i}", lr, seed, args, tree.to_lists())
                for i, tree in enumerate(trees)]
        chosen = max(runs, key=lambda r: r["val_score"])
        best.append({**chosen, "architecture": "exhaustive", "searched": len(runs),
                     "tree": str(TaskTree.from_groups(tasks, chosen["groups"]))})
    return best


def simplified(record: dict[str, Any], budget: float, grouping: str,
               output: Path) -> dict[str, Any]:
    """``tasknorm simplify`` of one TSσBN run (or its record)."""
    folder = output / "simplify" / f"{grouping}_budget{budget:g}" / f"seed{record['seed']}"
    if not (folder / "report.json").is_file():
        checkpoint = Path(record["checkpoint"])
        simplify(checkpoint, run_config(checkpoint), folder, budget=budget, epochs=2,
                 max_trees=30, top=3, lr_mult=0.1, recalibration_batches=20,
                 grouping=grouping, seed=record["seed"])
    report = json.loads((folder / "report.json").read_text())
    return {"architecture": f"simplify_{grouping}", "budget": budget, "seed": record["seed"],
            "tree": report["tree"]["text"], "flops_vs_hard": report["flops_vs_hard"],
            "test": {t: m["accuracy"] for t, m in report["simplified"]["test"].items()},
            "original_test": {t: m["accuracy"] for t, m in report["original"]["test"].items()},
            "seconds": report["seconds"]}


def mean_accuracy(record: dict[str, Any]) -> float:
    return 100 * statistics.fmean(record["test"].values())


def rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per architecture (and simplify budget): mean ± std over seeds of the mean test
    accuracy and of the FLOPs per image relative to hard sharing (``ratio``), and the share of
    TSσBN's gain over hard sharing on the same seeds (``None`` when TSσBN gains nothing)."""
    keys = dict.fromkeys((r["architecture"], r.get("budget")) for r in records)
    by_seed = {(r["architecture"], r["seed"]): mean_accuracy(r) for r in records
               if r["architecture"] in ("hard", "task_sigma")}
    table = []
    for architecture, budget in keys:
        runs = [r for r in records if (r["architecture"], r.get("budget")) == (architecture,
                                                                               budget)]
        accuracies = [mean_accuracy(r) for r in runs]
        hard = statistics.fmean(by_seed[("hard", r["seed"])] for r in runs)
        sigma_gain = statistics.fmean(by_seed[("task_sigma", r["seed"])] for r in runs) - hard
        table.append({
            "architecture": architecture, "budget": budget, "lr": runs[0].get("lr"),
            "seeds": len(runs), "accuracy": statistics.fmean(accuracies),
            "accuracy_std": statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
            "flops_vs_hard": statistics.fmean(r["ratio"] for r in runs),
            "flops_vs_hard_max": max(r["ratio"] for r in runs),
            "gain_share": (statistics.fmean(accuracies) - hard) / sigma_gain
            if sigma_gain > 0 else None, "searched": runs[0].get("searched"),
            "trees": sorted({r["tree"] for r in runs if "tree" in r})})
    return table


def label(row: dict[str, Any]) -> str:
    if row["architecture"] in LABELS:
        return LABELS[row["architecture"]]
    if row["architecture"] == "exhaustive":
        return f"best of all {row['searched']} trees within the budget (validation)"
    return (f"simplify --budget {row['budget']:g} --grouping "
            f"{row['architecture'].removeprefix('simplify_')}")


def markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| model | picked LR | FLOPs ÷ hard (mean, max) | mean test accuracy % (± std) "
             "| share of TSσBN's gain over hard | seeds |", "|---|---|---|---|---|---|"]
    for row in table:
        name = label(row)
        lr = "—" if row["lr"] is None else f"{row['lr']:g}"
        share = "—" if row["gain_share"] is None else f"{100 * row['gain_share']:.0f} %"
        lines.append(f"| {name} | {lr} | {row['flops_vs_hard']:.2f}, "
                     f"{row['flops_vs_hard_max']:.2f} | {row['accuracy']:.2f} ± "
                     f"{row['accuracy_std']:.2f} | {share} | {row['seeds']} |")
    return "\n".join(lines)


def plot(table: list[dict[str, Any]], path: Path, tasks: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in table:
        marker = {"simplify_gates": "s", "simplify_random": "x", "exhaustive": "D"}.get(
            row["architecture"], "o")
        axis.errorbar(row["flops_vs_hard"], row["accuracy"], yerr=row["accuracy_std"],
                      fmt=marker, capsize=3, label=label(row))
    axis.set_xscale("log")
    ratios = [row["flops_vs_hard"] for row in table]
    ticks = [t for t in (1, 1.25, 1.5, 2, 3, 4, 8, 18) if min(ratios) <= t <= 1.1 * max(ratios)]
    axis.set_xticks(ticks, [f"{t:g}×" for t in ticks])
    axis.minorticks_off()
    axis.set_xlabel("FLOPs per image ÷ hard sharing's (log)")
    axis.set_ylabel(f"mean test accuracy over {tasks} tasks (%)")
    axis.set_title(f"{CONFIG}, {tasks} tasks: mean ± std over seeds")
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["fit", "simplify", "report"], required=True)
    parser.add_argument("--output", type=Path, default=Path("runs/trees_attributes"))
    parser.add_argument("--architectures", nargs="+", choices=list(LABELS),
                        default=list(LABELS), help="trained by --part fit")
    parser.add_argument("--tasks", nargs="+", choices=ATTRIBUTE_TASKS,
                        help="a subset of the attribute tasks (default: all 18)")
    parser.add_argument("--exhaustive-budget", type=float,
                        help="also train every tree within this FLOPs budget (× hard "
                             "sharing's) and keep the best on validation, per seed")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.25, 2.0])
    parser.add_argument("--record", type=Path, help="also write the study's JSON here")
    parser.add_argument("--figure", type=Path, help="also write the plot here")
    args = parser.parse_args()
    if args.part == "fit":
        for architecture in args.architectures:
            tuned(architecture, args)
        if args.exhaustive_budget:
            exhaustive(args, tuned("hard", args)[0]["lr"])
        return
    sigma = tuned("task_sigma", args)
    if args.part == "simplify":
        for record in sigma:
            for budget in args.budgets:
                for grouping in ("gates", "random"):
                    simplified(record, budget, grouping, args.output)
        return
    tasks = args.tasks or list(ATTRIBUTE_TASKS)
    flops = hard_flops(args)
    records = [r for a in LABELS for r in tuned(a, args)]
    if args.exhaustive_budget:
        records += exhaustive(args, tuned("hard", args)[0]["lr"])
    for record in records:
        groups = record.get("groups") or sharing_groups(record["architecture"], tasks,
                                                        len(flops["levels"]))
        record["ratio"] = flops_ratio([len(level) for level in groups], flops["levels"],
                                      flops["heads"])
    for budget in args.budgets:
        for grouping in ("gates", "random"):
            records += [{**(report := simplified(r, budget, grouping, args.output)),
                         "ratio": report["flops_vs_hard"]["simplified"]} for r in sigma]
    table = rows(records)
    study = {"tasks": tasks, "records": records, "table": table}
    for path in (args.output / "study.json", args.record):
        if path:
            write_json(path, study)
    write_text(args.output / "study.md", markdown(table) + "\n")
    for path in (args.output / "accuracy_vs_flops.png", args.figure):
        if path:
            plot(table, path, len(tasks))
    print(markdown(table))


if __name__ == "__main__":
    main()
