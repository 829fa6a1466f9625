"""Optimizer parameter groups for the σBN recipe: normalization parameters get their own
learning-rate multiplier and weight decay (arXiv:2204.06404 uses 10× and no decay)."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from tasknorm.nn.batchnorm import _BatchNormStats
from tasknorm.nn.layernorm import _TaskLayerNormBase

NORM_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    _NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, _BatchNormStats, _TaskLayerNormBase,
)
"""Modules whose own parameters count as normalization parameters (BatchNorm, InstanceNorm,
LayerNorm, GroupNorm, RMSNorm and their subclasses, and every tasknorm layer)."""


def param_groups(
    model: nn.Module,
    lr: float,
    *,
    weight_decay: float = 0.0,
    norm_lr_mult: float = 10.0,
    norm_weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into an ordinary group and a normalization group.

    Args:
        model: the model to optimise.
        lr: base learning rate of the ordinary group.
        weight_decay: weight decay of the ordinary group.
        norm_lr_mult: the normalization group's learning rate is ``lr * norm_lr_mult``.
        norm_weight_decay: weight decay of the normalization group.

    Returns:
        Parameter groups for any ``torch.optim`` optimizer; empty groups are left out.

    Example:
        >>> import torch, torchvision
        >>> from tasknorm.nn import convert, param_groups
        >>> model = convert(torchvision.models.resnet18(), ["seg", "depth"])
        >>> groups = param_groups(model, lr=0.1, weight_decay=1e-4)
        >>> [(g["lr"], g["weight_decay"]) for g in groups]
        [(0.1, 0.0001), (1.0, 0.0)]
        >>> optimizer = torch.optim.SGD(groups, momentum=0.9)
    """
    norm_ids = {id(p) for m in model.modules() if isinstance(m, NORM_LAYER_TYPES)
                for p in m.parameters(recurse=False)}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in norm_ids], "lr": lr,
         "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in norm_ids], "lr": lr * norm_lr_mult,
         "weight_decay": norm_weight_decay},
    ]
    return [g for g in groups if g["params"]]
