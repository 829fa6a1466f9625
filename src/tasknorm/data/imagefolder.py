"""ImageNet-style ImageFolder (``<root>/<split>/<class>/<image>``) with the standard recipe, as
``{"image", "label"}`` samples; no download, clear errors for a wrong layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def imagenet_transform(train: bool, size: int = 224, resize: int = 256) -> v2.Compose:
    """Train: RandomResizedCrop + flip; eval: resize then center crop; normalised."""
    mean, std = IMAGENET_MEAN_STD
    geometry = ([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip()] if train
                else [v2.Resize(resize), v2.CenterCrop(size)])
    return v2.Compose([v2.ToImage(), *geometry, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(mean, std)])


class ImageFolderDataset(Dataset):
    """``<root>/<split>/<class>/<image>``; class index = sorted class-folder order."""

    def __init__(self, root: str | Path, split: str = "train", transform: Any = None) -> None:
        folder = Path(root) / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"expected an ImageFolder split at {folder}: one sub-folder per class holding "
                f"its images (<root>/{split}/<class>/<image>.JPEG); nothing is downloaded")
        if not any(p.is_dir() for p in folder.iterdir()):
            raise FileNotFoundError(f"{folder} has no class sub-folders (<class>/<image>); a flat "
                                    "ImageNet val release must first be sorted into class folders")
        if transform is None:
            transform = imagenet_transform(split == "train")
        self.folder = ImageFolder(str(folder), transform=transform)
        self.classes = self.folder.classes

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.folder[index]
        return {"image": image, "label": label}
