"""Per-task gradients on the shared parameters and their pairwise cosines.

The building blocks of the gradient-cosine diagnostic (CosReg paper, arXiv:1912.06844, §7 of the
method reference) and of CosReg itself: pick the shared parameters, take one gradient per task
loss with :func:`torch.autograd.grad` (nothing is accumulated into ``.grad``), stack them into a
``(T, P)`` matrix and compare the rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasknorm.nn import TaskRouted


def shared_parameters(backbone: nn.Module, names: Sequence[str] | None = None
                      ) -> dict[str, nn.Parameter]:
    """The trainable parameters of ``backbone`` that every task uses.

    Those are all parameters except the ones of task-specific normalization layers (TSBN, TSσBN
    and their LayerNorm twins), whose rows belong to one task each. Shared norms (BatchNorm, σBN)
    count as shared.

    Args:
        backbone: the shared trunk (``MultiTaskModel.backbone``).
        names: only the parameters with one of these names, or inside one of these modules
            (``"features.9"`` selects ``features.9.weight``, ...); e.g. the last shared layer,
            as in the CosReg paper. ``None`` selects all shared parameters.

    Returns:
        ``{name: parameter}`` in the order of ``backbone.named_parameters()``.

    Example:
        >>> from tasknorm.models import digits_cnn
        >>> from tasknorm.nn import convert
        >>> backbone = convert(digits_cnn(width=8), ["left", "right"])
        >>> list(shared_parameters(backbone))
        ['features.0.weight', 'features.3.weight', 'features.6.weight', 'features.9.weight']
        >>> list(shared_parameters(backbone, ["features.9"]))
        ['features.9.weight']
    """
    task_specific = {id(p) for m in backbone.modules() if isinstance(m, TaskRouted)
                     for p in m.parameters()}
    shared = {name: p for name, p in backbone.named_parameters()
              if p.requires_grad and id(p) not in task_specific}
    if names is None:
        if not shared:
            raise ValueError(f"{type(backbone).__name__} has no trainable shared parameter")
        return shared
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of names, got the string {names!r}")
    selected: dict[str, nn.Parameter] = {}
    for wanted in names:
        matches = {n: p for n, p in shared.items() if n == wanted or n.startswith(wanted + ".")}
        if not matches:
            raise ValueError(f"no trainable shared parameter is named {wanted!r} or lies inside "
                             f"it; shared parameters: {_listed(list(shared))}")
        selected.update(matches)
    return {n: p for n, p in shared.items() if n in selected}


def task_gradients(losses: Mapping[str, Tensor] | Sequence[Tensor],
                   parameters: Sequence[Tensor], *, create_graph: bool = False) -> Tensor:
    """One flattened gradient per task loss, as the rows of a ``(T, P)`` matrix.

    Uses ``torch.autograd.grad`` with ``retain_graph=True`` so the losses can still be
    back-propagated afterwards; ``.grad`` of the parameters is left untouched. A parameter a task
    does not reach contributes zeros to that task's row.

    Args:
        losses: the scalar task losses (a dict keeps its order).
        parameters: the parameters to differentiate with respect to (``P`` = total elements).
        create_graph: keep the graph of the gradients, for penalties on them (CosReg).

    Example:
        >>> import torch
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> task_gradients({"a": (w ** 2).sum(), "b": 3 * w[0]}, [w])
        tensor([[2., 4.],
                [3., 0.]])
    """
    values = list(losses.values()) if isinstance(losses, Mapping) else list(losses)
    params = list(parameters)
    if not values or not params:
        raise ValueError(f"need at least one loss and one parameter, got {len(values)} losses "
                         f"and {len(params)} parameters")
    rows = []
    for loss in values:
        grads = torch.autograd.grad(loss, params, retain_graph=True, create_graph=create_graph,
                                    allow_unused=True)
        rows.append(_flat(grads, params))
    return torch.stack(rows)


def task_jacobian(objectives: Tensor | Sequence[Tensor], shared: Sequence[Tensor],
                  others: Sequence[Tensor] = (), weights: Tensor | None = None
                  ) -> tuple[Tensor, list[Tensor | None]]:
    """The ``(T, P)`` Jacobian of the task objectives on ``shared`` and the gradient of their
    sum (weighted by ``weights``, when given) on ``others`` (``None`` for one that no objective
    reaches), from one backward pass per task.

    This is what a gradient aggregator needs for one step: the rows of the Jacobian for the
    shared parameters, and for the parameters that one task reaches (heads, task-specific
    norms) the plain gradient, which comes from the same passes instead of one more backward.
    The graph is freed after the last pass. Each pass runs through all of the graph that
    leads to its objective: give separate tensors (the task losses), not the entries of one
    stacked tensor, whose every entry leads to all tasks' graphs (:func:`objective_weights`).

    Example:
        >>> import torch
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> head = torch.tensor(3.0, requires_grad=True)
        >>> objectives = torch.stack([(w ** 2).sum(), head * w[0]])
        >>> jacobian, (head_grad,) = task_jacobian(objectives, [w], [head])
        >>> jacobian, head_grad
        (tensor([[2., 4.],
                [3., 0.]]), tensor(1.))
    """
    values = list(objectives)
    shared, others = list(shared), list(others)
    if not values or not shared:
        raise ValueError(f"need at least one objective and one shared parameter, got "
                         f"{len(values)} objectives and {len(shared)} shared parameters")
    rest: list[Tensor | None] = [None] * len(others)
    rows = []
    for index, value in enumerate(values):
        grads = torch.autograd.grad(value, [*shared, *others],
                                    retain_graph=index < len(values) - 1, allow_unused=True)
        rows.append(_flat(grads[:len(shared)], shared))
        for position, grad in enumerate(grads[len(shared):]):
            if grad is not None:
                grad = grad if weights is None else weights[index] * grad
                total = rest[position]
                rest[position] = grad if total is None else total + grad
    return torch.stack(rows), rest


def objective_weights(objectives: Tensor, losses: Sequence[Tensor]) -> Tensor:
    """The ``(T, L)`` derivatives of each of the ``objectives`` (computed from ``losses``) by
    each loss, from one backward pass per objective that stops at the losses.

    With them the Jacobian of the objectives is that of the losses, ``objective_weights @
    task_jacobian(losses, ...)`` (the chain rule), whose passes run each through its own
    loss's graph: ``task_jacobian(objectives, ...)`` would run every pass through all of them,
    since every entry of a stacked tensor leads to all of its inputs.

    Example:
        >>> import torch
        >>> losses = [torch.tensor(2.0, requires_grad=True), torch.tensor(4.0, requires_grad=True)]
        >>> objective_weights(torch.stack(losses).log(), losses)
        tensor([[0.5000, 0.0000],
                [0.0000, 0.2500]])
    """
    rows = []
    for objective in objectives:
        grads = torch.autograd.grad(objective, list(losses), retain_graph=True,
                                    allow_unused=True)
        rows.append(torch.stack([g if g is not None else torch.zeros_like(loss)
                                 for g, loss in zip(grads, losses, strict=True)]))
    return torch.stack(rows).detach()


def _flat(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    """The gradients as one vector, zeros for parameters the output does not reach."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


def gradient_cosines(gradients: Tensor, eps: float = 1e-12) -> Tensor:
    """Pairwise cosine similarities ``(T, T)`` of the rows of ``gradients`` ``(T, P)``.

    A zero row (a task that does not reach the parameters) has cosine 0 with every row,
    itself included.

    Example:
        >>> import torch
        >>> gradient_cosines(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]))
        tensor([[1.0000, 0.0000, 0.7071],
                [0.0000, 1.0000, 0.7071],
                [0.7071, 0.7071, 1.0000]])
    """
    if gradients.dim() != 2:
        raise ValueError(f"gradients must be (tasks, parameters), got shape "
                         f"{tuple(gradients.shape)}")
    unit = F.normalize(gradients, dim=1, eps=eps)
    return unit @ unit.T


def task_pairs(tasks: Sequence[str]) -> list[tuple[str, str]]:
    """The unordered task pairs ``(a, b)``, ``a`` before ``b`` in ``tasks``.

    Example:
        >>> task_pairs(["seg", "depth", "normals"])
        [('seg', 'depth'), ('seg', 'normals'), ('depth', 'normals')]
    """
    return list(combinations(tasks, 2))


def pair_values(matrix: Tensor) -> Tensor:
    """The strict upper triangle of a square ``(T, T)`` matrix, row by row: one value per pair
    of :func:`task_pairs`.

    Example:
        >>> import torch
        >>> pair_values(torch.tensor([[1.0, 0.1, 0.2], [0.1, 1.0, 0.3], [0.2, 0.3, 1.0]]))
        tensor([0.1000, 0.2000, 0.3000])
    """
    if matrix.dim() != 2 or matrix.size(0) != matrix.size(1):
        raise ValueError(f"expected a square matrix, got shape {tuple(matrix.shape)}")
    rows, cols = torch.triu_indices(matrix.size(0), matrix.size(0), offset=1,
                                    device=matrix.device)
    return matrix[rows, cols]


def rolling_std(values: Tensor, window: int, *, pooled: bool = False) -> Tensor:
    """Standard deviation (population) of each row of ``values`` and the up to ``window - 1``
    rows before it; the first rows use what exists so far.

    Args:
        values: ``(R,)`` or ``(R, K)``, one row per measurement (e.g. per task pair).
        window: rows per window.
        pooled: one value per row over all columns of the window (``(R,)``) instead of one per
            column (``values``' shape).

    Example:
        >>> import torch
        >>> rolling_std(torch.tensor([0.0, 2.0, 0.0, 2.0]), window=2)
        tensor([0., 1., 1., 1.])
        >>> rolling_std(torch.tensor([[0.0, 2.0], [0.0, 2.0]]), window=1, pooled=True)
        tensor([1., 1.])
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    wide = values.double()
    out = torch.empty((wide.size(0),) if pooled else wide.shape, dtype=wide.dtype)
    for i in range(wide.size(0)):
        chunk = wide[max(0, i - window + 1):i + 1]
        out[i] = chunk.flatten().std(correction=0) if pooled else chunk.std(0, correction=0)
    return out.to(values.dtype)


def cosine_statistics(cosines: Tensor, window: int) -> dict[str, Tensor]:
    """Mean, standard deviation and rolling standard deviation of a cosine history.

    Args:
        cosines: ``(R, K)``: ``R`` measurements of ``K`` task pairs.
        window: measurements per rolling window.

    Returns:
        ``mean``, ``std`` ``(K,)`` and ``rolling_std`` ``(R, K)`` per pair, and ``overall_mean``,
        ``overall_std`` (scalars) and ``overall_rolling_std`` ``(R,)`` over all pairs pooled.
        Standard deviations are population ones (a single measurement has std 0).

    Example:
        >>> import torch
        >>> stats = cosine_statistics(torch.tensor([[0.0, 1.0], [0.5, 1.0]]), window=2)
        >>> stats["mean"], stats["std"], stats["overall_mean"]
        (tensor([0.2500, 1.0000]), tensor([0.2500, 0.0000]), tensor(0.6250))
    """
    if cosines.dim() != 2 or cosines.size(0) == 0:
        raise ValueError(f"cosines must be (measurements, pairs) with at least one "
                         f"measurement, got shape {tuple(cosines.shape)}")
    return {
        "mean": cosines.mean(0),
        "std": cosines.std(0, correction=0),
        "rolling_std": rolling_std(cosines, window),
        "overall_mean": cosines.mean(),
        "overall_std": cosines.std(correction=0),
        "overall_rolling_std": rolling_std(cosines, window, pooled=True),
    }


def _listed(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
