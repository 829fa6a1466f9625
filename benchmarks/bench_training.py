"""Training speed on MultiDigits: throughput per architecture and the trainer's overhead.

* throughput: images per second of Lightning training steps (hard sharing vs TSσBN, ...);
* overhead: median time of one Lightning training step (``on_train_batch_start`` to
  ``on_train_batch_end``: forward, losses, NaN check, logging, backward, optimizer step) divided
  by the median time of the same computation in a bare PyTorch loop over the same batches
  (forward, losses, backward, optimizer step). Data loading is outside both. Target: ≤ 1.15.

Results: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import statistics
import sys
import time

import lightning as L
import torch

from tasknorm.data import MultiDigitsDataModule
from tasknorm.io import write_json
from tasknorm.train import MultiTaskModule, Optimization


class StepTimer(L.Callback):
    """Wall time of every training step, data loading excluded."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: object,
                             batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        self.times.append(time.perf_counter() - self._start)


def lightning_step_seconds(architecture: str, data: MultiDigitsDataModule, steps: int,
                           warmup: int) -> float:
    L.seed_everything(0, verbose=False)
    module = MultiTaskModule(data.tasks, architecture=architecture,
                             optimization=Optimization(scheduler="none"))
    timer = StepTimer()
    trainer = L.Trainer(max_steps=steps + warmup, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[timer])
    trainer.fit(module, data)
    return statistics.median(timer.times[warmup:])


def bare_step_seconds(architecture: str, data: MultiDigitsDataModule, steps: int,
                      warmup: int) -> float:
    L.seed_everything(0, verbose=False)
    module = MultiTaskModule(data.tasks, architecture=architecture,
                             optimization=Optimization(scheduler="none"))
    optimizer = module.configure_optimizers()["optimizer"]
    batches = list(itertools.islice(data.train_dataloader(), steps + warmup))
    times = []
    for batch in batches:
        start = time.perf_counter()
        outputs = module.model(batch["image"])
        loss = sum(task.loss(outputs[name], batch[name]) for name, task in module.tasks.items())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--architectures", nargs="+",
                        default=["hard", "sigma", "task", "task_sigma", "single_task"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", help="JSON file for the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = MultiDigitsDataModule(batch_size=args.batch_size)
    data.setup("fit")
    rows = []
    for architecture in args.architectures:
        full = lightning_step_seconds(architecture, data, args.steps, args.warmup)
        bare = bare_step_seconds(architecture, data, args.steps, args.warmup)
        rows.append({"architecture": architecture, "lightning_ms": 1000 * full,
                     "bare_ms": 1000 * bare, "overhead": full / bare,
                     "images_per_s": args.batch_size / full})
    command = "python " + " ".join(sys.argv)
    if args.output:
        write_json(args.output, {"command": command, "torch": torch.__version__,
                                 "threads": args.threads, "batch_size": args.batch_size,
                                 "date": datetime.date.today().isoformat(), "rows": rows})
    print(f"`{command}`\n")
    print("| architecture | images/s | Lightning step ms | bare step ms | overhead |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['architecture']} | {r['images_per_s']:.0f} | {r['lightning_ms']:.1f} | "
              f"{r['bare_ms']:.1f} | {r['overhead']:.3f} |")


if __name__ == "__main__":
    main()
