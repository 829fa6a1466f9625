import math

import pytest
import torch

from tasknorm.train import DynamicWeightAverage, EqualWeighting, UncertaintyWeighting
from tasknorm.train.weighting import build_weighting

LOSSES = {"a": torch.tensor(2.0), "b": torch.tensor(0.5)}


def test_equal_weighting_sums():
    assert EqualWeighting(["a", "b"])(LOSSES).item() == pytest.approx(2.5)


def test_uncertainty_weighting_formula_and_gradient():
    weighting = UncertaintyWeighting(["a", "b"])
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([1.0, -1.0]))
    total = weighting(LOSSES)
    expected = sum(0.5 * math.exp(-s) * loss + 0.5 * s
                   for s, loss in ((1.0, 2.0), (-1.0, 0.5)))
    assert total.item() == pytest.approx(expected)
    total.backward()
    # d/ds [0.5 e^{-s} L + 0.5 s] = 0.5 - 0.5 e^{-s} L
    torch.testing.assert_close(weighting.log_vars.grad,
                               torch.tensor([0.5 - 0.5 * math.exp(-1) * 2.0,
                                             0.5 - 0.5 * math.exp(1) * 0.5]))


def test_dwa_weights_follow_the_loss_ratios():
    dwa = DynamicWeightAverage(["a", "b"], temperature=2.0)
    assert dwa.weights() == {"a": 1.0, "b": 1.0}
    dwa.epoch_end({"a": 1.0, "b": 1.0})
    assert dwa.weights() == {"a": 1.0, "b": 1.0}
    dwa.epoch_end({"a": 0.5, "b": 1.0})  # a improved, b did not: b gets more weight
    ea, eb = math.exp(0.5 / 2), math.exp(1.0 / 2)
    weights = dwa.weights()
    assert weights["a"] == pytest.approx(2 * ea / (ea + eb))
    assert weights["b"] == pytest.approx(2 * eb / (ea + eb))
    assert dwa(LOSSES).item() == pytest.approx(weights["a"] * 2.0 + weights["b"] * 0.5)
    restored = DynamicWeightAverage(["a", "b"])
    restored.load_state_dict(dwa.state_dict())
    assert restored.weights() == pytest.approx(weights)


def test_unknown_weighting():
    with pytest.raises(ValueError, match=r"unknown loss weighting 'pcgrad'; expected one of "
                                         r"\['dwa', 'equal', 'fixed', 'gradnorm', 'rlw', "):
        build_weighting("pcgrad", ["a"])


def test_random_loss_weighting_draws_softmax_of_a_normal_sample():
    weighting = build_weighting("rlw", ["a", "b"])
    torch.manual_seed(3)
    z = torch.randn(2)
    torch.manual_seed(3)
    total = weighting(LOSSES)
    w = torch.softmax(z, dim=0)
    assert total.item() == pytest.approx(w[0].item() * 2.0 + w[1].item() * 0.5)
    assert weighting.weights() == pytest.approx({"a": w[0].item(), "b": w[1].item()})
    assert weighting(LOSSES).item() != pytest.approx(total.item())  # a fresh draw every step


def test_gradnorm_formula():
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 4, bias=False)
    backbone = torch.nn.Sequential(shared)
    weighting = build_weighting("gradnorm", ["a", "b"], alpha=1.5)
    weighting.attach(backbone)
    x = torch.randn(6, 3)

    def losses(scale_b):
        features = backbone(x)
        return {"a": features.pow(2).mean(), "b": scale_b * (features.sum(1) - 1).pow(2).mean()}

    first = losses(1.0)
    weighting(first)  # remembers L(0)
    with torch.no_grad():
        weighting.task_weights.copy_(torch.tensor([3.0, 1.0]))  # renormalised to (1.5, 0.5)
    current = losses(0.5)
    total = weighting(current)
    w = torch.tensor([1.5, 0.5])
    torch.testing.assert_close(weighting.task_weights.detach(), w)
    norms = torch.stack([torch.autograd.grad(current[t], shared.weight, retain_graph=True)[0]
                         .norm() for t in ("a", "b")])
    big_g = w * norms
    ratios = torch.stack([current[t].detach() / first[t].detach() for t in ("a", "b")])
    target = big_g.mean() * (ratios / ratios.mean()) ** 1.5
    expected = (w * torch.stack([current["a"], current["b"]])).sum() + (big_g - target).abs().sum()
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    (grad,) = torch.autograd.grad(total, weighting.task_weights, retain_graph=True)
    torch.testing.assert_close(grad, norms * torch.sign(big_g - target))
    # the network learns from the weighted sum only
    (net,) = torch.autograd.grad(total, shared.weight)
    (plain,) = torch.autograd.grad(1.5 * losses(0.5)["a"] + 0.5 * losses(0.5)["b"],
                                   shared.weight)
    torch.testing.assert_close(net, plain)


def test_gradnorm_needs_shared_parameters():
    weighting = build_weighting("gradnorm", ["a", "b"])
    with pytest.raises(RuntimeError, match="attach"):
        weighting(LOSSES)


def test_fixed_weighting_uses_the_given_weights():
    weighting = build_weighting("fixed", ["a", "b"], weights={"a": 2.0, "b": 10.0})
    assert weighting(LOSSES).item() == pytest.approx(2.0 * 2.0 + 10.0 * 0.5)
    with pytest.raises(ValueError, match=r"given for \['a'\] but the tasks are \['a', 'b'\]"):
        build_weighting("fixed", ["a", "b"], weights={"a": 1.0})
    with pytest.raises(ValueError, match=r"bad arguments .* 'equal'"):
        build_weighting("equal", ["a", "b"], weights={"a": 1.0})
