"""The contracts of the tasknorm layers: one set of properties run over every layer class, kind,
dtype and layout, and over converted torchvision and timm models, in the manner of TorchJD's
aggregator tests (github.com/TorchJD/torchjd, ``tests/unit/aggregation``).

Properties of a layer:

* an all-tasks pass equals a pass per task (outputs, gradients, running statistics);
* a task's pass equals torch's plain layer holding that task's state, computed in float64 (with
  one task the layer needs no route: TSBN is BatchNorm, the task LayerNorm is LayerNorm);
* a one-task σ layer is the shared σ layer;
* ``extract_task`` (``to_plain`` for shared σBN) computes the task's pass in eval, with ordinary
  modules;
* a state dict saved and loaded into a fresh layer gives the same state and outputs;
* ``torch.compile`` gives the same outputs, whatever the route;
* gradients are finite.

Precisions: float32; layer and input in bfloat16 or float16; a float32 layer under CPU autocast
given bfloat16 or float16 inputs. Results agree to about four roundings of the input's dtype,
relative to their largest magnitude.

Properties of a converted model (torchvision and timm models with grouped, depthwise, densely
connected, norm-act and LayerNorm layers, for every kind): an all-tasks pass equals a pass per
task; ``extract_task`` (``to_plain`` for shared σBN) computes the task's pass in eval, with
ordinary modules.
"""

import copy
import inspect
import io
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache

import pytest
import timm
import torch
import torchvision
from timm.layers import BatchNormAct2d, LayerNorm2d, LayerNormAct, LayerNormAct2d
from torch import Tensor, nn
from torch.func import functional_call

import tasknorm.nn
from tasknorm.nn import (
    KINDS,
    LAYOUTS,
    NormAct,
    SigmaBatchNorm1d,
    SigmaBatchNorm2d,
    TaskBatchNorm1d,
    TaskBatchNorm2d,
    TaskLayerNorm,
    TaskLayerNorm2d,
    TaskRouted,
    TaskSigmaBatchNorm1d,
    TaskSigmaBatchNorm2d,
    TaskSigmaLayerNorm,
    TaskSigmaLayerNorm2d,
    convert,
    extract_task,
    unstack_tasks,
    use_all_tasks,
    use_task,
)
from tasknorm.prune import to_plain

TASKS = ("seg", "depth", "normal")
C = 4  # channels
N = 3  # samples per task


@dataclass(frozen=True)
class Precision:
    """Parameters in ``params``, inputs in ``inputs``, optionally under autocast; results agree
    to ``tol`` times their largest magnitude (about four roundings of ``inputs``)."""

    name: str
    params: torch.dtype
    inputs: torch.dtype
    tol: float
    autocast: bool = False


FLOAT32 = Precision("float32", torch.float32, torch.float32, 1e-5)
PRECISIONS = [
    FLOAT32,
    Precision("bfloat16", torch.bfloat16, torch.bfloat16, 3e-2),
    Precision("float16", torch.float16, torch.float16, 4e-3),
    Precision("bfloat16_autocast", torch.float32, torch.bfloat16, 3e-2, autocast=True),
    Precision("float16_autocast", torch.float32, torch.float16, 4e-3, autocast=True),
]


@pytest.fixture(params=PRECISIONS, ids=lambda p: p.name)
def precision(request):
    """Each precision in turn; the autocast ones run the test under CPU autocast, whose
    float32 layers receive low-precision activations."""
    with torch.autocast("cpu", dtype=request.param.inputs, enabled=request.param.autocast):
        yield request.param


@dataclass(frozen=True)
class LayerCase:
    """A tasknorm layer built for some tasks (shared σ layers take none) and the shape of one
    task's input."""

    name: str
    make: Callable[[tuple[str, ...]], nn.Module]
    shape: tuple[int, ...]

    @property
    def task_specific(self) -> bool:
        return any(isinstance(m, TaskRouted) for m in self.make(TASKS).modules())

    def build(self, tasks: tuple[str, ...], precision: Precision, seed: int = 0) -> nn.Module:
        """The layer with random parameters and running statistics (so that tasks differ)."""
        torch.manual_seed(seed)
        layer = self.make(tasks)
        with torch.no_grad():
            for param in layer.parameters():
                param.normal_()
            for name, buffer in layer.named_buffers():
                if name.endswith("running_mean"):
                    buffer.normal_()
                elif name.endswith("running_var"):
                    buffer.uniform_(0.5, 2.0)
        return layer.to(precision.params)

    def input(self, precision: Precision, offset: float = 1.0) -> Tensor:
        return (torch.randn(self.shape) * 3 + offset).to(precision.inputs)


def norm_act(source: Callable[[], nn.Module], kind: str) -> Callable[..., nn.Module]:
    """A timm norm-act layer converted with ``kind`` (a :class:`NormAct`)."""
    return lambda tasks: convert(source(), None if kind == "sigma" else tasks, kind=kind)


LAYER_CASES = [
    LayerCase("TaskBatchNorm1d_NC", lambda t: TaskBatchNorm1d(C, t), (8, C)),
    LayerCase("TaskBatchNorm1d_NCL", lambda t: TaskBatchNorm1d(C, t), (N, C, 16)),
    LayerCase("TaskBatchNorm2d", lambda t: TaskBatchNorm2d(C, t), (N, C, 32, 32)),
    LayerCase("TaskBatchNorm2d_no_affine", lambda t: TaskBatchNorm2d(C, t, affine=False),
              (N, C, 32, 32)),
    LayerCase("TaskBatchNorm2d_cumulative", lambda t: TaskBatchNorm2d(C, t, momentum=None),
              (N, C, 32, 32)),
    LayerCase("TaskBatchNorm2d_no_running_stats",
              lambda t: TaskBatchNorm2d(C, t, track_running_stats=False), (N, C, 32, 32)),
    LayerCase("TaskSigmaBatchNorm1d_NC", lambda t: TaskSigmaBatchNorm1d(C, t), (8, C)),
    LayerCase("TaskSigmaBatchNorm1d_NCL", lambda t: TaskSigmaBatchNorm1d(C, t), (N, C, 16)),
    LayerCase("TaskSigmaBatchNorm2d", lambda t: TaskSigmaBatchNorm2d(C, t), (N, C, 32, 32)),
    LayerCase("TaskSigmaBatchNorm2d_bias", lambda t: TaskSigmaBatchNorm2d(C, t, bias=True),
              (N, C, 32, 32)),
    LayerCase("SigmaBatchNorm1d_NC", lambda _: SigmaBatchNorm1d(C), (8, C)),
    LayerCase("SigmaBatchNorm1d_NCL", lambda _: SigmaBatchNorm1d(C), (N, C, 16)),
    LayerCase("SigmaBatchNorm2d", lambda _: SigmaBatchNorm2d(C), (N, C, 32, 32)),
    LayerCase("TaskLayerNorm", lambda t: TaskLayerNorm(C, t), (N, 16, C)),
    LayerCase("TaskLayerNorm_no_bias", lambda t: TaskLayerNorm(C, t, bias=False), (N, 16, C)),
    LayerCase("TaskLayerNorm_no_affine", lambda t: TaskLayerNorm(C, t, elementwise_affine=False),
              (N, 16, C)),
    LayerCase("TaskLayerNorm_2_dims", lambda t: TaskLayerNorm((16, C), t), (N, 16, C)),
    LayerCase("TaskLayerNorm2d", lambda t: TaskLayerNorm2d(C, t), (N, C, 32, 32)),
    LayerCase("TaskSigmaLayerNorm", lambda t: TaskSigmaLayerNorm(C, t), (N, 16, C)),
    LayerCase("TaskSigmaLayerNorm_bias", lambda t: TaskSigmaLayerNorm(C, t, bias=True),
              (N, 16, C)),
    LayerCase("TaskSigmaLayerNorm2d", lambda t: TaskSigmaLayerNorm2d(C, t), (N, C, 32, 32)),
    *(LayerCase(f"NormAct_BatchNormAct2d_{kind}",
                norm_act(lambda: BatchNormAct2d(C, act_layer="silu"), kind), (N, C, 32, 32))
      for kind in KINDS),
    *(LayerCase(f"NormAct_LayerNormAct2d_{kind}",
                norm_act(lambda: LayerNormAct2d(C, act_layer="gelu"), kind), (N, C, 32, 32))
      for kind in KINDS if kind != "sigma"),
    *(LayerCase(f"NormAct_LayerNormAct_{kind}",
                norm_act(lambda: LayerNormAct(C, act_layer="gelu"), kind), (N, 16, C))
      for kind in KINDS if kind != "sigma"),
]
TASK_CASES = [case for case in LAYER_CASES if case.task_specific]
SHARED_CASES = [case for case in LAYER_CASES if not case.task_specific]
BATCH_NORMS_1D = (TaskBatchNorm1d, TaskSigmaBatchNorm1d, SigmaBatchNorm1d)
LAYER_NORMS = (TaskLayerNorm, TaskSigmaLayerNorm)
LAYER_NORMS_2D = (TaskLayerNorm2d, TaskSigmaLayerNorm2d)


def named(cases: list[LayerCase]) -> list:
    """``cases`` as pytest params named after them."""
    return [pytest.param(case, id=case.name) for case in cases]


def stacked(inputs: list[Tensor], layout: str) -> Tensor:
    """The tasks' batches stacked in ``layout`` (the inverse of ``unstack_tasks``)."""
    if layout == "task_major":
        return torch.cat(inputs)
    return torch.stack(inputs, 1).flatten(0, 1)


def assert_close(actual: Tensor, expected: Tensor, tol: float) -> None:
    """Equal up to ``tol`` times the largest magnitude of ``expected`` (at least 1)."""
    scale = max(1.0, expected.detach().abs().max().item())
    torch.testing.assert_close(actual.detach().double(), expected.detach().double(), rtol=0,
                               atol=tol * scale)


def assert_same_state(actual: nn.Module, expected: nn.Module, tol: float) -> None:
    """Same parameter and buffer names, values close (integer counters and tasks equal)."""
    actual_state, expected_state = actual.state_dict(), expected.state_dict()
    assert list(actual_state) == list(expected_state)
    for name, value in actual_state.items():
        reference = expected_state[name]
        if not isinstance(value, Tensor):  # the tasks in the extra state
            assert value == reference, name
        elif value.is_floating_point():
            assert_close(value, reference, tol)
        else:
            assert torch.equal(value, reference), name


def assert_same_grads(actual: nn.Module, expected: nn.Module, tol: float) -> None:
    for (name, param), ref in zip(actual.named_parameters(), expected.parameters(), strict=True):
        assert (param.grad is None) == (ref.grad is None), name
        if param.grad is not None:
            assert_close(param.grad, ref.grad, tol)


def tasknorm_modules(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that come from tasknorm."""
    return [name for name, m in model.named_modules()
            if type(m).__module__.startswith("tasknorm.")]


def per_task(tensor: Tensor, layer: nn.Module) -> Tensor:
    """``tensor`` with the task as first dimension (a shared σ layer serves one task)."""
    return tensor if isinstance(layer, TaskRouted) else tensor.unsqueeze(0)


def plain_pass(layer: nn.Module, task: int, x: Tensor) -> Tensor:
    """Task ``task``'s output of ``layer`` on ``x`` computed by torch's ``BatchNorm``,
    ``LayerNorm`` or timm's ``LayerNorm2d``, holding that task's scale, shift and running
    statistics. The statistics are views of ``layer``'s buffers, which the plain layer updates
    in training; the output is differentiable with respect to ``layer``'s parameters."""
    if isinstance(layer, NormAct):
        return layer.act(layer.drop(plain_pass(layer.norm, task, x)))
    scale, shift = (None if t is None else per_task(t, layer)[task] for t in layer.task_affine())
    affine = scale is not None
    state = {}
    if affine:
        state = {"weight": scale, "bias": torch.zeros_like(scale) if shift is None else shift}
    if isinstance(layer, LAYER_NORMS_2D):
        plain = LayerNorm2d(layer.normalized_shape[0], layer.eps, affine=affine)
    elif isinstance(layer, LAYER_NORMS):
        plain = nn.LayerNorm(layer.normalized_shape, layer.eps, elementwise_affine=affine)
    else:
        cls = nn.BatchNorm1d if isinstance(layer, BATCH_NORMS_1D) else nn.BatchNorm2d
        plain = cls(layer.num_features, layer.eps, layer.momentum, affine=affine,
                    track_running_stats=layer.track_running_stats)
        if layer.track_running_stats:
            state |= {name: per_task(getattr(layer, name), layer)[task]
                      for name in ("running_mean", "running_var", "num_batches_tracked")}
    return functional_call(plain.train(layer.training), state, (x,))


def route(task: str | None) -> AbstractContextManager:
    """``use_task(task)``; no route for ``None`` (a one-task layer needs none)."""
    return nullcontext() if task is None else use_task(task)


# ---------------------------------------------------------------------------------------------
# Layer properties


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", named(TASK_CASES))
def test_all_tasks_pass_equals_per_task_passes(case, precision, layout):
    """One pass on the tasks' stacked batches equals one pass per task on its own batch: outputs,
    input and parameter gradients, in training then in eval, and the running statistics."""
    together = case.build(TASKS, precision)
    looped = copy.deepcopy(together)
    for training in (True, False):
        together.train(training)
        looped.train(training)
        inputs = [case.input(precision) for _ in TASKS]
        ours = [x.clone().requires_grad_() for x in inputs]
        theirs = [x.clone().requires_grad_() for x in inputs]
        with use_all_tasks(layout):
            y = together(stacked(ours, layout))
        expected = []
        for task, x in zip(TASKS, theirs, strict=True):
            with use_task(task):
                expected.append(looped(x))
        for output, reference in zip(unstack_tasks(y, len(TASKS), layout), expected, strict=True):
            assert output.dtype == reference.dtype == precision.inputs
            assert_close(output, reference, precision.tol)
        upstream = [torch.randn_like(e) for e in expected]
        y.backward(stacked(upstream, layout))
        torch.autograd.backward(expected, upstream)
        for x, reference in zip(ours, theirs, strict=True):
            assert_close(x.grad, reference.grad, precision.tol)
        assert_same_grads(together, looped, precision.tol)
    assert_same_state(together, looped, precision.tol)


TASK_PASS_PARAMS = [
    *(pytest.param(case, num_tasks, id=f"{case.name}-{num_tasks}_tasks")
      for case in TASK_CASES for num_tasks in (1, 3)),
    *(pytest.param(case, 1, id=case.name) for case in SHARED_CASES),
]


@pytest.mark.parametrize(("case", "num_tasks"), TASK_PASS_PARAMS)
def test_task_pass_equals_plain_layer(case, num_tasks, precision):
    """A task's pass equals torch's plain layer holding that task's state, computed in float64:
    outputs (in the input's dtype), input and parameter gradients and running statistics, over
    three training steps and one eval step; other tasks' statistics stay as they were. With one
    task the layer needs no route: TSBN is BatchNorm and the task LayerNorm is LayerNorm."""
    layer = case.build(TASKS[:num_tasks], precision)
    reference = copy.deepcopy(layer).double()
    index = num_tasks // 2
    task = None if num_tasks == 1 else TASKS[index]
    for training in (True, True, True, False):
        layer.train(training)
        reference.train(training)
        x = case.input(precision).requires_grad_()
        x64 = x.detach().double().requires_grad_()
        with route(task):
            y = layer(x)
        expected = plain_pass(reference, index, x64)
        assert y.dtype == precision.inputs
        assert_close(y, expected, precision.tol)
        upstream = torch.randn_like(expected)
        y.backward(upstream.to(y.dtype))
        expected.backward(upstream)
        assert_close(x.grad, x64.grad, precision.tol)
        assert_same_grads(layer, reference, precision.tol)
    assert_same_state(layer, reference, precision.tol)


ONE_TASK_SIGMA = {SigmaBatchNorm1d: TaskSigmaBatchNorm1d, SigmaBatchNorm2d: TaskSigmaBatchNorm2d}


@pytest.mark.parametrize(
    "case", named([c for c in SHARED_CASES if type(c.make(TASKS)) in ONE_TASK_SIGMA]))
def test_one_task_sigma_equals_shared_sigma(case, precision):
    """TSσBN with one task, loaded with a σBN's state, computes exactly what the σBN does:
    outputs, gradients and running statistics."""
    shared = case.build(TASKS, precision)
    ours = ONE_TASK_SIGMA[type(shared)](C, ["only"]).to(precision.params)
    state = {name: tensor.unsqueeze(0) for name, tensor in shared.state_dict().items()}
    ours.load_state_dict(state | {"_extra_state": {"tasks": ["only"]}})
    for training in (True, True, False):
        ours.train(training)
        shared.train(training)
        x = case.input(precision)
        ours_x, shared_x = x.clone().requires_grad_(), x.clone().requires_grad_()
        y, expected = ours(ours_x), shared(shared_x)
        torch.testing.assert_close(y, expected, rtol=0, atol=0)
        upstream = torch.randn_like(y)
        y.backward(upstream)
        expected.backward(upstream)
        torch.testing.assert_close(ours_x.grad, shared_x.grad, rtol=0, atol=0)
        for param, shared_param in zip(ours.parameters(), shared.parameters(), strict=True):
            torch.testing.assert_close(param.grad, shared_param.grad.unsqueeze(0), rtol=0, atol=0)
    for name, tensor in shared.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], tensor.unsqueeze(0), rtol=0, atol=0)


@pytest.mark.parametrize("case", named(TASK_CASES))
def test_extract_task_equals_the_tasks_pass(case, precision):
    """In eval, ``extract_task`` gives ordinary torch / timm modules computing the task's pass,
    with the ``requires_grad`` of the parameters they come from."""
    layer = case.build(TASKS, precision).eval()
    x = case.input(precision)
    for task, frozen in zip(TASKS, (False, True, False), strict=True):
        layer.requires_grad_(not frozen)
        plain = extract_task(layer, task)
        assert tasknorm_modules(plain) == []
        assert all(p.requires_grad != frozen for p in plain.parameters())
        with use_task(task):
            expected = layer(x)
        actual = plain(x)
        assert actual.dtype == expected.dtype
        assert_close(actual, expected, precision.tol)


def routed(layer: nn.Module) -> TaskRouted:
    """The task-specific layer of a case (the norm inside a :class:`NormAct`)."""
    return layer.norm if isinstance(layer, NormAct) else layer


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", named(TASK_CASES))
def test_regrouping_to_one_task_each_computes_that_tasks_pass(case, precision, training):
    """A group made from one task (a one-hot row) computes what that task computed, in
    training (batch statistics) and in eval (its running statistics)."""
    layer = case.build(TASKS, precision).train(training)
    grouped = copy.deepcopy(layer)
    routed(grouped).regroup_(["last", "first"], torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    assert routed(grouped).tasks == ("last", "first")
    x = case.input(precision)
    for group, task in (("last", TASKS[2]), ("first", TASKS[0])):
        with use_task(task):
            expected = layer(x)
        with use_task(group):
            assert_close(grouped(x), expected, precision.tol)


@pytest.mark.parametrize("case", named(TASK_CASES))
def test_regrouping_averages_the_members_state(case, precision):
    """Every per-task tensor becomes the weighted sum of its rows, batch counters the largest
    count of the members; parameters stay trainable parameters."""
    layer = routed(case.build(TASKS, precision))
    if layer.state_dict().get("num_batches_tracked") is not None:
        layer.num_batches_tracked.copy_(torch.tensor([3, 5, 1]))
    before = {name: t.clone() for name, t in layer.state_dict().items() if isinstance(t, Tensor)}
    weights = torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]])
    layer.regroup_(["ab", "c"], weights)
    after = layer.state_dict()
    assert list(after) == [*before, "_extra_state"]
    assert after["_extra_state"] == {"tasks": ["ab", "c"]}
    for name, old in before.items():
        if old.is_floating_point():
            expected = torch.stack([sum(w * row.double() for w, row in zip(ws, old, strict=True))
                                    for ws in weights.double()])
            assert_close(after[name], expected, precision.tol)
        else:
            assert after[name].tolist() == [max(old[0], old[1]).item(), old[2].item()]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in layer.parameters())


@pytest.mark.parametrize(("groups", "weights"), [
    (["g", "h"], torch.ones(2, 2) / 2),
    (["g"], torch.tensor([[1.0, 0.5, -0.5]])),
    (["g"], torch.tensor([[0.5, 0.2, 0.2]])),
])
def test_bad_regrouping_weights_change_nothing(groups, weights):
    layer = TaskSigmaBatchNorm2d(C, TASKS)
    state = copy.deepcopy(layer.state_dict())
    with pytest.raises(ValueError, match="regrouping"):
        layer.regroup_(groups, weights)
    assert layer.tasks == TASKS
    saved = TaskSigmaBatchNorm2d(C, TASKS)
    saved.load_state_dict(state)
    assert_same_state(layer, saved, 0)


@pytest.mark.parametrize("case", named(SHARED_CASES))
def test_shared_sigma_folds_to_plain(case, precision):
    """A shared σ layer has no task to extract; ``to_plain`` folds it into ordinary modules
    computing the same in eval."""
    layer = case.build(TASKS, precision).eval()
    with pytest.raises(ValueError, match="no task-specific layer"):
        extract_task(layer, TASKS[0])
    plain = to_plain(copy.deepcopy(layer))
    assert tasknorm_modules(plain) == []
    x = case.input(precision)
    expected = layer(x)
    actual = plain(x)
    assert actual.dtype == expected.dtype
    assert_close(actual, expected, precision.tol)


@pytest.mark.parametrize("case", named(LAYER_CASES))
def test_state_dict_round_trip(case, precision):
    """Saved after a training step and loaded into a fresh layer: the same state and outputs."""
    layer = case.build(TASKS, precision)
    with use_all_tasks():
        layer(stacked([case.input(precision) for _ in TASKS], "task_major"))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = case.build(TASKS, precision, seed=1)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert_same_state(fresh, layer, tol=0.0)
    layer.eval()
    fresh.eval()
    x = stacked([case.input(precision) for _ in TASKS], "task_major")
    with use_all_tasks():
        torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("offset", [1.0, 300.0])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", named(LAYER_CASES))
def test_finite_gradients(case, precision, layout, offset):
    """Finite outputs and gradients in training and eval, also for inputs far from zero
    (``offset``), whose squares overflow float16."""
    layer = case.build(TASKS, precision)
    for training in (True, False):
        layer.train(training)
        layer.zero_grad()
        x = stacked([case.input(precision, offset) for _ in TASKS], layout).requires_grad_()
        with use_all_tasks(layout):
            y = layer(x)
        assert torch.isfinite(y).all()
        y.backward(torch.randn_like(y))
        assert torch.isfinite(x.grad).all()
        for name, param in layer.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), name


def compile_cases() -> list[LayerCase]:
    """The first case of each layer class (tracing takes about a second each on CPU)."""
    first: dict[type, LayerCase] = {}
    for case in LAYER_CASES:
        first.setdefault(type(case.make(TASKS)), case)
    return list(first.values())


@pytest.mark.parametrize("case", named(compile_cases()))
def test_same_outputs_under_compile(case):
    """A compiled layer computes what the eager one does, for each route in turn (the route is
    read at run time, not baked into the compiled graph), in training and eval, in one graph.
    The ``aot_eager`` backend traces as inductor does, without its C++ compilation (minutes on
    CPU)."""
    torch._dynamo.reset()
    compiled_layer = case.build(TASKS, FLOAT32)
    eager = copy.deepcopy(compiled_layer)
    compiled = torch.compile(compiled_layer, backend="aot_eager", fullgraph=True)
    for training in (True, False):
        compiled.train(training)
        eager.train(training)
        for task, layout in ((TASKS[0], None), (TASKS[2], None), (None, "task_major"),
                             (None, "sample_major")):
            x = stacked([case.input(FLOAT32) for _ in TASKS], "task_major")
            active = use_task(task) if task is not None else use_all_tasks(layout)
            with active:
                assert_close(compiled(x), eager(x), FLOAT32.tol)
    assert_same_state(compiled_layer, eager, FLOAT32.tol)


def test_every_layer_class_and_kind_has_a_case():
    """The cases above cover every layer class of tasknorm.nn and every kind of ``convert``."""
    classes = {obj for name in tasknorm.nn.__all__
               if inspect.isclass(obj := getattr(tasknorm.nn, name))
               and issubclass(obj, nn.Module) and not inspect.isabstract(obj)}
    covered = {type(m) for case in LAYER_CASES for m in case.make(TASKS).modules()}
    # a public base class (BatchNormStats, SigmaBatchNorm) is covered through its subclasses
    uncovered = {c for c in classes if not any(issubclass(k, c) for k in covered)}
    assert not uncovered, uncovered
    assert classes - {c for c in classes if c.__subclasses__()} <= covered
    sources = [lambda: nn.BatchNorm1d(C), lambda: nn.BatchNorm2d(C), lambda: nn.LayerNorm(C),
               lambda: LayerNorm2d(C), lambda: BatchNormAct2d(C), lambda: LayerNormAct2d(C),
               lambda: LayerNormAct(C)]
    for kind in KINDS:
        for source in sources:
            module = source()
            if kind == "sigma" and not isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            new = convert(module, None if kind == "sigma" else TASKS, kind=kind)
            assert {type(m) for m in new.modules() if type(m).__module__.startswith("tasknorm.")} \
                <= covered


# ---------------------------------------------------------------------------------------------
# Model properties

MODELS: dict[str, Callable[[], nn.Module]] = {
    # grouped convolutions
    "regnet_x_400mf": lambda: torchvision.models.regnet_x_400mf(weights=None, num_classes=4),
    # depthwise convolutions
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(weights=None,
                                                                        num_classes=4),
    "test_efficientnet": lambda: timm.create_model("test_efficientnet", pretrained=False,
                                                   num_classes=4),
    # densely connected
    "densenet121": lambda: torchvision.models.densenet121(weights=None, num_classes=4),
    # timm norm-act layers (BatchNormAct2d, LayerNormAct2d)
    "regnety_002": lambda: timm.create_model("regnety_002", pretrained=False, num_classes=4),
    "test_efficientnet_ln": lambda: timm.create_model("test_efficientnet_ln", pretrained=False,
                                                      num_classes=4),
    # LayerNorm (timm's LayerNorm2d and channels-last LayerNorm)
    "test_convnext": lambda: timm.create_model("test_convnext", pretrained=False, num_classes=4),
    "test_vit": lambda: timm.create_model("test_vit", pretrained=False, num_classes=4,
                                          img_size=32),
    "convnext_tiny": lambda: torchvision.models.convnext_tiny(weights=None, num_classes=4),
}
LAYER_NORM_ONLY = {"test_efficientnet_ln", "test_convnext", "test_vit", "convnext_tiny"}
TASK_KINDS = [kind for kind in KINDS if kind != "sigma"]
MODEL_INPUT = (2, 3, 32, 32)  # one task's batch
MODEL_TOL = 1e-4  # float32 through a few dozen layers
MODEL_FLOAT64_TOL = 1e-9


@cache
def source_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]()


def norm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules()
            if isinstance(m, TaskRouted | SigmaBatchNorm1d | SigmaBatchNorm2d)]


def converted(name: str, kind: str) -> nn.Module:
    """Model ``name`` converted with ``kind`` in eval mode, its norm layers' parameters and
    running statistics drawn apart per task."""
    model = convert(copy.deepcopy(source_model(name)), None if kind == "sigma" else TASKS,
                    kind=kind)
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in norm_layers(model):
            for param in layer.parameters():
                param.add_(0.3 * torch.randn_like(param))
            for buffer_name, buffer in layer.named_buffers():
                if buffer_name == "running_mean":
                    buffer.add_(0.3 * torch.randn_like(buffer))
                elif buffer_name == "running_var":
                    buffer.mul_(torch.exp(0.3 * torch.randn_like(buffer)))
    return model.eval()


def train_norms(model: nn.Module, training: bool) -> None:
    """Norm layers in ``training`` mode, everything else in eval (no dropout or drop path)."""
    model.eval()
    for layer in norm_layers(model):
        layer.train(training)


def model_params(kinds: list[str]) -> list:
    return [pytest.param(name, kind, id=f"{name}-{kind}")
            for name in MODELS for kind in kinds
            if kind != "sigma" or name not in LAYER_NORM_ONLY]




@pytest.mark.parametrize(("name", "kind"), model_params(TASK_KINDS))
def test_model_all_tasks_pass_equals_per_task_passes(name, kind):
    """On a converted model, one pass on the tasks' stacked batches equals one pass per task, in
    both layouts, with the norm layers in training (same running statistics after) and in eval."""
    model = converted(name, kind).double()
    for layout in LAYOUTS:
        for training in (True, False):
            train_norms(model, training)
            looped = copy.deepcopy(model)
            inputs = [torch.randn(MODEL_INPUT, dtype=torch.float64) for _ in TASKS]
            with torch.no_grad():
                with use_all_tasks(layout):
                    outputs = unstack_tasks(model(stacked(inputs, layout)), len(TASKS), layout)
                for task, x, output in zip(TASKS, inputs, outputs, strict=True):
                    with use_task(task):
                        assert_close(output, looped(x), MODEL_FLOAT64_TOL)
            assert_same_state(model, looped, MODEL_FLOAT64_TOL)


@pytest.mark.parametrize(("name", "kind"), model_params(TASK_KINDS))
def test_model_extract_task_equals_the_tasks_pass(name, kind):
    """``extract_task`` on a converted model gives a model of ordinary torch / timm modules
    computing the task's pass in eval."""
    model = converted(name, kind)
    x = torch.randn(MODEL_INPUT)
    outputs = []
    for task in TASKS:
        plain = extract_task(model, task)
        assert tasknorm_modules(plain) == []
        with torch.no_grad():
            with use_task(task):
                outputs.append(model(x))
            assert_close(plain(x), outputs[-1], MODEL_TOL)
    assert not torch.allclose(outputs[0], outputs[1])  # the tasks' states differ


@pytest.mark.parametrize(("name", "kind"), model_params(["sigma"]))
def test_model_with_shared_sigma_folds_to_plain(name, kind):
    """A model converted to shared σBN has no task to extract; ``to_plain`` folds it into a
    model of ordinary torch / timm modules computing the same in eval."""
    model = converted(name, kind)
    with pytest.raises(ValueError, match="no task-specific layer"):
        extract_task(model, TASKS[0])
    plain = to_plain(copy.deepcopy(model))
    assert tasknorm_modules(plain) == []
    x = torch.randn(MODEL_INPUT)
    with torch.no_grad():
        assert_close(plain(x), model(x), MODEL_TOL)
