"""Datasets, generators and LightningDataModules."""

from tasknorm.data.datamodules import BenchmarkDataModule, MultiDigitsDataModule, carve_validation
from tasknorm.data.multidigits import MultiDigits, MultiDigitsSpec, generate, load_multidigits

__all__ = ["BenchmarkDataModule", "MultiDigits", "MultiDigitsDataModule", "MultiDigitsSpec",
           "carve_validation", "generate", "load_multidigits"]
