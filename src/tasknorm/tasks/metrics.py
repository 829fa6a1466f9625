"""Segmentation, depth and surface-normal metrics as torchmetrics ``Metric`` objects (they
synchronise under DDP). The saliency and edge metrics are in
:mod:`tasknorm.tasks.binary_map_metrics`.

Every state is a fixed-size counter or histogram reduced by ``sum``, so memory does not grow
with the split and a distributed run gives the same numbers as one process. Each metric returns
one value and carries its own ``higher_is_better``. Metrics that read the same statistics share a
base class with identical states, so a ``MetricCollection`` (compute groups) updates them once.
``docs/metrics.md`` gives the definitions and how they differ from mtan, LibMTL and Vandenhende.

Invalid pixels follow the in-memory conventions: label ``-1`` (any label outside
``[0, num_classes)``), NaN depth, all-zero normal.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from tasknorm.tasks.task import IGNORE_INDEX

Aggregation = Literal["global", "mtan"]
AGGREGATIONS: tuple[Aggregation, ...] = ("global", "mtan")
"""``"global"``: one mean over every valid pixel of the split (LibMTL). ``"mtan"``: a value per
``update`` call (batch), then the unweighted mean over batches (mtan, CAGrad, Nash-MTL, FAMO)."""

ANGLE_BINS_PER_DEGREE = 256
"""Resolution of the normal-angle histogram: 1/256° per bin (46080 bins over [0°, 180°]).
A power of two, so ``angle * 256`` is exact in floating point and every threshold that is a
multiple of 1/256° (11.25°, 22.5°, 30°) is a bin edge: threshold fractions are exact; the
histogram median is within 1/512° of the exact one."""

NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)
"""The angle thresholds (degrees) of the standard ``within_*`` normal metrics."""


def _check_same_shape(what: str, preds: Tensor, target: Tensor) -> None:
    if preds.shape != target.shape:
        raise ValueError(f"{what}: predictions of shape {tuple(preds.shape)} do not match "
                         f"targets of shape {tuple(target.shape)}")


class _AggregatedMetric(Metric):
    """A metric whose statistics are aggregated over the split as ``aggregation`` says
    (:data:`AGGREGATIONS`)."""

    def __init__(self, aggregation: Aggregation = "global", **kwargs: object) -> None:
        super().__init__(**kwargs)
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; expected one of "
                             f"{AGGREGATIONS}")
        self.aggregation = aggregation

    def extra_repr(self) -> str:
        return f"aggregation={self.aggregation!r}"


# --- semantic segmentation ------------------------------------------------------------------


class _ConfusionMatrix(Metric):
    """Confusion matrix (rows: target, columns: prediction) over the valid pixels of the split."""

    is_differentiable = False
    full_state_update = False
    confmat: Tensor

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: ``preds`` logits (B, C, H, W) or labels (B, H, W); ``target`` (B, H, W)."""
        c = self.num_classes
        if preds.is_floating_point():
            if preds.dim() < 2 or preds.shape[1] != c:
                raise ValueError(f"segmentation: logits must be (B, {c}, ...), got "
                                 f"{tuple(preds.shape)}")
            preds = preds.argmax(1)
        _check_same_shape("segmentation", preds, target)
        if preds.numel() and (preds.min() < 0 or preds.max() >= c):
            raise ValueError(f"segmentation: predicted labels must lie in [0, {c})")
        valid = (target >= 0) & (target < c) & (target != self.ignore_index)
        index = target[valid] * c + preds[valid]
        self.confmat += torch.bincount(index, minlength=c * c).view(c, c)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, ignore_index={self.ignore_index}"


class MeanIoU(_ConfusionMatrix):
    """Mean intersection-over-union from one confusion matrix over the whole split.

    IoU_c = TP / (TP + FP + FN). A class absent from both the targets and the predictions of the
    whole split has no IoU and is left out of the mean (mtan and LibMTL would return NaN,
    Vandenhende scores it 0); NaN only when no valid pixel was seen.

    Args:
        num_classes: number of classes C; target labels outside [0, C) are ignored.
        ignore_index: one more label to ignore (default -1, already outside [0, C)).

    Example:
        >>> import torch
        >>> metric = MeanIoU(num_classes=3)
        >>> metric.update(torch.tensor([[0, 1, 1, 0]]), torch.tensor([[0, 1, 0, -1]]))
        >>> round(metric.compute().item(), 4)  # class 0: 1/2, class 1: 1/2, class 2 absent
        0.5
    """

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def compute(self) -> Tensor:
        confmat = self.confmat.double()
        tp = confmat.diagonal()
        union = confmat.sum(0) + confmat.sum(1) - tp
        return (tp / union).nanmean().float()


class PixelAccuracy(_ConfusionMatrix):
    """Fraction of valid pixels whose predicted label is right (NaN when none was seen).

    Args:
        num_classes: number of classes C; target labels outside [0, C) are ignored.
        ignore_index: one more label to ignore (default -1).
    """

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def compute(self) -> Tensor:
        return (self.confmat.diagonal().sum().double() / self.confmat.sum()).float()


# --- depth ----------------------------------------------------------------------------------


class _DepthErrors(_AggregatedMetric):
    """Sums of absolute, relative and squared errors over pixels with a finite target.

    ``"global"``: ``total`` holds pixel sums and ``weight`` the pixel count. ``"mtan"``:
    ``total`` holds the sum over batches of each batch's mean |e|, mean |e|/g and RMSE, and
    ``weight`` the number of batches with at least one valid pixel.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    total: Tensor
    weight: Tensor

    def __init__(self, aggregation: Aggregation = "global", **kwargs: object) -> None:
        super().__init__(aggregation, **kwargs)
        self.add_state("total", torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch of predictions and targets of the same shape, e.g. (B, 1, H, W)."""
        _check_same_shape("depth", preds, target)
        valid = torch.isfinite(target)
        truth = target[valid].double()
        error = preds[valid].double() - truth
        absolute = error.abs()
        sums = torch.stack([absolute.sum(), (absolute / truth).sum(), error.square().sum()])
        count = valid.sum().double()
        if self.aggregation == "global":
            self.total += sums
            self.weight += count
        else:
            means = sums / count.clamp(min=1)
            self.total += torch.stack([means[0], means[1], means[2].sqrt()])
            self.weight += (count > 0).double()


class DepthAbsError(_DepthErrors):
    """Mean absolute error |p − g| over pixels with a finite target.

    Args:
        aggregation: ``"global"`` (mean over every valid pixel of the split) or ``"mtan"``
            (mean of per-batch means).

    Example:
        >>> import torch
        >>> metric = DepthAbsError()
        >>> metric.update(torch.tensor([1.0, 2.0, 5.0]), torch.tensor([2.0, float("nan"), 4.0]))
        >>> metric.compute().item()
        1.0
    """

    def compute(self) -> Tensor:
        return (self.total[0] / self.weight).float()


class DepthRelError(_DepthErrors):
    """Mean relative error |p − g| / g over pixels with a finite target.

    Args:
        aggregation: ``"global"`` or ``"mtan"`` (see ``DepthAbsError``).
    """

    def compute(self) -> Tensor:
        return (self.total[1] / self.weight).float()


class DepthRMSE(_DepthErrors):
    """Root mean squared error over pixels with a finite target.

    Args:
        aggregation: ``"global"`` (sqrt of the split's mean squared error, Vandenhende) or
            ``"mtan"`` (mean over batches of each batch's RMSE).
    """

    def compute(self) -> Tensor:
        value = self.total[2] / self.weight
        return (value.sqrt() if self.aggregation == "global" else value).float()


# --- surface normals ------------------------------------------------------------------------


def normal_angles(preds: Tensor, target: Tensor) -> Tensor:
    """Angles in degrees between L2-normalised predictions and targets at valid pixels.

    Args:
        preds: predicted normals (B, 3, H, W), any length (normalised here).
        target: unit target normals (B, 3, H, W); all-zero vectors mark invalid pixels.

    Returns:
        A 1-D float64 tensor with one angle per valid pixel, in [0, 180].

    Example:
        >>> import torch
        >>> up = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
        >>> tilted = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)
        >>> normal_angles(torch.cat([tilted, up], 3), torch.cat([up, 0 * up], 3)).round()
        tensor([45.], dtype=torch.float64)
    """
    _check_same_shape("normals", preds, target)
    if preds.dim() != 4 or preds.shape[1] != 3:
        raise ValueError(f"normals: expected (B, 3, H, W) maps, got {tuple(preds.shape)}")
    valid = (target != 0).any(1)
    unit = F.normalize(preds.double(), dim=1)
    cosine = (unit * target.double()).sum(1)[valid]
    return torch.rad2deg(torch.acos(cosine.clamp(-1, 1)))


def _median(values: Tensor) -> Tensor:
    """Median as numpy computes it (mean of the two middle values for an even count)."""
    ordered = values.sort().values
    n = ordered.numel()
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


class _NormalAngles(_AggregatedMetric):
    """Angle statistics over valid pixels.

    ``"global"``: a histogram of angles (``ANGLE_BINS_PER_DEGREE`` bins per degree) and the exact
    angle sum. ``"mtan"``: the sum over batches of each batch's mean, median and fractions below
    11.25°, 22.5° and 30°, and the number of batches with at least one valid pixel.
    """

    is_differentiable = False
    full_state_update = False
    histogram: Tensor
    angle_sum: Tensor
    batch_stats: Tensor
    batches: Tensor

    def __init__(self, aggregation: Aggregation = "global", **kwargs: object) -> None:
        super().__init__(aggregation, **kwargs)
        if aggregation == "global":
            bins = 180 * ANGLE_BINS_PER_DEGREE
            self.add_state("histogram", torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state("angle_sum", torch.zeros((), dtype=torch.float64),
                           dist_reduce_fx="sum")
        else:
            self.add_state("batch_stats", torch.zeros(2 + len(NORMAL_THRESHOLDS),
                                                      dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("batches", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch of predicted (any length) and target (unit) normals, (B, 3, H, W)."""
        angles = normal_angles(preds, target)
        if self.aggregation == "global":
            index = (angles * ANGLE_BINS_PER_DEGREE).long().clamp(max=self.histogram.numel() - 1)
            self.histogram += torch.bincount(index, minlength=self.histogram.numel())
            self.angle_sum += angles.sum()
        elif angles.numel():
            stats = [angles.mean(), _median(angles)]
            stats += [(angles < t).double().mean() for t in NORMAL_THRESHOLDS]
            self.batch_stats += torch.stack(stats)
            self.batches += 1

    def _count(self) -> Tensor:
        return self.histogram.sum()

    def _fraction_below(self, threshold: float) -> Tensor:
        """Exact fraction of angles below ``threshold`` (a bin edge) in global mode."""
        edge = round(threshold * ANGLE_BINS_PER_DEGREE)
        return self.histogram[:edge].sum().double() / self._count()

    def _histogram_median(self) -> Tensor:
        """Median from the histogram: centre of the bin(s) holding the middle rank(s)."""
        n = self._count()
        if n == 0:
            return torch.tensor(math.nan, dtype=torch.float64, device=self.histogram.device)
        cumulative = self.histogram.cumsum(0)
        ranks = torch.stack([(n - 1) // 2, n // 2])
        bins = torch.searchsorted(cumulative, ranks, right=True)
        return ((bins.double() + 0.5) / ANGLE_BINS_PER_DEGREE).mean()


class NormalMeanAngle(_NormalAngles):
    """Mean angle (degrees) between predicted and target normals over valid pixels.

    Args:
        aggregation: ``"global"`` (exact mean over every valid pixel of the split) or ``"mtan"``
            (mean of per-batch means).

    Example:
        >>> import torch
        >>> up = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
        >>> metric = NormalMeanAngle()
        >>> metric.update(torch.cat([up, -up], 3), torch.cat([up, up], 3))
        >>> metric.compute().item()
        90.0
    """

    higher_is_better = False

    def compute(self) -> Tensor:
        if self.aggregation == "mtan":
            return (self.batch_stats[0] / self.batches).float()
        return (self.angle_sum / self._count()).float()


class NormalMedianAngle(_NormalAngles):
    """Median angle (degrees) over valid pixels.

    ``"global"``: the median of all valid angles of the split from a 1/256° histogram (within
    1/512° of the exact median). ``"mtan"``: the mean over batches of each batch's exact median.

    Args:
        aggregation: ``"global"`` or ``"mtan"``.
    """

    higher_is_better = False

    def compute(self) -> Tensor:
        if self.aggregation == "mtan":
            return (self.batch_stats[1] / self.batches).float()
        return self._histogram_median().float()


class NormalWithinAngle(_NormalAngles):
    """Fraction (in [0, 1]) of valid pixels whose angle is below ``threshold`` degrees.

    Args:
        threshold: angle in degrees; 11.25, 22.5 or 30 (the standard ones; in global mode any
            multiple of 1/256° works and is exact).
        aggregation: ``"global"`` or ``"mtan"`` (mean of per-batch fractions).

    Example:
        >>> import torch
        >>> up = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
        >>> metric = NormalWithinAngle(11.25)
        >>> metric.update(torch.cat([up, -up], 3), torch.cat([up, up], 3))
        >>> metric.compute().item()
        0.5
    """

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, threshold: float, aggregation: Aggregation = "global",
                 **kwargs: object) -> None:
        super().__init__(aggregation, **kwargs)
        if aggregation == "mtan" and threshold not in NORMAL_THRESHOLDS:
            raise ValueError(f"aggregation='mtan' supports the thresholds {NORMAL_THRESHOLDS}, "
                             f"got {threshold}")
        scaled = threshold * ANGLE_BINS_PER_DEGREE
        if not 0 < threshold <= 180 or scaled != round(scaled):
            raise ValueError(f"threshold must be a multiple of 1/{ANGLE_BINS_PER_DEGREE} degree "
                             f"in (0, 180], got {threshold}")
        self.threshold = threshold

    def compute(self) -> Tensor:
        if self.aggregation == "mtan":
            index = 2 + NORMAL_THRESHOLDS.index(self.threshold)
            return (self.batch_stats[index] / self.batches).float()
        return self._fraction_below(self.threshold).float()

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, aggregation={self.aggregation!r}"
