"""Turning the normalization layers of any model into σBN / TSBN / TSσBN ones and back.

:func:`convert` replaces layers in place, copying running statistics and affine values into
every task; :func:`extract_task` returns a copy with ordinary ``BatchNorm``/``LayerNorm`` layers
holding one task's statistics and gates, for deployment. Both build every new layer before
changing anything (an unsupported layer leaves the model as it was), and a layer registered at
several places in the model is replaced by one new layer, so tied layers stay tied.

Layers converted: ``nn.BatchNorm1d``/``2d``, ``nn.SyncBatchNorm`` (as 2d, with synchronised
statistics), timm's ``BatchNormAct2d`` and other BatchNorm subclasses that carry ``drop``/``act``
(kept around the new norm in a :class:`~tasknorm.nn.NormAct`), ``nn.LayerNorm`` and its timm
subclasses, and timm's channels-first ``LayerNorm2d`` family. ``GroupNorm``, ``InstanceNorm``,
frozen BatchNorm and the norms of already-converted layers are left alone. A source without
affine parameters gives a TSBN / task LayerNorm without them (per-task statistics only); the σ
kinds add their gates to it.

Gate initialisation for the σ kinds (``gate_init``):

* ``"normal"``: gate logits drawn from N(``init_mean``, ``init_std``²), independently per task;
  for training from scratch. Running statistics are still copied. The default N(2, 1) starts
  gates at 0.84 on average, closer to BatchNorm's γ = 1 than the σBN code's N(0, 1) (gates
  around 0.5), which trains slower (measurements in ``docs/training.md``).
* ``"pretrained"``: gate logit = ``logit(clamp(γ, 0.01, 0.99))`` of the source layer's weight
  γ, the same for every task; for fine-tuning a pretrained backbone. A gate cannot exceed 1 or
  be negative, and σ layers have no shift unless ``bias=True``, so the converted network differs
  from the source until fine-tuned.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tasknorm.nn.batchnorm import (
    BatchNormStats,
    SigmaBatchNorm,
    SigmaBatchNorm1d,
    SigmaBatchNorm2d,
    TaskBatchNorm1d,
    TaskBatchNorm2d,
    TaskSigmaBatchNorm1d,
    TaskSigmaBatchNorm2d,
)
from tasknorm.nn.layernorm import (
    TaskLayerNorm,
    TaskLayerNorm2d,
    TaskSigmaLayerNorm,
    TaskSigmaLayerNorm2d,
)
from tasknorm.nn.norm_act import NormAct
from tasknorm.nn.routing import TaskRouted, validate_tasks

Kind = Literal["task", "task_sigma", "sigma"]
KINDS: tuple[Kind, ...] = ("task", "task_sigma", "sigma")
GateInit = Literal["normal", "pretrained"]
GATE_INITS: tuple[GateInit, ...] = ("normal", "pretrained")
GATE_INIT_MEAN = 2.0
GATE_INIT_STD = 1.0
"""Default N(mean, std²) of raw σ gates when converting (the σBN layers' own default is the
σBN code's N(0, 1))."""
PRETRAINED_GATE_RANGE = (0.01, 0.99)

_BATCH_NORM_CLASSES: dict[Kind, tuple[type[nn.Module], type[nn.Module]]] = {
    "task": (TaskBatchNorm1d, TaskBatchNorm2d),
    "task_sigma": (TaskSigmaBatchNorm1d, TaskSigmaBatchNorm2d),
    "sigma": (SigmaBatchNorm1d, SigmaBatchNorm2d),
}
_LAYER_NORM_CLASSES: dict[Kind, tuple[type[nn.Module], type[nn.Module]]] = {
    "task": (TaskLayerNorm, TaskLayerNorm2d),
    "task_sigma": (TaskSigmaLayerNorm, TaskSigmaLayerNorm2d),
}


def convert(
    model: nn.Module,
    tasks: Sequence[str] | None = None,
    kind: Kind = "task_sigma",
    *,
    gate_init: GateInit = "normal",
    init_mean: float = GATE_INIT_MEAN,
    init_std: float = GATE_INIT_STD,
    bias: bool = False,
) -> nn.Module:
    """Replace every normalization layer of ``model`` by its σBN / TSBN / TSσBN counterpart.

    Args:
        model: any ``nn.Module``; changed in place (a model that is itself a norm layer is
            returned replaced, as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does).
        tasks: task names (``kind="task"`` / ``"task_sigma"``); must be ``None`` for ``"sigma"``.
        kind: ``"task_sigma"`` (TSσBN, default), ``"task"`` (TSBN) or ``"sigma"`` (σBN; converts
            BatchNorm only).
        gate_init: how σ gates start (see the module docstring); ignored for ``"task"``.
        init_mean: mean of the gate logits with ``gate_init="normal"`` (the layers keep it for
            ``reset_parameters``).
        init_std: their standard deviation.
        bias: give σ layers a (per-task) shift, initialised from the source's bias.

    Returns:
        The converted model.

    Raises:
        ValueError: a bad argument, no layer to convert, or a layer that cannot be converted
            (e.g. ``BatchNorm3d``); every layer is checked before any is replaced, so ``model``
            is then left as it was.

    Example:
        >>> import torchvision
        >>> from tasknorm.nn import TaskSigmaBatchNorm2d, convert
        >>> model = convert(torchvision.models.resnet18(), tasks=["seg", "depth"])
        >>> sum(isinstance(m, TaskSigmaBatchNorm2d) for m in model.modules())
        20
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    if gate_init not in GATE_INITS:
        raise ValueError(f"unknown gate_init {gate_init!r}; expected one of {GATE_INITS}")
    if not init_std >= 0 or not math.isfinite(init_mean) or not math.isfinite(init_std):
        raise ValueError(f"gate init N({init_mean}, {init_std}²) needs a finite mean and a "
                         "finite, non-negative standard deviation")
    gates = {"init_mean": init_mean, "init_std": init_std}
    if kind == "sigma":
        if tasks is not None or bias:
            raise ValueError("kind='sigma' converts to single-task σBN without bias; pass "
                             "tasks=None and bias=False")
    else:
        if tasks is None:
            raise ValueError(f"kind={kind!r} needs the task names")
        tasks = validate_tasks(tasks)
    converted: list[str] = []

    def replace(name: str, module: nn.Module) -> nn.Module | None:
        new = _converted(name, module, kind, tasks, gate_init, gates, bias)
        if new is not None:
            converted.append(name)
        return new

    model = _replace_modules(model, replace)  # builds every new layer before replacing any
    if not converted:
        looked_for = "BatchNorm" if kind == "sigma" else "BatchNorm or LayerNorm"
        raise ValueError(f"{type(model).__name__} has no {looked_for} layer to convert")
    return model


def extract_task(model: nn.Module, task: str) -> nn.Module:
    """A copy of a converted ``model`` for ``task`` alone, with ordinary norm layers.

    Every task-specific layer becomes ``nn.BatchNorm1d``/``2d`` or ``nn.LayerNorm`` (timm's
    ``LayerNorm2d`` for channels-first ones) holding ``task``'s running statistics and its scale
    (``sigmoid`` of the gate for σ layers) and shift (zero where the layer has none); σBN layers
    become ``BatchNorm`` the same way, and a :class:`~tasknorm.nn.NormAct` becomes the timm
    norm-act class it replaced (e.g. ``BatchNormAct2d``) with its activation and dropout. The
    new weights and biases keep the ``requires_grad`` of the parameters they come from. In eval
    mode the copy computes exactly what ``model`` does for ``task``, at the speed of a model
    that never had task-specific layers.

    Raises:
        ValueError: ``task`` is not a task of every task-specific layer, or ``model`` has none
            (a model whose only tasknorm layers are shared σBN has no tasks: fold it into plain
            BatchNorm with :func:`tasknorm.prune.to_plain`).

    Example:
        >>> import torch, torchvision
        >>> from tasknorm.nn import convert, extract_task, use_task
        >>> model = convert(torchvision.models.resnet18(num_classes=4), ["seg", "depth"]).eval()
        >>> plain = extract_task(model, "depth")
        >>> x = torch.randn(2, 3, 64, 64)
        >>> with use_task("depth"):
        ...     expected = model(x)
        >>> torch.allclose(plain(x), expected, atol=1e-5)
        True
    """
    layers = [m for _, m in task_norm_layers(model)]
    if not layers:
        if any(isinstance(m, BatchNormStats) for m in model.modules()):
            raise ValueError(f"{type(model).__name__} has no task-specific layer, so no task "
                             f"{task!r}; fold its σBN layers into plain BatchNorm with "
                             "tasknorm.prune.to_plain(model)")
        raise ValueError(f"{type(model).__name__} has no tasknorm layer to extract a task from")
    for layer in layers:
        if task not in layer.tasks:
            raise ValueError(f"unknown task {task!r}; expected one of {layer.tasks}")
    return _replace_modules(copy.deepcopy(model), lambda _, m: _single_task(m, task))


def task_norm_layers(model: nn.Module) -> Iterator[tuple[str, TaskRouted]]:
    """``(name, layer)`` for every task-specific normalization layer of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, TaskRouted):
            yield name, module


def set_sync_stats(model: nn.Module, enabled: bool = True,
                   process_group: torch.distributed.ProcessGroup | None = None) -> nn.Module:
    """Synchronise (or stop synchronising) the batch statistics of every σBN / TSBN / TSσBN
    layer of ``model`` across the processes of ``process_group`` (default: all) in training.

    In all-tasks mode each task's statistics are reduced separately. Use this instead of
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, which does not know these layers. A model
    whose tasknorm layers are all LayerNorms has no batch statistics and is returned unchanged.
    """
    if not any(isinstance(m, TaskRouted | BatchNormStats) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no tasknorm layer to synchronise")
    for layer in (m for m in model.modules() if isinstance(m, BatchNormStats)):
        layer.sync_stats = enabled
        layer.process_group = process_group
    return model


def _replace_modules(model: nn.Module,
                     replace: Callable[[str, nn.Module], nn.Module | None]) -> nn.Module:
    """Put ``replace(name, m)`` in place of every module ``m`` for which it is not ``None``,
    without descending into replaced modules; returns the new root if the root was replaced.

    Every replacement is built before the model is touched, so an error in ``replace`` leaves
    the model as it was; a module registered at several places is replaced once, by one module.
    """
    new_of: dict[int, nn.Module] = {}
    slots: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, child name, child)
    seen: set[int] = set()
    pending = [("", model)]
    while pending:
        name, module = pending.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        new = replace(name, module)
        if new is not None:
            new_of[id(module)] = new
            continue
        # not named_children(): it lists a child registered under two names only once
        children = [(n, c) for n, c in module._modules.items() if c is not None]
        slots.extend((module, child_name, child) for child_name, child in children)
        pending.extend((f"{name}.{child_name}" if name else child_name, child)
                       for child_name, child in reversed(children))
    if id(model) in new_of:
        return new_of[id(model)]
    for parent, child_name, child in slots:
        if id(child) in new_of:
            setattr(parent, child_name, new_of[id(child)])
    return model


def _converted(name: str, module: nn.Module, kind: Kind, tasks: tuple[str, ...] | None,
               gate_init: GateInit, gates: dict[str, float], bias: bool) -> nn.Module | None:
    """``gates``: the σ layers' ``init_mean`` and ``init_std``."""
    if isinstance(module, _BatchNorm):
        new = _convert_batch_norm(name, module, kind, tasks, gate_init, gates, bias)
    elif isinstance(module, nn.LayerNorm) and kind != "sigma":
        new = _convert_layer_norm(module, kind, tasks, gate_init, gates, bias)
    else:
        return None
    new.train(module.training)
    if hasattr(module, "act") and hasattr(module, "drop"):
        wrapper = NormAct(new, module.drop, module.act, plain_class=type(module))
        wrapper.training = module.training  # not .train(): drop and act keep their own modes
        return wrapper
    return new


def _convert_batch_norm(name: str, bn: _BatchNorm, kind: Kind, tasks: tuple[str, ...] | None,
                        gate_init: GateInit, gates: dict[str, float], bias: bool) -> nn.Module:
    if isinstance(bn, nn.BatchNorm1d):
        dims = 0
    elif isinstance(bn, nn.BatchNorm2d | nn.SyncBatchNorm):
        dims = 1
    else:
        raise ValueError(f"cannot convert {type(bn).__name__} at {name!r}: only BatchNorm1d, "
                         "BatchNorm2d and SyncBatchNorm (used as 2d) are supported")
    cls = _BATCH_NORM_CLASSES[kind][dims]
    kwargs = {"eps": bn.eps, "momentum": bn.momentum,
              "track_running_stats": bn.track_running_stats,
              "sync_stats": isinstance(bn, nn.SyncBatchNorm), **_factory_kwargs(bn)}
    if kind == "sigma":
        new = cls(bn.num_features, **gates, **kwargs)
    elif kind == "task":
        new = cls(bn.num_features, tasks, affine=bn.affine, **kwargs)
    else:
        new = cls(bn.num_features, tasks, bias=bias, **gates, **kwargs)
    with torch.no_grad():
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean.expand_as(new.running_mean))
            new.running_var.copy_(bn.running_var.expand_as(new.running_var))
            new.num_batches_tracked.fill_(int(bn.num_batches_tracked))
        _copy_affine(new, bn.weight, bn.bias, kind, gate_init)
    return new


def _convert_layer_norm(ln: nn.LayerNorm, kind: Kind, tasks: tuple[str, ...] | None,
                        gate_init: GateInit, gates: dict[str, float], bias: bool) -> nn.Module:
    channels_first = isinstance(ln, _channels_first_layer_norms())
    cls = _LAYER_NORM_CLASSES[kind][channels_first]
    shape = ln.normalized_shape[0] if channels_first else ln.normalized_shape
    if kind == "task":
        extra = {"elementwise_affine": ln.weight is not None, "bias": ln.bias is not None}
    else:
        extra = {"bias": bias, **gates}
    new = cls(shape, tasks, eps=ln.eps, **extra, **_factory_kwargs(ln))
    with torch.no_grad():
        _copy_affine(new, ln.weight, ln.bias, kind, gate_init)
    return new


def _copy_affine(new: nn.Module, weight: Tensor | None, bias: Tensor | None, kind: Kind,
                 gate_init: GateInit) -> None:
    """Copy a source layer's affine weight and bias into every task of ``new`` (in no_grad),
    with their ``requires_grad``."""
    scale, shift = new.affine_parameters()
    if kind == "task":
        if weight is not None:
            scale.copy_(weight.expand_as(scale))
    elif gate_init == "pretrained":
        gamma = weight if weight is not None else torch.ones_like(scale)
        scale.copy_(torch.logit(gamma.clamp(*PRETRAINED_GATE_RANGE)).expand_as(scale))
    if weight is not None:
        scale.requires_grad_(weight.requires_grad)
    if bias is not None and shift is not None:
        shift.copy_(bias.expand_as(shift))
        shift.requires_grad_(bias.requires_grad)


def _single_task(module: nn.Module, task: str) -> nn.Module | None:
    if isinstance(module, NormAct):
        norm = _single_task(module.norm, task)
        return None if norm is None else module.plain_module(norm)
    if isinstance(module, TaskRouted):
        return module.single_task_module(task)
    if isinstance(module, SigmaBatchNorm):
        return module.to_batch_norm()
    return None


def _factory_kwargs(module: nn.Module) -> dict[str, torch.device | torch.dtype]:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    if tensor is None:
        return {}
    return {"device": tensor.device, "dtype": tensor.dtype}


@cache
def _channels_first_layer_norms() -> tuple[type[nn.Module], ...]:
    """LayerNorm subclasses that normalise dim 1 of NCHW tensors: torchvision's ConvNeXt
    ``LayerNorm2d`` and timm's family (those of libraries that are installed)."""
    found: list[type[nn.Module]] = []
    with contextlib.suppress(ImportError):
        from torchvision.models.convnext import LayerNorm2d

        found.append(LayerNorm2d)
    with contextlib.suppress(ImportError):
        from timm import layers

        names = ("LayerNorm2d", "LayerNormAct2d", "LayerNorm2dFp32", "LayerNormAct2dFp32")
        found += [getattr(layers, n) for n in names if hasattr(layers, n)]
    return tuple(found)
