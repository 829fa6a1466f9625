"""A task: its name, head, loss and metrics, each metric with its direction.

Directions come from the metric objects themselves (torchmetrics' ``higher_is_better``), never
from a list of names, so Δm and model selection cannot get them wrong.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassF1Score,
)

IGNORE_INDEX = -1
"""Label of ignored pixels in segmentation targets (the in-memory convention of every loader)."""


class Task(ABC):
    """One task of a multi-task model.

    Subclasses build the task's head, compute its loss and build its metrics; ``primary`` names
    the metric used for model selection and the "primary" Δm. Before calling
    ``Task.__init__`` a subclass sets ``out_channels``, the number of channels its head outputs
    (what a head built by name from ``tasknorm.models.heads`` must produce).
    """

    out_channels: int
    """Channels (or logits) the task's head outputs."""

    def __init__(self, name: str, primary: str) -> None:
        if not name or not name.isidentifier():
            raise ValueError(f"task name must be a Python identifier, got {name!r}")
        out_channels = getattr(self, "out_channels", None)
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"{type(self).__name__} must set out_channels to a positive int "
                             f"before Task.__init__, got {out_channels!r}")
        self.name = name
        self.primary = primary
        metrics = self.build_metrics()
        if primary not in metrics:
            raise ValueError(f"primary metric {primary!r} of task {name!r} is not one of its "
                             f"metrics {sorted(metrics)}")
        for metric_name, metric in metrics.items():
            if metric.higher_is_better is None:
                raise ValueError(f"metric {name}/{metric_name} ({type(metric).__name__}) has no "
                                 "direction (higher_is_better is None)")

    @abstractmethod
    def build_head(self, in_features: int) -> nn.Module:
        """The task's head on top of ``in_features`` backbone features."""

    @abstractmethod
    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Scalar training loss of the head's ``output`` against ``target``."""

    @abstractmethod
    def build_metrics(self) -> MetricCollection:
        """Fresh metric objects (one collection per stage), keyed by metric name."""

    def prediction(self, output: Tensor) -> Tensor:
        """What the metrics receive for a head ``output`` (identity unless overridden).

        Tasks whose head emits logits but whose metrics want probabilities (or unit vectors)
        convert here, so the training loop can feed every task's metrics the same way:
        ``metrics.update(task.prediction(output), target)``.
        """
        return output

    @property
    def higher_is_better(self) -> dict[str, bool]:
        """Each metric's direction, read from the metric objects."""
        return {name: bool(m.higher_is_better) for name, m in self.build_metrics().items()}

    @property
    def fractions(self) -> dict[str, bool]:
        """Whether each metric is a fraction in [0, 1] (accuracy, IoU, F1, ...), read from the
        metric objects' plot bounds; tables print fractions in percent."""
        return {name: m.plot_lower_bound == 0 and m.plot_upper_bound == 1
                for name, m in self.build_metrics().items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, primary={self.primary!r})"


class ClassificationTask(Task):
    """Single-label classification: linear head, cross-entropy, accuracy (primary) and macro F1.

    Example:
        >>> import torch
        >>> task = ClassificationTask("left", num_classes=10)
        >>> head = task.build_head(64)
        >>> logits = head(torch.randn(4, 64))
        >>> task.loss(logits, torch.tensor([0, 1, 2, 3])).shape
        torch.Size([])
        >>> task.higher_is_better
        {'accuracy': True, 'f1': True}
    """

    def __init__(self, name: str, num_classes: int, label_smoothing: float = 0.0) -> None:
        if num_classes < 2:
            raise ValueError(f"task {name!r} needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.out_channels = num_classes
        self.label_smoothing = label_smoothing
        super().__init__(name, primary="accuracy")

    def build_head(self, in_features: int) -> nn.Module:
        return nn.Linear(in_features, self.num_classes)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target, label_smoothing=self.label_smoothing)

    def build_metrics(self) -> MetricCollection:
        metrics: dict[str, Metric] = {
            "accuracy": MulticlassAccuracy(self.num_classes, average="micro"),
            "f1": MulticlassF1Score(self.num_classes, average="macro"),
        }
        return MetricCollection(metrics)


class BinaryTask(Task):
    """One binary attribute (CelebA): a linear head to one logit, BCE-with-logits, accuracy and F1.

    The metrics see ``prediction(output)``, the sigmoid probability, thresholded at 0.5
    (``p > 0.5``); true/false positives and negatives are counted over the whole split, so F1 is
    the per-attribute F1 of FAMO's CelebA evaluation (0 when the attribute is never predicted and
    never present). Targets are int64 0/1 of shape (B,).

    Args:
        name: task name (the attribute, e.g. ``"smiling"``).
        primary: ``"f1"`` (FAMO's model selection) or ``"accuracy"`` (MGDA / Aligned-MTL tables).

    Example:
        >>> import torch
        >>> task = BinaryTask("smiling")
        >>> logits = task.build_head(8)(torch.randn(4, 8))
        >>> logits.shape, task.prediction(logits).shape
        (torch.Size([4, 1]), torch.Size([4]))
        >>> task.higher_is_better
        {'accuracy': True, 'f1': True}
    """

    out_channels = 1

    def __init__(self, name: str, primary: str = "f1") -> None:
        super().__init__(name, primary)

    def build_head(self, in_features: int) -> nn.Module:
        return nn.Linear(in_features, 1)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(self._logit(output, target), target.float())

    def prediction(self, output: Tensor) -> Tensor:
        return torch.sigmoid(output.reshape(-1))

    def build_metrics(self) -> MetricCollection:
        metrics: dict[str, Metric] = {"accuracy": BinaryAccuracy(threshold=0.5),
                                      "f1": BinaryF1Score(threshold=0.5)}
        return MetricCollection(metrics)

    def _logit(self, output: Tensor, target: Tensor) -> Tensor:
        if output.shape != (*target.shape, 1):
            raise ValueError(f"task {self.name!r}: expected logits of shape (B, 1) for targets "
                             f"of shape (B,), got {tuple(output.shape)} and "
                             f"{tuple(target.shape)}")
        return output.squeeze(-1)
