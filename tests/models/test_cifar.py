import pytest
import torch

from tasknorm.models.backbones import count_parameters
from tasknorm.models.cifar import CifarResNet, PadChannels, resnet56, resnet56_projection, vgg16
from tasknorm.nn import SigmaBatchNorm2d
from tasknorm.prune import count_macs


def test_vgg16_size_and_macs_match_the_reference():
    model = vgg16()
    assert count_parameters(model) == 14_728_266
    assert count_macs(model, torch.randn(1, 3, 32, 32)) == 313_201_664


def test_resnet56_size_macs_and_prunable_norms():
    assert count_macs(resnet56(), torch.randn(1, 3, 32, 32)) == 125_485_696
    model = resnet56(num_classes=100, norm="sigma")
    norms = model.prunable_norms()
    assert len(norms) == 27 and all(isinstance(m, SigmaBatchNorm2d) for m in norms)
    assert sum(m.num_features for m in norms) == 1008
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_projection_variant_prunes_every_norm():
    model = resnet56_projection()
    assert len(model.prunable_norms()) == 1 + 54 + 2  # stem, blocks, 2 projections
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_option_a_shortcut_pads_channels_on_both_sides():
    x = torch.ones(1, 16, 4, 4)
    y = PadChannels(2, 16)(x)
    assert y.shape == (1, 32, 2, 2)
    assert y[0, :8].abs().sum() == 0 and y[0, 24:].abs().sum() == 0 and y[0, 8:24].min() == 1


def test_bad_depth():
    with pytest.raises(ValueError, match="6n"):
        CifarResNet(depth=51)
