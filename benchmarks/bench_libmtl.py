"""Epoch time of tasknorm against LibMTL 1.1.5: the same model, data and optimizer, one epoch.

Both sides train one epoch of MultiDigits (``left_right``, 10,000 training images, batch 128,
78 batches) on tasknorm's ``digits_cnn`` backbone with the two linear heads (hard sharing), SGD
(lr 0.05, Nesterov momentum 0.9, weight decay 1e-4 on every parameter), 2 CPU threads, with
equal weighting (tasknorm ``equal``, LibMTL ``EW``) and PCGrad (tasknorm ``pcgrad``, TorchJD's;
LibMTL ``PCGrad``):

* tasknorm: its real path, Lightning's ``Trainer`` fitting ``MultiTaskModule(architecture=
  "hard")`` on ``MultiDigitsDataModule``, without validation, logger, checkpoints or progress
  bar; the epoch is wall time from ``on_train_epoch_start`` to ``on_train_epoch_end``.
* LibMTL: its ``Trainer.train`` loop with the ``HPS`` architecture, run in a virtual environment
  of its own (made by this script when missing: torch, numpy and scipy, which LibMTL's weighting
  package imports, at this environment's versions, and LibMTL without its dependencies; no
  torchvision, tasknorm or Lightning). The epoch is LibMTL's own meter time of the training loop
  (the ``Time:`` it prints), read before the evaluation that ``train`` runs after every epoch,
  here on one batch of 128 test images and not timed.

The backbone and heads with their initial weights, the training tensors and the batch order (a
seeded ``DistributedSampler``, as the data module's) are saved once and loaded by both sides;
the backbone is traced with ``torch.fx``, so that LibMTL's side runs the same ``torch.nn``
modules without importing tasknorm. Both epochs include loading the batches (the same per-image
conversion and collation) and each library's own per-batch bookkeeping (tasknorm's logging,
LibMTL's loss and accuracy meters). Since both train the same model on the same batches, their
mean training losses agree (printed): the check that the two do the same work.

LibMTL 1.1.5 predates torch 2 and torchvision 0.13; the shims, none of which changes its
computation: its package ``__init__`` (which imports the removed ``torchvision.models.utils``) is
skipped, its ``Trainer`` gets the CPU instead of its hard-coded ``cuda:0`` and ``next(iterator)``
instead of ``iterator.next()``, and ``HPS`` zeroes the shared gradients in place, as
``zero_grad`` did before torch 2.0 (PCGrad writes its update into ``param.grad.data``).

Every run is a fresh process; the sides alternate, each round starting with the other side.

``--overhead N`` measures what tasknorm's training path adds to the computation: in one process,
N times, an epoch through Lightning as above, then an epoch of a bare PyTorch loop (forward,
cross-entropy per task, their sum, backward, the optimizer's step) over the same module's model,
optimizer and data module.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

if TYPE_CHECKING:
    from tasknorm.data import MultiDigitsDataModule

METHODS = {"equal": "EW", "pcgrad": "PCGrad"}
"""tasknorm's method → LibMTL's weighting."""
LIBMTL = "1.1.5"
BATCH_SIZE = 128
TEST_IMAGES = 128
SGD = {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}


def data_module() -> MultiDigitsDataModule:
    """tasknorm's MultiDigits data module (``left_right``, batch 128), set up for fitting."""
    from tasknorm.data import MultiDigitsDataModule

    data = MultiDigitsDataModule(variant="left_right", batch_size=BATCH_SIZE)
    data.setup("fit")
    return data


def prepare(work: Path) -> None:
    """Save the initial model (``model.pt``: the fx-traced backbone and the heads) and the
    MultiDigits tensors with the training order (``data.pt``)."""
    import lightning as L

    data = data_module()
    train, test = data.splits["train"], data.splits["test"]
    L.seed_everything(0, verbose=False)
    model = tasknorm_module(data, "equal").model
    traced = torch.fx.symbolic_trace(model.backbone)
    images = torch.stack([train[i]["image"] for i in range(4)])
    with torch.no_grad():
        if not torch.equal(traced.eval()(images), model.backbone.eval()(images)):
            raise RuntimeError("the traced backbone differs from tasknorm's")
    torch.save({"encoder": traced.train(), "decoders": model.heads}, work / "model.pt")
    order = list(DistributedSampler(train, num_replicas=1, rank=0, shuffle=True,
                                    seed=data.seed, drop_last=True))
    torch.save({"tasks": list(data.task_names), "images": train.images,
                "targets": train.targets, "order": order,
                "test_images": test.images[:TEST_IMAGES],
                "test_targets": {t: v[:TEST_IMAGES] for t, v in test.targets.items()}},
               work / "data.pt")


def tasknorm_module(data, method: str):
    """tasknorm's training module of hard sharing with ``method``, SGD as LibMTL's (``SGD``)."""
    from tasknorm.train import MultiTaskModule, Optimization

    optimization = Optimization(optimizer="sgd", lr=SGD["lr"], momentum=SGD["momentum"],
                                weight_decay=SGD["weight_decay"], norm_lr_mult=1.0,
                                norm_weight_decay=SGD["weight_decay"], scheduler="none")
    return MultiTaskModule(data.tasks, architecture="hard", optimization=optimization,
                           balancing={"weighting": method})


def tasknorm_epoch(method: str, work: Path, batches: int | None) -> dict:
    """One epoch through Lightning, from the saved weights, on the data module's tensors
    (checked equal to the saved ones)."""
    import lightning as L

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            self.seconds = time.perf_counter() - self.start

    data = data_module()
    saved = torch.load(work / "data.pt")
    train = data.splits["train"]
    if not (torch.equal(train.images, saved["images"])
            and all(torch.equal(train.targets[t], saved["targets"][t]) for t in saved["tasks"])):
        raise RuntimeError("the data module's training tensors differ from the saved ones")
    module = tasknorm_module(data, method)
    initial = torch.load(work / "model.pt", weights_only=False)
    module.model.backbone.load_state_dict(initial["encoder"].state_dict())
    module.model.heads.load_state_dict(initial["decoders"].state_dict())
    timer = EpochTimer()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=batches, limit_val_batches=0,
                        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, data)
    metrics = trainer.callback_metrics
    return {"seconds": timer.seconds, "batches": trainer.num_training_batches,
            "losses": {t: float(metrics[f"train/{t}_loss"]) for t in saved["tasks"]}}


def bare_epoch() -> float:
    """Seconds of one epoch of a bare PyTorch loop over tasknorm's hard-sharing model, with
    its optimizer and data module, as ``tasknorm_epoch`` trains them but without Lightning."""
    data = data_module()
    module = tasknorm_module(data, "equal").train()
    optimizer = module.configure_optimizers()["optimizer"]
    start = time.perf_counter()
    for batch in data.train_dataloader():
        outputs = module.model(batch["image"])
        loss = sum(torch.nn.functional.cross_entropy(outputs[t], batch[t])
                   for t in data.task_names)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def overhead(rounds: int, work: Path) -> None:
    """Print, ``rounds`` times in this process, a Lightning epoch's and a bare loop's seconds."""
    for round_ in range(rounds):
        lightning = tasknorm_epoch("equal", work, None)["seconds"]
        print(f"round {round_}: Lightning {lightning:.2f} s, bare loop {bare_epoch():.2f} s",
              flush=True)


def _libmtl_without_init() -> None:
    """Register LibMTL as a bare package, so that its submodules import without its
    ``__init__``, which imports ``torchvision.models.utils`` (gone since torchvision 0.13)."""
    spec = importlib.util.find_spec("LibMTL")
    if spec is not None and "LibMTL" not in sys.modules:
        package = types.ModuleType("LibMTL")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["LibMTL"] = package


class Digits(Dataset):
    """Saved MultiDigits tensors as LibMTL's loaders yield them, ``(image, {task: label})``,
    each image converted as tasknorm's ``MultiDigits`` does."""

    def __init__(self, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return (self.images[index].float() / 255,
                {task: labels[index] for task, labels in self.targets.items()})


def libmtl_epoch(method: str, work: Path, batches: int | None) -> dict:
    """One epoch of LibMTL's ``Trainer.train`` (in LibMTL's environment, without tasknorm)."""
    _libmtl_without_init()
    from LibMTL import weighting
    from LibMTL.architecture import HPS
    from LibMTL.loss import CELoss
    from LibMTL.metrics import AccMetric
    from LibMTL.trainer import Trainer

    class SharedGradsZeroedInPlace(HPS):
        def zero_grad_share_params(self) -> None:
            self.encoder.zero_grad(set_to_none=False)

    class CPUTrainer(Trainer):
        """LibMTL's ``Trainer`` on the CPU with today's DataLoader iterators, keeping the
        meter's time of each training epoch."""

        epoch_seconds: list[float]

        def _prepare_model(self, *args: object) -> None:
            self.device = torch.device("cpu")
            self.epoch_seconds = []
            super()._prepare_model(*args)

        def _process_data(self, loader: list) -> tuple:
            try:
                return next(loader[1])
            except StopIteration:
                loader[1] = iter(loader[0])
                return next(loader[1])

        def test(self, test_dataloaders: DataLoader, epoch: int | None = None,
                 mode: str = "test") -> None:
            self.epoch_seconds.append(self.meter.end_time - self.meter.beg_time)
            super().test(test_dataloaders, epoch, mode)

    data = torch.load(work / "data.pt")
    initial = torch.load(work / "model.pt", weights_only=False)
    order = data["order"][:None if batches is None else batches * BATCH_SIZE]
    train = DataLoader(Digits(data["images"], data["targets"]), BATCH_SIZE, sampler=order,
                       drop_last=True)
    test = DataLoader(Digits(data["test_images"], data["test_targets"]), BATCH_SIZE)
    tasks = {t: {"metrics": ["Acc"], "metrics_fn": AccMetric(), "loss_fn": CELoss(),
                 "weight": [1]} for t in data["tasks"]}
    trainer = CPUTrainer(tasks, getattr(weighting, METHODS[method]), SharedGradsZeroedInPlace,
                         lambda: initial["encoder"], initial["decoders"], rep_grad=False,
                         multi_input=False, optim_param={"optim": "sgd", **SGD},
                         scheduler_param=None, weight_args={}, arch_args={})
    trainer.train(train, test, epochs=1)
    (seconds,) = trainer.epoch_seconds
    return {"seconds": seconds, "batches": len(train), "libmtl": version("LibMTL"),
            "losses": dict(zip(data["tasks"], trainer.model.train_loss_buffer[:, 0].tolist(),
                               strict=True))}


def libmtl_python(venv: Path) -> Path:
    """The Python of LibMTL's virtual environment, made first if missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating LibMTL's environment in {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pins = [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "numpy", "scipy")]
        subprocess.run([python, "-m", "pip", "install", "--quiet", *pins], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps",
                        f"LibMTL=={LIBMTL}"], check=True)
    return python


def run_side(python: Path, side: str, method: str, work: Path, args: argparse.Namespace
             ) -> dict:
    """One epoch of ``side`` in a fresh process of ``python``."""
    result = work / f"{side}-{method}.json"
    command = [str(python), __file__, "--side", side, "--method", method, "--work", str(work),
               "--threads", str(args.threads), "--result", str(result)]
    if args.batches is not None:
        command += ["--batches", str(args.batches)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{side} {method} failed:\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=4, help="epochs timed per side and method")
    parser.add_argument("--batches", type=int, help="batches per epoch (default: all)")
    parser.add_argument("--quick", action="store_true", help="check only: 3 batches, 1 run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--venv", default="/tmp/libmtl-venv", help="LibMTL's environment")
    parser.add_argument("--output", help="JSON file for the results")
    parser.add_argument("--overhead", type=int, metavar="N",
                        help="instead: N Lightning and bare-loop epochs in one process")
    parser.add_argument("--side", choices=["tasknorm", "libmtl"], help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batches, args.runs = 3, 1
    if args.overhead:
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as work:
            prepare(Path(work))
            overhead(args.overhead, Path(work))
        return
    if args.side:
        torch.set_num_threads(args.threads)
        epoch = tasknorm_epoch if args.side == "tasknorm" else libmtl_epoch
        args.result.write_text(json.dumps(epoch(args.method, args.work, args.batches)))
        return
    pythons = {"tasknorm": Path(sys.executable), "libmtl": libmtl_python(Path(args.venv))}
    load_before = os.getloadavg()[0]
    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as work:
        prepare(Path(work))
        for round_ in range(args.runs):
            sides = list(pythons) if round_ % 2 == 0 else list(pythons)[::-1]
            for method in METHODS:
                for side in sides:
                    result = run_side(pythons[side], side, method, Path(work), args)
                    runs.setdefault((side, method), []).append(result)
                    print(f"round {round_}: {side} {method} {result['seconds']:.2f} s",
                          flush=True)
    rows = []
    for method, theirs in METHODS.items():
        ours, libmtl = runs["tasknorm", method], runs["libmtl", method]
        ours_s = statistics.median(r["seconds"] for r in ours)
        libmtl_s = statistics.median(r["seconds"] for r in libmtl)
        rows.append({"method": method, "libmtl_method": theirs, "batches": ours[0]["batches"],
                     "tasknorm_s": [r["seconds"] for r in ours],
                     "libmtl_s": [r["seconds"] for r in libmtl],
                     "tasknorm_median_s": ours_s, "libmtl_median_s": libmtl_s,
                     "ratio": ours_s / libmtl_s, "tasknorm_losses": ours[0]["losses"],
                     "libmtl_losses": libmtl[0]["losses"]})
    command = "python " + " ".join(sys.argv)
    if args.output:
        from tasknorm.io import write_json

        write_json(args.output, {
            "command": command, "torch": torch.__version__, "libmtl": LIBMTL,
            "threads": args.threads, "batch_size": BATCH_SIZE, "runs": args.runs,
            "load_average": [load_before, os.getloadavg()[0]],
            "date": datetime.date.today().isoformat(), "rows": rows})
    print(f"`{command}`\n")
    print("| method | batches | tasknorm epoch s | LibMTL epoch s | tasknorm / LibMTL | "
          "mean train losses, tasknorm | LibMTL |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} / {r['libmtl_method']} | {r['batches']} | "
              f"{r['tasknorm_median_s']:.2f} | {r['libmtl_median_s']:.2f} | {r['ratio']:.3f} | "
              + " | ".join(", ".join(f"{v:.4f}" for v in r[f"{side}_losses"].values())
                           for side in ("tasknorm", "libmtl")) + " |")


if __name__ == "__main__":
    main()
