"""Step time of task-tree models against hard sharing and TSσBN, batched and looped groups.

One training step (forward of every task, cross-entropy losses, backward, SGD step) of a
``MultiTaskModel`` on MultiDigits images with the 18 tasks of ``multidigits_attributes``
(``digits_cnn`` width 8, batch 128), median over ``--steps`` steps after ``--warmup``, the
architectures interleaved step by step so that machine load hits them alike. Trees: a three-way
split (left-digit tasks, right-digit tasks, pair tasks) after 1, 2 or 3 of the 4 stages, and
the separate tree (one group per task everywhere, TSσBN's compute), each with batched and looped
group execution. Also reports FLOPs per image. Results: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from tasknorm.data.multidigits import ATTRIBUTE_TASKS, PAIR_TASKS
from tasknorm.io import write_json
from tasknorm.models import MultiTaskModel, count_flops, digits_cnn
from tasknorm.tasks import ClassificationTask

SIDES = {side: [t for t in ATTRIBUTE_TASKS if t.startswith(side + "_")]
         for side in ("left", "right")}
PAIR = [t for t in ATTRIBUTE_TASKS if t not in SIDES["left"] + SIDES["right"]]
SPLIT = [SIDES["left"], SIDES["right"], PAIR]


def split_after(shared_stages: int) -> list[list[list[str]]]:
    """Shared for ``shared_stages`` of the 4 stages, then left / right / pair groups."""
    return [[list(ATTRIBUTE_TASKS)]] * shared_stages + [SPLIT] * (4 - shared_stages)


def configurations() -> dict[str, tuple[str, dict | None]]:
    configs: dict[str, tuple[str, dict | None]] = {"hard": ("hard", None),
                                                   "task_sigma": ("task_sigma", None)}
    for execution in ("batched", "looped"):
        for shared in (1, 2, 3):
            configs[f"split_after_{shared}_{execution}"] = (
                "tree", {"groups": split_after(shared), "execution": execution})
        configs[f"separate_{execution}"] = ("tree", {"execution": execution})
    return configs


def build(architecture: str, args: dict | None) -> MultiTaskModel:
    torch.manual_seed(0)
    tasks = [ClassificationTask(t, PAIR_TASKS[t].num_classes("left_right"))
             for t in ATTRIBUTE_TASKS]
    return MultiTaskModel(lambda: digits_cnn(width=8), tasks, architecture,
                          architecture_args=args).train()


def step(model: MultiTaskModel, optimizer: torch.optim.Optimizer, x: torch.Tensor,
         targets: dict[str, torch.Tensor]) -> None:
    optimizer.zero_grad(set_to_none=True)
    outputs = model(x)
    sum(F.cross_entropy(outputs[t], targets[t]) for t in outputs).backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 1, 23, 23, generator=generator)
    targets = {t: torch.randint(PAIR_TASKS[t].num_classes("left_right"), (args.batch_size,),
                                generator=generator) for t in ATTRIBUTE_TASKS}
    models = {name: build(*config) for name, config in configurations().items()}
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.01) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    load_before = os.getloadavg()[0]
    for index in range(args.warmup + args.steps):
        for name, model in models.items():
            start = time.perf_counter()
            step(model, optimizers[name], x, targets)
            if index >= args.warmup:
                times[name].append(time.perf_counter() - start)
    hard_flops = count_flops(models["hard"].eval(), x[:1])
    rows = []
    for name, model in models.items():
        median = statistics.median(times[name])
        flops = count_flops(model.eval(), x[:1])
        rows.append({"name": name, "median_s": median, "min_s": min(times[name]),
                     "max_s": max(times[name]), "flops": flops,
                     "flops_vs_hard": flops / hard_flops})
    hard = next(r["median_s"] for r in rows if r["name"] == "hard")
    print("| model | FLOPs ÷ hard | step ms (median) | ÷ hard |")
    print("|---|---|---|---|")
    for row in rows:
        row["vs_hard"] = row["median_s"] / hard
        print(f"| {row['name']} | {row['flops_vs_hard']:.2f} | {1000 * row['median_s']:.1f} | "
              f"{row['vs_hard']:.2f} |")
    if args.output:
        write_json(args.output, {
            "command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
            "threads": args.threads, "batch_size": args.batch_size, "steps": args.steps,
            "load_average": [load_before, os.getloadavg()[0]],
            "date": datetime.date.today().isoformat(), "rows": rows})


if __name__ == "__main__":
    main()
