"""A task tree: per level of a backbone, a partition of the tasks into groups that share a pass.

Level ``l`` holds groups of tasks; every group of level ``l + 1`` lies inside one group of level
``l`` (its parent), so a group's features feed exactly the groups of its tasks at the next level.
Hard sharing is one group at every level, TSσBN one group per task at every level, and a tree
that splits with depth is everything in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tasknorm.nn.routing import validate_tasks

Group = tuple[str, ...]
GROUP_SEPARATOR = "+"
"""Joins the member tasks of a group into the group's name (``"left+right"``)."""


@dataclass(frozen=True)
class TaskTree:
    """The groups of every level, in canonical order: members in the order of :attr:`tasks`,
    groups by their first member. Build one with :meth:`from_groups`.

    Example:
        >>> tree = TaskTree.from_groups(["a", "b", "c"], [[["a", "b", "c"]], [["c"], ["b", "a"]]])
        >>> print(tree)
        a+b+c | a+b, c
        >>> tree.parents(1), tree.group_names(1)
        ((0, 0), ('a+b', 'c'))
        >>> tree.groups_per_level
        (1, 2)
    """

    tasks: tuple[str, ...]
    levels: tuple[tuple[Group, ...], ...]

    @classmethod
    def from_groups(cls, tasks: Sequence[str],
                    levels: Sequence[Sequence[Sequence[str]]]) -> TaskTree:
        """Check ``levels`` (per level, a partition of ``tasks``; each group inside one group of
        the level above) and put it in canonical order.

        Raises:
            ValueError: no level, an empty group, a task missing from a level, unknown or
                repeated in it, or a group that takes tasks from two groups of the level above.
        """
        tasks = validate_tasks(tasks)
        if isinstance(levels, str) or not isinstance(levels, Sequence) or not levels:
            raise ValueError(f"a task tree needs a list of levels, each a list of groups of "
                             f"task names; got {levels!r}")
        order = {task: index for index, task in enumerate(tasks)}
        canonical = tuple(_partition(level, index, order) for index, level in enumerate(levels))
        for depth in range(1, len(canonical)):
            parent_of = {task: group for group in canonical[depth - 1] for task in group}
            for group in canonical[depth]:
                parents = {parent_of[task] for task in group}
                if len(parents) > 1:
                    raise ValueError(
                        f"group {list(group)} of level {depth} takes tasks from the groups "
                        f"{sorted(map(list, parents))} of level {depth - 1}; a group must lie "
                        "inside one group of the level above")
        return cls(tasks, canonical)

    @classmethod
    def separate(cls, tasks: Sequence[str], depth: int) -> TaskTree:
        """One group per task at each of ``depth`` levels (TSσBN)."""
        return cls.from_groups(tasks, [[[task] for task in tasks]] * depth)

    @classmethod
    def shared(cls, tasks: Sequence[str], depth: int) -> TaskTree:
        """One group of all tasks at each of ``depth`` levels (σBN with every task in it)."""
        return cls.from_groups(tasks, [[list(tasks)]] * depth)

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def groups_per_level(self) -> tuple[int, ...]:
        return tuple(len(level) for level in self.levels)

    def group_names(self, level: int) -> tuple[str, ...]:
        """The names of level ``level``'s groups: their members joined by ``+``."""
        return tuple(GROUP_SEPARATOR.join(group) for group in self.levels[level])

    def group_of(self, level: int, task: str) -> int:
        """The index of the group of ``task`` at level ``level``."""
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; expected one of {self.tasks}")
        return next(i for i, group in enumerate(self.levels[level]) if task in group)

    def parents(self, level: int) -> tuple[int, ...]:
        """For each group of ``level``, the index of its parent group at ``level - 1`` (all 0
        at level 0, where every group takes the input)."""
        if level == 0:
            return (0,) * len(self.levels[0])
        return tuple(self.group_of(level - 1, group[0]) for group in self.levels[level])

    def to_lists(self) -> list[list[list[str]]]:
        """The levels as nested lists (for configs and JSON)."""
        return [[list(group) for group in level] for level in self.levels]

    def __str__(self) -> str:
        return " | ".join(", ".join(self.group_names(level)) for level in range(self.depth))


def _partition(level: Sequence[Sequence[str]], index: int, order: dict[str, int]) -> tuple[
        Group, ...]:
    """``level`` checked to partition the tasks of ``order``, in canonical order."""
    if isinstance(level, str) or not isinstance(level, Sequence) or not level:
        raise ValueError(f"level {index} of the task tree must be a non-empty list of groups, "
                         f"got {level!r}")
    seen: list[str] = []
    groups = []
    for group in level:
        if isinstance(group, str) or not isinstance(group, Sequence) or not group:
            raise ValueError(f"level {index} of the task tree has the group {group!r}; a group "
                             "is a non-empty list of task names")
        unknown = [task for task in group if task not in order]
        if unknown:
            raise ValueError(f"level {index} of the task tree names unknown tasks {unknown}; "
                             f"expected tasks of {tuple(order)}")
        seen += group
        groups.append(tuple(sorted(group, key=order.__getitem__)))
    repeated = sorted({task for task in seen if seen.count(task) > 1})
    missing = [task for task in order if task not in seen]
    if repeated or missing:
        problem = f"repeats {repeated}" if repeated else f"misses {missing}"
        raise ValueError(f"level {index} of the task tree {problem}; each level must hold "
                         "every task exactly once")
    return tuple(sorted(groups, key=lambda group: order[group[0]]))
