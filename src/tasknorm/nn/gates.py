"""The sigmoid gate shared by σBN, TSσBN and the σ LayerNorm: a raw ``weight`` whose sigmoid is
the layer's scale, bounded in (0, 1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SigmoidGated:
    """Mixin for layers whose scale is ``sigmoid(weight)``; raw weights start from
    N(``init_mean``, ``init_std``²) as in the σBN recipe, an optional ``bias`` from 0."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    init_mean: float
    init_std: float

    @property
    def gate(self) -> Tensor:
        """The bounded scale ``sigmoid(weight)`` (task × channel for task-specific layers)."""
        return torch.sigmoid(self.weight)

    def reset_gates(self) -> None:
        """Raw gates to N(init_mean, init_std²); bias, if any, to 0."""
        nn.init.normal_(self.weight, self.init_mean, self.init_std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
