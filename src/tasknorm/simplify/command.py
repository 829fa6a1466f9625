"""``tasknorm simplify CKPT --out DIR [--budget R] [--epochs N]``: a trained TSσBN model turned
into a cheaper task tree.

1. The candidate trees within ``--budget`` (FLOPs per image relative to hard sharing) come from
   the gates of every stage (:func:`~tasknorm.simplify.candidates.candidate_trees`), at most
   ``--max-trees`` of them; ``--grouping random`` replaces each by a random tree with as many
   groups per level (:func:`~tasknorm.simplify.candidates.random_candidates`), a control.
2. Each candidate is built twice from the trained weights, its groups started from the mean of
   their members' gates and statistics and from the most central member's
   (:func:`~tasknorm.simplify.model.simplified_module`); its batch statistics are re-estimated
   on ``--recalibration-batches`` training batches and it is scored on the validation split
   (``val/selection``), before any training. Each candidate keeps its better rule.
3. The ``--top`` best candidates are fine-tuned for ``--epochs`` epochs (the run's recipe and
   data, the base learning rate times ``--lr-mult``); each keeps its best validation score,
   before fine-tuning included, the finalist with the best score wins, and both models are
   tested.

``DIR`` gets ``config.yaml`` and ``simplified.ckpt`` (``tasknorm test DIR/simplified.ckpt``
runs as it does on a run of ``tasknorm fit``), ``report.json`` and ``report.html``, and the
fine-tuning logs and checkpoints under ``finetune/``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import instantiate_class
from lightning.pytorch.loggers import CSVLogger

from tasknorm.analysis.checkpoint import read_checkpoint
from tasknorm.analysis.relationships import gate_cosine
from tasknorm.errors import ArgumentParser, UsageError, command
from tasknorm.fit import parse_results, run_config
from tasknorm.io import atomic_write, write_json, write_text
from tasknorm.models import StagedBackbone, count_flops, count_parameters
from tasknorm.nn import use_task
from tasknorm.simplify.candidates import (
    candidate_trees,
    flops_ratio,
    level_flops,
    level_gates,
    random_candidates,
)
from tasknorm.simplify.model import recalibrate, simplified_module
from tasknorm.simplify.report import render_report
from tasknorm.train import MultiTaskModule
from tasknorm.trees import TaskTree

DEFAULT_BUDGET = 1.25
GROUPINGS = ("gates", "random")
LATENCY_REPEATS = 10


@command("tasknorm simplify")
def main(argv: Sequence[str]) -> None:
    parser = ArgumentParser(
        prog="tasknorm simplify",
        description="Turn a trained TSσBN model into a cheaper task tree chosen from its gates.")
    parser.add_argument("checkpoint", type=Path, help="a TSσBN checkpoint written by tasknorm fit")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder; must not exist or be empty")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help="largest FLOPs per image relative to hard sharing (default: "
                             "%(default)s)")
    parser.add_argument("--epochs", type=int, default=2,
                        help="fine-tuning epochs of each finalist (default: %(default)s)")
    parser.add_argument("--max-trees", type=int, default=30,
                        help="candidate trees at most, a seeded sample when there are more "
                             "(default: %(default)s)")
    parser.add_argument("--top", type=int, default=3,
                        help="candidates fine-tuned, best by validation score before training "
                             "(default: %(default)s)")
    parser.add_argument("--recalibration-batches", type=int, default=20,
                        help="training batches that re-estimate each candidate's batch "
                             "statistics before scoring (default: %(default)s)")
    parser.add_argument("--lr-mult", type=float, default=0.1,
                        help="fine-tuning base learning rate ÷ the run's (default: "
                             "%(default)s)")
    parser.add_argument("--grouping", choices=GROUPINGS, default="gates",
                        help="gates: the trees the gates suggest; random: for each of them a "
                             "tree with as many groups per level (so the same FLOPs) and random "
                             "members, the control for what the gates add (default: "
                             "%(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="of the sample, the random trees and the fine-tuning")
    args = parser.parse_args(argv)
    if not args.budget >= 1:
        parser.error(f"--budget must be at least 1 (hard sharing's FLOPs), got {args.budget}")
    if not args.lr_mult > 0:
        parser.error(f"--lr-mult must be positive, got {args.lr_mult}")
    for name in ("epochs", "max_trees", "top", "recalibration_batches"):
        minimum = 0 if name == "epochs" else 1
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be at least {minimum}, got "
                         f"{getattr(args, name)}")
    checkpoint = read_checkpoint(args.checkpoint)
    architecture = checkpoint["tasknorm"]["architecture"]
    if architecture != "task_sigma":
        raise UsageError(f"{args.checkpoint} holds a model of architecture {architecture!r}; "
                         "simplify needs a TSσBN model (architecture 'task_sigma')")
    config_path = run_config(args.checkpoint)
    out = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists already and is not an empty folder; move it away or "
                         "pass another --out")
    simplify(args.checkpoint, config_path, out, budget=args.budget, epochs=args.epochs,
             max_trees=args.max_trees, top=args.top, lr_mult=args.lr_mult,
             recalibration_batches=args.recalibration_batches, grouping=args.grouping,
             seed=args.seed)


def simplify(checkpoint_path: Path, config_path: Path, out: Path, *, budget: float, epochs: int,
             max_trees: int, top: int, lr_mult: float, recalibration_batches: int,
             grouping: str = "gates", seed: int = 0) -> dict[str, Any]:
    """Run the search of the module docstring and write ``out``; return the report."""
    start = time.perf_counter()
    config = yaml.safe_load(config_path.read_text())
    data = instantiate_class((), config["data"])
    trained = MultiTaskModule.load_from_checkpoint(checkpoint_path, tasks=data.tasks,
                                                   map_location="cpu").eval()
    tasks = tuple(trained.tasks)
    data.setup("fit")
    example = next(iter(data.val_dataloader()))["image"]
    stages = StagedBackbone(trained.model.backbone).stages
    gates = level_gates(trained.model.backbone, stages)
    with use_task(tasks[0]):  # one pass of the backbone
        flops = level_flops(stages, example[:1])
    original_flops = count_flops(trained.model, example[:1])
    head_flops = original_flops - len(tasks) * sum(flops)
    hard_flops = sum(flops) + head_flops
    candidates = candidate_trees(tasks, gates, flops, budget, head_flops, max_trees, seed)
    if grouping == "random":
        candidates = random_candidates(tasks, candidates, seed)
    print(f"{len(candidates)} {grouping} candidate trees within {budget:g}× hard sharing's FLOPs "
          f"(TSσBN: {original_flops / hard_flops:.2f}×)")
    validator = _trainer(logger=False)
    images = _images(data, recalibration_batches)  # the same batches recalibrate every tree
    scored = []
    for index, candidate in enumerate(candidates, 1):
        scores = {}
        for merge in ("mean", "central"):
            module = simplified_module(trained, candidate.tree, merge)
            recalibrate(module, images)
            scores[merge] = _validation_score(validator, module, data)
        merge = max(scores, key=scores.__getitem__)
        scored.append({"tree": candidate.tree, "flops_vs_hard": candidate.flops_ratio,
                       "scores": scores, "merge": merge})
        print(f"[{index}/{len(candidates)}] {_short(candidate.tree)}  "
              f"({candidate.flops_ratio:.2f}× hard)  val before fine-tuning: mean "
              f"{scores['mean']:.4f}, central {scores['central']:.4f}")
    finalists = sorted(scored, key=lambda s: -s["scores"][s["merge"]])[:top]
    finetuned = []
    lr = trained.optimization.lr * lr_mult
    for index, finalist in enumerate(finalists):
        L.seed_everything(seed, verbose=False)
        module = simplified_module(trained, finalist["tree"], finalist["merge"], lr)
        recalibrate(module, images)
        best, score, epoch = _finetune(module, data, out / "finetune" / f"tree_{index}", epochs)
        finetuned.append({**finalist, "val_selection": score, "checkpoint": best,
                          "best_epoch": epoch})
        print(f"[finalist {index + 1}/{len(finalists)}] val {score:.4f} after "
              f"{epoch} fine-tuning epochs: {_short(finalist['tree'])}")
    chosen = max(finetuned, key=lambda f: f["val_selection"])
    simplified = MultiTaskModule.load_from_checkpoint(chosen["checkpoint"], tasks=data.tasks,
                                                      map_location="cpu").eval()
    tester = _trainer(logger=False)
    original_test = _test(tester, trained, data)
    simplified_test = _test(tester, simplified, data)
    tree: TaskTree = chosen["tree"]
    simplified_flops = flops_ratio(tree.groups_per_level, flops, head_flops) * hard_flops
    report = {
        "checkpoint": str(checkpoint_path), "budget": budget, "grouping": grouping,
        "epochs": epochs,
        "finetuning_lr": lr, "best_epoch": chosen["best_epoch"],
        "tree": {"levels": tree.to_lists(), "text": str(tree)}, "merge": chosen["merge"],
        "flops_ratio": simplified_flops / original_flops,
        "flops_vs_hard": {"simplified": simplified_flops / hard_flops,
                          "original": original_flops / hard_flops},
        "flops": {"original": original_flops, "simplified": simplified_flops,
                  "hard": hard_flops, "levels": flops, "heads": head_flops},
        "params": {"original": count_parameters(trained), "simplified":
                   count_parameters(simplified)},
        "latency_ms": {"original": _latency(trained, example),
                       "simplified": _latency(simplified, example), "batch": len(example)},
        "original": {"test": original_test}, "simplified": {"test": simplified_test},
        "candidates": [_candidate_record(s) for s in scored],
        "finetuned": [{**_candidate_record(f), "val_selection": f["val_selection"],
                       "best_epoch": f["best_epoch"]} for f in finetuned],
        "gate_cosine": [gate_cosine(level).tolist() for level in gates],
        "tasks": list(tasks), "seconds": time.perf_counter() - start,
    }
    _write_outputs(out, config, report, chosen["checkpoint"], epochs)
    print(f"\nchosen: {_short(tree)}  ({report['flops_ratio']:.2f}× the original's FLOPs, "
          f"{report['flops_vs_hard']['simplified']:.2f}× hard sharing's)")
    print(f"mean test accuracy or primary metric: original "
          f"{_mean_primary(original_test):.4f}, simplified {_mean_primary(simplified_test):.4f}")
    print(f"\ncheckpoint: {out / 'simplified.ckpt'}\nreport:     {out / 'report.html'}")
    return report


def _trainer(**kwargs: Any) -> L.Trainer:
    options = {"accelerator": "cpu", "deterministic": True, "enable_model_summary": False,
               "enable_progress_bar": False, "logger": False, "enable_checkpointing": False}
    return L.Trainer(**{**options, **kwargs})


def _images(data: L.LightningDataModule, batches: int) -> list[torch.Tensor]:
    loader = data.train_dataloader()
    return [batch["image"] for batch, _ in zip(loader, range(batches), strict=False)]


def _validation_score(trainer: L.Trainer, module: MultiTaskModule,
                      data: L.LightningDataModule) -> float:
    (logged,) = trainer.validate(module, datamodule=data, verbose=False)
    return float(logged["val/selection"])


def _finetune(module: MultiTaskModule, data: L.LightningDataModule, folder: Path,
              epochs: int) -> tuple[str, float, int]:
    """Fine-tune ``module``; the path and validation score of its best checkpoint, and the
    number of epochs it had trained (0: the model before fine-tuning was the best)."""
    initial = folder / "before-finetuning.ckpt"
    trainer = _trainer(max_epochs=epochs, logger=CSVLogger(folder, name="", version=""),
                       enable_checkpointing=True, enable_progress_bar=True,
                       num_sanity_val_steps=0, inference_mode=False,  # training follows
                       callbacks=[ModelCheckpoint(
                           dirpath=folder / "checkpoints", filename="best-{epoch}",
                           monitor="val/selection", mode="max")])
    (logged,) = trainer.validate(module, datamodule=data, verbose=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(initial)
    best = (str(initial), float(logged["val/selection"]), 0)
    if epochs:
        trainer.fit(module.train(), datamodule=data)  # Lightning keeps the mode it is given
        saver = trainer.checkpoint_callback
        score = float(saver.best_model_score)
        if score > best[1]:
            epoch = int(torch.load(saver.best_model_path, map_location="cpu",
                                   weights_only=True)["epoch"]) + 1
            best = (saver.best_model_path, score, epoch)
    return best


def _test(trainer: L.Trainer, module: MultiTaskModule,
          data: L.LightningDataModule) -> dict[str, dict[str, float]]:
    (logged,) = trainer.test(module, datamodule=data, verbose=False)
    return parse_results({k: float(v) for k, v in logged.items()})


def _latency(module: MultiTaskModule, images: torch.Tensor) -> float:
    """Median milliseconds of an evaluation forward pass on ``images`` (CPU)."""
    times = []
    with torch.no_grad():
        module(images)
        for _ in range(LATENCY_REPEATS):
            begin = time.perf_counter()
            module(images)
            times.append(1000 * (time.perf_counter() - begin))
    return statistics.median(times)


def _candidate_record(entry: dict[str, Any]) -> dict[str, Any]:
    return {"tree": entry["tree"].to_lists(), "text": str(entry["tree"]),
            "flops_vs_hard": entry["flops_vs_hard"], "val_before_finetuning": entry["scores"],
            "merge": entry["merge"]}


def _short(tree: TaskTree, width: int = 100) -> str:
    """The tree as text, or its group sizes per level when the text is longer than ``width``
    (the report has every name)."""
    text = str(tree)
    if len(text) <= width:
        return text
    return " | ".join(str([len(group) for group in level]) for level in tree.levels) + \
        " tasks per group"


def _mean_primary(results: dict[str, dict[str, float]]) -> float:
    return statistics.mean(next(iter(metrics.values())) for metrics in results.values())


def _write_outputs(out: Path, config: dict[str, Any], report: dict[str, Any], best: str,
                   epochs: int) -> None:
    """``config.yaml`` (the run's, with the tree), ``simplified.ckpt``, ``report.json`` and
    ``report.html``, each written atomically."""
    model = {**config["model"], "architecture": "tree",
             "architecture_args": {"groups": report["tree"]["levels"]}}
    model["optimization"] = {**model.get("optimization", {}), "lr": report["finetuning_lr"]}
    trainer = {**config["trainer"], "max_epochs": epochs}
    write_text(out / "config.yaml", yaml.safe_dump({**config, "model": model,
                                                    "trainer": trainer}, sort_keys=False))
    atomic_write(out / "simplified.ckpt", lambda f: f.write(Path(best).read_bytes()))
    write_json(out / "report.json", report)
    write_text(out / "report.html", render_report(report))

