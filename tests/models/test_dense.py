import copy
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from timm.layers import LayerNorm
from torch import nn

from tasknorm.models import BACKBONES, build_backbone, count_parameters
from tasknorm.models.dense import SEGNET_CHANNELS, max_unpool
from tasknorm.nn import (
    TaskRouted,
    TaskSigmaBatchNorm1d,
    TaskSigmaBatchNorm2d,
    TaskSigmaLayerNorm,
    convert,
    stack_tasks,
    unstack_tasks,
    use_all_tasks,
    use_task,
)

TASKS = ["segmentation", "depth", "normals"]

# name -> (builder kwargs, input shape, output shape, norm layers by type)
CASES = {
    "resnet50_dilated": ({}, (2, 3, 32, 32), (2, 2048, 4, 4), {nn.BatchNorm2d: 53}),
    "segnet": ({"width": 0.125}, (2, 3, 32, 32), (2, 8, 32, 32), {nn.BatchNorm2d: 26}),
    "vit_small": ({}, (2, 3, 32, 48), (2, 384, 2, 3), {LayerNorm: 25}),
    "dilated_cnn": ({"width": 4}, (2, 3, 32, 48), (2, 8, 8, 12), {nn.BatchNorm2d: 7}),
    "celeba_cnn": ({"width": 8}, (2, 3, 32, 32), (2, 64), {nn.BatchNorm2d: 7, nn.BatchNorm1d: 2}),
}
CONVERTED = {nn.BatchNorm2d: TaskSigmaBatchNorm2d, nn.BatchNorm1d: TaskSigmaBatchNorm1d,
             LayerNorm: TaskSigmaLayerNorm}


@pytest.fixture(scope="module")
def backbones():
    torch.manual_seed(0)
    return {name: build_backbone(name, **kwargs) for name, (kwargs, *_) in CASES.items()}


def norm_counts(model):
    types = (*CONVERTED, *CONVERTED.values())
    return {t: sum(type(m) is t for m in model.modules()) for t in types}


@pytest.mark.parametrize("name", list(CASES))
def test_output_shape_and_features(backbones, name):
    _, shape, expected, _ = CASES[name]
    model = backbones[name]
    assert name in BACKBONES
    assert model(torch.randn(shape)).shape == expected
    assert model.out_features == expected[1]
    if len(expected) == 4:
        assert model.output_stride == shape[-1] // expected[-1]


@pytest.mark.parametrize("name", list(CASES))
def test_task_sigma_conversion_replaces_every_norm(backbones, name):
    norms = CASES[name][3]
    before = norm_counts(backbones[name])
    assert {t: n for t, n in before.items() if n} == norms
    model = convert(copy.deepcopy(backbones[name]), TASKS, kind="task_sigma")
    after = norm_counts(model)
    assert not any(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d | nn.LayerNorm)
                   for m in model.modules())
    assert {t: n for t, n in after.items() if n} == {CONVERTED[t]: n for t, n in norms.items()}
    assert sum(isinstance(m, TaskRouted) for m in model.modules()) == sum(norms.values())


@pytest.mark.parametrize("name", list(CASES))
def test_all_tasks_pass_equals_per_task_passes(backbones, name):
    """In training mode (per-task batch statistics) and in eval mode (running statistics); in
    float64, so that only the computation, not float32 rounding, is compared."""
    torch.manual_seed(1)
    model = convert(copy.deepcopy(backbones[name]), TASKS, kind="task_sigma").double()
    x = torch.randn(CASES[name][1], dtype=torch.float64)
    for training in (True, False):
        model.train(training)
        with torch.no_grad(), use_all_tasks():
            together = unstack_tasks(model(stack_tasks(x, len(TASKS))), len(TASKS))
        for task, output in zip(TASKS, together, strict=True):
            with torch.no_grad(), use_task(task):
                torch.testing.assert_close(output, model(x), atol=1e-9, rtol=1e-9)
        assert not torch.allclose(together[0], together[1], atol=1e-3)  # gates differ per task


def test_dilated_resnet_follows_libmtl():
    """LibMTL's resnet_dilated with dilate_scale 8: no stride after layer2; 3×3 convs of layer3
    dilated 2 and of layer4 dilated 4, except each stage's first block keeps the previous
    dilation."""
    model = build_backbone("resnet50_dilated")
    for layer, first, rest in ((model.layer3, 1, 2), (model.layer4, 2, 4)):
        assert [b.conv2.dilation[0] for b in layer] == [first] + [rest] * (len(layer) - 1)
        assert all(m.stride == (1, 1) for m in layer.modules() if isinstance(m, nn.Conv2d))
    assert model.layer2[0].conv2.stride == (2, 2)
    assert not hasattr(model, "fc") and not hasattr(model, "avgpool")
    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    assert count_parameters(model) == count_parameters(reference) - 2048 * 1000 - 1000


def test_dilated_resnet_output_stride_16():
    model = build_backbone("resnet50_dilated", output_stride=16)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2048, 2, 2)
    with pytest.raises(ValueError, match="output_stride must be one of"):
        build_backbone("resnet50_dilated", output_stride=4)


def test_segnet_matches_mtan_layer_table():
    """mtan's SegNet (split, standard): 13 encoder and 13 decoder 3×3 conv (with bias) + BN
    layers; the (in, out) channels written out from mtan's encoder/decoder/conv blocks."""
    encoder = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
               (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    decoder = [(512, 512), (512, 512), (512, 512), (512, 256), (256, 256), (256, 256),
               (256, 128), (128, 128), (128, 128), (128, 64), (64, 64), (64, 64), (64, 64)]
    with torch.device("meta"):
        model = build_backbone("segnet")
    convs = [(m.in_channels, m.out_channels) for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == encoder + decoder
    expected = sum(9 * a * b + b + 2 * b for a, b in encoder + decoder)
    assert count_parameters(model) == expected
    assert model.out_features == SEGNET_CHANNELS[0]


def test_segnet_encoder_is_vgg16_bn():
    with torch.device("meta"):
        model = build_backbone("segnet")
        vgg = torchvision.models.vgg16_bn()
    shapes = [m.weight.shape for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert shapes == [m.weight.shape for m in vgg.features if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("size", [(36, 44), (16, 24), (5, 3)])
def test_segnet_takes_any_input_size(size):
    torch.manual_seed(0)
    model = build_backbone("segnet", width=0.125, in_channels=1).eval()
    assert model(torch.randn(2, 1, *size)).shape == (2, 8, *size)


@pytest.mark.parametrize("size", [(8, 12), (7, 9)])
def test_unpooling_equals_torch_max_unpool(size):
    x = torch.randn(2, 3, *size, requires_grad=True)
    pooled, indices = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
    torch.use_deterministic_algorithms(False)  # the reference has no deterministic kernel
    expected = F.max_unpool2d(pooled, indices, 2, 2, output_size=size)
    torch.testing.assert_close(max_unpool(pooled, indices, size), expected, rtol=0, atol=0)
    assert torch.count_nonzero(expected) == pooled.numel()


def test_segnet_runs_under_deterministic_algorithms():
    model = build_backbone("segnet", width=0.125)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        model(torch.randn(2, 3, 32, 32)).sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert build_backbone("segnet", width=0.25).out_features == 16
    with pytest.raises(ValueError, match="width must be positive"):
        build_backbone("segnet", width=0)


def test_vit_needs_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r'pip install "tasknorm\[timm\]"'):
        build_backbone("vit_small")


def test_vit_features_are_the_patch_tokens(backbones):
    model = backbones["vit_small"].eval()
    x = torch.randn(1, 3, 32, 48)
    tokens = model.vit.forward_features(x)  # (1, 1 + 2 * 3, 384): class token first
    features = model(x)
    torch.testing.assert_close(features[0, :, 1, 2], tokens[0, 1 + 1 * 3 + 2])
    torch.testing.assert_close(features[0, :, 0, 0], tokens[0, 1])


def test_celeba_cnn_is_famo_network():
    model = build_backbone("celeba_cnn")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 128, 256, 256, 512, 512]
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias) for m in linears] == [(512, 512, None)] * 2
    assert model.out_features == 512


def test_dilated_cnn_layers():
    model = build_backbone("dilated_cnn")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.stride[0], c.dilation[0], c.padding[0]) for c in convs] == [
        (2, 1, 1), (2, 1, 1), (1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 8, 8), (1, 1, 1)]
    assert [c.out_channels for c in convs] == [32] + [64] * 6
    assert model.out_features == 64 and model.output_stride == 4
