"""Cost of the gradient methods: training-step time of CosReg and of every TorchJD aggregator
relative to equal weighting, on the same model and batch.

The MultiDigits default model (``digits_cnn`` width 32, TSσBN unless ``--architecture``), one
batch of 128 images. Each method has its own copy of the model (same initial weights) and SGD
optimizer, and runs the computation of :class:`~tasknorm.train.MultiTaskModule`'s step for it
(forward, losses; per-task gradients and penalty or aggregation; backward; optimizer step)
through the same library functions, without Lightning's loop. Methods are timed
**round-robin** (one step of each, ``--steps`` times, after ``--warmup`` rounds), so that load
from other processes on a shared machine hits all of them alike; reported are the median and
the minimum over rounds and their ratios to ``equal``. Target for CosReg: ≤ 2.5×.

    python benchmarks/bench_gradients.py --output benchmarks/results/gradients_multidigits.json

Results: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import time
from collections.abc import Callable

import torch

from tasknorm.data import MultiDigitsDataModule
from tasknorm.io import write_json
from tasknorm.train import AGGREGATORS, CosReg, MultiTaskModule, build_aggregator
from tasknorm.train.aggregation import aggregate, write_gradient
from tasknorm.train.gradients import shared_parameters, task_gradients

AGGREGATOR_ORDER = ("mgda", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "upgrad", "graddrop",
                    "aligned_mtl", "dualproj")


def make_step(name: str, module: MultiTaskModule, batch: dict) -> Callable[[], None]:
    """One training step of method ``name`` on ``module`` (its own copy) and ``batch``."""
    model = module.model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    shared = list(shared_parameters(model.backbone).values())
    cosreg = None
    if name.startswith("cosreg"):
        cosreg = CosReg(10.0, parameters=["*"] if "all" in name else None)
        cosreg.attach(model.backbone)
    aggregator = build_aggregator(name, 2) if name in AGGREGATORS else None

    def step() -> None:
        outputs = model(batch["image"])
        losses = module._losses(outputs, batch)
        optimizer.zero_grad()
        if aggregator is not None:
            direction = aggregate(aggregator, task_gradients(losses, shared))
            sum(losses.values()).backward()
            write_gradient(shared, direction)
        else:
            total = sum(losses.values())
            if cosreg is not None:
                total = total + cosreg(losses)
            total.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="task_sigma")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = MultiDigitsDataModule(sizes=(args.batch_size, 64, 64), batch_size=args.batch_size)
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    base = MultiTaskModule(data.tasks, backbone_args={"width": args.width},
                           architecture=args.architecture).train()
    names = ["equal", "cosreg (last shared layer)", "cosreg (all shared)", *AGGREGATOR_ORDER]
    steps = {name: make_step(name, copy.deepcopy(base), batch) for name in names}
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
                                 "batch_size": args.batch_size, "steps": args.steps,
                                 "results": results})


if __name__ == "__main__":
    main()
