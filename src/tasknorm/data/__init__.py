"""Datasets, generators and LightningDataModules."""

from tasknorm.data.celeba import CelebA, CelebADataModule, write_tiny_celeba
from tasknorm.data.cityscapes import (
    Cityscapes,
    Cityscapes3Task,
    Cityscapes3TaskDataModule,
    CityscapesDataModule,
    write_tiny_cityscapes,
    write_tiny_cityscapes_3task,
)
from tasknorm.data.datamodules import BenchmarkDataModule, MultiDigitsDataModule, carve_validation
from tasknorm.data.multidigits import MultiDigits, MultiDigitsSpec, generate, load_multidigits
from tasknorm.data.nyuv2 import NYUv2, NYUv2DataModule, write_tiny_nyuv2
from tasknorm.data.pascal_context import PascalContext, PascalContextDataModule
from tasknorm.data.pascal_context_writer import write_tiny_pascal_context
from tasknorm.data.scenes import RenderedScenesDataModule, ScenesSpec, render_scenes

__all__ = [
    "BenchmarkDataModule",
    "CelebA",
    "CelebADataModule",
    "Cityscapes",
    "Cityscapes3Task",
    "Cityscapes3TaskDataModule",
    "CityscapesDataModule",
    "MultiDigits",
    "MultiDigitsDataModule",
    "MultiDigitsSpec",
    "NYUv2",
    "NYUv2DataModule",
    "PascalContext",
    "PascalContextDataModule",
    "RenderedScenesDataModule",
    "ScenesSpec",
    "carve_validation",
    "generate",
    "load_multidigits",
    "render_scenes",
    "write_tiny_celeba",
    "write_tiny_cityscapes",
    "write_tiny_cityscapes_3task",
    "write_tiny_nyuv2",
    "write_tiny_pascal_context",
]
