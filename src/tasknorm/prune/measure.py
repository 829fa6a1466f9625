"""Size, compute and measured latency of a model (reported separately, never mixed up: a MAC
ratio is not a speed-up)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from tasknorm.models.backbones import count_flops, count_parameters


def count_macs(model: nn.Module, example: Tensor) -> int:
    """Multiply-accumulates of one forward pass (``torch.utils.flop_counter`` FLOPs / 2)."""
    training = model.training
    model.eval()
    try:
        return count_flops(model, example) // 2
    finally:
        model.train(training)


@torch.inference_mode()
def measure_latency(model: nn.Module, example: Tensor, *, threads: int | None = 2,
                    repeats: int = 20, warmup: int = 3, statistic: str = "median") -> float:
    """Median wall-clock seconds of ``model(example)`` in eval/inference mode on CPU with
    ``threads`` intra-op threads (restored afterwards); ``statistic="min"`` gives the fastest
    run instead (less sensitive to other processes on a shared machine). Denormals are flushed
    to zero (tiny σBN gates otherwise make arithmetic on denormal numbers dominate the timing)."""
    previous = torch.get_num_threads()
    flushed = torch.set_flush_denormal(True)
    training = model.training
    model.eval()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            model(example)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(example)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
        model.train(training)
        if flushed:
            torch.set_flush_denormal(False)
    if statistic == "min":
        return min(times)
    if statistic != "median":
        raise ValueError(f"statistic must be 'median' or 'min', got {statistic!r}")
    return statistics.median(times)


@torch.inference_mode()
def accuracy(model: nn.Module, batches: Iterable[Any]) -> float:
    """Top-1 accuracy of ``model`` (eval mode) over ``{"image", "label"}`` or ``(x, y)``
    batches."""
    training = model.training
    model.eval()
    correct = total = 0
    for batch in batches:
        x, y = (batch["image"], batch["label"]) if isinstance(batch, dict) else batch[:2]
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train(training)
    return correct / max(total, 1)


def model_stats(model: nn.Module, example: Tensor) -> dict[str, int]:
    """``{"params": trainable parameters, "macs": MACs on example}``."""
    return {"params": count_parameters(model), "macs": count_macs(model, example)}
