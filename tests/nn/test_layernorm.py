import copy
import pickle

import pytest
import torch
from timm.layers import LayerNorm2d
from torch import nn

from tasknorm.nn import (
    TaskLayerNorm,
    TaskLayerNorm2d,
    TaskSigmaLayerNorm,
    TaskSigmaLayerNorm2d,
    unstack_tasks,
    use_all_tasks,
    use_task,
)

TASKS = ("seg", "depth", "normal")


def reference_lns(layer) -> list[nn.Module]:
    """One plain LayerNorm per task with that task's scale (gate) and shift."""
    scale, shift = layer.task_affine()
    refs = []
    for t in range(layer.num_tasks):
        if layer.channels_first:
            ln = LayerNorm2d(layer.normalized_shape[0], eps=layer.eps)
        else:
            ln = nn.LayerNorm(layer.normalized_shape, eps=layer.eps)
        with torch.no_grad():
            ln.weight.copy_(scale[t])
            ln.bias.copy_(shift[t] if shift is not None else torch.zeros_like(scale[t]))
        refs.append(ln)
    return refs


LAYERS = [
    (lambda: TaskLayerNorm(6, TASKS), (4, 5, 6)),
    (lambda: TaskLayerNorm(6, TASKS, bias=False), (4, 6)),
    (lambda: TaskLayerNorm((5, 6), TASKS), (4, 5, 6)),
    (lambda: TaskSigmaLayerNorm(6, TASKS), (4, 5, 6)),
    (lambda: TaskSigmaLayerNorm(6, TASKS, bias=True), (4, 5, 6)),
    (lambda: TaskLayerNorm2d(6, TASKS), (4, 6, 3, 5)),
    (lambda: TaskSigmaLayerNorm2d(6, TASKS), (4, 6, 3, 5)),
]


def randomise(layer) -> None:
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()


@pytest.mark.parametrize("layout", ["task_major", "sample_major"])
@pytest.mark.parametrize(("make", "shape"), LAYERS)
def test_all_tasks_equals_per_task_loop(make, shape, layout):
    torch.manual_seed(0)
    layer = make()
    randomise(layer)
    refs = reference_lns(layer)
    inputs = [torch.randn(shape) * 2 + 1 for _ in TASKS]
    x = torch.cat(inputs) if layout == "task_major" else torch.stack(inputs, 1).flatten(0, 1)
    x.requires_grad_(True)
    with use_all_tasks(layout):
        y = layer(x)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    ref_inputs = [i.clone().requires_grad_(True) for i in inputs]
    ref_outputs = [ln(i) for ln, i in zip(refs, ref_inputs, strict=True)]
    sum((r * u).sum() for r, u in zip(ref_outputs, unstack_tasks(upstream, 3, layout),
                                       strict=True)).backward()
    outputs = unstack_tasks(y, 3, layout)
    grads = unstack_tasks(x.grad, 3, layout)
    for t in range(3):
        torch.testing.assert_close(outputs[t], ref_outputs[t], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grads[t], ref_inputs[t].grad, atol=1e-5, rtol=1e-5)
        expected = refs[t].weight.grad
        if isinstance(layer, TaskSigmaLayerNorm):
            gate = torch.sigmoid(layer.gate_logit[t].detach())
            expected = expected * gate * (1 - gate)
        scale = layer.affine_parameters()[0]
        torch.testing.assert_close(scale.grad[t], expected, atol=1e-5, rtol=1e-5)
        if layer.bias is not None:
            torch.testing.assert_close(layer.bias.grad[t], refs[t].bias.grad, atol=1e-5,
                                       rtol=1e-5)


@pytest.mark.parametrize(("make", "shape"), LAYERS)
def test_single_task_equals_layer_norm(make, shape):
    torch.manual_seed(0)
    layer = make()
    randomise(layer)
    refs = reference_lns(layer)
    x = torch.randn(shape)
    with use_task("normal"):
        torch.testing.assert_close(layer(x), refs[2](x), atol=1e-5, rtol=1e-5)


def test_sigma_layer_norm_has_no_bias_by_default():
    layer = TaskSigmaLayerNorm(8, TASKS)
    assert layer.bias is None
    assert layer.gate.shape == (3, 8)
    assert "bias=False" in repr(layer)


def test_errors():
    layer = TaskLayerNorm(6, ["a", "b"])
    with pytest.raises(ValueError, match=r"ending in \(6,\)"), use_task("a"):
        layer(torch.randn(2, 5))
    with pytest.raises(ValueError, match="not divisible by the 2 tasks"), use_all_tasks():
        layer(torch.randn(3, 6))
    with pytest.raises(ValueError, match="unknown task 'x'"), use_task("x"):
        layer(torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"expects \(N, 6, H, W\)"), use_task("a"):
        TaskLayerNorm2d(6, ["a"])(torch.randn(2, 5, 3, 3))
    state = TaskLayerNorm(6, ["a", "b"]).state_dict()
    with pytest.raises(RuntimeError, match="saved with tasks"):
        TaskLayerNorm(6, ["a", "z"]).load_state_dict(state)


def test_copies_behave_the_same():
    layer = TaskSigmaLayerNorm2d(4, ["a", "b"])
    x = torch.randn(4, 4, 3, 3)
    with use_all_tasks():
        expected = layer(x)
        for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            torch.testing.assert_close(clone(x), expected)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", [None, "task_major", "sample_major"])  # None: one task
@pytest.mark.parametrize(("make", "shape"), LAYERS)
def test_low_precision_inputs_are_normalised_in_float32(make, shape, layout, dtype, autocast,
                                                        low_precision_check):
    torch.manual_seed(0)
    layer = make()
    randomise(layer)
    refs = [ln.double() for ln in reference_lns(layer)]
    inputs = [(torch.randn(shape) * 30 + 300).to(dtype) for _ in TASKS]
    low_precision_check(layer, refs, inputs, TASKS, layout, dtype, autocast)
