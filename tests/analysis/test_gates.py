import pytest
import torch
from torch import nn

from tasknorm.analysis import NoGatesError, concatenated, gate_matrices, model_tasks, short_names
from tasknorm.analysis.gates import check_gates
from tasknorm.models import digits_cnn
from tasknorm.nn import TaskSigmaBatchNorm2d, convert


def test_gate_matrices_are_the_sigmoid_of_each_layer_in_model_order():
    model = convert(digits_cnn(width=4), ["left", "right"])
    with torch.no_grad():
        model.features[4].gate_logit.copy_(torch.tensor([[0.0] * 8, [2.0] * 8]))
    gates = gate_matrices(model)
    assert list(gates) == ["features.1", "features.4", "features.7", "features.10"]
    assert [tuple(g.shape) for g in gates.values()] == [(2, 4), (2, 8), (2, 8), (2, 16)]
    torch.testing.assert_close(gates["features.4"][0], torch.full((8,), 0.5))
    torch.testing.assert_close(gates["features.4"][1], torch.full((8,), torch.sigmoid(
        torch.tensor(2.0)).item()))
    assert not any(g.requires_grad for g in gates.values())
    assert model_tasks(model) == ("left", "right")


def test_layer_norm_model():
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=16,
                            embed_dim=24, depth=2, num_heads=2, num_classes=0)
    vit = convert(vit, ["seg", "depth", "normals"])
    gates = gate_matrices(vit)
    assert list(gates) == ["blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1",
                           "blocks.1.norm2", "norm"]
    assert all(g.shape == (3, 24) for g in gates.values())
    torch.testing.assert_close(gates["norm"], torch.sigmoid(vit.norm.gate_logit.detach()))
    assert short_names(list(gates)) == list(gates)  # no common prefix to drop


def test_models_without_gates_say_what_they_have():
    with pytest.raises(NoGatesError, match=r"4 task-specific layers without gates \(TSBN"):
        gate_matrices(convert(digits_cnn(width=4), ["a", "b"], kind="task"))
    with pytest.raises(NoGatesError, match="no task-specific normalization layer"):
        gate_matrices(convert(digits_cnn(width=4), kind="sigma"))
    with pytest.raises(NoGatesError, match="no task-specific normalization layer"):
        model_tasks(nn.Linear(2, 2))


def test_layers_must_agree_on_tasks():
    model = nn.Sequential(TaskSigmaBatchNorm2d(2, ["a", "b"]), TaskSigmaBatchNorm2d(2, ["b", "a"]))
    with pytest.raises(ValueError, match="layer '1' has tasks"):
        gate_matrices(model)


def test_concatenated_and_check_gates():
    gates = {"x": torch.rand(3, 5), "y": torch.rand(3, 2)}
    whole = concatenated(gates)
    assert whole.shape == (3, 7)
    torch.testing.assert_close(whole[:, 5:], gates["y"])
    check_gates(gates, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"gates of 'x' must be \(tasks=2, channels\)"):
        check_gates(gates, ["a", "b"])
    with pytest.raises(ValueError, match="must lie in"):
        check_gates({"x": torch.full((1, 2), 1.5)}, ["a"])
    with pytest.raises(ValueError, match="no gate matrices"):
        check_gates({}, ["a"])


def test_short_names():
    assert short_names(["backbone.features.1", "backbone.features.10"]) == [
        "features.1", "features.10"]
    assert short_names(["m.vit.blocks.0.norm1", "m.vit.norm"]) == ["vit.blocks.0.norm1",
                                                                  "vit.norm"]
    assert short_names(["backbone.features.1"]) == ["backbone.features.1"]
    long = "encoder.layer4.2.downsample.normalization_layer"
    assert short_names([long], max_length=30) == ["…downsample.normalization_layer"]
    assert short_names(["a.b.c", "a.b.d"]) == ["b.c", "b.d"]
