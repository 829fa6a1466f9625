import copy
import math

import pytest
import torch
import torchvision
from torch import nn

from tasknorm.models.cifar import resnet56, resnet56_projection, vgg16
from tasknorm.nn import SigmaBatchNorm2d, TaskSigmaBatchNorm2d, convert, use_task
from tasknorm.prune import PruningPlan, apply_plan, channel_importance, mask_plan, plan_pruning

GROUPED = ["regnet_x_400mf", "resnext50_32x4d"]


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Spread BN scores and running statistics so that pruning choices and outputs are
    non-trivial (fresh layers have tied weights and identity statistics)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | SigmaBatchNorm2d | TaskSigmaBatchNorm2d):
                scale = m.weight if isinstance(m, nn.BatchNorm2d) else m.gate_logit
                scale.copy_(torch.randn(scale.shape, generator=g) * 2)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def check_masked_equals_pruned(model: nn.Module, x: torch.Tensor, ratio: float,
                               **kwargs: object) -> nn.Module:
    return check_plan(model, x, plan_pruning(model, x, ratio, **kwargs))


def check_plan(model: nn.Module, x: torch.Tensor, plan: PruningPlan) -> nn.Module:
    """The masked model equals the physically pruned one, which is smaller."""
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
            block.bn2.gate_logit[:10] = -10.0
        model.layer3[0].shortcut[1].gate_logit[:10] = -10.0
    plan = plan_pruning(model, torch.randn(1, 3, 32, 32), 0.5)
    assert len(plan.units) == 30  # 27 block-internal + one stream per stage
    pruned = check_masked_equals_pruned(model, torch.randn(2, 3, 32, 32), 0.5)
    assert pruned.fc.in_features <= 54


def test_resnet18_bn_masked_equals_pruned():
    torch.manual_seed(0)
    model = randomise_norms(torchvision.models.resnet18(num_classes=10))
    check_masked_equals_pruned(model, torch.randn(2, 3, 64, 64), 0.7)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_small", *GROUPED])
def test_torchvision_models(name):
    torch.manual_seed(0)
    model = randomise_norms(getattr(torchvision.models, name)(num_classes=10))
    check_masked_equals_pruned(model, torch.randn(2, 3, 64, 64), 0.5)


@pytest.mark.parametrize("round_to", [None, 8])
@pytest.mark.parametrize("kind", ["bn", "sigma"])
@pytest.mark.parametrize("name", GROUPED)
def test_grouped_convs_lose_the_same_positions_in_every_group(name, kind, round_to):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10)
    model = randomise_norms(model if kind == "bn" else convert(model, kind="sigma"))
    x = torch.randn(2, 3, 64, 64)
    plan = plan_pruning(model, x, 0.5, round_to=round_to)
    grouped = [u for u in plan.units if u.groups > 1]
    assert grouped and any(u.pruned for u in grouped)
    for unit in grouped:
        removed = torch.zeros(unit.channels, dtype=torch.bool)
        removed[unit.pruned] = True
        blocks = removed.view(unit.groups, -1)
        assert (blocks == blocks[0]).all()
        assert unit.kept % math.lcm(unit.groups, round_to or 1) == 0
    pruned = check_plan(model, x, plan)
    for unit in grouped:
        before, after = model.get_submodule(unit.root), pruned.get_submodule(unit.root)
        assert (after.groups, after.out_channels) == (before.groups, unit.kept)


def test_grouped_unit_scores_a_position_by_its_mean_over_groups():
    torch.manual_seed(0)
    model = randomise_norms(torchvision.models.resnext50_32x4d(num_classes=10))
    plan = plan_pruning(model, torch.randn(1, 3, 64, 64), 0.5)
    unit = next(u for u in plan.units if u.root == "layer1.0.conv2")
    assert unit.groups == 32 and list(unit.norms) == ["layer1.0.bn2"]
    expected = channel_importance(model.layer1[0].bn2).view(32, -1).mean(0).repeat(32)
    assert torch.allclose(unit.scores, expected)


class ConcatThenGrouped(nn.Module):
    """Two branches concatenated into a grouped conv: each branch fills one of its groups."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=2),
                                     nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grouped(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(x.mean(dim=(2, 3)))


def test_channels_split_across_groups_by_a_concat_are_not_pruned():
    torch.manual_seed(0)
    model = randomise_norms(ConcatThenGrouped())
    x = torch.randn(2, 3, 16, 16)
    plan = plan_pruning(model, x, 0.5)
    assert [(u.root, u.groups) for u in plan.units] == [("grouped.0", 2)]
    check_plan(model, x, plan)


def test_sigma_importance_is_the_gate_not_the_raw_magnitude():
    bn = SigmaBatchNorm2d(3)
    with torch.no_grad():
        bn.gate_logit.copy_(torch.tensor([-4.0, 0.5, 4.0]))
    assert channel_importance(bn).argsort().tolist() == [0, 1, 2]


def test_global_threshold_keeps_at_least_three_per_unit():
    torch.manual_seed(0)
    model = vgg16(norm="sigma").eval()
    with torch.no_grad():
        model.features[0 + 1].gate_logit.fill_(-10.0)  # first layer: every gate nearly closed
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
    assert pruned.bn1.gate_logit.shape == (2, pruned.conv1.out_channels)


def test_round_to_keeps_multiples():
    torch.manual_seed(0)
    model = vgg16(norm="sigma").eval()
    plan = plan_pruning(model, torch.randn(1, 3, 32, 32), 0.7, round_to=8)
    assert all(u.kept % 8 == 0 for u in plan.units)
    assert 0.6 < plan.realised_ratio <= 0.7


def test_apply_plan_refuses_different_positions_in_the_groups_of_a_unit():
    torch.manual_seed(0)
    model = randomise_norms(ConcatThenGrouped())
    x = torch.randn(2, 3, 16, 16)
    plan = plan_pruning(model, x, 0.5)
    plan.units[0].pruned = [0, 9]  # position 0 of block 0, position 1 of block 1
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"'grouped\.0'.*same positions in each of its 2 blocks"):
        apply_plan(model, x, plan)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
