"""NYUv2 in the mtan preprocessed ``.npy`` layout.

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
is checked to exist when the dataset is built, so a broken copy fails early with the path named
(the loader and the ``.npy`` decoders it shares with Cityscapes are in
:mod:`tasknorm.data.numbered`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from tasknorm.data.datamodules import BenchmarkDataModule
from tasknorm.data.numbered import (
    NumberedFilesDataset,
    Split,
    carve_splits,
    check_tasks,
    dense_tasks,
    load_npy_depth,
    load_npy_image,
    load_npy_label,
    load_npy_normals,
)
from tasknorm.data.transforms import train_transform
from tasknorm.tasks import Task

NYUV2_TASKS = ("segmentation", "depth", "normals")


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
