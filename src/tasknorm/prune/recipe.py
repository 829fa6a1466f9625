"""The σBN / RNI recipe: train with the regulariser → one-shot prune → fine-tune without it.

Training runs through Lightning (:class:`~tasknorm.prune.module.PruningClassifier`); pruning is
:func:`~tasknorm.prune.plan_pruning` + :func:`~tasknorm.prune.apply_plan`.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader

from tasknorm.prune.measure import accuracy, measure_latency, model_stats
from tasknorm.prune.module import PruningClassifier
from tasknorm.prune.surgery import Mode, apply_plan, plan_pruning


@dataclass
class OptimConfig:
    """SGD recipe (defaults: RNI CIFAR, σBN): LR, schedule and the norm-parameter group."""

    epochs: int = 160
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    norm_lr_mult: float = 10.0
    norm_weight_decay: float = 0.0
    milestones: tuple[float, ...] = (0.5, 0.75)


@dataclass
class PruneResult:
    """One pruned model: its plan summary, size, compute, latency and accuracies."""

    ratio: float
    realised_ratio: float
    params: int
    macs: int
    accuracy_pruned: float
    accuracy_finetuned: float | None = None
    latency_s: dict[int, float] = field(default_factory=dict)
    model: nn.Module | None = None


def fit(model: nn.Module, train: DataLoader, val: DataLoader | None, optim: OptimConfig, *,
        regularizer: str | None = None, strength: float = 1e-4, offset: float = 3.0,
        select_best: bool = False, progress: bool = False, seed: int | None = 0,
        accelerator: str = "auto") -> nn.Module:
    """Train ``model`` in place with Lightning; with ``select_best`` (and ``val``) reload the
    epoch with the best ``val/accuracy`` (the RNI code selects on the test set: pass the test
    loader as ``val`` to reproduce that, and report it)."""
    if seed is not None:
        L.seed_everything(seed, verbose=False)
    # RNI drives gates towards 0: activations scaled by sigmoid(γ) ≈ 1e-30 become denormal and
    # x86 CPUs then run 100× slower; flush them to zero while training
    flushed = torch.set_flush_denormal(True)
    model.train()  # Lightning keeps each submodule's mode: an eval-mode model would not update BN
    module = PruningClassifier(model, regularizer, strength, offset, lr=optim.lr,
                               momentum=optim.momentum, nesterov=optim.nesterov,
                               weight_decay=optim.weight_decay,
                               norm_lr_mult=optim.norm_lr_mult,
                               norm_weight_decay=optim.norm_weight_decay,
                               milestones=optim.milestones, epochs=optim.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        callbacks = []
        if select_best and val is not None:
            callbacks.append(ModelCheckpoint(dirpath=tmp, monitor="val/accuracy", mode="max",
                                             save_weights_only=True))
        trainer = L.Trainer(max_epochs=optim.epochs, accelerator=accelerator, devices=1,
                            logger=False, enable_checkpointing=bool(callbacks),
                            callbacks=callbacks, enable_progress_bar=progress,
                            enable_model_summary=False, num_sanity_val_steps=0,
                            default_root_dir=tmp)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*number of training batches.*")
            trainer.fit(module, train, val)
        if callbacks and callbacks[0].best_model_path:
            state = torch.load(callbacks[0].best_model_path, map_location="cpu",
                               weights_only=True)["state_dict"]
            module.load_state_dict(state)
    if flushed:
        torch.set_flush_denormal(False)
    return model.cpu()


def prune_and_finetune(model: nn.Module, example: Tensor, ratios: Sequence[float],
                       train: DataLoader, val: DataLoader, test: DataLoader | None = None, *,
                       finetune: OptimConfig | None = None, mode: Mode = "global",
                       min_keep: int = 3, latency_batches: Sequence[int] = (),
                       latency_threads: int = 2, keep_models: bool = False,
                       **fit_kwargs: Any) -> list[PruneResult]:
    """For each ratio: prune a copy of the trained ``model`` one-shot, measure it, fine-tune it
    without regulariser (if ``finetune``) and measure again. Accuracies are on ``test`` (default
    ``val``)."""
    test = test if test is not None else val
    results = []
    for ratio in ratios:
        pruned = copy.deepcopy(model).eval()
        plan = plan_pruning(pruned, example, ratio, mode=mode, min_keep=min_keep)
        apply_plan(pruned, example, plan)
        stats = model_stats(pruned, example)
        result = PruneResult(ratio, plan.realised_ratio, stats["params"], stats["macs"],
                             accuracy(pruned, test))
        for batch in latency_batches:
            x = example.expand(batch, *example.shape[1:]).contiguous()
            result.latency_s[batch] = measure_latency(pruned, x, threads=latency_threads)
        if finetune is not None:
            fit(pruned, train, val, finetune, regularizer=None, **fit_kwargs)
            result.accuracy_finetuned = accuracy(pruned, test)
        if keep_models:
            result.model = pruned
        results.append(result)
    return results
