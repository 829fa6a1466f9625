"""Pruned VGG-16 and ResNet-56 (CIFAR): parameters, MACs and measured CPU latency.

For each model and channel prune ratio (fraction of prunable channels, RNI's ``prune_pc``): a
σBN model with gates drawn as in training from scratch (raw γ ~ N(0, 1)), pruned one-shot by a
global gate threshold (≥ 3 channels per layer) through Torch-Pruning, turned into plain BatchNorm
(:func:`tasknorm.prune.to_plain`, the deployed form), then timed on CPU in eval/inference mode,
fp32, eager, with ``--threads`` intra-op threads: median of ``--repeats`` runs after warm-up, at
batch 1 and batch 64. ResNet-56 uses option-A shortcuts, so only block-internal channels are
pruned (as in the paper's code). Gates of a trained RNI model are bimodal rather than Gaussian,
which changes *which* layers lose channels; the per-ratio numbers here are for random gates.

Reported: latency speed-up ÷ MAC speed-up (1 = latency falls as fast as compute). Results:
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import sys

import torch

from tasknorm.io import write_json
from tasknorm.models.cifar import resnet56, vgg16
from tasknorm.prune import measure_latency, model_stats, prune_model, to_plain

MODELS = {"vgg16": vgg16, "resnet56": resnet56}


def run(model_name: str, ratios: list[float], threads: int, repeats: int, seed: int,
        round_to: int | None = None) -> list[dict[str, object]]:
    torch.manual_seed(seed)
    base = MODELS[model_name](norm="sigma").eval()
    example = torch.randn(1, 3, 32, 32)
    rows = []
    for ratio in [0.0, *ratios]:
        model = copy.deepcopy(base)
        realised = 0.0
        if ratio > 0:
            model, plan = prune_model(model, example, ratio, round_to=round_to)
            realised = plan.realised_ratio
        model = to_plain(model).eval()
        row: dict[str, object] = {"model": model_name, "ratio": ratio,
                                  "realised_ratio": realised, **model_stats(model, example)}
        for batch in (1, 64):
            x = torch.randn(batch, 3, 32, 32)
            runs = repeats if batch == 1 else max(5, repeats // 4)
            for statistic in ("median", "min"):
                suffix = "" if statistic == "median" else "_min"
                row[f"latency_bs{batch}{suffix}_ms"] = 1e3 * measure_latency(
                    model, x, threads=threads, repeats=runs, statistic=statistic)
        rows.append(row)
        print(row, flush=True)
    ref = rows[0]
    for row in rows:
        row["mac_speedup"] = ref["macs"] / row["macs"]
        for batch in (1, 64):
            for suffix in ("", "_min"):
                key = f"latency_bs{batch}{suffix}_ms"
                speedup = ref[key] / row[key]
                row[f"speedup_bs{batch}{suffix}"] = speedup
                row[f"efficiency_bs{batch}{suffix}"] = speedup / row["mac_speedup"]
    return rows


def table(rows: list[dict[str, object]], suffix: str = "") -> str:
    """Markdown table of median (``suffix=""``) or fastest-run (``"_min"``) latencies."""
    lines = ["| model | ratio (realised) | params | MMACs | MAC × | bs 1 ms | × | ÷ MAC × "
             "| bs 64 ms | × | ÷ MAC × |", "|" + "---|" * 11]
    for r in rows:
        cells = [f"{r[f'latency_bs{b}{suffix}_ms']:.2f} | {r[f'speedup_bs{b}{suffix}']:.2f} | "
                 f"{r[f'efficiency_bs{b}{suffix}']:.2f}" for b in (1, 64)]
        lines.append(
            f"| {r['model']} | {r['ratio']:.2f} ({r['realised_ratio']:.3f}) | {r['params']:,} "
            f"| {r['macs'] / 1e6:.1f} | {r['mac_speedup']:.2f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.7, 0.9])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--round_to", type=int, help="keep multiples of this many channels")
    parser.add_argument("--output", default="benchmarks/results/pruning.json")
    args = parser.parse_args(argv)
    rows = [row for name in args.models
            for row in run(name, args.ratios, args.threads, args.repeats, args.seed,
                           args.round_to)]
    print("median latency\n" + table(rows) + "\n\nfastest run\n" + table(rows, "_min"))
    write_json(args.output, {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "threads": args.threads,
        "round_to": args.round_to, "rows": rows})


if __name__ == "__main__":
    main()
