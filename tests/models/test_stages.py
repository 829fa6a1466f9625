import pytest
import torch
from torch import nn

from tasknorm.models import BACKBONES, build_backbone, count_parameters, digits_cnn
from tasknorm.models.stages import (
    StagedBackbone,
    StageState,
    initial_state,
    mix,
    require_int,
    split_stages,
)

# name -> (small builder kwargs, input channels, number of stages)
SMALL = {
    "celeba_cnn": ({"width": 4}, 3, 5),
    "digits_cnn": ({"width": 4}, 1, 4),
    "digits_encoder": ({"width": 4}, 1, 2),
    "dilated_cnn": ({"width": 4}, 3, 7),
    "resnet18": ({}, 3, 4),
    "resnet50": ({}, 3, 4),
    "resnet50_dilated": ({}, 3, 4),
    "segnet": ({"width": 0.125}, 3, 10),
    "vit_small": ({}, 3, 4),
}


def run(stages, x):
    state = initial_state(x)
    for stage in stages:
        state = stage(state)
    return state


def test_every_registered_backbone_has_a_case():
    assert set(SMALL) == set(BACKBONES)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_running_the_stages_is_the_forward(name):
    kwargs, channels, count = SMALL[name]
    torch.manual_seed(0)
    backbone = build_backbone(name, **kwargs).eval()
    x = torch.randn(2, channels, 32, 48)
    stages = split_stages(backbone)
    with torch.no_grad():
        expected = backbone(x)
        state = run(stages, x)
    assert len(stages) == count
    torch.testing.assert_close(state.features, expected, rtol=0, atol=0)
    assert state.skips == ()  # SegNet's decoder popped every index its encoder pushed
    assert stages[-1].out_channels == backbone.out_features
    # the stages hold the backbone's own layers, every one of them
    backbone_ids = {id(p) for p in backbone.parameters()}
    stage_ids = {id(p) for stage in stages for p in stage.parameters()}
    assert stage_ids == backbone_ids


@pytest.mark.parametrize(("name", "forms"), [
    ("digits_cnn", ["map"] * 3 + ["vector"]),
    ("celeba_cnn", ["map"] * 3 + ["vector"] * 2),
    ("vit_small", ["tokens"] * 3 + ["map"]),
])
def test_stage_outputs_have_their_declared_form_and_channels(name, forms):
    kwargs, channels, _ = SMALL[name]
    stages = split_stages(build_backbone(name, **kwargs).eval())
    state = initial_state(torch.randn(2, channels, 32, 32))
    for stage, form in zip(stages, forms, strict=True):
        state = stage(state)
        assert stage.form == form
        assert state.features.dim() == {"map": 4, "vector": 2, "tokens": 3}[form]
        assert state.features.shape[2 if form == "tokens" else 1] == stage.out_channels


def test_segnet_stages_carry_the_pooling_indices():
    stages = split_stages(build_backbone("segnet", width=0.125).eval())
    state = initial_state(torch.randn(1, 3, 32, 32))
    depths = []
    for stage in stages:
        state = stage(state)
        depths.append(len(state.skips))
    assert depths == [1, 2, 3, 4, 5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize(("levels", "sizes"), [(2, [2, 2]), (3, [2, 1, 1]), (4, [1, 1, 1, 1])])
def test_levels_group_consecutive_stages(levels, sizes):
    torch.manual_seed(0)
    staged = StagedBackbone(digits_cnn(width=4), levels).eval()
    assert [len(group) for group in staged.stages] == sizes
    x = torch.randn(2, 1, 23, 23)
    torch.testing.assert_close(staged(x), staged.backbone(x), rtol=0, atol=0)
    assert count_parameters(staged) == count_parameters(staged.backbone)
    assert list(staged.state_dict()) == [f"backbone.{k}" for k in staged.backbone.state_dict()]


def test_one_level_runs_any_backbone_and_unknown_ones_have_no_split():
    class Custom(nn.Sequential):
        out_features = 4

    custom = Custom(nn.Conv2d(3, 4, 3), nn.ReLU())
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(StagedBackbone(custom, 1)(x), custom(x))
    with pytest.raises(ValueError, match="backbone Custom has no stage split; expected one of"):
        split_stages(custom)
    with pytest.raises(ValueError, match="levels=5 exceeds the 4 stages of DigitsCNN"):
        StagedBackbone(digits_cnn(width=4), 5)
    with pytest.raises(ValueError, match="levels must be an integer >= 1, got 0"):
        StagedBackbone(digits_cnn(width=4), 0)


def test_mix_weights_features_and_keeps_the_heaviest_skips():
    a, b = torch.full((2, 1, 2, 2), 1.0), torch.full((2, 1, 2, 2), 3.0)
    skips_a = ((torch.zeros(2, 1, 2, 2, dtype=torch.long), torch.Size((4, 4))),)
    skips_b = ((torch.ones(2, 1, 2, 2, dtype=torch.long), torch.Size((4, 4))),)
    states = [StageState(a, (8, 8), skips_a), StageState(b, (8, 8), skips_b)]
    shared = mix(states, torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(shared.features, torch.full((2, 1, 2, 2), 2.5))
    assert torch.equal(shared.skips[0][0], skips_b[0][0]) and shared.size == (8, 8)
    per_sample = mix(states, torch.tensor([[0.9, 0.1], [0.4, 0.6]]))
    torch.testing.assert_close(per_sample.features[:, 0, 0, 0], torch.tensor([1.2, 2.2]))
    assert per_sample.skips[0][0][:, 0, 0, 0].tolist() == [0, 1]
    assert per_sample.skips[0][1] == (4, 4)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_counts_must_be_positive_integers(value):
    with pytest.raises(ValueError, match=f"nodes must be an integer >= 1, got {value!r}"):
        require_int("nodes", value)
