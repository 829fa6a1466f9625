import math

import pytest
import torch
import torch.nn.functional as F

from tasknorm.models import MultiTaskModel, digits_cnn
from tasknorm.models.experts import DSelectGate, SoftmaxGate
from tasknorm.models.stages import initial_state, split_stages
from tasknorm.tasks import ClassificationTask

TASKS = [ClassificationTask("left", 10), ClassificationTask("right", 5)]
X = torch.randn(4, 1, 23, 23)


def model(architecture, **args):
    torch.manual_seed(0)
    return MultiTaskModel(lambda: digits_cnn(width=8), TASKS, architecture,
                          architecture_args=args or None)


def softmax_gate(gate, x):
    """The gate by hand: softmax of a linear map of the image averaged over a 4 × 4 grid."""
    pooled = F.adaptive_avg_pool2d(x, 4).flatten(1)
    return torch.softmax(pooled @ gate.linear.weight.T + gate.linear.bias, dim=1)


def mixed(weights, outputs):
    return sum(weights[:, e].reshape(-1, *[1] * (out.dim() - 1)) * out
               for e, out in enumerate(outputs))


def assert_same_outputs(net, reference, x=X):
    for train in (True, False):
        net.train(train)
        reference.train(train)
        expected = reference(x)
        for task, output in net(x).items():
            torch.testing.assert_close(output, expected[task], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("architecture", "args"), [
    ("mmoe", {"experts": 1}), ("cgc", {"shared_experts": 1, "task_experts": 0}),
    ("ple", {"shared_experts": 1, "task_experts": 0})])
def test_a_single_expert_is_hard_sharing(architecture, args):
    net = model(architecture, **args)
    assert len(net.backbone.experts) == 1
    hard = model("hard")
    hard.backbone.load_state_dict(net.backbone.experts[0].backbone.state_dict())
    hard.heads.load_state_dict(net.heads.state_dict())
    assert_same_outputs(net, hard)


def test_cgc_mixes_the_shared_expert_and_each_task_expert():
    net = model("cgc").eval()  # experts: shared, left's, right's
    with torch.no_grad():
        experts = [expert.backbone(X) for expert in net.backbone.experts]
        outputs = net(X)
        for task, own in (("left", 1), ("right", 2)):
            weights = softmax_gate(net.backbone.task_gates[0][task], X)
            expected = net.heads[task](mixed(weights, [experts[0], experts[own]]))
            torch.testing.assert_close(outputs[task], expected)


def test_ple_with_one_level_is_cgc():
    cgc, ple = model("cgc"), model("ple", levels=1)
    ple.load_state_dict(cgc.state_dict())
    assert_same_outputs(ple, cgc)


def test_mmoe_gives_every_task_its_gate_over_all_experts():
    net = model("mmoe", experts=3).eval()
    with torch.no_grad():
        experts = [expert.backbone(X) for expert in net.backbone.experts]
        outputs = net(X)
        for task in ("left", "right"):
            weights = softmax_gate(net.backbone.task_gates[0][task], X)
            torch.testing.assert_close(outputs[task], net.heads[task](mixed(weights, experts)))


def test_two_level_ple_by_hand():
    """Level 1: stages 1-2 of each copy; level 2: stages 3-4. Left's level-2 expert reads left's
    mixture, the shared one the shared gate's mixture of all three level-1 experts."""
    net = model("ple").eval()
    ple = net.backbone
    stages = [split_stages(expert.backbone) for expert in ple.experts]

    def level(copy, index, features):
        state = initial_state(X)._replace(features=features)
        for stage in stages[copy][2 * index:2 * index + 2]:
            state = stage(state)
        return state.features

    with torch.no_grad():
        first = [level(copy, 0, X) for copy in range(3)]
        shared = mixed(softmax_gate(ple.shared_gates[0], X), first)
        inputs = {task: mixed(softmax_gate(ple.task_gates[0][task], X), [first[0], first[own]])
                  for task, own in (("left", 1), ("right", 2))}
        outputs = net(X)
        for task, own in (("left", 1), ("right", 2)):
            second = [level(0, 1, shared), level(own, 1, inputs[task])]
            expected = mixed(softmax_gate(ple.task_gates[1][task], X), second)
            torch.testing.assert_close(outputs[task], net.heads[task](expected))
    assert len(ple.shared_gates) == 1  # no shared gate after the last level


@pytest.mark.parametrize("experts", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_dselect_weights_are_a_distribution(experts, k):
    torch.manual_seed(0)
    gate = DSelectGate(1, experts, k)
    weights = gate(torch.randn(16, 1, 8, 8) * 3)
    assert weights.shape == (16, experts) and (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(16))


def concentrate(gate, codes, combiner=None):
    """Selector ``i`` digits fixed to the bits of ``codes[i]`` (z = ±10, far beyond γ/2)."""
    with torch.no_grad():
        gate.selectors.weight.zero_()
        gate.selectors.bias.copy_(torch.tensor(
            [10.0 if code >> bit & 1 else -10.0 for code in codes for bit in range(gate.bits)]))
        if combiner is not None:
            gate.combiner.weight.zero_()
            gate.combiner.bias.copy_(torch.tensor(combiner))


@pytest.mark.parametrize(("experts", "code", "expert"), [(4, 1, 1), (4, 2, 2), (4, 3, 3),
                                                         (3, 3, 0), (5, 6, 1)])
def test_dselect_one_selector_with_binary_digits_selects_one_expert(experts, code, expert):
    gate = DSelectGate(1, experts, k=1)
    concentrate(gate, [code])
    weights = gate(torch.randn(3, 1, 8, 8))
    assert torch.equal(weights, F.one_hot(torch.tensor([expert] * 3), experts).float())


def test_dselect_selector_and_combination_by_hand():
    gate = DSelectGate(1, 4, k=2, gamma=1.0)
    with torch.no_grad():
        gate.selectors.weight.zero_()
        gate.selectors.bias.copy_(torch.tensor([0.25, -0.25, 10.0, 10.0]))
        gate.combiner.weight.zero_()
        gate.combiner.bias.copy_(torch.tensor([math.log(3.0), 0.0]))  # softmax (0.75, 0.25)
    s0, s1 = 0.84375, 0.15625  # smooth step of ±0.25 with γ = 1
    first = torch.tensor([(1 - s0) * (1 - s1), s0 * (1 - s1), (1 - s0) * s1, s0 * s1])
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(gate.selections(x)[0, 0], first)
    expected = 0.75 * first + 0.25 * F.one_hot(torch.tensor(3), 4)
    torch.testing.assert_close(gate(x), expected.expand(2, 4))


def test_dselect_k_concentrated_on_one_expert_is_that_expert():
    net = model("dselect_k", k=1)
    for gate in net.backbone.task_gates[0].values():
        concentrate(gate, [2])
    hard = model("hard")
    hard.backbone.load_state_dict(net.backbone.experts[2].backbone.state_dict())
    hard.heads.load_state_dict(net.heads.state_dict())
    assert_same_outputs(net, hard)


def test_gates_see_the_pooled_image():
    gate = SoftmaxGate(3, 5, grid=2)
    assert gate.linear.in_features == 3 * 2 * 2
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(gate(x), torch.softmax(gate.linear(
        x.unflatten(2, (2, 8)).unflatten(4, (2, 8)).mean(dim=(3, 5)).flatten(1)), dim=1))


@pytest.mark.parametrize(("architecture", "args", "message"), [
    ("mmoe", {"experts": 0}, "experts must be an integer >= 1, got 0"),
    ("cgc", {"shared_experts": 0, "task_experts": 0}, "each task needs at least one expert"),
    ("cgc", {"task_experts": -1}, "task_experts must be an integer >= 0, got -1"),
    ("ple", {"levels": 0}, "levels must be an integer >= 1, got 0"),
    ("ple", {"levels": 5}, "levels=5 exceeds the 4 stages of DigitsCNN"),
    ("dselect_k", {"experts": 1}, "experts must be an integer >= 2, got 1"),
    ("dselect_k", {"k": 0}, "k must be an integer >= 1, got 0"),
    ("dselect_k", {"gamma": 0.0}, "gamma must be a positive number, got 0.0"),
    ("mmoe", {"gate_grid": 0}, "gate_grid must be an integer >= 1, got 0"),
    ("mmoe", {"experts": 2.5}, "experts must be an integer >= 1, got 2.5"),
])
def test_bad_options(architecture, args, message):
    with pytest.raises(ValueError, match=message):
        model(architecture, **args)
