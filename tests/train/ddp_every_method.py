"""Run by ``torchrun --nproc_per_node 2`` from ``test_ddp.py``: each balancing method trains six
batches of MultiDigits under Lightning's ``ddp`` strategy; every process saves, per method, the
initial and final value of each entry of the module's state dict (the model's parameters and
buffers, and the method's own state) to ``OUT/rank{RANK}.pt``.

Usage: ``torchrun --nproc_per_node 2 ddp_every_method.py CACHE_DIR OUT``."""

import copy
import os
import sys

import lightning as L
import torch

from tasknorm.data import MultiDigitsDataModule
from tasknorm.train import METHODS, MultiTaskModule


def main(cache: str, out: str) -> None:
    data = MultiDigitsDataModule(variant="even_odd", sizes=(192, 16, 16), batch_size=16,
                                 cache_dir=cache)
    ended = {}
    for name in sorted(METHODS):
        args = {"weights": {"left": 1.0, "right": 2.0}} if name == "fixed" else None
        L.seed_everything(0, verbose=False)
        model = MultiTaskModule(data.tasks, backbone_args={"width": 2, "norm": False},
                                architecture="hard",
                                balancing={"weighting": name, "weighting_args": args})
        initial = copy.deepcopy(model.state_dict())
        trainer = L.Trainer(max_epochs=1, limit_train_batches=6, limit_val_batches=0,
                            accelerator="cpu", devices=2, strategy="ddp", logger=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, num_sanity_val_steps=0)
        trainer.fit(model, data)
        ended[name] = (initial, copy.deepcopy(model.state_dict()))
    torch.save(ended, os.path.join(out, f"rank{os.environ['RANK']}.pt"))


if __name__ == "__main__":
    main(*sys.argv[1:])
