"""Channel importance of normalization layers.

* σBN / TSσBN: the gate ``sigmoid(γ)`` (monotone in γ; ``|γ|`` would rank a closed gate with a
  very negative γ as important). TSσBN: the maximum over tasks, so a shared channel counts as
  unimportant only when no task uses it, or one task's gates (``task=``).
* BatchNorm / TSBN: ``|γ|`` (network slimming), maximum over tasks for TSBN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tasknorm.nn import BatchNormStats, SigmoidGated, TaskRouted

NORM_TYPES = (_BatchNorm, BatchNormStats)


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm whose channels carry an importance score."""
    return isinstance(module, NORM_TYPES)


@torch.no_grad()
def channel_importance(layer: nn.Module, task: str | None = None) -> Tensor:
    """One score per channel of a BatchNorm-like ``layer`` (see the module docstring).

    Example:
        >>> import torch
        >>> from tasknorm.nn import SigmaBatchNorm2d
        >>> from tasknorm.prune import channel_importance
        >>> bn = SigmaBatchNorm2d(3)
        >>> _ = bn.gate_logit.data.copy_(torch.tensor([-4.0, 0.0, 4.0]))
        >>> channel_importance(bn)
        tensor([0.0180, 0.5000, 0.9820])
    """
    if not is_norm(layer):
        raise TypeError(f"{type(layer).__name__} is not a BatchNorm-like layer")
    if isinstance(layer, SigmoidGated):
        score = layer.gate
    elif getattr(layer, "weight", None) is None:
        score = torch.ones(layer.num_features, device=layer.running_mean.device)
    else:
        score = layer.weight.abs()
    if isinstance(layer, TaskRouted):
        if task is not None:
            score = score[layer.tasks.index(task)]
        else:
            score = score.amax(dim=0)
    return score.detach().float().cpu()
