"""The CIFAR networks of the σBN / RNI pruning experiments (arXiv:2204.06404, official code):
VGG-16-BN and ResNet-56 with option-A shortcuts, plus a ResNet-56 with projection shortcuts
(option B) whose residual streams can be pruned as whole groups.

``norm`` chooses the normalization layer: ``"bn"`` (``nn.BatchNorm2d``, weight 0.5 and bias 0 as
in the reference code's baselines) or ``"sigma"`` (:class:`~tasknorm.nn.SigmaBatchNorm2d`, raw
gates from N(0, 1)). Convs use He fan-out init, the classifier N(0, 0.01) and zero bias.

Models whose residual stream must keep its width (option A: a parameter-free, channel-padding
shortcut that Torch-Pruning cannot describe) list the norm layers that may be pruned in
``prunable_norms()``; :func:`tasknorm.prune.plan_pruning` uses it by default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from tasknorm.nn import SigmaBatchNorm2d

Norm = Literal["bn", "sigma"]
VGG16_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512)
"""torchvision's VGG-16 feature configuration without the last max-pool (as in the RNI code)."""


def norm_layer(norm: Norm) -> Callable[[int], nn.Module]:
    """A constructor ``channels -> layer`` for ``norm``."""
    if norm == "bn":
        def make(channels: int) -> nn.Module:
            bn = nn.BatchNorm2d(channels)
            nn.init.constant_(bn.weight, 0.5)
            nn.init.zeros_(bn.bias)
            return bn
        return make
    if norm == "sigma":
        return SigmaBatchNorm2d
    raise ValueError(f"unknown norm {norm!r}; expected 'bn' or 'sigma'")


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class CifarVGG(nn.Module):
    """VGG with BN for 32×32 inputs: conv3×3(+bias)-norm-ReLU stages, 2×2 average pool, one
    linear layer."""

    def __init__(self, config: tuple[int | str, ...] = VGG16_CONFIG, num_classes: int = 10,
                 norm: Norm = "bn", in_channels: int = 3) -> None:
        super().__init__()
        make_norm = norm_layer(norm)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), make_norm(int(item)),
                           nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(2)
        self.classifier = nn.Linear(channels, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class PadChannels(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad ``extra`` channels, half before
    and half (plus the odd one) after."""

    def __init__(self, stride: int, extra: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = extra

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        before = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, before, self.extra - before))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra={self.extra}"


class BasicBlock(nn.Module):
    """conv-norm-ReLU-conv-norm, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: Literal["A", "B"],
                 make_norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = make_norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = make_norm(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadChannels(stride, planes - in_planes)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                              make_norm(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32×32 inputs (He et al. 2016): a 3×3 stem conv + norm (no ReLU, as in the RNI
    code), three stages of basic blocks (16/32/64 channels), global average pool, linear.

    ``shortcut="A"``: parameter-free shortcuts; only block-internal channels are prunable
    (``prunable_norms()`` returns each block's first norm). ``shortcut="B"``: 1×1 conv + norm
    projections; every channel, residual streams included, is prunable."""

    def __init__(self, depth: int = 56, num_classes: int = 10, norm: Norm = "bn",
                 shortcut: Literal["A", "B"] = "A", in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2, got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        blocks = (depth - 2) // 6
        make_norm = norm_layer(norm)
        self.shortcut = shortcut
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = make_norm(16)
        stages: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            stage = []
            for i in range(blocks):
                stage.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, shortcut,
                                        make_norm))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn1(self.conv1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))

    def prunable_norms(self) -> list[nn.Module]:
        """Norm layers whose channels may be removed: every norm for option B, each block's
        first norm for option A (the residual stream keeps its width)."""
        if self.shortcut == "B":
            return [m for m in self.modules() if m is not self and _is_norm(m)]
        return [block.bn1 for block in self.modules() if isinstance(block, BasicBlock)]


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.BatchNorm2d | SigmaBatchNorm2d)


def vgg16(num_classes: int = 10, norm: Norm = "bn") -> CifarVGG:
    """VGG-16-BN for CIFAR (RNI code): 13 conv-norm-ReLU layers, 2×2 average pool, linear.

    Example:
        >>> import torch
        >>> from tasknorm.models.cifar import vgg16
        >>> vgg16(num_classes=100, norm="sigma")(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """
    return CifarVGG(VGG16_CONFIG, num_classes, norm)


def resnet56(num_classes: int = 10, norm: Norm = "bn") -> CifarResNet:
    """ResNet-56 with option-A shortcuts (RNI / Polarization code); block-internal pruning.

    Example:
        >>> import torch
        >>> from tasknorm.models.cifar import resnet56
        >>> model = resnet56(norm="sigma")
        >>> len(model.prunable_norms()), model(torch.randn(2, 3, 32, 32)).shape
        (27, torch.Size([2, 10]))
    """
    return CifarResNet(56, num_classes, norm, "A")


def resnet56_projection(num_classes: int = 10, norm: Norm = "bn") -> CifarResNet:
    """ResNet-56 with 1×1 projection shortcuts (option B): residual streams are prunable as
    whole groups. A different network from :func:`resnet56`; accuracies are not like-for-like."""
    return CifarResNet(56, num_classes, norm, "B")
