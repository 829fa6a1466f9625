"""Backbones, task heads, pretrained-weight loading and the multi-task model."""

from tasknorm.models.backbones import (
    BACKBONES,
    CelebaCNN,
    DigitsCNN,
    DigitsEncoder,
    build_backbone,
    celeba_cnn,
    count_flops,
    count_parameters,
    digits_cnn,
    digits_encoder,
)
from tasknorm.models.dense import (
    DilatedCNN,
    DilatedResNet,
    SegNet,
    VisionTransformerFeatures,
    dilated_cnn,
    resnet50_dilated,
    segnet,
    vit_small,
)
from tasknorm.models.heads import HEADS, build_head
from tasknorm.models.multitask import (
    ARCHITECTURES,
    LEARNED_SHARING,
    NORM_ARCHITECTURES,
    TREE,
    MultiTaskModel,
)
from tasknorm.models.stages import StagedBackbone, split_stages
from tasknorm.models.weights import load_weights

__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "HEADS",
    "LEARNED_SHARING",
    "NORM_ARCHITECTURES",
    "TREE",
    "CelebaCNN",
    "DigitsCNN",
    "DigitsEncoder",
    "DilatedCNN",
    "DilatedResNet",
    "MultiTaskModel",
    "SegNet",
    "StagedBackbone",
    "VisionTransformerFeatures",
    "build_backbone",
    "build_head",
    "celeba_cnn",
    "count_flops",
    "count_parameters",
    "digits_cnn",
    "digits_encoder",
    "dilated_cnn",
    "load_weights",
    "resnet50_dilated",
    "segnet",
    "split_stages",
    "vit_small",
]
