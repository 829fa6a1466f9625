"""Gradient aggregators (TorchJD): how per-task gradients on shared parameters become one update.

An aggregator maps the ``(T, P)`` Jacobian of the task losses with respect to the shared
parameters (one row per task) to the ``P``-vector stored in ``.grad`` (TorchJD's
``Aggregator`` objects are exactly such callables). Parameters that only one task reaches (task
heads, task-specific normalization layers) get the plain gradient of the sum of the losses, as
in ``torchjd.autojac.mtl_backward``.

Under DDP the Jacobian is averaged over processes *before* aggregation
(:func:`mean_over_processes`), so that the update is the one a single process would compute on
the joined batch (aggregators are non-linear: averaging the aggregated vectors would differ).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchjd import aggregation as jd

AGGREGATORS: dict[str, Callable[..., nn.Module]] = {
    "aligned_mtl": jd.AlignedMTL,
    "cagrad": lambda num_tasks, c=0.4, **kw: jd.CAGrad(c=c, **kw),
    "dualproj": jd.DualProj,
    "graddrop": jd.GradDrop,
    "imtl_g": lambda num_tasks, **kw: jd.IMTLG(**kw),
    "mean": lambda num_tasks, **kw: jd.Mean(**kw),
    "mgda": jd.MGDA,
    "nash_mtl": lambda num_tasks, **kw: jd.NashMTL(n_tasks=num_tasks, **kw),
    "pcgrad": lambda num_tasks, **kw: jd.PCGrad(**kw),
    "upgrad": jd.UPGrad,
}
"""Name → builder ``(num_tasks, **kwargs)`` of a TorchJD aggregator. ``cagrad``'s ``c`` defaults
to 0.4 (the CAGrad paper's NYUv2 value); ``mean`` (the plain average of the task gradients) is
the reference point."""

_TENSOR_ARGUMENTS = ("pref_vector", "leak")


def build_aggregator(name: str, num_tasks: int, **kwargs: object) -> nn.Module:
    """The TorchJD aggregator registered as ``name`` for ``num_tasks`` tasks.

    List-valued ``pref_vector`` / ``leak`` arguments (as they come from a YAML config) are turned
    into tensors.

    Example:
        >>> import torch
        >>> upgrad = build_aggregator("upgrad", 2)
        >>> upgrad(torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]))
        tensor([0.2929, 1.9004, 1.9004])
        >>> build_aggregator("sgd", 2)
        Traceback (most recent call last):
        ...
        ValueError: unknown aggregator 'sgd'; expected one of ['aligned_mtl', 'cagrad', ...]
    """
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; expected one of {sorted(AGGREGATORS)}")
    arguments = {k: torch.as_tensor(v, dtype=torch.float32)
                 if k in _TENSOR_ARGUMENTS and isinstance(v, list | tuple) else v
                 for k, v in kwargs.items()}
    builder = AGGREGATORS[name]
    try:
        if isinstance(builder, type):
            return builder(**arguments)
        return builder(num_tasks, **arguments)
    except TypeError as error:
        raise ValueError(f"bad arguments {kwargs} for aggregator {name!r}: {error}") from None


def aggregate(aggregator: nn.Module, jacobian: Tensor) -> Tensor:
    """``aggregator(jacobian)`` without autograd.

    Two cvxpy warnings of Nash-MTL's solver are silenced: the advice about re-solving non-DPP
    problems (a performance note) and "Solution may be inaccurate" (ECOS stopping at its
    iteration limit of 100, which Nash-MTL's reference implementation accepts as well)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are solving a parameterized problem")
        warnings.filterwarnings("ignore", message="Solution may be inaccurate")
        return aggregator(jacobian)


def mean_over_processes(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over the default process group (``tensor`` itself without one)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    reduced = tensor.detach().clone()
    dist.all_reduce(reduced)
    return reduced / dist.get_world_size()


def write_gradient(parameters: Sequence[Tensor], vector: Tensor) -> None:
    """Store the flat ``vector`` into the ``.grad`` of ``parameters`` (replacing it)."""
    offset = 0
    for p in parameters:
        n = p.numel()
        p.grad = vector[offset:offset + n].view_as(p).to(p.dtype).clone()
        offset += n
    if offset != vector.numel():
        raise ValueError(f"gradient has {vector.numel()} elements, parameters {offset}")
