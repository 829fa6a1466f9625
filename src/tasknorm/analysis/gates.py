"""The gate matrices of a TSσBN model: per layer, tasks × channels, ``sigmoid`` of each task's
raw gate.

Every analysis in :mod:`tasknorm.analysis` starts from ``{layer name: (T, C) tensor}`` as
returned by :func:`gate_matrices`, so it works the same for BatchNorm (CNNs) and LayerNorm
(Transformers) models, and for gate matrices made by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from tasknorm.nn import SigmoidGated, TaskRouted

Gates = Mapping[str, Tensor]
"""``{layer name: gate matrix (tasks, channels)}``, values in (0, 1), all with the same tasks."""


class NoGatesError(ValueError):
    """The model has no task-specific σ normalization layer to read gates from."""


def gate_matrices(model: nn.Module) -> dict[str, Tensor]:
    """The gate matrix ``(T, C)`` of every task-specific σ layer of ``model`` (TSσBN, task σ
    LayerNorm), keyed by the layer's name in ``model``, in model order; detached, float32, CPU.

    A LayerNorm over several dimensions contributes its normalized elements as channels.

    Raises:
        NoGatesError: ``model`` has no such layer (saying what it has instead).
        ValueError: the layers disagree on the tasks.

    Example:
        >>> from tasknorm.models import digits_cnn
        >>> from tasknorm.nn import convert
        >>> gates = gate_matrices(convert(digits_cnn(width=8), ["left", "right"]))
        >>> {name: tuple(g.shape) for name, g in gates.items()}
        {'features.1': (2, 8), 'features.4': (2, 16), 'features.7': (2, 16), 'features.10': (2, 32)}
    """
    gates: dict[str, Tensor] = {}
    tasks: tuple[str, ...] | None = None
    routed = 0
    for name, module in model.named_modules():
        if not isinstance(module, TaskRouted):
            continue
        routed += 1
        if not isinstance(module, SigmoidGated):
            continue
        if tasks is not None and module.tasks != tasks:
            raise ValueError(f"layer {name!r} has tasks {module.tasks}, earlier layers have "
                             f"{tasks}")
        tasks = module.tasks
        gates[name] = module.gate.detach().float().cpu().reshape(module.num_tasks, -1)
    if not gates:
        what = (f"{routed} task-specific layers without gates (TSBN: per-task scale and shift)"
                if routed else "no task-specific normalization layer")
        raise NoGatesError(f"{type(model).__name__} has {what}; the gate analysis needs "
                           "TSσBN / task σ LayerNorm layers (architecture 'task_sigma')")
    return gates


def model_tasks(model: nn.Module) -> tuple[str, ...]:
    """The task names of the task-specific layers of ``model`` (the first layer's).

    Example:
        >>> from tasknorm.nn import TaskSigmaBatchNorm2d
        >>> model_tasks(TaskSigmaBatchNorm2d(4, ["seg", "depth"]))
        ('seg', 'depth')
    """
    for module in model.modules():
        if isinstance(module, TaskRouted):
            return module.tasks
    raise NoGatesError(f"{type(model).__name__} has no task-specific normalization layer")


def check_gates(gates: Gates, tasks: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``gates`` is a non-empty dict of 2-D matrices with one row
    per task, all in [0, 1]."""
    if not gates:
        raise ValueError("no gate matrices given")
    for name, matrix in gates.items():
        if matrix.dim() != 2 or matrix.size(0) != len(tasks):
            raise ValueError(f"gates of {name!r} must be (tasks={len(tasks)}, channels), got "
                             f"shape {tuple(matrix.shape)}")
        if matrix.numel() and (matrix.min() < 0 or matrix.max() > 1):
            raise ValueError(f"gates of {name!r} must lie in [0, 1] (sigmoid of the raw gates)")


def concatenated(gates: Gates) -> Tensor:
    """All layers' gates side by side: ``(T, total channels)``, the whole network's matrix.

    Example:
        >>> import torch
        >>> concatenated({"a": torch.ones(2, 3), "b": torch.zeros(2, 1)}).shape
        torch.Size([2, 4])
    """
    return torch.cat([g.float() for g in gates.values()], dim=1)


def short_names(names: Sequence[str], max_length: int = 22) -> list[str]:
    """Layer names for axis labels: leading parts shared by every name are dropped as long as
    each name keeps at least two parts, and what is still longer than ``max_length`` keeps its
    end, after an ellipsis.

    Example:
        >>> short_names(["backbone.features.1", "backbone.features.4"])
        ['features.1', 'features.4']
        >>> short_names(["encoder.stage4.block12.conv_bn_relu.norm"], max_length=18)
        ['…conv_bn_relu.norm']
    """
    parts = [n.split(".") for n in names]
    common = 0
    if len(parts) > 1:
        while all(len(p) > common + 2 and p[common] == parts[0][common] for p in parts):
            common += 1
    short = [".".join(p[common:]) or "(model)" for p in parts]
    return [s if len(s) <= max_length else "…" + _tail(s, max_length) for s in short]


def _tail(name: str, max_length: int) -> str:
    """The last dotted parts of ``name`` that fit in ``max_length`` (at least the last part)."""
    parts = name.split(".")
    kept = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + 1 + len(kept) > max_length:
            break
        kept = f"{part}.{kept}"
    return kept
