import copy
import io
from collections import Counter

import pytest
import timm
import torch
import torchvision
from timm.layers import BatchNormAct2d, LayerNorm2d
from torch import nn

from tasknorm.nn import (
    GATE_INIT_MEAN,
    GATE_INIT_STD,
    NormAct,
    SigmaBatchNorm2d,
    TaskBatchNorm1d,
    TaskBatchNorm2d,
    TaskLayerNorm,
    TaskLayerNorm2d,
    TaskRouted,
    TaskSigmaBatchNorm2d,
    TaskSigmaLayerNorm,
    TaskSigmaLayerNorm2d,
    convert,
    extract_task,
    set_sync_stats,
    stack_tasks,
    task_norm_layers,
    use_all_tasks,
    use_task,
)

TASKS = ["seg", "depth"]

MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=4),
    "resnet50": lambda: torchvision.models.resnet50(num_classes=4),
    "vgg16_bn": lambda: torchvision.models.vgg16_bn(num_classes=4),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=4),
    "vit_small_patch16_224": lambda: timm.create_model("vit_small_patch16_224", num_classes=4,
                                                       img_size=64),
    "convnext_tiny": lambda: timm.create_model("convnext_tiny", num_classes=4),
    "efficientnet_b0": lambda: timm.create_model("efficientnet_b0", num_classes=4),
}

# source norm type -> converted type, per kind
EXPECTED = {
    "task_sigma": {BatchNormAct2d: NormAct, nn.BatchNorm2d: TaskSigmaBatchNorm2d,
                   LayerNorm2d: TaskSigmaLayerNorm2d, nn.LayerNorm: TaskSigmaLayerNorm},
    "task": {BatchNormAct2d: NormAct, nn.BatchNorm2d: TaskBatchNorm2d,
             LayerNorm2d: TaskLayerNorm2d, nn.LayerNorm: TaskLayerNorm},
}


@pytest.fixture(scope="module")
def originals():
    torch.manual_seed(0)
    return {name: make() for name, make in MODELS.items()}


def norm_census(model: nn.Module) -> Counter:
    """Counts of normalization layers by the most specific known source type."""
    counts: Counter = Counter()
    for module in model.modules():
        for source in (BatchNormAct2d, nn.BatchNorm2d, LayerNorm2d, nn.LayerNorm):
            if isinstance(module, source):
                counts[source] += 1
                break
    return counts


@pytest.mark.parametrize("kind", ["task_sigma", "task"])
@pytest.mark.parametrize("name", list(MODELS))
def test_conversion_counts(originals, name, kind):
    source = originals[name]
    before = norm_census(source)
    assert sum(before.values()) > 0
    model = convert(copy.deepcopy(source), TASKS, kind=kind)
    converted = Counter(type(m) for m in model.modules())
    expected: Counter = Counter()
    for source_type, count in before.items():
        expected[EXPECTED[kind][source_type]] += count
    expected_bn = EXPECTED[kind][nn.BatchNorm2d]
    expected[expected_bn] += before[BatchNormAct2d]  # each NormAct wraps a converted BN
    for new_type, count in expected.items():
        assert converted[new_type] == count, (new_type, converted)
    assert not any(isinstance(m, nn.BatchNorm2d | nn.LayerNorm) for m in model.modules())
    assert sum(1 for _ in task_norm_layers(model)) == sum(before.values())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_sigma_conversion_counts(originals, name):
    source = originals[name]
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in source.modules())
    model = convert(copy.deepcopy(source), kind="sigma")
    assert sum(isinstance(m, SigmaBatchNorm2d) for m in model.modules()) == n_bn


def test_norm_act_keeps_the_activation(originals):
    source = originals["efficientnet_b0"]
    acts = [type(m.act) for m in source.modules() if isinstance(m, BatchNormAct2d)]
    model = convert(copy.deepcopy(source), TASKS)
    wrapped = [m for m in model.modules() if isinstance(m, NormAct)]
    assert [type(m.act) for m in wrapped] == acts
    assert nn.SiLU in acts and nn.Identity in acts


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "vit_small_patch16_224",
                                  "efficientnet_b0",
                                  "resnet50",
                                  "vgg16_bn",
                                  "convnext_tiny"])
def test_converted_models_train_in_one_pass(originals, name):
    torch.manual_seed(0)
    model = convert(copy.deepcopy(originals[name]), TASKS)
    x = torch.randn(2, 3, 64, 64)
    with use_all_tasks():
        out = model(stack_tasks(x, len(TASKS)))
    out.square().mean().backward()
    assert out.shape == (4, 4)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_task_kind_copies_every_value_and_keeps_the_function(originals):
    torch.manual_seed(0)
    source = copy.deepcopy(originals["resnet18"])
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    source.eval()
    model = convert(copy.deepcopy(source), TASKS, kind="task").eval()
    for (_, old), (_, new) in zip(
            ((n, m) for n, m in source.named_modules() if isinstance(m, nn.BatchNorm2d)),
            task_norm_layers(model), strict=True):
        for t in range(2):
            assert torch.equal(new.weight[t], old.weight)
            assert torch.equal(new.bias[t], old.bias)
            assert torch.equal(new.running_mean[t], old.running_mean)
            assert torch.equal(new.running_var[t], old.running_var)
    x = torch.randn(2, 3, 64, 64)
    for task in TASKS:
        with use_task(task):
            torch.testing.assert_close(model(x), source(x))


def test_layer_norm_task_kind_keeps_the_function(originals):
    source = copy.deepcopy(originals["vit_small_patch16_224"]).eval()
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    model = convert(copy.deepcopy(source), TASKS, kind="task").eval()
    x = torch.randn(2, 3, 64, 64)
    with use_task("depth"):
        torch.testing.assert_close(model(x), source(x), atol=1e-5, rtol=1e-5)


def test_gate_init_from_pretrained_gamma():
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.3, 1.7, -0.2, 0.6]))
        bn.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    gated = convert(copy.deepcopy(bn), TASKS, gate_init="pretrained")
    expected = torch.tensor([0.3, 0.99, 0.01, 0.6])
    for t in range(2):
        torch.testing.assert_close(gated.gate[t], expected)
    assert gated.bias is None
    with_bias = convert(copy.deepcopy(bn), TASKS, bias=True)
    assert torch.equal(with_bias.bias, bn.bias.detach().expand(2, 4))


def test_normal_gate_init_differs_per_task():
    torch.manual_seed(0)
    gated = convert(nn.BatchNorm2d(64), TASKS)
    assert not torch.equal(gated.weight[0], gated.weight[1])
    assert abs(gated.weight.std().item() - 1) < 0.2


@pytest.mark.parametrize("name", ["resnet18", "vit_small_patch16_224", "efficientnet_b0",
                                  "convnext_tiny"])
@pytest.mark.parametrize("kind", ["task_sigma", "task"])
def test_extract_task_matches_the_converted_model(originals, name, kind):
    torch.manual_seed(0)
    model = convert(copy.deepcopy(originals[name]), TASKS, kind=kind)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):  # pull the tasks' outputs apart, so that their norms differ
        with use_all_tasks():
            out = model(stack_tasks(torch.randn(2, 3, 64, 64), 2))
        ((out[:2] - 1).square().mean() + (out[2:] + 1).square().mean()).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    outputs = {}
    for task in TASKS:
        plain = extract_task(model, task)
        assert not any(isinstance(m, TaskRouted) for m in plain.modules())
        with use_task(task):
            expected = model(x)
        torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-4)
        outputs[task] = expected
    assert not torch.allclose(outputs["seg"], outputs["depth"])


def test_extract_from_sigma_model_gives_plain_batchnorm(originals):
    model = convert(copy.deepcopy(originals["resnet18"]), kind="sigma").eval()
    plain = extract_task(model, "any")
    assert not any(isinstance(m, SigmaBatchNorm2d) for m in plain.modules())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(plain(x), model(x), atol=1e-5, rtol=1e-4)


def test_extract_errors(originals):
    model = convert(copy.deepcopy(originals["resnet18"]), TASKS)
    with pytest.raises(ValueError, match="unknown task 'edges'"):
        extract_task(model, "edges")
    with pytest.raises(ValueError, match="no tasknorm layer"):
        extract_task(nn.Linear(2, 2), "seg")


def test_convert_errors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="unknown kind"):
        convert(copy.deepcopy(model), TASKS, kind="group")
    with pytest.raises(ValueError, match="unknown gate_init"):
        convert(copy.deepcopy(model), TASKS, gate_init="zeros")
    with pytest.raises(ValueError, match="pass tasks=None"):
        convert(copy.deepcopy(model), TASKS, kind="sigma")
    with pytest.raises(ValueError, match="needs the task names"):
        convert(copy.deepcopy(model), kind="task")
    with pytest.raises(ValueError, match="Sequential has no BatchNorm or LayerNorm layer"):
        convert(nn.Sequential(nn.Linear(2, 2)), TASKS)
    with pytest.raises(ValueError, match="BatchNorm3d at '1'"):
        convert(nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2)), TASKS)
    with pytest.raises(ValueError, match="duplicate task names"):
        convert(copy.deepcopy(model), ["a", "a"])
    with pytest.raises(ValueError, match="at least one task"):
        convert(copy.deepcopy(model), [])


def test_state_dict_round_trip_and_task_mismatch(originals):
    torch.manual_seed(0)
    model = convert(copy.deepcopy(originals["resnet18"]), TASKS)
    with use_all_tasks():
        model(stack_tasks(torch.randn(2, 3, 32, 32), 2))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = convert(copy.deepcopy(originals["resnet18"]), TASKS)
    fresh.load_state_dict(state)
    model.eval()
    fresh.eval()
    x = torch.randn(2, 3, 32, 32)
    with use_task("depth"):
        torch.testing.assert_close(fresh(x), model(x))
    other = convert(copy.deepcopy(originals["resnet18"]), ["seg", "normal"])
    with pytest.raises(RuntimeError, match=r"bn1: saved with tasks \('seg', 'depth'\)"):
        other.load_state_dict(state)


def test_root_norm_layer_sync_and_modes():
    new = convert(nn.BatchNorm1d(3), TASKS, kind="task")
    assert isinstance(new, TaskBatchNorm1d)
    sync = convert(nn.SyncBatchNorm(3), TASKS)
    assert isinstance(sync, TaskSigmaBatchNorm2d) and sync.sync_stats
    bn = nn.BatchNorm2d(3).eval()
    bn.weight.requires_grad_(False)
    frozen = convert(bn, TASKS, kind="task")
    assert not frozen.training and not frozen.weight.requires_grad
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.BatchNorm2d(3))
    model = convert(model, TASKS)
    set_sync_stats(model)
    assert all(m.sync_stats for _, m in task_norm_layers(model))
    set_sync_stats(model, enabled=False)
    assert not any(m.sync_stats for _, m in task_norm_layers(model))
    with pytest.raises(ValueError, match="no σBN / TSBN / TSσBN layer"):
        set_sync_stats(nn.Linear(2, 2))


@pytest.mark.parametrize("kind", ["sigma", "task_sigma"])
def test_normal_gate_init_follows_the_requested_mean_and_spread(kind):
    model = nn.Sequential(nn.BatchNorm2d(2048), nn.BatchNorm1d(2048))
    tasks = None if kind == "sigma" else ["a", "b", "c"]
    converted = convert(model, tasks, kind=kind, init_mean=-1.5, init_std=0.5)
    for layer in converted:
        assert (layer.init_mean, layer.init_std) == (-1.5, 0.5)
        assert layer.weight.mean().item() == pytest.approx(-1.5, abs=0.05)
        assert layer.weight.std().item() == pytest.approx(0.5, abs=0.05)
    default = convert(nn.BatchNorm2d(4096), tasks, kind=kind)
    assert default.weight.mean().item() == pytest.approx(GATE_INIT_MEAN, abs=0.1)
    assert default.weight.std().item() == pytest.approx(GATE_INIT_STD, abs=0.1)


def test_gate_init_mean_reaches_sigma_layer_norms():
    ln = convert(nn.LayerNorm(2048), ["a", "b"], init_mean=2.0, init_std=0.0)
    torch.testing.assert_close(ln.weight.detach(), torch.full((2, 2048), 2.0))
    with pytest.raises(ValueError, match="finite, non-negative standard deviation"):
        convert(nn.LayerNorm(8), ["a", "b"], init_std=-1.0)
