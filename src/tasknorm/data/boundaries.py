"""Object boundaries of label maps as one-pixel-wide edge maps (the PASCAL-Context edge task).

:func:`label_boundaries` marks pixels where the label changes (non-zero 4-neighbour Laplacian)
and :func:`thin` reduces them to one-pixel-wide lines with Guo and Hall's parallel thinning, as
the reference (``skimage.morphology.thin``) does.
"""

from __future__ import annotations

import numpy as np


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
