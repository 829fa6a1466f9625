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
  Laplacian, thinned to one pixel (:func:`label_boundaries`), as the reference.

The public layout has no validation split: its ``val`` list is the test split of the
literature, so :class:`PascalContextDataModule` carves a validation subset out of ``train``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from tasknorm.data.datamodules import BenchmarkDataModule, carve_validation
from tasknorm.data.transforms import Normals, unwrap_sample, wrap_sample
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
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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
            :func:`pascal_transform`); normals are re-normalised afterwards
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


def label_boundaries(label_map: np.ndarray) -> np.ndarray:
    """Edge map of a label map: pixels where the 4-neighbour Laplacian (borders reflected,
    OpenCV's default) is non-zero, thinned to one-pixel-wide lines by :func:`thin`.

    Example:
        >>> label_map = np.zeros((4, 6), dtype=np.uint16)
        >>> label_map[:, 3:] = 7
        >>> label_boundaries(label_map).astype(int)
        array([[0, 0, 0, 0, 0, 0],
               [0, 0, 1, 0, 0, 0],
               [0, 0, 1, 0, 0, 0],
               [0, 0, 1, 0, 0, 0]])
    """
    values = np.asarray(label_map, dtype=np.int64)
    padded = np.pad(values, 1, mode="reflect")
    laplacian = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
                 - 4 * values)
    return thin(laplacian != 0)


def _thinning_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two sub-iterations of Guo and Hall's parallel thinning (1989;
    algorithm A1 of Lam, Lee and Suen's 1992 survey), indexed by the 8-neighbour code whose
    bit k is neighbour x(k+1); x1..x8 run counter-clockwise from the east neighbour."""
    codes = np.arange(256)
    x = [None, *((codes >> k) & 1 for k in range(8))]
    x.append(x[1])
    crossings = sum((1 - x[2 * i - 1]) & (x[2 * i] | x[2 * i + 1]) for i in range(1, 5))
    n1 = sum(x[2 * k - 1] | x[2 * k] for k in range(1, 5))
    n2 = sum(x[2 * k] | x[2 * k + 1] for k in range(1, 5))
    common = (crossings == 1) & (np.minimum(n1, n2) >= 2) & (np.minimum(n1, n2) <= 3)
    first = common & (((x[2] | x[3] | (1 - x[8])) & x[1]) == 0)
    second = common & (((x[6] | x[7] | (1 - x[4])) & x[5]) == 0)
    return first, second


_THINNING_TABLES = _thinning_tables()
_NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin the foreground of a boolean ``mask`` to one-pixel-wide, 8-connected lines.

    Guo-Hall two-subiteration thinning until nothing changes, pixels outside the image counting
    as background; the same algorithm as ``skimage.morphology.thin`` (which the reference
    uses), written here to avoid a scikit-image dependency for one function.

    Example:
        >>> bar = np.zeros((4, 6), dtype=bool)
        >>> bar[1:3, 1:5] = True
        >>> thin(bar).astype(int)
        array([[0, 0, 0, 0, 0, 0],
               [0, 0, 0, 0, 0, 0],
               [0, 1, 1, 1, 0, 0],
               [0, 0, 0, 0, 0, 0]])
    """
    height, width = mask.shape
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    inner = padded[1:-1, 1:-1]
    changed = True
    while changed:
        changed = False
        for table in _THINNING_TABLES:
            code = np.zeros((height, width), dtype=np.uint8)
            for bit, (dy, dx) in enumerate(_NEIGHBOURS):
                shifted = padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
                code |= shifted.astype(np.uint8) << bit
            delete = inner & table[code]
            if delete.any():
                inner[delete] = False
                changed = True
    return inner.copy()


def unit_normals(normals: Tensor, min_norm: float = 0.5) -> Tensor:
    """``normals`` (3, H, W) scaled to unit length; vectors shorter than ``min_norm`` (invalid
    zeros, or mostly-invalid blends after interpolation) become the all-zero invalid vector."""
    norm = normals.square().sum(dim=0, keepdim=True).sqrt()  # much faster than norm(dim=0)
    return torch.where(norm >= min_norm, normals / norm.clamp_min(min_norm), 0.0)


class RandomScaleRotate(v2.Transform):
    """Rotate and zoom about the image centre by random amounts; the output keeps its size.

    The reference's ``ScaleNRotate``: angle uniform in ``degrees`` (counter-clockwise
    positive), zoom uniform in ``scales`` (> 1 zooms in). Images and normals are resampled
    bilinearly, labels and masks by nearest neighbour. Uncovered border pixels (zoom out, rotated
    corners) are black in the image and ignored by every task: -1 in integer label maps, NaN in
    float masks (saliency, edges), the all-zero vector in normals. Normal vectors are rotated
    with the image: for a counter-clockwise angle θ and y pointing down,
    ``(x, y) -> (x cos θ + y sin θ, -x sin θ + y cos θ)``.

    Args:
        degrees: ``d`` for angles in ``[-d, d]``, or a ``(low, high)`` range.
        scales: ``(low, high)`` range of zoom factors.
    """

    def __init__(self, degrees: float | tuple[float, float] = 20.0,
                 scales: tuple[float, float] = (0.75, 1.25)) -> None:
        super().__init__()
        low, high = (-degrees, degrees) if isinstance(degrees, int | float) else degrees
        if low > high or not 0 < scales[0] <= scales[1]:
            raise ValueError(f"need degrees low <= high and 0 < scale low <= high, got degrees "
                             f"{degrees} and scales {scales}")
        self.degrees = (float(low), float(high))
        self.scales = (float(scales[0]), float(scales[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"angle": float(torch.empty(()).uniform_(*self.degrees)),
                "scale": float(torch.empty(()).uniform_(*self.scales))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        angle = params["angle"]
        # F.affine rotates clockwise for positive angles.
        geometry = {"angle": -angle, "translate": [0.0, 0.0], "scale": params["scale"],
                    "shear": [0.0, 0.0]}
        if isinstance(inpt, Normals):
            x, y, z = inpt.as_subclass(Tensor)
            cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            rotated = torch.stack([x * cos + y * sin, -x * sin + y * cos, z])
            warped = F.affine(rotated, **geometry, interpolation=v2.InterpolationMode.BILINEAR)
            return tv_tensors.wrap(warped, like=inpt)
        if isinstance(inpt, tv_tensors.Mask):
            return F.affine(inpt, **geometry, fill=math.nan if inpt.is_floating_point() else -1)
        if isinstance(inpt, tv_tensors.Image):
            return F.affine(inpt, **geometry, interpolation=v2.InterpolationMode.BILINEAR)
        return inpt

    # torchvision < 0.21 calls the hooks by their former private names.
    _get_params = make_params
    _transform = transform


def pascal_transform(image_size: int = 512, augment: bool = False, flip: float = 0.5,
                     degrees: float | tuple[float, float] = 20.0,
                     scales: tuple[float, float] = (0.75, 1.25),
                     normalize: bool = True) -> v2.Compose:
    """The reference's PASCAL-Context pipeline on wrapped samples.

    Training (``augment``): horizontal flip with probability ``flip``,
    :class:`RandomScaleRotate`, resize to ``image_size`` × ``image_size``; evaluation: the
    resize only. Both end with ImageNet mean/std normalisation of the image (``normalize``).

    Example:
        >>> [type(step).__name__ for step in pascal_transform(64, augment=True).transforms]
        ['RandomHorizontalFlip', 'RandomScaleRotate', 'Resize', 'Normalize']
    """
    steps: list[v2.Transform] = []
    if augment:
        steps += [v2.RandomHorizontalFlip(p=flip), RandomScaleRotate(degrees, scales)]
    steps.append(v2.Resize((image_size, image_size), antialias=True))
    if normalize:
        steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return v2.Compose(steps)


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


def write_tiny_pascal_context(root: str | Path, sizes: tuple[int, int] = (6, 3),
                              height: int = 20, width: int = 28, seed: int = 0) -> Path:
    """Write a tiny PASCAL-Context in the ``PASCAL_MT`` layout under ``root``; return ``root``.

    ``sizes`` images in the ``train`` and ``val`` lists, ``height`` × ``width`` pixels, with
    blocky random contents: JPEG images, grey 8-bit semantic PNGs (classes 0-20 and some 255)
    under ``semseg/pascal-context/``, RGB normal PNGs, grey saliency PNGs, ``LabelMap`` .mat
    files (uint16, classes inside and outside :data:`NORMALS_VALID_CLASSES`) and PASCAL-Part
    .mat files in the real struct layout (``anno.objects`` with ``class``, ``class_ind``,
    ``mask``, ``parts`` = ``part_name`` + ``mask``). Image ``i`` cycles through four cases: no
    person (a dog), a person with four parts, a person without part annotations (plus a bird),
    and two people with four parts each. ``height`` must be at least 8 so that every part
    mask is non-empty.
    """
    if height < 8 or width < 2:
        raise ValueError(f"tiny PASCAL-Context images need height >= 8 and width >= 2, got "
                         f"{height}×{width}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    folders = ("JPEGImages", "ImageSets/Context", "semseg/pascal-context", "human_parts",
               "normals_distill", "sal_distill", "pascal-context/trainval")
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"2008_{i:06d}" for i in range(1, sum(sizes) + 1)]
    for split, chunk in (("train", ids[:sizes[0]]), ("val", ids[sizes[0]:])):
        (root / "ImageSets/Context" / f"{split}.txt").write_text("".join(f"{i}\n" for i in chunk))

    def blocks(values: Sequence[int] | np.ndarray, channels: int = 0) -> np.ndarray:
        shape = (-(-height // 4), -(-width // 4), *((channels,) if channels else ()))
        coarse = rng.choice(np.asarray(values), size=shape)
        return coarse.repeat(4, axis=0).repeat(4, axis=1)[:height, :width]

    label_pool = (0, 2, 98, 158, 284, 427, 440)  # in and outside NORMALS_VALID_CLASSES
    for index, image_id in enumerate(ids):
        pixels = np.clip(blocks(range(40, 216), 3) + rng.integers(-15, 16, (height, width, 3)),
                         0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        semantic = blocks(range(21)).astype(np.uint8)
        semantic[rng.random((height, width)) < 0.05] = 255
        Image.fromarray(semantic).save(root / "semseg/pascal-context" / f"{image_id}.png")
        vectors = rng.normal(size=(height // 4 + 1, width // 4 + 1, 3))
        vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
        vectors = vectors.repeat(4, axis=0).repeat(4, axis=1)[:height, :width]
        encoded = np.round((vectors + 1) / 2 * 255).astype(np.uint8)
        Image.fromarray(encoded).save(root / "normals_distill" / f"{image_id}.png")
        grey = blocks([0, 60, 127, 128, 200, 255]).astype(np.uint8)
        Image.fromarray(grey).save(root / "sal_distill" / f"{image_id}.png")
        scipy.io.savemat(root / "pascal-context/trainval" / f"{image_id}.mat",
                         {"LabelMap": blocks(label_pool).astype(np.uint16)})
        objects = _tiny_objects(index % 4, height, width, rng)
        write_part_annotation(root / "human_parts" / f"{image_id}.mat", image_id, objects)
    return root


PartObject = tuple[str, int, np.ndarray, Sequence[tuple[str, np.ndarray]]]
"""``(class name, class_ind, object mask, [(part name, part mask), ...])``."""


def write_part_annotation(path: str | Path, image_id: str, objects: Sequence[PartObject]) -> None:
    """Write a PASCAL-Part annotation file: struct ``anno`` with ``imname`` and a 1 × N
    ``objects`` struct array (``class``, ``class_ind``, ``mask``, ``parts``; ``parts`` a 1 × M
    struct array of ``part_name`` and ``mask``, or an empty 0 × 0 array)."""
    records = np.empty((1, len(objects)), dtype=[(f, "O") for f in (
        "class", "class_ind", "mask", "parts")])
    for i, (name, class_ind, mask, parts) in enumerate(objects):
        part_records: np.ndarray = np.zeros((0, 0))
        if parts:
            part_records = np.empty((1, len(parts)), dtype=[("part_name", "O"), ("mask", "O")])
            for j, (part_name, part_mask) in enumerate(parts):
                part_records[0, j] = (part_name, part_mask.astype(np.uint8))
        records[0, i] = (name, np.array([[float(class_ind)]]), mask.astype(np.uint8),
                         part_records)
    scipy.io.savemat(path, {"anno": {"imname": image_id, "objects": records}})


def _tiny_objects(case: int, height: int, width: int,
                  rng: np.random.Generator) -> list[PartObject]:
    def box() -> np.ndarray:
        mask = np.zeros((height, width), dtype=bool)
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        mask[top:top + height // 2, left:left + width // 2] = True
        return mask

    def person() -> PartObject:
        """A box-shaped person whose rows are split into four bands, one per random part."""
        body = box()
        names = rng.choice(sorted(PERSON_PARTS), size=4, replace=False)
        bands = np.array_split(np.flatnonzero(body.any(axis=1)), len(names))
        parts = []
        for name, rows in zip(names, bands, strict=True):
            mask = np.zeros_like(body)
            mask[rows] = body[rows]
            parts.append((str(name), mask))
        return ("person", PERSON_CLASS, body, parts)

    if case == 0:
        return [("dog", 12, box(), [])]
    if case == 1:
        return [person()]
    if case == 2:
        return [("bird", 3, box(), []), ("person", PERSON_CLASS, box(), [])]
    return [person(), person()]


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
        raise OSError(f"cannot read PASCAL-Context image {path}: {error}") from None
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


def _read_png(path: Path, size: tuple[int, ...], channels: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image)
    except OSError as error:
        raise OSError(f"cannot read PASCAL-Context file {path}: {error}") from None
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
        raise OSError(f"cannot read PASCAL-Context file {path}: {error}") from None
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
