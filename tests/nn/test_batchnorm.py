import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tasknorm.nn import (
    SigmaBatchNorm1d,
    SigmaBatchNorm2d,
    TaskBatchNorm1d,
    TaskBatchNorm2d,
    TaskSigmaBatchNorm1d,
    TaskSigmaBatchNorm2d,
    stack_tasks,
    unstack_tasks,
    use_all_tasks,
    use_task,
)

TASKS = ("seg", "depth", "normal")
LAYOUTS = ("task_major", "sample_major")


def make_input(dims: int, batch: int, channels: int = 4, dtype=torch.float32) -> torch.Tensor:
    shape = {2: (batch, channels), 3: (batch, channels, 5), 4: (batch, channels, 5, 6)}[dims]
    return torch.randn(shape, dtype=dtype) * 3 + 1


def reference_bns(layer, dims: int) -> list[nn.Module]:
    """One plain BatchNorm per task holding that task's affine values and statistics."""
    cls = nn.BatchNorm2d if dims == 4 else nn.BatchNorm1d
    scale, shift = layer.task_affine()
    bns = []
    for t in range(layer.num_tasks):
        bn = cls(layer.num_features, layer.eps, layer.momentum, affine=True,
                 track_running_stats=layer.track_running_stats, dtype=scale.dtype)
        with torch.no_grad():
            bn.weight.copy_(scale[t])
            bn.bias.copy_(shift[t] if shift is not None else torch.zeros_like(scale[t]))
            if layer.track_running_stats:
                bn.running_mean.copy_(layer.running_mean[t])
                bn.running_var.copy_(layer.running_var[t])
        bns.append(bn.train(layer.training))
    return bns


TASK_LAYERS = [
    (TaskBatchNorm2d, 4), (TaskBatchNorm1d, 2), (TaskBatchNorm1d, 3),
    (TaskSigmaBatchNorm2d, 4), (TaskSigmaBatchNorm1d, 2), (TaskSigmaBatchNorm1d, 3),
]


def randomise(layer) -> None:
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("cls", "plain"), [(TaskBatchNorm2d, nn.BatchNorm2d),
                                            (TaskBatchNorm1d, nn.BatchNorm1d)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_one_task_equals_batchnorm(cls, plain, dtype, momentum):
    torch.manual_seed(0)
    ours = cls(4, ["only"], momentum=momentum, dtype=dtype)
    randomise(ours)
    bn = plain(4, momentum=momentum, dtype=dtype)
    with torch.no_grad():
        bn.weight.copy_(ours.weight[0])
        bn.bias.copy_(ours.bias[0])
    dims = 4 if plain is nn.BatchNorm2d else 2
    for _ in range(4):
        x = make_input(dims, 8, dtype=dtype)
        torch.testing.assert_close(ours(x), bn(x))
    torch.testing.assert_close(ours.running_mean[0], bn.running_mean)
    torch.testing.assert_close(ours.running_var[0], bn.running_var)
    assert ours.num_batches_tracked.tolist() == [bn.num_batches_tracked.item()] == [4]
    ours.eval()
    bn.eval()
    x = make_input(dims, 8, dtype=dtype)
    torch.testing.assert_close(ours(x), bn(x))


def test_one_task_without_running_stats_equals_batchnorm():
    ours = TaskBatchNorm2d(4, ["only"], track_running_stats=False).eval()
    bn = nn.BatchNorm2d(4, track_running_stats=False).eval()
    x = make_input(4, 6)
    torch.testing.assert_close(ours(x), bn(x))
    assert ours.running_mean is None and ours.num_batches_tracked is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("cls", "plain", "dims"), [(SigmaBatchNorm2d, nn.BatchNorm2d, 4),
                                                    (SigmaBatchNorm1d, nn.BatchNorm1d, 2),
                                                    (SigmaBatchNorm1d, nn.BatchNorm1d, 3)])
def test_sigma_equals_batchnorm_with_sigmoid_weight(cls, plain, dims, dtype):
    torch.manual_seed(0)
    ours = cls(4, dtype=dtype)
    bn = plain(4, dtype=dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.sigmoid(ours.gate_logit))
        bn.bias.zero_()
    for _ in range(3):
        x = make_input(dims, 8, dtype=dtype)
        torch.testing.assert_close(ours(x), bn(x))
    torch.testing.assert_close(ours.running_mean, bn.running_mean)
    torch.testing.assert_close(ours.running_var, bn.running_var)
    assert ours.bias is None
    assert [n for n, _ in ours.named_parameters()] == ["gate_logit"]
    ours.eval()
    bn.eval()
    x = make_input(dims, 8, dtype=dtype)
    torch.testing.assert_close(ours(x), bn(x))


def test_sigma_init_is_normal_and_configurable():
    torch.manual_seed(0)
    gates = SigmaBatchNorm2d(20_000).gate_logit
    assert abs(gates.mean().item()) < 0.05
    assert abs(gates.std().item() - 1) < 0.05
    shifted = SigmaBatchNorm2d(20_000, init_mean=2.0, init_std=0.5).gate_logit
    assert abs(shifted.mean().item() - 2) < 0.05
    assert abs(shifted.std().item() - 0.5) < 0.05
    assert torch.equal(SigmaBatchNorm2d(8, init_std=0.0).gate_logit, torch.zeros(8))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("cls", "dims"), TASK_LAYERS)
@pytest.mark.parametrize("num_tasks", [2, 3])
def test_all_tasks_equals_per_task_loop(cls, dims, layout, num_tasks):
    torch.manual_seed(0)
    layer = cls(4, TASKS[:num_tasks])
    randomise(layer)
    refs = reference_bns(layer, dims)
    for step in range(3):
        inputs = [make_input(dims, 5) for _ in range(num_tasks)]
        x = torch.cat(inputs) if layout == "task_major" else torch.stack(inputs, 1).flatten(0, 1)
        x.requires_grad_(True)
        with use_all_tasks(layout):
            y = layer(x)
        outputs = unstack_tasks(y, num_tasks, layout)
        ref_inputs = [i.clone().requires_grad_(True) for i in inputs]
        ref_outputs = [bn(i) for bn, i in zip(refs, ref_inputs, strict=True)]
        for out, ref in zip(outputs, ref_outputs, strict=True):
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        if step == 0:
            upstream = torch.randn_like(y)
            y.backward(upstream)
            up = unstack_tasks(upstream, num_tasks, layout)
            sum((r * u).sum() for r, u in zip(ref_outputs, up, strict=True)).backward()
            grads = unstack_tasks(x.grad, num_tasks, layout)
            for t in range(num_tasks):
                torch.testing.assert_close(grads[t], ref_inputs[t].grad, atol=1e-5, rtol=1e-5)
                _check_param_grads(layer, refs[t], t)
    for t in range(num_tasks):
        torch.testing.assert_close(layer.running_mean[t], refs[t].running_mean)
        torch.testing.assert_close(layer.running_var[t], refs[t].running_var)
    assert layer.num_batches_tracked.tolist() == [3] * num_tasks
    layer.eval()
    for bn in refs:
        bn.eval()
    x = make_input(dims, 5)
    with use_all_tasks(layout):
        outputs = unstack_tasks(layer(stack_tasks(x, num_tasks, layout)), num_tasks, layout)
    for out, bn in zip(outputs, refs, strict=True):
        torch.testing.assert_close(out, bn(x), atol=1e-5, rtol=1e-5)


def _check_param_grads(layer, ref, t):
    scale = layer.affine_parameters()[0]
    if isinstance(layer, TaskSigmaBatchNorm2d | TaskSigmaBatchNorm1d):
        gate = torch.sigmoid(scale[t].detach())
        expected = ref.weight.grad * gate * (1 - gate)  # chain rule through the sigmoid
    else:
        expected = ref.weight.grad
    torch.testing.assert_close(scale.grad[t], expected, atol=1e-5, rtol=1e-5)
    if layer.bias is not None:
        torch.testing.assert_close(layer.bias.grad[t], ref.bias.grad, atol=1e-5, rtol=1e-5)


def test_task_sigma_bias_option():
    torch.manual_seed(0)
    layer = TaskSigmaBatchNorm2d(4, ["a", "b"], bias=True)
    randomise(layer)
    refs = reference_bns(layer, 4)
    x = make_input(4, 6)
    with use_task("b"):
        torch.testing.assert_close(layer(x), refs[1](x))
    assert layer.bias.shape == (2, 4)
    assert "bias=True" in repr(layer)


@pytest.mark.parametrize(("cls", "dims"), TASK_LAYERS)
def test_single_task_mode_updates_only_that_task(cls, dims):
    torch.manual_seed(0)
    layer = cls(4, TASKS)
    randomise(layer)
    refs = reference_bns(layer, dims)
    x = make_input(dims, 7)
    with use_task("depth"):
        y = layer(x)
    torch.testing.assert_close(y, refs[1](x))
    assert layer.num_batches_tracked.tolist() == [0, 1, 0]
    torch.testing.assert_close(layer.running_mean[1], refs[1].running_mean)
    assert torch.equal(layer.running_mean[0], torch.zeros(4))
    assert torch.equal(layer.running_var[2], torch.ones(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_all_tasks_on_cuda_matches_cpu(layout):
    torch.manual_seed(0)
    cpu = TaskSigmaBatchNorm2d(8, TASKS)
    gpu = copy.deepcopy(cpu).cuda()
    x = make_input(4, 12, channels=8)
    with use_all_tasks(layout):
        expected, actual = cpu(x), gpu(x.cuda())
    torch.testing.assert_close(actual.cpu(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gpu.running_var.cpu(), cpu.running_var, atol=1e-5, rtol=1e-5)


def test_errors_are_clear():
    layer = TaskSigmaBatchNorm2d(4, ["a", "b"])
    with pytest.raises(ValueError, match=r"unknown task 'c'.*'a', 'b'"), use_task("c"):
        layer(make_input(4, 2))
    with pytest.raises(ValueError, match="batch of 5 samples is not divisible by the 2 tasks"):
        with use_all_tasks():
            layer(make_input(4, 5))
    with pytest.raises(ValueError, match="has 4 channels, got an input with 3"), use_task("a"):
        layer(make_input(4, 2, channels=3))
    with pytest.raises(ValueError, match="expects a 4D input"), use_task("a"):
        layer(make_input(2, 2))
    with pytest.raises(RuntimeError, match=r"needs a task.*use_task"):
        layer(make_input(4, 2))
    with pytest.raises(ValueError, match="duplicate task names"):
        TaskBatchNorm2d(4, ["a", "a"])
    with pytest.raises(ValueError, match="at least one task"):
        TaskBatchNorm2d(4, [])
    with pytest.raises(TypeError, match="sequence of names"):
        TaskBatchNorm2d(4, "ab")


def test_cumulative_average_needs_equal_counts_in_all_tasks_mode():
    layer = TaskBatchNorm2d(4, ["a", "b"], momentum=None)
    with use_task("a"):
        layer(make_input(4, 3))
    with pytest.raises(RuntimeError, match=r"momentum=None.*\[1, 0\]"), use_all_tasks():
        layer(make_input(4, 4))


@pytest.mark.parametrize(("cls", "dims"), TASK_LAYERS[:1] + TASK_LAYERS[3:4])
def test_state_dict_round_trip(cls, dims):
    torch.manual_seed(0)
    layer = cls(4, ["a", "b"])
    randomise(layer)
    with use_all_tasks():
        layer(make_input(dims, 6))
    state = layer.state_dict()
    assert state["_extra_state"] == {"tasks": ["a", "b"]}
    fresh = cls(4, ["a", "b"])
    fresh.load_state_dict(state)
    for name, tensor in layer.state_dict().items():
        if name != "_extra_state":
            assert torch.equal(tensor, fresh.state_dict()[name]), name
    layer.eval()
    fresh.eval()
    x = make_input(dims, 4)
    with use_all_tasks():
        torch.testing.assert_close(layer(x), fresh(x))


@pytest.mark.parametrize("tasks", [["a", "c"], ["a", "b", "c"], ["b", "a"]])
def test_loading_another_task_set_fails(tasks):
    state = TaskSigmaBatchNorm2d(4, ["a", "b"]).state_dict()
    with pytest.raises(RuntimeError, match=r"saved with tasks \('a', 'b'\).*has tasks"):
        TaskSigmaBatchNorm2d(4, tasks).load_state_dict(state)


@pytest.mark.parametrize("make", [lambda: SigmaBatchNorm2d(4),
                                  lambda: TaskBatchNorm2d(4, ["a", "b"]),
                                  lambda: TaskSigmaBatchNorm2d(4, ["a", "b"], bias=True)])
def test_deepcopy_and_pickle(make):
    torch.manual_seed(0)
    layer = make().eval()
    x = make_input(4, 4)
    with use_all_tasks():
        expected = layer(x)
        for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            torch.testing.assert_close(clone(x), expected)


def test_extra_repr():
    text = repr(TaskSigmaBatchNorm2d(16, ["seg", "depth"], momentum=0.2))
    assert text == "TaskSigmaBatchNorm2d(16, tasks=('seg', 'depth'), eps=1e-05, momentum=0.2)"
    assert repr(SigmaBatchNorm1d(3)) == "SigmaBatchNorm1d(3, eps=1e-05, momentum=0.1)"


def test_gate_is_sigmoid_of_gate_logit():
    layer = TaskSigmaBatchNorm2d(4, ["a", "b"])
    torch.testing.assert_close(layer.gate, torch.sigmoid(layer.gate_logit))
    x = make_input(4, 6)
    with use_task("b"):
        expected = F.batch_norm(x, None, None, layer.gate[1], None, True)
        torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", [None, "task_major", "sample_major"])  # None: one task
@pytest.mark.parametrize(("cls", "dims"), TASK_LAYERS)
def test_low_precision_inputs_get_float32_statistics(cls, dims, layout, dtype, autocast,
                                                     low_precision_check):
    torch.manual_seed(0)
    layer = cls(4, TASKS)
    randomise(layer)
    refs = [bn.double() for bn in reference_bns(layer, dims)]
    inputs = [(make_input(dims, 16) * 10 + 300).to(dtype) for _ in TASKS]  # sums overflow fp16
    low_precision_check(layer, refs, inputs, TASKS, layout, dtype, autocast)
    tasks = [1] if layout is None else range(len(TASKS))
    for t in tasks:
        torch.testing.assert_close(layer.running_mean[t], refs[t].running_mean.float())
        torch.testing.assert_close(layer.running_var[t], refs[t].running_var.float())


def test_sigma_batch_norm_loads_the_rni_codes_state_dict():
    """The σBN of the RNI code (github.com/xapharius/receding-neuron-importances) is a
    BatchNorm2d without bias whose ``weight`` holds the gate logits."""
    torch.manual_seed(0)
    rni = nn.BatchNorm2d(4)
    with torch.no_grad():
        rni.weight.normal_()
        rni.running_mean.normal_()
    rni.bias = None
    layer = SigmaBatchNorm2d(4)
    layer.load_state_dict(rni.state_dict())
    assert torch.equal(layer.gate_logit, rni.weight)
    assert torch.equal(layer.running_mean, rni.running_mean)
