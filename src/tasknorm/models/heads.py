"""Task heads, built by name: ``build_head(name, in_channels, out_channels)``.

Heads are per task, so they keep ordinary ``BatchNorm`` (never converted to task-specific
layers). Dense heads output at the backbone's resolution; :class:`~tasknorm.models.MultiTaskModel`
resizes to the input's.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from tasknorm.models.dense import init_segnet_
from tasknorm.tasks.dense import conv_head


def aspp_head(in_channels: int, out_channels: int) -> nn.Module:
    """DeepLabV3 head (torchvision's ``DeepLabHead``): ASPP with atrous rates 12, 24, 36 plus
    image pooling, 256 channels, dropout 0.5, then 3×3 conv-BN-ReLU and a 1×1 classifier; the
    head LibMTL puts on its dilated ResNet-50 for every task."""
    return DeepLabHead(in_channels, out_channels)


def segnet_head(in_channels: int, out_channels: int) -> nn.Sequential:
    """mtan's SegNet task layer: 3×3 conv (``in_channels`` → ``in_channels``) then 1×1 conv,
    no normalization or activation between, mtan's initialisation."""
    head = nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1),
                         nn.Conv2d(in_channels, out_channels, 1))
    init_segnet_(head)
    return head


def conv_fc_head(in_channels: int, out_channels: int, hidden: int = 50,
                 grid: int = 3) -> nn.Sequential:
    """The task decoder of the CosReg paper's MultiDigitMNIST network: a bias-free 3×3 conv with
    stride 2 (``in_channels`` wide) and ReLU, average pooling to a ``grid × grid`` map (the
    identity for ``digits_encoder`` on 23×23 MultiDigits), then ``Linear`` → ReLU → ``Linear``
    with ``hidden`` units; a vector output. The paper gives the layer counts and no conv bias;
    the kernel, the pooling and ``hidden = 50`` (as in the LeNet of multi-MNIST studies) are our
    choices."""
    return nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, 2, 1, bias=False),
                         nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(grid), nn.Flatten(),
                         nn.Linear(in_channels * grid**2, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_channels))


def linear_head(in_channels: int, out_channels: int) -> nn.Linear:
    """A linear layer on feature vectors (classification, attributes)."""
    return nn.Linear(in_channels, out_channels)


HEADS: dict[str, Callable[[int, int], nn.Module]] = {
    "aspp": aspp_head,
    "conv": conv_head,
    "conv_fc": conv_fc_head,
    "linear": linear_head,
    "segnet": segnet_head,
}


def build_head(name: str, in_channels: int, out_channels: int) -> nn.Module:
    """Build the head registered as ``name`` in :data:`HEADS`.

    Example:
        >>> import torch
        >>> head = build_head("segnet", in_channels=8, out_channels=13)
        >>> head(torch.randn(2, 8, 16, 16)).shape
        torch.Size([2, 13, 16, 16])
    """
    try:
        builder = HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; expected one of {sorted(HEADS)}") from None
    for what, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"head {name!r} needs a positive integer {what}, got {value!r}")
    return builder(in_channels, out_channels)
