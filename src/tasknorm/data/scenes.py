"""Rendered scenes: the embedded dense default, a dataset of procedurally rendered indoor rooms
with exact segmentation, depth and normals (:mod:`tasknorm.data.scene_render` renders them).

A :class:`ScenesSpec` determines a dataset. :func:`render_scenes` writes it in the mtan NYUv2
``.npy`` layout (``val/`` is the test split), so :class:`tasknorm.data.nyuv2.NYUv2` reads it,
with a ``scenes.json`` describing the spec. Every image is determined by ``(seed, split,
index)``, so a dataset is bit-identical for the same spec. :func:`scenes_root` keeps rendered
datasets in a cache folder and :class:`RenderedScenesDataModule` serves them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tasknorm.data.numbered import SPLIT_FOLDERS
from tasknorm.data.nyuv2 import NYUv2DataModule
from tasknorm.data.scene_render import CLASSES, render, sample_scene
from tasknorm.io import write_json

FORMAT_VERSION = 1
KINDS = ("image", "label", "depth", "normal")


@dataclass(frozen=True)
class ScenesSpec:
    """Everything that determines a rendered-scenes dataset.

    The default (600 train / 200 test images of 64×96) renders in about 15 s and keeps the
    rendered-scenes comparison (4 architectures × 3 seeds) within minutes on 2 CPU cores; 64 and
    96 are multiples of 32, so encoders that halve the resolution 5 times (SegNet) fit exactly.

    Args:
        sizes: number of train and test images.
        height: image height in pixels.
        width: image width in pixels.
        seed: seed of every scene and its appearance.
        fov: horizontal field of view in degrees (square pixels, principal point at the centre).
        max_objects: each room gets between ``min(2, max_objects)`` and this many primitives
            (fewer if no free spot in view is found).
        dropout: probability that an image has an invalid (sensor dropout) region.

    Example:
        >>> spec = ScenesSpec(sizes=(4, 2), height=24, width=32)
        >>> spec.num_classes, round(spec.focal, 3)
        (7, 27.713)
    """

    sizes: tuple[int, int] = (600, 200)
    height: int = 64
    width: int = 96
    seed: int = 0
    fov: float = 60.0
    max_objects: int = 8
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if len(self.sizes) != 2 or min(self.sizes) < 1:
            raise ValueError(f"sizes must be two positive split sizes (train, test), got "
                             f"{self.sizes}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if min(self.height, self.width) < 8:
            raise ValueError(f"images must be at least 8×8 pixels, got {self.height}×{self.width}")
        if not 10 <= self.fov <= 150:
            raise ValueError(f"fov must be in [10, 150] degrees, got {self.fov}")
        if self.max_objects < 0 or not 0 <= self.dropout <= 1:
            raise ValueError(f"need max_objects >= 0 and dropout in [0, 1], got "
                             f"{self.max_objects} and {self.dropout}")

    @property
    def num_classes(self) -> int:
        return len(CLASSES)

    @property
    def focal(self) -> float:
        """Focal length in pixels (``fx = fy``); the principal point is the image centre."""
        return float(self.width / 2 / np.tan(np.radians(self.fov) / 2))

    def key(self) -> str:
        """Short hash naming the cache folder of this spec."""
        text = json.dumps({**asdict(self), "format": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def render_scenes(root: str | Path, spec: ScenesSpec) -> Path:
    """Render ``spec`` into the new folder ``root`` (mtan NYUv2 layout plus ``scenes.json``).

    Everything is written into a temporary sibling folder that is renamed to ``root`` at the end,
    so an interrupted render never leaves a partial dataset behind.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     root = render_scenes(Path(tmp) / "scenes", ScenesSpec((2, 1), 16, 24))
        ...     sorted(p.name for p in (root / "val").iterdir())
        ['depth', 'image', 'label', 'normal']
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"cannot render scenes into {root}: it already exists")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        for index, folder in enumerate(SPLIT_FOLDERS.values()):
            for kind in KINDS:
                (tmp / folder / kind).mkdir(parents=True)
            for i in range(spec.sizes[index]):
                rng = np.random.default_rng([spec.seed, index, i])
                scene = sample_scene(rng, spec.max_objects, spec.fov)
                arrays = render(scene, spec.height, spec.width, spec.fov, rng, spec.dropout)
                for kind in KINDS:
                    np.save(tmp / folder / kind / f"{i}.npy", arrays[kind])
        write_json(tmp / "scenes.json", _description(spec))
        try:
            os.rename(tmp, root)
        except OSError as error:
            if root.exists():
                raise FileExistsError(f"{root} appeared while rendering scenes into it") from error
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def scenes_root(spec: ScenesSpec, cache_dir: str | Path | None = None) -> Path:
    """The folder holding ``spec``'s dataset, rendered first if it is absent or incomplete.

    ``cache_dir`` defaults to ``$TASKNORM_CACHE`` or ``~/.cache/tasknorm``; the folder is
    ``scenes-<spec.key()>`` inside it. A folder with missing, truncated or extra files or a
    different ``scenes.json`` is deleted and rendered again.
    """
    root = _cache_folder(spec, cache_dir)
    if is_complete(root, spec):
        return root
    if root.is_dir():
        shutil.rmtree(root)
    elif root.exists():
        root.unlink()
    try:
        return render_scenes(root, spec)
    except FileExistsError:  # another process rendered it meanwhile
        if is_complete(root, spec):
            return root
        raise


def is_complete(root: str | Path, spec: ScenesSpec) -> bool:
    """Whether ``root`` holds exactly the files of ``spec``'s dataset, each of the right size."""
    root = Path(root)
    try:
        if json.loads((root / "scenes.json").read_text()) != _description(spec):
            return False
        for folder, size in zip(SPLIT_FOLDERS.values(), spec.sizes, strict=True):
            for kind, nbytes in _file_sizes(spec).items():
                files = {p.name: p.stat().st_size for p in (root / folder / kind).iterdir()}
                if files != {f"{i}.npy": nbytes for i in range(size)}:
                    return False
    except (OSError, ValueError):
        return False
    return True


class RenderedScenesDataModule(NYUv2DataModule):
    """Rendered scenes (see :mod:`tasknorm.data.scenes`) read by the NYUv2 loader, with tasks
    ``segmentation`` (7 classes), ``depth`` and ``normals``.

    ``prepare_data`` renders the dataset into the cache unless it is already there. Validation is
    a seeded ``val_fraction`` of the training images (never augmented); test is the test split.

    Args:
        sizes: number of train and test images.
        height: image height in pixels.
        width: image width in pixels.
        render_seed: seed of the rendered images (the dataset itself).
        seed: seed of the validation split and the training order.
        cache_dir: cache folder (default ``$TASKNORM_CACHE`` or ``~/.cache/tasknorm``).
        tasks: the tasks to load, a subset of the three.
        val_fraction: fraction of the training images held out for validation.
        augment: apply the NYUv2 scale-crop and flip augmentation to training images.
        batch_size: samples per batch (per process).
        num_workers: data-loading worker processes.
    """

    def __init__(
        self,
        sizes: tuple[int, int] = (600, 200),
        height: int = 64,
        width: int = 96,
        render_seed: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        tasks: tuple[str, ...] = ("segmentation", "depth", "normals"),
        val_fraction: float = 0.1,
        augment: bool = False,
        batch_size: int = 16,
        num_workers: int = 0,
    ) -> None:
        self.spec = ScenesSpec(sizes=tuple(sizes), height=height, width=width, seed=render_seed)
        self.cache_dir = cache_dir
        super().__init__(str(_cache_folder(self.spec, cache_dir)), tasks=tuple(tasks),
                         num_classes=self.spec.num_classes, val_fraction=val_fraction,
                         augment=augment, batch_size=batch_size, num_workers=num_workers,
                         seed=seed)

    def prepare_data(self) -> None:
        scenes_root(self.spec, self.cache_dir)


def _cache_folder(spec: ScenesSpec, cache_dir: str | Path | None) -> Path:
    cache = Path(cache_dir or os.environ.get("TASKNORM_CACHE", Path.home() / ".cache/tasknorm"))
    return cache / f"scenes-{spec.key()}"


def _description(spec: ScenesSpec) -> dict[str, object]:
    """The content of ``scenes.json``: spec, classes, splits and conventions."""
    return {
        "format": FORMAT_VERSION,
        "spec": {**asdict(spec), "sizes": list(spec.sizes)},
        "classes": list(CLASSES),
        "splits": {folder: size for folder, size in zip(SPLIT_FOLDERS.values(), spec.sizes,
                                                        strict=True)},
        "intrinsics": {"fx": spec.focal, "fy": spec.focal, "cx": spec.width / 2,
                       "cy": spec.height / 2},
        "conventions": {
            "label": "class index, -1 = invalid",
            "depth": "z-depth in metres along the optical axis, 0 = invalid",
            "normal": "unit camera-frame normal (x right, y down, z forward) facing the camera, "
                      "zero vector = invalid",
        },
    }


def _file_sizes(spec: ScenesSpec) -> dict[str, int]:
    """Bytes of each kind's ``.npy`` file (header plus float32 data)."""
    shapes = {"image": (3,), "label": (), "depth": (1,), "normal": (3,)}
    sizes = {}
    for kind, channels in shapes.items():
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((spec.height, spec.width, *channels), np.float32))
        sizes[kind] = buffer.tell()
    return sizes
