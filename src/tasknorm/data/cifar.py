"""CIFAR-10 / CIFAR-100 from the standard python-pickle release in a local folder (no download,
no checksum: tiny fixtures in the same format work too) and a LightningDataModule with the
pruning papers' augmentation.

Layout read (``root`` may be the folder itself or its parent)::

    cifar-10-batches-py/  data_batch_1 … data_batch_5, test_batch, batches.meta
    cifar-100-python/     train, test, meta

Each file is a pickle of a dict with byte-string keys; ``b"data"`` is ``uint8`` N×3072 (1024 red,
1024 green, 1024 blue values of a 32×32 image, row-major). Samples are
``{"image": float tensor (3, 32, 32), "label": int}``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from tasknorm.io import atomic_write

Name = Literal["cifar10", "cifar100"]
FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
FILES = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "meta": "batches.meta"},
    "cifar100": {"train": ["train"], "test": ["test"], "meta": "meta"},
}
LABEL_KEYS = {"cifar10": "labels", "cifar100": "fine_labels"}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
MEAN_STD = {  # the RNI code's normalisation
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


def cifar_folder(root: str | Path, name: Name) -> Path:
    """The release folder under ``root`` (or ``root`` itself), checked for every expected file."""
    if name not in FOLDERS:
        raise ValueError(f"unknown CIFAR {name!r}; expected one of {sorted(FOLDERS)}")
    root = Path(root)
    folder = root if root.name == FOLDERS[name] else root / FOLDERS[name]
    expected = [*FILES[name]["train"], *FILES[name]["test"], FILES[name]["meta"]]
    missing = [f for f in expected if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name}: expected the python-pickle release in {folder} with files "
            f"{', '.join(expected)}; missing: {', '.join(missing)}. Download "
            f"'{FOLDERS[name]}' (python version) from https://www.cs.toronto.edu/~kriz/cifar.html "
            "and unpack it there; nothing is downloaded automatically")
    return folder


def _load(path: Path) -> dict[bytes, Any]:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def load_cifar(root: str | Path, name: Name = "cifar10", split: str = "train"
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 3, 32, 32), labels int64 (N,))`` of ``split`` (``train``/``test``)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = cifar_folder(root, name)
    images, labels = [], []
    for file in FILES[name][split]:
        batch = _load(folder / file)
        key = LABEL_KEYS[name].encode()
        if b"data" not in batch or key not in batch:
            raise ValueError(f"{folder / file} is not a CIFAR batch: it lacks b'data' or {key!r}")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


class CIFAR(Dataset):
    """CIFAR-10/100 ``split`` read from ``root``; ``transform`` maps a uint8 (3, 32, 32) tensor
    to the model input (default: scaled to [0, 1] and normalised with the dataset's mean/std)."""

    def __init__(self, root: str | Path, name: Name = "cifar10", split: str = "train",
                 transform: Any = None) -> None:
        self.name = name
        self.images, self.labels = load_cifar(root, name, split)
        self.transform = transform if transform is not None else cifar_transform(name, False)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = torch.from_numpy(self.images[index])
        return {"image": self.transform(image), "label": int(self.labels[index])}


def cifar_transform(name: Name, train: bool) -> v2.Compose:
    """Test: scale + normalise; train: also random crop 32 with 4-pixel zero padding and a
    horizontal flip (RNI, slimming, Polarization, Torch-Pruning alike)."""
    mean, std = MEAN_STD[name]
    augment = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if train else []
    return v2.Compose([*augment, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def write_tiny_cifar(root: str | Path, name: Name = "cifar10", per_file: int = 4,
                     seed: int = 0) -> Path:
    """Write a tiny release in the real format (random images; ``per_file`` per batch file)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / FOLDERS[name]
    classes = NUM_CLASSES[name]
    for split in ("train", "test"):
        for file in FILES[name][split]:
            batch: dict[bytes, Any] = {
                b"batch_label": file.encode(),
                b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                b"filenames": [f"img_{i}.png".encode() for i in range(per_file)],
                LABEL_KEYS[name].encode(): rng.integers(0, classes, per_file).tolist(),
            }
            if name == "cifar100":
                batch[b"coarse_labels"] = rng.integers(0, 20, per_file).tolist()
            atomic_write(folder / file, lambda f, b=batch: pickle.dump(b, f, protocol=2))
    if name == "cifar10":
        meta = {b"label_names": [f"class{i}".encode() for i in range(10)],
                b"num_cases_per_batch": per_file, b"num_vis": 3072}
    else:
        meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    atomic_write(folder / FILES[name]["meta"], lambda f: pickle.dump(meta, f, protocol=2))
    return folder


class CifarDataModule(L.LightningDataModule):
    """CIFAR train/test loaders. ``val_split="test"`` validates on the test set as the RNI code
    does (test-set model selection; say so when reporting); a float carves that fraction of the
    training set as validation instead."""

    def __init__(self, root: str, name: Name = "cifar10", batch_size: int = 64,
                 num_workers: int = 0, val_split: str | float = 0.1, seed: int = 0) -> None:
        super().__init__()
        self.root, self.name, self.batch_size = root, name, batch_size
        self.num_workers, self.val_split, self.seed = num_workers, val_split, seed
        self.num_classes = NUM_CLASSES[name]

    def setup(self, stage: str | None = None) -> None:
        train = CIFAR(self.root, self.name, "train", cifar_transform(self.name, True))
        self.test_set = CIFAR(self.root, self.name, "test")
        if self.val_split == "test":
            self.train_set, self.val_set = train, self.test_set
            return
        order = np.random.default_rng(self.seed).permutation(len(train))
        n_val = round(float(self.val_split) * len(train))
        val = CIFAR(self.root, self.name, "train")
        self.train_set = torch.utils.data.Subset(train, order[n_val:].tolist())
        self.val_set = torch.utils.data.Subset(val, order[:n_val].tolist())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, self.batch_size, num_workers=self.num_workers)
