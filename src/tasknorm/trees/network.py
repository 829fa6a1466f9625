"""The task-tree network: a backbone cut into levels, each running once per task group.

The backbone's task-specific norms (TSσBN or TSBN, built for the tree's tasks) are regrouped in
place so that the norms of level ``l`` hold one set of gates and statistics per group of that
level; convolution and linear weights stay shared by everything. A level then costs its number
of groups, not its number of tasks: one group everywhere is a σBN network of all tasks, one
group per task everywhere the TSσBN network.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from tasknorm.nn import (
    TaskRouted,
    extract_task,
    task_norm_layers,
    unstack_tasks,
    use_all_tasks,
    use_task,
)
from tasknorm.trees.state import StageState, initial_state, select_groups
from tasknorm.trees.tree import TaskTree

Execution = Literal["auto", "batched", "looped"]
EXECUTIONS: tuple[Execution, ...] = ("auto", "batched", "looped")
"""How the groups of a level run: ``"batched"`` in one call on a task-major stacked batch (the
all-tasks pass), ``"looped"`` one after the other, ``"auto"`` the faster of the two for the
input's device as measured in ``docs/benchmarks.md`` ("Task trees"): looped on CPU, batched on
accelerators."""
Merge = Literal["first", "mean", "central"]
MERGES: tuple[Merge, ...] = ("first", "mean", "central")
"""How a group's gates and statistics start from its member tasks': those of its ``first``
member, their ``mean`` (gate logits, affine parameters and running statistics alike), or those
of its ``central`` member, the one whose gates at that level differ least from the other
members' (mean absolute difference over the level's channels)."""


class TaskTreeNetwork(nn.Module):
    """A backbone with task-specific norms run as a task tree; ``forward(x)`` returns
    ``{task: features}``.

    Args:
        backbone: the backbone, its norms converted for ``tree.tasks`` (for example
            ``tasknorm.nn.convert(digits_cnn(), tasks)``, fresh or trained); its norms are
            regrouped in place and it becomes :attr:`backbone`.
        stages: the backbone's stages, one per level of ``tree``, each mapping a
            :class:`~tasknorm.trees.state.StageState` to the next and built from the
            backbone's own layers (:class:`tasknorm.models.StagedBackbone` gives them).
        tree: the task groups of every level.
        merge: how each group's norms start from its members' (see :data:`MERGES`).
        execution: how the groups of a level run (see :data:`EXECUTIONS`); all compute the
            same.

    Raises:
        ValueError: the stages and the tree's levels differ in number, a norm of the backbone
            lies in no stage or serves other tasks than the tree's, or an unknown option; the
            backbone is then left as it was.
    """

    def __init__(self, backbone: nn.Module, stages: Sequence[nn.Module], tree: TaskTree,
                 merge: Merge = "first", execution: Execution = "auto") -> None:
        super().__init__()
        if merge not in MERGES:
            raise ValueError(f"unknown merge rule {merge!r}; expected one of {MERGES}")
        if execution not in EXECUTIONS:
            raise ValueError(f"unknown execution {execution!r}; expected one of {EXECUTIONS}")
        if len(stages) != tree.depth:
            raise ValueError(f"the task tree has {tree.depth} levels but the backbone "
                             f"{type(backbone).__name__} was cut into {len(stages)} stages")
        named = layers_by_level(backbone, stages)
        for name, layer in (pair for level in named for pair in level):
            if layer.tasks != tree.tasks:
                raise ValueError(f"the task-specific norm {name!r} serves {layer.tasks}; the "
                                 f"task tree needs {tree.tasks}")
        levels = [[layer for _, layer in level] for level in named]
        weights = [_merge_weights(tree, level, layers, merge) for level, layers in
                   enumerate(levels)]
        for level, layers in enumerate(levels):
            for layer in layers:
                layer.regroup_(tree.group_names(level), weights[level])
        self.backbone = backbone
        # views of the backbone's layers, kept out of the module tree (one name per parameter)
        self.stages: tuple[nn.Module, ...] = tuple(stages)
        self.tree = tree
        self.task_names = tree.tasks
        self.execution: Execution = execution
        self.out_features: int = backbone.out_features

    def execution_for(self, device: torch.device) -> Execution:
        """``"batched"`` or ``"looped"``: how a forward pass on ``device`` runs the groups."""
        if self.execution != "auto":
            return self.execution
        return "looped" if device.type == "cpu" else "batched"

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        batched = self.execution_for(x.device) == "batched"
        groups = self._batched(x) if batched else self._looped(x)
        last = self.tree.depth - 1
        return {task: groups[self.tree.group_of(last, task)] for task in self.task_names}

    def _batched(self, x: Tensor) -> tuple[Tensor, ...]:
        state, previous = initial_state(x), 1
        for level, stage in enumerate(self.stages):
            names = self.tree.group_names(level)
            state = select_groups(state, self.tree.parents(level), previous)
            with use_all_tasks(tasks=names):
                state = stage(state)
            previous = len(names)
        return unstack_tasks(state.features, previous)

    def _looped(self, x: Tensor) -> tuple[Tensor, ...]:
        states: list[StageState] = [initial_state(x)]
        for level, stage in enumerate(self.stages):
            names = self.tree.group_names(level)
            parents = self.tree.parents(level)
            outputs = []
            for name, parent in zip(names, parents, strict=True):
                with use_task(name):
                    outputs.append(stage(states[parent]))
            states = outputs
        return tuple(state.features for state in states)

    def extract_task(self, task: str) -> nn.Module:
        """A copy of the backbone computing ``task``'s features alone, with ordinary norm
        layers holding the statistics and gates of ``task``'s group at every level (see
        :func:`tasknorm.nn.extract_task`)."""
        self.tree.group_of(0, task)  # checks the name
        memo: dict[int, object] = {}
        backbone = copy.deepcopy(self.backbone, memo)
        for level, layers in enumerate(layers_by_level(self.backbone, self.stages)):
            one_hot = torch.zeros(1, len(self.tree.levels[level]))
            one_hot[0, self.tree.group_of(level, task)] = 1
            for _, layer in layers:
                memo[id(layer)].regroup_([task], one_hot)
        return extract_task(backbone, task)

    def extra_repr(self) -> str:
        return f"tree={self.tree}, execution={self.execution!r}"


def layers_by_level(backbone: nn.Module,
                     stages: Sequence[nn.Module]) -> list[list[tuple[str, TaskRouted]]]:
    """``(name, layer)`` of the task-specific norms of each stage (a layer reached from several
    stages, as the ViT embedding reaches the whole ViT, belongs to the last).

    Raises:
        ValueError: the backbone has no task-specific norm, or one that lies in no stage.
    """
    level_of: dict[int, int] = {}
    for level, stage in enumerate(stages):
        for module in stage.modules():
            if isinstance(module, TaskRouted):
                level_of[id(module)] = level
    levels: list[list[tuple[str, TaskRouted]]] = [[] for _ in stages]
    layers = list(task_norm_layers(backbone))
    if not layers:
        raise ValueError(f"{type(backbone).__name__} has no task-specific norm to group; "
                         "convert it first (tasknorm.nn.convert)")
    for name, layer in layers:
        if id(layer) not in level_of:
            raise ValueError(f"the task-specific norm {name!r} of {type(backbone).__name__} "
                             "lies in none of the stages")
        levels[level_of[id(layer)]].append((name, layer))
    return levels


def _merge_weights(tree: TaskTree, level: int, layers: Sequence[TaskRouted],
                   merge: Merge) -> Tensor:
    """The ``(groups, tasks)`` regrouping weights of ``level`` under the rule ``merge``."""
    index = {task: i for i, task in enumerate(tree.tasks)}
    weights = torch.zeros(len(tree.levels[level]), len(tree.tasks))
    for row, group in enumerate(tree.levels[level]):
        members = [index[task] for task in group]
        if merge == "mean":
            weights[row, members] = 1 / len(members)
        else:
            weights[row, _central(members, layers) if merge == "central" else members[0]] = 1
    return weights


def _central(members: list[int], layers: Sequence[TaskRouted]) -> int:
    """The member whose scales (gates) over ``layers`` differ least, on average over the
    channels and the other members, from the other members'."""
    scales = [scale.detach().flatten(1) for scale, _ in (layer.task_affine() for layer in layers)
              if scale is not None]
    if len(members) == 1 or not scales:
        return members[0]
    gates = torch.cat(scales, dim=1)[members]
    spread = torch.cdist(gates, gates, p=1).sum(dim=1)
    return members[int(spread.argmin())]
