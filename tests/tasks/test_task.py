import pytest
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.regression import MeanSquaredError

from tasknorm.tasks import ClassificationTask, Task


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


def test_task_errors():
    with pytest.raises(ValueError, match="primary metric 'rmse' of task 'depth'"):
        Regression("depth", primary="rmse")
    with pytest.raises(ValueError, match="Python identifier"):
        Regression("left digit")
    with pytest.raises(ValueError, match="at least 2 classes"):
        ClassificationTask("x", 1)
