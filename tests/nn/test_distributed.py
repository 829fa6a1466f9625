"""Statistics synchronised across 2 CPU processes (gloo) equal one process on the whole batch."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tasknorm.nn import (
    SigmaBatchNorm2d,
    TaskBatchNorm2d,
    TaskSigmaBatchNorm1d,
    TaskSigmaBatchNorm2d,
    set_sync_stats,
    use_all_tasks,
)

WORLD = 2
TASKS = ("a", "b", "c")
N = 4  # samples per task per process


def make_layer(name: str):
    torch.manual_seed(0)
    layer = {"tssigma2d": lambda: TaskSigmaBatchNorm2d(5, TASKS),
             "tsbn2d": lambda: TaskBatchNorm2d(5, TASKS),
             "tssigma1d": lambda: TaskSigmaBatchNorm1d(5, TASKS),
             "sigma2d": lambda: SigmaBatchNorm2d(5)}[name]()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    return layer


def global_batches(name: str, steps: int = 2) -> list[torch.Tensor]:
    """Task-major global batches: task t's samples of process r are rows t*N*WORLD + r*N + n."""
    torch.manual_seed(1)
    shape = (5,) if name.endswith("1d") else (5, 3, 3)
    tasks = 1 if name == "sigma2d" else len(TASKS)
    return [torch.randn(tasks, WORLD * N, *shape) * 2 + 1 for _ in range(steps)]


def local_rows(batch: torch.Tensor, rank: int) -> torch.Tensor:
    return batch[:, rank * N:(rank + 1) * N].flatten(0, 1)


def loss_weights(shape: torch.Size) -> torch.Tensor:
    """Fixed, position-dependent upstream gradient for one process's outputs."""
    return torch.arange(shape.numel()).sin().view(shape)


def run_step(layer, x: torch.Tensor) -> torch.Tensor:
    with use_all_tasks():
        return layer(x)


def worker(rank: int, name: str, sync: bool, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        layer = make_layer(name)
        if sync:
            set_sync_stats(layer)
        outputs, grads = [], []
        for batch in global_batches(name):
            x = local_rows(batch, rank).requires_grad_(True)
            y = run_step(layer, x)
            (y * loss_weights(y.shape)).sum().backward()
            outputs.append(y.detach())
            grads.append(x.grad)
        weight_grad = layer.affine_parameters()[0].grad.clone()
        dist.all_reduce(weight_grad)
        torch.save({"outputs": outputs, "grads": grads, "weight_grad": weight_grad,
                    "running_mean": layer.running_mean, "running_var": layer.running_var},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def single_process(name: str) -> dict:
    layer = make_layer(name)
    outputs, grads = [], []
    for batch in global_batches(name):
        x = batch.flatten(0, 1).requires_grad_(True)
        y = run_step(layer, x)
        rows = y.view(batch.shape[0], WORLD * N, *y.shape[1:])
        local_shape = rows[:, :N].flatten(0, 1).shape
        weights = torch.cat([loss_weights(local_shape).view_as(rows[:, :N])] * WORLD, dim=1)
        (rows * weights).sum().backward()
        outputs.append(rows.detach())
        grads.append(x.grad.view_as(batch))
    return {"outputs": outputs, "grads": grads, "weight_grad": layer.affine_parameters()[0].grad,
            "running_mean": layer.running_mean, "running_var": layer.running_var}


def spawn(name: str, sync: bool, tmp_path) -> list[dict]:
    mp.spawn(worker, args=(name, sync, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", ["tssigma2d", "tsbn2d", "tssigma1d", "sigma2d"])
def test_synchronised_statistics_equal_one_process(name, tmp_path):
    ranks = spawn(name, sync=True, tmp_path=tmp_path)
    expected = single_process(name)
    for rank, result in enumerate(ranks):
        for step in range(2):
            local = expected["outputs"][step][:, rank * N:(rank + 1) * N].flatten(0, 1)
            torch.testing.assert_close(result["outputs"][step], local, atol=1e-5, rtol=1e-5)
            grad = expected["grads"][step][:, rank * N:(rank + 1) * N].flatten(0, 1)
            torch.testing.assert_close(result["grads"][step], grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result["running_mean"], expected["running_mean"])
        torch.testing.assert_close(result["running_var"], expected["running_var"])
        torch.testing.assert_close(result["weight_grad"], expected["weight_grad"], atol=1e-4,
                                   rtol=1e-5)


def test_without_sync_each_process_has_its_own_statistics(tmp_path):
    ranks = spawn("tssigma2d", sync=False, tmp_path=tmp_path)
    expected = single_process("tssigma2d")
    assert not torch.allclose(ranks[0]["running_var"], expected["running_var"])
    assert not torch.allclose(ranks[0]["running_mean"], ranks[1]["running_mean"])


LOW_PRECISION = (torch.float16, torch.bfloat16)
LOW_PRECISION_LAYERS = ("tssigma2d", "sigma2d")


def low_precision_batch(name: str, dtype: torch.dtype) -> torch.Tensor:
    """One global batch whose per-channel sums (72 values near 1000) overflow float16."""
    torch.manual_seed(1)
    tasks = 1 if name == "sigma2d" else len(TASKS)
    return (torch.randn(tasks, WORLD * N, 5, 3, 3) * 30 + 1000).to(dtype)


def low_precision_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        results = {}
        for name in LOW_PRECISION_LAYERS:
            for dtype in LOW_PRECISION:
                layer = set_sync_stats(make_layer(name))
                y = run_step(layer, local_rows(low_precision_batch(name, dtype), rank))
                results[name, str(dtype)] = (y.detach(), layer.running_mean, layer.running_var)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_low_precision_statistics_are_reduced_in_float32(tmp_path):
    mp.spawn(low_precision_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name in LOW_PRECISION_LAYERS:
        for dtype in LOW_PRECISION:
            batch = low_precision_batch(name, dtype)
            reference = make_layer(name).double()  # one process, float64, same input values
            expected = run_step(reference, batch.double().flatten(0, 1)).view(batch.shape)
            eps = torch.finfo(dtype).eps
            for rank, result in enumerate(ranks):
                output, running_mean, running_var = result[name, str(dtype)]
                assert output.dtype == dtype
                torch.testing.assert_close(output.double(), local_rows(expected, rank).detach(),
                                           rtol=2 * eps, atol=2 * eps)
                torch.testing.assert_close(running_mean, reference.running_mean.float())
                torch.testing.assert_close(running_var, reference.running_var.float())
