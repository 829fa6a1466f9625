"""Datasets, generators and LightningDataModules."""

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

__all__ = [
    "BenchmarkDataModule",
    "Cityscapes",
    "Cityscapes3Task",
    "Cityscapes3TaskDataModule",
    "CityscapesDataModule",
    "MultiDigits",
    "MultiDigitsDataModule",
    "MultiDigitsSpec",
    "NYUv2",
    "NYUv2DataModule",
    "carve_validation",
    "generate",
    "load_multidigits",
    "write_tiny_cityscapes",
    "write_tiny_cityscapes_3task",
    "write_tiny_nyuv2",
]
