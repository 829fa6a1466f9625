"""RNI's one-shot claim on the digits protocol of ``tasknorm prune``: sweep λ, b and the
training length until a 70 % cut removes only closed gates (sigmoid(γ) < 0.05), then compare
accuracy right after pruning (no fine-tuning) at 50 / 70 / 90 % for RNI, L1 and uniform.

    OMP_NUM_THREADS=1 python benchmarks/sweep_rni.py

Everything not swept is ``PruneConfig()``'s default (the ``tasknorm prune`` defaults: digits
60/20/20 train/val/test split, ``digits_vgg``, batch 64, SGD LR 0.05 ÷ 10 at 50/75 %, last epoch,
≥ 3 channels per layer). Stages:

1. RNI grid ``--lambdas`` × ``--offsets`` × ``--epochs`` (methods = [rni] only);
2. L1 ``--l1_lambdas`` at the chosen RNI training length; uniform at that length;
3. the chosen RNI, L1 and uniform settings retrained with ``--seeds`` (each seed also redraws
   the split).

Settings are chosen on the **validation** split: highest val accuracy right after a 70 % prune,
ties broken by the mean over 50/70/90 %, then by the unpruned val accuracy; ``rni_90`` is RNI's
best setting by the same rule at 90 %. Test accuracy is reported, never used. Runs already in
``--output`` (same method, λ, b, epochs, seed) are reused.
Writes ``benchmarks/results/rni_sweep.json`` and ``docs/figures/pruning/rni_gates.png`` (gates
of the default setting, the chosen one, and the grid's worst at 70 % among those whose 70 % cut
removes only gates < 0.05).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasknorm.io import atomic_write, write_json
from tasknorm.prune import accuracy, apply_plan, model_stats, plan_pruning
from tasknorm.prune.command import METHODS, PruneConfig, build_model, digits_loaders
from tasknorm.prune.recipe import OptimConfig, fit

RATIOS = (0.5, 0.7, 0.9)
CUT, CLOSED = 0.7, 0.05  # the ratio whose removed gates must be closed, and "closed"
EXAMPLE = torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(0))


def train(method: str, strength: float, offset: float, epochs: int, seed: int
          ) -> tuple[torch.nn.Module, tuple[Any, Any]]:
    """One ``tasknorm prune`` training run; returns the model and its (val, test) loaders."""
    cfg = PruneConfig(seed=seed)
    norm, regularizer, _ = METHODS[method]
    torch.set_num_threads(cfg.threads)
    train_loader, val, test = digits_loaders(cfg.batch_size, seed)
    torch.manual_seed(seed)  # the initialisation too (fit seeds only after it)
    model = build_model(cfg.architecture, norm, 10)
    plain = {} if norm == "sigma" else {"norm_lr_mult": 1.0, "norm_weight_decay": 1e-4}
    optim = OptimConfig(**{**cfg.train, "epochs": epochs, **plain})
    fit(model, train_loader, val, optim, regularizer=regularizer, strength=strength,
        offset=offset, select_best=cfg.select_best, seed=seed, accelerator=cfg.accelerator)
    return model.eval(), (val, test)


def evaluate(model: torch.nn.Module, loaders: tuple[Any, Any], mode: str) -> dict[str, Any]:
    """Unpruned and one-shot pruned (no fine-tuning) val/test accuracy at every ratio, with the
    importances of the channels each cut removes, every channel's importance and which channels
    the 70 % cut removes."""
    val, test = loaders
    record: dict[str, Any] = {"val": accuracy(model, val), "test": accuracy(model, test),
                              **model_stats(model, EXAMPLE), "pruned": {}}
    for ratio in RATIOS:
        plan = plan_pruning(model, EXAMPLE, ratio, mode=mode, min_keep=PruneConfig.min_keep)
        scores = torch.cat([u.scores for u in plan.units]).numpy()
        removed = np.concatenate([np.isin(np.arange(u.channels), u.pruned) for u in plan.units])
        pruned = apply_plan(copy.deepcopy(model), EXAMPLE, plan)
        record["pruned"][str(ratio)] = {
            "realised_ratio": plan.realised_ratio, "threshold": plan.threshold,
            "max_removed": float(scores[removed].max()),
            "closed_removed": float((scores[removed] < CLOSED).mean()),
            "val": accuracy(pruned, val), "test": accuracy(pruned, test),
            **model_stats(pruned, EXAMPLE)}
        if ratio == CUT:  # compact: one string each instead of hundreds of JSON lines
            record["importance"] = " ".join(f"{v:.4g}" for v in scores)
            record["removed_at_cut"] = "".join("1" if r else "0" for r in removed)
    return record


def channel_scores(record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Every channel's importance and whether the 70 % cut removes it, from a record."""
    return (np.array(record["importance"].split(), dtype=float),
            np.array(list(record["removed_at_cut"])) == "1")


def layer_summary(record: dict[str, Any], widths: list[tuple[str, int]]
                  ) -> list[dict[str, Any]]:
    """Per prunable layer, at the 70 % cut: channels kept, largest kept and removed importance,
    and the removed channels' share of the layer's summed importance."""
    scores, removed = channel_scores(record)
    rows, start = [], 0
    for name, channels in widths:
        part, gone = scores[start:start + channels], removed[start:start + channels]
        start += channels
        rows.append({"layer": name, "channels": channels, "kept": int((~gone).sum()),
                     "max_kept": float(part[~gone].max()),
                     "max_removed": float(part[gone].max()) if gone.any() else None,
                     "removed_share": float(part[gone].sum() / part.sum())})
    return rows


def key(method: str, strength: float, offset: float, epochs: int, seed: int) -> str:
    return f"{method} λ={strength:g} b={offset:g} epochs={epochs} seed={seed}"


def choose(records: list[dict[str, Any]], ratio: float = CUT) -> dict[str, Any]:
    """The record with the best val accuracy right after a ``ratio`` prune (ties: mean over the
    ratios, then unpruned val accuracy)."""
    def rank(r: dict[str, Any]) -> tuple[float, float, float]:
        pruned = r["pruned"]
        return (pruned[str(ratio)]["val"], float(np.mean([p["val"] for p in pruned.values()])),
                r["val"])
    return max(records, key=rank)


def save_gate_histograms(records: list[dict[str, Any]], path: Path) -> None:
    """Gate histograms on a log axis, channels removed by the 70 % cut stacked on kept ones,
    with the cut's threshold and the 0.05 line marked."""
    from matplotlib.figure import Figure

    floor = 1e-5
    bins = np.logspace(np.log10(floor), 0, 31)
    fig = Figure(figsize=(5 * len(records), 3.4), layout="constrained")
    axes = fig.subplots(1, len(records), squeeze=False)[0]
    for ax, r in zip(axes, records, strict=True):
        gates, removed = channel_scores(r)
        gates = np.clip(gates, floor, 1.0)
        cut = r["pruned"][str(CUT)]
        ax.hist([gates[removed], gates[~removed]], bins=bins, stacked=True,
                color=["tab:red", "tab:blue"], label=["removed at 70 %", "kept"])
        ax.axvline(cut["threshold"], color="k", ls="--", lw=1, label="70 % threshold")
        ax.axvline(CLOSED, color="gray", ls=":", lw=1, label=f"gate {CLOSED}")
        ax.set(xscale="log", xlabel=f"gate sigmoid(γ) (< {floor:g} drawn at {floor:g})",
               ylabel="channels", title=f"RNI λ {r['strength']:g}, b {r['offset']:g}, "
               f"{r['epochs']} epochs\nmax removed gate {cut['max_removed']:.2g}, "
               f"val acc at 70 %: {100 * cut['val']:.1f} %")
        ax.legend(fontsize=7, loc="upper left")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lambdas", nargs="+", type=float, default=[1e-2, 3e-2, 1e-1, 3e-1])
    parser.add_argument("--offsets", nargs="+", type=float, default=[0.0, 1.0, 3.0])
    parser.add_argument("--epochs", nargs="+", type=int, default=[20, 40])
    parser.add_argument("--l1_lambdas", nargs="+", type=float, default=[1e-4, 1e-3, 1e-2])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="seeds of the final comparison (the sweeps use the first)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/rni_sweep.json"))
    parser.add_argument("--figure", type=Path,
                        default=Path("docs/figures/pruning/rni_gates.png"))
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")
    old = json.loads(args.output.read_text())["records"] if args.output.is_file() else []
    records = {r["key"]: r for r in old}

    def run(method: str, strength: float, offset: float, epochs: int, seed: int
            ) -> dict[str, Any]:
        k = key(method, strength, offset, epochs, seed)
        if k not in records:
            start = time.perf_counter()
            model, loaders = train(method, strength, offset, epochs, seed)
            records[k] = {"key": k, "method": method, "strength": strength, "offset": offset,
                          "epochs": epochs, "seed": seed,
                          **evaluate(model, loaders, METHODS[method][2]),
                          "wall_s": time.perf_counter() - start}
            write_json(args.output, {"records": list(records.values())})
            cut = records[k]["pruned"][str(CUT)]
            print(f"{k}: val {records[k]['val']:.3f}, 70 %: val {cut['val']:.3f}, removed "
                  f"< {CLOSED}: {cut['closed_removed']:.2f}, max removed "
                  f"{cut['max_removed']:.3g} ({records[k]['wall_s']:.0f} s)", flush=True)
        return records[k]

    seed = args.seeds[0]
    grid = [run("rni", lam, b, e, seed)
            for e in args.epochs for lam in args.lambdas for b in args.offsets]
    rni = choose(grid)
    epochs = rni["epochs"]
    l1 = choose([run("l1", lam, 0.0, epochs, seed) for lam in args.l1_lambdas])
    chosen = {"rni": rni, "rni_90": choose(grid, RATIOS[-1]), "l1": l1,
              "uniform": run("uniform", 0.0, 0.0, epochs, seed)}
    for s in args.seeds[1:]:
        for c in chosen.values():
            run(c["method"], c["strength"], c["offset"], c["epochs"], s)
    default = run("rni", PruneConfig().strength["rni"], PruneConfig.offset,
                  PruneConfig().train["epochs"], seed)
    closed = [r for r in grid if r["pruned"][str(CUT)]["closed_removed"] == 1.0]
    worst = [min(closed, key=lambda r: r["pruned"][str(CUT)]["val"])] if closed else []
    save_gate_histograms([default, rni, *worst], args.figure)
    units = plan_pruning(build_model(PruneConfig.architecture, "sigma", 10), EXAMPLE, 0.0).units
    for r in records.values():
        r["layers_at_cut"] = layer_summary(r, [(u.root, u.channels) for u in units])
    write_json(args.output, {
        "protocol": "tasknorm prune defaults (PruneConfig) on digits, OMP_NUM_THREADS="
                    f"{os.environ.get('OMP_NUM_THREADS')}; accuracy right after one-shot "
                    "pruning, no fine-tuning; settings chosen on val",
        "chosen": {m: c["key"] for m, c in chosen.items()}, "records": list(records.values())})
    print(f"chosen: {json.dumps({m: c['key'] for m, c in chosen.items()})}\n"
          f"wrote {args.output}, {args.figure}")


if __name__ == "__main__":
    main()
