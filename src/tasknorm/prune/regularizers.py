"""Sparsity regularisers added to the task loss (differentiated by autograd, so AMP, gradient
clipping and any optimizer work unchanged).

* :func:`receding_importance_penalty` — RNI (arXiv:2204.06404): ``λ · Σ w (1 − ln w)`` with
  ``w = sigmoid(γ + b)`` over every channel of every σBN / TSσBN layer (the offset ``b`` sets
  where the "receding zone" lies; 3 for VGG-16 and 0 for ResNet-56 in the reference notebook).
* :func:`l1_scale_penalty` — network slimming: ``λ · Σ |γ|`` over every plain BatchNorm weight.

The uniform baseline has no regulariser (``None``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from tasknorm.nn import BatchNormStats, SigmoidGated

Regularizer = Callable[[nn.Module], Tensor]


def sigma_norm_layers(model: nn.Module) -> list[nn.Module]:
    """Every σBN / TSσBN layer of ``model`` (BatchNorms whose scale is a sigmoid gate)."""
    return [m for m in model.modules() if isinstance(m, SigmoidGated)
            and isinstance(m, BatchNormStats)]


def receding_importance_penalty(model: nn.Module, strength: float = 1e-4,
                                offset: float = 3.0) -> Tensor:
    """The RNI penalty ``strength · Σ_c w_c (1 − ln w_c)``, ``w_c = sigmoid(γ_c + offset)``.

    Its gradient ``strength · (−ln w) · w (1 − w)`` is ≥ 0 and peaks for weak channels, so
    healthy gates are left alone while already-small ones are pushed further down.

    Example:
        >>> import torch
        >>> from tasknorm.models.cifar import vgg16
        >>> from tasknorm.prune import receding_importance_penalty
        >>> model = vgg16(norm="sigma")
        >>> penalty = receding_importance_penalty(model, strength=1e-3, offset=3.0)
        >>> penalty.backward()
        >>> bool(all((layer.gate_logit.grad >= 0).all() for layer in model.modules()
        ...          if hasattr(layer, "gate")))
        True
    """
    layers = sigma_norm_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no σBN / TSσBN layer; the RNI penalty "
                         "needs sigmoid-gated norms (tasknorm.nn.convert(model, kind='sigma'))")
    raw = torch.cat([layer.gate_logit.reshape(-1) for layer in layers]) + offset
    # w (1 - ln w) with ln w = logsigmoid(raw), stable for very negative raw gates
    return strength * (torch.sigmoid(raw) * (1 - F.logsigmoid(raw))).sum()


def l1_scale_penalty(model: nn.Module, strength: float = 1e-4) -> Tensor:
    """Network slimming's ``strength · Σ |γ|`` over the weights of every plain BatchNorm.

    Example:
        >>> from tasknorm.models.cifar import resnet56
        >>> from tasknorm.prune import l1_scale_penalty
        >>> model = resnet56(norm="bn")  # weights start at 0.5; 2032 BN channels
        >>> round(l1_scale_penalty(model, strength=1e-5).item(), 5)
        0.01016
    """
    weights = [m.weight.reshape(-1) for m in model.modules()
               if isinstance(m, _BatchNorm) and m.weight is not None]
    if not weights:
        raise ValueError(f"{type(model).__name__} has no affine BatchNorm layer for the L1 "
                         "penalty (σBN gates need receding_importance_penalty instead)")
    return strength * torch.cat(weights).abs().sum()


def make_regularizer(name: str | None, strength: float, offset: float = 3.0
                     ) -> Regularizer | None:
    """``"rni"``, ``"l1"`` or ``None``/``"none"`` → a callable ``model -> penalty`` (or None)."""
    if name in (None, "none", "uniform"):
        return None
    if name == "rni":
        return lambda model: receding_importance_penalty(model, strength, offset)
    if name == "l1":
        return lambda model: l1_scale_penalty(model, strength)
    raise ValueError(f"unknown regulariser {name!r}; expected 'rni', 'l1' or 'none'")
