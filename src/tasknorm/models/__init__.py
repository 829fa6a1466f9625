"""Backbones and the multi-task model."""

from tasknorm.models.backbones import (
    BACKBONES,
    DigitsCNN,
    build_backbone,
    count_flops,
    count_parameters,
    digits_cnn,
)
from tasknorm.models.multitask import ARCHITECTURES, MultiTaskModel

__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "DigitsCNN",
    "MultiTaskModel",
    "build_backbone",
    "count_flops",
    "count_parameters",
    "digits_cnn",
]
