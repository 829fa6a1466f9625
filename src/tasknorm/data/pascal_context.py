"""PASCAL-Context multi-task benchmark in the ``PASCAL_MT`` layout (ASTMT / Vandenhende et al.).

Layout under ``root`` (the unpacked ``PASCAL_MT.tgz``)::

    JPEGImages/<id>.jpg
    ImageSets/Context/{train,val}.txt          one image id per line
    semseg/VOC12/<id>.png  or  semseg/pascal-context/<id>.png   class ids 0-20, 255 ignore
    human_parts/<id>.mat                       PASCAL-Part annotation (struct ``anno``)
    normals_distill/<id>.png                   RGB, decoded 2 v / 255 - 1
    sal_distill/<id>.png                       grey, v / 255 > 0.5 is salient
    pascal-context/trainval/<id>.mat           ``LabelMap``: 459-class PASCAL-Context labels

Tasks and their in-memory encodings (the reference's encodings converted to the library's):

* ``segmentation``: int64 (H, W), 21 classes (:data:`SEGMENTATION_CLASSES`), 255 → -1.
* ``parts``: int64 (H, W), 7 classes (:data:`PART_CLASSES`) painted from the person parts of
  the PASCAL-Part annotation (:data:`PERSON_PARTS`); every other pixel is background (0); an
  image with no annotated person part is all -1 (ignored, as the reference's all-255 map).
* ``normals``: float32 (3, H, W) unit vectors (x right, y down, z), decoded from the distilled
  PNG and zeroed (invalid) wherever ``LabelMap`` holds a class outside
  :data:`NORMALS_VALID_CLASSES`, the classes the reference deems compatible with NYU normals.
* ``saliency``: float32 (1, H, W) in {0, 1}, the distilled map binarised at 0.5.
* ``edges``: float32 (1, H, W) in {0, 1}, the boundaries of ``LabelMap``: non-zero 4-neighbour
  Laplacian, thinned to one pixel (:func:`tasknorm.data.boundaries.label_boundaries`), as the
  reference.

The public layout has no validation split: its ``val`` list is the test split of the
literature, so :class:`PascalContextDataModule` carves a validation subset out of ``train``.
:mod:`tasknorm.data.pascal_context_writer` writes tiny copies of this layout for tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from tasknorm.data.boundaries import label_boundaries
from tasknorm.data.datamodules import BenchmarkDataModule, carve_validation
from tasknorm.data.transforms import pascal_transform, unwrap_sample, wrap_sample
from tasknorm.tasks import EdgeTask, NormalsTask, SaliencyTask, SegmentationTask, Task

TASKS = ("segmentation", "parts", "saliency", "normals", "edges")
SEGMENTATION_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor")
_PART_GROUPS = {
    "head": ("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "mouth", "nose"),
    "torso": ("neck", "torso"),
    "upper_arm": ("luarm", "ruarm"),
    "lower_arm": ("llarm", "rlarm", "lhand", "rhand"),
    "upper_leg": ("luleg", "ruleg"),
    "lower_leg": ("llleg", "rlleg", "lfoot", "rfoot"),
}
PART_CLASSES = ("background", *_PART_GROUPS)
PERSON_PARTS = {part: PART_CLASSES.index(group)
                for group, parts in _PART_GROUPS.items() for part in parts}
"""PASCAL-Part person part name → parts class (the reference's 6-part grouping)."""
PERSON_CLASS = 15
"""``class_ind`` of a person in the PASCAL-Part annotations."""
NORMALS_VALID_CLASSES = frozenset((
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50,
    51, 53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104,
    105, 107, 111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165, 172,
    174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219, 220, 223, 225, 228, 230,
    232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269, 272, 273, 275, 281,
    283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309, 310, 314, 315, 319, 323,
    329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380, 383,
    384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430, 432,
    440, 441, 442, 443, 444, 446, 454, 457))
"""``LabelMap`` classes where distilled normals are valid: the 169 PASCAL-Context class names
that are also NYU class names (the reference's ``db_info/{context,nyu}_classes.json``), plus
``tvmonitor`` (427), which the reference adds by hand."""
_NORMALS_VALID = np.array(sorted(NORMALS_VALID_CLASSES))
KINDS = {"image": "image", "segmentation": "label", "parts": "label", "saliency": "mask",
         "edges": "mask", "normals": "normals"}
"""How each entry of a sample is wrapped for :mod:`tasknorm.data.transforms`."""
_FILES = {  # task -> files it needs (besides the image)
    "segmentation": ("semseg",), "parts": ("parts",), "saliency": ("saliency",),
    "normals": ("normals", "labelmap"), "edges": ("labelmap",)}
_LOCATIONS = {"parts": ("human_parts", ".mat"), "normals": ("normals_distill", ".png"),
              "saliency": ("sal_distill", ".png"), "labelmap": ("pascal-context/trainval", ".mat")}


class PascalContext(Dataset):
    """One split of PASCAL-Context; items are ``{"image": (3, H, W) float, "<task>": target}``
    in the encodings of the module docstring, at the stored resolution unless ``transform``
    resizes them.

    Args:
        root: the ``PASCAL_MT`` folder.
        split: ``"train"`` or ``"val"``: which ``ImageSets/Context`` list gives the default ids.
        tasks: subset of :data:`TASKS` to load.
        transform: v2 transform applied to the sample wrapped with :data:`KINDS` (e.g.
            :func:`tasknorm.data.transforms.pascal_transform`); normals are re-normalised afterwards
            (:func:`unit_normals`).
        ids: image ids to use instead of the whole split list.

    Raises:
        FileNotFoundError: the split list or a file a requested task needs is missing (the
            message names the first missing path and its image id).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        tasks: Sequence[str] = TASKS,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.tasks = _checked_tasks(tasks)
        self.ids = list(read_split(self.root, split) if ids is None else ids)
        self.transform = transform
        self.files = [self._files(image_id) for image_id in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        files = self.files[index]
        image = _read_image(files["image"])
        size = tuple(image.shape[1:])
        label_map = _read_label_map(files["labelmap"], size) if "labelmap" in files else None
        sample = {"image": image}
        for task in self.tasks:
            if task == "segmentation":
                sample[task] = _read_segmentation(files["semseg"], size)
            elif task == "parts":
                sample[task] = torch.from_numpy(read_person_parts(files["parts"], size))
            elif task == "saliency":
                grey = _read_png(files["saliency"], size, channels=1)
                sample[task] = torch.from_numpy(grey / 255 > 0.5).float()[None]
            elif task == "normals":
                sample[task] = _read_normals(files["normals"], size, label_map)
            else:
                sample[task] = torch.from_numpy(label_boundaries(label_map)).float()[None]
        if self.transform is not None:
            sample = unwrap_sample(self.transform(wrap_sample(sample, KINDS)))
            if "normals" in sample:
                sample["normals"] = unit_normals(sample["normals"])
        return sample

    def _files(self, image_id: str) -> dict[str, Path]:
        root = self.root
        files = {"image": root / "JPEGImages" / f"{image_id}.jpg"}
        needed = {name for task in self.tasks for name in _FILES[task]}
        if "semseg" in needed:
            voc = root / "semseg" / "VOC12" / f"{image_id}.png"
            files["semseg"] = voc if voc.is_file() else (
                root / "semseg" / "pascal-context" / f"{image_id}.png")
        for name, (folder, suffix) in _LOCATIONS.items():
            if name in needed:
                files[name] = root / folder / f"{image_id}{suffix}"
        for path in files.values():
            if not path.is_file():
                where = " (or semseg/VOC12/)" if path.parent.name == "pascal-context" else ""
                raise FileNotFoundError(f"PASCAL-Context image {image_id}: {path}{where} is "
                                        "missing")
        return files


def read_split(root: str | Path, split: str) -> list[str]:
    """The image ids listed in ``<root>/ImageSets/Context/<split>.txt``."""
    root = Path(root)
    if split not in ("train", "val"):
        raise ValueError(f"unknown PASCAL-Context split {split!r}; expected 'train' or 'val'")
    if not root.is_dir():
        raise FileNotFoundError(f"PASCAL-Context root {root} is not a folder; expected the "
                                "PASCAL_MT layout (JPEGImages/, ImageSets/Context/, ...)")
    path = root / "ImageSets" / "Context" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"PASCAL-Context split list {path} is missing")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_person_parts(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Human-parts label map (int64 ``size``) from a PASCAL-Part annotation file.

    Part masks of every person object (``class_ind`` 15) are painted in file order with their
    :data:`PERSON_PARTS` class over a background of 0; without any painted part the whole map
    is -1 (ignored).
    """
    target = np.zeros(size, dtype=np.int64)
    for obj in _annotation_objects(path):
        if int(obj["class_ind"].item()) != PERSON_CLASS:
            continue
        parts = obj["parts"]
        for part in parts.ravel() if parts.dtype.names else ():
            name = str(part["part_name"].item())
            if name not in PERSON_PARTS:
                raise ValueError(f"{path}: unknown person part {name!r}; expected one of "
                                 f"{sorted(PERSON_PARTS)}")
            mask = _checked_shape(part["mask"], size, path).astype(bool)
            target[mask] = PERSON_PARTS[name]
    if not target.any():
        target.fill(-1)
    return target


def images_with_person(root: str | Path, ids: Sequence[str]) -> list[str]:
    """The ids among ``ids`` whose ``human_parts/<id>.mat`` has a non-empty person object.

    The reference trains and evaluates the single-task human-parts model on these images only.
    Reads every annotation file (no cache is written into ``root``).
    """
    folder = Path(root) / "human_parts"
    return [i for i in ids if any(
        int(obj["class_ind"].item()) == PERSON_CLASS and np.any(obj["mask"])
        for obj in _annotation_objects(folder / f"{i}.mat"))]


def unit_normals(normals: Tensor, min_norm: float = 0.5) -> Tensor:
    """``normals`` (3, H, W) scaled to unit length; vectors shorter than ``min_norm`` (invalid
    zeros, or mostly-invalid blends after interpolation) become the all-zero invalid vector."""
    norm = normals.square().sum(dim=0, keepdim=True).sqrt()  # much faster than norm(dim=0)
    return torch.where(norm >= min_norm, normals / norm.clamp_min(min_norm), 0.0)


class PascalContextDataModule(BenchmarkDataModule):
    """PASCAL-Context (``PASCAL_MT`` layout) with any subset of :data:`TASKS`.

    Splits: ``test`` is the public ``val`` list (the test split of the literature); ``val`` is
    a seeded ``val_fraction`` of the ``train`` list (:func:`carve_validation`), loaded without
    augmentation; ``train`` is the rest.

    Args:
        root: the ``PASCAL_MT`` folder.
        tasks: task names, a subset of :data:`TASKS`.
        image_size: side of the square training / evaluation resolution (512 in the reference).
        augment: flip, scale 0.75-1.25 and rotation ±20° on training images.
        val_fraction: fraction of ``train`` held out for validation.
        person_images_only: keep only images with a person (:func:`images_with_person`);
            ``None``: only when ``tasks`` is just ``("parts",)``, as the reference does.
        batch_size, num_workers, seed: see :class:`BenchmarkDataModule`.
    """

    def __init__(
        self,
        root: str,
        tasks: tuple[str, ...] = TASKS,
        image_size: int = 512,
        augment: bool = True,
        val_fraction: float = 0.1,
        person_images_only: bool | None = None,
        batch_size: int = 6,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.root = root
        self.task_names = _checked_tasks(tasks)
        self.image_size = image_size
        self.augment = augment
        self.val_fraction = val_fraction
        self.person_images_only = (tuple(self.task_names) == ("parts",)
                                   if person_images_only is None else person_images_only)

    @property
    def tasks(self) -> list[Task]:
        builders: dict[str, Callable[[], Task]] = {
            "segmentation": lambda: SegmentationTask("segmentation", len(SEGMENTATION_CLASSES)),
            "parts": lambda: SegmentationTask("parts", len(PART_CLASSES)),
            "saliency": lambda: SaliencyTask("saliency"),
            "normals": lambda: NormalsTask("normals"),
            "edges": lambda: EdgeTask("edges", pos_weight=0.95),
        }
        return [builders[name]() for name in self.task_names]

    def build_splits(self) -> dict[str, Dataset]:
        train_ids, test_ids = read_split(self.root, "train"), read_split(self.root, "val")
        if self.person_images_only:
            train_ids = images_with_person(self.root, train_ids)
            test_ids = images_with_person(self.root, test_ids)
        train, val = carve_validation(len(train_ids), self.val_fraction, self.seed)
        evaluate = pascal_transform(self.image_size)
        augment = pascal_transform(self.image_size, augment=True) if self.augment else evaluate

        def split(name: str, ids: Sequence[str], transform: v2.Compose) -> PascalContext:
            return PascalContext(self.root, name, self.task_names, transform, ids)

        return {"train": split("train", [train_ids[i] for i in train], augment),
                "val": split("train", [train_ids[i] for i in val], evaluate),
                "test": split("val", test_ids, evaluate)}


def _checked_tasks(tasks: Sequence[str]) -> list[str]:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"PASCAL-Context tasks must be distinct names from {TASKS}, got "
                         f"{list(tasks)}")
    return list(tasks)


def _read_image(path: Path) -> Tensor:
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB")).copy()
    except OSError as error:
        raise ValueError(f"cannot read PASCAL-Context image {path}: {error}") from None
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


def _read_png(path: Path, size: tuple[int, ...], channels: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image)
    except OSError as error:
        raise ValueError(f"cannot read PASCAL-Context file {path}: {error}") from None
    expected = (*size, channels) if channels > 1 else size
    if pixels.dtype != np.uint8 or pixels.shape != expected:
        raise ValueError(f"{path}: expected an 8-bit PNG of shape {expected} (image size, "
                         f"{channels} channel{'s' if channels > 1 else ''}), got "
                         f"{pixels.dtype} {pixels.shape}")
    return pixels


def _read_segmentation(path: Path, size: tuple[int, ...]) -> Tensor:
    label = _read_png(path, size, channels=1).astype(np.int64)
    ignore = label == 255
    unknown = np.unique(label[~ignore & (label >= len(SEGMENTATION_CLASSES))])
    if unknown.size:
        raise ValueError(f"{path}: class ids must be 0-{len(SEGMENTATION_CLASSES) - 1} or 255 "
                         f"(ignore), found {unknown.tolist()}")
    label[ignore] = -1
    return torch.from_numpy(label)


def _read_normals(path: Path, size: tuple[int, ...], label_map: np.ndarray) -> Tensor:
    decoded = 2 * _read_png(path, size, channels=3).astype(np.float32) / 255 - 1
    decoded[~np.isin(label_map, _NORMALS_VALID)] = 0
    return unit_normals(torch.from_numpy(decoded).permute(2, 0, 1))


def _load_mat(path: Path, variable: str) -> np.ndarray:
    try:
        contents = scipy.io.loadmat(path, variable_names=[variable])
    except (OSError, ValueError, TypeError, scipy.io.matlab.MatReadError) as error:
        raise ValueError(f"cannot read PASCAL-Context file {path}: {error}") from None
    if variable not in contents:
        raise ValueError(f"{path}: no variable {variable!r} in this .mat file")
    return contents[variable]


def _read_label_map(path: Path, size: tuple[int, ...]) -> np.ndarray:
    label_map = _load_mat(path, "LabelMap")
    if not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"{path}: LabelMap must hold integer class ids, got {label_map.dtype}")
    return _checked_shape(label_map, size, path)


def _annotation_objects(path: Path) -> list[np.void]:
    anno = _load_mat(path, "anno")
    try:
        objects = anno[0, 0]["objects"]
        return list(objects.ravel()) if objects.size else []
    except (IndexError, ValueError) as error:
        raise ValueError(f"{path}: expected the PASCAL-Part struct anno.objects ({error})"
                         ) from None


def _checked_shape(array: np.ndarray, size: tuple[int, ...], path: Path) -> np.ndarray:
    if array.shape != tuple(size):
        raise ValueError(f"{path}: array of shape {array.shape} does not match the image size "
                         f"{tuple(size)}")
    return array
