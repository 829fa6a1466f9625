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
])
def test_heads_keep_the_resolution_and_output_the_channels(name, shape, expected):
    assert set(HEADS) == {"aspp", "segnet", "conv", "linear"}
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


def test_errors():
    with pytest.raises(ValueError, match=r"unknown head 'fcn'; expected one of \['aspp', 'conv', "
                                         r"'linear', 'segnet'\]"):
        build_head("fcn", 8, 3)
    with pytest.raises(ValueError, match="positive integer out_channels"):
        build_head("conv", 8, 0)
