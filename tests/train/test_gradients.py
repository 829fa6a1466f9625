import math

import numpy as np
import pytest
import torch
from torch import nn

from tasknorm.models import digits_cnn
from tasknorm.nn import TaskSigmaBatchNorm2d, convert, use_task
from tasknorm.train.gradients import (
    cosine_statistics,
    gradient_cosines,
    objective_weights,
    pair_values,
    rolling_std,
    shared_parameters,
    task_gradients,
    task_jacobian,
    task_pairs,
)

TASKS = ["left", "right", "third"]


def tiny_model():
    torch.manual_seed(0)
    backbone = convert(digits_cnn(width=4), TASKS)
    heads = nn.ModuleDict({t: nn.Linear(backbone.out_features, 3) for t in TASKS})
    return backbone, heads


def task_losses(backbone, heads):
    torch.manual_seed(1)
    x = torch.randn(6, 1, 23, 23)
    target = torch.randint(0, 3, (6,))
    losses = {}
    for task in TASKS:
        with use_task(task):
            losses[task] = nn.functional.cross_entropy(heads[task](backbone(x)), target)
    return losses


def test_shared_parameters_leave_out_task_specific_norms():
    backbone, _ = tiny_model()
    shared = shared_parameters(backbone)
    assert list(shared) == [f"features.{i}.weight" for i in (0, 3, 6, 9)]
    gates = {id(m.gate_logit) for m in backbone.modules() if isinstance(m, TaskSigmaBatchNorm2d)}
    assert gates and not gates & {id(p) for p in shared.values()}


def test_shared_norms_count_as_shared():
    names = list(shared_parameters(digits_cnn(width=4)))
    assert "features.1.weight" in names and "features.1.bias" in names


def test_named_subset_and_errors():
    backbone, _ = tiny_model()
    assert list(shared_parameters(backbone, ["features.9", "features.0.weight"])) == [
        "features.0.weight", "features.9.weight"]
    with pytest.raises(ValueError, match=r"no trainable shared parameter is named 'features.1'"):
        shared_parameters(backbone, ["features.1"])  # a TSσBN layer: task-specific
    with pytest.raises(TypeError, match="sequence of names"):
        shared_parameters(backbone, "features.9")
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable shared parameter"):
        shared_parameters(frozen)


def test_task_gradients_equal_separate_backward_passes():
    backbone, heads = tiny_model()
    params = list(shared_parameters(backbone).values())
    losses = task_losses(backbone, heads)
    matrix = task_gradients(losses, params)
    assert matrix.shape == (3, sum(p.numel() for p in params))
    assert all(p.grad is None for p in backbone.parameters())  # nothing accumulated
    for row, task in enumerate(TASKS):
        backbone.zero_grad(set_to_none=True)
        task_losses(backbone, heads)[task].backward()
        expected = torch.cat([p.grad.reshape(-1) for p in params])
        torch.testing.assert_close(matrix[row], expected)


def test_losses_can_still_be_backpropagated():
    backbone, heads = tiny_model()
    losses = task_losses(backbone, heads)
    task_gradients(losses, list(shared_parameters(backbone).values()))
    sum(losses.values()).backward()
    assert backbone.features[0].weight.grad is not None


def test_unreached_parameter_gives_zeros_and_create_graph_is_differentiable():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    v = torch.tensor([3.0], requires_grad=True)
    matrix = task_gradients([(w ** 2).sum(), (v * w[0]).sum()], [w, v], create_graph=True)
    torch.testing.assert_close(matrix.detach(), torch.tensor([[2.0, 4.0, 0.0],
                                                              [3.0, 0.0, 1.0]]))
    assert matrix.requires_grad
    (grad_w,) = torch.autograd.grad(matrix[0].sum(), [w])  # d/dw (2 w0 + 2 w1) = [2, 2]
    torch.testing.assert_close(grad_w, torch.tensor([2.0, 2.0]))


def test_task_jacobian_is_task_gradients_plus_the_summed_gradient_of_the_rest():
    torch.manual_seed(0)
    shared, head = torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)
    unused = torch.randn(1, requires_grad=True)
    x = torch.randn(4, 3)
    objectives = torch.stack([(x @ shared).pow(2).mean() * head[0],
                              (x @ shared).sin().sum() + head.sum()])
    expected_jacobian = task_gradients(list(objectives), [shared])
    (expected_head,) = torch.autograd.grad(objectives.sum(), [head], retain_graph=True)
    jacobian, (head_grad, unused_grad) = task_jacobian(objectives, [shared], [head, unused])
    torch.testing.assert_close(jacobian, expected_jacobian)
    torch.testing.assert_close(head_grad, expected_head)
    assert unused_grad is None
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        objectives.sum().backward()  # the last pass freed the graph


def test_task_gradients_needs_losses_and_parameters():
    with pytest.raises(ValueError, match="at least one loss and one parameter"):
        task_gradients({}, [torch.zeros(1, requires_grad=True)])


def test_cosines_of_hand_made_gradients():
    gradients = torch.tensor([[1.0, 0.0, 0.0], [0.0, 5.0, 0.0], [2.0, 0.0, 0.0],
                              [-3.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    cos = gradient_cosines(gradients)
    assert cos[0, 1] == pytest.approx(0.0)  # orthogonal
    assert cos[0, 2] == pytest.approx(1.0)  # parallel, other length
    assert cos[0, 3] == pytest.approx(-1.0)  # opposite
    assert cos[0, 4] == pytest.approx(1 / math.sqrt(2))
    assert cos[5].abs().max() == 0  # a zero gradient has cosine 0 with everything
    torch.testing.assert_close(cos, cos.T)
    with pytest.raises(ValueError, match="tasks, parameters"):
        gradient_cosines(torch.zeros(3))


def test_pairs_and_pair_values_agree():
    matrix = torch.arange(16.0).reshape(4, 4)
    pairs = task_pairs(["a", "b", "c", "d"])
    names = "abcd"
    expected = [matrix[names.index(a), names.index(b)] for a, b in pairs]
    assert pair_values(matrix).tolist() == [float(v) for v in expected]
    with pytest.raises(ValueError, match="square"):
        pair_values(torch.zeros(2, 3))


def test_rolling_std_matches_numpy():
    values = torch.tensor(np.random.default_rng(0).normal(size=(9, 3)))
    window = 4
    rolled = rolling_std(values, window)
    pooled = rolling_std(values, window, pooled=True)
    for i in range(9):
        chunk = values[max(0, i - window + 1):i + 1].numpy()
        np.testing.assert_allclose(rolled[i].numpy(), chunk.std(axis=0))
        assert float(pooled[i]) == pytest.approx(chunk.std())
    with pytest.raises(ValueError, match="window"):
        rolling_std(values, 0)


def test_cosine_statistics():
    cosines = torch.tensor([[0.1, -0.2], [0.3, 0.4], [-0.5, 0.0]], dtype=torch.float64)
    stats = cosine_statistics(cosines, window=2)
    array = cosines.numpy()
    np.testing.assert_allclose(stats["mean"].numpy(), array.mean(0))
    np.testing.assert_allclose(stats["std"].numpy(), array.std(0))
    np.testing.assert_allclose(stats["rolling_std"][-1].numpy(), array[1:].std(0))
    assert float(stats["overall_std"]) == pytest.approx(array.std())
    assert float(stats["overall_rolling_std"][-1]) == pytest.approx(array[1:].std())
    with pytest.raises(ValueError, match="at least one measurement"):
        cosine_statistics(torch.zeros(0, 2), 3)


def test_the_chain_rule_through_the_losses_gives_the_jacobian_of_the_objectives():
    """objective_weights @ (Jacobian of the losses) == Jacobian of objectives that mix the
    losses, and the weighted sum of the losses' gradients on the others is that of the
    objectives' sum."""
    torch.manual_seed(0)
    shared = torch.randn(5, requires_grad=True)
    heads = [torch.randn(5, requires_grad=True) for _ in range(3)]

    def losses():
        return [((shared * head).sum() + i) ** 2 for i, head in enumerate(heads)]

    def objectives(values):
        stacked = torch.stack(values)
        return torch.stack([stacked[0].log() + stacked[1], stacked[1] * stacked[2], stacked[2]])

    values = losses()
    chain = objective_weights(objectives(values), values)
    rows, rest = task_jacobian(values, [shared], heads, weights=chain.sum(0))
    expected, expected_rest = task_jacobian(objectives(losses()), [shared], heads)
    torch.testing.assert_close(chain @ rows, expected)
    for got, want in zip(rest, expected_rest, strict=True):
        torch.testing.assert_close(got, want)
