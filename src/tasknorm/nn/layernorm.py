"""Task-specific LayerNorm for Transformers and ConvNeXt-style networks.

LayerNorm statistics are per token (or per pixel), so they need no per-task copies: only the
affine part is per task. :class:`TaskLayerNorm` keeps a weight and bias per task (the TSBN
analogue); :class:`TaskSigmaLayerNorm` replaces the weight by a per-task sigmoid gate and has no
bias unless asked (the TSσBN analogue). The ``2d`` variants normalise over the channels of
``(N, C, H, W)`` inputs like timm's ``LayerNorm2d``. Float16 / bfloat16 inputs are normalised in
float32 and cast back, as timm's ``LayerNormFp32`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasknorm.nn.functional import copy_affine_to_plain, float32_at_least
from tasknorm.nn.gates import SigmoidGated
from tasknorm.nn.routing import Layout, Route, TaskRouted


class _TaskLayerNormBase(TaskRouted):
    """Parameter-free layer norm followed by a per-task affine given by :meth:`task_affine`.

    Subclasses register their per-task scale parameter (:meth:`_per_task_parameter`); the base
    registers the optional per-task ``bias``.
    """

    channels_first = False

    def __init__(self, normalized_shape: int | Sequence[int], tasks: Sequence[str], eps: float,
                 bias: bool, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        super().__init__()
        self._init_routing(tasks)
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        self.normalized_shape: tuple[int, ...] = tuple(shape)
        if self.channels_first and len(self.normalized_shape) != 1:
            raise ValueError(f"{type(self).__name__} normalises one channel dimension, got "
                             f"normalized_shape={self.normalized_shape}")
        self.eps = eps
        self.bias = self._per_task_parameter(device, dtype) if bias else None

    def _per_task_parameter(self, device: torch.device | str | None,
                            dtype: torch.dtype | None) -> nn.Parameter:
        """An uninitialised ``(T, *normalized_shape)`` parameter."""
        shape = (self.num_tasks, *self.normalized_shape)
        return nn.Parameter(torch.empty(shape, device=device, dtype=dtype))

    def single_task_module(self, task: str) -> nn.Module:
        """``nn.LayerNorm`` (timm's ``LayerNorm2d`` if channels-first) with ``task``'s scale and
        shift."""
        index = self.task_index(Route(task))
        scale, shift = (None if t is None else t[index] for t in self.task_affine())
        affine = scale is not None
        kwargs = {"eps": self.eps, "bias": shift is not None}
        if affine:
            kwargs |= {"device": scale.device, "dtype": scale.dtype}
        if self.channels_first:
            try:
                from timm.layers import LayerNorm2d
            except ImportError as error:
                raise ImportError(f"extracting a task from {type(self).__name__} needs timm's "
                                  "LayerNorm2d: pip install timm") from error
            ln = LayerNorm2d(self.normalized_shape[0], affine=affine, **kwargs)
        else:
            ln = nn.LayerNorm(self.normalized_shape, elementwise_affine=affine, **kwargs)
        copy_affine_to_plain(ln, scale, shift, self.affine_parameters())
        return ln.train(self.training)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_first:
            if x.dim() != 4 or x.size(1) != self.normalized_shape[0]:
                raise ValueError(f"{type(self).__name__} expects (N, {self.normalized_shape[0]}, "
                                 f"H, W) inputs, got shape {tuple(x.shape)}")
            x = x.permute(0, 2, 3, 1)
        elif tuple(x.shape[-len(self.normalized_shape):]) != self.normalized_shape:
            raise ValueError(f"{type(self).__name__} expects inputs ending in "
                             f"{self.normalized_shape}, got shape {tuple(x.shape)}")
        route = self.active_route()
        task = self.task_index(route)
        scale, shift = (None if t is None else float32_at_least(t) for t in self.task_affine())
        dtype = x.dtype
        x = float32_at_least(x)
        if task is not None:
            y = F.layer_norm(x, self.normalized_shape, None if scale is None else scale[task],
                             None if shift is None else shift[task], self.eps)
        else:
            self.tasks_per_batch(x.size(0))
            y = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
            if scale is not None:
                y = _per_task_affine(y, scale, shift, self.num_tasks, route.layout)
        y = y.to(dtype)
        return y.permute(0, 3, 1, 2) if self.channels_first else y

    def extra_repr(self) -> str:
        affine = "" if self.affine_parameters()[0] is not None else ", elementwise_affine=False"
        bias = "" if self.bias is not None else ", bias=False"
        return f"{self.normalized_shape}, tasks={self.tasks}, eps={self.eps}{affine}{bias}"


def _per_task_affine(y: Tensor, scale: Tensor, shift: Tensor | None, num_tasks: int,
                     layout: Layout) -> Tensor:
    """``scale[t] * y_t + shift[t]`` for every task ``t`` of the all-tasks batch ``y``."""
    split = (num_tasks, -1) if layout == "task_major" else (-1, num_tasks)
    y = y.unflatten(0, split)
    scale = _per_task(scale, y, layout)
    y = y * scale if shift is None else torch.addcmul(_per_task(shift, y, layout), y, scale)
    return y.flatten(0, 1)


def _per_task(param: Tensor, y: Tensor, layout: Layout) -> Tensor:
    """View ``param`` ``(T, *shape)`` so it broadcasts over ``y``, an all-tasks batch split into
    ``(T, N, ...)`` (task-major) or ``(N, T, ...)`` (sample-major)."""
    middle = (1,) * (y.dim() - param.dim() - 1)
    lead = (param.size(0), 1) if layout == "task_major" else (1, param.size(0))
    return param.view(*lead, *middle, *param.shape[1:])


class TaskLayerNorm(_TaskLayerNormBase):
    """LayerNorm with a weight and (optional) bias per task, over the last dimensions;
    ``elementwise_affine=False`` has neither, as ``nn.LayerNorm``.

    Example:
        >>> import torch
        >>> from tasknorm.nn import TaskLayerNorm, use_task
        >>> ln = TaskLayerNorm(384, tasks=["seg", "depth"])
        >>> with use_task("seg"):
        ...     ln(torch.randn(2, 197, 384)).shape
        torch.Size([2, 197, 384])
    """

    def __init__(self, normalized_shape: int | Sequence[int], tasks: Sequence[str],
                 eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(normalized_shape, tasks, eps, bias and elementwise_affine, device,
                         dtype)
        self.weight = self._per_task_parameter(device, dtype) if elementwise_affine else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every task's weight to 1 and bias to 0."""
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def task_affine(self) -> tuple[Tensor | None, Tensor | None]:
        return self.weight, self.bias

    def affine_parameters(self) -> tuple[Tensor | None, Tensor | None]:
        """The parameters behind :meth:`task_affine` (the same tensors)."""
        return self.weight, self.bias


class TaskSigmaLayerNorm(SigmoidGated, _TaskLayerNormBase):
    """LayerNorm scaled by a per-task sigmoid gate ``sigmoid(gate_logit[t])``; no bias by
    default.

    Example:
        >>> import torch
        >>> from tasknorm.nn import TaskSigmaLayerNorm
        >>> ln = TaskSigmaLayerNorm(384, tasks=["seg", "depth"])
        >>> ln.gate.shape
        torch.Size([2, 384])
    """

    def __init__(self, normalized_shape: int | Sequence[int], tasks: Sequence[str],
                 eps: float = 1e-5, bias: bool = False, init_mean: float = 0.0,
                 init_std: float = 1.0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(normalized_shape, tasks, eps, bias, device, dtype)
        self.init_mean = init_mean
        self.init_std = init_std
        self.gate_logit = self._per_task_parameter(device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gate logits to N(init_mean, init_std²); bias to 0."""
        self.reset_gates()


class TaskLayerNorm2d(TaskLayerNorm):
    """:class:`TaskLayerNorm` over the channels of ``(N, C, H, W)`` inputs (timm ``LayerNorm2d``).

    Example:
        >>> import torch
        >>> from tasknorm.nn import TaskLayerNorm2d, use_task
        >>> ln = TaskLayerNorm2d(96, tasks=["seg", "depth"])
        >>> with use_task("depth"):
        ...     ln(torch.randn(2, 96, 7, 7)).shape
        torch.Size([2, 96, 7, 7])
    """

    channels_first = True

    def __init__(self, num_channels: int, tasks: Sequence[str], eps: float = 1e-6,
                 elementwise_affine: bool = True, bias: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_channels, tasks, eps, elementwise_affine, bias, device, dtype)


class TaskSigmaLayerNorm2d(TaskSigmaLayerNorm):
    """:class:`TaskSigmaLayerNorm` over the channels of ``(N, C, H, W)`` inputs."""

    channels_first = True

    def __init__(self, num_channels: int, tasks: Sequence[str], eps: float = 1e-6,
                 bias: bool = False, init_mean: float = 0.0, init_std: float = 1.0,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(num_channels, tasks, eps, bias, init_mean, init_std, device, dtype)
