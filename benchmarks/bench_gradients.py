"""Cost of the gradient methods: training-step time of CosReg and of every TorchJD aggregator
relative to equal weighting, on the same model and batch.

The MultiDigits default model (``digits_cnn`` width 32, TSσBN unless ``--architecture``), one
batch of 128 images. Each method has its own copy of the model (same initial weights) and SGD
optimizer, and runs the computation of :class:`~tasknorm.train.MultiTaskModule`'s step for it
(forward passes, losses; Jacobian and aggregation, or penalty; backward; optimizer step)
through the module's own methods, without Lightning's loop. On a task-specific model a few
gradient methods are also timed through the all-tasks pass (``... (all-tasks pass)``), which the
module no longer uses for them: there each task's backward pass traverses every task's copy of
the batch. ``--tasks``: the MultiDigits tasks (``left right`` by default). Methods are timed
**round-robin** (one step of each, ``--steps`` times, after ``--warmup`` rounds), so that load
from other processes on a shared machine hits all of them alike; reported are the median and
the minimum over rounds and their ratios to ``equal``. Target for CosReg: ≤ 2.5×.

    python benchmarks/bench_gradients.py --output benchmarks/results/gradients_multidigits.json

Results: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from collections.abc import Callable

import torch

from tasknorm.data import MultiDigitsDataModule
from tasknorm.data.multidigits import DEFAULT_TASKS
from tasknorm.io import write_json
from tasknorm.train import MultiTaskModule

AGGREGATOR_ORDER = ("mgda", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "upgrad", "graddrop",
                    "aligned_mtl", "dualproj")
ALL_TASKS_PASS = ("pcgrad", "upgrad")
"""Gradient methods also timed through the all-tasks pass on a task-specific model."""


def make_step(name: str, base: MultiTaskModule, batch: dict, tasks: list,
              all_tasks_pass: bool = False) -> Callable[[], None]:
    """One training step of method ``name`` on a copy of ``base``'s model and ``batch``: the
    computation of :class:`~tasknorm.train.MultiTaskModule`'s step (its forward passes, losses,
    Jacobian and aggregation or CosReg penalty, backward), then an SGD step. With
    ``all_tasks_pass`` a gradient method reads the outputs of the all-tasks pass, as the module
    did before it ran one pass per task (the counterfactual row of the benchmark)."""
    options: dict = {"architecture": base.hparams.architecture,
                     "backbone_args": base.hparams.backbone_args}
    if name.startswith("cosreg"):
        options |= {"cosreg_alpha": 10.0,
                    "cosreg_args": {"parameters": ["*"]} if "all" in name else None}
    elif name != "equal":
        options["aggregator"] = name.split(" ")[0]
    module = MultiTaskModule(tasks, **options).train()
    module.model.load_state_dict(base.model.state_dict())
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step() -> None:
        image = batch["image"]
        outputs = module.model(image) if all_tasks_pass else module._training_outputs(image)
        losses = module._losses(outputs, batch)
        optimizer.zero_grad()
        if module.aggregator is not None:
            module._write_aggregated_gradients(module.weighting.objectives(losses), losses)
        else:
            total = module.weighting(losses)
            if module.cosreg is not None:
                total = total + module.cosreg(losses)
            total.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="task_sigma")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = MultiDigitsDataModule(sizes=(args.batch_size, 64, 64), batch_size=args.batch_size,
                                 tasks=args.tasks)
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    base = MultiTaskModule(data.tasks, backbone_args={"width": args.width},
                           architecture=args.architecture).train()
    names = ["equal", "cosreg (last shared layer)", "cosreg (all shared)", *AGGREGATOR_ORDER]
    steps = {name: make_step(name, base, batch, data.tasks) for name in names}
    if base.model.task_specific:
        steps |= {f"{name} (all-tasks pass)": make_step(name, base, batch, data.tasks, True)
                  for name in ALL_TASKS_PASS}
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.warmup + args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
    results = {name: {"median_s": statistics.median(t), "min_s": min(t), "times_s": t}
               for name, t in times.items()}
    equal = results["equal"]
    print("| method | median ms | × equal (median) | min ms | × equal (min) |\n"
          "|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {1000 * r['median_s']:.0f} | {r['median_s'] / equal['median_s']:.2f} "
              f"| {1000 * r['min_s']:.0f} | {r['min_s'] / equal['min_s']:.2f} |")
    if args.output:
        write_json(args.output, {"date": datetime.datetime.now(datetime.UTC).isoformat(),
                                 "torch": torch.__version__, "threads": args.threads,
                                 "architecture": args.architecture, "width": args.width,
                                 "tasks": args.tasks,
                                 "batch_size": args.batch_size, "steps": args.steps,
                                 "results": results})


if __name__ == "__main__":
    main()
