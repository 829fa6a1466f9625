import copy
import io
from collections import Counter

import pytest
import timm
import torch
import torchvision
from timm.layers import BatchNormAct2d, LayerNorm2d, LayerNormAct, LayerNormAct2d
from torch import nn

from tasknorm.nn import (
    GATE_INIT_MEAN,
    GATE_INIT_STD,
    KINDS,
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
from tasknorm.prune import to_plain

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
    assert not torch.equal(gated.gate_logit[0], gated.gate_logit[1])
    assert abs(gated.gate_logit.std().item() - 1) < 0.2


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


@pytest.mark.parametrize("kind", KINDS)
def test_extract_refuses_a_task_the_model_does_not_have(originals, kind):
    tasks = None if kind == "sigma" else TASKS
    model = convert(copy.deepcopy(originals["resnet18"]), tasks, kind=kind)
    message = "no task-specific layer, so no task 'seg'" if kind == "sigma" else "unknown task"
    with pytest.raises(ValueError, match=message):
        extract_task(model, "seg" if kind == "sigma" else "edges")
    with pytest.raises(ValueError, match="no tasknorm layer"):
        extract_task(nn.Linear(2, 2), "seg")


def test_a_sigma_model_folds_into_plain_batchnorm_with_to_plain(originals):
    model = convert(copy.deepcopy(originals["resnet18"]), kind="sigma").eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    plain = to_plain(model)
    assert not any(isinstance(m, SigmaBatchNorm2d) for m in plain.modules())
    torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-4)


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
    with pytest.raises(ValueError, match="Linear has no tasknorm layer to synchronise"):
        set_sync_stats(nn.Linear(2, 2))


def test_sync_stats_on_layer_norms_only_has_nothing_to_do():
    model = convert(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), TASKS)
    assert set_sync_stats(model) is model


@pytest.mark.parametrize("kind", ["sigma", "task_sigma"])
def test_normal_gate_init_follows_the_requested_mean_and_spread(kind):
    model = nn.Sequential(nn.BatchNorm2d(2048), nn.BatchNorm1d(2048))
    tasks = None if kind == "sigma" else ["a", "b", "c"]
    converted = convert(model, tasks, kind=kind, init_mean=-1.5, init_std=0.5)
    for layer in converted:
        assert (layer.init_mean, layer.init_std) == (-1.5, 0.5)
        assert layer.gate_logit.mean().item() == pytest.approx(-1.5, abs=0.05)
        assert layer.gate_logit.std().item() == pytest.approx(0.5, abs=0.05)
    default = convert(nn.BatchNorm2d(4096), tasks, kind=kind)
    assert default.gate_logit.mean().item() == pytest.approx(GATE_INIT_MEAN, abs=0.1)
    assert default.gate_logit.std().item() == pytest.approx(GATE_INIT_STD, abs=0.1)


def test_gate_init_mean_reaches_sigma_layer_norms():
    ln = convert(nn.LayerNorm(2048), ["a", "b"], init_mean=2.0, init_std=0.0)
    torch.testing.assert_close(ln.gate_logit.detach(), torch.full((2, 2048), 2.0))
    with pytest.raises(ValueError, match="finite, non-negative standard deviation"):
        convert(nn.LayerNorm(8), ["a", "b"], init_std=-1.0)


def kind_tasks(kind: str) -> list[str] | None:
    return None if kind == "sigma" else TASKS


@pytest.mark.parametrize("kind", KINDS)
def test_convert_validates_before_changing_anything(kind):
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv3d(4, 4, 1),
                          nn.BatchNorm3d(4))
    before = list(model.named_modules())
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="BatchNorm3d at '3'"):
        convert(model, kind_tasks(kind), kind=kind)
    assert [(n, id(m)) for n, m in model.named_modules()] == [(n, id(m)) for n, m in before]
    assert type(model[1]) is nn.BatchNorm2d
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


SHARED_SOURCES = {
    "batchnorm": lambda: nn.BatchNorm2d(4),
    "layernorm": lambda: nn.LayerNorm(4),
    "batchnormact": lambda: BatchNormAct2d(4, act_layer=nn.SiLU),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("source", list(SHARED_SOURCES))
def test_a_layer_used_twice_stays_one_layer(kind, source):
    if kind == "sigma" and source == "layernorm":
        pytest.skip("kind='sigma' leaves LayerNorm as it is")
    norm = SHARED_SOURCES[source]()
    model = nn.Sequential(nn.Identity(), norm, nn.Identity(), norm)
    model = convert(model, kind_tasks(kind), kind=kind)
    assert model[1] is model[3] and not isinstance(model[1], type(norm))
    if kind != "sigma":
        plain = extract_task(model, "depth")
        assert plain[1] is plain[3] and type(plain[1]) is type(norm)


LAYERS_TO_EXTRACT = {
    "tsbn": lambda: convert(nn.BatchNorm2d(4), TASKS, kind="task"),
    "tssigma": lambda: convert(nn.BatchNorm2d(4), TASKS),
    "tssigma_bias": lambda: convert(nn.BatchNorm2d(4), TASKS, bias=True),
    "task_ln": lambda: convert(nn.LayerNorm(4), TASKS, kind="task"),
    "task_sigma_ln": lambda: convert(nn.LayerNorm(4), TASKS),
    "task_ln2d": lambda: convert(LayerNorm2d(4), TASKS, kind="task"),
    "norm_act": lambda: convert(BatchNormAct2d(4), TASKS),
}


@pytest.mark.parametrize("name", list(LAYERS_TO_EXTRACT))
@pytest.mark.parametrize(("scale_trainable", "shift_trainable"), [(False, True), (True, False),
                                                                  (False, False)])
def test_extract_task_keeps_requires_grad(name, scale_trainable, shift_trainable):
    model = LAYERS_TO_EXTRACT[name]()
    layer = model.norm if isinstance(model, NormAct) else model
    scale, shift = layer.affine_parameters()
    scale.requires_grad_(scale_trainable)
    if shift is not None:
        shift.requires_grad_(shift_trainable)
    plain = extract_task(model, "depth")
    assert plain.weight.requires_grad == scale_trainable
    expected_shift = shift_trainable if shift is not None else scale_trainable
    assert plain.bias is None or plain.bias.requires_grad == expected_shift


AFFINE_FREE = {
    "batchnorm2d": (lambda: nn.BatchNorm2d(4, affine=False), (6, 4, 3, 3)),
    "batchnorm1d": (lambda: nn.BatchNorm1d(4, affine=False), (6, 4)),
    "layernorm": (lambda: nn.LayerNorm(4, elementwise_affine=False), (6, 3, 4)),
}


@pytest.mark.parametrize("name", list(AFFINE_FREE))
def test_affine_false_survives_task_kind(name):
    make, shape = AFFINE_FREE[name]
    plain = make()
    model = convert(copy.deepcopy(plain), TASKS, kind="task")
    assert list(model.parameters()) == []
    x = torch.randn(shape) * 2 + 1
    with use_task("seg"):
        torch.testing.assert_close(model(x), plain(x))
    extracted = extract_task(model.eval(), "seg")
    assert type(extracted) is type(plain) and extracted.weight is None and extracted.bias is None
    torch.testing.assert_close(extracted(x), plain.eval()(x))


@pytest.mark.parametrize("kind", ["task_sigma", "sigma"])
def test_sigma_kinds_add_gates_to_a_source_without_affine(kind):
    gated = convert(nn.BatchNorm2d(4, affine=False), kind_tasks(kind), kind=kind)
    assert [n for n, _ in gated.named_parameters()] == ["gate_logit"]


NORM_ACTS = {  # timm norm-act layer, input shape
    "batchnormact2d": (lambda: BatchNormAct2d(4, act_layer=nn.SiLU, drop_layer=nn.Dropout),
                       (2, 4, 3, 3)),
    "layernormact2d": (lambda: LayerNormAct2d(4, act_layer=nn.GELU), (2, 4, 3, 3)),
    "layernormact": (lambda: LayerNormAct(4, affine=True), (2, 3, 4)),
}


@pytest.mark.parametrize("kind", ["task_sigma", "task"])
@pytest.mark.parametrize("name", list(NORM_ACTS))
def test_extract_task_gives_back_the_norm_act_class(name, kind):
    torch.manual_seed(0)
    make, shape = NORM_ACTS[name]
    source = make().eval()
    model = convert(copy.deepcopy(source), TASKS, kind=kind)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    plain = extract_task(model, "depth")
    assert type(plain) is type(source)
    assert (type(plain.act), type(plain.drop)) == (type(source.act), type(source.drop))
    assert not plain.training and plain.drop is not model.drop  # a copy, in eval mode
    x = torch.randn(shape)
    with use_task("depth"):
        torch.testing.assert_close(plain(x), model(x))


def test_extract_task_gives_back_timm_norm_act_layers():
    torch.manual_seed(0)
    source = timm.create_model("regnety_002", pretrained=False, num_classes=4)
    norm_acts = [m for m in source.modules() if isinstance(m, BatchNormAct2d)]
    assert norm_acts
    model = convert(copy.deepcopy(source), TASKS)
    with torch.no_grad():
        for _, layer in task_norm_layers(model):
            layer.gate_logit.normal_()
    model.eval()
    plain = extract_task(model, "depth")
    assert not any(isinstance(m, NormAct | TaskRouted) for m in plain.modules())
    extracted = [m for m in plain.modules() if isinstance(m, BatchNormAct2d)]
    assert [(type(m), type(m.act), type(m.drop)) for m in extracted] == [
        (type(m), type(m.act), type(m.drop)) for m in norm_acts]
    x = torch.randn(2, 3, 32, 32)
    with use_task("depth"):
        expected = model(x)
    torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-4)
    assert set(plain.state_dict()) == set(source.state_dict())


@pytest.mark.parametrize("kind", ["task_sigma", "sigma"])
def test_state_dicts_with_the_old_gate_name_load(kind):
    torch.manual_seed(0)
    source = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), BatchNormAct2d(4),
                           nn.Flatten(2), nn.LayerNorm(9))
    model = convert(copy.deepcopy(source), kind_tasks(kind), kind=kind)
    state = model.state_dict()
    old = {k.replace("gate_logit", "weight"): v for k, v in state.items()}
    assert len(old) == len(state) and not any("gate_logit" in k for k in old)
    fresh = convert(copy.deepcopy(source), kind_tasks(kind), kind=kind)
    fresh.load_state_dict(old)
    for name, tensor in fresh.state_dict().items():
        if name.endswith("gate_logit"):
            assert torch.equal(tensor, state[name]), name


@pytest.mark.parametrize("kind", ["task", "task_sigma"])
def test_torchvision_layer_norm_2d_stays_channels_first(kind):
    """torchvision's ConvNeXt ``LayerNorm2d`` subclasses ``nn.LayerNorm`` but normalises dim 1."""
    from torchvision.models.convnext import LayerNorm2d

    source = LayerNorm2d(8).eval()
    model = convert(nn.Sequential(source), ["a", "b"], kind=kind, gate_init="pretrained")
    x = torch.randn(2, 8, 4, 8)  # width == channels: normalising the wrong dim would not raise
    with use_task("a"):
        converted = model(x)
    if kind == "task":
        torch.testing.assert_close(converted, source(x))
    else:  # the gates start at σ(logit(0.99)): the source's γ = 1 clamped
        torch.testing.assert_close(converted, 0.99 * source(x))
