"""Task relationships read off the gates: which tasks use the same channels.

Two similarities per task pair, per layer or over the network (all layers' channels together):

* :func:`gate_cosine`: cosine of the two gate vectors (soft; no threshold). Gates are positive,
  so it is never below 0, and independent gates already give a high value: :func:`chance_cosine`
  is what a pair would get if one task's gates were randomly permuted over the channels.
* :func:`active_jaccard`: overlap of the active sets, ``|A ∩ B| / |A ∪ B|`` (hard; needs τ);
  undefined (NaN) when neither task has an active channel. :func:`chance_jaccard` is its value
  for randomly placed active sets of the same sizes.

:func:`cluster_tasks` groups the tasks hierarchically (scipy) by ``1 − similarity``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from tasknorm.analysis.capacity import DEFAULT_TAU, active

LINKAGES = ("average", "complete", "single", "weighted")


def gate_cosine(gates: Tensor) -> Tensor:
    """Cosine similarity of the tasks' gate vectors ``(T, T)``.

    Example:
        >>> import torch
        >>> gate_cosine(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
        tensor([[1.0000, 0.7071],
                [0.7071, 1.0000]])
    """
    unit = torch.nn.functional.normalize(gates.double(), dim=1, eps=1e-12)
    return (unit @ unit.T).clamp(0.0, 1.0).float()


def active_jaccard(gates: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """Jaccard overlap of the tasks' active sets ``(T, T)``; NaN where both sets are empty.

    Example:
        >>> import torch
        >>> active_jaccard(torch.tensor([[0.9, 0.9, 0.1], [0.1, 0.9, 0.9], [0.1, 0.1, 0.1]]))
        tensor([[1.0000, 0.3333, 0.0000],
                [0.3333, 1.0000, 0.0000],
                [0.0000, 0.0000,    nan]])
    """
    mask = active(gates, tau).double()
    inter = mask @ mask.T
    sizes = mask.sum(dim=1)
    union = sizes[:, None] + sizes[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.nan).float()


def chance_cosine(gates: Tensor) -> Tensor:
    """Expected :func:`gate_cosine` of each pair if one task's gates were randomly permuted over
    the channels: ``C · mean(g_t) · mean(g_u) / (‖g_t‖ ‖g_u‖)``. Similarity above it means the
    tasks put their large gates on the same channels more than chance.

    Example:
        >>> import torch
        >>> chance_cosine(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]])
    """
    wide = gates.double()
    norms = wide.norm(dim=1).clamp(min=1e-12)
    means = wide.mean(dim=1)
    return (gates.size(1) * means[:, None] * means[None, :] / (norms[:, None] * norms[None, :])
            ).float()


def chance_jaccard(gates: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """Approximate :func:`active_jaccard` of each pair for active sets of the same sizes placed
    at random: ``i / (a + b − i)`` with ``i = a·b / C`` the expected intersection; NaN where
    both sets are empty.

    Example:
        >>> import torch
        >>> chance_jaccard(torch.tensor([[0.9, 0.9, 0.1, 0.1], [0.1, 0.1, 0.9, 0.9]]))
        tensor([[0.3333, 0.3333],
                [0.3333, 0.3333]])
    """
    sizes = active(gates, tau).double().sum(dim=1)
    inter = sizes[:, None] * sizes[None, :] / gates.size(1)
    union = sizes[:, None] + sizes[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.nan).float()


def cluster_tasks(similarity: Tensor, method: str = "average") -> dict[str, Any]:
    """Hierarchical clustering of the tasks with distance ``1 − similarity`` (scipy).

    Args:
        similarity: symmetric ``(T, T)`` similarity in [0, 1] without NaN, ``T ≥ 2``.
        method: the linkage (:data:`LINKAGES`); ``average`` (UPGMA) by default.

    Returns:
        ``linkage``: scipy's ``(T − 1, 4)`` linkage matrix as a list of rows, and ``order``: the
        task indices in dendrogram leaf order (optimal leaf ordering, so neighbours are similar).

    Example:
        >>> import torch
        >>> similarity = torch.tensor([[1.0, 0.1, 0.9], [0.1, 1.0, 0.2], [0.9, 0.2, 1.0]])
        >>> result = cluster_tasks(similarity)
        >>> result["order"]
        [1, 2, 0]
        >>> [round(row[2], 2) for row in result["linkage"]]  # merge heights
        [0.1, 0.85]
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if method not in LINKAGES:
        raise ValueError(f"unknown linkage {method!r}; expected one of {LINKAGES}")
    if similarity.dim() != 2 or similarity.size(0) != similarity.size(1) or similarity.size(0) < 2:
        raise ValueError(f"clustering needs a square similarity of at least 2 tasks, got shape "
                         f"{tuple(similarity.shape)}")
    if torch.isnan(similarity).any():
        raise ValueError("clustering needs a similarity without NaN")
    distance = (1.0 - similarity.double()).clamp(min=0.0)
    distance = (distance + distance.T) / 2
    distance.fill_diagonal_(0.0)
    tree = linkage(squareform(distance.numpy(), checks=False), method=method,
                   optimal_ordering=True)
    return {"linkage": tree.tolist(), "order": [int(i) for i in leaves_list(tree)]}


def pairwise(matrix: Tensor, tasks: Sequence[str]) -> dict[str, float | None]:
    """The strict upper triangle of a task × task matrix keyed ``"a-b"``; NaN becomes ``None``.

    Example:
        >>> import torch
        >>> pairwise(torch.tensor([[1.0, 0.25], [0.25, 1.0]]), ["seg", "depth"])
        {'seg-depth': 0.25}
    """
    return {f"{tasks[i]}-{tasks[j]}": _number(matrix[i, j])
            for i in range(len(tasks)) for j in range(i + 1, len(tasks))}


def _number(value: Tensor) -> float | None:
    number = float(value)
    return None if number != number else number
