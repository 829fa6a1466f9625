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
    with pytest.raises(ValueError, match="unknown loss weighting 'gradnorm'"):
        build_weighting("gradnorm", ["a"])


def test_fixed_weighting_uses_the_given_weights():
    weighting = build_weighting("fixed", ["a", "b"], weights={"a": 2.0, "b": 10.0})
    assert weighting(LOSSES).item() == pytest.approx(2.0 * 2.0 + 10.0 * 0.5)
    with pytest.raises(ValueError, match=r"given for \['a'\] but the tasks are \['a', 'b'\]"):
        build_weighting("fixed", ["a", "b"], weights={"a": 1.0})
    with pytest.raises(ValueError, match=r"bad arguments .* 'equal'"):
        build_weighting("equal", ["a", "b"], weights={"a": 1.0})
