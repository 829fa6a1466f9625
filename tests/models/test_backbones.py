import pytest
import torch
from torch import nn

from tasknorm.models import BACKBONES, MultiTaskModel, build_backbone, digits_encoder
from tasknorm.nn import TaskSigmaBatchNorm2d
from tasknorm.tasks import ClassificationTask

TASKS = [ClassificationTask("left", 5), ClassificationTask("right", 5)]


@pytest.mark.parametrize("norm", [True, False])
def test_digits_encoder_is_two_strided_bias_free_convs(norm):
    encoder = build_backbone("digits_encoder", norm=norm)
    assert "digits_encoder" in BACKBONES and encoder.out_features == 20
    expected = [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2 if norm else [nn.Conv2d, nn.ReLU] * 2
    assert [type(m) for m in encoder.features] == expected
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [c.weight.shape for c in convs] == [(20, 1, 3, 3), (20, 20, 3, 3)]
    assert all(c.stride == (2, 2) and c.bias is None for c in convs)
    assert encoder(torch.randn(2, 1, 23, 23)).shape == (2, 20, 6, 6)
    assert digits_encoder(in_channels=3, width=8)(torch.randn(2, 3, 32, 32)).shape == (2, 8, 8, 8)


@pytest.mark.parametrize("architecture", ["hard", "task_sigma"])
def test_spatial_encoder_with_vector_heads(architecture):
    torch.manual_seed(0)
    model = MultiTaskModel(digits_encoder, TASKS, architecture, head="conv_fc")
    outputs = model(torch.randn(3, 1, 23, 23))  # (3, 20, 6, 6) features, not resized outputs
    assert {t: o.shape for t, o in outputs.items()} == {"left": (3, 5), "right": (3, 5)}
    converted = sum(isinstance(m, TaskSigmaBatchNorm2d) for m in model.modules())
    assert converted == (2 if architecture == "task_sigma" else 0)
