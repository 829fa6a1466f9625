"""Selecting which task the task-specific layers of a model serve.

A converted model is never edited to know about tasks: its task-specific layers read the active
:class:`Route` from a :class:`~contextvars.ContextVar` (so nesting restores the outer route and
every thread or asyncio task has its own), or fall back to a default stored on the layers with
:func:`set_route`.

In all-tasks mode the batch holds ``T`` copies of the input, one per task, in one of two layouts:

* ``"task_major"`` (the default): row ``t * N + n`` is sample ``n`` for task ``t``, i.e. the
  per-task batches concatenated, ``torch.cat([x_task0, x_task1, ...])``.
* ``"sample_major"``: row ``n * T + t``; batch normalization then folds tasks into channels with a
  free view instead of a copy (no faster in practice, see ``docs/benchmarks.md``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

Layout = Literal["task_major", "sample_major"]
LAYOUTS: tuple[Layout, ...] = ("task_major", "sample_major")


@dataclass(frozen=True)
class Route:
    """Which task a forward pass serves: one named task, or all tasks stacked along the batch.

    Args:
        task: the task's name, or ``None`` for all tasks of each layer in one batched pass.
        layout: how the task copies are stacked along the batch in all-tasks mode.
        tasks: in all-tasks mode, the tasks stacked in the batch, in order; every task-specific
            layer the batch reaches must have exactly these tasks, so that a layer built for
            other tasks fails instead of normalising several tasks jointly. ``None``: each layer
            takes the batch to hold its own tasks.
    """

    task: str | None = None
    layout: Layout = "task_major"
    tasks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; expected one of {LAYOUTS}")
        if self.tasks is not None:
            if self.task is not None:
                raise ValueError(f"a route for the single task {self.task!r} takes no tasks; "
                                 "tasks names the tasks of an all-tasks batch")
            object.__setattr__(self, "tasks", validate_tasks(self.tasks))

    @property
    def all_tasks(self) -> bool:
        return self.task is None


_ACTIVE_ROUTE: ContextVar[Route | None] = ContextVar("tasknorm_active_route", default=None)


def current_route() -> Route | None:
    """The route set by the innermost active :func:`use_task` / :func:`use_all_tasks`, if any."""
    return _ACTIVE_ROUTE.get()


@contextmanager
def use_route(route: Route) -> Iterator[Route]:
    """Make ``route`` active for the enclosed code (in this thread or asyncio task only)."""
    token = _ACTIVE_ROUTE.set(route)
    try:
        yield route
    finally:
        _ACTIVE_ROUTE.reset(token)


def use_task(task: str) -> AbstractContextManager[Route]:
    """Run the enclosed forward passes for the single task ``task``.

    Example:
        >>> import torch
        >>> from tasknorm.nn import TaskBatchNorm2d, use_task
        >>> bn = TaskBatchNorm2d(3, tasks=["seg", "depth"])
        >>> with use_task("depth"):
        ...     y = bn(torch.randn(4, 3, 8, 8))
        >>> y.shape
        torch.Size([4, 3, 8, 8])
    """
    return use_route(Route(task=task))


def use_all_tasks(layout: Layout = "task_major",
                  tasks: Sequence[str] | None = None) -> AbstractContextManager[Route]:
    """Run the enclosed forward passes for all tasks at once, on a batch stacked in ``layout``.

    With ``tasks`` (the tasks stacked in the batch, in order), every task-specific layer checks
    that it was built for exactly these tasks: a layer built for fewer, more or reordered tasks
    raises ``ValueError`` instead of normalising rows of several tasks together. Without it, each
    layer takes the batch to hold its own tasks.

    Example:
        >>> import torch
        >>> from tasknorm.nn import TaskSigmaBatchNorm2d, stack_tasks, unstack_tasks, use_all_tasks
        >>> bn = TaskSigmaBatchNorm2d(3, tasks=["seg", "depth"])
        >>> x = torch.randn(4, 3, 8, 8)
        >>> with use_all_tasks():
        ...     y = bn(stack_tasks(x, 2))
        >>> [t.shape for t in unstack_tasks(y, 2)]
        [torch.Size([4, 3, 8, 8]), torch.Size([4, 3, 8, 8])]
        >>> with use_all_tasks(tasks=["seg", "depth", "normal"]):
        ...     bn(stack_tasks(x, 3))
        Traceback (most recent call last):
        ...
        ValueError: TaskSigmaBatchNorm2d has tasks ('seg', 'depth'), but the all-tasks batch ...
    """
    return use_route(Route(task=None, layout=layout,
                           tasks=None if tasks is None else validate_tasks(tasks)))


def set_route(model: nn.Module, route: Route | str | None) -> nn.Module:
    """Store a default route on every task-specific layer of ``model`` and return ``model``.

    The default applies when no :func:`use_task` / :func:`use_all_tasks` context is active.
    A string selects that task; ``None`` clears the default.
    """
    if isinstance(route, str):
        route = Route(task=route)
    layers = [m for m in model.modules() if isinstance(m, TaskRouted)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no task-specific layer to route")
    if route is not None:
        for layer in layers:  # check every layer before changing any
            layer.task_index(route)
    for layer in layers:
        layer.default_route = route
    return model


class TaskRouted(nn.Module, ABC):
    """Base of every layer with per-task state: holds the task names and resolves the route.

    Subclasses call :meth:`_init_routing` after ``nn.Module.__init__``.
    """

    tasks: tuple[str, ...]
    default_route: Route | None

    def _init_routing(self, tasks: Sequence[str]) -> None:
        """Set the task names; a single-task layer routes to its task by default."""
        self.tasks = validate_tasks(tasks)
        self.default_route = Route(self.tasks[0]) if len(self.tasks) == 1 else None

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def active_route(self) -> Route:
        """The route of this forward pass: the active context if any, else the layer's default."""
        route = _ACTIVE_ROUTE.get() or self.default_route
        if route is None:
            raise RuntimeError(
                f"{type(self).__name__} with tasks {self.tasks} needs a task: run the model inside "
                "tasknorm.nn.use_task(name) or use_all_tasks(), or call tasknorm.nn.set_route()"
            )
        return route

    def task_index(self, route: Route) -> int | None:
        """Index of ``route``'s task in :attr:`tasks` (``None`` in all-tasks mode, after checking
        that the batch holds this layer's tasks when the route names them)."""
        if route.task is None:
            if route.tasks is not None and route.tasks != self.tasks:
                raise ValueError(f"{type(self).__name__} has tasks {self.tasks}, but the "
                                 f"all-tasks batch holds {route.tasks}")
            return None
        try:
            return self.tasks.index(route.task)
        except ValueError:
            raise ValueError(f"unknown task {route.task!r}; expected one of {self.tasks}") from None

    @abstractmethod
    def task_affine(self) -> tuple[Tensor | None, Tensor | None]:
        """Per-task scale and shift applied after normalization, each with the task as first
        dimension (``None`` where the layer has none)."""

    @abstractmethod
    def affine_parameters(self) -> tuple[Tensor | None, Tensor | None]:
        """The parameters behind :meth:`task_affine` (for σ layers the gate logits, not the
        gates); a single-task module keeps their ``requires_grad``."""

    @abstractmethod
    def single_task_module(self, task: str) -> nn.Module:
        """An ordinary (non-task) module computing what this layer computes for ``task``."""

    def regroup_(self, groups: Sequence[str], weights: Tensor) -> TaskRouted:
        """Make this layer serve ``groups`` instead of its tasks, in place: row ``g`` of every
        per-task tensor (each has the task as first dimension) becomes ``weights[g] @ rows``, a
        convex combination of the tasks' rows (a one-hot row copies one task, a uniform row
        averages several); integer batch counts take the largest count of the row's tasks.
        Parameters stay parameters with their ``requires_grad``; the layer object is kept, so
        every module holding it sees the change. Task trees build their group norms this way.

        Raises:
            ValueError: ``weights`` is not a ``(len(groups), num_tasks)`` matrix of
                non-negative rows summing to 1 (nothing is changed).

        Example:
            >>> import torch
            >>> from tasknorm.nn import TaskSigmaBatchNorm2d
            >>> bn = TaskSigmaBatchNorm2d(4, tasks=["a", "b", "c"])
            >>> before = bn.gate_logit.detach().clone()
            >>> _ = bn.regroup_(["a+b", "c"], torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
            >>> bn.tasks, bn.gate_logit.shape
            (('a+b', 'c'), torch.Size([2, 4]))
            >>> torch.allclose(bn.gate_logit[0], before[:2].mean(0))
            True
        """
        groups = validate_tasks(groups)
        shape = (len(groups), self.num_tasks)
        if tuple(weights.shape) != shape:
            raise ValueError(f"regrouping {type(self).__name__} with tasks {self.tasks} into "
                             f"{len(groups)} groups needs a {shape} weight matrix, got "
                             f"{tuple(weights.shape)}")
        sums = weights.sum(dim=1)
        if (weights < 0).any() or not torch.allclose(sums, torch.ones_like(sums)):
            raise ValueError("regrouping weights must be non-negative with rows summing to 1, "
                             f"got {weights.tolist()}")
        for name, param in list(self._parameters.items()):
            if param is not None:
                setattr(self, name, nn.Parameter(_combined_rows(param.detach(), weights),
                                                 requires_grad=param.requires_grad))
        for name, buffer in list(self._buffers.items()):
            if buffer is not None:
                self._buffers[name] = _combined_rows(buffer, weights)
        self._init_routing(groups)
        return self

    def tasks_per_batch(self, batch_size: int) -> int:
        """Samples per task of an all-tasks batch, checking it splits evenly over the tasks."""
        if batch_size % self.num_tasks:
            raise ValueError(
                f"all-tasks batch of {batch_size} samples is not divisible by the "
                f"{self.num_tasks} tasks {self.tasks}"
            )
        return batch_size // self.num_tasks

    def get_extra_state(self) -> dict[str, list[str]]:
        return {"tasks": list(self.tasks)}

    def set_extra_state(self, state: dict[str, list[str]]) -> None:
        self._check_saved_tasks(state, "")

    def _check_saved_tasks(self, state: object, where: str) -> None:
        saved = tuple(state["tasks"]) if isinstance(state, dict) and "tasks" in state else None
        if saved != self.tasks:
            raise RuntimeError(
                f"incompatible state_dict for {where or type(self).__name__}: saved with tasks "
                f"{saved}, this layer has tasks {self.tasks}"
            )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              local_metadata: dict[str, Any], strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        key = prefix + "_extra_state"
        if key in state_dict:
            self._check_saved_tasks(state_dict[key], prefix.rstrip(".") or type(self).__name__)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _combined_rows(rows: Tensor, weights: Tensor) -> Tensor:
    """``weights @ rows`` over the first dimension (floats), or per row of ``weights`` the
    largest of the rows it uses (integers)."""
    if rows.is_floating_point():
        return torch.einsum("gt,t...->g...", weights.to(rows), rows).contiguous()
    used = weights.to(rows.device) > 0
    return torch.stack([rows[row].amax(dim=0) for row in used])


def validate_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """Check a task list (non-empty, unique strings) and return it as a tuple."""
    if isinstance(tasks, str):
        raise TypeError(f"tasks must be a sequence of names, got the string {tasks!r}")
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("tasks must name at least one task")
    bad = [t for t in tasks if not isinstance(t, str) or not t]
    if bad:
        raise TypeError(f"task names must be non-empty strings, got {bad}")
    duplicates = sorted({t for t in tasks if tasks.count(t) > 1})
    if duplicates:
        raise ValueError(f"duplicate task names {duplicates} in {tasks}")
    return tasks


def stack_tasks(x: Tensor, num_tasks: int, layout: Layout = "task_major") -> Tensor:
    """Replicate a batch once per task along dim 0, in ``layout``, for an all-tasks pass."""
    if layout == "task_major":
        return x.repeat(num_tasks, *([1] * (x.dim() - 1)))
    if layout == "sample_major":
        return x.repeat_interleave(num_tasks, dim=0)
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def unstack_tasks(y: Tensor, num_tasks: int, layout: Layout = "task_major") -> tuple[Tensor, ...]:
    """Split an all-tasks output into one view per task (the inverse of :func:`stack_tasks`)."""
    if y.size(0) % num_tasks:
        raise ValueError(f"batch of {y.size(0)} samples is not divisible by {num_tasks} tasks")
    if layout == "task_major":
        return y.unflatten(0, (num_tasks, -1)).unbind(0)
    if layout == "sample_major":
        return y.unflatten(0, (-1, num_tasks)).unbind(1)
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
