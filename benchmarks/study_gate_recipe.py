"""Why σ-gated models train slowly with the σBN code's recipe, and what fixes it (MultiDigits).

Two parts:

* ``--part damping``: at initialisation, the RMS of the features after every norm + ReLU of the
  default ``digits_cnn`` for BatchNorm (γ = 1) and σ gates drawn from N(m, 1): each σ layer scales
  its output by about mean(sigmoid(N(m, 1))) (0.5 for m = 0), so the damping multiplies with
  depth.
* ``--part grid``: the default MultiDigits run (``tasknorm fit``, 3 epochs unless ``--epochs``)
  for every architecture × gate-init mean × heads learning-rate multiplier × seed; records the
  best validation score, the test accuracies and the last epoch's training loss.

Writes ``study.json`` and ``study.md`` into ``--output``::

    python benchmarks/study_gate_recipe.py --part damping --output runs/gate_recipe_damping
    python benchmarks/study_gate_recipe.py --part grid --output runs/gate_recipe \\
        --architectures sigma task_sigma --means 0 3 --heads 1 10 --seeds 1
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from tasknorm.fit import run_cli
from tasknorm.io import write_json, write_text
from tasknorm.models import build_backbone
from tasknorm.nn import convert


@torch.no_grad()
def damping(means: list[float], seeds: int) -> list[dict]:
    """Feature RMS after each ReLU of ``digits_cnn`` at initialisation, BN and σ(N(m, 1))."""
    x = torch.rand(256, 1, 23, 23)
    records = []
    for label, mean in [("BatchNorm", None), *[(f"σ N({m:g}, 1)", m) for m in means]]:
        rms: list[list[float]] = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = build_backbone("digits_cnn")
            if mean is not None:
                model = convert(model, kind="sigma", init_mean=mean)
            outputs: list[torch.Tensor] = []
            hooks = [m.register_forward_hook(lambda _, __, out, kept=outputs: kept.append(out))
                     for m in model.modules() if isinstance(m, nn.ReLU)]
            model.train()(x)
            for hook in hooks:
                hook.remove()
            rms.append([float(o.pow(2).mean().sqrt()) for o in outputs])
        per_block = zip(*rms, strict=True)
        records.append({"norm": label, "rms": [statistics.fmean(v) for v in per_block]})
    return records


def run(architecture: str, mean: float, heads: float, seed: int, args: argparse.Namespace
        ) -> dict:
    name = f"{architecture}_m{mean:g}_h{heads:g}"
    logger = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
               "init_args": {"save_dir": str(args.output / "runs"), "name": name,
                             "version": f"seed{seed}"}}]
    start = time.perf_counter()
    cli = run_cli(["fit", "--model.architecture", architecture,
                   "--model.gates.mean", str(mean),
                   "--model.optimization.heads_lr_mult", str(heads),
                   "--seed_everything", str(seed), "--trainer.max_epochs", str(args.epochs),
                   "--trainer.logger", json.dumps(logger),
                   "--trainer.enable_progress_bar", "false",
                   "--trainer.enable_model_summary", "false", *args.overrides], quiet=True)
    tasks = list(cli.model.tasks)
    with open(Path(cli.trainer.log_dir) / "metrics.csv") as file:
        epochs = [row for row in csv.DictReader(file) if row.get(f"train/{tasks[0]}_loss")]
    checkpoint = cli.trainer.checkpoint_callback
    return {"architecture": architecture, "gate_init_mean": mean, "heads_lr_mult": heads,
            "seed": seed, "val_score": float(checkpoint.best_model_score),
            "test": {t: cli.results["test"][t]["accuracy"] for t in tasks},
            "train_loss": sum(float(epochs[-1][f"train/{t}_loss"]) for t in tasks),
            "seconds": time.perf_counter() - start}


def grid_table(records: list[dict]) -> str:
    rows = ["| architecture | gate init mean | heads LR × | val score | test accuracy % per "
            "task | last-epoch train loss | runs |", "|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r["architecture"], r["gate_init_mean"], r["heads_lr_mult"])
                         for r in records)
    for arch, mean, heads in keys:
        runs = [r for r in records
                if (r["architecture"], r["gate_init_mean"], r["heads_lr_mult"]) == (arch, mean,
                                                                                    heads)]
        tests = " / ".join(f"{100 * statistics.fmean(r['test'][t] for r in runs):.1f}"
                           for t in runs[0]["test"])
        rows.append(f"| {arch} | {mean:g} | {heads:g} | "
                    f"{statistics.fmean(r['val_score'] for r in runs):.4f} | {tests} | "
                    f"{statistics.fmean(r['train_loss'] for r in runs):.3f} | {len(runs)} |")
    return "\n".join(rows)


def damping_table(records: list[dict]) -> str:
    layers = len(records[0]["rms"])
    rows = ["| norm | " + " | ".join(f"block {i + 1}" for i in range(layers)) + " |",
            "|---|" + "---|" * layers]
    rows += [f"| {r['norm']} | " + " | ".join(f"{v:.3f}" for v in r["rms"]) + " |"
             for r in records]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["damping", "grid"], default="grid")
    parser.add_argument("--output", type=Path, default=Path("runs/gate_recipe"))
    parser.add_argument("--architectures", nargs="+", default=["sigma", "task_sigma"])
    parser.add_argument("--means", type=float, nargs="+", default=[0.0, 3.0])
    parser.add_argument("--heads", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="extra fit options after --")
    args = parser.parse_args()
    if args.part == "damping":
        records = damping(args.means, args.seeds or 1)
        table = damping_table(records)
    else:
        records = []
        for seed, arch, mean, heads in itertools.product(range(args.seeds), args.architectures,
                                                         args.means, args.heads):
            if arch in ("hard", "task", "single_task") and mean != args.means[0]:
                continue  # no gates to initialise
            records.append(run(arch, mean, heads, seed, args))
            print(json.dumps(records[-1]), flush=True)
            write_json(args.output / "study.json", records)
        table = grid_table(records)
    write_json(args.output / "study.json", records)
    write_text(args.output / "study.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
