import pytest
import torch
from torch import nn

from tasknorm.models import ARCHITECTURES, MultiTaskModel, build_backbone, count_flops, digits_cnn
from tasknorm.nn import SigmaBatchNorm2d, TaskBatchNorm2d, TaskSigmaBatchNorm2d, use_task
from tasknorm.tasks import ClassificationTask

TASKS = [ClassificationTask("left", 10), ClassificationTask("right", 5)]


def model(architecture, **kwargs):
    torch.manual_seed(0)
    return MultiTaskModel(lambda: digits_cnn(width=8), TASKS, architecture, **kwargs)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_returns_one_output_per_task(architecture):
    outputs = model(architecture)(torch.randn(3, 1, 23, 23))
    assert {t: o.shape for t, o in outputs.items()} == {"left": (3, 10), "right": (3, 5)}


@pytest.mark.parametrize(("architecture", "norm"), [("hard", nn.BatchNorm2d),
                                                    ("sigma", SigmaBatchNorm2d),
                                                    ("task", TaskBatchNorm2d),
                                                    ("task_sigma", TaskSigmaBatchNorm2d)])
def test_architecture_picks_the_norm(architecture, norm):
    assert sum(isinstance(m, norm) for m in model(architecture).modules()) == 4


def test_single_task_has_one_backbone_per_task():
    net = model("single_task")
    assert set(net.backbones) == {"left", "right"}
    assert net.backbones["left"] is not net.backbones["right"]


@pytest.mark.parametrize("layout", ["task_major", "sample_major"])
def test_batched_pass_equals_per_task_passes(layout):
    net = model("task_sigma", layout=layout).eval()
    x = torch.randn(4, 1, 23, 23)
    outputs = net(x)
    for task in ("left", "right"):
        with use_task(task):
            expected = net.heads[task](net.backbone(x))
        torch.testing.assert_close(outputs[task], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(net(x, task=task)[task], expected, atol=1e-5, rtol=1e-5)


def test_hard_sharing_runs_the_backbone_once_and_flops_show_it():
    x = torch.randn(1, 1, 23, 23)
    hard, tssigma, single = (count_flops(model(a), x) for a in ("hard", "task_sigma",
                                                                 "single_task"))
    assert 1.9 < tssigma / hard < 2.0  # the backbone runs once per task; the heads are tiny
    assert single == pytest.approx(tssigma, rel=0.01)


def test_errors():
    with pytest.raises(ValueError, match="unknown architecture 'soft'"):
        model("soft")
    with pytest.raises(ValueError, match="unknown task 'middle'"):
        model("hard")(torch.randn(1, 1, 23, 23), task="middle")
    with pytest.raises(ValueError, match="unknown backbone 'lenet'"):
        build_backbone("lenet")
    with pytest.raises(ValueError, match="unique names"):
        MultiTaskModel(digits_cnn, [TASKS[0], TASKS[0]])


def test_resnet_backbone_exposes_features():
    backbone = build_backbone("resnet18", in_channels=1)
    assert backbone.out_features == 512
    assert backbone(torch.randn(2, 1, 32, 32)).shape == (2, 512)
