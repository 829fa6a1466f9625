"""Tiny PASCAL-Context copies in the ``PASCAL_MT`` layout, and PASCAL-Part annotation files.

:func:`write_tiny_pascal_context` writes a small random but valid dataset that
:class:`tasknorm.data.pascal_context.PascalContext` reads (for tests and examples);
:func:`write_part_annotation` writes one PASCAL-Part ``.mat`` file in the real struct layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from tasknorm.data.pascal_context import PERSON_CLASS, PERSON_PARTS


def write_tiny_pascal_context(root: str | Path, sizes: tuple[int, int] = (6, 3),
                              height: int = 20, width: int = 28, seed: int = 0) -> Path:
    """Write a tiny PASCAL-Context in the ``PASCAL_MT`` layout under ``root``; return ``root``.

    ``sizes`` images in the ``train`` and ``val`` lists, ``height`` × ``width`` pixels, with
    blocky random contents: JPEG images, grey 8-bit semantic PNGs (classes 0-20 and some 255)
    under ``semseg/pascal-context/``, RGB normal PNGs, grey saliency PNGs, ``LabelMap`` .mat
    files (uint16, classes inside and outside
    :data:`~tasknorm.data.pascal_context.NORMALS_VALID_CLASSES`) and PASCAL-Part .mat files in
    the real struct layout (``anno.objects`` with ``class``, ``class_ind``, ``mask``, ``parts``
    = ``part_name`` + ``mask``). Image ``i`` cycles through four cases: no
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
