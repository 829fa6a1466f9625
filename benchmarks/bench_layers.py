"""Speed of task-specific normalization (TSσBN) in a torchvision ResNet.

What is measured, for each model, batch size N (images per task) and number of tasks T:

* **Training step** (train mode; ``zero_grad(set_to_none=True)``, forward, loss, backward; no
  optimizer step), three ways of computing the same T per-task outputs:

  - ``T × shared``: T times one step of the plain model (shared ``BatchNorm2d``) on N images,
    the least compute any multi-task step with task-specific norms needs, since the backbone
    runs once per task. This is the reference of both ratios.
  - ``batched``: the model converted to TSσBN (``convert(model, tasks, kind="task_sigma")``),
    one step on the N·T images of ``stack_tasks(x, T, layout)`` under
    ``use_all_tasks(layout)``, once per batch layout. Stacking the input is part of the step.
  - ``loop``: the same converted model, T forwards under ``use_task(t)``, one backward of the
    summed loss.

  The model's 1000 logits stand in for a task head's output; each task's loss is their mean
  square, so every parameter gets a gradient. Target: batched ≤ 1.05 × (T × shared).
* **Parameters added per task**: TSσBN replaces BatchNorm's γ and β (2 per channel) by one gate
  per channel and task (no shift), so each extra task adds one parameter per BatchNorm channel.
* **Extracted model speed**: eval-mode forward (``torch.inference_mode``) of
  ``extract_task(model, task)`` against the original plain model, on N images. Target ≤ 1.02×.

Timings are medians over ``--repeats`` after ``--warmup`` runs; the variants are timed
round-robin (A B C A B C ...) so that drift of a shared machine affects all of them alike. On
CUDA the script synchronises around each timed call and reports peak memory
(``torch.cuda.max_memory_allocated``, which includes the weights of both models held in memory);
on CPU peak memory is null.

Example (about 1 minute on 2 CPU threads)::

    python benchmarks/bench_layers.py --models resnet18 --batch-sizes 2 --tasks 2 \\
        --image-size 32 --repeats 1 --warmup 0 --markdown --output /tmp/bench.json

Results and their discussion: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

import tasknorm
from tasknorm.io import write_json
from tasknorm.nn import (
    LAYOUTS,
    convert,
    extract_task,
    stack_tasks,
    unstack_tasks,
    use_all_tasks,
    use_task,
)
from tasknorm.nn.routing import Layout

Step = Callable[[], object]
Row = dict[str, Any]

EXTRACT_NUM_TASKS = 3  # tasks of the converted model that extract_task takes one task from
MIN_BATCH = 2  # train-mode BatchNorm needs 2 values per channel (ResNet ends at 1×1 on 32²)
MIN_IMAGE_SIZE = 32


# ---------------------------------------------------------------------------------------------
# timing


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def interleaved_medians(steps: dict[str, Step], device: torch.device, warmup: int,
                        repeats: int) -> dict[str, float]:
    """Median seconds per call of each step, calling the steps round-robin."""
    sync = synchronizer(device)
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def peak_bytes(step: Step, models: Sequence[nn.Module], device: torch.device) -> int | None:
    """Peak CUDA memory allocated while ``step`` runs, gradients of ``models`` freed before;
    ``None`` on CPU."""
    if device.type != "cuda":
        return None
    for model in models:
        model.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


# ---------------------------------------------------------------------------------------------
# models and training steps


def task_names(num_tasks: int) -> tuple[str, ...]:
    return tuple(f"task{t}" for t in range(num_tasks))


def plain_model(name: str, device: torch.device) -> nn.Module:
    """A randomly initialised torchvision model, in train mode."""
    return torchvision.models.get_model(name, weights=None).to(device).train()


def converted_model(plain: nn.Module, num_tasks: int) -> nn.Module:
    """A TSσBN copy of ``plain`` for ``num_tasks`` tasks (``plain`` is left unchanged)."""
    return convert(copy.deepcopy(plain), task_names(num_tasks), kind="task_sigma")


def task_loss(output: Tensor) -> Tensor:
    """Stand-in for one task's loss on its head output: the mean square of the logits."""
    return output.square().mean()


def shared_step(model: nn.Module, x: Tensor) -> Step:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        task_loss(model(x)).backward()

    return step


def batched_step(model: nn.Module, x: Tensor, num_tasks: int, layout: Layout) -> Step:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        with use_all_tasks(layout):
            output = model(stack_tasks(x, num_tasks, layout))
        per_task = unstack_tasks(output, num_tasks, layout)
        torch.stack([task_loss(y) for y in per_task]).sum().backward()

    return step


def loop_step(model: nn.Module, x: Tensor, tasks: Sequence[str]) -> Step:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        losses = []
        for task in tasks:
            with use_task(task):
                losses.append(task_loss(model(x)))
        torch.stack(losses).sum().backward()

    return step


def random_images(batch: int, image_size: int, device: torch.device) -> Tensor:
    return torch.randn(batch, 3, image_size, image_size, device=device)


# ---------------------------------------------------------------------------------------------
# the three measurements


def bench_training(name: str, batch: int, num_tasks: int, args: argparse.Namespace,
                   device: torch.device) -> list[Row]:
    """One row per layout: T × shared, batched and loop step times and their ratios."""
    torch.manual_seed(0)
    plain = plain_model(name, device)
    model = converted_model(plain, num_tasks)
    x = random_images(batch, args.image_size, device)
    steps = {"shared": shared_step(plain, x), "loop": loop_step(model, x, task_names(num_tasks))}
    for layout in args.layouts:
        steps[layout] = batched_step(model, x, num_tasks, layout)
    seconds = interleaved_medians(steps, device, args.warmup, args.repeats)
    peaks = {variant: peak_bytes(step, (plain, model), device) for variant, step in steps.items()}
    t_shared = num_tasks * seconds["shared"]
    return [{"model": name, "batch": batch, "tasks": num_tasks, "layout": layout,
             "shared_ms": 1000 * seconds["shared"], "t_shared_ms": 1000 * t_shared,
             "batched_ms": 1000 * seconds[layout], "loop_ms": 1000 * seconds["loop"],
             "batched_ratio": seconds[layout] / t_shared,
             "loop_ratio": seconds["loop"] / t_shared,
             "shared_peak_bytes": peaks["shared"], "batched_peak_bytes": peaks[layout],
             "loop_peak_bytes": peaks["loop"]}
            for layout in args.layouts]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_report(name: str, task_counts: Sequence[int]) -> Row:
    """Parameters of the plain model and of its TSσBN conversion for each task count."""
    plain = plain_model(name, torch.device("cpu"))
    base = count_parameters(plain)
    channels = sum(m.num_features for m in plain.modules() if isinstance(m, nn.BatchNorm2d))
    counts = sorted({1, 2, *task_counts})
    params = {t: count_parameters(converted_model(plain, t)) for t in counts}
    per_task = params[2] - params[1]
    return {"model": name, "bn_channels": channels, "plain_params": base,
            "params_per_extra_task": per_task, "relative_per_extra_task": per_task / base,
            "by_tasks": [{"tasks": t, "params": params[t], "added_vs_plain": params[t] - base,
                          "relative": params[t] / base} for t in sorted(set(task_counts))]}


def train_once(model: nn.Module, num_tasks: int, image_size: int, device: torch.device) -> None:
    """One SGD step on different images per task, so that tasks' gates and statistics differ."""
    images = random_images(MIN_BATCH * num_tasks, image_size, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    with use_all_tasks():
        output = model(images)
    torch.stack([task_loss(y) for y in unstack_tasks(output, num_tasks)]).sum().backward()
    optimizer.step()
    model.zero_grad(set_to_none=True)


def bench_extracted(name: str, batch: int, args: argparse.Namespace,
                    device: torch.device) -> Row:
    """Eval-mode forward time of a single-task model extracted from TSσBN vs the original."""
    torch.manual_seed(0)
    plain = plain_model(name, device)
    model = converted_model(plain, EXTRACT_NUM_TASKS)
    train_once(model, EXTRACT_NUM_TASKS, args.image_size, device)
    task = task_names(EXTRACT_NUM_TASKS)[0]
    single = extract_task(model.eval(), task)
    plain.eval()
    x = random_images(batch, args.image_size, device)
    with torch.inference_mode():
        with use_task(task):
            expected = model(x)
        max_abs_diff = (single(x) - expected).abs().max().item()
        seconds = interleaved_medians({"original": lambda: plain(x), "extracted": lambda: single(x)},
                                      device, args.warmup, args.repeats)
    return {"model": name, "batch": batch, "original_ms": 1000 * seconds["original"],
            "extracted_ms": 1000 * seconds["extracted"],
            "ratio": seconds["extracted"] / seconds["original"],
            "max_abs_diff_vs_converted": max_abs_diff}


# ---------------------------------------------------------------------------------------------
# environment, output


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(args: argparse.Namespace, device: torch.device) -> Row:
    return {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "image_size": args.image_size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "tasknorm": tasknorm.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "python": platform.python_version(),
    }


def mib(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**20:.0f}"


def training_table(rows: Sequence[Row]) -> list[str]:
    memory = any(r["batched_peak_bytes"] is not None for r in rows)
    header = ("| model | N | T | layout | T×shared ms | batched ms | loop ms "
              "| batched/(T×shared) | loop/(T×shared) |")
    lines = [header + (" shared MiB | batched MiB | loop MiB |" if memory else ""),
             "|---" * (9 + 3 * memory) + "|"]
    for r in rows:
        line = (f"| {r['model']} | {r['batch']} | {r['tasks']} | {r['layout']} | "
                f"{r['t_shared_ms']:.1f} | {r['batched_ms']:.1f} | {r['loop_ms']:.1f} | "
                f"{r['batched_ratio']:.3f} | {r['loop_ratio']:.3f} |")
        if memory:
            line += (f" {mib(r['shared_peak_bytes'])} | {mib(r['batched_peak_bytes'])} | "
                     f"{mib(r['loop_peak_bytes'])} |")
        lines.append(line)
    return lines


def parameter_table(reports: Sequence[Row]) -> list[str]:
    counts = sorted({b["tasks"] for r in reports for b in r["by_tasks"]})
    lines = ["| model | BN channels (gates per task) | plain params | per extra task | "
             + " | ".join(f"TSσBN, T = {t}" for t in counts) + " |",
             "|---" * (4 + len(counts)) + "|"]
    for r in reports:
        by_tasks = {b["tasks"]: b for b in r["by_tasks"]}
        cells = [f"{by_tasks[t]['params']:,} ({by_tasks[t]['relative']:.4f}×)"
                 if t in by_tasks else "—" for t in counts]
        lines.append(f"| {r['model']} | {r['bn_channels']:,} | {r['plain_params']:,} | "
                     f"+{r['params_per_extra_task']:,} (+{100 * r['relative_per_extra_task']:.3f} %)"
                     f" | " + " | ".join(cells) + " |")
    return lines


def extracted_table(rows: Sequence[Row]) -> list[str]:
    lines = ["| model | N | original ms | extracted ms | extracted/original |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['original_ms']:.2f} | "
              f"{r['extracted_ms']:.2f} | {r['ratio']:.3f} |" for r in rows]
    return lines


def markdown(results: Row) -> str:
    env = results["environment"]
    lines = [f"`{env['command']}`", "",
             f"{env['device']}, {env['threads']} threads, torch {env['torch']}, "
             f"{env['image_size']}×{env['image_size']} images, median of {env['repeats']} after "
             f"{env['warmup']} warm-up, {env['date']}", "",
             "Training step (forward + backward), target batched/(T×shared) ≤ 1.05:", "",
             *training_table(results["training"]), "",
             "Parameters (TSσBN: one gate per BN channel and task, no shift; BN: γ and β):", "",
             *parameter_table(results["parameters"]), "",
             f"Eval-mode forward of a task extracted from a {EXTRACT_NUM_TASKS}-task TSσBN "
             "model, target extracted/original ≤ 1.02:", "",
             *extracted_table(results["extracted"])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# command line


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"],
                        help="torchvision model names (default: %(default)s)")
    parser.add_argument("--batch-sizes", nargs="+", type=positive_int, default=[8, 16],
                        help="images per task N (default: %(default)s)")
    parser.add_argument("--tasks", nargs="+", type=positive_int, default=[2, 3, 5],
                        help="numbers of tasks T (default: %(default)s)")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS),
                        help="all-tasks batch layouts (default: %(default)s)")
    parser.add_argument("--image-size", type=positive_int, default=128,
                        help="image height and width (default: %(default)s; 224 is about 3× "
                             "slower and too slow for 2 CPU threads)")
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="torch.set_num_threads (default: %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed runs per variant (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed runs per variant first (default: %(default)s)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--output", type=Path,
                        help="JSON results, rewritten atomically after every measurement")
    parser.add_argument("--markdown", action="store_true",
                        help="print Markdown tables to stdout at the end")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(torchvision.models.list_models(torchvision.models)))
    if unknown:
        parser.error(f"unknown torchvision models {unknown}")
    if min(args.batch_sizes) < MIN_BATCH:
        parser.error(f"--batch-sizes must be at least {MIN_BATCH} (train-mode BatchNorm)")
    if args.image_size < MIN_IMAGE_SIZE:
        parser.error(f"--image-size must be at least {MIN_IMAGE_SIZE}")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.output is None and not args.markdown:
        parser.error("nothing would be reported: pass --output PATH and/or --markdown")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results: Row = {"environment": environment(args, device), "complete": False,
                    "training": [], "parameters": [], "extracted": []}

    def record(section: str, item: Row | list[Row], label: str) -> None:
        results[section] += item if isinstance(item, list) else [item]
        if args.output is not None:
            write_json(args.output, results)
        print(f"done: {section} {label}", file=sys.stderr, flush=True)

    for name in args.models:
        for batch in args.batch_sizes:
            for num_tasks in args.tasks:
                record("training", bench_training(name, batch, num_tasks, args, device),
                       f"{name} N={batch} T={num_tasks}")
        record("parameters", parameter_report(name, args.tasks), name)
        for batch in args.batch_sizes:
            record("extracted", bench_extracted(name, batch, args, device), f"{name} N={batch}")
    results["complete"] = True
    if args.output is not None:
        write_json(args.output, results)
    if args.markdown:
        print(markdown(results))


if __name__ == "__main__":
    main()
