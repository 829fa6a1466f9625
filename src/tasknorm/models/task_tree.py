"""The ``tree`` architecture: a backbone with TSσBN norms run as a task tree (see
:mod:`tasknorm.trees`), its levels the stage split of :mod:`tasknorm.models.stages`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from tasknorm.models.stages import StagedBackbone
from tasknorm.nn import convert
from tasknorm.trees import Execution, TaskTree, TaskTreeNetwork


def task_tree(backbone: Callable[[], nn.Module], tasks: Sequence[str],
              groups: Sequence[Sequence[Sequence[str]]] | None = None,
              execution: Execution = "auto", *, gates: dict[str, Any] | None = None,
              ) -> TaskTreeNetwork:
    """A TSσBN backbone whose levels hold the task groups ``groups``.

    Args:
        backbone: builds the backbone.
        tasks: the task names.
        groups: per level, the groups of task names (see
            :meth:`tasknorm.trees.TaskTree.from_groups`); the backbone's stages are cut into
            as many levels, near-equal runs of consecutive stages (the first ones longer), so
            one level is the whole backbone. ``None``: one group per task at every stage of the
            split, the TSσBN network as a tree (``tasknorm simplify`` starts from it).
        execution: how the groups of a level run (see :class:`tasknorm.trees.TaskTreeNetwork`).
        gates: σ-gate options of :func:`tasknorm.nn.convert` (``gate_init``, ``init_mean``,
            ``init_std``).

    Example:
        >>> import torch
        >>> from tasknorm.models import digits_cnn
        >>> net = task_tree(lambda: digits_cnn(width=8), ["left", "right"],
        ...                 [[["left", "right"]], [["left"], ["right"]]])
        >>> print(net.tree)
        left+right | left, right
        >>> {t: f.shape for t, f in net(torch.randn(3, 1, 23, 23)).items()}
        {'left': torch.Size([3, 32]), 'right': torch.Size([3, 32])}
    """
    trunk = convert(backbone(), tasks, kind="task_sigma", **(gates or {}))
    if groups is None:
        stages = StagedBackbone(trunk).stages
        tree = TaskTree.separate(tasks, len(stages))
    else:
        tree = TaskTree.from_groups(tasks, groups)
        stages = StagedBackbone(trunk, levels=tree.depth).stages
    return TaskTreeNetwork(trunk, stages, tree, execution=execution)
