"""Dense-prediction tasks: semantic segmentation, depth, surface normals, saliency, edges.

Losses follow mtan / LibMTL (and Vandenhende for saliency and edges) and average over valid
pixels only; a batch without any valid pixel gives a loss of exactly 0 that still has a graph,
never NaN. Outputs reach ``loss`` and the metrics already resized to the target's size.
Invalid pixels use the in-memory conventions of the loaders: label -1, NaN depth, all-zero
normal, NaN saliency / edge target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from tasknorm.tasks.binary_map_metrics import EdgeFMeasure, SaliencyMaxF, SaliencyMeanIoU
from tasknorm.tasks.metrics import (
    Aggregation,
    DepthAbsError,
    DepthRelError,
    DepthRMSE,
    MeanIoU,
    NormalMeanAngle,
    NormalMedianAngle,
    NormalWithinAngle,
    PixelAccuracy,
)
from tasknorm.tasks.task import IGNORE_INDEX, Task


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` where ``valid``; 0 (still attached to the graph) when none is valid."""
    return torch.where(valid, values, 0.0).sum() / valid.sum().clamp(min=1)


def conv_head(in_channels: int, out_channels: int) -> nn.Sequential:
    """Generic dense head: 3×3 conv-BN-ReLU (``min(in_channels, 256)`` wide, 256 as DeepLab's
    heads) then a 1×1 conv; the dense tasks' default head, for ViT feature maps and small
    backbones (the ``conv`` head of :mod:`tasknorm.models.heads`)."""
    hidden = min(in_channels, 256)
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
                         nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, out_channels, 1))


class _DenseTask(Task):
    """A task on (B, C, H, W) outputs with the small convolutional default head
    (:func:`conv_head`; protocol heads such as ASPP are chosen by name)."""

    def build_head(self, in_features: int) -> nn.Module:
        return conv_head(in_features, self.out_channels)

    def _check_shape(self, output: Tensor, expected: tuple[int, ...]) -> None:
        if tuple(output.shape) != expected:
            raise ValueError(f"task {self.name!r}: expected an output of shape {expected} "
                             f"for its target, got {tuple(output.shape)} (outputs must be "
                             "resized to the target size)")


class SegmentationTask(_DenseTask):
    """Semantic segmentation (also human parts): cross-entropy, mIoU (primary), pixel accuracy.

    Pixels whose label is outside ``[0, num_classes)`` or equals ``ignore_index`` are ignored by
    both the loss and the metrics. Targets are int64 (B, H, W); outputs logits (B, C, H, W).

    Args:
        name: task name.
        num_classes: number of classes C (the head's output channels).
        ignore_index: label of ignored pixels (default ``IGNORE_INDEX`` = -1).

    Example:
        >>> import torch
        >>> task = SegmentationTask("segmentation", num_classes=3)
        >>> target = torch.tensor([[[0, 1], [2, -1]]])
        >>> logits = 10.0 * torch.nn.functional.one_hot(target.clamp(min=0), 3).permute(0, 3, 1, 2)
        >>> round(task.loss(logits, target).item(), 4)
        0.0001
        >>> metrics = task.build_metrics()
        >>> metrics.update(task.prediction(logits), target)
        >>> {k: round(v.item(), 4) for k, v in metrics.compute().items()}
        {'miou': 1.0, 'pixel_accuracy': 1.0}
    """

    def __init__(self, name: str, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 2:
            raise ValueError(f"task {name!r} needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.out_channels = num_classes
        super().__init__(name, primary="miou")

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        self._check_shape(output, (target.shape[0], self.num_classes, *target.shape[1:]))
        valid = (target >= 0) & (target < self.num_classes) & (target != self.ignore_index)
        losses = F.cross_entropy(output, torch.where(valid, target, 0), reduction="none")
        return _masked_mean(losses, valid)

    def build_metrics(self) -> MetricCollection:
        metrics: dict[str, Metric] = {
            "miou": MeanIoU(self.num_classes, self.ignore_index),
            "pixel_accuracy": PixelAccuracy(self.num_classes, self.ignore_index),
        }
        return MetricCollection(metrics)


class DepthTask(_DenseTask):
    """Depth or disparity: L1 loss, absolute error (primary), relative error and RMSE.

    Targets are float (B, 1, H, W) with NaN at invalid pixels; loss and metrics use only pixels
    with a finite target.

    Args:
        name: task name (``"depth"`` or ``"disparity"``).
        aggregation: ``"global"`` (default: pixel means over the whole split, as LibMTL) or
            ``"mtan"`` (per-batch means averaged over batches, to match mtan-family tables).
        primary: metric for model selection and the "primary" Δm: ``"abs_err"`` (mtan, LibMTL,
            Auto-Lambda) or ``"rmse"`` (Vandenhende).

    Example:
        >>> import torch
        >>> task = DepthTask("depth")
        >>> target = torch.tensor([[[[1.0, float("nan")], [2.0, 4.0]]]])
        >>> task.loss(torch.full_like(target, 2.0), target).item()  # (1 + 0 + 2) / 3
        1.0
        >>> task.higher_is_better
        {'abs_err': False, 'rel_err': False, 'rmse': False}
    """

    out_channels = 1

    def __init__(self, name: str, aggregation: Aggregation = "global",
                 primary: str = "abs_err") -> None:
        self.aggregation = aggregation
        super().__init__(name, primary)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        self._check_shape(output, tuple(target.shape))
        valid = torch.isfinite(target)
        return _masked_mean((output - torch.where(valid, target, 0.0)).abs(), valid)

    def build_metrics(self) -> MetricCollection:
        metrics: dict[str, Metric] = {
            "abs_err": DepthAbsError(self.aggregation),
            "rel_err": DepthRelError(self.aggregation),
            "rmse": DepthRMSE(self.aggregation),
        }
        return MetricCollection(metrics)


class NormalsTask(_DenseTask):
    """Surface normals: 1 − mean cosine loss, angle metrics (mean angle primary).

    The output (B, 3, H, W) is L2-normalised inside the loss and by ``prediction``; targets are
    unit vectors with all-zero vectors at invalid pixels. Metrics: ``mean_angle``,
    ``median_angle`` (degrees) and ``within_11_25``, ``within_22_5``, ``within_30`` (fractions).

    Args:
        name: task name.
        aggregation: ``"global"`` (default: over all valid pixels of the split, as LibMTL) or
            ``"mtan"`` (per-batch statistics averaged over batches, as mtan).

    Example:
        >>> import torch
        >>> task = NormalsTask("normals")
        >>> target = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
        >>> task.loss(5 * target, target).abs().item()
        0.0
        >>> list(task.build_metrics())
        ['mean_angle', 'median_angle', 'within_11_25', 'within_22_5', 'within_30']
    """

    out_channels = 3

    def __init__(self, name: str, aggregation: Aggregation = "global") -> None:
        self.aggregation = aggregation
        super().__init__(name, primary="mean_angle")

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        self._check_shape(output, tuple(target.shape))
        valid = (target != 0).any(1)
        cosine = (F.normalize(output, dim=1) * target).sum(1)
        return _masked_mean(1 - cosine, valid)

    def prediction(self, output: Tensor) -> Tensor:
        return F.normalize(output, dim=1)

    def build_metrics(self) -> MetricCollection:
        metrics: dict[str, Metric] = {
            "mean_angle": NormalMeanAngle(self.aggregation),
            "median_angle": NormalMedianAngle(self.aggregation),
            "within_11_25": NormalWithinAngle(11.25, self.aggregation),
            "within_22_5": NormalWithinAngle(22.5, self.aggregation),
            "within_30": NormalWithinAngle(30.0, self.aggregation),
        }
        return MetricCollection(metrics)


class SaliencyTask(_DenseTask):
    """Saliency: BCE-with-logits, Vandenhende's maxF and mIoU.

    The head outputs one logit map (B, 1, H, W); ``prediction`` is its sigmoid. Targets are
    {0, 1} maps with NaN at ignored pixels.

    Args:
        name: task name.
        primary: ``"miou"`` (default; the saliency metric of Vandenhende's Δm) or ``"max_f"``.

    Example:
        >>> task = SaliencyTask("saliency")
        >>> task.primary, task.higher_is_better
        ('miou', {'max_f': True, 'miou': True})
    """

    out_channels = 1

    def __init__(self, name: str, primary: str = "miou") -> None:
        super().__init__(name, primary)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        self._check_shape(output, tuple(target.shape))
        valid = ~torch.isnan(target)
        losses = F.binary_cross_entropy_with_logits(output, torch.where(valid, target, 0.0),
                                                    reduction="none")
        return _masked_mean(losses, valid)

    def prediction(self, output: Tensor) -> Tensor:
        return torch.sigmoid(output)

    def build_metrics(self) -> MetricCollection:
        metrics: dict[str, Metric] = {"max_f": SaliencyMaxF(), "miou": SaliencyMeanIoU()}
        return MetricCollection(metrics)


class EdgeTask(_DenseTask):
    """Edge detection: class-weighted BCE-with-logits (Vandenhende) and an ODS F-measure.

    The loss weighs edge pixels by ``pos_weight`` and the others by ``1 − pos_weight`` and
    averages over valid pixels. Targets are {0, 1} maps (B, 1, H, W) with NaN at ignored pixels.

    Args:
        name: task name.
        pos_weight: weight w of edge pixels (Vandenhende's 0.95).
        max_dist: matching tolerance of the F-measure as a fraction of the image diagonal
            (see ``EdgeFMeasure``).

    Example:
        >>> import torch
        >>> task = EdgeTask("edges")
        >>> target = torch.tensor([[[[1.0, 0.0]]]])
        >>> round(task.loss(torch.zeros(1, 1, 1, 2), target).item(), 4)  # (0.95 + 0.05) ln 2 / 2
        0.3466
    """

    out_channels = 1

    def __init__(self, name: str, pos_weight: float = 0.95, max_dist: float = 0.0075) -> None:
        if not 0 <= pos_weight <= 1:
            raise ValueError(f"pos_weight of task {name!r} must lie in [0, 1], got {pos_weight}")
        self.pos_weight = pos_weight
        self.max_dist = max_dist
        super().__init__(name, primary="f_measure")

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        self._check_shape(output, tuple(target.shape))
        valid = ~torch.isnan(target)
        edge = (target > 0.5) & valid
        weight = torch.where(edge, self.pos_weight, 1 - self.pos_weight)
        losses = F.binary_cross_entropy_with_logits(output, edge.to(output.dtype),
                                                    reduction="none")
        return _masked_mean(weight * losses, valid)

    def prediction(self, output: Tensor) -> Tensor:
        return torch.sigmoid(output)

    def build_metrics(self) -> MetricCollection:
        return MetricCollection({"f_measure": EdgeFMeasure(self.max_dist)})
