"""Gradient aggregators (TorchJD): how per-task gradients on shared parameters become one update.

An aggregator maps the ``(T, P)`` Jacobian of the task losses with respect to the shared
parameters (one row per task) to the ``P``-vector stored in ``.grad`` (TorchJD's
``Aggregator`` objects are exactly such callables). Parameters that only one task reaches (task
heads, task-specific normalization layers) get the plain gradient of the sum of the losses, as
in ``torchjd.autojac.mtl_backward``.

Under DDP the Jacobian is averaged over processes *before* aggregation
(:func:`mean_over_processes`), so that the update is the one a single process would compute on
the joined batch (aggregators are non-linear: averaging the aggregated vectors would differ).
Every process then holds the same Jacobian, so a stateful method's state stays the same on
every process without being reduced.

:class:`Aggregation` is the interface the training module calls: ``(jacobian, objectives)`` →
update of the shared parameters, or ``None`` for a batch the method only measures (MoDo and
SDMGrad take three batches per step, :class:`ThreeBatchWeighting`). :class:`TorchJDAggregation`
wraps a TorchJD aggregator and carries its state (GradVac, ExcessMTL, Nash-MTL, ...) in the
checkpoint, which TorchJD's own state dicts cannot restore into a fresh instance.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchjd import aggregation as jd

AGGREGATORS: dict[str, Callable[..., nn.Module]] = {
    "aligned_mtl": jd.AlignedMTL,
    "cagrad": lambda num_tasks, c=0.4, **kw: jd.CAGrad(c=c, **kw),
    "dualproj": jd.DualProj,
    "excess_mtl": lambda num_tasks, **kw: jd.ExcessMTL(**kw),
    "fairgrad": lambda num_tasks, alpha=1.0, **kw: jd.FairGrad(alpha=alpha, **kw),
    "graddrop": jd.GradDrop,
    "gradvac": lambda num_tasks, **kw: jd.GradVac(**kw),
    "imtl_g": lambda num_tasks, **kw: jd.IMTLG(**kw),
    "mean": lambda num_tasks, **kw: jd.Mean(**kw),
    "mgda": jd.MGDA,
    "nash_mtl": lambda num_tasks, **kw: jd.NashMTL(n_tasks=num_tasks, **kw),
    "pcgrad": lambda num_tasks, **kw: jd.PCGrad(**kw),
    "rgw": lambda num_tasks, **kw: jd.Random(**kw),
    "upgrad": jd.UPGrad,
}
"""Name → builder ``(num_tasks, **kwargs)`` of a TorchJD aggregator. ``cagrad``'s ``c`` defaults
to 0.4 (the CAGrad paper's NYUv2 value), ``fairgrad``'s ``alpha`` to 1 (proportional fairness,
FairGrad paper); ``mean`` (the plain average of the task gradients) is the reference point;
``rgw`` is random gradient weighting (Lin et al., TMLR 2022), TorchJD's ``Random``."""

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


class Aggregation(nn.Module):
    """The gradient side of a balancing method: the ``(T, P)`` Jacobian of the task objectives
    on the shared parameters (averaged over processes) and the objectives' values ``(T,)``
    (likewise) → the ``(P,)`` update stored in their ``.grad``, or ``None`` when this batch only
    feeds the method's state (then no optimizer step is taken on it).

    ``batches`` is how many training batches one update consumes. State lives in buffers or in
    :meth:`get_extra_state`, so that it is saved with the checkpoint and restored on resume.
    """

    batches: ClassVar[int] = 1

    def forward(self, jacobian: Tensor, objectives: Tensor) -> Tensor | None:
        raise NotImplementedError


class _CarriesTorchJDState(Aggregation):
    """Saves the state of the TorchJD module ``self.method`` as extra state and restores it.

    TorchJD's stateful methods keep their state in buffers registered as ``None`` and in plain
    attributes (step counters, a key of shape, dtype and device), so their own state dicts do
    not load into a fresh instance. Here every attribute of every submodule that is state (a
    tensor, a NumPy array, a number, a string, a dtype, a device, or a tuple of these) is saved,
    in a form that loads with ``torch.load(weights_only=True)`` (as Lightning loads), and set back
    on load; tensors go to the device of this module. Solver objects (Nash-MTL's cvxpy problem)
    are rebuilt from the restored values by the method itself.
    """

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method
        self.register_buffer("device_anchor", torch.zeros(0), persistent=False)

    def get_extra_state(self) -> dict[str, Any]:
        state = {}
        for prefix, module in self.method.named_modules():
            for name, value in _state_attributes(module).items():
                encoded = _encode(value)
                if encoded is not _UNSAVED:
                    state[f"{prefix}:{name}"] = encoded
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        modules = dict(self.method.named_modules())
        for key, value in state.items():
            prefix, _, name = key.rpartition(":")
            if prefix not in modules:
                raise ValueError(f"the checkpoint's state of {type(self.method).__name__} has "
                                 f"{key!r}, which this aggregation does not have")
            setattr(modules[prefix], name, _decode(value, self.device_anchor.device))
        for module in modules.values():  # Nash-MTL's solver, built at its first step
            if hasattr(module, "_init_optim_problem") and getattr(module, "step", 0):
                module._init_optim_problem()


_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_UNSAVED = object()


def _state_attributes(module: nn.Module) -> dict[str, Any]:
    return {**{k: v for k, v in vars(module).items() if k not in _MODULE_INTERNALS},
            **module._buffers}


def _encode(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return {"ndarray": torch.from_numpy(value.copy())}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str | torch.dtype | torch.device):
        return value
    if isinstance(value, tuple):
        items = [_encode(item) for item in value]
        return _UNSAVED if any(item is _UNSAVED for item in items) else tuple(items)
    return _UNSAVED


def _decode(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return value["ndarray"].numpy()
    if isinstance(value, tuple):
        return tuple(_decode(item, device) for item in value)
    return value


class TorchJDAggregation(_CarriesTorchJDState):
    """A TorchJD ``Aggregator`` (one of :data:`AGGREGATORS`) as an :class:`Aggregation`.

    Example:
        >>> import torch
        >>> pcgrad = TorchJDAggregation(build_aggregator("pcgrad", 2))
        >>> pcgrad(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]), torch.ones(2))
        tensor([0.5000, 1.5000])
    """

    def forward(self, jacobian: Tensor, objectives: Tensor) -> Tensor:
        return aggregate(self.method, jacobian)


class ThreeBatchWeighting(_CarriesTorchJDState):
    """A weighting of two independent batches' Jacobians (TorchJD's ``MoDoWeighting``,
    ``SDMGradWeighting``), stepping once every three batches: the first two give ``J₁``, ``J₂``
    and the task weights ``λ = weighting(J₁ J₂ᵀ)``, the third the update ``J₃ᵀ λ`` (MoDo,
    Chen et al., JMLR 2024, Alg. 1; SDMGrad, Xiao et al., NeurIPS 2023, Alg. 1: weights and
    update on independent draws, so that the stochastic update is unbiased).

    Example:
        >>> import torch
        >>> from torchjd.aggregation import MoDoWeighting
        >>> modo = ThreeBatchWeighting(MoDoWeighting(gamma=0.1, rho=0.0))
        >>> jacobian = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> modo(jacobian, torch.ones(2)), modo(jacobian, torch.ones(2))
        (None, None)
        >>> modo(jacobian, torch.ones(2))  # λ = Π_Δ(½ − 0.1 · diag(1, 4) · ½) = (0.575, 0.425)
        tensor([0.5750, 0.8500])
    """

    batches = 3

    def __init__(self, method: nn.Module) -> None:
        super().__init__(method)
        self.register_buffer("position", torch.zeros((), dtype=torch.long))
        self.register_buffer("first", torch.zeros(0))
        self.register_buffer("task_weights", torch.zeros(0))

    def forward(self, jacobian: Tensor, objectives: Tensor) -> Tensor | None:
        position = int(self.position)
        self.position.fill_((position + 1) % self.batches)
        if position == 0:
            self.first = jacobian.detach().clone()
            return None
        if position == 1:
            with torch.no_grad():
                self.task_weights = self.method(self.first @ jacobian.T)
            self.first = jacobian.new_zeros(0)
            return None
        return self.task_weights @ jacobian

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        for name in ("first", "task_weights"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args)
