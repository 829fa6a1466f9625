"""A shared backbone with one head per task, in every sharing architecture we compare."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from tasknorm.models.heads import build_head
from tasknorm.nn import convert, stack_tasks, unstack_tasks, use_all_tasks, use_task
from tasknorm.nn.convert import GATE_INIT_MEAN, GATE_INIT_STD, GateInit
from tasknorm.nn.routing import Layout
from tasknorm.tasks import Task

Architecture = Literal["single_task", "hard", "sigma", "task", "task_sigma"]
ARCHITECTURES: tuple[Architecture, ...] = ("single_task", "hard", "sigma", "task", "task_sigma")
"""``single_task``: one backbone per task; ``hard``: one shared backbone with shared BatchNorm;
``sigma``: shared σBN; ``task``: TSBN; ``task_sigma``: TSσBN."""


class MultiTaskModel(nn.Module):
    """Backbone(s) plus a head per task; ``forward(x)`` returns ``{task: output}``.

    With task-specific norms (``task``, ``task_sigma``) every task needs its own pass through the
    backbone; all tasks run in one batched call (``layout`` picks how the task copies are stacked).
    Only the backbone is converted; heads are per task and keep ordinary norm layers. Dense
    (4-D) outputs are resized to the input's height and width (bilinear, ``align_corners=True``,
    as LibMTL) so that losses and metrics see full-resolution predictions.

    Args:
        backbone: builds a backbone with an integer ``out_features`` (called once per task for
            ``single_task``).
        tasks: the tasks, each with a unique name.
        architecture: one of :data:`ARCHITECTURES`.
        gate_init: σ-gate initialisation when converting (see :func:`tasknorm.nn.convert`), for
            ``sigma`` and ``task_sigma``.
        gate_init_mean: mean of the raw σ gates with ``gate_init="normal"``.
        gate_init_std: their standard deviation.
        layout: batch layout of the all-tasks pass.
        head: name of a head in :data:`tasknorm.models.heads.HEADS`, built for every task as
            ``build_head(head, out_features, task.out_channels)``; ``None`` uses each task's
            own ``task.build_head(out_features)``.

    Example:
        >>> import torch
        >>> from tasknorm.models import MultiTaskModel, digits_cnn
        >>> from tasknorm.tasks import ClassificationTask
        >>> tasks = [ClassificationTask("left", 10), ClassificationTask("right", 10)]
        >>> model = MultiTaskModel(digits_cnn, tasks, architecture="task_sigma")
        >>> {t: o.shape for t, o in model(torch.randn(4, 1, 23, 23)).items()}
        {'left': torch.Size([4, 10]), 'right': torch.Size([4, 10])}
    """

    def __init__(
        self,
        backbone: Callable[[], nn.Module],
        tasks: Sequence[Task],
        architecture: Architecture = "task_sigma",
        gate_init: GateInit = "normal",
        layout: Layout = "task_major",
        head: str | None = None,
        gate_init_mean: float = GATE_INIT_MEAN,
        gate_init_std: float = GATE_INIT_STD,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; expected one of "
                             f"{ARCHITECTURES}")
        names = [t.name for t in tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"tasks must be non-empty with unique names, got {names}")
        self.task_names = tuple(names)
        self.architecture = architecture
        self.layout = layout
        if architecture == "single_task":
            self.backbones = nn.ModuleDict({name: backbone() for name in names})
            out_features = self.backbones[names[0]].out_features
        else:
            trunk = backbone()
            out_features = trunk.out_features
            gates = {"gate_init": gate_init, "init_mean": gate_init_mean,
                     "init_std": gate_init_std}
            if architecture == "sigma":
                trunk = convert(trunk, kind="sigma", **gates)
            elif architecture in ("task", "task_sigma"):
                trunk = convert(trunk, names, kind=architecture, **gates)
            self.backbone = trunk
        self.heads = nn.ModuleDict({
            t.name: t.build_head(out_features) if head is None
            else build_head(head, out_features, t.out_channels) for t in tasks})

    @property
    def task_specific(self) -> bool:
        return self.architecture in ("task", "task_sigma")

    def forward(self, x: Tensor, task: str | None = None) -> dict[str, Tensor]:
        """Outputs of every task, or only of ``task`` when given; dense outputs at ``x``'s size."""
        if task is not None and task not in self.task_names:
            raise ValueError(f"unknown task {task!r}; expected one of {self.task_names}")
        size = x.shape[-2:]
        return {t: _resized(out, size) for t, out in self._head_outputs(x, task).items()}

    def _head_outputs(self, x: Tensor, task: str | None) -> dict[str, Tensor]:
        names = self.task_names if task is None else (task,)
        if self.architecture == "single_task":
            return {t: self.heads[t](self.backbones[t](x)) for t in names}
        if not self.task_specific:
            features = self.backbone(x)
            return {t: self.heads[t](features) for t in names}
        if task is not None:
            with use_task(task):
                return {task: self.heads[task](self.backbone(x))}
        with use_all_tasks(self.layout, names):
            stacked = self.backbone(stack_tasks(x, len(names), self.layout))
        features = unstack_tasks(stacked, len(names), self.layout)
        return {t: self.heads[t](f) for t, f in zip(names, features, strict=True)}


def _resized(output: Tensor, size: tuple[int, int]) -> Tensor:
    """A dense ``(B, C, h, w)`` output bilinearly resized to ``size``; other outputs as they are."""
    if output.dim() != 4 or output.shape[-2:] == size:
        return output
    return F.interpolate(output, size=size, mode="bilinear", align_corners=True)
