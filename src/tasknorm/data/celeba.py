"""CelebA: 40 binary face attributes, read from the official release layout.

Layout under ``root`` (the official archive, unpacked)::

    Img/img_align_celeba/000001.jpg ...     (or the PNG copy Img/img_align_celeba_png/000001.png)
    Anno/list_attr_celeba.txt               image count; attribute names; "<file> ±1 ..." rows
    Eval/list_eval_partition.txt            "<file> 0|1|2" rows (train / val / test)

Images are resized straight to ``image_size`` (64×64 by default, aspect ratio not kept, PIL
bilinear: the FAMO protocol) and returned as float in [0, 1] without normalisation or
augmentation. Each attribute is one task whose target is an int64 scalar, 1 for a ``1`` in the
attribute file and 0 for a ``-1``; task names come from the attribute names in the file
(:func:`attribute_task_name`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from tasknorm.data.datamodules import BenchmarkDataModule
from tasknorm.tasks import BinaryTask, Task

ATTRIBUTE_FILE = "Anno/list_attr_celeba.txt"
PARTITION_FILE = "Eval/list_eval_partition.txt"
IMAGE_DIRS = (("Img/img_align_celeba", ".jpg"), ("Img/img_align_celeba_png", ".png"))
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)
"""The attribute names of the official release, in file order (used by the tiny writer only;
the loader reads the names from the attribute file)."""


def attribute_task_name(attribute: str) -> str:
    """The task name of a CelebA attribute: lower-cased, ``a``-prefixed if it starts with a digit.

    Example:
        >>> attribute_task_name("5_o_Clock_Shadow"), attribute_task_name("Smiling")
        ('a5_o_clock_shadow', 'smiling')
    """
    name = attribute.lower()
    return f"a{name}" if name[:1].isdigit() else name


@dataclass(frozen=True)
class CelebAAnnotations:
    """The parsed attribute and partition files of one CelebA root.

    Args:
        attributes: attribute names, in file order.
        files: image file names (as listed, e.g. ``000001.jpg``), one per row.
        labels: uint8 (rows, attributes) array of 0/1 labels (``-1`` in the file is 0).
        partition: uint8 (rows,) array of split codes, 0 / 1 / 2 = train / val / test.
    """

    attributes: tuple[str, ...]
    files: tuple[str, ...]
    labels: np.ndarray
    partition: np.ndarray


def read_attribute_names(root: str | Path) -> tuple[str, ...]:
    """The attribute names in the header (second line) of ``<root>/Anno/list_attr_celeba.txt``."""
    path = _existing(Path(root), ATTRIBUTE_FILE)
    with path.open() as f:
        f.readline()
        names = tuple(f.readline().split())
    return _checked_names(names, path)


def read_annotations(root: str | Path) -> CelebAAnnotations:
    """Parse the attribute and partition files of a CelebA ``root``.

    Raises:
        FileNotFoundError: ``root`` or one of the two files is missing.
        ValueError: a malformed line (naming file and line number), or partition rows that do
            not list the same files in the same order as the attribute rows.
    """
    root = Path(root)
    attr_path, part_path = _existing(root, ATTRIBUTE_FILE), _existing(root, PARTITION_FILE)
    lines = attr_path.read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{attr_path}: expected an image count line and an attribute-name line")
    names = _checked_names(tuple(lines[1].split()), attr_path)
    body = lines[2:]
    while body and not body[-1].strip():
        body.pop()
    rows = [line.split() for line in body]
    bad = next((i for i, fields in enumerate(rows) if len(fields) != len(names) + 1), None)
    if bad is None and rows:
        values = np.array(rows)[:, 1:]
        positive = values == "1"
        invalid = ~(positive | (values == "-1"))
        bad = int(np.flatnonzero(invalid.any(axis=1))[0]) if invalid.any() else None
    if bad is not None:
        raise ValueError(f"{attr_path} line {bad + 3}: expected a file name and {len(names)} "
                         f"values in {{1, -1}}, got {body[bad]!r}")
    if not rows:
        raise ValueError(f"{attr_path}: no attribute rows after the two header lines")
    count = lines[0].strip()
    if count != str(len(rows)):
        raise ValueError(f"{attr_path}: the first line announces {count!r} images but "
                         f"{len(rows)} attribute rows follow")
    files = tuple(fields[0] for fields in rows)
    partition = _read_partition(part_path, files)
    return CelebAAnnotations(names, files, positive.astype(np.uint8), partition)


class CelebA(Dataset):
    """One official split of CelebA; items are ``{"image": (3, H, W) float in [0, 1],
    "<attribute task>": int64 0/1 scalar, ...}``.

    Args:
        root: folder holding ``Img/``, ``Anno/`` and ``Eval/`` (module docstring).
        split: ``"train"``, ``"val"`` or ``"test"`` (partition codes 0, 1, 2).
        attributes: attributes to load, by file name (``"Smiling"``) or task name
            (``"smiling"``); ``None`` loads all of them, in file order.
        image_size: output size, an int for a square or ``(height, width)``.
        transform: optional callable applied to each sample dict.
        annotations: the already-parsed files of ``root`` (saves parsing them once per split).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        attributes: Sequence[str] | None = None,
        image_size: int | tuple[int, int] = 64,
        transform: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
        annotations: CelebAAnnotations | None = None,
    ) -> None:
        if split not in SPLIT_CODES:
            raise ValueError(f"unknown CelebA split {split!r}; expected one of {list(SPLIT_CODES)}")
        self.root = Path(root)
        annotations = annotations or read_annotations(self.root)
        self.image_dir, suffix = _image_dir(self.root)
        columns = select_attributes(annotations.attributes, attributes)
        rows = np.flatnonzero(annotations.partition == SPLIT_CODES[split])
        self.files = [Path(annotations.files[r]).stem + suffix for r in rows]
        self.tasks = [attribute_task_name(annotations.attributes[c]) for c in columns]
        self.labels = torch.from_numpy(annotations.labels[np.ix_(rows, columns)]).long()
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.size = (width, height)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = {"image": self.load_image(index)}
        sample.update(zip(self.tasks, self.labels[index], strict=True))
        return self.transform(sample) if self.transform else sample

    def load_image(self, index: int) -> Tensor:
        """Image ``index`` resized to the dataset's size: float32 (3, H, W) in [0, 1]."""
        path = self.image_dir / self.files[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB").resize(self.size, Image.Resampling.BILINEAR)
        except FileNotFoundError:
            raise FileNotFoundError(f"CelebA image {path} is missing (listed in "
                                    f"{self.root / ATTRIBUTE_FILE})") from None
        except OSError as error:
            raise ValueError(f"cannot read CelebA image {path}: {error}") from None
        pixels = torch.from_numpy(np.asarray(image).copy())
        return pixels.permute(2, 0, 1).float() / 255


def select_attributes(names: Sequence[str], attributes: Sequence[str] | None) -> list[int]:
    """Column indices in ``names`` of ``attributes`` (file or task names; ``None``: all).

    Example:
        >>> select_attributes(["5_o_Clock_Shadow", "Smiling", "Young"], ["young", "Smiling"])
        [2, 1]
    """
    if attributes is None:
        return list(range(len(names)))
    lookup = {n: i for i, n in enumerate(names)} | {
        attribute_task_name(n): i for i, n in enumerate(names)}
    unknown = [a for a in attributes if a not in lookup]
    if unknown:
        raise ValueError(f"unknown CelebA attributes {unknown}; expected names from {list(names)}")
    columns = [lookup[a] for a in attributes]
    if len(set(columns)) != len(columns) or not columns:
        raise ValueError(f"CelebA attributes must be distinct and non-empty, got "
                         f"{list(attributes)}")
    return columns


class CelebADataModule(BenchmarkDataModule):
    """CelebA with the official train / val / test partition; one binary task per attribute.

    Args:
        root: the CelebA folder (see :mod:`tasknorm.data.celeba`).
        attributes: attributes used as tasks (file or task names); ``None``: all 40.
        image_size: square size images are resized to (64 in FAMO; 32 or 64 in MGDA).
        batch_size, num_workers, seed: see :class:`BenchmarkDataModule`.
    """

    def __init__(
        self,
        root: str,
        attributes: tuple[str, ...] | None = None,
        image_size: int = 64,
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.root = root
        self.attributes = attributes
        self.image_size = image_size

    @property
    def tasks(self) -> list[Task]:
        names = read_attribute_names(self.root)
        columns = select_attributes(names, self.attributes)
        return [BinaryTask(attribute_task_name(names[c])) for c in columns]

    def build_splits(self) -> dict[str, Dataset]:
        annotations = read_annotations(self.root)
        return {split: CelebA(self.root, split, self.attributes, self.image_size,
                              annotations=annotations) for split in SPLIT_CODES}


def write_tiny_celeba(root: str | Path, sizes: tuple[int, int, int] = (6, 2, 2),
                      seed: int = 0) -> Path:
    """Write a tiny CelebA in the official layout under ``root`` and return ``root``.

    Real 178×218 JPEGs (a random colour per image plus noise), the 40 official attribute names,
    random ±1 attributes formatted as in the release (values right-aligned in two columns, so
    that a ``1`` follows two spaces), and the partition file with ``sizes`` train / val / test
    rows in file order, as in the release.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    total = sum(sizes)
    image_dir = root / IMAGE_DIRS[0][0]
    image_dir.mkdir(parents=True, exist_ok=True)
    files = [f"{i + 1:06d}.jpg" for i in range(total)]
    for name in files:
        colour = rng.integers(30, 226, size=3)
        noise = rng.integers(-20, 21, size=(218, 178, 3))
        pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(image_dir / name, quality=95)
    values = rng.choice([-1, 1], size=(total, len(ATTRIBUTES)))
    rows = [f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(files, values,
                                                                               strict=True)]
    (root / "Anno").mkdir(parents=True, exist_ok=True)
    (root / ATTRIBUTE_FILE).write_text("\n".join([str(total), " ".join(ATTRIBUTES) + " ", *rows])
                                       + "\n")
    codes = np.repeat([0, 1, 2], sizes)
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    (root / PARTITION_FILE).write_text(
        "".join(f"{name} {code}\n" for name, code in zip(files, codes, strict=True)))
    return root


def _existing(root: Path, relative: str) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(f"CelebA root {root} is not a folder; expected Img/, Anno/ and "
                                "Eval/ from the official release inside it")
    path = root / relative
    if not path.is_file():
        raise FileNotFoundError(f"CelebA file {path} is missing (expected <root>/{relative})")
    return path


def _checked_names(names: tuple[str, ...], path: Path) -> tuple[str, ...]:
    tasks = [attribute_task_name(n) for n in names]
    if not names or len(set(tasks)) != len(tasks) or not all(t.isidentifier() for t in tasks):
        raise ValueError(f"{path} line 2: expected distinct attribute names, got {list(names)}")
    return names


def _read_partition(path: Path, files: tuple[str, ...]) -> np.ndarray:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if len(rows) != len(files):
        raise ValueError(f"{path} lists {len(rows)} images but the attribute file lists "
                         f"{len(files)}; the two files must list the same images in the same order")
    partition = np.empty(len(rows), dtype=np.uint8)
    for i, (fields, expected) in enumerate(zip(rows, files, strict=True)):
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{path} line {i + 1}: expected '<file> 0|1|2', got "
                             f"{' '.join(fields)!r}")
        if fields[0] != expected:
            raise ValueError(f"{path} line {i + 1} lists {fields[0]} where the attribute file "
                             f"lists {expected}; the two files must list the same images in the "
                             "same order")
        partition[i] = int(fields[1])
    return partition


def _image_dir(root: Path) -> tuple[Path, str]:
    for folder, suffix in IMAGE_DIRS:
        if (root / folder).is_dir():
            return root / folder, suffix
    raise FileNotFoundError(f"CelebA images not found: neither {root / IMAGE_DIRS[0][0]} nor "
                            f"{root / IMAGE_DIRS[1][0]} is a folder")
