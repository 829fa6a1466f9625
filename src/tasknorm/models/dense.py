"""Dense backbones: feature maps ``(B, out_features, H / output_stride, W / output_stride)`` for
pixel-wise tasks, one builder per model, pretrained weights loaded from a local file only.

* :func:`resnet50_dilated`: the LibMTL encoder (torchvision ResNet-50, output stride 8).
* :func:`segnet`: the shared encoder-decoder of mtan's SegNet "split" model (output stride 1).
* :func:`vit_small`: timm's ViT-S/16 with its patch tokens as a feature map (output stride 16).
* :func:`dilated_cnn`: a small CNN for dense tasks on a laptop CPU (output stride 4).
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from tasknorm.models.weights import StateDict, load_weights


class DilatedResNet(nn.Module):
    """A torchvision ResNet without ``avgpool`` and ``fc``, built with
    ``replace_stride_with_dilation`` so that the last stages keep their resolution (DeepLab's
    dilated ResNet, as LibMTL's ``resnet_dilated``).

    Module names equal torchvision's, so a torchvision ResNet state dict loads as is.
    """

    def __init__(self, resnet: torchvision.models.ResNet, output_stride: int) -> None:
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.out_features: int = resnet.fc.in_features
        self.output_stride = output_stride

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, output_stride={self.output_stride}"


_DILATION = {8: [False, True, True], 16: [False, False, True]}


def resnet50_dilated(weights: str | None = None,
                     output_stride: Literal[8, 16] = 8) -> DilatedResNet:
    """Dilated ResNet-50: 2048 channels at 1/8 (or 1/16) of the input resolution.

    Output stride 8 dilates ``layer3`` by 2 and ``layer4`` by 4 (the first block of each stage
    keeps the previous dilation), exactly LibMTL's ``resnet_dilated('resnet50')``.

    Args:
        weights: path of a torchvision ResNet-50 state dict (e.g. ImageNet ``IMAGENET1K_V1``,
            the weights LibMTL uses); ``None`` keeps torchvision's random initialisation.
        output_stride: 8 (LibMTL, DeepLab) or 16 (only ``layer4`` dilated).

    Example:
        >>> import torch
        >>> resnet50_dilated()(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 2048, 4, 4])
    """
    if output_stride not in _DILATION:
        raise ValueError(f"output_stride must be one of {sorted(_DILATION)}, got {output_stride}")
    resnet = torchvision.models.resnet50(weights=None,
                                         replace_stride_with_dilation=_DILATION[output_stride])
    model = DilatedResNet(resnet, output_stride)
    if weights is not None:
        load_weights(model, weights)
    return model


SEGNET_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
SEGNET_LAYERS: tuple[int, ...] = (2, 2, 3, 3, 3)
"""Channels and conv-BN-ReLU layers of each SegNet encoder stage: VGG-16 with batch norm."""


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 bias: bool = True) -> nn.Sequential:
    """3×3 convolution ("same" padding; with a bias by default, as mtan), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, dilation, dilation, bias=bias),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def init_segnet_(module: nn.Module) -> None:
    """mtan's initialisation: Xavier-normal convolution weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SegNet(nn.Module):
    """mtan's SegNet without its task layers: a VGG-16-BN encoder whose five max-pools keep their
    indices, and the mirrored decoder that unpools with them, back to full resolution.

    Encoder stage ``i`` is ``SEGNET_LAYERS[i]`` conv-BN-ReLU layers (the first changes the
    channels) then a 2×2 max-pool; decoder stages run deepest first: unpool, then as many layers,
    the first going down to the next shallower stage's channels (64 → 64 for the last). Pooling
    rounds odd sizes up and unpooling restores each pre-pool size, so any input size works (mtan's
    sizes are multiples of 32, where this changes nothing). Output: ``channels[0]`` features per
    pixel at full resolution.

    Args:
        width: channel multiplier of :data:`SEGNET_CHANNELS` (1 is mtan's model; small values
            for tests; to train on a CPU prefer :class:`DilatedCNN`).
        in_channels: input image channels.
    """

    def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        channels = [max(1, round(c * width)) for c in SEGNET_CHANNELS]
        self.encoder = nn.ModuleList()
        previous = in_channels
        for out, layers in zip(channels, SEGNET_LAYERS, strict=True):
            self.encoder.append(nn.Sequential(conv_bn_relu(previous, out),
                                              *(conv_bn_relu(out, out) for _ in range(layers - 1))))
            previous = out
        self.decoder = nn.ModuleList()
        for stage in reversed(range(len(channels))):
            out = channels[max(stage - 1, 0)]
            self.decoder.append(nn.Sequential(
                conv_bn_relu(channels[stage], out),
                *(conv_bn_relu(out, out) for _ in range(SEGNET_LAYERS[stage] - 1))))
        self.out_features = channels[0]
        self.output_stride = 1
        self.width = width
        init_segnet_(self)

    def forward(self, x: Tensor) -> Tensor:
        pooled = []
        for stage in self.encoder:
            x, skip = max_pool(stage(x))
            pooled.append(skip)
        for stage, (indices, size) in zip(self.decoder, reversed(pooled), strict=True):
            x = stage(max_unpool(x, indices, size))
        return x

    def extra_repr(self) -> str:
        return f"width={self.width}, out_features={self.out_features}"


def max_pool(x: Tensor) -> tuple[Tensor, tuple[Tensor, torch.Size]]:
    """SegNet's 2×2 max-pool (odd sizes rounded up) and what :func:`max_unpool` needs to undo it:
    the indices of the maxima and the size before pooling."""
    pooled, indices = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
    return pooled, (indices, x.shape[-2:])


def max_unpool(x: Tensor, indices: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.max_unpool2d(x, indices, 2, 2, output_size=size)`` as a scatter into zeros.

    ``max_unpool2d`` has no deterministic implementation, so it fails under
    ``torch.use_deterministic_algorithms(True)`` (Lightning's ``deterministic=True``); each
    value's target is unique here, so the scatter is deterministic and equal to it.
    """
    out = x.new_zeros(*x.shape[:2], size[0] * size[1])
    return out.scatter(2, indices.flatten(2), x.flatten(2)).unflatten(2, tuple(size))


def vgg16_bn_to_segnet(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Rename a torchvision ``vgg16_bn`` state dict (``features.<i>.*``) to the SegNet encoder's
    keys: the k-th convolution and batch norm of VGG become the encoder's k-th ones."""
    modules: dict[int, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        parts = key.split(".", 2)
        if len(parts) != 3 or parts[0] != "features" or not parts[1].isdigit():
            raise ValueError(f"unexpected key {key!r} in VGG-16-BN weights: expected "
                             "features.<index>.<name>")
        modules.setdefault(int(parts[1]), {})[parts[2]] = value
    source = {"conv": [], "bn": []}
    for index in sorted(modules):
        source["bn" if "running_mean" in modules[index] else "conv"].append(modules[index])
    target = {"conv": [], "bn": []}
    for name, module in model.named_modules():
        if name.startswith("encoder.") and isinstance(module, nn.Conv2d | nn.BatchNorm2d):
            target["conv" if isinstance(module, nn.Conv2d) else "bn"].append(name)
    renamed: StateDict = {}
    for kind in ("conv", "bn"):
        if len(source[kind]) != len(target[kind]):
            raise ValueError(f"VGG-16-BN weights have {len(source[kind])} {kind} layers, the "
                             f"SegNet encoder has {len(target[kind])}")
        for values, name in zip(source[kind], target[kind], strict=True):
            renamed.update({f"{name}.{k}": v for k, v in values.items()})
    return renamed


def segnet(width: float = 1.0, weights: str | None = None, in_channels: int = 3) -> SegNet:
    """mtan's SegNet encoder-decoder (see :class:`SegNet`).

    Args:
        width: channel multiplier (1 = mtan's model, 64 output features).
        weights: path of a torchvision ``vgg16_bn`` state dict (ImageNet ``IMAGENET1K_V1``) for
            the encoder, which is VGG-16-BN layer for layer (needs ``width=1``,
            ``in_channels=3``); the decoder keeps mtan's initialisation. mtan trains from
            scratch (``None``).
        in_channels: input image channels.

    Example:
        >>> import torch
        >>> segnet(width=0.125)(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 8, 64, 64])
    """
    model = SegNet(width, in_channels)
    if weights is not None:
        load_weights(model, weights, adapt=vgg16_bn_to_segnet, may_miss=("decoder.",))
    return model


class DilatedCNN(nn.Sequential):
    """A small dense CNN that runs fast on a CPU: two strided 3×3 conv-BN-ReLU layers (``width``,
    then ``2 * width`` channels; output stride 4) and a context module of 3×3 conv-BN-ReLU layers
    at ``2 * width`` channels with dilations 1, 2, 4, 8, 1 (Yu & Koltun, "Multi-scale context
    aggregation by dilated convolutions"): a receptive field of 135 pixels. Convolutions have no
    bias and Kaiming initialisation, as torchvision's ResNets.

    Why not a narrow SegNet: full-resolution layers with few channels run poorly on CPUs. One
    training step (hard sharing, 3 tasks with their heads, 16 images of 64×96, one thread,
    fastest of 8) took 0.06 s at ``width=16`` (62 MFLOPs/image) and 0.15 s at ``width=32`` (244
    MFLOPs/image), but 0.27 s with SegNet at ``width=0.125`` (123 MFLOPs/image).
    """

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        wide = 2 * width
        super().__init__(
            conv_bn_relu(in_channels, width, stride=2, bias=False),
            conv_bn_relu(width, wide, stride=2, bias=False),
            *(conv_bn_relu(wide, wide, dilation=d, bias=False) for d in (1, 2, 4, 8, 1)))
        self.out_features = wide
        self.output_stride = 4
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def dilated_cnn(in_channels: int = 3, width: int = 32) -> DilatedCNN:
    """The small CPU dense backbone (see :class:`DilatedCNN`); ``2 * width`` features at 1/4 of
    the input resolution.

    Example:
        >>> import torch
        >>> dilated_cnn(width=8)(torch.randn(2, 3, 64, 96)).shape
        torch.Size([2, 16, 16, 24])
    """
    return DilatedCNN(in_channels, width)


class VisionTransformerFeatures(nn.Module):
    """A timm Vision Transformer whose final (normed) patch tokens are returned as a feature map
    ``(B, embed_dim, H / patch, W / patch)``; prefix tokens (class token) are dropped."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.out_features: int = vit.embed_dim
        self.output_stride: int = vit.patch_embed.patch_size[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.tokens_to_map(self.vit.forward_features(x), x.shape[-2:])

    def tokens_to_map(self, tokens: Tensor, size: tuple[int, int]) -> Tensor:
        """The patch tokens of an image of ``size`` (prefix tokens dropped) as a map
        ``(B, embed_dim, H / patch, W / patch)``."""
        patch_h, patch_w = self.vit.patch_embed.patch_size
        grid = (size[0] // patch_h, size[1] // patch_w)
        return tokens[:, self.vit.num_prefix_tokens:].transpose(1, 2).unflatten(2, grid)


def vit_small(weights: str | None = None, img_size: int = 224,
              drop_path_rate: float = 0.0) -> VisionTransformerFeatures:
    """ViT-S/16 (timm ``vit_small_patch16_224``: 12 blocks, 384 channels) as a dense backbone.

    Built with ``dynamic_img_size``, so any input size works (positional embeddings are
    interpolated to the token grid); sides should be multiples of 16. Needs timm.

    Args:
        weights: path of a timm ``vit_small_patch16_224`` state dict (``.safetensors`` or
            ``.pth``), loaded through timm's ``checkpoint_filter_fn`` (which resizes the
            positional embeddings to ``img_size``).
        img_size: image size the positional embeddings are stored for.
        drop_path_rate: stochastic depth rate.

    Example:
        >>> import torch
        >>> vit_small()(torch.randn(1, 3, 32, 48)).shape
        torch.Size([1, 384, 2, 3])
    """
    timm = _import_timm("vit_small")
    from timm.models.vision_transformer import checkpoint_filter_fn

    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                            global_pool="", img_size=img_size, dynamic_img_size=True,
                            drop_path_rate=drop_path_rate)
    if weights is not None:
        load_weights(vit, weights, adapt=checkpoint_filter_fn)
    return VisionTransformerFeatures(vit)


def _import_timm(what: str) -> ModuleType:
    try:
        import timm
    except ImportError:
        raise ImportError(f'{what} needs timm, an optional dependency: pip install '
                          '"tasknorm[timm]"') from None
    return timm
