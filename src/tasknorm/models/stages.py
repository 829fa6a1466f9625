"""Every backbone cut into stages, once: the common ground of the architectures that mix, mask
or branch a backbone between stages (cross-stitch, MTAN, PLE, Learning to Branch).

:func:`split_stages` gives a backbone's stages as modules that reuse the backbone's own layers
(no copy), so that running them in order is exactly ``backbone(x)``. A stage maps a
:class:`StageState` to the next: its ``features``, the input image's ``size`` and ``skips``, the
max-pool indices that SegNet's encoder stages push and its decoder stages pop (deepest first)
to unpool. Each stage knows its ``out_channels`` and the ``form`` of its output: ``"map"``
``(B, C, H, W)``, ``"vector"`` ``(B, C)`` or ``"tokens"`` ``(B, N, C)`` (ViT, prefix tokens
first).

==============================  ======================================================
backbone                        stages
==============================  ======================================================
``DigitsCNN``                   its 4 conv blocks (the last with the pooling)
``DigitsEncoder``               its 2 conv blocks
``CelebaCNN``                   4 conv stages, each ending at a pooling, then the fc
``DilatedCNN``                  its 7 conv-BN-ReLU layers
``DilatedResNet``, ResNets      stem + ``layer1``, ``layer2``, ``layer3``, ``layer4``
                                (torchvision's: with the pooling)
``SegNet``                      5 encoder stages, then 5 decoder stages
``VisionTransformerFeatures``   the embedding and its blocks in 4 groups (the last with
                                the norm and the token map)
==============================  ======================================================
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torchvision
from torch import Tensor, nn

from tasknorm.models.backbones import CelebaCNN, DigitsCNN, DigitsEncoder
from tasknorm.models.dense import (
    DilatedCNN,
    DilatedResNet,
    SegNet,
    VisionTransformerFeatures,
    max_pool,
    max_unpool,
)
from tasknorm.trees.state import StageState
from tasknorm.trees.state import initial_state as initial_state

Form = Literal["map", "vector", "tokens"]


class Stage(nn.Module):
    """A stage applying ``body`` to the features; ``out_channels`` and ``form`` describe its
    output."""

    def __init__(self, body: nn.Module, out_channels: int, form: Form | None) -> None:
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        self.form = form

    def forward(self, state: StageState) -> StageState:
        return state._replace(features=self.body(state.features))

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, form={self.form!r}"


class PoolStage(Stage):
    """A SegNet encoder stage: ``body``, then the 2×2 max-pool whose indices it pushes."""

    def forward(self, state: StageState) -> StageState:
        features, skip = max_pool(self.body(state.features))
        return StageState(features, state.size, (*state.skips, skip))


class UnpoolStage(Stage):
    """A SegNet decoder stage: unpool with the last pushed indices (popping them), then ``body``."""

    def forward(self, state: StageState) -> StageState:
        indices, size = state.skips[-1]
        features = self.body(max_unpool(state.features, indices, size))
        return StageState(features, state.size, state.skips[:-1])


class TokenMapStage(Stage):
    """The last ViT stage: ``body`` on the tokens, then the patch tokens as a map."""

    def __init__(self, body: nn.Module, vit: VisionTransformerFeatures) -> None:
        super().__init__(body, vit.out_features, "map")
        self.to_map = vit.tokens_to_map

    def forward(self, state: StageState) -> StageState:
        return state._replace(features=self.to_map(self.body(state.features), state.size))


class ViTEmbedding(nn.Module):
    """timm's ViT up to its blocks: patch embedding, positional embedding (with the prefix
    tokens), patch dropout and pre-norm, as in ``forward_features``. It runs them through the
    ViT module itself (timm keeps the positional embedding and prefix tokens on it), so its
    ``parameters()`` list the whole ViT's."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: Tensor) -> Tensor:
        vit = self.vit
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))


class StageGroup(nn.Sequential):
    """Consecutive stages run as one; ``out_channels`` and ``form`` are the last one's."""

    def __init__(self, stages: Sequence[nn.Module]) -> None:
        super().__init__(*stages)
        self.out_channels: int = stages[-1].out_channels
        self.form: Form | None = stages[-1].form


def _conv_blocks(layers: Sequence[nn.Module]) -> list[nn.Sequential]:
    """``layers`` cut before every convolution (a block: conv, norm, activation, ...)."""
    blocks: list[list[nn.Module]] = []
    for layer in layers:
        if isinstance(layer, nn.Conv2d) or not blocks:
            blocks.append([])
        blocks[-1].append(layer)
    return [nn.Sequential(*block) for block in blocks]


def _out_channels(module: nn.Module) -> int:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def _maps(blocks: Sequence[nn.Module]) -> list[Stage]:
    return [Stage(block, _out_channels(block), "map") for block in blocks]


def _digits_cnn(model: DigitsCNN) -> list[Stage]:
    *stages, last = _maps(_conv_blocks(model.features))
    body = nn.Sequential(last.body, model.pool, nn.Flatten())
    return [*stages, Stage(body, model.out_features, "vector")]


def _digits_encoder(model: DigitsEncoder) -> list[Stage]:
    return _maps(_conv_blocks(model.features))


def _celeba_cnn(model: CelebaCNN) -> list[Stage]:
    groups: list[list[nn.Module]] = [[]]
    for layer in model.features:
        groups[-1].append(layer)
        if isinstance(layer, nn.MaxPool2d):
            groups.append([])
    *stages, last = _maps([nn.Sequential(*group) for group in groups])
    return [*stages, Stage(last.body, last.out_channels, "vector"),
            Stage(model.fc, model.out_features, "vector")]


def _dilated_cnn(model: DilatedCNN) -> list[Stage]:
    return _maps(list(model))


def _resnet(model: DilatedResNet | torchvision.models.ResNet) -> list[Stage]:
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1)
    stages = _maps([stem, model.layer2, model.layer3, model.layer4])
    if not isinstance(model, DilatedResNet):
        body = nn.Sequential(model.layer4, model.avgpool, nn.Flatten(), model.fc)
        stages[-1] = Stage(body, model.out_features, "vector")
    return stages


def _segnet(model: SegNet) -> list[Stage]:
    encoder = [PoolStage(block, _out_channels(block), "map") for block in model.encoder]
    decoder = [UnpoolStage(block, _out_channels(block), "map") for block in model.decoder]
    return encoder + decoder


VIT_STAGES = 4
"""Groups the blocks of a ViT are cut into (the embedding joins the first)."""


def _vision_transformer(model: VisionTransformerFeatures) -> list[Stage]:
    vit = model.vit
    groups = [list(group) for group in _chunks(list(vit.blocks), VIT_STAGES)]
    groups[0].insert(0, ViTEmbedding(vit))
    groups[-1].append(vit.norm)
    *stages, last = [nn.Sequential(*group) for group in groups]
    return [*(Stage(body, model.out_features, "tokens") for body in stages),
            TokenMapStage(last, model)]


def _chunks(items: Sequence[nn.Module], count: int) -> list[Sequence[nn.Module]]:
    """``items`` in ``count`` consecutive runs of near-equal lengths (the first ones longer)."""
    size, extra = divmod(len(items), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [items[start:stop] for start, stop in itertools.pairwise(bounds)]


STAGE_SPLITS: dict[type, Callable[[nn.Module], list[Stage]]] = {
    DigitsCNN: _digits_cnn,
    DigitsEncoder: _digits_encoder,
    CelebaCNN: _celeba_cnn,
    DilatedCNN: _dilated_cnn,
    DilatedResNet: _resnet,
    torchvision.models.ResNet: _resnet,
    SegNet: _segnet,
    VisionTransformerFeatures: _vision_transformer,
}
"""The stage split of each backbone class."""


def split_stages(backbone: nn.Module) -> list[Stage]:
    """The stages of ``backbone`` (its own layers, see the table above).

    Raises:
        ValueError: ``backbone``'s class has no stage split.

    Example:
        >>> import torch
        >>> from tasknorm.models import digits_cnn
        >>> model = digits_cnn(width=8)
        >>> stages = split_stages(model)
        >>> [(s.out_channels, s.form) for s in stages]
        [(8, 'map'), (16, 'map'), (16, 'map'), (32, 'vector')]
        >>> x = torch.randn(2, 1, 23, 23)
        >>> state = initial_state(x)
        >>> for stage in stages:
        ...     state = stage(state)
        >>> torch.equal(state.features, model(x))
        True
    """
    for cls, split in STAGE_SPLITS.items():
        if isinstance(backbone, cls):
            return split(backbone)
    raise ValueError(f"backbone {type(backbone).__name__} has no stage split; expected one of "
                     f"{sorted(cls.__name__ for cls in STAGE_SPLITS)}")


class StagedBackbone(nn.Module):
    """A backbone (its parameters, under ``backbone.``) run stage by stage.

    Args:
        backbone: the backbone.
        levels: cut its stages into this many runs of consecutive stages (near-equal lengths,
            the first ones longer), which are then the :attr:`stages`; ``1`` runs the whole
            backbone as one stage, which needs no stage split and so works with any backbone;
            ``None``: every stage of :func:`split_stages`.
    """

    def __init__(self, backbone: nn.Module, levels: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        if levels == 1:
            stages: list[nn.Module] = [Stage(backbone, backbone.out_features, None)]
        else:
            stages = split_stages(backbone)
            if levels is not None:
                require_int("levels", levels)
                if levels > len(stages):
                    raise ValueError(f"levels={levels} exceeds the {len(stages)} stages of "
                                     f"{type(backbone).__name__}")
                stages = [StageGroup(run) for run in _chunks(stages, levels)]
        # views of the backbone's layers, kept out of the module tree so that every parameter
        # has one name
        self.stages: tuple[nn.Module, ...] = tuple(stages)
        self.out_features: int = backbone.out_features

    def forward(self, x: Tensor) -> Tensor:
        state = initial_state(x)
        for stage in self.stages:
            state = stage(state)
        return state.features

    def extra_repr(self) -> str:
        return f"stages={len(self.stages)}"


def mix(states: Sequence[StageState], weights: Tensor) -> StageState:
    """The weighted sum of the states' features; ``weights`` is ``(len(states),)`` or, per
    sample, ``(B, len(states))``. Max-pool indices cannot be mixed: each sample keeps the skips
    of the state with its largest weight (the first on ties)."""
    stacked = torch.stack([state.features for state in states])
    if weights.dim() == 1:
        features = torch.einsum("e,e...->...", weights, stacked)
        choice = weights.argmax().expand(stacked.shape[1])
    else:
        features = torch.einsum("be,eb...->b...", weights, stacked)
        choice = weights.argmax(dim=1)
    skips = []
    for index, (_, size) in enumerate(states[0].skips):
        indices = torch.stack([state.skips[index][0] for state in states])
        rows = torch.arange(indices.shape[1], device=indices.device)
        skips.append((indices[choice, rows], size))
    return StageState(features, states[0].size, tuple(skips))


def channel_dim(form: Form) -> int:
    """The channel dimension of a stage output of ``form``."""
    return 2 if form == "tokens" else 1


def require_int(name: str, value: object, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
