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
    norm_ids = {id(model[i].weight) for i in (1, 4)} | {id(model[2].weight), id(model[2].bias)}
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
    before = model.bn1.weight.detach().clone()
    with torch.no_grad():
        model.bn1.weight.grad = torch.ones_like(model.bn1.weight)
    optimizer.step()
    torch.testing.assert_close(model.bn1.weight.detach(), before - 1.0)  # lr 0.1 × mult 10


def test_model_without_norm_layers_gives_one_group():
    groups = param_groups(nn.Linear(3, 2), lr=0.01)
    assert len(groups) == 1 and len(groups[0]["params"]) == 2


def test_norm_layer_types_cover_torch_norms():
    for layer in (nn.BatchNorm1d(2), nn.InstanceNorm2d(2), nn.LayerNorm(2), nn.GroupNorm(1, 2),
                  nn.RMSNorm(2), nn.SyncBatchNorm(2)):
        assert isinstance(layer, NORM_LAYER_TYPES), type(layer)
