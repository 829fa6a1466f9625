"""Data loading vs training on the rendered scenes: is loading the bottleneck?

* loader alone: images per second that the training ``DataLoader`` of
  ``RenderedScenesDataModule`` delivers (with the NYUv2 scale-crop + flip augmentation), per
  number of worker processes;
* training: a Lightning fit of the default ``scenes`` model (each architecture), with Lightning's
  ``SimpleProfiler`` splitting every training step into the wait for the next batch
  (``train_dataloader_next``) and the step itself (``run_training_batch``); the consumption rate
  is images per second of ``run_training_batch`` and the data wait is the share of the epoch
  spent in ``train_dataloader_next``.

Loading is not the bottleneck when the loader alone is faster than training consumes and the
data wait during training is small. Results: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time

import lightning as L
import torch
from lightning.pytorch.profilers import SimpleProfiler

from tasknorm.data import RenderedScenesDataModule
from tasknorm.io import write_json
from tasknorm.train import MultiTaskModule, Optimization

NEXT = "[_TrainingEpochLoop].train_dataloader_next"
STEP = "run_training_batch"


def loader_images_per_second(workers: int, batch_size: int, epochs: int) -> float:
    """Images per second of full passes over the training loader (after one warm-up pass)."""
    data = RenderedScenesDataModule(batch_size=batch_size, num_workers=workers, augment=True)
    data.prepare_data()
    data.setup("fit")
    loader = data.train_dataloader()
    rates = []
    for epoch in range(epochs + 1):
        loader.sampler.set_epoch(epoch)
        start = time.perf_counter()
        images = sum(batch["image"].size(0) for batch in loader)
        if epoch:
            rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def training_profile(architecture: str, workers: int, batch_size: int, epochs: int
                     ) -> dict[str, float]:
    """Training rate and data wait of a ``scenes`` fit (first epoch discarded as warm-up)."""
    L.seed_everything(0, verbose=False)
    data = RenderedScenesDataModule(batch_size=batch_size, num_workers=workers, augment=True)
    module = MultiTaskModule(data.tasks, backbone="dilated_cnn", backbone_args={"width": 16},
                             architecture=architecture,
                             optimization=Optimization(optimizer="adam", lr=0.002,
                                                       scheduler="none"))
    profiler = SimpleProfiler()
    trainer = L.Trainer(max_epochs=epochs + 1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, profiler=profiler)
    trainer.fit(module, data)
    per_epoch = len(profiler.recorded_durations[STEP]) // (epochs + 1)
    waits = profiler.recorded_durations[NEXT][-per_epoch * epochs:]
    steps = profiler.recorded_durations[STEP][-per_epoch * epochs:]
    return {"train_images_per_s": batch_size * len(steps) / sum(steps),
            "data_wait_fraction": sum(waits) / (sum(waits) + sum(steps))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--architectures", nargs="+", default=["hard", "task_sigma"])
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", help="JSON file for the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loader = {w: loader_images_per_second(w, args.batch_size, args.epochs) for w in args.workers}
    rows = [{"architecture": a, "workers": w, "loader_images_per_s": loader[w],
             **training_profile(a, w, args.batch_size, args.epochs)}
            for a in args.architectures for w in args.workers]
    command = "python " + " ".join(sys.argv)
    if args.output:
        write_json(args.output, {"command": command, "torch": torch.__version__,
                                 "threads": args.threads, "batch_size": args.batch_size,
                                 "date": datetime.date.today().isoformat(), "rows": rows})
    print(f"`{command}`\n")
    print("| architecture | workers | loader alone, images/s | training consumes, images/s | "
          "data wait during training |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['architecture']} | {r['workers']} | {r['loader_images_per_s']:.0f} | "
              f"{r['train_images_per_s']:.0f} | {100 * r['data_wait_fraction']:.1f} % |")


if __name__ == "__main__":
    main()
