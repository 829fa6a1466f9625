"""Saliency and edge metrics: probability maps against binary targets, swept over thresholds.

Both binarise a probability map at a fixed set of thresholds, count per threshold in one
``bucketize`` + ``bincount`` pass (no thresholds × pixels tensor), and report the best threshold,
as Vandenhende's evaluation does. States are fixed-size counters reduced by ``sum``, so they
synchronise under DDP like the metrics of :mod:`tasknorm.tasks.metrics`. Targets are {0, 1}
maps with NaN at ignored pixels. ``docs/metrics.md`` gives the definitions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from tasknorm.tasks.metrics import _check_same_shape

SALIENCY_THRESHOLDS: tuple[float, ...] = tuple(np.linspace(0.2, 0.9, 15).tolist())
"""Vandenhende's 15 saliency binarisation thresholds, ``np.linspace(0.2, 0.9, 15)``."""

EDGE_THRESHOLDS: tuple[float, ...] = tuple(round(0.01 * k, 2) for k in range(1, 100))
"""The 99 edge thresholds 0.01, 0.02, ..., 0.99 (those Vandenhende passes to SEISM)."""


def _check_probabilities(what: str, preds: Tensor) -> None:
    if preds.numel() and (preds.min() < 0 or preds.max() > 1):
        raise ValueError(f"{what}: expected probabilities in [0, 1]; apply the task's "
                         "prediction() (a sigmoid) to the logits first")


def _counts_above(values: Tensor, groups: Tensor, num_groups: int, thresholds: Tensor,
                  inclusive: bool) -> Tensor:
    """Per group and threshold, how many ``values`` are above (``>``, or ``>=`` if inclusive).

    ``values`` and ``groups`` are 1-D; the result is (num_groups, len(thresholds)). One
    bucketize and one bincount instead of a (groups × thresholds × pixels) boolean tensor.
    """
    t = thresholds.numel()
    # bucket i: the number of thresholds strictly below (or at or below, if inclusive) the value
    bucket = torch.bucketize(values.double(), thresholds, right=inclusive)
    counts = torch.bincount(groups * (t + 1) + bucket, minlength=num_groups * (t + 1))
    counts = counts.view(num_groups, t + 1)
    # value passes threshold j  <=>  bucket > j
    return counts.flip(1).cumsum(1).flip(1)[:, 1:]


def _best_f_measure(precision: Tensor, recall: Tensor) -> Tensor:
    """The largest F = 2PR / (P + R) over thresholds (F = 0 where P + R = 0)."""
    f = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return f.max().float()


# --- saliency -------------------------------------------------------------------------------


class _SaliencyCurves(Metric):
    """Per threshold, the sum over images of precision, recall and Jaccard index."""

    is_differentiable = False
    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0
    full_state_update = False
    precision: Tensor
    recall: Tensor
    jaccard: Tensor
    images: Tensor

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        t = len(SALIENCY_THRESHOLDS)
        for state in ("precision", "recall", "jaccard"):
            self.add_state(state, torch.zeros(t, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: probabilities and {0, 1} targets (NaN: void), (B, 1, H, W) or (B, H, W)."""
        _check_same_shape("saliency", preds, target)
        _check_probabilities("saliency", preds)
        b = preds.shape[0]
        thresholds = torch.tensor(SALIENCY_THRESHOLDS, dtype=torch.float64, device=preds.device)
        preds, target = preds.reshape(b, -1), target.reshape(b, -1)
        valid = ~torch.isnan(target)
        truth = (target > 0.5) & valid
        image = torch.arange(b, device=preds.device).unsqueeze(1).expand_as(preds)
        predicted = _counts_above(preds[valid], image[valid], b, thresholds, False).double()
        tp = _counts_above(preds[truth], image[truth], b, thresholds, False).double()
        positives = truth.sum(1, keepdim=True).double()
        union = predicted + positives - tp
        self.precision += torch.where(predicted > 0, tp / predicted, 0.0).sum(0)
        self.recall += torch.where(positives > 0, tp / positives, 0.0).sum(0)
        self.jaccard += torch.where(union > 0, tp / union, 1.0).sum(0)
        self.images += b


class SaliencyMaxF(_SaliencyCurves):
    """Vandenhende's saliency maxF: max over 15 thresholds of 2PR / (P + R).

    Per image, the probability map is binarised (``p > t``) at each threshold of
    ``SALIENCY_THRESHOLDS``; precision P and recall R (0 when undefined) are averaged over the
    images of the split, and F is formed from those means.

    Example:
        >>> import torch
        >>> metric = SaliencyMaxF()
        >>> metric.update(torch.tensor([[0.95, 0.95, 0.1, 0.1]]), torch.tensor([[1.0, 0, 0, 1]]))
        >>> metric.compute().item()  # P = R = 1/2 at every threshold
        0.5
    """

    def compute(self) -> Tensor:
        return _best_f_measure(self.precision / self.images, self.recall / self.images)


class SaliencyMeanIoU(_SaliencyCurves):
    """Vandenhende's saliency mIoU: max over 15 thresholds of the mean Jaccard index per image.

    An image with no salient pixel and no predicted one scores 1 (as Vandenhende's ``jaccard``).

    Example:
        >>> import torch
        >>> metric = SaliencyMeanIoU()
        >>> metric.update(torch.tensor([[0.95, 0.95, 0.1, 0.1]]), torch.tensor([[1.0, 0, 0, 1]]))
        >>> round(metric.compute().item(), 4)  # 1 / 3 at every threshold
        0.3333
    """

    def compute(self) -> Tensor:
        return (self.jaccard / self.images).max().float()


# --- edges ----------------------------------------------------------------------------------


def disk_max_pool(x: Tensor, radius: float) -> Tensor:
    """Maximum of ``x`` (B, C, H, W) over a disk of ``radius`` pixels around every pixel.

    The disk {(dy, dx): dy² + dx² ≤ radius²} is a union of centred rectangles; each rectangle is
    a separable max-pool (rows then columns), so the cost grows linearly with the radius.
    Outside the image counts as −∞.

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 5, 5)
        >>> x[0, 0, 2, 2] = 1
        >>> disk_max_pool(x, 1.0)[0, 0].int()
        tensor([[0, 0, 0, 0, 0],
                [0, 0, 1, 0, 0],
                [0, 1, 1, 1, 0],
                [0, 0, 1, 0, 0],
                [0, 0, 0, 0, 0]], dtype=torch.int32)
    """
    r = math.floor(radius)
    half_widths = [math.isqrt(math.floor(radius * radius - dy * dy)) for dy in range(r + 1)]
    out = x
    for dy, w in enumerate(half_widths):
        if dy < r and half_widths[dy + 1] == w:
            continue  # contained in the next, taller rectangle
        rows = F.max_pool2d(x, (1, 2 * w + 1), stride=1, padding=(0, w)) if w else x
        rect = F.max_pool2d(rows, (2 * dy + 1, 1), stride=1, padding=(dy, 0)) if dy else rows
        out = torch.maximum(out, rect)
    return out


class EdgeFMeasure(Metric):
    """F-measure of edge maps at the optimal dataset scale (one threshold for the whole split).

    At each threshold t of ``EDGE_THRESHOLDS`` the probability map is binarised (``p >= t``). A
    predicted edge pixel is a true positive when a ground-truth edge pixel lies within
    ``max_dist`` × (image diagonal) pixels (Euclidean disk); a ground-truth edge pixel is
    recalled when a predicted edge pixel lies within the same distance. Counts are summed over the
    split; P = matched predictions / predictions, R = recalled / ground-truth pixels, and the
    result is the best 2PR / (P + R) over thresholds. Unlike SEISM's odsF there is no thinning
    of the predictions and no one-to-one matching (``docs/metrics.md``).

    Args:
        max_dist: matching tolerance as a fraction of the image diagonal (SEISM's default
            0.0075; Vandenhende uses 0.011 for NYUD).

    Example:
        >>> import torch
        >>> target = torch.zeros(1, 1, 8, 8)
        >>> target[0, 0, :, 3] = 1  # a vertical edge
        >>> preds = torch.zeros(1, 1, 8, 8)
        >>> preds[0, 0, :, 4] = 0.9  # found, one pixel off
        >>> round(EdgeFMeasure(max_dist=0.0).forward(preds, target).item(), 4)
        0.0
        >>> round(EdgeFMeasure(max_dist=0.1).forward(preds, target).item(), 4)  # 1.13 pixels
        1.0
    """

    is_differentiable = False
    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0
    full_state_update = False
    matched_preds: Tensor
    preds_total: Tensor
    matched_target: Tensor
    target_total: Tensor

    def __init__(self, max_dist: float = 0.0075, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if not 0 <= max_dist < 1:
            raise ValueError(f"max_dist is a fraction of the image diagonal in [0, 1), got "
                             f"{max_dist}")
        self.max_dist = max_dist
        t = len(EDGE_THRESHOLDS)
        for state in ("matched_preds", "preds_total", "matched_target"):
            self.add_state(state, torch.zeros(t, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("target_total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add probabilities and {0, 1} targets (NaN: ignored), (B, 1, H, W) or (B, H, W)."""
        _check_same_shape("edges", preds, target)
        _check_probabilities("edges", preds)
        if preds.dim() == 3:
            preds, target = preds.unsqueeze(1), target.unsqueeze(1)
        if preds.dim() != 4 or preds.shape[1] != 1:
            raise ValueError(f"edges: expected (B, 1, H, W) or (B, H, W) maps, got "
                             f"{tuple(preds.shape)}")
        radius = self.max_dist * math.hypot(preds.shape[-2], preds.shape[-1])
        thresholds = torch.tensor(EDGE_THRESHOLDS, dtype=torch.float64, device=preds.device)
        valid = ~torch.isnan(target)
        truth = (target > 0.5) & valid
        near_truth = disk_max_pool(truth.float(), radius) > 0
        nearest_pred = disk_max_pool(torch.where(valid, preds.float(), -1.0), radius)
        zeros = torch.zeros(1, dtype=torch.long, device=preds.device)

        def above(values: Tensor) -> Tensor:
            groups = zeros.expand(values.numel())
            return _counts_above(values, groups, 1, thresholds, inclusive=True)[0]

        self.preds_total += above(preds[valid])
        self.matched_preds += above(preds[valid & near_truth])
        self.matched_target += above(nearest_pred[truth])
        self.target_total += truth.sum()

    def compute(self) -> Tensor:
        return _best_f_measure(self.matched_preds / self.preds_total.clamp(min=1),
                               self.matched_target / self.target_total.clamp(min=1))

    def extra_repr(self) -> str:
        return f"max_dist={self.max_dist}"
