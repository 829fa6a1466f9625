"""A trained TSσBN module turned into a task-tree module: same convolution, linear and head
weights, each group's gates and statistics started from its member tasks'."""

from __future__ import annotations

import copy
from typing import Any

from tasknorm.models import StagedBackbone
from tasknorm.train import MultiTaskModule
from tasknorm.trees import Merge, TaskTree, TaskTreeNetwork


def simplified_module(trained: MultiTaskModule, tree: TaskTree,
                      merge: Merge = "mean") -> MultiTaskModule:
    """A new ``architecture="tree"`` module with ``trained``'s options and weights, its norms
    regrouped into ``tree``'s groups by ``merge`` (see :data:`tasknorm.trees.MERGES`).

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
    module = MultiTaskModule(list(trained.tasks.values()), **options)
    module.model.backbone.load_state_dict(network.state_dict())
    module.model.heads.load_state_dict(trained.model.heads.state_dict())
    return module.train(trained.training)
