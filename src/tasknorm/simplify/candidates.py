"""Candidate task trees read off the gates of a trained TSσBN model, under a FLOPs budget.

Per level of the backbone, the tasks are clustered hierarchically by the cosine of their gate
vectors over the level's channels (:func:`tasknorm.analysis.relationships.gate_cosine`, average
linkage, as ``tasknorm analyze`` clusters them over the whole network). Cutting a level's
dendrogram into ``k`` clusters, for every ``k``, gives its candidate partitions; a level's groups
are those clusters intersected with the groups of the level above, so that every candidate is a
tree. The candidates are every such tree whose FLOPs per image, relative to hard sharing, stay
within the budget.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tasknorm.analysis.relationships import cluster_tasks, gate_cosine
from tasknorm.models import count_flops
from tasknorm.nn import SigmoidGated
from tasknorm.trees import TaskTree, initial_state, layers_by_level

Partition = tuple[tuple[int, ...], ...]
ENUMERATION_LIMIT = 10_000
"""Above this many candidate trees they are drawn by random descent instead of listed."""
DESCENT_ATTEMPTS = 20
"""Draws per wanted tree before random descent gives up finding new ones."""


@dataclass(frozen=True)
class Candidate:
    """A task tree and its FLOPs per image relative to hard sharing."""

    tree: TaskTree
    flops_ratio: float


def level_gates(backbone: nn.Module, stages: Sequence[nn.Module]) -> list[Tensor]:
    """Per stage, the ``(T, channels)`` gates of its σ-gated task norms side by side (detached,
    float32, CPU).

    Raises:
        ValueError: a stage has no σ-gated task norm (TSBN has no gates to read).
    """
    gates = []
    for level, named in enumerate(layers_by_level(backbone, stages)):
        matrices = [layer.gate.detach().float().cpu().flatten(1) for _, layer in named
                    if isinstance(layer, SigmoidGated)]
        if not matrices:
            raise ValueError(f"stage {level} of {type(backbone).__name__} has no σ-gated task "
                             "norm to read gates from")
        gates.append(torch.cat(matrices, dim=1))
    return gates


def level_flops(stages: Sequence[nn.Module], example: Tensor) -> list[int]:
    """FLOPs of each stage on ``example`` (one image: FLOPs per image), run in order."""
    state, flops = initial_state(example), []
    for stage in stages:
        flops.append(count_flops(stage, state))
        state = stage(state)
    return flops


def flops_ratio(groups_per_level: Sequence[int], flops: Sequence[int], head_flops: int) -> float:
    """FLOPs per image of a tree relative to hard sharing: ``(Σ groups × level FLOPs + heads) /
    (Σ level FLOPs + heads)``.

    Example:
        >>> flops_ratio([1, 3], [100, 50], head_flops=10)
        1.625
    """
    tree = sum(g * f for g, f in zip(groups_per_level, flops, strict=True)) + head_flops
    return tree / (sum(flops) + head_flops)


def candidate_trees(tasks: Sequence[str], gates: Sequence[Tensor], flops: Sequence[int],
                    budget: float, head_flops: int = 0, max_trees: int = 30,
                    seed: int = 0) -> list[Candidate]:
    """The trees the gates suggest within ``budget`` (see the module docstring), cheapest first;
    a random sample of ``max_trees`` of them (seeded) when there are more.

    Args:
        tasks: the task names, in the order of the gates' rows.
        gates: per level, the ``(T, channels)`` gates (:func:`level_gates`).
        flops: per level, its FLOPs per image (:func:`level_flops`).
        budget: the largest FLOPs per image relative to hard sharing (at least 1, hard
            sharing's own).
        head_flops: FLOPs per image of all heads together (the same for every tree).
        max_trees: how many candidates at most.
        seed: of the sample.

    Example:
        >>> import torch
        >>> gates = [torch.tensor([[0.9, 0.9], [0.9, 0.8], [0.1, 0.9]])] * 2
        >>> [str(c.tree) for c in candidate_trees(["a", "b", "c"], gates, [10, 10], 1.5)]
        ['a+b+c | a+b+c', 'a+b+c | a+b, c']
    """
    if len(gates) != len(flops):
        raise ValueError(f"{len(gates)} levels of gates but {len(flops)} levels of FLOPs")
    if not budget >= 1:
        raise ValueError(f"budget must be at least 1 (hard sharing's FLOPs), got {budget}")
    if max_trees < 1:
        raise ValueError(f"max_trees must be at least 1, got {max_trees}")
    for level, matrix in enumerate(gates):
        if matrix.dim() != 2 or matrix.size(0) != len(tasks):
            raise ValueError(f"gates of level {level} must be ({len(tasks)} tasks, channels), "
                             f"got shape {tuple(matrix.shape)}")
    cuts = [_cuts(matrix) for matrix in gates]
    total = sum(flops) + head_flops
    found: dict[tuple[Partition, ...], float] = {}

    def options(levels: tuple[Partition, ...], cost: int) -> list[tuple[Partition, int]]:
        """The next level's partitions that keep a tree within the budget, and their cost."""
        depth = len(levels)
        parent = levels[-1] if levels else (tuple(range(len(tasks))),)
        allowed = []
        for partition in sorted({_intersect(parent, cut) for cut in cuts[depth]}):
            spent = cost + len(partition) * flops[depth]
            cheapest = spent + len(partition) * sum(flops[depth + 1:])  # groups never merge
            if cheapest / total <= budget + 1e-12:
                allowed.append((partition, spent))
        return allowed

    def extend(levels: tuple[Partition, ...], cost: int) -> None:
        if len(levels) == len(gates):
            found[levels] = cost / total
            if len(found) > ENUMERATION_LIMIT:
                raise _TooMany
            return
        for partition, spent in options(levels, cost):
            extend((*levels, partition), spent)

    try:
        extend((), head_flops)
    except _TooMany:
        found = _descents(options, len(gates), head_flops, total, max_trees, seed)
    chosen = sorted(found)
    if len(chosen) > max_trees:
        chosen = sorted(random.Random(seed).sample(chosen, max_trees))
    candidates = [Candidate(_tree(tasks, levels), found[levels]) for levels in chosen]
    return sorted(candidates, key=lambda c: (c.flops_ratio, str(c.tree)))


class _TooMany(Exception):
    """More candidate trees than :data:`ENUMERATION_LIMIT`."""


def _descents(options: Callable[[tuple[Partition, ...], int], list[tuple[Partition, int]]],
              depth: int, head_flops: int, total: int, count: int,
              seed: int) -> dict[tuple[Partition, ...], float]:
    """Up to ``count`` distinct trees, each drawn level by level among the partitions that
    ``options`` allows (not uniform over trees, but never walking all of them)."""
    rng = random.Random(seed)
    found: dict[tuple[Partition, ...], float] = {}
    for _ in range(DESCENT_ATTEMPTS * count):
        levels: tuple[Partition, ...] = ()
        cost = head_flops
        while len(levels) < depth:  # the parent itself is always allowed: never stuck
            partition, cost = rng.choice(options(levels, cost))
            levels = (*levels, partition)
        found[levels] = cost / total
        if len(found) == count:
            break
    return found


def random_tree(tasks: Sequence[str], groups_per_level: Sequence[int],
                rng: random.Random) -> TaskTree:
    """A tree with ``groups_per_level`` groups at each level and members drawn by ``rng``,
    ignoring the gates: the control that tells what the gates add to a tree of given FLOPs.

    Level 0 deals the shuffled tasks into its groups; each further level splits random groups
    of the level above in two at a random point until it has its count.

    Example:
        >>> tree = random_tree(["a", "b", "c", "d"], [1, 2, 4], random.Random(0))
        >>> tree.groups_per_level
        (1, 2, 4)

    Raises:
        ValueError: a count is below 1, above the number of tasks or below the level above's.
    """
    bounds = [1, *groups_per_level]
    for level, count in enumerate(groups_per_level):
        if not bounds[level] <= count <= len(tasks):
            raise ValueError(f"level {level} cannot have {count} groups: it needs between "
                             f"{bounds[level]} (the level above's) and {len(tasks)} (one per "
                             "task)")
    order = list(range(len(tasks)))
    rng.shuffle(order)
    first = groups_per_level[0]
    cuts = sorted(rng.sample(range(1, len(tasks)), first - 1))
    partition = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(tasks)], strict=True)]
    levels = []
    for count in groups_per_level:
        while len(partition) < count:
            group = rng.choice([g for g in partition if len(g) > 1])
            partition.remove(group)
            rng.shuffle(group)
            cut = rng.randrange(1, len(group))
            partition += [group[:cut], group[cut:]]
        labels = {task: index for index, group in enumerate(partition) for task in group}
        levels.append(_partition([labels[task] for task in range(len(tasks))]))
    return _tree(tasks, levels)


def random_candidates(tasks: Sequence[str], candidates: Sequence[Candidate],
                      seed: int = 0) -> list[Candidate]:
    """For each of ``candidates``, a :func:`random_tree` with its groups per level (so its
    FLOPs), drawn from one generator seeded by ``seed``."""
    rng = random.Random(seed)
    return [Candidate(random_tree(tasks, c.tree.groups_per_level, rng), c.flops_ratio)
            for c in candidates]


def _cuts(gates: Tensor) -> list[Partition]:
    """The partitions of the tasks into 1, 2, ..., T clusters of the gates' dendrogram."""
    from scipy.cluster.hierarchy import fcluster

    count = gates.size(0)
    if count == 1:
        return [((0,),)]
    linkage = torch.tensor(cluster_tasks(gate_cosine(gates))["linkage"]).numpy()
    partitions = []
    for clusters in range(1, count + 1):
        labels = fcluster(linkage, clusters, criterion="maxclust")
        partitions.append(_partition(labels.tolist()))
    return partitions


def _partition(labels: Sequence[int]) -> Partition:
    """The groups of task indices with equal labels, each sorted, ordered by first member."""
    groups: dict[int, list[int]] = {}
    for task, label in enumerate(labels):
        groups.setdefault(label, []).append(task)
    return tuple(sorted(tuple(group) for group in groups.values()))


def _intersect(parent: Partition, cut: Partition) -> Partition:
    """The non-empty intersections of the groups of two partitions (refines both)."""
    label = {task: index for index, group in enumerate(cut) for task in group}
    joint = [0] * len(label)
    for index, group in enumerate(parent):
        for task in group:
            joint[task] = index * len(label) + label[task]
    return _partition(joint)


def _tree(tasks: Sequence[str], levels: Sequence[Partition]) -> TaskTree:
    return TaskTree.from_groups(tasks, [[[tasks[i] for i in group] for group in partition]
                                        for partition in levels])
