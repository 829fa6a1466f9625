"""Compact single-task networks from a TSσBN multi-task model.

Each task's network is the shared backbone with that task's statistics and gates
(:func:`tasknorm.nn.extract_task`); its channels are ranked by that task's own gates, and the
channels the task does not use are removed physically. Each task's model is thus as small as
its gates allow, independently of the other tasks.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tasknorm.nn import extract_task
from tasknorm.prune.surgery import PruningPlan, apply_plan, plan_by_threshold, plan_pruning


def task_subnetwork(model: nn.Module, task: str, example_inputs: Any, *,
                    ratio: float | None = None, threshold: float | None = None,
                    min_keep: int = 3, mode: str = "global") -> tuple[nn.Module, PruningPlan]:
    """A plain, pruned single-task copy of ``model`` for ``task``.

    Exactly one of ``ratio`` (channel prune ratio over the task's gates) or ``threshold``
    (remove channels whose gate ``sigmoid(γ_task)`` is ≤ threshold) must be given. The copy has
    ordinary BatchNorm layers whose weights are the task's gates, so importance = |weight| =
    the task's gate.

    Example:
        >>> import torch, torchvision
        >>> from tasknorm.nn import convert
        >>> from tasknorm.prune import task_subnetwork
        >>> model = convert(torchvision.models.resnet18(num_classes=3), ["a", "b"]).eval()
        >>> small, plan = task_subnetwork(model, "a", torch.randn(1, 3, 64, 64), ratio=0.5)
        >>> sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
        True
    """
    if (ratio is None) == (threshold is None):
        raise ValueError("give exactly one of ratio and threshold")
    plain = extract_task(model, task).eval()
    if ratio is not None:
        plan = plan_pruning(plain, example_inputs, ratio, mode=mode, min_keep=min_keep)
    else:
        plan = plan_by_threshold(plain, example_inputs, threshold, min_keep=min_keep)
    return apply_plan(plain, example_inputs, plan), plan
