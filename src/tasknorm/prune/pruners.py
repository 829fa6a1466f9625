"""Torch-Pruning support for tasknorm's normalization layers.

tasknorm's σBN / TSBN / TSσBN classes are not ``torch.nn.BatchNorm`` subclasses, so Torch-Pruning
would see them as opaque modules with "unwrapped" parameters and prune the wrong dimension of
``(T, C)`` tensors; registering :class:`TaskNormPruner` for them (:func:`customized_pruners`)
makes them ordinary pass-through nodes of the dependency graph whose channel-wise tensors
(raw gates, optional bias, running statistics; the last dimension) are sliced together. A bias
of ``None`` (σBN has none) is left alone, which is where Torch-Pruning's own BatchNorm pruner
fails.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from tasknorm.nn import (
    BatchNormStats,
    SigmaBatchNorm1d,
    SigmaBatchNorm2d,
    TaskBatchNorm1d,
    TaskBatchNorm2d,
    TaskSigmaBatchNorm1d,
    TaskSigmaBatchNorm2d,
)

TASKNORM_BATCH_NORMS: tuple[type[nn.Module], ...] = (
    SigmaBatchNorm1d, SigmaBatchNorm2d, TaskBatchNorm1d, TaskBatchNorm2d, TaskSigmaBatchNorm1d,
    TaskSigmaBatchNorm2d,
)


class TaskNormPruner(tp.pruner.BasePruningFunc):
    """Removes channels of a σBN / TSBN / TSσBN layer (input and output channels coincide)."""

    TARGET_MODULES = (BatchNormStats,)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        removed = set(int(i) for i in idxs)
        keep = torch.tensor([i for i in range(layer.num_features) if i not in removed],
                            dtype=torch.long)
        layer.num_features = len(keep)
        for name in ("weight", "gate_logit", "bias"):
            param = getattr(layer, name, None)
            if param is not None:
                setattr(layer, name, self._prune_parameter_and_grad(param, keep.tolist(),
                                                                    param.dim() - 1))
        for name in ("running_mean", "running_var"):
            buffer = getattr(layer, name, None)
            if buffer is not None:
                setattr(layer, name, buffer.index_select(-1, keep.to(buffer.device)).contiguous())
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.num_features

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.num_features


def customized_pruners() -> dict[type[nn.Module], tp.pruner.BasePruningFunc]:
    """``customized_pruners`` argument for Torch-Pruning covering every tasknorm BatchNorm."""
    pruner = TaskNormPruner()
    return {cls: pruner for cls in TASKNORM_BATCH_NORMS}
