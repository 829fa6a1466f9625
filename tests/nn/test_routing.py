import re
import threading

import pytest
import torch

from tasknorm.nn import (
    Route,
    TaskBatchNorm1d,
    TaskBatchNorm2d,
    TaskLayerNorm,
    TaskLayerNorm2d,
    TaskSigmaBatchNorm1d,
    TaskSigmaBatchNorm2d,
    TaskSigmaLayerNorm,
    TaskSigmaLayerNorm2d,
    current_route,
    set_route,
    stack_tasks,
    unstack_tasks,
    use_all_tasks,
    use_task,
)


def test_nested_contexts_restore_the_outer_route():
    assert current_route() is None
    with use_task("a"):
        assert current_route() == Route("a")
        with use_all_tasks("sample_major"):
            assert current_route() == Route(None, "sample_major")
            assert current_route().all_tasks
        assert current_route() == Route("a")
    assert current_route() is None


def test_route_is_restored_after_an_exception():
    with pytest.raises(KeyError), use_task("a"):
        raise KeyError
    assert current_route() is None


def test_default_route_and_context_override():
    layer = TaskBatchNorm2d(2, ["a", "b"])
    set_route(layer, "b")
    layer(torch.randn(3, 2, 2, 2))
    assert layer.num_batches_tracked.tolist() == [0, 1]
    with use_task("a"):
        layer(torch.randn(3, 2, 2, 2))
    assert layer.num_batches_tracked.tolist() == [1, 1]
    set_route(layer, Route(None))
    layer(torch.randn(4, 2, 2, 2))
    assert layer.num_batches_tracked.tolist() == [2, 2]
    set_route(layer, None)
    with pytest.raises(RuntimeError, match="needs a task"):
        layer(torch.randn(3, 2, 2, 2))


def test_set_route_errors():
    with pytest.raises(ValueError, match="unknown task 'z'"):
        set_route(TaskBatchNorm2d(2, ["a", "b"]), "z")
    with pytest.raises(ValueError, match="no task-specific layer"):
        set_route(torch.nn.Linear(2, 2), "a")


def test_single_task_layer_needs_no_route():
    layer = TaskBatchNorm2d(2, ["only"])
    layer(torch.randn(3, 2, 2, 2))
    assert layer.num_batches_tracked.tolist() == [1]


def test_threads_have_their_own_route():
    torch.manual_seed(0)
    layer = TaskBatchNorm2d(3, ["a", "b"], track_running_stats=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0] * 3, [5.0] * 3]))
    x = torch.randn(4, 3, 2, 2)
    with use_task("a"):
        expected_a = layer(x)
    with use_task("b"):
        expected_b = layer(x)
    barrier = threading.Barrier(2)
    results: dict[str, list[torch.Tensor]] = {"a": [], "b": []}

    def run(task: str) -> None:
        with use_task(task):
            barrier.wait()
            for _ in range(20):
                results[task].append(layer(x))

    threads = [threading.Thread(target=run, args=(t,)) for t in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(y, expected_a) for y in results["a"])
    assert all(torch.equal(y, expected_b) for y in results["b"])
    assert len(results["a"]) == len(results["b"]) == 20


@pytest.mark.parametrize("layout", ["task_major", "sample_major"])
def test_stack_and_unstack_are_inverse(layout):
    x = torch.arange(6.0).view(3, 2)
    stacked = stack_tasks(x, 2, layout)
    assert stacked.shape == (6, 2)
    assert stacked[0].tolist() == [0.0, 1.0]
    assert stacked[1].tolist() == ([0.0, 1.0] if layout == "sample_major" else [2.0, 3.0])
    for part in unstack_tasks(stacked, 2, layout):
        assert torch.equal(part, x)


def test_unstack_and_route_errors():
    with pytest.raises(ValueError, match="not divisible by 3 tasks"):
        unstack_tasks(torch.zeros(4, 2), 3)
    with pytest.raises(ValueError, match="unknown layout"):
        Route(None, "diagonal")
    with pytest.raises(ValueError, match="unknown layout"):
        stack_tasks(torch.zeros(2), 2, "diagonal")


LAYERS = {  # class -> input shape of one task's batch
    TaskBatchNorm1d: (2, 3), TaskBatchNorm2d: (2, 3, 2, 2), TaskSigmaBatchNorm1d: (2, 3, 4),
    TaskSigmaBatchNorm2d: (2, 3, 2, 2), TaskLayerNorm: (2, 5, 3), TaskSigmaLayerNorm: (2, 3),
    TaskLayerNorm2d: (2, 3, 2, 2), TaskSigmaLayerNorm2d: (2, 3, 2, 2),
}


@pytest.mark.parametrize("cls", list(LAYERS))
@pytest.mark.parametrize("batch_tasks", [("a", "b", "c", "d"), ("b", "a"), ("a", "b", "c")])
def test_an_all_tasks_batch_of_other_tasks_is_refused(cls, batch_tasks):
    layer = cls(3, ["a", "b"])
    before = {name: t.clone() for name, t in layer.state_dict().items() if name != "_extra_state"}
    x = stack_tasks(torch.randn(LAYERS[cls]), len(batch_tasks))
    expected = re.escape(f"has tasks ('a', 'b'), but the all-tasks batch holds {batch_tasks}")
    with pytest.raises(ValueError, match=expected), use_all_tasks(tasks=batch_tasks):
        layer(x)
    for name, tensor in layer.state_dict().items():
        assert name == "_extra_state" or torch.equal(tensor, before[name]), name
    with use_all_tasks(tasks=["a", "b"]):
        layer(stack_tasks(torch.randn(LAYERS[cls]), 2))


def test_a_model_with_layers_for_fewer_tasks_is_refused():
    model = torch.nn.Sequential(TaskBatchNorm2d(3, ["a", "b", "c", "d"]),
                                TaskSigmaBatchNorm2d(3, ["a", "b"]))
    with pytest.raises(ValueError, match="TaskSigmaBatchNorm2d has tasks"):
        with use_all_tasks(tasks=["a", "b", "c", "d"]):
            model(stack_tasks(torch.randn(2, 3, 2, 2), 4))
    with pytest.raises(ValueError, match="but the all-tasks batch holds"):
        set_route(model, Route(None, tasks=("a", "b", "c", "d")))
    assert model[0].default_route is None


def test_task_lists_of_routes_are_checked():
    assert Route(None, tasks=["a", "b"]).tasks == ("a", "b")
    with pytest.raises(ValueError, match="single task 'a' takes no tasks"):
        Route("a", tasks=("a", "b"))
    with pytest.raises(ValueError, match="duplicate task names"):
        use_all_tasks(tasks=["a", "a"])
