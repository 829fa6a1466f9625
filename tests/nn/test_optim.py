import pytest
import torch
import torchvision
from torch import nn

from tasknorm.nn import NORM_LAYER_TYPES, convert, param_groups


def test_groups_split_norm_parameters_from_the_rest():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.GroupNorm(2, 8),
                          nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 5, 5))
    model = convert(model, ["a", "b"])  # BN -> TSσBN, GroupNorm stays
    groups = param_groups(model, lr=0.1, weight_decay=1e-4, norm_lr_mult=10,
                          norm_weight_decay=0.0)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(0.1, 1e-4), (1.0, 0.0)]
    norm_ids = {id(model[i].gate_logit) for i in (1, 4)} | {id(model[2].weight), id(model[2].bias)}
    assert {id(p) for p in groups[1]["params"]} == norm_ids
    everything = [id(p) for g in groups for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in model.parameters())
    assert len(everything) == len(set(everything))


def test_frozen_parameters_are_left_out_and_sgd_steps():
    model = convert(torchvision.models.resnet18(num_classes=3), ["a", "b"])
    model.conv1.weight.requires_grad_(False)
    groups = param_groups(model, lr=0.1)
    ids = {id(p) for g in groups for p in g["params"]}
    assert id(model.conv1.weight) not in ids
    optimizer = torch.optim.SGD(groups, momentum=0.9)
    before = model.bn1.gate_logit.detach().clone()
    with torch.no_grad():
        model.bn1.gate_logit.grad = torch.ones_like(model.bn1.gate_logit)
    optimizer.step()
    torch.testing.assert_close(model.bn1.gate_logit.detach(), before - 1.0)  # lr 0.1 × mult 10


def test_model_without_norm_layers_gives_one_group():
    groups = param_groups(nn.Linear(3, 2), lr=0.01)
    assert len(groups) == 1 and len(groups[0]["params"]) == 2


def test_norm_layer_types_cover_torch_norms():
    for layer in (nn.BatchNorm1d(2), nn.InstanceNorm2d(2), nn.LayerNorm(2), nn.GroupNorm(1, 2),
                  nn.RMSNorm(2), nn.SyncBatchNorm(2)):
        assert isinstance(layer, NORM_LAYER_TYPES), type(layer)


def heads_model():
    """A backbone with a BN, and two heads, one with its own BN."""
    model = nn.ModuleDict({
        "backbone": nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)),
        "heads": nn.ModuleDict({"a": nn.Linear(4, 2),
                                "b": nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4),
                                                   nn.Linear(4, 2))}),
    })
    model["backbone"] = convert(model["backbone"], ["a", "b"])
    return model


def test_heads_get_their_multiplier_and_every_parameter_one_group():
    model = heads_model()
    groups = param_groups(model, lr=0.1, weight_decay=1e-4, norm_lr_mult=10,
                          norm_weight_decay=0.0, heads=model["heads"], heads_lr_mult=5)
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == ["weights", "norm", "heads", "heads_norm"]
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 1.0, 0.5, 0.5])
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0, 1e-4, 0.0]
    heads, backbone = model["heads"], model["backbone"]
    assert {id(p) for p in by_name["heads_norm"]["params"]} == {
        id(heads["b"][1].weight), id(heads["b"][1].bias)}
    assert {id(p) for p in by_name["heads"]["params"]} == {
        id(p) for m in (heads["a"], heads["b"][0], heads["b"][2]) for p in m.parameters()}
    assert {id(p) for p in by_name["norm"]["params"]} == {id(backbone[1].gate_logit)}
    everything = [id(p) for g in groups for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in model.parameters())
    assert len(everything) == len(set(everything))


def test_heads_as_a_list_and_heads_outside_the_model():
    model = heads_model()
    listed = param_groups(model, lr=0.1, heads=[model["heads"]["a"]], heads_lr_mult=3)
    assert [p for g in listed if g["name"] == "heads" for p in g["params"]] == list(
        model["heads"]["a"].parameters())
    with pytest.raises(ValueError, match="heads must be submodules"):
        param_groups(model, lr=0.1, heads=nn.Linear(2, 2))


def test_architecture_parameters_get_their_multiplier_and_leave_the_weights():
    model = heads_model()
    choice = nn.Parameter(torch.zeros(2, 2))
    model["backbone"].register_parameter("choice", choice)
    groups = param_groups(model, lr=0.1, weight_decay=1e-4, heads=model["heads"],
                          architecture=[choice], architecture_lr_mult=10)
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == ["weights", "norm", "heads", "heads_norm", "architecture"]
    assert by_name["architecture"]["params"] == [choice]
    assert by_name["architecture"]["lr"] == pytest.approx(1.0)
    assert by_name["architecture"]["weight_decay"] == 1e-4
    everything = [id(p) for g in groups for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in model.parameters())
    assert len(everything) == len(set(everything))
    for outside in (nn.Parameter(torch.zeros(1)), model["heads"]["a"].weight,
                    model["backbone"][1].gate_logit):
        with pytest.raises(ValueError, match="architecture parameters must be parameters of"):
            param_groups(model, lr=0.1, heads=model["heads"], architecture=[outside])
