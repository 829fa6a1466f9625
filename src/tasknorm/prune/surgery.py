"""One-shot structured pruning: choose channels by norm-layer importance, then remove them
physically with Torch-Pruning's dependency graph (coupled layers — residual adds, concats,
depthwise convs, the classifier's inputs — are pruned together).

A *unit* is one Torch-Pruning group: the output channels of a root conv/linear and everything
coupled to them. Its channel scores are the importances (:func:`channel_importance`) of the
norm layers in the group, reduced by maximum (a channel of a residual stream is removable only
when no layer writing to it uses it). :func:`plan_pruning` pools the scores of all prunable units
and cuts at one quantile (``mode="global"``, RNI / slimming) or cuts every unit at the same
ratio (``mode="layer"``, the uniform baseline); at least ``min_keep`` channels survive per unit.
A unit holding a grouped convolution (ResNeXt, RegNet) with ``g`` groups is cut in ``g`` equal
blocks: the same positions are removed from every block, so that every group keeps the same
width, and a position's score is its mean over the blocks (as Torch-Pruning's ``MetaPruner``).
:func:`apply_plan` removes the channels; :func:`mask_plan` instead zeroes the pruned channels'
norm outputs in the unpruned model (the same function, used to check the surgery).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import Tensor, nn

from tasknorm.nn import TaskRouted, use_task
from tasknorm.prune.importance import channel_importance, is_norm
from tasknorm.prune.pruners import customized_pruners

Mode = Literal["global", "layer"]


@dataclass
class PruneUnit:
    """One group of coupled channels: ``root`` (a conv/linear name) and its norm layers."""

    root: str
    channels: int
    norms: dict[str, list[int]]
    """norm layer name → its channel index for each root channel (same order as ``scores``)."""
    scores: Tensor
    pruned: list[int] = field(default_factory=list)
    """root channel indices to remove."""
    groups: int = 1
    """the channels form ``groups`` equal contiguous blocks (a grouped convolution is in the
    unit); the same positions are removed from every block, and ``scores`` holds each
    position's mean over the blocks."""

    @property
    def kept(self) -> int:
        return self.channels - len(self.pruned)


@dataclass
class PruningPlan:
    """Which channels of which units to remove, and how the ratio was realised."""

    units: list[PruneUnit]
    ratio: float
    mode: Mode
    threshold: float | None = None

    @property
    def total_channels(self) -> int:
        return sum(u.channels for u in self.units)

    @property
    def pruned_channels(self) -> int:
        return sum(len(u.pruned) for u in self.units)

    @property
    def realised_ratio(self) -> float:
        """Fraction of prunable channels removed (differs from ``ratio`` by ties and the
        ``min_keep`` floor)."""
        return self.pruned_channels / max(self.total_channels, 1)

    def widths(self) -> dict[str, tuple[int, int]]:
        """root name → (channels before, channels after)."""
        return {u.root: (u.channels, u.kept) for u in self.units}


def build_graph(model: nn.Module, example_inputs: Any, *, task: str | None = None,
                forward_fn: Callable[[nn.Module, Any], Any] | None = None
                ) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model``, knowing tasknorm's norm layers.

    Models with task-specific layers are traced for ``task`` (default: their first task).
    The model's train/eval mode is kept (tracing alone switches it to eval).
    """
    training = model.training
    routed = [m for m in model.modules() if isinstance(m, TaskRouted)]
    if routed and task is None:
        task = routed[0].tasks[0]
    context = use_task(task) if routed else contextlib.nullcontext()
    try:
        with context, torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs, forward_fn=forward_fn,
                customized_pruners=customized_pruners(), verbose=False)
    finally:
        model.train(training)
    return graph


def prune_units(model: nn.Module, graph: tp.DependencyGraph,
                norms: Iterable[nn.Module] | None = None,
                task: str | None = None) -> list[PruneUnit]:
    """Every unit of ``graph`` that contains norm layers, all of them in ``norms`` (default: the
    model's ``prunable_norms()`` if it has one, else every norm layer)."""
    if norms is None and hasattr(model, "prunable_norms"):
        norms = model.prunable_norms()
    allowed = None if norms is None else {id(m) for m in norms}
    names = {m: n for n, m in model.named_modules()}
    units = []
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Conv1d, nn.Linear)):
        root = group[0].dep.target.module
        channels = len(group[0].idxs)
        groups = _unit_groups(graph, group, channels)
        if groups is None:
            continue
        members: dict[str, list[int]] = {}
        scores = torch.full((channels,), float("-inf"))
        for item in group:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or not is_norm(module):
                continue
            name = names[module]
            if name in members:
                continue
            index = [0] * channels
            for idx, root_idx in zip(item.idxs, item.root_idxs, strict=True):
                index[root_idx] = idx
            members[name] = index
            score = channel_importance(module, task)[item.idxs]
            roots = torch.as_tensor(item.root_idxs)
            scores[roots] = torch.maximum(scores[roots], score)
        if not members:
            continue
        if allowed is not None and not all(id(model.get_submodule(n)) in allowed
                                           for n in members):
            continue
        # root channels without a norm (partial concat coverage) are never removed
        scores[torch.isinf(scores)] = float("inf")
        scores = scores.view(groups, -1).mean(dim=0).repeat(groups)
        units.append(PruneUnit(names[root], channels, members, scores, groups=groups))
    order = {name: i for i, name in enumerate(names.values())}
    units.sort(key=lambda u: order[u.root])
    if not units:
        raise ValueError(f"{type(model).__name__} has no prunable group of channels with a "
                         "norm layer")
    return units


def _unit_groups(graph: tp.DependencyGraph, group: tp.Group, channels: int) -> int | None:
    """Number of equal blocks a unit's channels must keep: the least common multiple of the
    group counts of its grouped layers (a depthwise conv is pruned group by group and imposes
    none), or ``None`` when a grouped layer's channels are not exactly the root's channels in the
    same order (behind a concatenation, say) and no block structure can be kept."""
    blocks = 1
    for item in group:
        module = item.dep.target.module
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or tp.ops.module2type(module) == tp.ops.OPTYPE.DEPTHWISE_CONV:
            continue
        out = graph.is_out_channel_pruning_fn(item.dep.handler)
        count = (pruner.get_out_channel_groups if out else pruner.get_in_channel_groups)(module)
        if count == 1:
            continue
        width = (pruner.get_out_channels if out else pruner.get_in_channels)(module)
        if width != channels or len(item.idxs) != channels or item.idxs != item.root_idxs:
            return None
        blocks = math.lcm(blocks, count)
    return blocks


def _select(units: Sequence[PruneUnit], ratio: float, mode: Mode, min_keep: int,
            round_to: int | None) -> float | None:
    threshold = None
    if mode == "global":
        pooled = torch.cat([u.scores[torch.isfinite(u.scores)] for u in units]).double()
        threshold = float(torch.quantile(pooled, ratio))
    elif mode != "layer":
        raise ValueError(f"unknown mode {mode!r}; expected 'global' or 'layer'")
    for unit in units:
        cut = threshold
        if mode == "layer":
            finite = unit.scores[torch.isfinite(unit.scores)].double()
            cut = float(torch.quantile(finite, ratio))
        unit.pruned = _pruned_indices(unit, unit.scores.double() > cut, min_keep, round_to)
    return threshold


def _pruned_indices(unit: PruneUnit, keep: Tensor, min_keep: int, round_to: int | None
                    ) -> list[int]:
    """Channels not in ``keep``, after raising the kept count to ``min_keep`` and then to a
    multiple of ``round_to`` and of the unit's ``groups`` (keeping the highest-scoring
    positions of every block)."""
    step = math.lcm(round_to or 1, unit.groups)
    count = max(int(keep.sum()), min(min_keep, unit.channels))
    count = min(unit.channels, -(-count // step) * step)
    if count != int(keep.sum()):
        positions = unit.scores.view(unit.groups, -1)[0]
        kept = torch.zeros_like(positions, dtype=torch.bool)
        kept[torch.topk(positions, count // unit.groups).indices] = True
        keep = kept.repeat(unit.groups)
    return torch.nonzero(~keep).flatten().tolist()


def plan_pruning(model: nn.Module, example_inputs: Any, ratio: float, *,
                 mode: Mode = "global", min_keep: int = 3, round_to: int | None = None,
                 norms: Iterable[nn.Module] | None = None, task: str | None = None,
                 graph: tp.DependencyGraph | None = None) -> PruningPlan:
    """Choose the channels to remove at channel prune ratio ``ratio`` (fraction of prunable
    channels, RNI's ``prune_pc``).

    Channels whose score is strictly above the quantile are kept (``numpy.quantile``-style
    linear interpolation); a unit left with fewer than ``min_keep`` keeps its top ``min_keep``;
    with ``round_to`` every unit keeps a multiple of it (fast kernels on CPU/GPU prefer channel
    counts that are multiples of 8 or 16); a unit with a grouped convolution keeps a multiple of
    its ``groups``, the same positions in each group. ``ratio=0`` removes nothing.

    Example:
        >>> import torch
        >>> from tasknorm.models.cifar import vgg16
        >>> from tasknorm.prune import plan_pruning
        >>> model = vgg16(norm="sigma")
        >>> plan = plan_pruning(model, torch.randn(1, 3, 32, 32), 0.5)
        >>> len(plan.units), plan.total_channels, round(plan.realised_ratio, 2)
        (13, 4224, 0.5)
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    if graph is None:
        graph = build_graph(model, example_inputs, task=task)
    units = prune_units(model, graph, norms, task)
    threshold = None
    if ratio > 0:
        threshold = _select(units, ratio, mode, min_keep, round_to)
    return PruningPlan(units, ratio, mode, threshold)


def plan_by_threshold(model: nn.Module, example_inputs: Any, threshold: float, *,
                      min_keep: int = 3, round_to: int | None = None,
                      norms: Iterable[nn.Module] | None = None, task: str | None = None
                      ) -> PruningPlan:
    """Remove every channel whose score is ≤ ``threshold`` (e.g. a gate threshold τ)."""
    graph = build_graph(model, example_inputs, task=task)
    units = prune_units(model, graph, norms, task)
    for unit in units:
        unit.pruned = _pruned_indices(unit, unit.scores > threshold, min_keep, round_to)
    plan = PruningPlan(units, 0.0, "global", threshold)
    plan.ratio = plan.realised_ratio
    return plan


@torch.no_grad()
def apply_plan(model: nn.Module, example_inputs: Any, plan: PruningPlan, *,
               task: str | None = None) -> nn.Module:
    """Physically remove ``plan``'s channels from ``model`` (in place) and return it.

    The plan's unit names must exist in ``model`` (a plan made on a copy applies to the
    original). Norm layers keep their type: a pruned σBN model stays a σBN model for fine-tuning;
    :func:`tasknorm.prune.to_plain` turns it into ordinary BatchNorm for deployment.
    """
    for unit in plan.units:
        _check_blocks(unit)
    graph = build_graph(model, example_inputs, task=task)
    for unit in plan.units:
        if not unit.pruned:
            continue
        root = model.get_submodule(unit.root)
        pruner = graph.get_pruner_of_module(root)
        group = graph.get_pruning_group(root, pruner.prune_out_channels, list(unit.pruned))
        if not graph.check_pruning_group(group):
            raise RuntimeError(f"pruning {len(unit.pruned)} of {unit.channels} channels of "
                               f"{unit.root!r} would empty a layer")
        group.prune()
    return model


def _check_blocks(unit: PruneUnit) -> None:
    """Refuse a grouped unit whose blocks would lose different positions (Torch-Pruning slices
    a grouped conv's inputs by the first block's positions, so the result would be wrong)."""
    if unit.groups == 1:
        return
    removed = torch.zeros(unit.channels, dtype=torch.bool)
    removed[list(unit.pruned)] = True
    blocks = removed.view(unit.groups, -1)
    if not (blocks == blocks[0]).all():
        raise ValueError(f"unit {unit.root!r}: pruned channels must be the same positions in "
                         f"each of its {unit.groups} blocks of {unit.channels // unit.groups}")


def prune_model(model: nn.Module, example_inputs: Any, ratio: float, **kwargs: Any
                ) -> tuple[nn.Module, PruningPlan]:
    """:func:`plan_pruning` then :func:`apply_plan` on ``model`` (in place)."""
    task = kwargs.get("task")
    plan = plan_pruning(model, example_inputs, ratio, **kwargs)
    return apply_plan(model, example_inputs, plan, task=task), plan


@contextlib.contextmanager
def mask_plan(model: nn.Module, plan: PruningPlan) -> Iterator[nn.Module]:
    """Within the context, the outputs of the plan's pruned channels are exactly zero at every
    norm layer of their unit — the unpruned model then computes what the pruned one does (a
    sigmoid gate never reaches 0 by itself, so the norm output is masked)."""
    masks: dict[str, Tensor] = {}
    for unit in plan.units:
        for name, index in unit.norms.items():
            layer = model.get_submodule(name)
            if name not in masks:
                masks[name] = torch.ones(layer.num_features)
            masks[name][[index[i] for i in unit.pruned]] = 0.0

    def hook(mask: Tensor) -> Callable[..., Tensor]:
        def apply(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
            shape = (1, -1) + (1,) * (output.dim() - 2)
            return output * mask.to(output).view(shape)
        return apply

    handles = [model.get_submodule(name).register_forward_hook(hook(mask))
               for name, mask in masks.items()]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
