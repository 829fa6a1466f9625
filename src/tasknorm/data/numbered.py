"""Datasets stored as numbered files, ``<root>/<split folder>/<folder>/<i>.<ext>``, and the
helpers their datamodules share.

The mtan layouts (NYUv2, 2-task Cityscapes) and Auto-Lambda's 3-task Cityscapes layout store
each entry of sample ``i`` as ``<folder>/<i>.<ext>``, with ``train/`` holding the training split
and ``val/`` the TEST split. :class:`NumberedFilesDataset` reads any such layout;
``load_npy_*`` decode the mtan ``.npy`` files (NYUv2 and 2-task Cityscapes), checking shape,
finite values and ranges so that a broken copy fails early with the path named.
:func:`carve_splits` carves the validation split out of ``train/`` and :func:`dense_tasks` builds
the tasks of dense targets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from tasknorm.data.datamodules import carve_validation
from tasknorm.data.transforms import unwrap_sample, wrap_sample
from tasknorm.tasks import DepthTask, NormalsTask, SegmentationTask, Task

Split = Literal["train", "test"]
SPLIT_FOLDERS: dict[str, str] = {"train": "train", "test": "val"}
_RANGE_TOLERANCE = 1e-3


def check_tasks(tasks: Sequence[str], valid: Sequence[str], dataset: str) -> tuple[str, ...]:
    """``tasks`` as a tuple, after checking it is a non-empty subset of ``valid`` without
    repeats."""
    tasks = tuple(tasks)
    unknown = [task for task in tasks if task not in valid]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"invalid {dataset} tasks {list(tasks)} (unknown: {unknown}); choose a "
                         f"non-empty subset of {list(valid)} without repeats")
    return tasks


class NumberedFilesDataset(Dataset, ABC):
    """One split of a layout ``<root>/<split folder>/<folder>/<i>.<ext>`` with files numbered
    ``0 … n-1`` (the mtan and Auto-Lambda layouts); ``n`` is the number of image files.

    Subclasses name the files of each entry (:meth:`file_pattern`) and decode one file into its
    canonical tensor (:meth:`decode`); this class checks the files, applies the transform and
    checks that every entry has the image's height and width.

    Args:
        root: dataset root; ``split="train"`` reads ``<root>/train``, ``"test"`` ``<root>/val``.
        split: ``"train"`` or ``"test"``.
        tasks: the targets to load, a subset of the keys of ``kinds`` other than ``"image"``.
        indices: file numbers making up this dataset (default: all), e.g. a carved subset.
        transform: a v2 transform applied to the sample wrapped by :func:`wrap_sample`.

    Attributes:
        size: number of samples in the split folder (whatever ``indices`` selects).
    """

    name: ClassVar[str]
    layout: ClassVar[str]
    kinds: ClassVar[dict[str, str]]

    def __init__(self, root: str | Path, split: Split, tasks: Sequence[str],
                 indices: Sequence[int] | None = None, transform: Callable | None = None) -> None:
        self.root = Path(root)
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"unknown {self.name} split {split!r}; expected 'train' or 'test'")
        self.tasks = check_tasks(tasks, [key for key in self.kinds if key != "image"], self.name)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.name} root {self.root} is not a directory; expected "
                                    f"{self.layout}")
        self.split_dir = self.root / SPLIT_FOLDERS[split]
        self.patterns = {key: self.file_pattern(key) for key in ("image", *self.tasks)}
        folder, suffix = self.patterns["image"]
        size = len(list((self.split_dir / folder).glob(f"*{suffix}")))
        if size == 0:
            raise FileNotFoundError(f"no <i>{suffix} files in {self.split_dir / folder}; expected "
                                    f"{self.layout}")
        self.size = size
        self.indices = list(range(size)) if indices is None else [int(i) for i in indices]
        bad = [i for i in self.indices if not 0 <= i < size]
        if bad:
            raise IndexError(f"{self.name} {split} has {size} samples; indices {bad[:5]} are out "
                             f"of range")
        for i in self.indices:
            for key in self.patterns:
                if not self.path(key, i).is_file():
                    raise FileNotFoundError(f"missing {self.name} file {self.path(key, i)}; "
                                            f"expected {self.layout}")
        self.transform = transform

    @abstractmethod
    def file_pattern(self, key: str) -> tuple[str, str]:
        """``(folder, suffix)`` of the files of ``key`` (``"image"`` or a task)."""

    @abstractmethod
    def decode(self, key: str, path: Path) -> Tensor:
        """The canonical tensor of ``key`` stored in ``path``; raises ValueError naming ``path``
        if the file is malformed."""

    def path(self, key: str, number: int) -> Path:
        folder, suffix = self.patterns[key]
        return self.split_dir / folder / f"{number}{suffix}"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        number = self.indices[index]
        sample = {key: self.decode(key, self.path(key, number)) for key in self.patterns}
        height, width = sample["image"].shape[-2:]
        for key, value in sample.items():
            if value.shape[-2:] != (height, width):
                raise ValueError(f"{self.path(key, number)}: {key} is "
                                 f"{tuple(value.shape[-2:])} pixels but the image is "
                                 f"{(height, width)}")
        if self.transform is not None:
            sample = unwrap_sample(self.transform(wrap_sample(sample, self.kinds)))
        return sample


def read_npy(path: Path, ndim: int, channels: int | None, what: str) -> np.ndarray:
    """The finite numeric array in ``path`` with ``ndim`` axes (and ``channels`` on the last one
    if given), as float64; ValueError naming ``path`` otherwise."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable .npy array ({error})") from error
    expected = "(H, W)" if ndim == 2 else f"(H, W, {channels})"
    numeric = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    if not numeric or array.ndim != ndim or (channels is not None and array.shape[-1] != channels):
        raise ValueError(f"{path}: expected a numeric {what} array of shape {expected}, got "
                         f"{array.dtype} {array.shape}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: {what} contains NaN or infinite values")
    return array


def _check_range(array: np.ndarray, low: float, high: float, path: Path, what: str) -> None:
    if array.min() < low - _RANGE_TOLERANCE or array.max() > high + _RANGE_TOLERANCE:
        raise ValueError(f"{path}: {what} values span [{array.min():g}, {array.max():g}], "
                         f"expected [{low:g}, {high:g}]")


def _channels_first(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0), dtype=np.float32))


def load_npy_image(path: Path) -> Tensor:
    """An mtan image file (H, W, 3) with values in [0, 1] as float32 (3, H, W)."""
    array = read_npy(path, 3, 3, "image")
    _check_range(array, 0, 1, path, "image")
    return _channels_first(array)


def load_npy_label(path: Path, num_classes: int) -> Tensor:
    """An mtan label file (H, W), classes ``0 … num_classes-1`` and -1 = ignore, as int64."""
    array = read_npy(path, 2, None, "label")
    if (array != np.round(array)).any():
        raise ValueError(f"{path}: label contains non-integer values")
    _check_range(array, -1, num_classes - 1, path, f"label ({num_classes} classes, -1 = ignore)")
    return torch.from_numpy(array.astype(np.int64))


def load_npy_depth(path: Path) -> Tensor:
    """An mtan depth (or disparity) file (H, W, 1), non-negative with 0 = invalid, as float32
    (1, H, W) with NaN = invalid."""
    array = read_npy(path, 3, 1, "depth")
    if array.min() < 0:
        raise ValueError(f"{path}: depth has negative values (min {array.min():g}); expected "
                         f"values >= 0 with 0 = invalid")
    return _channels_first(np.where(array == 0, np.nan, array))


def load_npy_normals(path: Path) -> Tensor:
    """An mtan normal file (H, W, 3), components in [-1, 1] and all-zero = invalid, as float32
    (3, H, W) (not re-normalised)."""
    array = read_npy(path, 3, 3, "normal")
    _check_range(array, -1, 1, path, "normal")
    return _channels_first(array)


def dense_tasks(kinds: Mapping[str, str], tasks: Sequence[str], num_classes: Mapping[str, int]
                ) -> list[Task]:
    """Task objects for dense targets by kind: segmentation for labels (``num_classes[task]``),
    depth regression for depth/disparity, normals for normals."""
    built: list[Task] = []
    for task in tasks:
        kind = kinds[task]
        if kind == "label":
            built.append(SegmentationTask(task, num_classes[task]))
        elif kind == "depth":
            built.append(DepthTask(task))
        else:
            built.append(NormalsTask(task))
    return built


def carve_splits(make: Callable[..., NumberedFilesDataset], val_fraction: float, seed: int,
                 augment: Callable | None) -> dict[str, Dataset]:
    """``{"train", "val", "test"}`` from a layout whose ``train`` split must also supply the
    validation split: a seeded ``val_fraction`` of it (:func:`carve_validation`) is held out
    and never augmented; ``augment`` applies to the rest. ``make(split, indices=...,
    transform=...)`` builds one dataset."""
    train, val = carve_validation(make("train").size, val_fraction, seed)
    return {"train": make("train", indices=train, transform=augment),
            "val": make("train", indices=val), "test": make("test")}
