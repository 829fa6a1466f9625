"""A task: its name, head, loss and metrics, each metric with its direction.

Directions come from the metric objects themselves (torchmetrics' ``higher_is_better``), never
from a list of names, so Δm and model selection cannot get them wrong.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score


class Task(ABC):
    """One task of a multi-task model.

    Subclasses build the task's head, compute its loss and build its metrics; ``primary`` names
    the metric used for model selection and the "primary" Δm.
    """

    def __init__(self, name: str, primary: str) -> None:
        if not name or not name.isidentifier():
            raise ValueError(f"task name must be a Python identifier, got {name!r}")
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

    @property
    def higher_is_better(self) -> dict[str, bool]:
        """Each metric's direction, read from the metric objects."""
        return {name: bool(m.higher_is_better) for name, m in self.build_metrics().items()}

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
