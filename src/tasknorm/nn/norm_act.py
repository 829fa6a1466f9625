"""A normalization layer followed by dropout and an activation, as in timm's ``BatchNormAct2d``."""

from __future__ import annotations

from torch import Tensor, nn


class NormAct(nn.Module):
    """``act(drop(norm(x)))``: the container that :func:`tasknorm.nn.convert` puts in place of a
    timm ``BatchNormAct2d`` so that its activation survives conversion."""

    def __init__(self, norm: nn.Module, drop: nn.Module | None = None,
                 act: nn.Module | None = None) -> None:
        super().__init__()
        self.norm = norm
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(self.norm(x)))
