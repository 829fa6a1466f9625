"""Tensor operations behind the task-specific layers: folding tasks into channels, a batch
norm whose statistics are reduced across processes, float32 statistics for low-precision inputs
and copying a task's affine values into an ordinary norm layer.

Folding: an all-tasks batch of ``T`` task copies, shape ``(T*N, C, *S)``, becomes ``(N, T*C, *S)``
with channel ``t*C + c`` holding task ``t``'s channel ``c``. One ordinary ``batch_norm`` call on
the folded tensor then normalises every task with its own statistics.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor, nn

from tasknorm.nn.routing import Layout


def fold_tasks(x: Tensor, num_tasks: int, layout: Layout) -> Tensor:
    """``(T*N, C, *S)`` → ``(N, T*C, *S)``: a view for ``sample_major`` (when ``x`` is
    contiguous), a copy for ``task_major``."""
    if layout == "sample_major":
        return x.reshape(-1, num_tasks * x.size(1), *x.shape[2:])
    per_task = x.unflatten(0, (num_tasks, -1))
    return per_task.transpose(0, 1).flatten(1, 2)


def unfold_tasks(y: Tensor, num_tasks: int, layout: Layout) -> Tensor:
    """Inverse of :func:`fold_tasks`: ``(N, T*C, *S)`` → ``(T*N, C, *S)`` in ``layout``."""
    per_task = y.unflatten(1, (num_tasks, -1))
    if layout == "sample_major":
        return per_task.flatten(0, 1)
    return per_task.transpose(0, 1).flatten(0, 1)


def sync_batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float,
    eps: float,
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    """Training-mode batch norm with statistics over the batches of every process in ``group``.

    Equal to ``F.batch_norm`` on the concatenation of all processes' batches, gradients included
    (the reductions are differentiable). ``torch.nn.SyncBatchNorm`` runs on GPUs only; this one
    runs on any backend (gloo on CPU, NCCL on CUDA). Running statistics are updated in place
    with the unbiased variance, as ``F.batch_norm`` does. Float16 / bfloat16 inputs are
    normalised in float32 (their sums would overflow or round away) and the output is cast back
    to the input's dtype.
    """
    dtype = x.dtype
    x = float32_at_least(x)
    channels = x.size(1)
    dims = [0, *range(2, x.dim())]
    shape = (1, channels) + (1,) * (x.dim() - 2)
    local_count = x.new_full((1,), x.numel() // channels)
    totals = dist_nn.all_reduce(torch.cat([x.sum(dims), local_count]), group=group)
    count = totals[-1]
    mean = totals[:channels] / count
    centered = x - mean.view(shape)
    var = dist_nn.all_reduce(centered.square().sum(dims), group=group) / count
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            unbiased = var * count / (count - 1).clamp(min=1)
            running_var.lerp_(unbiased.to(running_var.dtype), momentum)
    out = centered * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out.to(dtype)


def float32_at_least(x: Tensor) -> Tensor:
    """``x`` in float32 if it is float16 / bfloat16, else unchanged (no copy): normalization
    statistics of low-precision activations are computed in float32, as in
    ``torch.nn.SyncBatchNorm`` and timm's ``LayerNormFp32``."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def copy_affine_to_plain(plain: nn.Module, scale: Tensor | None, shift: Tensor | None,
                sources: tuple[Tensor | None, Tensor | None]) -> None:
    """Copy a task's ``scale`` and ``shift`` (zero where ``None``) into the weight and bias of
    ``plain``, an ordinary norm layer (nothing to copy if it has no weight).

    ``sources`` are the parameters ``scale`` and ``shift`` come from (for a σ layer, the gate
    logits rather than the gate): the weight and bias take their ``requires_grad``, so frozen
    parameters stay frozen; a bias without a source shift follows the scale.
    """
    if plain.weight is None or scale is None:
        return
    scale_source, shift_source = sources
    with torch.no_grad():
        plain.weight.copy_(scale)
        if plain.bias is not None:
            plain.bias.copy_(shift if shift is not None else torch.zeros_like(scale))
    plain.weight.requires_grad_(scale_source.requires_grad)
    if plain.bias is not None:
        plain.bias.requires_grad_((shift_source if shift_source is not None
                                   else scale_source).requires_grad)


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """Number of processes in ``group`` (1 when ``torch.distributed`` is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)
