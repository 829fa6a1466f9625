import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.regression import MeanSquaredError

from tasknorm.tasks import (
    IGNORE_INDEX,
    BinaryTask,
    ClassificationTask,
    DepthTask,
    NormalsTask,
    SegmentationTask,
    Task,
)


def test_classification_task_loss_and_metrics():
    task = ClassificationTask("digit", num_classes=3)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0, 0]])
    target = torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(task.loss(logits, target), F.cross_entropy(logits, target))
    metrics = task.build_metrics()
    metrics.update(logits, target)
    assert metrics.compute()["accuracy"].item() == pytest.approx(0.75)
    assert task.higher_is_better == {"accuracy": True, "f1": True}
    assert task.build_head(7)(torch.randn(2, 7)).shape == (2, 3)


class Regression(Task):
    out_channels = 1

    def __init__(self, name, primary="mse"):
        super().__init__(name, primary)

    def build_head(self, in_features):
        return torch.nn.Linear(in_features, 1)

    def loss(self, output, target):
        return F.mse_loss(output, target)

    def build_metrics(self):
        return MetricCollection({"mse": MeanSquaredError()})


def test_directions_come_from_the_metric_objects():
    assert Regression("depth").higher_is_better == {"mse": False}


def test_default_prediction_is_the_output_and_out_channels_is_required():
    output = torch.randn(3, 1)
    assert Regression("depth").prediction(output) is output
    assert ClassificationTask("digit", 7).out_channels == 7
    assert IGNORE_INDEX == -1

    class NoChannels(Regression):
        out_channels = 0

    with pytest.raises(ValueError, match="NoChannels must set out_channels"):
        NoChannels("depth")


def test_binary_task_counts_over_the_whole_split():
    task = BinaryTask("smiling")
    assert task.out_channels == 1 and task.primary == "f1"
    assert task.higher_is_better == {"accuracy": True, "f1": True}
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(n, 1)).astype(np.float32) for n in (5, 3)]
    targets = [rng.integers(0, 2, size=n) for n in (5, 3)]
    metrics = task.build_metrics()
    for logit, target in zip(logits, targets, strict=True):
        metrics.update(task.prediction(torch.from_numpy(logit)), torch.from_numpy(target))
    predicted = 1 / (1 + np.exp(-np.concatenate(logits)[:, 0])) > 0.5
    truth = np.concatenate(targets) == 1
    tp, fp, fn = (predicted & truth).sum(), (predicted & ~truth).sum(), (~predicted & truth).sum()
    values = metrics.compute()
    assert values["accuracy"].item() == pytest.approx((predicted == truth).mean())
    assert values["f1"].item() == pytest.approx(2 * tp / (2 * tp + fp + fn))
    logit, target = torch.tensor([[2.0], [-1.0]]), torch.tensor([1, 1])
    expected = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0))])
    assert task.loss(logit, target).item() == pytest.approx(expected)
    assert task.build_head(4)(torch.randn(2, 4)).shape == (2, 1)
    assert BinaryTask("smiling", primary="accuracy").primary == "accuracy"
    with pytest.raises(ValueError, match="expected logits of shape"):
        task.loss(torch.zeros(2), target)


def test_task_errors():
    with pytest.raises(ValueError, match="primary metric 'rmse' of task 'depth'"):
        Regression("depth", primary="rmse")
    with pytest.raises(ValueError, match="Python identifier"):
        Regression("left digit")
    with pytest.raises(ValueError, match="at least 2 classes"):
        ClassificationTask("x", 1)


def test_fractions_come_from_the_metric_bounds():
    assert ClassificationTask("left", 10).fractions == {"accuracy": True, "f1": True}
    assert SegmentationTask("seg", 3).fractions == {"miou": True, "pixel_accuracy": True}
    assert set(DepthTask("depth").fractions.values()) == {False}
    assert NormalsTask("normals").fractions == {
        "mean_angle": False, "median_angle": False, "within_11_25": True, "within_22_5": True,
        "within_30": True}
