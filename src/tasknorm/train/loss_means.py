"""Every task's loss averaged over the samples of an epoch, as one torchmetrics state.

Logging each task's loss every step through ``LightningModule.log`` costs a Lightning result
update per task per step; :class:`TaskLossMeans` takes all of a step's losses in one update and is
synchronised across processes by torchmetrics when computed.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class TaskLossMeans(Metric):
    """The mean over samples of each of ``tasks`` losses: every update adds a batch's ``(T,)``
    losses weighted by its size. A non-finite loss in any batch makes that task's mean
    non-finite, which is how a diverged validation is seen.

    Example:
        >>> import torch
        >>> means = TaskLossMeans(2)
        >>> means.update(torch.tensor([1.0, 4.0]), 3)
        >>> means.update(torch.tensor([2.0, 0.0]), 1)
        >>> means.compute()
        tensor([1.2500, 3.0000])
    """

    full_state_update = False

    def __init__(self, tasks: int) -> None:
        super().__init__()
        self.add_state("sums", torch.zeros(tasks), dist_reduce_fx="sum")
        self.add_state("samples", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, losses: Tensor, size: int) -> None:
        if losses.shape != self.sums.shape:
            raise ValueError(f"expected {self.sums.numel()} task losses, got shape "
                             f"{tuple(losses.shape)}")
        self.sums += losses.detach() * size
        self.samples += size

    def compute(self) -> Tensor:
        return self.sums / self.samples
