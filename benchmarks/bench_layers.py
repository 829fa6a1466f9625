"""Speed of task-specific normalization: one training step of a TSσBN ResNet.

For each model, batch size N and number of tasks T this times one training step (zero_grad,
forward, loss, backward; no optimizer step) of

* ``T × shared``: T steps of the plain torchvision model (shared BatchNorm) on N images, the
  compute a multi-task step needs at least (the backbone runs once per task);
* ``shared on T·N``: one step of the plain model on the T·N stacked images, the same work as
  the batched step in one call, which separates the cost of our layers from how the hardware
  scales with batch size;
* ``batched``: the TSσBN model on all T tasks in one call (N·T images), per batch layout;
* ``loop``: the TSσBN model, one forward per task (``use_task``), one backward.

It also reports parameters added per task and the eval speed of a single-task model extracted
with ``extract_task`` against the original model. Medians over ``--repeats`` after ``--warmup``.
Results: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from tasknorm.io import write_json
from tasknorm.nn import convert, extract_task, stack_tasks, use_all_tasks, use_task

TASK_NAMES = ("t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(step: Callable[[], None], device: torch.device, warmup: int,
                   repeats: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory(step: Callable[[], None], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def training_steps(model: nn.Module, tasks: tuple[str, ...], x: torch.Tensor
                   ) -> dict[str, Callable[[], None]]:
    """The step functions of the converted model: batched (per layout) and per-task loop."""

    def batched(layout: str) -> Callable[[], None]:
        stacked = stack_tasks(x, len(tasks), layout)

        def step() -> None:
            model.zero_grad(set_to_none=True)
            with use_all_tasks(layout):
                model(stacked).square().mean().backward()
        return step

    def loop() -> None:
        model.zero_grad(set_to_none=True)
        loss = 0.0
        for task in tasks:
            with use_task(task):
                loss = loss + model(x).square().mean()
        loss.backward()

    return {"task_major": batched("task_major"), "sample_major": batched("sample_major"),
            "loop": loop}


def bench_training(name: str, batch: int, num_tasks: int, args: argparse.Namespace,
                   device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    plain = getattr(torchvision.models, name)().to(device).train()
    tasks = TASK_NAMES[:num_tasks]
    converted = convert(copy.deepcopy(plain), tasks).train()
    x = torch.randn(batch, 3, args.image_size, args.image_size, device=device)

    def shared_step() -> None:
        plain.zero_grad(set_to_none=True)
        plain(x).square().mean().backward()

    stacked_x = stack_tasks(x, num_tasks)

    def shared_stacked_step() -> None:
        plain.zero_grad(set_to_none=True)
        plain(stacked_x).square().mean().backward()

    shared = median_seconds(shared_step, device, args.warmup, args.repeats)
    shared_memory = peak_memory(shared_step, device)
    stacked = median_seconds(shared_stacked_step, device, args.warmup, args.repeats)
    rows = []
    for variant, step in training_steps(converted, tasks, x).items():
        if variant != "loop" and variant not in args.layouts:
            continue
        seconds = median_seconds(step, device, args.warmup, args.repeats)
        rows.append({"model": name, "batch": batch, "tasks": num_tasks, "variant": variant,
                     "shared_ms": 1000 * shared, "t_shared_ms": 1000 * shared * num_tasks,
                     "shared_stacked_ms": 1000 * stacked, "ms": 1000 * seconds,
                     "ratio": seconds / (shared * num_tasks), "stacked_ratio": seconds / stacked,
                     "peak_bytes": peak_memory(step, device),
                     "shared_peak_bytes": shared_memory})
    return rows


def parameter_rows(name: str, task_counts: list[int]) -> list[dict]:
    plain = getattr(torchvision.models, name)()
    base = sum(p.numel() for p in plain.parameters())
    channels = sum(m.num_features for m in plain.modules() if isinstance(m, nn.BatchNorm2d))
    rows = []
    for t in task_counts:
        converted = convert(copy.deepcopy(plain), TASK_NAMES[:t])
        params = sum(p.numel() for p in converted.parameters())
        rows.append({"model": name, "tasks": t, "bn_channels": channels, "plain_params": base,
                     "params": params, "relative": params / base})
    return rows


def bench_extracted(name: str, batch: int, args: argparse.Namespace, device: torch.device
                    ) -> dict:
    """Eval-mode forward time of an extracted single-task model vs the original model."""
    torch.manual_seed(0)
    plain = getattr(torchvision.models, name)().to(device)
    converted = convert(copy.deepcopy(plain), TASK_NAMES[:3]).to(device)
    steps = training_steps(converted, TASK_NAMES[:3],
                           torch.randn(2, 3, args.image_size, args.image_size, device=device))
    steps["sample_major"]()  # one training forward: every task gets its own running statistics
    extracted = extract_task(converted.eval(), TASK_NAMES[0])
    plain.eval()
    x = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
    times: dict[str, list[float]] = {"original": [], "extracted": []}
    with torch.inference_mode():
        for _ in range(args.warmup):
            plain(x)
            extracted(x)
        for _ in range(args.repeats):  # interleaved, so drift affects both alike
            for label, model in (("original", plain), ("extracted", extracted)):
                sync(device)
                start = time.perf_counter()
                model(x)
                sync(device)
                times[label].append(time.perf_counter() - start)
    original, ours = (statistics.median(times[k]) for k in ("original", "extracted"))
    return {"model": name, "batch": batch, "original_ms": 1000 * original,
            "extracted_ms": 1000 * ours, "ratio": ours / original}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def markdown(result: dict) -> str:
    lines = [f"`{result['environment']['command']}`", "",
             f"{result['environment']['device']}, {result['environment']['threads']} threads, "
             f"torch {result['environment']['torch']}, images "
             f"{result['environment']['image_size']}², median of "
             f"{result['environment']['repeats']}", "",
             "| model | N | T | variant | T × shared ms | shared on T·N ms | ms "
             "| ÷ (T × shared) | ÷ (shared on T·N) | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["training"]:
        memory = "—" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f}"
        lines.append(f"| {r['model']} | {r['batch']} | {r['tasks']} | {r['variant']} | "
                     f"{r['t_shared_ms']:.1f} | {r['shared_stacked_ms']:.1f} | {r['ms']:.1f} | "
                     f"{r['ratio']:.3f} | {r['stacked_ratio']:.3f} | {memory} |")
    lines += ["", "| model | T | BN channels | plain params | TSσBN params | ratio |",
              "|---|---|---|---|---|---|"]
    for r in result["parameters"]:
        lines.append(f"| {r['model']} | {r['tasks']} | {r['bn_channels']:,} | "
                     f"{r['plain_params']:,} | {r['params']:,} | {r['relative']:.4f} |")
    lines += ["", "| model | N | original ms | extracted ms | ratio |", "|---|---|---|---|---|"]
    for r in result["extracted"]:
        lines.append(f"| {r['model']} | {r['batch']} | {r['original_ms']:.1f} | "
                     f"{r['extracted_ms']:.1f} | {r['ratio']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--tasks", nargs="+", type=int, default=[2, 3, 5])
    parser.add_argument("--layouts", nargs="+", default=["task_major", "sample_major"])
    parser.add_argument("--image-size", type=int, default=128,
                        help="224 takes too long on 2 CPU threads")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, help="JSON file for the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else cpu_name())
    result = {
        "environment": {"command": "python " + " ".join(sys.argv), "torch": torch.__version__,
                        "device": device_name, "threads": args.threads,
                        "image_size": args.image_size, "repeats": args.repeats,
                        "date": datetime.date.today().isoformat()},
        "training": [row for name in args.models for n in args.batch_sizes for t in args.tasks
                     for row in bench_training(name, n, t, args, device)],
        "parameters": [row for name in args.models for row in parameter_rows(name, args.tasks)],
        "extracted": [bench_extracted(name, n, args, device)
                      for name in args.models for n in args.batch_sizes],
    }
    if args.output:
        write_json(args.output, result)
    print(markdown(result))


if __name__ == "__main__":
    main()
