"""Backbones: feature extractors with an ``out_features`` attribute, built by name.

Builders follow torchvision: one function per model; pretrained weights, where a builder takes
them, come from a local file (:mod:`tasknorm.models.weights`) after construction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import Tensor, nn

from tasknorm.models.dense import dilated_cnn, resnet50_dilated, segnet, vit_small


class DigitsCNN(nn.Module):
    """A small conv net for MultiDigits-sized images: four conv-BN-ReLU blocks (two strided) and
    global average pooling; ``out_features = 4 * width``.

    ``norm=False`` drops the BatchNorm layers (convolutions stay bias-free, as in the CosReg
    paper's MultiDigitMNIST encoder); ``dropout > 0`` adds ``nn.Dropout(dropout)`` after every
    block (the CosReg paper's "no regularisation" and "Dropout" variants). ``pool_size > 1``
    average-pools to a ``pool_size × pool_size`` grid instead of one value per channel, which
    keeps where things are (left or right digit); ``out_features = 4 * width * pool_size²``.
    """

    def __init__(self, in_channels: int = 1, width: int = 32, norm: bool = True,
                 dropout: float = 0.0, pool_size: int = 1) -> None:
        super().__init__()
        widths = (width, 2 * width, 2 * width, 4 * width)
        strides = (1, 2, 1, 2)
        layers: list[nn.Module] = []
        channels = in_channels
        for out, stride in zip(widths, strides, strict=True):
            layers.append(nn.Conv2d(channels, out, 3, stride, 1, bias=False))
            if norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.out_features = channels * pool_size**2
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)


def digits_cnn(in_channels: int = 1, width: int = 32, norm: bool = True,
               dropout: float = 0.0, pool_size: int = 1) -> DigitsCNN:
    """The MultiDigits default backbone (see :class:`DigitsCNN`)."""
    return DigitsCNN(in_channels, width, norm, dropout, pool_size)


class DigitsEncoder(nn.Module):
    """The shared encoder of the CosReg paper's MultiDigitMNIST network: two bias-free 3×3
    convolutions of ``width`` filters, both with stride 2 (strided convolutions instead of
    pooling), each followed by ReLU (and BatchNorm before it with ``norm=True``).

    The output is the spatial map ``(B, width, ⌈H/4⌉, ⌈W/4⌉)``; ``out_features = width``. Pair it
    with the ``conv_fc`` head (a convolution and two fully connected layers per task). The paper
    gives the layer counts, 20 filters and no biases; the 3×3 kernels are our choice.
    """

    def __init__(self, in_channels: int = 1, width: int = 20, norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for channels in (in_channels, width):
            layers.append(nn.Conv2d(channels, width, 3, 2, 1, bias=False))
            if norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.out_features = width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def digits_encoder(in_channels: int = 1, width: int = 20, norm: bool = True) -> DigitsEncoder:
    """The CosReg paper's two-layer MultiDigitMNIST encoder (see :class:`DigitsEncoder`).

    Example:
        >>> import torch
        >>> digits_encoder()(torch.randn(2, 1, 23, 23)).shape
        torch.Size([2, 20, 6, 6])
    """
    return DigitsEncoder(in_channels, width, norm)


class CelebaCNN(nn.Module):
    """The CelebA network of FAMO (``Cranial-XIX/FAMO``, ``experiments/celeba/models.py``, the
    ``shared_base``): seven 3×3 conv-BN-ReLU layers (64, 128, 128, 256, 256, 512, 512 channels;
    no conv bias) with a 2×2 max-pool after the 1st, 3rd and 5th, global average pooling, then
    two bias-free ``Linear(512, 512)``-BatchNorm1d-ReLU layers; ``out_features = 8 * width``.

    ``width`` scales every layer (64 is FAMO's). Each attribute's head is a ``Linear(512, 1)``.
    """

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        widths = (width, 2 * width, 2 * width, 4 * width, 4 * width, 8 * width, 8 * width)
        pool_after = {0, 2, 4}
        layers: list[nn.Module] = []
        channels = in_channels
        for index, out in enumerate(widths):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            if index in pool_after:
                layers.append(nn.MaxPool2d(2, 2))
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Sequential(*(m for _ in range(2) for m in (
            nn.Linear(channels, channels, bias=False), nn.BatchNorm1d(channels),
            nn.ReLU(inplace=True))))
        self.out_features = channels

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def celeba_cnn(in_channels: int = 3, width: int = 64) -> CelebaCNN:
    """FAMO's CelebA backbone (see :class:`CelebaCNN`); 512 features at ``width=64``.

    Example:
        >>> import torch
        >>> celeba_cnn(width=8)(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 64])
    """
    return CelebaCNN(in_channels, width)


def torchvision_resnet(name: str, in_channels: int = 3) -> nn.Module:
    """A torchvision ResNet trunk (random init) whose ``fc`` is removed."""
    model = getattr(torchvision.models, name)(weights=None)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    model.out_features = model.fc.in_features
    model.fc = nn.Identity()
    return model


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "celeba_cnn": celeba_cnn,
    "digits_cnn": digits_cnn,
    "digits_encoder": digits_encoder,
    "dilated_cnn": dilated_cnn,
    "resnet18": lambda **kw: torchvision_resnet("resnet18", **kw),
    "resnet50": lambda **kw: torchvision_resnet("resnet50", **kw),
    "resnet50_dilated": resnet50_dilated,
    "segnet": segnet,
    "vit_small": vit_small,
}
"""Vector backbones (``(B, out_features)``): ``celeba_cnn``, ``digits_cnn``, ``resnet18``,
``resnet50``. Dense backbones (``(B, out_features, h, w)``, see :mod:`tasknorm.models.dense`):
``dilated_cnn``, ``resnet50_dilated``, ``segnet``, ``vit_small``; ``digits_encoder`` (a small
spatial map for the ``conv_fc`` head)."""


def build_backbone(name: str, **kwargs: object) -> nn.Module:
    """Build the backbone registered as ``name`` (see :data:`BACKBONES`)."""
    try:
        builder = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; expected one of "
                         f"{sorted(BACKBONES)}") from None
    model = builder(**kwargs)
    if not isinstance(getattr(model, "out_features", None), int):
        raise TypeError(f"backbone {name!r} must set an integer out_features")
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def count_flops(model: nn.Module, example: Tensor) -> int:
    """FLOPs of one forward pass of ``model`` on ``example`` (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(example)
    return counter.get_total_flops()
