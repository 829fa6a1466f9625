"""MultiDigits: a MultiMNIST-style two-digit dataset built from scikit-learn's bundled digits.

Real handwritten digits (``sklearn.datasets.load_digits``: 1,797 images of 8×8 pixels, 16 grey
levels), no download. Each composite image overlays two digits, MultiMNIST-style: the *left*
digit near the top-left corner and the *right* digit shifted down and right so that the two
overlap; pixels combine by maximum.

Variants:

* ``"left_right"``: both digits from all 10 classes.
* ``"even_odd"``: left digit from the even classes, right from the odd ones (the CosReg paper's
  MultiDigitMNIST protocol).

Tasks are computed from the two digits' values (:data:`PAIR_TASKS`): ``left`` and ``right``
(the digits themselves), ``sum``, ``difference``, ``larger``, ``sum_parity`` and
``product_parity``, and the binary or three-class attributes of :data:`ATTRIBUTE_TASKS` (of one
digit, e.g. ``left_even``, ``right_prime``, or of both, e.g. ``equal``, ``sum_large``). A
task's classes are the values its label takes over the digit pairs of the variant, in
increasing order, so ``left`` has labels 0-4 for {0, 2, 4, 6, 8} in ``even_odd``; a task with a
single value there (``sum_parity`` of an even and an odd digit) is refused.

Train / validation / test composites draw their source digits from disjoint, class-stratified
parts of the 1,797 images, so no handwritten digit is seen in two splits. Everything is
determined by :class:`MultiDigitsSpec` (including the seed); generation takes well under a second
and the result is cached as a ``.npz`` file keyed by the spec.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from tasknorm.io import atomic_write

Variant = Literal["left_right", "even_odd"]
VARIANTS: tuple[Variant, ...] = ("left_right", "even_odd")
SPLITS = ("train", "val", "test")
DEFAULT_TASKS = ("left", "right")
ARRAYS = ("image", "left", "right")  # per split, as generated and cached
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PairTask:
    """A MultiDigits task: a label computed from the values (0-9) of the left and right digit.

    Args:
        name: the task's name (its key in batches).
        label: maps arrays of left and right digit values to integer labels, elementwise.

    Example:
        >>> task = PAIR_TASKS["larger"]
        >>> task.num_classes("left_right"), task.num_classes("even_odd")
        (3, 2)
        >>> task.labels(np.array([7, 2, 4]), np.array([3, 5, 4]), "left_right").tolist()
        [0, 1, 2]
    """

    name: str
    label: Callable[[np.ndarray, np.ndarray], np.ndarray]

    def classes(self, variant: Variant) -> np.ndarray:
        """The values the label takes over every digit pair of ``variant``, sorted."""
        left, right = np.meshgrid(*_task_classes(variant), indexing="ij")
        return np.unique(self.label(left.ravel(), right.ravel()))

    def num_classes(self, variant: Variant) -> int:
        return len(self.classes(variant))

    def labels(self, left: np.ndarray, right: np.ndarray, variant: Variant) -> np.ndarray:
        """Class indices (int64) of the digit pairs ``(left, right)`` of ``variant``."""
        return np.searchsorted(self.classes(variant), self.label(left, right)).astype(np.int64)


LOOPED_DIGITS = (0, 6, 8, 9)
"""Digits written with a closed loop (4 is often written open)."""


def _digit_attributes(side: str) -> tuple[PairTask, ...]:
    """Attributes of one digit (``side`` ``"left"`` or ``"right"``): ``even``, ``large``
    (above 4), ``prime`` (2, 3, 5, 7), ``loop`` (:data:`LOOPED_DIGITS`) and ``mod3``."""
    attributes = {
        "even": lambda d: 1 - d % 2,
        "large": lambda d: (d > 4).astype(int),
        "prime": lambda d: np.isin(d, (2, 3, 5, 7)).astype(int),
        "loop": lambda d: np.isin(d, LOOPED_DIGITS).astype(int),
        "mod3": lambda d: d % 3,
    }
    index = 0 if side == "left" else 1
    return tuple(PairTask(f"{side}_{name}",
                          lambda left, right, f=f: f((left, right)[index]))
                 for name, f in attributes.items())


PAIR_TASKS: dict[str, PairTask] = {task.name: task for task in (
    PairTask("left", lambda left, right: left),
    PairTask("right", lambda left, right: right),
    PairTask("sum", lambda left, right: left + right),
    PairTask("difference", lambda left, right: np.abs(left - right)),
    # 0: left larger, 1: right larger, 2: equal
    PairTask("larger", lambda left, right: np.where(left == right, 2, (right > left).astype(int))),
    PairTask("sum_parity", lambda left, right: (left + right) % 2),
    PairTask("product_parity", lambda left, right: left * right % 2),
    *(task for side in ("left", "right") for task in _digit_attributes(side)),
    PairTask("equal", lambda left, right: (left == right).astype(int)),
    PairTask("sum_large", lambda left, right: (left + right > 9).astype(int)),
    PairTask("both_large", lambda left, right: ((left > 4) & (right > 4)).astype(int)),
    PairTask("close", lambda left, right: (np.abs(left - right) <= 2).astype(int)),
    PairTask("sum_mod3", lambda left, right: (left + right) % 3),
)}
ATTRIBUTE_TASKS = ("left_even", "left_large", "left_prime", "left_loop", "left_mod3",
                   "right_even", "right_large", "right_prime", "right_loop", "right_mod3",
                   "sum_parity", "product_parity", "larger", "equal", "sum_large", "both_large",
                   "close", "sum_mod3")
"""The 18 tasks of the ``multidigits_attributes`` config: five attributes of each digit and
eight of the pair, all binary or with three classes."""


def check_tasks(tasks: Sequence[str], variant: Variant) -> tuple[str, ...]:
    """``tasks`` as a tuple, after checking that they are distinct registered tasks with at least
    two classes in ``variant``."""
    if not tasks:
        raise ValueError("MultiDigits needs at least one task")
    for name in tasks:
        if name not in PAIR_TASKS:
            raise ValueError(f"unknown MultiDigits task {name!r}; expected some of "
                             f"{', '.join(PAIR_TASKS)}")
        if PAIR_TASKS[name].num_classes(variant) < 2:
            raise ValueError(f"MultiDigits task {name!r} has a single value in variant "
                             f"{variant!r}")
    if len(set(tasks)) < len(tasks):
        raise ValueError(f"MultiDigits tasks must be distinct, got {list(tasks)}")
    return tuple(tasks)


@dataclass(frozen=True)
class MultiDigitsSpec:
    """Everything that determines a MultiDigits dataset.

    Args:
        variant: ``"left_right"`` (any two digits) or ``"even_odd"`` (even left, odd right).
        sizes: number of composites in the train, validation and test splits.
        source_fractions: fractions of the source digits (per class) feeding each split.
        seed: seed of the source split, the pairing and the placement jitter.
        scale: each 8×8 source digit is enlarged ``scale`` times (nearest neighbour).
        shift: offset in pixels of the right digit from the left one, in both directions.
        jitter: extra random offset in ``[0, jitter]`` pixels per digit and direction.
    """

    variant: Variant = "left_right"
    sizes: tuple[int, int, int] = (10_000, 2_000, 2_000)
    source_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    scale: int = 2
    shift: int = 5
    jitter: int = 2

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown MultiDigits variant {self.variant!r}; expected one of "
                             f"{VARIANTS}")
        if len(self.sizes) != 3 or min(self.sizes) < 1:
            raise ValueError(f"sizes must be three positive split sizes, got {self.sizes}")
        fractions = self.source_fractions
        if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"source_fractions must be three positive fractions summing to 1, "
                             f"got {fractions}")

    @property
    def image_size(self) -> int:
        return 8 * self.scale + self.shift + self.jitter

    def key(self) -> str:
        """Short hash naming the cache file of this spec."""
        text = json.dumps({**asdict(self), "format": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class MultiDigits(Dataset):
    """One split of MultiDigits; items are ``{"image": (1, S, S) float in [0, 1], <task>: class}``
    for each task of ``targets`` (``{task: int labels}``)."""

    def __init__(self, images: np.ndarray, targets: Mapping[str, np.ndarray]) -> None:
        for task, labels in targets.items():
            if len(labels) != len(images):
                raise ValueError(f"MultiDigits task {task!r} has {len(labels)} labels for "
                                 f"{len(images)} images")
        self.images = torch.from_numpy(images).unsqueeze(1)
        self.targets = {task: torch.from_numpy(labels).long() for task, labels in targets.items()}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.images[index].float() / 255,
                **{task: target[index] for task, target in self.targets.items()}}


def generate(spec: MultiDigitsSpec) -> dict[str, dict[str, np.ndarray]]:
    """Build every split of ``spec``: ``{split: {"image": uint8 (N, S, S), "left", "right"}}``;
    ``left`` and ``right`` are the labels of those tasks, from which every task's labels follow."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    images = images.repeat(spec.scale, axis=1).repeat(spec.scale, axis=2)
    rng = np.random.default_rng(spec.seed)
    pools = _split_sources(digits.target, spec.source_fractions, rng)
    left_classes, right_classes = _task_classes(spec.variant)
    splits = {}
    for split, size, pool in zip(SPLITS, spec.sizes, pools, strict=True):
        left_idx = _draw(pool, digits.target, left_classes, size, rng)
        right_idx = _draw(pool, digits.target, right_classes, size, rng)
        splits[split] = {
            "image": _compose(images[left_idx], images[right_idx], spec, rng),
            "left": np.searchsorted(left_classes, digits.target[left_idx]).astype(np.int64),
            "right": np.searchsorted(right_classes, digits.target[right_idx]).astype(np.int64),
        }
    return splits


def load_multidigits(spec: MultiDigitsSpec, cache_dir: str | Path | None = None,
                     tasks: Sequence[str] = DEFAULT_TASKS) -> dict[str, MultiDigits]:
    """The three splits of ``spec`` with labels of ``tasks`` (names of :data:`PAIR_TASKS`), from
    the cache in ``cache_dir`` or generated (and cached).

    ``cache_dir`` defaults to ``$TASKNORM_CACHE`` or ``~/.cache/tasknorm``. A cache file that
    cannot be read is regenerated.
    """
    tasks = check_tasks(tasks, spec.variant)
    root = Path(cache_dir or os.environ.get("TASKNORM_CACHE", Path.home() / ".cache/tasknorm"))
    path = root / f"multidigits-{spec.key()}.npz"
    arrays = _read_cache(path)
    if arrays is None:
        arrays = generate(spec)
        _write_cache(path, arrays)
    return {split: MultiDigits(a["image"], _labels(a, spec.variant, tasks))
            for split, a in arrays.items()}


def _labels(arrays: dict[str, np.ndarray], variant: Variant, tasks: tuple[str, ...]
            ) -> dict[str, np.ndarray]:
    """``{task: labels}`` of one generated split, from its ``left`` and ``right`` labels."""
    left_classes, right_classes = _task_classes(variant)
    digits = left_classes[arrays["left"]], right_classes[arrays["right"]]
    return {name: PAIR_TASKS[name].labels(*digits, variant) for name in tasks}


def _task_classes(variant: Variant) -> tuple[np.ndarray, np.ndarray]:
    if variant == "even_odd":
        return np.arange(0, 10, 2), np.arange(1, 10, 2)
    return np.arange(10), np.arange(10)


def _split_sources(targets: np.ndarray, fractions: tuple[float, float, float],
                   rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint, class-stratified index pools of the source digits, one per split."""
    pools: list[list[np.ndarray]] = [[], [], []]
    bounds = np.cumsum(fractions)[:-1]
    for label in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == label))
        cuts = np.round(bounds * len(members)).astype(int)
        for pool, part in zip(pools, np.split(members, cuts), strict=True):
            pool.append(part)
    return [np.sort(np.concatenate(p)) for p in pools]


def _draw(pool: np.ndarray, targets: np.ndarray, classes: np.ndarray, size: int,
          rng: np.random.Generator) -> np.ndarray:
    """``size`` source indices from ``pool``: a uniform class, then a uniform digit of it."""
    by_class = [pool[np.isin(targets[pool], c)] for c in classes]
    labels = rng.integers(len(classes), size=size)
    return np.array([by_class[c][rng.integers(len(by_class[c]))] for c in labels])


def _compose(left: np.ndarray, right: np.ndarray, spec: MultiDigitsSpec,
             rng: np.random.Generator) -> np.ndarray:
    """Overlay the right digits, shifted by ``spec.shift`` (+ jitter), on the left ones."""
    n, size = len(left), left.shape[1]
    canvas = np.zeros((n, spec.image_size, spec.image_size), dtype=np.uint8)
    offsets = rng.integers(spec.jitter + 1, size=(n, 2, 2))
    for i in range(n):
        (ly, lx), (ry, rx) = offsets[i]
        ry, rx = ry + spec.shift, rx + spec.shift
        canvas[i, ly:ly + size, lx:lx + size] = left[i]
        np.maximum(canvas[i, ry:ry + size, rx:rx + size], right[i],
                   out=canvas[i, ry:ry + size, rx:rx + size])
    return canvas


def _read_cache(path: Path) -> dict[str, dict[str, np.ndarray]] | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            return {s: {k: data[f"{s}/{k}"] for k in ARRAYS} for s in SPLITS}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _write_cache(path: Path, arrays: dict[str, dict[str, np.ndarray]]) -> None:
    flat = {f"{s}/{k}": v for s, a in arrays.items() for k, v in a.items()}
    atomic_write(path, lambda f: np.savez_compressed(f, **flat))
