from functools import partial
from typing import get_args

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.regression import MeanSquaredError

from tasknorm.models import (
    ARCHITECTURES,
    LEARNED_SHARING,
    NORM_ARCHITECTURES,
    TREE,
    MultiTaskModel,
    build_backbone,
    count_flops,
    count_parameters,
    digits_cnn,
)
from tasknorm.models.multitask import Architecture
from tasknorm.nn import (
    SigmaBatchNorm2d,
    TaskBatchNorm2d,
    TaskRouted,
    TaskSigmaBatchNorm2d,
    use_task,
)
from tasknorm.tasks import ClassificationTask
from tasknorm.tasks.task import Task
from tasknorm.train.gradients import shared_parameters, task_gradients

TASKS = [ClassificationTask("left", 10), ClassificationTask("right", 5)]


def model(architecture, **kwargs):
    torch.manual_seed(0)
    return MultiTaskModel(lambda: digits_cnn(width=8), TASKS, architecture, **kwargs)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_returns_one_output_per_task(architecture):
    outputs = model(architecture)(torch.randn(3, 1, 23, 23))
    assert {t: o.shape for t, o in outputs.items()} == {"left": (3, 10), "right": (3, 5)}


def test_every_architecture_is_a_valid_option():
    assert ARCHITECTURES == get_args(Architecture)
    assert set(ARCHITECTURES) == {*NORM_ARCHITECTURES, *LEARNED_SHARING, TREE}


@pytest.mark.parametrize("architecture", list(LEARNED_SHARING))
def test_learned_sharing_trains_every_parameter_and_counts(architecture):
    # one-hot samples (the default) reach only the sampled tree's nodes in one pass
    net = model(architecture, architecture_args={"hard": False} if architecture == "ltb" else None)
    x = torch.randn(4, 1, 23, 23)
    sum(output.square().mean() for output in net(x).values()).backward()
    untouched = [name for name, p in net.named_parameters()
                 if p.grad is None or not p.grad.abs().sum() > 0]
    assert not untouched
    backbone = {id(p) for p in net.backbone.parameters()}
    heads = {id(p) for p in net.heads.parameters()}
    assert backbone | heads == {id(p) for p in net.parameters()} and not backbone & heads
    assert count_parameters(net) == sum(p.numel() for p in net.parameters())
    hard = count_flops(model("hard").eval(), x[:1])
    assert count_flops(net.eval(), x[:1]) >= hard


@pytest.mark.parametrize("architecture", ["mtan", "cgc", "ltb"])
def test_gradient_methods_see_every_non_head_parameter(architecture):
    """The aggregators' Jacobian is over ``shared_parameters(model.backbone)``: for these
    architectures every non-head parameter, a task's own ones with zeros in the others' rows."""
    net = model(architecture)
    shared = shared_parameters(net.backbone)
    assert len(shared) == len(list(net.backbone.parameters()))
    outputs = net(torch.randn(4, 1, 23, 23))
    losses = {task: output.square().mean() for task, output in outputs.items()}
    jacobian = task_gradients(losses, list(shared.values()))
    assert jacobian.shape == (2, sum(p.numel() for p in shared.values()))
    if architecture == "mtan":  # left's attention masks get no gradient from right's loss
        start = 0
        for name, p in shared.items():
            if ".left." in name:
                assert not jacobian[1, start:start + p.numel()].any()
                assert jacobian[0, start:start + p.numel()].any()
            start += p.numel()


@pytest.mark.parametrize(("architecture", "args", "message"), [
    ("mmoe", {"expert": 2}, "architecture 'mmoe' has no option expert; its options: experts, "
                            "gate_grid"),
    ("mtan", {"levels": 2}, "architecture 'mtan' has no option levels; its options: none"),
    ("hard", {"experts": 2}, r"architecture 'hard' takes no architecture_args, got \['experts'\]"),
    ("ltb", {"nodes": -1}, "nodes must be an integer >= 1, got -1"),
])
def test_bad_architecture_args(architecture, args, message):
    with pytest.raises(ValueError, match=message):
        model(architecture, architecture_args=args)


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


class DenseStandIn(Task):
    """A minimal task with ``out_channels`` (the tasks module's dense tasks are tested there)."""

    def __init__(self, name, out_channels):
        self.out_channels = out_channels
        super().__init__(name, primary="mse")

    def build_head(self, in_features):
        return nn.Conv2d(in_features, self.out_channels, 1)

    def loss(self, output, target):
        return (output - target).square().mean()

    def build_metrics(self):
        return MetricCollection({"mse": MeanSquaredError()})


DENSE = [DenseStandIn("segmentation", 13), DenseStandIn("depth", 1), DenseStandIn("normals", 3)]


class StridedStandIn(nn.Sequential):
    """A tiny dense backbone with output stride 4."""

    def __init__(self):
        super().__init__(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.out_features = 8


@pytest.mark.parametrize("head", [None, "conv", "segnet"])
@pytest.mark.parametrize("architecture", NORM_ARCHITECTURES)
def test_dense_outputs_are_resized_to_the_input(architecture, head):
    torch.manual_seed(0)
    net = MultiTaskModel(StridedStandIn, DENSE, architecture, head=head).eval()
    x = torch.randn(2, 3, 18, 22)
    outputs = net(x)
    assert {t: o.shape for t, o in outputs.items()} == {
        "segmentation": (2, 13, 18, 22), "depth": (2, 1, 18, 22), "normals": (2, 3, 18, 22)}
    for task in ("segmentation", "normals"):
        if architecture == "single_task":
            features = net.backbones[task](x)
        elif net.task_specific:
            with use_task(task):
                features = net.backbone(x)
        else:
            features = net.backbone(x)
        small = net.heads[task](features)
        assert small.shape[-2:] == (5, 6)
        expected = F.interpolate(small, (18, 22), mode="bilinear", align_corners=True)
        torch.testing.assert_close(outputs[task], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(outputs[task][..., 0, 0], small[..., 0, 0])  # corners kept


@pytest.mark.parametrize("architecture", list(LEARNED_SHARING))
def test_learned_sharing_dense_outputs_are_resized_to_the_input(architecture):
    torch.manual_seed(0)
    net = MultiTaskModel(partial(build_backbone, "dilated_cnn", width=2), DENSE, architecture,
                         head="conv").eval()
    x = torch.randn(2, 3, 18, 22)
    outputs = net(x)
    features = net.backbone(x)
    for task, channels in (("segmentation", 13), ("depth", 1), ("normals", 3)):
        small = net.heads[task](features[task])
        assert small.shape == (2, channels, 5, 6)
        expected = F.interpolate(small, (18, 22), mode="bilinear", align_corners=True)
        torch.testing.assert_close(outputs[task], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(net(x, task=task)[task], expected, atol=1e-5, rtol=1e-5)


def test_heads_by_name_get_the_task_channels_and_stay_plain():
    net = MultiTaskModel(lambda: build_backbone("segnet", width=0.125), DENSE, "task_sigma",
                         head="segnet")
    assert {t: h[-1].out_channels for t, h in net.heads.items()} == {
        "segmentation": 13, "depth": 1, "normals": 3}
    assert not any(isinstance(m, TaskRouted) for m in net.heads.modules())
    assert all(isinstance(m, TaskRouted) for m in net.backbone.modules()
               if "Norm" in type(m).__name__)
    net = MultiTaskModel(lambda: build_backbone("celeba_cnn", width=4),
                         [DenseStandIn("smiling", 1), DenseStandIn("male", 1)], "task_sigma",
                         head="linear")
    assert {t: o.shape for t, o in net(torch.randn(2, 3, 16, 16)).items()} == {
        "smiling": (2, 1), "male": (2, 1)}
    with pytest.raises(ValueError, match="unknown head 'fcn'"):
        MultiTaskModel(StridedStandIn, DENSE, "hard", head="fcn")


@pytest.mark.parametrize(("backbone", "kwargs", "head"), [
    ("segnet", {"width": 0.25}, "segnet"),
    pytest.param("resnet50_dilated", {}, "aspp", marks=pytest.mark.slow),  # the LibMTL model
])
def test_flops_and_parameters_hard_vs_task_sigma(backbone, kwargs, head):
    """3 tasks: TSσBN runs the backbone once per task (FLOPs = hard sharing + 2 × backbone;
    FlopCounterMode counts convolutions, not norms) and has one parameter more per norm channel
    (3 σ gates instead of a shared γ and β)."""
    x = torch.randn(2, 3, 32, 32)
    build = partial(build_backbone, backbone, **kwargs)
    counts = {}
    for architecture in ("hard", "task_sigma"):
        torch.manual_seed(0)
        net = MultiTaskModel(build, DENSE, architecture, head=head).eval()
        counts[architecture] = count_parameters(net), count_flops(net, x)
    plain = build().eval()
    (hard_params, hard_flops), (ts_params, ts_flops) = counts["hard"], counts["task_sigma"]
    assert ts_flops == hard_flops + 2 * count_flops(plain, x)
    norm_channels = sum(m.num_features for m in plain.modules() if isinstance(m, nn.BatchNorm2d))
    assert ts_params - hard_params == (3 - 2) * norm_channels
    assert 1.0 < ts_params / hard_params < 1.01


def _commit_to_one_tree(net):
    """Learning to Branch with logits so large that every sample is the hard tree."""
    for logits in (*net.backbone.branch_logits, net.backbone.task_logits):
        with torch.no_grad():
            logits.copy_(1e4 * torch.eye(*logits.shape))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_evaluation_with_the_statistics_of_a_batch_computes_what_training_did(architecture):
    """Contract: running statistics taken from one batch (momentum 1) make evaluation on that
    batch compute what training computed on it. It fails where one norm normalises inputs of
    different distributions in separate calls (its running statistics keep the last one's) or
    where evaluation takes another path than training."""
    net = model(architecture)
    if architecture == "ltb":
        _commit_to_one_tree(net)
    norms = [m for m in net.modules() if getattr(m, "running_mean", None) is not None]
    assert norms
    for norm in norms:
        norm.momentum = 1.0
    with torch.no_grad():
        for parameter in net.parameters():  # tasks whose features differ clearly
            parameter.add_(0.3 * torch.randn_like(parameter))
    x = torch.randn(512, 1, 23, 23)
    with torch.no_grad():
        trained = net.train()(x)
        evaluated = net.eval()(x)
    for task in trained:
        torch.testing.assert_close(evaluated[task], trained[task], atol=2e-3, rtol=2e-2)
