import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from tasknorm.models import build_backbone, digits_cnn, load_weights
from tasknorm.models.weights import read_state_dict


def saved(tmp_path, state, name="weights.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_dilated_resnet_loads_a_torchvision_resnet50(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet50()
    with torch.no_grad():  # non-default statistics, so that buffers are checked too
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
    path = saved(tmp_path, source.state_dict())
    model = build_backbone("resnet50_dilated", weights=str(path))
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())


def test_segnet_encoder_loads_vgg16_bn_features(tmp_path):
    torch.manual_seed(0)
    with torch.device("meta"):
        vgg = torchvision.models.vgg16_bn()
    features = vgg.features.to_empty(device="cpu")
    for p in features.parameters():
        nn.init.normal_(p)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.6.weight"] = torch.randn(10, 4)  # dropped
    model = build_backbone("segnet", weights=str(saved(tmp_path, state)))
    vgg_convs = [m for m in features if isinstance(m, nn.Conv2d)]
    vgg_norms = [m for m in features if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(vgg_convs) == 13
    for ours, theirs in zip(convs + norms, vgg_convs + vgg_norms, strict=True):
        assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    with pytest.raises(ValueError, match="shape mismatches"):
        build_backbone("segnet", width=0.5, weights=str(saved(tmp_path, state)))


def test_vit_loads_a_timm_checkpoint_and_resizes_position_embeddings(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("vit_small_patch16_224", num_classes=5, img_size=64)
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), path)
    model = build_backbone("vit_small", weights=str(path), img_size=32)
    assert model.vit.pos_embed.shape == (1, 1 + 2 * 2, 384)
    torch.testing.assert_close(model.vit.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)
    torch.testing.assert_close(model.vit.cls_token, source.cls_token)


def test_missing_file_names_the_path_and_never_downloads(tmp_path):
    path = tmp_path / "resnet50.pth"
    with pytest.raises(FileNotFoundError) as error:
        build_backbone("resnet50_dilated", weights=str(path))
    message = str(error.value)
    assert str(path) in message and "never downloads" in message and "\n" not in message


def test_keys_that_do_not_fit_are_listed(tmp_path):
    model = digits_cnn(width=4)
    state = model.state_dict()
    state.pop("features.0.weight")
    state["features.99.weight"] = torch.zeros(1)
    state["features.1.weight"] = torch.zeros(7)
    path = saved(tmp_path, state)
    with pytest.raises(ValueError) as error:
        load_weights(digits_cnn(width=4), path)
    message = str(error.value)
    assert message.startswith(f"weights {path} do not fit DigitsCNN: ")
    assert "1 missing keys (features.0.weight)" in message
    assert "1 unexpected keys (features.99.weight)" in message
    assert "features.1.weight (7,) vs (4,)" in message


def test_optional_parts_may_be_missing_and_wrapped_checkpoints_unwrap(tmp_path):
    torch.manual_seed(0)
    source = digits_cnn(width=4)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("features.9")}
    path = saved(tmp_path, {"epoch": 3, "state_dict": state})
    model = digits_cnn(width=4)
    before = model.features[9].weight.clone()
    load_weights(model, path, may_miss=("features.9.",))
    assert torch.equal(model.features[0].weight, source.features[0].weight)
    assert torch.equal(model.features[9].weight, before)


def test_unreadable_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"cannot read weights {garbage}"):
        read_state_dict(garbage)
    not_a_dict = saved(tmp_path, [torch.zeros(1)], "list.pth")
    with pytest.raises(ValueError, match="hold a list, expected a state dict"):
        read_state_dict(not_a_dict)
    no_tensors = saved(tmp_path, {"epoch": 3, "model": "resnet"}, "other.pth")
    with pytest.raises(ValueError, match="hold a dict, expected a state dict"):
        read_state_dict(no_tensors)
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x00")
    with pytest.raises(ValueError, match=f"cannot read safetensors weights {fake}"):
        read_state_dict(fake)
