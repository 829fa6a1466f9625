"""A shared backbone with one head per task, in every sharing architecture we compare."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from tasknorm.models.branching import LearningToBranch
from tasknorm.models.experts import cgc, dselect_k, mmoe, ple
from tasknorm.models.heads import build_head
from tasknorm.models.soft_sharing import MTAN, CrossStitchNetwork
from tasknorm.models.task_tree import task_tree
from tasknorm.nn import convert, stack_tasks, unstack_tasks, use_all_tasks, use_task
from tasknorm.nn.convert import GATE_INIT_MEAN, GATE_INIT_STD, GateInit
from tasknorm.nn.routing import Layout
from tasknorm.tasks import Task

Architecture = Literal["single_task", "hard", "sigma", "task", "task_sigma", "cross_stitch",
                       "mtan", "mmoe", "cgc", "ple", "dselect_k", "ltb", "tree"]
NORM_ARCHITECTURES: tuple[Architecture, ...] = ("single_task", "hard", "sigma", "task",
                                                "task_sigma")
"""One backbone per task (``single_task``) or one shared backbone whose norms differ: ``hard``
(shared BatchNorm), ``sigma`` (shared σBN), ``task`` (TSBN), ``task_sigma`` (TSσBN)."""
LEARNED_SHARING: dict[str, Callable[..., nn.Module]] = {
    "cross_stitch": CrossStitchNetwork,
    "mtan": MTAN,
    "mmoe": mmoe,
    "cgc": cgc,
    "ple": ple,
    "dselect_k": dselect_k,
    "ltb": LearningToBranch,
}
"""Architectures that learn how much the tasks share, each a module mapping an image to
``{task: features}``, built as ``builder(backbone, task_names, **architecture_args)``: cross-stitch
networks and MTAN (:mod:`~tasknorm.models.soft_sharing`), MMoE, CGC, PLE and DSelect-k
(:mod:`~tasknorm.models.experts`), Learning to Branch (:mod:`~tasknorm.models.branching`)."""
TREE: Architecture = "tree"
"""A TSσBN backbone run as a task tree (:func:`~tasknorm.models.task_tree.task_tree`): per
level, one set of σ-gated norms and one pass per group of tasks."""
ARCHITECTURES: tuple[Architecture, ...] = (*NORM_ARCHITECTURES, *LEARNED_SHARING, TREE)


class MultiTaskModel(nn.Module):
    """Backbone(s) plus a head per task; ``forward(x)`` returns ``{task: output}``.

    With task-specific norms (``task``, ``task_sigma``) every task needs its own pass through the
    backbone; all tasks run in one batched call (``layout`` picks how the task copies are stacked).
    Only the backbone is converted; heads are per task and keep ordinary norm layers. With an
    architecture of :data:`LEARNED_SHARING`, ``backbone`` is the module that builds the backbone
    copies and maps the image to each task's features (every parameter but the heads'); the σ-gate
    options and ``layout`` do not apply to these and are ignored. The ``tree`` architecture runs
    a TSσBN backbone as a task tree whose groups ``architecture_args["groups"]`` gives (its
    all-tasks passes are always task-major). Dense (4-D) outputs are resized
    to the input's height and width (bilinear, ``align_corners=True``, as LibMTL) so that losses
    and metrics see full-resolution predictions.

    Args:
        backbone: builds a backbone with an integer ``out_features`` (called once per task for
            ``single_task``, once per copy for :data:`LEARNED_SHARING`).
        tasks: the tasks, each with a unique name.
        architecture: one of :data:`ARCHITECTURES`.
        gate_init: σ-gate initialisation when converting (see :func:`tasknorm.nn.convert`), for
            ``sigma``, ``task_sigma`` and ``tree``.
        gate_init_mean: mean of the raw σ gates with ``gate_init="normal"``.
        gate_init_std: their standard deviation.
        layout: batch layout of the all-tasks pass.
        head: name of a head in :data:`tasknorm.models.heads.HEADS`, built for every task as
            ``build_head(head, out_features, task.out_channels)``; ``None`` uses each task's
            own ``task.build_head(out_features)``.
        architecture_args: options of a :data:`LEARNED_SHARING` architecture or of ``tree``
            (keyword arguments of its builder, e.g. ``{"experts": 8}`` for ``mmoe``,
            ``{"groups": [[["left", "right"]], [["left"], ["right"]]]}`` for ``tree``);
            ``None`` for its defaults.

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
        architecture_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; expected one of "
                             f"{ARCHITECTURES}")
        names = [t.name for t in tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"tasks must be non-empty with unique names, got {names}")
        _check_architecture_args(architecture, architecture_args)
        self.task_names = tuple(names)
        self.architecture = architecture
        self.layout = layout
        gates = {"gate_init": gate_init, "init_mean": gate_init_mean, "init_std": gate_init_std}
        if architecture in LEARNED_SHARING:
            self.backbone = LEARNED_SHARING[architecture](backbone, self.task_names,
                                                          **(architecture_args or {}))
            out_features = self.backbone.out_features
        elif architecture == TREE:
            self.backbone = task_tree(backbone, self.task_names, **(architecture_args or {}),
                                      gates=gates)
            out_features = self.backbone.out_features
        elif architecture == "single_task":
            self.backbones = nn.ModuleDict({name: backbone() for name in names})
            out_features = self.backbones[names[0]].out_features
        else:
            trunk = backbone()
            out_features = trunk.out_features
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

    def architecture_parameters(self) -> list[nn.Parameter]:
        """The parameters that choose the network's structure rather than compute features
        (Learning to Branch's branching logits; none for the other architectures), which the
        optimizer gives a learning-rate multiplier of their own."""
        return [p for module in self.modules() if isinstance(module, LearningToBranch)
                for p in module.architecture_parameters()]

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
        if self.architecture in (*LEARNED_SHARING, TREE):
            features = self.backbone(x)
            return {t: self.heads[t](features[t]) for t in names}
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


def _check_architecture_args(architecture: str, args: dict[str, Any] | None) -> None:
    """Raise ``ValueError`` for options that ``architecture`` does not take."""
    if not args:
        return
    if not isinstance(args, dict):
        raise TypeError(f"architecture_args must be a dict, got {type(args).__name__}")
    builders = {**LEARNED_SHARING, TREE: task_tree}
    if architecture not in builders:
        raise ValueError(f"architecture {architecture!r} takes no architecture_args, got "
                         f"{sorted(args)}")
    parameters = list(inspect.signature(builders[architecture]).parameters.values())[2:]
    accepted = [p.name for p in parameters if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(f"architecture {architecture!r} has no option {', '.join(unknown)}; "
                         f"its options: {', '.join(accepted) or 'none'}")


def _resized(output: Tensor, size: tuple[int, int]) -> Tensor:
    """A dense ``(B, C, h, w)`` output bilinearly resized to ``size``; other outputs as they are."""
    if output.dim() != 4 or output.shape[-2:] == size:
        return output
    return F.interpolate(output, size=size, mode="bilinear", align_corners=True)
