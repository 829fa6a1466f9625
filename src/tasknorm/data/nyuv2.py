"""NYUv2 in the mtan preprocessed ``.npy`` layout, and the numbered-file loader it shares with
Cityscapes.

The mtan layout (github.com/lorenmt/mtan, also read by LibMTL, CAGrad, Nash-MTL, FAMO)::

    <root>/train/{image,label,depth,normal}/0.npy … 794.npy
    <root>/val/{image,label,depth,normal}/0.npy … 653.npy      # the TEST split

==========  ===============  ========================================  ==========================
file        on disk          canonical (what a sample holds)           invalid
==========  ===============  ========================================  ==========================
image       (H, W, 3) float  float32 (3, H, W) in [0, 1]               –
label       (H, W) float     int64 (H, W), classes 0 … C-1             -1 (kept)
depth       (H, W, 1) float  float32 (1, H, W), metres                 0 on disk → NaN
normal      (H, W, 3) float  float32 (3, H, W), as stored              all-zero vector (kept)
==========  ===============  ========================================  ==========================

Every file is checked when it is loaded (shape, finite values, ranges) and every referenced file
is checked to exist when the dataset is built, so a broken copy fails early with the path named.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from tasknorm.data.datamodules import BenchmarkDataModule, carve_validation
from tasknorm.data.transforms import train_transform, unwrap_sample, wrap_sample
from tasknorm.tasks import DepthTask, NormalsTask, SegmentationTask, Task

Split = Literal["train", "test"]
SPLIT_FOLDERS: dict[str, str] = {"train": "train", "test": "val"}
NYUV2_TASKS = ("segmentation", "depth", "normals")
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


class NYUv2(NumberedFilesDataset):
    """One split of NYUv2 in the mtan ``.npy`` layout (mtan's ``val/`` folder is the TEST split).

    Items: ``{"image": (3, H, W) float32 in [0, 1], "segmentation": (H, W) int64 (-1 ignore),
    "depth": (1, H, W) float32 (NaN invalid), "normals": (3, H, W) float32 (0 invalid)}``,
    restricted to ``tasks``.

    Args:
        root: dataset root holding ``train/`` and ``val/``.
        split: ``"train"`` (``train/``) or ``"test"`` (``val/``).
        tasks: subset of ``("segmentation", "depth", "normals")``.
        num_classes: segmentation classes (13 in the mtan files); labels must lie in
            ``[-1, num_classes)``.
        indices: file numbers of this dataset (default: all).
        transform: v2 transform on the wrapped sample, e.g. ``train_transform("nyuv2")``.

    Example:
        >>> import tempfile
        >>> root = write_tiny_nyuv2(tempfile.mkdtemp(), sizes=(2, 1), height=6, width=8)
        >>> sample = NYUv2(root, "test")[0]
        >>> {key: tuple(value.shape) for key, value in sample.items()}
        {'image': (3, 6, 8), 'segmentation': (6, 8), 'depth': (1, 6, 8), 'normals': (3, 6, 8)}
    """

    name = "NYUv2"
    layout = ("the mtan layout <root>/{train,val}/{image,label,depth,normal}/<i>.npy with files "
              "numbered 0..n-1 (see docs/datasets.md)")
    kinds: ClassVar[dict[str, str]] = {"image": "image", "segmentation": "label",
                                       "depth": "depth", "normals": "normals"}
    _folders: ClassVar[dict[str, str]] = {"image": "image", "segmentation": "label",
                                          "depth": "depth", "normals": "normal"}

    def __init__(self, root: str | Path, split: Split,
                 tasks: Sequence[str] = NYUV2_TASKS, num_classes: int = 13,
                 indices: Sequence[int] | None = None, transform: Callable | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        super().__init__(root, split, tasks, indices, transform)

    def file_pattern(self, key: str) -> tuple[str, str]:
        return self._folders[key], ".npy"

    def decode(self, key: str, path: Path) -> Tensor:
        if key == "image":
            return load_npy_image(path)
        if key == "segmentation":
            return load_npy_label(path, self.num_classes)
        if key == "depth":
            return load_npy_depth(path)
        return load_npy_normals(path)


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


class NYUv2DataModule(BenchmarkDataModule):
    """NYUv2 (mtan layout) with a validation split carved from ``train/``.

    ``train`` = ``train/`` minus a seeded ``val_fraction`` (:func:`carve_validation`), augmented
    with ``train_transform("nyuv2")`` if ``augment``; ``val`` = the held-out part, never
    augmented; ``test`` = mtan's ``val/`` folder (the 654 standard test images).

    Args:
        root: dataset root holding ``train/`` and ``val/``.
        tasks: subset of ``("segmentation", "depth", "normals")``.
        num_classes: segmentation classes.
        val_fraction: fraction of ``train/`` held out for validation.
        augment: scale-crop (s ∈ {1, 1.2, 1.5}, depth ÷ s) and horizontal flip on ``train``.
        batch_size: samples per batch.
        num_workers: data-loading worker processes.
        seed: seed of the validation split and of the training order.
    """

    def __init__(self, root: str, tasks: tuple[str, ...] = NYUV2_TASKS, num_classes: int = 13,
                 val_fraction: float = 0.1, augment: bool = False, batch_size: int = 8,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.root = root
        self.task_names = check_tasks(tasks, NYUV2_TASKS, "NYUv2")
        self.num_classes = num_classes
        self.val_fraction = val_fraction
        self.augment = augment

    @property
    def tasks(self) -> list[Task]:
        return dense_tasks(NYUv2.kinds, self.task_names, {"segmentation": self.num_classes})

    def build_splits(self) -> dict[str, Dataset]:
        make = partial(NYUv2, self.root, tasks=self.task_names, num_classes=self.num_classes)
        augment = train_transform("nyuv2") if self.augment else None
        return carve_splits(make, self.val_fraction, self.seed, augment)

def write_tiny_nyuv2(root: str | Path, sizes: tuple[int, int] = (6, 4), height: int = 24,
                     width: int = 32, num_classes: int = 13, seed: int = 0) -> Path:
    """Write a random but valid NYUv2 copy in the exact mtan format and return ``root``.

    ``sizes`` = (train, test) sample counts. Files: image (H, W, 3) float32 in [0, 1]; label
    (H, W) float32 with classes ``0 … num_classes-1`` and about 10 % ignore pixels (-1); depth
    (H, W, 1) float32 metres with about 10 % invalid zeros; normal (H, W, 3) float32 unit vectors
    with about 10 % invalid all-zero pixels.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for folder, count in zip(("train", "val"), sizes, strict=True):
        for sub in ("image", "label", "depth", "normal"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            label = rng.integers(0, num_classes, (height, width)).astype(np.float32)
            label[rng.random((height, width)) < 0.1] = -1
            depth = rng.uniform(0.5, 10, (height, width, 1)).astype(np.float32)
            depth[rng.random((height, width)) < 0.1] = 0
            normal = rng.normal(size=(height, width, 3))
            normal[..., 2] = np.abs(normal[..., 2]) + 0.1
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            normal[rng.random((height, width)) < 0.1] = 0
            arrays = {"image": rng.random((height, width, 3), dtype=np.float32), "label": label,
                      "depth": depth, "normal": normal.astype(np.float32)}
            for sub, array in arrays.items():
                np.save(root / folder / sub / f"{i}.npy", array)
    return root
