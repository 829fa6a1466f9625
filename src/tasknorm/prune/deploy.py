"""Deployment of pruned models: ordinary BatchNorm instead of σBN, saving and loading.

:func:`to_plain` replaces every σBN by ``nn.BatchNorm`` holding ``sigmoid(γ)`` and zero bias (the
same function). :func:`save_pruned` writes the whole module (architecture and weights: a pruned
network no longer matches its class's constructor, so a ``state_dict`` alone cannot be loaded)
and, optionally, a ``torch.export`` program (``<path>.pt2``) that loads with
``torch.export.load`` alone — no tasknorm, no model code.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from tasknorm.io import atomic_write
from tasknorm.nn import NormAct, SigmaBatchNorm


def to_plain(model: nn.Module) -> nn.Module:
    """Replace every σBN of ``model`` (in place) by an equivalent ``nn.BatchNorm`` (a converted
    timm norm-act layer by its timm class again).

    Example:
        >>> import torch
        >>> from tasknorm.models.cifar import vgg16
        >>> from tasknorm.prune import to_plain
        >>> model = vgg16(norm="sigma").eval()
        >>> x = torch.randn(1, 3, 32, 32)
        >>> expected = model(x)
        >>> plain = to_plain(model)
        >>> torch.allclose(plain(x), expected, atol=1e-6), type(plain.features[1]).__name__
        (True, 'BatchNorm2d')
    """
    if isinstance(model, SigmaBatchNorm):
        return model.to_batch_norm()
    if isinstance(model, NormAct) and isinstance(model.norm, SigmaBatchNorm):
        return model.plain_module(model.norm.to_batch_norm())  # e.g. timm's BatchNormAct2d
    for name, child in model.named_children():
        new = to_plain(child)
        if new is not child:
            setattr(model, name, new)
    return model


def save_pruned(model: nn.Module, path: str | Path, *,
                export_example: torch.Tensor | None = None) -> Path:
    """Save the whole ``model`` to ``path`` (``torch.save`` of the module; load with
    :func:`load_pruned`). With ``export_example``, also write ``<path>.pt2``: the eval-mode model
    exported with ``torch.export`` (batch size dynamic), to run with
    ``torch.export.load(file).module()(x)`` without tasknorm or the model's code."""
    path = Path(path)
    atomic_write(path, lambda f: torch.save(model, f))
    if export_example is not None:
        training = model.training
        model.eval()
        try:
            program = torch.export.export(
                model, (export_example,),
                dynamic_shapes=({0: torch.export.Dim.AUTO},))
        finally:
            model.train(training)
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        atomic_write(path.with_name(path.name + ".pt2"), lambda f: f.write(buffer.getvalue()))
    return path


def load_pruned(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a module written by :func:`save_pruned` (a pickle: load only files you trust)."""
    return torch.load(path, map_location=map_location, weights_only=False)
