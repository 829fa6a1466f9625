import math

import pytest
import torch

from tasknorm.models.cifar import resnet56, vgg16
from tasknorm.nn import SigmaBatchNorm2d
from tasknorm.prune import l1_scale_penalty, make_regularizer, receding_importance_penalty


def test_rni_penalty_value_and_gradient():
    model = torch.nn.Sequential(SigmaBatchNorm2d(2))
    with torch.no_grad():
        model[0].gate_logit.copy_(torch.tensor([0.0, -1.18]))
    penalty = receding_importance_penalty(model, strength=2.0, offset=0.0)
    expected = sum(w * (1 - math.log(w)) for w in (0.5, 1 / (1 + math.exp(1.18))))
    assert penalty.item() == pytest.approx(2.0 * expected, rel=1e-6)
    penalty.backward()
    # dR/dγ = λ (−ln w) w (1 − w): 0.1733 at γ = 0, the peak 0.2603 at γ ≈ −1.18 (b = 0)
    assert model[0].gate_logit.grad.tolist() == pytest.approx([2 * 0.1733, 2 * 0.2603], abs=2e-4)


def test_rni_offset_moves_the_receding_zone():
    model = torch.nn.Sequential(SigmaBatchNorm2d(1))
    with torch.no_grad():
        model[0].gate_logit.fill_(-4.18)
    receding_importance_penalty(model, strength=1.0, offset=3.0).backward()
    assert model[0].gate_logit.grad.item() == pytest.approx(0.2603, abs=2e-4)


def test_rni_needs_sigma_layers():
    with pytest.raises(ValueError, match="σBN"):
        receding_importance_penalty(vgg16(norm="bn"))


def test_l1_penalty_over_all_bn_weights():
    model = resnet56(norm="bn")
    assert l1_scale_penalty(model, 1.0).item() == pytest.approx(0.5 * 2032)
    with pytest.raises(ValueError, match="BatchNorm"):
        l1_scale_penalty(vgg16(norm="sigma"))


def test_make_regularizer():
    assert make_regularizer("none", 1.0) is None
    assert make_regularizer("rni", 1e-3)(vgg16(norm="sigma")).item() > 0
    with pytest.raises(ValueError, match="unknown"):
        make_regularizer("l2", 1.0)
