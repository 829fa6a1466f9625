"""Filter specialization: for every channel, how many tasks use it.

A channel (filter) whose gate exceeds τ for ``k`` tasks is *unused* (``k = 0``: no task needs it;
it could be pruned), *exclusive* to one task (``k = 1``) or *shared* by ``k ≥ 2`` tasks
(*shared by all* when ``k = T``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tasknorm.analysis.capacity import DEFAULT_TAU, DEFAULT_TAUS, active

CATEGORIES = ("unused", "exclusive", "shared")
"""Channel categories by the number of tasks ``k`` using them: 0, 1, ≥ 2."""


def active_task_counts(gates: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """Per channel, the number of tasks for which it is active ``(C,)``.

    Example:
        >>> import torch
        >>> active_task_counts(torch.tensor([[0.9, 0.9, 0.1], [0.9, 0.1, 0.1]]))
        tensor([2, 1, 0])
    """
    return active(gates, tau).sum(dim=0)


def specialization(gates: Tensor, tau: float = DEFAULT_TAU) -> dict[str, Tensor]:
    """Channel counts of one gate matrix ``(T, C)`` by the number of tasks that use them.

    Returns:
        ``by_k`` ``(T + 1,)``: channels used by exactly ``k`` tasks, ``k = 0 ... T``;
        ``unused``, ``exclusive``, ``shared`` (``k ≥ 2``) and ``shared_by_all`` (``k = T``;
        0 for a single task) as scalars; ``exclusive_per_task`` ``(T,)``: the exclusive channels
        of each task.

    Example:
        >>> import torch
        >>> gates = torch.tensor([[0.9, 0.9, 0.9, 0.1], [0.1, 0.1, 0.1, 0.9]])  # disjoint
        >>> counts = specialization(gates)
        >>> counts["by_k"].tolist(), counts["exclusive_per_task"].tolist()
        ([0, 4, 0], [3, 1])
    """
    num_tasks = gates.size(0)
    mask = active(gates, tau)
    counts = mask.sum(dim=0)
    by_k = torch.bincount(counts, minlength=num_tasks + 1)
    exclusive = counts == 1
    return {
        "by_k": by_k,
        "unused": by_k[0],
        "exclusive": by_k[1],
        "shared": by_k[2:].sum(),
        "shared_by_all": by_k[num_tasks] if num_tasks > 1 else torch.tensor(0),
        "exclusive_per_task": (mask & exclusive).sum(dim=1),
    }


def category_sweep(gates: Tensor, taus: Sequence[float] = DEFAULT_TAUS) -> dict[str, Tensor]:
    """Fractions of unused, exclusive and shared channels for each threshold ``(len(taus),)``.

    Example:
        >>> import torch
        >>> sweep = category_sweep(torch.tensor([[0.2, 0.8], [0.8, 0.8]]), taus=[0.1, 0.5, 0.9])
        >>> sweep["unused"], sweep["exclusive"], sweep["shared"]
        (tensor([0., 0., 1.]), tensor([0.0000, 0.5000, 0.0000]), tensor([1.0000, 0.5000, 0.0000]))
    """
    channels = gates.size(1)
    rows = [specialization(gates, tau) for tau in taus]
    return {name: torch.stack([r[name] for r in rows]).float() / channels
            for name in CATEGORIES}


def channel_groups(gates: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """The display group of each channel ``(C,)``: ``-k`` for channels shared by ``k ≥ 2``
    tasks, ``t`` for channels exclusive to task ``t``, ``T`` for unused ones (sorting the groups
    puts shared first, then each task's exclusive channels, then the unused).

    Example:
        >>> import torch
        >>> channel_groups(torch.tensor([[0.1, 0.9, 0.2, 0.8], [0.9, 0.1, 0.3, 0.9]])).tolist()
        [1, 0, 2, -2]
    """
    counts = active_task_counts(gates, tau)
    owner = active(gates, tau).to(torch.int8).argmax(dim=0)
    return torch.where(counts >= 2, -counts, torch.where(counts == 1, owner, gates.size(0)))


def channel_order(gates: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """A channel permutation that groups the categories for display (:func:`channel_groups`):
    shared channels first (most tasks first), then each task's exclusive channels (in task
    order), then the unused; within a group by decreasing mean gate.

    Example:
        >>> import torch
        >>> channel_order(torch.tensor([[0.1, 0.9, 0.2, 0.8], [0.9, 0.1, 0.3, 0.9]])).tolist()
        [3, 1, 0, 2]
    """
    group = channel_groups(gates, tau)
    key = group.double() * 4 - gates.double().mean(dim=0)  # mean gate in [0, 1] breaks ties
    return torch.argsort(key, stable=True)
