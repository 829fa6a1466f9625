import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead

from tasknorm.models import HEADS, build_head


@pytest.mark.parametrize(("name", "shape", "expected"), [
    ("aspp", (2, 32, 6, 5), (2, 13, 6, 5)),
    ("segnet", (2, 8, 6, 5), (2, 13, 6, 5)),
    ("conv", (2, 8, 6, 5), (2, 13, 6, 5)),
    ("linear", (2, 8), (2, 13)),
    ("conv_fc", (2, 8, 6, 6), (2, 13)),
    ("conv_fc", (2, 8, 11, 9), (2, 13)),
])
def test_heads_keep_the_resolution_and_output_the_channels(name, shape, expected):
    assert set(HEADS) == {"aspp", "segnet", "conv", "conv_fc", "linear"}
    torch.manual_seed(0)
    assert build_head(name, shape[1], 13)(torch.randn(shape)).shape == expected


def test_aspp_is_deeplab_head_with_libmtl_rates():
    head = build_head("aspp", 32, 3)
    assert isinstance(head, DeepLabHead)
    aspp = next(m for m in head.modules() if isinstance(m, ASPP))
    dilated = [m.dilation[0] for m in aspp.modules()
               if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert dilated == [12, 24, 36]
    assert head[-1].out_channels == 3 and head[-1].in_channels == 256


def test_segnet_head_is_conv3x3_then_conv1x1():
    torch.manual_seed(0)
    head = build_head("segnet", 8, 3)
    first, second = head
    x = torch.randn(2, 8, 7, 7)
    expected = F.conv2d(F.conv2d(x, first.weight, first.bias, padding=1), second.weight,
                        second.bias)
    torch.testing.assert_close(head(x), expected)
    assert (first.weight.shape, second.weight.shape) == ((8, 8, 3, 3), (3, 8, 1, 1))
    assert torch.count_nonzero(first.bias) == 0  # mtan initialisation


@pytest.mark.parametrize(("in_channels", "hidden"), [(8, 8), (384, 256)])
def test_conv_head_is_conv_bn_relu_then_conv1x1(in_channels, hidden):
    head = build_head("conv", in_channels, 3)
    assert [type(m) for m in head] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    assert head[0].weight.shape == (hidden, in_channels, 3, 3) and head[0].bias is None
    assert head[3].weight.shape == (3, hidden, 1, 1)


def test_conv_fc_head_is_strided_conv_then_two_linear_layers():
    head = build_head("conv_fc", 20, 5)
    assert [type(m) for m in head] == [nn.Conv2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Flatten,
                                       nn.Linear, nn.ReLU, nn.Linear]
    conv, first, last = head[0], head[4], head[6]
    assert conv.weight.shape == (20, 20, 3, 3) and conv.stride == (2, 2) and conv.bias is None
    assert (first.in_features, first.out_features, last.out_features) == (180, 50, 5)
    x = torch.randn(2, 20, 6, 6)  # digits_encoder's map of a 23×23 image: pooling is a no-op
    torch.testing.assert_close(head[2](head[1](conv(x))), F.relu(conv(x)))


def test_errors():
    with pytest.raises(ValueError, match=r"unknown head 'fcn'; expected one of \['aspp', 'conv', "
                                         r"'conv_fc', 'linear', 'segnet'\]"):
        build_head("fcn", 8, 3)
    with pytest.raises(ValueError, match="positive integer out_channels"):
        build_head("conv", 8, 0)
