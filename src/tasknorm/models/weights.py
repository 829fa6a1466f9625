"""Loading pretrained weights from a local file into a backbone; nothing is ever downloaded.

A backbone builder constructs the model first and then calls :func:`load_weights` with the path
the user passed (torchvision's split between construction and weights). Files are state dicts as
torchvision and timm publish them: ``.pth`` / ``.pt`` / ``.bin`` (``torch.load``) or
``.safetensors``. The source's classifier (``fc``, ``head``, ``classifier``) is dropped, an
``adapt`` function may rename or resize keys, and anything else that does not fit is an error
listing the keys, never silently ignored.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

StateDict = dict[str, Tensor]
Adapt = Callable[[StateDict, nn.Module], StateDict]

CLASSIFIER_PREFIXES: tuple[str, ...] = ("fc.", "head.", "classifier.")
"""Key prefixes of the classifiers of torchvision ResNets (``fc``), timm models (``head``) and
torchvision VGG (``classifier``); backbones have none, so these keys are dropped."""

_WRAPPER_KEYS = ("state_dict", "model")  # checkpoints that nest the state dict under one key
_LISTED_KEYS = 5


def read_state_dict(path: str | Path) -> StateDict:
    """The state dict stored at ``path`` (a ``torch.save`` file or ``.safetensors``), on CPU.

    A checkpoint holding the state dict under ``"state_dict"`` or ``"model"`` (next to other
    entries such as an epoch or optimizer state) is unwrapped.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path} (tasknorm never downloads "
                                "weights; see the models docs for where to get them)")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f"reading {path} needs the safetensors package: pip install "
                              "safetensors") from None
        try:
            return load_file(path, device="cpu")
        except Exception as error:  # safetensors raises its own error types
            raise ValueError(f"cannot read safetensors weights {path}: {_first_line(error)}") \
                from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise ValueError(f"cannot read weights {path} as a state dict saved by torch.save or "
                         f"as .safetensors: {_first_line(error)}") from None
    if isinstance(loaded, Mapping) and not _is_state_dict(loaded):
        loaded = next((loaded[k] for k in _WRAPPER_KEYS if isinstance(loaded.get(k), Mapping)),
                      loaded)
    if not isinstance(loaded, Mapping) or not _is_state_dict(loaded):
        raise ValueError(f"weights {path} hold a {type(loaded).__name__}, expected a state dict "
                         "(a mapping of names to tensors)")
    return dict(loaded)


def _is_state_dict(mapping: Mapping) -> bool:
    return all(isinstance(k, str) and isinstance(v, Tensor) for k, v in mapping.items())


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    adapt: Adapt | None = None,
    drop: Sequence[str] = CLASSIFIER_PREFIXES,
    may_miss: Sequence[str] = (),
) -> None:
    """Load the state dict at ``path`` into ``model`` (in place), checking that it fits.

    Args:
        model: the freshly built module the weights are for.
        path: the weights file (see :func:`read_state_dict`).
        adapt: ``adapt(state_dict, model)`` renames or resizes the source's keys for ``model``
            after the ``drop`` prefixes are removed (e.g. timm's ``checkpoint_filter_fn``).
        drop: key prefixes of the source to ignore (its classifier).
        may_miss: key prefixes of ``model`` the source need not provide (parts of ``model``
            that have no pretrained counterpart, such as a decoder).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable file, keys missing from or unexpected by ``model``, or tensors
            whose shapes differ; the message lists the offending keys.

    Example:
        >>> import tempfile, torch, torchvision
        >>> from tasknorm.models.weights import load_weights
        >>> source = torchvision.models.resnet18(num_classes=10)
        >>> trunk = torchvision.models.resnet18()
        >>> trunk.fc = torch.nn.Identity()
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     torch.save(source.state_dict(), f"{folder}/resnet18.pth")
        ...     load_weights(trunk, f"{folder}/resnet18.pth")
        >>> torch.equal(trunk.conv1.weight, source.conv1.weight)
        True
    """
    source = read_state_dict(path)
    state = {k: v for k, v in source.items() if not k.startswith(tuple(drop))}
    if adapt is not None:
        state = adapt(state, model)
    target = model.state_dict()
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}"
                  for k, v in state.items() if k in target and v.shape != target[k].shape]
    missing = [k for k in target if k not in state and not k.startswith(tuple(may_miss))
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    problems = [f"{len(keys)} {what} ({_listed(keys)})" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("shape mismatches (file vs model)", mismatched)) if keys]
    if problems:
        raise ValueError(f"weights {path} do not fit {type(model).__name__}: "
                         + "; ".join(problems))
    model.load_state_dict(state, strict=False)


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _listed(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_LISTED_KEYS])
    return shown + (", ..." if len(keys) > _LISTED_KEYS else "")
