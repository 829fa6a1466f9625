import copy

import pytest
import torch
import torchvision
from torch import nn

from tasknorm.models.cifar import resnet56, resnet56_projection, vgg16
from tasknorm.nn import SigmaBatchNorm2d, TaskSigmaBatchNorm2d, convert, use_task
from tasknorm.prune import apply_plan, channel_importance, mask_plan, plan_pruning


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Spread BN scores and running statistics so that pruning choices and outputs are
    non-trivial (fresh layers have tied weights and identity statistics)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | SigmaBatchNorm2d | TaskSigmaBatchNorm2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 2)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def check_masked_equals_pruned(model: nn.Module, x: torch.Tensor, ratio: float,
                               **kwargs: object) -> nn.Module:
    plan = plan_pruning(model, x, ratio, **kwargs)
    assert plan.pruned_channels > 0
    with torch.no_grad(), mask_plan(model, plan):
        expected = model(x)
    pruned = apply_plan(copy.deepcopy(model), x, plan)
    with torch.no_grad():
        actual = pruned(x)
    scale = max(1.0, float(expected.abs().max()))
    assert (actual - expected).abs().max() <= 1e-5 * scale
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    return pruned


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_vgg16_sigma_masked_equals_pruned(ratio):
    torch.manual_seed(0)
    model = randomise_norms(vgg16(norm="sigma"))
    pruned = check_masked_equals_pruned(model, torch.randn(2, 3, 32, 32), ratio)
    assert all(type(m) is not nn.BatchNorm2d for m in pruned.modules())  # stays σBN
    assert pruned.classifier.in_features < 512


def test_resnet56_option_a_prunes_block_internal_channels_only():
    torch.manual_seed(0)
    model = randomise_norms(resnet56(norm="sigma"))
    pruned = check_masked_equals_pruned(model, torch.randn(2, 3, 32, 32), 0.7)
    for block, original in zip(pruned.layer2, model.layer2, strict=True):
        assert block.conv2.out_channels == original.conv2.out_channels  # stream keeps width
        assert block.conv1.out_channels < original.conv1.out_channels


def test_resnet56_projection_prunes_residual_streams():
    torch.manual_seed(0)
    model = randomise_norms(resnet56_projection(norm="sigma"))
    with torch.no_grad():  # close 10 channels of stage 3's stream in every layer writing to it
        for block in model.layer3:
            block.bn2.weight[:10] = -10.0
        model.layer3[0].shortcut[1].weight[:10] = -10.0
    plan = plan_pruning(model, torch.randn(1, 3, 32, 32), 0.5)
    assert len(plan.units) == 30  # 27 block-internal + one stream per stage
    pruned = check_masked_equals_pruned(model, torch.randn(2, 3, 32, 32), 0.5)
    assert pruned.fc.in_features <= 54


def test_resnet18_bn_masked_equals_pruned():
    torch.manual_seed(0)
    model = randomise_norms(torchvision.models.resnet18(num_classes=10))
    check_masked_equals_pruned(model, torch.randn(2, 3, 64, 64), 0.7)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_small"])
def test_torchvision_models(name):
    torch.manual_seed(0)
    model = randomise_norms(getattr(torchvision.models, name)(num_classes=10))
    check_masked_equals_pruned(model, torch.randn(2, 3, 64, 64), 0.5)


def test_sigma_importance_is_the_gate_not_the_raw_magnitude():
    bn = SigmaBatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([-4.0, 0.5, 4.0]))
    assert channel_importance(bn).argsort().tolist() == [0, 1, 2]


def test_global_threshold_keeps_at_least_three_per_unit():
    torch.manual_seed(0)
    model = vgg16(norm="sigma").eval()
    with torch.no_grad():
        model.features[0 + 1].weight.fill_(-10.0)  # first layer: every gate nearly closed
    plan = plan_pruning(model, torch.randn(1, 3, 32, 32), 0.5, min_keep=3)
    first = plan.units[0]
    assert first.root == "features.0" and first.kept == 3
    assert abs(plan.realised_ratio - 0.5) < 0.01


def test_layer_mode_prunes_every_unit_at_the_ratio():
    torch.manual_seed(0)
    model = randomise_norms(resnet56(norm="bn"))
    plan = plan_pruning(model, torch.randn(1, 3, 32, 32), 0.5, mode="layer")
    assert {u.kept for u in plan.units if u.channels == 16} == {8}
    assert {u.kept for u in plan.units if u.channels == 64} == {32}


def test_ratio_zero_removes_nothing():
    model = vgg16(norm="sigma").eval()
    plan = plan_pruning(model, torch.randn(1, 3, 32, 32), 0.0)
    assert plan.pruned_channels == 0


def test_tsigma_bn_shared_channels_pruned_for_all_tasks():
    torch.manual_seed(0)
    model = convert(torchvision.models.resnet18(num_classes=4), ["a", "b"])
    model = randomise_norms(model)
    x = torch.randn(2, 3, 64, 64)
    plan = plan_pruning(model, x, 0.5)
    pruned = apply_plan(copy.deepcopy(model), x, plan)
    for task in ("a", "b"):
        with torch.no_grad(), use_task(task), mask_plan(model, plan):
            expected = model(x)
        with torch.no_grad(), use_task(task):
            actual = pruned(x)
        assert torch.allclose(actual, expected, atol=1e-5)
    assert pruned.bn1.weight.shape == (2, pruned.conv1.out_channels)


def test_round_to_keeps_multiples():
    torch.manual_seed(0)
    model = vgg16(norm="sigma").eval()
    plan = plan_pruning(model, torch.randn(1, 3, 32, 32), 0.7, round_to=8)
    assert all(u.kept % 8 == 0 for u in plan.units)
    assert 0.6 < plan.realised_ratio <= 0.7
