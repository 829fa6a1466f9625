"""Cityscapes in its two multi-task layouts.

**2-task, mtan ``.npy`` layout** (:class:`Cityscapes`, :class:`CityscapesDataModule`; read by
mtan, LibMTL, CAGrad, Nash-MTL, FAMO)::

    <root>/{train,val}/image/<i>.npy                        (H, W, 3) float in [0, 1]
    <root>/{train,val}/label_7/<i>.npy   (or label/)        (H, W) float, 0…6, -1 = ignore
    <root>/{train,val}/label_19/<i>.npy                     (H, W) float, 0…18, -1 = ignore
    <root>/{train,val}/depth/<i>.npy                        (H, W, 1) disparity, 0 = invalid

Tasks ``"segmentation"`` (7 or 19 classes) and ``"disparity"`` (the ``depth`` files hold inverse
depth; 0 becomes NaN). LibMTL names the 7-class folder ``label/``: both names are accepted.

**3-task, Auto-Lambda layout** (:class:`Cityscapes3Task`, :class:`Cityscapes3TaskDataModule`)::

    <root>/{train,val}/image/<i>.png       RGB, 8 bit
    <root>/{train,val}/seg/<i>.png         Cityscapes labelIds (0…33), 8 bit
    <root>/{train,val}/part_seg/<i>.tif    panoptic-parts uids, 32-bit integer
    <root>/{train,val}/depth/<i>.png       raw Cityscapes disparity, 16 bit

Tasks ``"segmentation"`` (labelIds → the 19 train ids, other ids → -1), ``"parts"`` (10 classes:
0 background, 1–4 torso/head/arms/legs of persons and riders, 5–9 windows/wheels/lights/licence
plate/chassis of cars, trucks and buses) and ``"disparity"`` (raw 0 → NaN, otherwise
``(d - 1) / (256 · 4)``, the 4 compensating the 4× down-scaling to 256 × 512). Images stay in
[0, 1] unless ``normalize=True`` (Auto-Lambda's ``2x - 1``).

In both layouts ``val/`` is the TEST split; the datamodules carve validation from ``train/``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
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
)
from tasknorm.data.transforms import DepthScaling, train_transform
from tasknorm.tasks import Task

CITYSCAPES_TASKS = ("segmentation", "disparity")
CITYSCAPES_3TASK_TASKS = ("segmentation", "parts", "disparity")
PART_CLASSES = 10

# Cityscapes labelIds -> the 19 train ids (cityscapesScripts labels.py); every other id -> -1.
_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
              24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
LABEL_ID_TO_TRAIN_ID = np.full(34, -1, dtype=np.int64)
LABEL_ID_TO_TRAIN_ID[list(_TRAIN_IDS)] = list(_TRAIN_IDS.values())
_HUMANS, _VEHICLES = (24, 25), (26, 27, 28)  # person, rider; car, truck, bus
_MAX_UID = 99_999_99


class Cityscapes(NumberedFilesDataset):
    """One split of 2-task Cityscapes in the mtan ``.npy`` layout (``val/`` is the TEST split).

    Items: ``{"image": (3, H, W) float32 in [0, 1], "segmentation": (H, W) int64 (-1 ignore),
    "disparity": (1, H, W) float32 (NaN invalid)}``, restricted to ``tasks``.

    Args:
        root: dataset root holding ``train/`` and ``val/``.
        split: ``"train"`` (``train/``) or ``"test"`` (``val/``).
        tasks: subset of ``("segmentation", "disparity")``.
        num_classes: 7 (reads ``label_7/``, or LibMTL's ``label/``) or 19 (``label_19/``).
        indices: file numbers of this dataset (default: all).
        transform: v2 transform on the wrapped sample, e.g. ``train_transform("cityscapes")``.

    Example:
        >>> import tempfile
        >>> root = write_tiny_cityscapes(tempfile.mkdtemp(), sizes=(2, 1), height=4, width=8)
        >>> sample = Cityscapes(root, "test", num_classes=19)[0]
        >>> {key: tuple(value.shape) for key, value in sample.items()}
        {'image': (3, 4, 8), 'segmentation': (4, 8), 'disparity': (1, 4, 8)}
    """

    name = "Cityscapes"
    layout = ("the mtan layout <root>/{train,val}/{image,label_7 (or label),label_19,depth}/"
              "<i>.npy with files numbered 0..n-1 (see docs/datasets.md)")
    kinds: ClassVar[dict[str, str]] = {"image": "image", "segmentation": "label",
                                       "disparity": "depth"}

    def __init__(self, root: str | Path, split: Split, tasks: Sequence[str] = CITYSCAPES_TASKS,
                 num_classes: int = 7, indices: Sequence[int] | None = None,
                 transform: Callable | None = None) -> None:
        if num_classes not in (7, 19):
            raise ValueError(f"Cityscapes num_classes must be 7 or 19, got {num_classes}")
        self.num_classes = num_classes
        super().__init__(root, split, tasks, indices, transform)

    def file_pattern(self, key: str) -> tuple[str, str]:
        if key != "segmentation":
            return {"image": "image", "disparity": "depth"}[key], ".npy"
        folders = ("label_7", "label") if self.num_classes == 7 else ("label_19",)
        for folder in folders:
            if (self.split_dir / folder).is_dir():
                return folder, ".npy"
        raise FileNotFoundError(f"no {' or '.join(folders)} folder in {self.split_dir} for "
                                f"{self.num_classes}-class labels; expected {self.layout}")

    def decode(self, key: str, path: Path) -> Tensor:
        if key == "image":
            return load_npy_image(path)
        if key == "segmentation":
            return load_npy_label(path, self.num_classes)
        return load_npy_depth(path)


def _read_image_file(path: Path, modes: Sequence[str], what: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            mode, array = image.mode, np.asarray(image)
    except OSError as error:
        raise ValueError(f"{path}: not a readable image file ({error})") from error
    if mode not in modes:
        raise ValueError(f"{path}: expected {what} (Pillow mode {' or '.join(modes)}), got mode "
                         f"{mode}")
    return array


def decode_part_uids(uids: np.ndarray) -> np.ndarray:
    """Cityscapes-Panoptic-Parts uids → the 10 part classes of Auto-Lambda (int64).

    A uid holds a semantic id (sid), instance id (iid) and part id (pid) as ``sid`` (uid ≤ 99),
    ``sid·1000 + iid`` (5 digits) or ``sid·100000 + iid·100 + pid`` (7 digits). Persons and
    riders (sid 24, 25) with pid 1–4 (torso, head, arms, legs) → 1–4; cars, trucks and buses
    (26–28) with pid 1–5 (windows, wheels, lights, licence plate, chassis) → 5–9; everything
    else, unlabelled parts included → 0 (background, a trained class).

    Example:
        >>> decode_part_uids(np.array([7, 24, 24003, 2400102, 2400100, 2800305, 2500104]))
        array([0, 0, 0, 2, 0, 9, 4])
    """
    sids = uids // 100_000  # only the 7-digit uids carry a part id
    pids = np.where(uids > 99_999, uids % 100, 0)
    human = np.isin(sids, _HUMANS) & (pids >= 1) & (pids <= 4)
    vehicle = np.isin(sids, _VEHICLES) & (pids >= 1) & (pids <= 5)
    return np.where(human, pids, np.where(vehicle, pids + 4, 0)).astype(np.int64)


class Cityscapes3Task(NumberedFilesDataset):
    """One split of 3-task Cityscapes in the Auto-Lambda png/tif layout (``val/`` is the TEST
    split).

    Items: ``{"image": (3, H, W) float32 in [0, 1] (or [-1, 1]), "segmentation": (H, W) int64
    (19 classes, -1 ignore), "parts": (H, W) int64 (10 classes, 0 background), "disparity":
    (1, H, W) float32 (NaN invalid)}``, restricted to ``tasks``.

    Args:
        root: dataset root holding ``train/`` and ``val/``.
        split: ``"train"`` (``train/``) or ``"test"`` (``val/``).
        tasks: subset of ``("segmentation", "parts", "disparity")``.
        normalize: map the image to [-1, 1] with ``2x - 1`` (after ``transform``), as
            Auto-Lambda does.
        indices: file numbers of this dataset (default: all).
        transform: v2 transform on the wrapped sample, e.g.
            ``train_transform("cityscapes_3task")``.

    Example:
        >>> import tempfile
        >>> root = write_tiny_cityscapes_3task(tempfile.mkdtemp(), sizes=(2, 1), height=4, width=8)
        >>> sample = Cityscapes3Task(root, "train", normalize=True)[1]
        >>> {key: tuple(value.shape) for key, value in sample.items()}
        {'image': (3, 4, 8), 'segmentation': (4, 8), 'parts': (4, 8), 'disparity': (1, 4, 8)}
        >>> bool(sample["image"].min() < 0)
        True
    """

    name = "Cityscapes (3-task)"
    layout = ("the Auto-Lambda layout <root>/{train,val}/{image,seg,depth}/<i>.png and "
              "<root>/{train,val}/part_seg/<i>.tif with files numbered 0..n-1 "
              "(see docs/datasets.md)")
    kinds: ClassVar[dict[str, str]] = {"image": "image", "segmentation": "label",
                                       "parts": "label", "disparity": "depth"}
    _files: ClassVar[dict[str, tuple[str, str]]] = {
        "image": ("image", ".png"), "segmentation": ("seg", ".png"),
        "parts": ("part_seg", ".tif"), "disparity": ("depth", ".png")}

    def __init__(self, root: str | Path, split: Split,
                 tasks: Sequence[str] = CITYSCAPES_3TASK_TASKS, normalize: bool = False,
                 indices: Sequence[int] | None = None, transform: Callable | None = None) -> None:
        self.normalize = normalize
        super().__init__(root, split, tasks, indices, transform)

    def file_pattern(self, key: str) -> tuple[str, str]:
        return self._files[key]

    def decode(self, key: str, path: Path) -> Tensor:
        if key == "image":
            array = _read_image_file(path, ("RGB",), "an 8-bit RGB image")
            return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float() / 255
        if key == "segmentation":
            ids = _read_image_file(path, ("L",), "8-bit Cityscapes labelIds")
            if ids.max() >= len(LABEL_ID_TO_TRAIN_ID):
                raise ValueError(f"{path}: labelIds up to {ids.max()}, expected 0..33")
            return torch.from_numpy(LABEL_ID_TO_TRAIN_ID[ids])
        if key == "parts":
            uids = _read_image_file(path, ("I",), "32-bit integer panoptic-parts uids")
            if uids.min() < 0 or uids.max() > _MAX_UID or ((uids >= 100) & (uids <= 999)).any():
                raise ValueError(f"{path}: invalid panoptic-parts uids (negative, above "
                                 f"{_MAX_UID} or with 3 digits)")
            return torch.from_numpy(decode_part_uids(uids))
        raw = _read_image_file(path, ("I;16", "I;16B", "I"), "16-bit disparity").astype(np.float32)
        if raw.min() < 0 or raw.max() > 65535:
            raise ValueError(f"{path}: raw disparity values span [{raw.min():g}, {raw.max():g}], "
                             f"expected 16-bit [0, 65535]")
        disparity = np.where(raw == 0, np.nan, (raw - 1) / (256 * 4)).astype(np.float32)
        return torch.from_numpy(disparity)[None]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = super().__getitem__(index)
        if self.normalize:
            sample["image"] = 2 * sample["image"] - 1
        return sample


class CityscapesDataModule(BenchmarkDataModule):
    """2-task Cityscapes (mtan layout) with a validation split carved from ``train/``.

    ``train`` = ``train/`` minus a seeded ``val_fraction``, augmented with
    ``train_transform("cityscapes", disparity_scaling)`` if ``augment``; ``val`` = the
    held-out part, never augmented; ``test`` = the ``val/`` folder (500 images).

    Args:
        root: dataset root holding ``train/`` and ``val/``.
        num_classes: 7 or 19.
        tasks: subset of ``("segmentation", "disparity")``.
        val_fraction: fraction of ``train/`` held out for validation.
        augment: scale-crop (s ∈ {1, 1.2, 1.5}) and horizontal flip on ``train``.
        disparity_scaling: ``"divide"`` (disparity ÷ s, as CAGrad's code, so results compare
            with published numbers) or ``"multiply"`` (× s, physically right for inverse depth,
            as Auto-Lambda).
        batch_size: samples per batch.
        num_workers: data-loading worker processes.
        seed: seed of the validation split and of the training order.
    """

    def __init__(self, root: str, num_classes: int = 7,
                 tasks: tuple[str, ...] = CITYSCAPES_TASKS, val_fraction: float = 0.1,
                 augment: bool = False, disparity_scaling: DepthScaling = "divide",
                 batch_size: int = 8, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(batch_size, num_workers, seed)
        if num_classes not in (7, 19):
            raise ValueError(f"Cityscapes num_classes must be 7 or 19, got {num_classes}")
        self.root = root
        self.num_classes = num_classes
        self.task_names = check_tasks(tasks, CITYSCAPES_TASKS, "Cityscapes")
        self.val_fraction = val_fraction
        self.augment = augment
        self.transform = train_transform("cityscapes", disparity_scaling) if augment else None

    @property
    def tasks(self) -> list[Task]:
        return dense_tasks(Cityscapes.kinds, self.task_names, {"segmentation": self.num_classes})

    def build_splits(self) -> dict[str, Dataset]:
        make = partial(Cityscapes, self.root, tasks=self.task_names, num_classes=self.num_classes)
        return carve_splits(make, self.val_fraction, self.seed, self.transform)


class Cityscapes3TaskDataModule(BenchmarkDataModule):
    """3-task Cityscapes (Auto-Lambda layout) with a validation split carved from ``train/``.

    ``train`` = ``train/`` minus a seeded ``val_fraction``, augmented with a random
    ``crop_size`` crop and a horizontal flip if ``augment`` (Auto-Lambda's recipe); ``val`` =
    the held-out part, never augmented; ``test`` = the ``val/`` folder.

    Args:
        root: dataset root holding ``train/`` and ``val/``.
        tasks: subset of ``("segmentation", "parts", "disparity")``.
        normalize: images in [-1, 1] (``2x - 1``, as Auto-Lambda) instead of [0, 1].
        val_fraction: fraction of ``train/`` held out for validation.
        augment: random crop and horizontal flip on ``train``.
        crop_size: (height, width) of the training crops.
        batch_size: samples per batch.
        num_workers: data-loading worker processes.
        seed: seed of the validation split and of the training order.
    """

    def __init__(self, root: str, tasks: tuple[str, ...] = CITYSCAPES_3TASK_TASKS,
                 normalize: bool = False, val_fraction: float = 0.1, augment: bool = False,
                 crop_size: tuple[int, int] = (256, 256), batch_size: int = 8,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.root = root
        self.task_names = check_tasks(tasks, CITYSCAPES_3TASK_TASKS, "Cityscapes (3-task)")
        self.normalize = normalize
        self.val_fraction = val_fraction
        self.augment = augment
        self.transform = (train_transform("cityscapes_3task", crop_size=tuple(crop_size))
                          if augment else None)

    @property
    def tasks(self) -> list[Task]:
        return dense_tasks(Cityscapes3Task.kinds, self.task_names,
                           {"segmentation": 19, "parts": PART_CLASSES})

    def build_splits(self) -> dict[str, Dataset]:
        make = partial(Cityscapes3Task, self.root, tasks=self.task_names,
                       normalize=self.normalize)
        return carve_splits(make, self.val_fraction, self.seed, self.transform)


def write_tiny_cityscapes(root: str | Path, sizes: tuple[int, int] = (6, 4), height: int = 16,
                          width: int = 32, seed: int = 0) -> Path:
    """Write a random but valid 2-task Cityscapes copy in the exact mtan format; return ``root``.

    ``sizes`` = (train, test) sample counts. Files: image (H, W, 3) float32 in [0, 1];
    ``label_7`` and ``label_19`` (H, W) float32 with about 10 % ignore pixels (-1); depth
    (H, W, 1) float32 disparity in (0, 0.49) with about 10 % invalid zeros.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for folder, count in zip(("train", "val"), sizes, strict=True):
        for sub in ("image", "label_7", "label_19", "depth"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            ignore = rng.random((height, width)) < 0.1
            arrays = {"image": rng.random((height, width, 3), dtype=np.float32)}
            for sub, classes in (("label_7", 7), ("label_19", 19)):
                label = rng.integers(0, classes, (height, width)).astype(np.float32)
                arrays[sub] = np.where(ignore, np.float32(-1), label)
            depth = rng.uniform(0.01, 0.49, (height, width, 1)).astype(np.float32)
            depth[rng.random((height, width)) < 0.1] = 0
            arrays["depth"] = depth
            for sub, array in arrays.items():
                np.save(root / folder / sub / f"{i}.npy", array)
    return root


def _random_uids(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Panoptic-parts uids in every encoding: sid only, sid+iid, sid+iid+pid (pid 0 included)."""
    sids = rng.choice([7, 8, 11, 21, 23, *_HUMANS, *_VEHICLES], size=shape)
    iids = rng.integers(1, 50, size=shape)
    pids = np.where(np.isin(sids, _HUMANS), rng.integers(0, 5, size=shape),
                    rng.integers(0, 6, size=shape))
    encoding = rng.integers(0, 3, size=shape)
    things = np.isin(sids, (*_HUMANS, *_VEHICLES))
    uids = np.where(things & (encoding == 1), sids * 1000 + iids, sids)
    return np.where(things & (encoding == 2), sids * 100_000 + iids * 100 + pids, uids)


def write_tiny_cityscapes_3task(root: str | Path, sizes: tuple[int, int] = (6, 4),
                                height: int = 16, width: int = 32, seed: int = 0) -> Path:
    """Write a random but valid 3-task Cityscapes copy in the exact Auto-Lambda format; return
    ``root``.

    ``sizes`` = (train, test) sample counts. Files: image 8-bit RGB png; seg 8-bit png of
    labelIds 0…33; depth 16-bit png of raw disparity (about 10 % invalid zeros, else 1…30000);
    part_seg 32-bit integer tif of panoptic-parts uids in all three encodings.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for folder, count in zip(("train", "val"), sizes, strict=True):
        for sub in ("image", "seg", "part_seg", "depth"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            ids = rng.integers(0, 34, (height, width), dtype=np.uint8)
            raw = rng.integers(1, 30_000, (height, width), dtype=np.uint16)
            raw[rng.random((height, width)) < 0.1] = 0
            uids = _random_uids(rng, (height, width)).astype(np.int32)
            Image.fromarray(image).save(root / folder / "image" / f"{i}.png")
            Image.fromarray(ids).save(root / folder / "seg" / f"{i}.png")
            Image.fromarray(raw).save(root / folder / "depth" / f"{i}.png")
            Image.fromarray(uids).save(root / folder / "part_seg" / f"{i}.tif")
    return root
