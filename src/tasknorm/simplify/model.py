"""A trained TSσBN module turned into a task-tree module: same convolution, linear and head
weights, each group's gates and statistics started from its member tasks'."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tasknorm.models import StagedBackbone
from tasknorm.nn import BatchNormStats
from tasknorm.train import MultiTaskModule
from tasknorm.trees import Merge, TaskTree, TaskTreeNetwork


def simplified_module(trained: MultiTaskModule, tree: TaskTree, merge: Merge = "mean",
                      lr: float | None = None) -> MultiTaskModule:
    """A new ``architecture="tree"`` module with ``trained``'s options and weights, its norms
    regrouped into ``tree``'s groups by ``merge`` (see :data:`tasknorm.trees.MERGES`), and
    base learning rate ``lr`` for further training (``None``: ``trained``'s).

    The result is an ordinary module of the ``tree`` architecture (its hyper-parameters name the
    groups), so its checkpoints load and test like any other; ``trained`` is left unchanged.

    Raises:
        ValueError: ``trained`` is not a TSσBN module, or ``tree`` is for other tasks.
    """
    if trained.hparams.architecture != "task_sigma":
        raise ValueError(f"simplifying needs a TSσBN model (architecture 'task_sigma'), got "
                         f"architecture {trained.hparams.architecture!r}")
    if tree.tasks != tuple(trained.tasks):
        raise ValueError(f"the tree is for tasks {tree.tasks}, the model has "
                         f"{tuple(trained.tasks)}")
    backbone = copy.deepcopy(trained.model.backbone)
    stages = StagedBackbone(backbone, levels=tree.depth).stages
    network = TaskTreeNetwork(backbone, stages, tree, merge)
    options: dict[str, Any] = {**trained.hparams, "architecture": "tree",
                               "architecture_args": {"groups": tree.to_lists()}}
    if lr is not None:
        options["optimization"] = {**options["optimization"], "lr": lr}
    module = MultiTaskModule(list(trained.tasks.values()), **options)
    module.model.backbone.load_state_dict(network.state_dict())
    module.model.heads.load_state_dict(trained.model.heads.state_dict())
    return module.train(trained.training)


def recalibrate(module: nn.Module, images: Iterable[Tensor]) -> nn.Module:
    """Re-estimate every batch-norm's running statistics (tasknorm's and torch's) as the
    cumulative average over training-mode passes on ``images``, without changing any weight,
    and return ``module`` in eval mode. A group whose statistics were merged from its members'
    (or whose input changed because a level above was merged) then normalises with statistics of
    its own input, so that trees can be compared before any fine-tuning."""
    norms = [m for m in module.modules()
             if isinstance(m, BatchNormStats | _BatchNorm) and m.track_running_stats]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    module.train()
    try:
        with torch.no_grad():
            for batch in images:
                module(batch)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
    return module.eval()
