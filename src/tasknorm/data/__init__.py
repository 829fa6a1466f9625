"""Datasets, generators and LightningDataModules."""

from tasknorm.data.datamodules import MultiDigitsDataModule
from tasknorm.data.multidigits import MultiDigits, MultiDigitsSpec, generate, load_multidigits

__all__ = ["MultiDigits", "MultiDigitsDataModule", "MultiDigitsSpec", "generate",
           "load_multidigits"]
