"""Soft sharing between stages of a backbone: cross-stitch networks and MTAN.

Both map an image to ``{task: features}`` through the stages of :mod:`tasknorm.models.stages`;
:class:`~tasknorm.models.MultiTaskModel` puts the task heads on top.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasknorm.models.stages import (
    Form,
    StagedBackbone,
    StageState,
    channel_dim,
    initial_state,
)

_MIXING = {"map": "tsc,sbchw->tbchw", "vector": "tsc,sbc->tbc", "tokens": "tsc,sbnc->tbnc"}


class CrossStitchUnit(nn.Module):
    """A cross-stitch unit (Misra et al., CVPR 2016, arXiv:1604.03539, Eq. 1 with one
    ``T × T`` matrix ``α`` per channel): task ``t``'s output is ``Σ_s α[t, s] ⊙ x_s``.

    Args:
        tasks: ``T``.
        channels: channels of the features.
        form: their form (``"map"``, ``"vector"``, ``"tokens"``).
        self_weight: initial ``α[t, t]``; the others start at ``(1 - self_weight) / (T - 1)``,
            so that every row sums to 1 (the paper's (0.9, 0.1) for two tasks); one task: 1.

    Example:
        >>> import torch
        >>> unit = CrossStitchUnit(2, 3, "vector")
        >>> a, b = torch.ones(1, 3), torch.zeros(1, 3)
        >>> [round(y[0, 0].item(), 4) for y in unit([a, b])]
        [0.9, 0.1]
    """

    def __init__(self, tasks: int, channels: int, form: Form, self_weight: float = 0.9) -> None:
        super().__init__()
        if not 0 <= self_weight <= 1:
            raise ValueError(f"self_weight must lie in [0, 1], got {self_weight!r}")
        other = (1 - self_weight) / (tasks - 1) if tasks > 1 else 0.0
        alpha = torch.full((tasks, tasks), other).fill_diagonal_(self_weight if tasks > 1 else 1)
        self.alpha = nn.Parameter(alpha.unsqueeze(-1).repeat(1, 1, channels))
        self.form = form

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        return list(torch.einsum(_MIXING[self.form], self.alpha, torch.stack(list(features))))

    def extra_repr(self) -> str:
        tasks, _, channels = self.alpha.shape
        return f"tasks={tasks}, channels={channels}, form={self.form!r}"


class CrossStitchNetwork(nn.Module):
    """Cross-stitch networks (Misra et al., arXiv:1604.03539): one copy of the backbone per task
    (``columns``) and a :class:`CrossStitchUnit` after every stage, the last one included.

    Args:
        backbone: builds the backbone (called once per task).
        tasks: the task names.
        self_weight: initial weight of a task's own column in every unit.
    """

    def __init__(self, backbone: Callable[[], nn.Module], tasks: Sequence[str],
                 self_weight: float = 0.9) -> None:
        super().__init__()
        self.task_names = tuple(tasks)
        self.columns = nn.ModuleDict({t: StagedBackbone(backbone()) for t in self.task_names})
        stages = self.columns[self.task_names[0]].stages
        self.units = nn.ModuleList(CrossStitchUnit(len(self.task_names), s.out_channels, s.form,
                                                   self_weight) for s in stages)
        self.out_features: int = stages[-1].out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        states = [initial_state(x)] * len(self.task_names)
        columns = [self.columns[t].stages for t in self.task_names]
        for index, unit in enumerate(self.units):
            states = [stages[index](state) for stages, state in zip(columns, states, strict=True)]
            mixed = unit([state.features for state in states])
            states = [s._replace(features=f) for s, f in zip(states, mixed, strict=True)]
        return {t: s.features for t, s in zip(self.task_names, states, strict=True)}


class CallerStatistics(nn.Module):
    """Batch norm over ``channels`` with one scale and shift shared by ``callers`` and running
    statistics of each caller's own: ``forward(x, caller)`` normalises ``x`` as a BatchNorm
    would, in training with ``x``'s batch statistics (updating caller's running ones), in
    evaluation with caller's running statistics. One BatchNorm called on inputs of different
    distributions would instead keep running statistics of whichever caller ran last."""

    def __init__(self, channels: int, callers: int, eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(callers, channels))
        self.register_buffer("running_var", torch.ones(callers, channels))
        self.eps, self.momentum = eps, momentum

    def forward(self, x: Tensor, caller: int) -> Tensor:
        return F.batch_norm(x, self.running_mean[caller], self.running_var[caller], self.weight,
                            self.bias, self.training, self.momentum, self.eps)

    def extra_repr(self) -> str:
        callers, channels = self.running_mean.shape
        return f"channels={channels}, callers={callers}"


class ConvNormAct(nn.Module):
    """Convolution (no bias), batch norm and ``activation`` over the channels of features of
    any form: ``kernel_size × kernel_size`` ("same" padding) on maps, 1×1 on vectors and tokens
    (a ``(B, C, L)`` view, so the norm takes its statistics over the batch and positions).
    With ``callers``, the norm is :class:`CallerStatistics` and ``forward`` takes the caller."""

    def __init__(self, in_channels: int, out_channels: int, form: Form, activation: nn.Module,
                 kernel_size: int = 1, callers: int | None = None) -> None:
        super().__init__()
        if form == "map":
            self.conv: nn.Module = nn.Conv2d(in_channels, out_channels, kernel_size,
                                             padding=kernel_size // 2, bias=False)
            self.norm: nn.Module = nn.BatchNorm2d(out_channels)
        else:
            self.conv = nn.Conv1d(in_channels, out_channels, 1, bias=False)
            self.norm = nn.BatchNorm1d(out_channels)
        if callers is not None:
            self.norm = CallerStatistics(out_channels, callers)
        self.activation = activation
        self.form = form

    def forward(self, x: Tensor, *caller: int) -> Tensor:
        if self.form == "map":
            return self.activation(self.norm(self.conv(x), *caller))
        view = x.unsqueeze(2) if self.form == "vector" else x.transpose(1, 2)
        out = self.activation(self.norm(self.conv(view), *caller))
        return out.squeeze(2) if self.form == "vector" else out.transpose(1, 2)

    def extra_repr(self) -> str:
        return f"form={self.form!r}"


class AttentionMask(nn.Module):
    """MTAN's attention module (Liu et al., CVPR 2019, arXiv:1803.10704, §3): ``g`` (1×1
    conv-BN-ReLU) then ``h`` (1×1 conv-BN-sigmoid), a soft mask with ``channels`` channels."""

    def __init__(self, in_channels: int, channels: int, form: Form) -> None:
        super().__init__()
        self.g = ConvNormAct(in_channels, channels, form, nn.ReLU(inplace=True))
        self.h = ConvNormAct(channels, channels, form, nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return self.h(self.g(x))


class MTAN(nn.Module):
    """Multi-Task Attention Network (Liu et al., CVPR 2019, arXiv:1803.10704, §3).

    One shared backbone; at every stage ``j`` each task ``t`` has an :class:`AttentionMask`
    whose mask multiplies the shared stage output ``p_j`` element-wise:
    ``â_t^j = h_t^j(g_t^j([p_j; f^j(â_t^{j-1})])) ⊙ p_j``, and ``â_t^1 =
    h_t^1(g_t^1(p_1)) ⊙ p_1``. ``f^j`` is the paper's shared feature extractor, one per stage
    shared by the tasks: a 3×3 conv-BN-ReLU (1×1 on vectors and tokens) to ``p_j``'s channels,
    then resized to ``p_j``'s resolution (average pooling when smaller, bilinear upsampling
    when larger, as the paper's encoder pools and decoder upsamples; global average pooling
    from a map to a vector; the last ``H × W`` tokens as a map). Task features: ``â_t`` of the
    last stage.

    ``f^j``'s convolution and BatchNorm scale and shift are shared by the tasks, its running
    statistics are each task's (:class:`CallerStatistics`): training computes what one shared
    BatchNorm called once per task computes, and evaluation normalises every task with its own
    statistics, not with those of the task that ran last (on ``multidigits_contested`` the first
    task's validation loss rose while its training loss fell).

    Adapting to the stage split: the paper's attention at block ``j`` reads the output ``u_j``
    of the block's first layer and masks its last ``p_j``; a stage here is a block of any
    backbone, so both are the stage output ``p_j``.

    Args:
        backbone: builds the shared backbone.
        tasks: the task names.
    """

    def __init__(self, backbone: Callable[[], nn.Module], tasks: Sequence[str]) -> None:
        super().__init__()
        self.task_names = tuple(tasks)
        self.shared = StagedBackbone(backbone())
        stages = self.shared.stages
        self.attention = nn.ModuleList(
            nn.ModuleDict({t: AttentionMask(s.out_channels * (1 if j == 0 else 2),
                                            s.out_channels, s.form) for t in self.task_names})
            for j, s in enumerate(stages))
        self.extractors = nn.ModuleList(
            ConvNormAct(before.out_channels, after.out_channels, before.form,
                        nn.ReLU(inplace=True), 3 if before.form == "map" else 1,
                        callers=len(self.task_names))
            for before, after in itertools.pairwise(stages))
        self.out_features: int = stages[-1].out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        state: StageState = initial_state(x)
        attended: dict[str, Tensor] = {}
        for j, (stage, masks) in enumerate(zip(self.shared.stages, self.attention, strict=True)):
            state = stage(state)
            shared = state.features
            for index, t in enumerate(self.task_names):
                inputs = shared
                if j > 0:
                    previous = resize_like(self.extractors[j - 1](attended[t], index), shared)
                    inputs = torch.cat([shared, previous], channel_dim(stage.form))
                attended[t] = masks[t](inputs) * shared
        return attended


def resize_like(x: Tensor, like: Tensor) -> Tensor:
    """``x`` (same channels as ``like``) brought to ``like``'s form and resolution."""
    if like.dim() == 2 and x.dim() > 2:
        return x.mean(dim=(2, 3) if x.dim() == 4 else 1)
    if like.dim() == 4 and x.dim() == 3:
        height, width = like.shape[-2:]
        return x[:, -height * width:].transpose(1, 2).unflatten(2, (height, width))
    if like.dim() == 4 and x.shape[-2:] != like.shape[-2:]:
        size = like.shape[-2:]
        if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
            return F.adaptive_avg_pool2d(x, size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x
