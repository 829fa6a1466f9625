"""The task-tree network against independent computations: one group per task everywhere is the
TSσBN model, one group everywhere a σBN model, batched groups equal looped groups, extraction
equals the task's features, and a level costs its number of groups."""

import copy
from functools import partial

import pytest
import torch
from torch import nn

from tasknorm.models import (
    MultiTaskModel,
    StagedBackbone,
    count_flops,
    digits_cnn,
    segnet,
)
from tasknorm.nn import SigmaBatchNorm2d, TaskRouted, TaskSigmaBatchNorm2d, convert
from tasknorm.tasks import ClassificationTask
from tasknorm.trees import TaskTree, TaskTreeNetwork, initial_state

TASKS = ("a", "b", "c")
BACKBONES = {
    "digits_cnn": (partial(digits_cnn, width=8), (4, 1, 23, 23)),
    "segnet": (partial(segnet, width=0.125), (2, 3, 32, 32)),
}
HEADS = {"digits_cnn": None, "segnet": "conv"}
MIXED = [[["a", "b", "c"]], [["a", "b"], ["c"]], [["a"], ["b"], ["c"]]]
"""A tree that shares the first level, splits c off, then splits a from b."""


def network(backbone="digits_cnn", groups=MIXED, execution="batched", merge="first", seed=0):
    torch.manual_seed(seed)
    build, _ = BACKBONES[backbone]
    trunk = convert(build(), TASKS)
    tree = TaskTree.from_groups(TASKS, groups)
    return TaskTreeNetwork(trunk, StagedBackbone(trunk, levels=tree.depth).stages, tree, merge,
                           execution)


def example(backbone="digits_cnn"):
    torch.manual_seed(1)
    return torch.randn(BACKBONES[backbone][1])


def randomise(module: nn.Module) -> nn.Module:
    """Gates and running statistics drawn at random, so that every group differs."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, TaskRouted | SigmaBatchNorm2d):
                layer.gate_logit.normal_()
                layer.running_mean.normal_()
                layer.running_var.uniform_(0.5, 2.0)
    return module


def assert_same(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for task in expected:
        torch.testing.assert_close(actual[task], expected[task], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_one_group_per_task_everywhere_is_the_task_sigma_model(backbone, training):
    tasks = [ClassificationTask(t, 3) for t in TASKS]
    build, _ = BACKBONES[backbone]
    head = HEADS[backbone]
    reference = randomise(MultiTaskModel(build, tasks, "task_sigma", head=head)).train(training)
    tree = MultiTaskModel(build, tasks, "tree", head=head).train(training)
    assert tree.backbone.tree == TaskTree.separate(TASKS, len(tree.backbone.stages))
    tree.backbone.backbone.load_state_dict(reference.backbone.state_dict())
    tree.heads.load_state_dict(reference.heads.state_dict())
    x = example(backbone)
    assert_same(tree(x), reference(x))


@pytest.mark.parametrize("training", [True, False])
def test_one_group_everywhere_is_a_sigma_model_with_its_gates(training):
    net = randomise(network(groups=[[list(TASKS)]] * 2)).train(training)
    torch.manual_seed(0)
    reference = convert(digits_cnn(width=8), kind="sigma").train(training)
    ours = [m for m in net.backbone.modules() if isinstance(m, TaskSigmaBatchNorm2d)]
    theirs = [m for m in reference.modules() if isinstance(m, SigmaBatchNorm2d)]
    assert len(ours) == len(theirs) > 0
    with torch.no_grad():
        for group_layer, sigma in zip(ours, theirs, strict=True):
            assert group_layer.tasks == ("a+b+c",)
            sigma.gate_logit.copy_(group_layer.gate_logit[0])
            sigma.running_mean.copy_(group_layer.running_mean[0])
            sigma.running_var.copy_(group_layer.running_var[0])
    x = example()
    expected = reference(x)
    assert_same(net(x), dict.fromkeys(TASKS, expected))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_batched_and_looped_groups_agree(backbone, training):
    batched = randomise(network(backbone)).train(training)
    looped = copy.deepcopy(batched)
    looped.execution = "looped"
    x = example(backbone)
    outputs = {name: net(x) for name, net in (("batched", batched), ("looped", looped))}
    assert_same(outputs["looped"], outputs["batched"])
    for out in outputs.values():
        sum(o.square().mean() for o in out.values()).backward()
    for (name, param), other in zip(batched.named_parameters(), looped.parameters(),
                                    strict=True):
        torch.testing.assert_close(param.grad, other.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, buffer), other in zip(batched.named_buffers(), looped.buffers(), strict=True):
        torch.testing.assert_close(buffer, other, msg=name)


def test_auto_execution_picks_the_faster_per_device():
    net = network(execution="auto")
    assert net.execution_for(torch.device("cpu")) == "looped"
    assert net.execution_for(torch.device("cuda")) == "batched"
    assert network(execution="batched").execution_for(torch.device("cpu")) == "batched"


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_extracted_task_computes_its_features(backbone):
    net = randomise(network(backbone)).eval()
    x = example(backbone)
    features = net(x)
    for task in TASKS:
        plain = net.extract_task(task)
        assert not [m for m in plain.modules() if type(m).__module__.startswith("tasknorm.nn")]
        torch.testing.assert_close(plain(x), features[task], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown task 'd'"):
        net.extract_task("d")


def test_a_level_costs_its_number_of_groups():
    """FLOPs of a tree = Σ over levels of (groups × that level's stage FLOPs): one group
    everywhere is hard sharing's cost, one per task TSσBN's."""
    x = example()[:1]
    build, _ = BACKBONES["digits_cnn"]
    stages = StagedBackbone(build(), levels=3).stages
    per_stage, current = [], initial_state(x)
    for stage in stages:
        per_stage.append(count_flops(stage, current))
        current = stage(current)
    for groups in ([[list(TASKS)]] * 3, MIXED, [[[t] for t in TASKS]] * 3):
        tree = TaskTree.from_groups(TASKS, groups)
        expected = sum(n * f for n, f in zip(tree.groups_per_level, per_stage, strict=True))
        assert count_flops(network(groups=groups), x) == expected


def test_merge_rules_start_each_group_from_its_members():
    torch.manual_seed(0)
    trunk = randomise(convert(digits_cnn(width=8), TASKS))
    original = [m.gate_logit.detach().clone() for m in trunk.modules()
                if isinstance(m, TaskSigmaBatchNorm2d)]
    tree = TaskTree.from_groups(TASKS, [[["a", "b", "c"]]])
    for merge in ("first", "mean", "central"):
        copied = copy.deepcopy(trunk)
        net = TaskTreeNetwork(copied, StagedBackbone(copied, levels=1).stages, tree, merge)
        merged = [m.gate_logit.detach() for m in net.backbone.modules()
                  if isinstance(m, TaskSigmaBatchNorm2d)]
        if merge == "mean":
            expected = [g.mean(0, keepdim=True) for g in original]
        else:
            gates = torch.cat([g.sigmoid() for g in original], dim=1)
            spread = torch.cdist(gates, gates, p=1).sum(1)
            pick = 0 if merge == "first" else int(spread.argmin())
            expected = [g[pick:pick + 1] for g in original]
        for actual, reference in zip(merged, expected, strict=True):
            torch.testing.assert_close(actual, reference)


def test_state_dict_loads_into_a_network_of_the_same_tree_only():
    trained = randomise(network())
    fresh = network(seed=1)
    fresh.load_state_dict(trained.state_dict())
    x = example()
    assert_same(fresh.eval()(x), trained.eval()(x))
    other = network(groups=[[["a", "b", "c"]], [["a"], ["b", "c"]], [["a"], ["b"], ["c"]]])
    with pytest.raises(RuntimeError, match="saved with tasks"):
        other.load_state_dict(trained.state_dict())


def test_errors_leave_the_backbone_as_it_was():
    trunk = convert(digits_cnn(width=8), TASKS)
    state = copy.deepcopy(trunk.state_dict())
    stages = StagedBackbone(trunk, levels=2).stages
    cases = [
        ((trunk, stages, TaskTree.separate(TASKS, 3)), "has 3 levels but .* 2 stages"),
        ((trunk, stages, TaskTree.separate(TASKS, 2), "median"), "unknown merge rule"),
        ((trunk, stages, TaskTree.separate(TASKS, 2), "first", "parallel"), "unknown execution"),
        ((trunk, stages, TaskTree.separate(("a", "b"), 2)), "serves .* needs"),
        ((trunk, stages[:1] * 2, TaskTree.separate(TASKS, 2)), "lies in none of the stages"),
        ((digits_cnn(width=8), [nn.Identity()], TaskTree.separate(TASKS, 1)),
         "no task-specific norm"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            TaskTreeNetwork(*args)
    assert all(m.tasks == TASKS for m in trunk.modules() if isinstance(m, TaskRouted))
    assert all(torch.equal(v, state[k]) for k, v in trunk.state_dict().items()
               if isinstance(v, torch.Tensor))
