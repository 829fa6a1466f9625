"""Optimizer parameter groups for the σBN recipe: normalization parameters get their own
learning-rate multiplier and weight decay (arXiv:2204.06404 uses 10× and no decay), and task
heads may get a multiplier of their own (``docs/training.md`` says why σ-gated models want one)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from tasknorm.nn.batchnorm import BatchNormStats
from tasknorm.nn.layernorm import _TaskLayerNormBase

NORM_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    _NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, BatchNormStats, _TaskLayerNormBase,
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
    heads: nn.Module | Iterable[nn.Module] | None = None,
    heads_lr_mult: float = 1.0,
    architecture: Iterable[nn.Parameter] = (),
    architecture_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into named groups, each parameter in exactly one.

    * ``"weights"``: everything else, learning rate ``lr``, decay ``weight_decay``;
    * ``"norm"``: normalization parameters (:data:`NORM_LAYER_TYPES`) outside the heads,
      ``lr * norm_lr_mult``, decay ``norm_weight_decay``;
    * ``"heads"``: parameters of ``heads`` (modules inside ``model``), ``lr * heads_lr_mult``,
      decay ``weight_decay``;
    * ``"heads_norm"``: normalization parameters inside ``heads``: the heads' multiplier (not
      the norm one, which is meant for the backbone's gates), decay ``norm_weight_decay``;
    * ``"architecture"``: ``architecture``, parameters that choose the network's structure
      rather than compute features (Learning to Branch's branching logits),
      ``lr * architecture_lr_mult``, decay ``weight_decay``.

    Args:
        model: the model to optimise.
        lr: base learning rate.
        weight_decay: weight decay of ordinary parameters.
        norm_lr_mult: learning-rate multiplier of the backbone's normalization parameters.
        norm_weight_decay: weight decay of every normalization parameter.
        heads: the task heads (a module, or several), or ``None`` for no heads groups.
        heads_lr_mult: learning-rate multiplier of the heads.
        architecture: the architecture parameters (of ``model``, outside the heads).
        architecture_lr_mult: their learning-rate multiplier.

    Returns:
        Parameter groups for any ``torch.optim`` optimizer, each with a ``"name"``; empty groups
        are left out.

    Example:
        >>> import torch, torchvision
        >>> from tasknorm.nn import convert, param_groups
        >>> model = convert(torchvision.models.resnet18(), ["seg", "depth"])
        >>> groups = param_groups(model, lr=0.1, weight_decay=1e-4, heads=model.fc,
        ...                       heads_lr_mult=10)
        >>> [(g["name"], g["lr"], g["weight_decay"]) for g in groups]
        [('weights', 0.1, 0.0001), ('norm', 1.0, 0.0), ('heads', 1.0, 0.0001)]
        >>> optimizer = torch.optim.SGD(groups, momentum=0.9)
    """
    if heads is None:
        heads = []
    elif isinstance(heads, nn.Module):
        heads = [heads]
    head_ids = {id(p) for head in heads for p in head.parameters()}
    norm_ids = {id(p) for m in model.modules() if isinstance(m, NORM_LAYER_TYPES)
                for p in m.parameters(recurse=False)}
    model_ids = {id(p) for p in model.parameters()}
    if not head_ids <= model_ids:
        raise ValueError("heads must be submodules of the model whose parameters are grouped")
    architecture_ids = {id(p) for p in architecture}
    if not architecture_ids <= model_ids - head_ids - norm_ids:
        raise ValueError("architecture parameters must be parameters of the model outside its "
                         "heads and normalization layers")
    specs = {  # name: (in heads, is norm, lr, weight decay)
        "weights": (False, False, lr, weight_decay),
        "norm": (False, True, lr * norm_lr_mult, norm_weight_decay),
        "heads": (True, False, lr * heads_lr_mult, weight_decay),
        "heads_norm": (True, True, lr * heads_lr_mult, norm_weight_decay),
    }
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"name": name, "lr": group_lr, "weight_decay": decay,
               "params": [p for p in params if id(p) not in architecture_ids
                          and (id(p) in head_ids) == in_heads and (id(p) in norm_ids) == is_norm]}
              for name, (in_heads, is_norm, group_lr, decay) in specs.items()]
    groups.append({"name": "architecture", "lr": lr * architecture_lr_mult,
                   "weight_decay": weight_decay,
                   "params": [p for p in params if id(p) in architecture_ids]})
    return [g for g in groups if g["params"]]
