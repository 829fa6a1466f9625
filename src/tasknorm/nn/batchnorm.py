"""σBN, TSBN and TSσBN: batch normalization with a bounded scale and/or per-task parameters.

* :class:`SigmaBatchNorm2d` (σBN, arXiv:2204.06404): ``sigmoid(gate_logit) * x_hat``, no bias.
* :class:`TaskBatchNorm2d` (TSBN): per-task ``weight``, ``bias`` and running statistics.
* :class:`TaskSigmaBatchNorm2d` (TSσBN, arXiv:2512.20420): per-task sigmoid gates and running
  statistics, no bias unless ``bias=True``.

Per-task tensors have the task as their first dimension, e.g. ``weight`` is ``(T, C)`` and
``running_mean`` is ``(T, C)``. In all-tasks mode one ``batch_norm`` call normalises every task
(see :func:`tasknorm.nn.functional.fold_tasks`). Float16 / bfloat16 inputs are normalised with
float32 statistics (PyTorch's batch norm kernels accumulate in float32; the synchronised path
upcasts) and the output has the input's dtype. None of these classes derives from
``torch.nn.modules.batchnorm._BatchNorm``, so ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``
(and Lightning's ``sync_batchnorm=True``) cannot silently replace them with plain BatchNorm; use
:func:`tasknorm.nn.set_sync_stats` to synchronise statistics across processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import EllipsisType
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from tasknorm.nn.functional import (
    copy_affine_to_plain,
    fold_tasks,
    sync_batch_norm,
    unfold_tasks,
    world_size,
)
from tasknorm.nn.gates import SigmoidGated
from tasknorm.nn.routing import Route, TaskRouted, validate_tasks


class BatchNormStats(nn.Module):
    """Running statistics, momentum and the normalization call shared by all our BatchNorms
    (the base class to test for: every σBN, TSBN and TSσBN layer is one).

    ``stats_shape`` is ``(C,)`` for σBN and ``(T, C)`` for the task-specific layers.
    """

    expected_dims: tuple[int, ...] = (4,)
    plain_class: type[nn.modules.batchnorm._BatchNorm] = nn.BatchNorm2d

    def __init__(
        self,
        num_features: int,
        stats_shape: tuple[int, ...],
        eps: float,
        momentum: float | None,
        track_running_stats: bool,
        sync_stats: bool,
        factory_kwargs: dict[str, Any],
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.track_running_stats = track_running_stats
        self.sync_stats = sync_stats
        self.process_group: dist.ProcessGroup | None = None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(stats_shape, **factory_kwargs))
            self.register_buffer("running_var", torch.ones(stats_shape, **factory_kwargs))
            self.register_buffer("num_batches_tracked", torch.zeros(
                stats_shape[:-1], dtype=torch.long, device=factory_kwargs["device"]))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in self.expected_dims:
            raise ValueError(
                f"{type(self).__name__} expects a {' or '.join(map(str, self.expected_dims))}D "
                f"input, got shape {tuple(x.shape)}"
            )
        if x.size(1) != self.num_features:
            raise ValueError(
                f"{type(self).__name__} has {self.num_features} channels, got an input with "
                f"{x.size(1)} channels (shape {tuple(x.shape)})"
            )

    def _normalize(self, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                   index: int | EllipsisType) -> Tensor:
        """Batch-normalise channels of ``x`` with the statistics ``running_*[index]``.

        ``index`` is a task index, or ``...`` for all statistics (σBN, or the folded all-tasks
        tensor whose channels are the ``(T, C)`` statistics flattened).
        """
        running_mean = running_var = None
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            running_mean = self.running_mean[index].view(-1)
            running_var = self.running_var[index].view(-1)
            if self.training:
                counter = self.num_batches_tracked[index]
                if self.momentum is None:
                    factor = 1.0 / (_common_count(counter, self) + 1)
                counter.add_(1)
        use_batch_stats = self.training or not self.track_running_stats
        if not self.training and not self.track_running_stats:
            running_mean = running_var = None
        if use_batch_stats and self.sync_stats and world_size(self.process_group) > 1:
            return sync_batch_norm(x, running_mean, running_var, weight, bias, factor, self.eps,
                                   self.process_group)
        return F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, factor,
                            self.eps)

    def _plain_batch_norm(self, scale: Tensor | None, shift: Tensor | None,
                          index: int | EllipsisType,
                          sources: tuple[Tensor | None, Tensor | None]) -> nn.Module:
        """An ``nn.BatchNorm`` holding ``scale``, ``shift`` (zero if ``None``; no affine part if
        ``scale`` is ``None``) and the running statistics ``running_*[index]``; ``sources``: see
        :func:`~tasknorm.nn.functional.copy_affine_to_plain`."""
        like = scale if scale is not None else self.running_mean
        factory = {} if like is None else {"device": like.device, "dtype": like.dtype}
        bn = self.plain_class(self.num_features, self.eps, self.momentum,
                              affine=scale is not None,
                              track_running_stats=self.track_running_stats, **factory)
        copy_affine_to_plain(bn, scale, shift, sources)
        if self.track_running_stats:
            with torch.no_grad():
                bn.running_mean.copy_(self.running_mean[index])
                bn.running_var.copy_(self.running_var[index])
                bn.num_batches_tracked.copy_(self.num_batches_tracked[index])
        return bn.train(self.training)

    def _stats_repr(self) -> str:
        parts = [f"eps={self.eps}", f"momentum={self.momentum}"]
        if not self.track_running_stats:
            parts.append("track_running_stats=False")
        if self.sync_stats:
            parts.append("sync_stats=True")
        return ", ".join(parts)


def _common_count(counter: Tensor, layer: nn.Module) -> int:
    """The shared batch count of all tasks (cumulative averaging needs one factor for all)."""
    counts = counter.flatten().unique()
    if counts.numel() != 1:
        raise RuntimeError(
            f"{type(layer).__name__} with momentum=None saw different numbers of batches per task "
            f"({counter.tolist()}); an all-tasks pass needs equal counts, use a float momentum"
        )
    return int(counts)


class SigmaBatchNorm(SigmoidGated, BatchNormStats):
    """σBN, the base of :class:`SigmaBatchNorm1d` / ``2d``:
    ``sigmoid(gate_logit) * (x - mean) / sqrt(var + eps)``; no bias, scale in (0, 1)."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
        init_mean: float = 0.0,
        init_std: float = 1.0,
        sync_stats: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__(num_features, (num_features,), eps, momentum, track_running_stats,
                         sync_stats, factory_kwargs)
        self.init_mean = init_mean
        self.init_std = init_std
        self.gate_logit = nn.Parameter(torch.empty(num_features, **factory_kwargs))
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Running statistics to (0, 1); gate logits to N(init_mean, init_std²)."""
        self.reset_running_stats()
        self.reset_gates()

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self._normalize(x, self.gate, None, ...)

    def to_batch_norm(self) -> nn.Module:
        """An ``nn.BatchNorm`` with weight ``sigmoid(gate_logit)``, zero bias and these running
        statistics: the same function, for deployment or plain fine-tuning."""
        return self._plain_batch_norm(self.gate, None, ..., self.affine_parameters())

    def extra_repr(self) -> str:
        return f"{self.num_features}, {self._stats_repr()}"


class SigmaBatchNorm1d(SigmaBatchNorm):
    """σBN for ``(N, C)`` or ``(N, C, L)`` inputs.

    Example:
        >>> import torch
        >>> from tasknorm.nn import SigmaBatchNorm1d
        >>> bn = SigmaBatchNorm1d(16)
        >>> bn(torch.randn(8, 16)).shape
        torch.Size([8, 16])
    """

    expected_dims = (2, 3)
    plain_class = nn.BatchNorm1d


class SigmaBatchNorm2d(SigmaBatchNorm):
    """σBN for ``(N, C, H, W)`` inputs.

    Example:
        >>> import torch
        >>> from tasknorm.nn import SigmaBatchNorm2d
        >>> bn = SigmaBatchNorm2d(16)
        >>> bool((bn.gate > 0).all() and (bn.gate < 1).all())
        True
    """

    expected_dims = (4,)


class _TaskBatchNormBase(TaskRouted, BatchNormStats):
    """Per-task running statistics plus per-task affine parameters given by :meth:`task_affine`."""

    def __init__(
        self,
        num_features: int,
        tasks: Sequence[str],
        eps: float,
        momentum: float | None,
        track_running_stats: bool,
        sync_stats: bool,
        factory_kwargs: dict[str, Any],
    ) -> None:
        tasks = validate_tasks(tasks)
        super().__init__(num_features, (len(tasks), num_features), eps, momentum,
                         track_running_stats, sync_stats, factory_kwargs)
        self._init_routing(tasks)

    def single_task_module(self, task: str) -> nn.Module:
        index = self.task_index(Route(task))
        scale, shift = self.task_affine()
        return self._plain_batch_norm(_for_task(scale, index), _for_task(shift, index), index,
                                      self.affine_parameters())

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        route = self.active_route()
        task = self.task_index(route)
        scale, shift = self.task_affine()
        if task is not None:
            return self._normalize(x, _for_task(scale, task), _for_task(shift, task), task)
        self.tasks_per_batch(x.size(0))
        folded = fold_tasks(x, self.num_tasks, route.layout)
        y = self._normalize(folded, _for_task(scale, None), _for_task(shift, None), ...)
        return unfold_tasks(y, self.num_tasks, route.layout)


def _for_task(param: Tensor | None, task: int | None) -> Tensor | None:
    """Row ``task`` of a per-task ``(T, C)`` affine tensor, or all rows flattened to match the
    folded all-tasks channels (``task`` ``None``); ``None`` stays ``None``."""
    if param is None:
        return None
    return param.reshape(-1) if task is None else param[task]


class _TaskBatchNorm(_TaskBatchNormBase):
    """TSBN: an independent BatchNorm (affine weight and bias, running statistics) per task;
    ``affine=False`` keeps only the per-task statistics, as ``nn.BatchNorm2d(affine=False)``."""

    def __init__(
        self,
        num_features: int,
        tasks: Sequence[str],
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        sync_stats: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__(num_features, tasks, eps, momentum, track_running_stats, sync_stats,
                         factory_kwargs)
        self.affine = affine
        shape = (self.num_tasks, num_features)
        if affine:
            self.weight = nn.Parameter(torch.empty(shape, **factory_kwargs))
            self.bias = nn.Parameter(torch.empty(shape, **factory_kwargs))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Running statistics to (0, 1); every task's weight to 1 and bias to 0."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def task_affine(self) -> tuple[Tensor | None, Tensor | None]:
        return self.weight, self.bias

    def affine_parameters(self) -> tuple[Tensor | None, Tensor | None]:
        """The parameters behind :meth:`task_affine` (the same tensors)."""
        return self.weight, self.bias

    def extra_repr(self) -> str:
        affine = "" if self.affine else ", affine=False"
        return f"{self.num_features}, tasks={self.tasks}{affine}, {self._stats_repr()}"


class TaskBatchNorm1d(_TaskBatchNorm):
    """TSBN for ``(N, C)`` or ``(N, C, L)`` inputs. See :class:`TaskBatchNorm2d`."""

    expected_dims = (2, 3)
    plain_class = nn.BatchNorm1d


class TaskBatchNorm2d(_TaskBatchNorm):
    """TSBN for ``(N, C, H, W)`` inputs: ``weight[t] * x_hat_t + bias[t]`` with task ``t``'s own
    batch (train) or running (eval) statistics.

    Example:
        >>> import torch
        >>> from tasknorm.nn import TaskBatchNorm2d, use_task
        >>> bn = TaskBatchNorm2d(8, tasks=["seg", "depth"])
        >>> bn.weight.shape, bn.running_mean.shape
        (torch.Size([2, 8]), torch.Size([2, 8]))
        >>> with use_task("seg"):
        ...     y = bn(torch.randn(4, 8, 5, 5))
        >>> bn.num_batches_tracked.tolist()
        [1, 0]
    """

    expected_dims = (4,)


class _TaskSigmaBatchNorm(SigmoidGated, _TaskBatchNormBase):
    """TSσBN: per-task sigmoid gates ``sigmoid(gate_logit[t])`` and per-task running statistics."""

    def __init__(
        self,
        num_features: int,
        tasks: Sequence[str],
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
        bias: bool = False,
        init_mean: float = 0.0,
        init_std: float = 1.0,
        sync_stats: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__(num_features, tasks, eps, momentum, track_running_stats, sync_stats,
                         factory_kwargs)
        shape = (self.num_tasks, num_features)
        self.init_mean = init_mean
        self.init_std = init_std
        self.gate_logit = nn.Parameter(torch.empty(shape, **factory_kwargs))
        self.bias = nn.Parameter(torch.empty(shape, **factory_kwargs)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Running statistics to (0, 1); gate logits to N(init_mean, init_std²); bias to 0."""
        self.reset_running_stats()
        self.reset_gates()

    def extra_repr(self) -> str:
        bias = ", bias=True" if self.bias is not None else ""
        return f"{self.num_features}, tasks={self.tasks}{bias}, {self._stats_repr()}"


class TaskSigmaBatchNorm1d(_TaskSigmaBatchNorm):
    """TSσBN for ``(N, C)`` or ``(N, C, L)`` inputs. See :class:`TaskSigmaBatchNorm2d`."""

    expected_dims = (2, 3)
    plain_class = nn.BatchNorm1d


class TaskSigmaBatchNorm2d(_TaskSigmaBatchNorm):
    """TSσBN for ``(N, C, H, W)`` inputs: ``sigmoid(gate_logit[t]) * x_hat_t`` with task
    ``t``'s own statistics; ``bias=True`` adds a per-task shift.

    Example:
        >>> import torch
        >>> from tasknorm.nn import TaskSigmaBatchNorm2d, use_all_tasks
        >>> bn = TaskSigmaBatchNorm2d(8, tasks=["seg", "depth", "normal"])
        >>> bn.gate.shape
        torch.Size([3, 8])
        >>> with use_all_tasks():  # 3 tasks × 4 samples, task-major
        ...     y = bn(torch.randn(12, 8, 5, 5))
        >>> bn.num_batches_tracked.tolist()
        [1, 1, 1]
    """

    expected_dims = (4,)
