"""Reading a ``tasknorm fit`` checkpoint for analysis, without its dataset: the backbone is
rebuilt from the saved hyper-parameters and task names, converted as in training and given the
trained ``model.backbone.*`` weights; gradient-cosine histories come from the callback states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasknorm.analysis.gates import NoGatesError
from tasknorm.models import build_backbone
from tasknorm.nn import convert

ARCHITECTURE_LABELS = {
    "single_task": "one backbone per task with plain BatchNorm",
    "hard": "one shared backbone with shared BatchNorm",
    "sigma": "one shared backbone with σBN gates shared by all tasks",
    "task": "TSBN: per-task BatchNorm scale and shift, not gates",
    "task_sigma": "TSσBN",
}
BACKBONE_PREFIX = "model.backbone."
MONITOR_PREFIX = "GradientCosineMonitor"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be one written by tasknorm's
    :class:`~tasknorm.train.MultiTaskModule` (loaded with ``weights_only=True``: no code runs).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a readable checkpoint, or not a tasknorm one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # arbitrary bytes fail in the unpickler in any way; none runs code
        reason = (str(error).strip() or "-").split(". ")[0].splitlines()[0]
        raise ValueError(f"{path} is not a readable PyTorch checkpoint, e.g. a truncated or "
                         f"text file ({type(error).__name__}: {reason})") from None
    identity = checkpoint.get("tasknorm") if isinstance(checkpoint, dict) else None
    if not isinstance(identity, dict) or not {"tasks", "backbone", "architecture"} <= set(identity):
        raise ValueError(f"{path} is not a tasknorm checkpoint: it has no 'tasknorm' entry with "
                         "tasks, backbone and architecture (written by tasknorm fit)")
    for key in ("state_dict", "hyper_parameters"):
        if not isinstance(checkpoint.get(key), dict):
            raise ValueError(f"{path} is not a tasknorm checkpoint: it has no {key!r}")
    return checkpoint


def gated_backbone(checkpoint: dict[str, Any]) -> nn.Module:
    """The trained TSσBN backbone of ``checkpoint`` (see :func:`read_checkpoint`), in eval mode.

    Pretrained-weight files named in the backbone's arguments are not read: the trained weights
    replace them anyway.

    Raises:
        NoGatesError: the model's architecture has no task-specific gates.
        ValueError: the saved weights do not fit the rebuilt backbone.
    """
    identity = checkpoint["tasknorm"]
    architecture = identity["architecture"]
    if architecture != "task_sigma":
        label = ARCHITECTURE_LABELS.get(architecture, "unknown")
        raise NoGatesError(f"the checkpoint's model is architecture {architecture!r} ({label}) and "
                           "has no task-specific gates; the gate analysis needs a TSσBN model "
                           "(architecture 'task_sigma')")
    args = dict(checkpoint["hyper_parameters"].get("backbone_args") or {})
    args.pop("weights", None)
    backbone = convert(build_backbone(identity["backbone"], **args), list(identity["tasks"]),
                       kind="task_sigma")
    state = {key.removeprefix(BACKBONE_PREFIX): value
             for key, value in checkpoint["state_dict"].items() if key.startswith(BACKBONE_PREFIX)}
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise ValueError(f"the checkpoint's backbone weights do not fit the backbone rebuilt from "
                         f"its hyper-parameters: {detail[:300]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"the checkpoint's backbone weights do not fit the backbone rebuilt from "
                         f"its hyper-parameters: missing {result.missing_keys[:3]}, unexpected "
                         f"{result.unexpected_keys[:3]}")
    return backbone.eval()


def gradient_histories(checkpoint: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The non-empty histories of every :class:`~tasknorm.train.callbacks.GradientCosineMonitor`
    saved in ``checkpoint``, keyed by the callback's state key."""
    callbacks = checkpoint.get("callbacks") or {}
    return {key: state["history"] for key, state in callbacks.items()
            if key.startswith(MONITOR_PREFIX) and isinstance(state, dict)
            and state.get("history", {}).get("step")}


def describe(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """What the report says about its source: path, architecture, backbone, tasks, epoch, step."""
    identity = checkpoint["tasknorm"]
    return {"checkpoint": str(path), "architecture": identity["architecture"],
            "backbone": identity["backbone"],
            "backbone_args": checkpoint["hyper_parameters"].get("backbone_args") or {},
            "tasks": list(identity["tasks"]), "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step")}
