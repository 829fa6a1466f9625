"""A small LightningModule for the pruning recipe: single-task classification with an optional
sparsity regulariser, SGD with the σBN parameter groups and a multi-step schedule.

Batches are ``{"image": x, "label": y}`` dicts (or ``(x, y)`` pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasknorm.nn import param_groups
from tasknorm.prune.regularizers import make_regularizer


def _split(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, dict):
        return batch["image"], batch["label"]
    return batch[0], batch[1]


class PruningClassifier(L.LightningModule):
    """Train or fine-tune ``model`` with cross-entropy plus ``regularizer`` (``"rni"``, ``"l1"``
    or ``None``).

    Args:
        model: any classifier ``x -> logits``.
        regularizer: sparsity penalty added to the loss every step (None when fine-tuning).
        strength: λ of the penalty.
        offset: RNI's b.
        lr, momentum, nesterov, weight_decay: SGD for conv/linear weights.
        norm_lr_mult, norm_weight_decay: the normalization parameters' group (σBN recipe: 10×,
            0; plain-BN baselines of the RNI code: 1×, same decay as the convs).
        milestones: fractions of ``max_epochs`` at which the LR is divided by 10.
        epochs: total epochs (for the milestones).
    """

    def __init__(self, model: nn.Module, regularizer: str | None = None, strength: float = 1e-4,
                 offset: float = 3.0, lr: float = 0.1, momentum: float = 0.9,
                 nesterov: bool = True, weight_decay: float = 1e-4, norm_lr_mult: float = 10.0,
                 norm_weight_decay: float = 0.0, milestones: Sequence[float] = (0.5, 0.75),
                 epochs: int = 160) -> None:
        super().__init__()
        self.model = model
        self.regularizer_name = regularizer
        self.regularizer = make_regularizer(regularizer, strength, offset)
        self.hparams_ = dict(lr=lr, momentum=momentum, nesterov=nesterov,
                             weight_decay=weight_decay, norm_lr_mult=norm_lr_mult,
                             norm_weight_decay=norm_weight_decay, milestones=tuple(milestones),
                             epochs=epochs)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = _split(batch)
        loss = F.cross_entropy(self.model(x), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        if self.regularizer is not None:
            penalty = self.regularizer(self.model)
            self.log("train/penalty", penalty, batch_size=len(y))
            loss = loss + penalty
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: Any, stage: str) -> None:
        x, y = _split(batch)
        logits = self.model(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), batch_size=len(y))
        self.log(f"{stage}/accuracy", (logits.argmax(1) == y).float().mean(), prog_bar=True,
                 batch_size=len(y))

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams_
        groups = param_groups(self.model, h["lr"], weight_decay=h["weight_decay"],
                              norm_lr_mult=h["norm_lr_mult"],
                              norm_weight_decay=h["norm_weight_decay"])
        optimizer = torch.optim.SGD(groups, lr=h["lr"], momentum=h["momentum"],
                                    nesterov=h["nesterov"])
        milestones = [max(1, round(f * h["epochs"])) for f in h["milestones"]]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, 0.1)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
