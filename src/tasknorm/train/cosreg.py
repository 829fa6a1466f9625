"""CosReg: a penalty that makes task gradients on shared parameters near-orthogonal.

Suteu & Guo, "Regularizing Deep Multi-Task Networks using Orthogonal Gradients"
(arXiv:1912.06844). With ``G`` the ``(T, P)`` matrix of per-task gradients on a chosen set of
shared parameters (by default the last shared layer, as in the paper) and ``U`` its rows scaled
to unit norm, the penalty is

    P = α / (T (T − 1)) · ‖U Uᵀ − I‖²_F = α · mean_{i≠j} cos²(g_i, g_j)   ∈ [0, α].

The gradients are taken with ``create_graph=True`` (double backpropagation), so the gradient of
``P`` reaches every layer below the chosen parameters and the task heads. With
``loss_scaled=True``, ``α`` is multiplied by the detached mean task loss (the paper's NYUv2
recipe), so the penalty follows the scale of the losses.

Two options keep a large ``α`` from stalling training when the task gradients are tiny (the
cosine is scale-invariant, so the penalty's gradient grows like ``1/‖g‖``): ``warmup_steps``
ramps ``α`` linearly from 0, and ``max_grad_ratio`` caps the norm of the penalty's gradient at a
fraction of the task gradient's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasknorm.nn import TaskRouted
from tasknorm.train.gradients import shared_parameters, task_gradients


def cosreg_penalty(gradients: Tensor, alpha: float = 1.0, eps: float = 1e-12) -> Tensor:
    """``α / (T(T−1)) · ‖U Uᵀ − I‖²_F`` for the unit-normalised rows ``U`` of ``gradients``.

    Only the off-diagonal entries are summed: they are the whole value whenever no row is zero
    (the diagonal of ``U Uᵀ`` is then exactly 1), and a task whose gradient is zero counts as
    orthogonal to the others instead of adding a constant.

    Args:
        gradients: ``(T, P)``, one gradient per task, ``T ≥ 2``.
        alpha: the strength ``α``.
        eps: lower bound of a row's norm when normalising.

    Example:
        >>> import torch
        >>> cosreg_penalty(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))  # orthogonal
        tensor(0.)
        >>> cosreg_penalty(torch.tensor([[1.0, 1.0], [2.0, 2.0]]), alpha=10.0)  # parallel
        tensor(10.0000)
    """
    if gradients.dim() != 2 or gradients.size(0) < 2:
        raise ValueError(f"CosReg needs a (tasks, parameters) matrix with at least two tasks, "
                         f"got shape {tuple(gradients.shape)}")
    tasks = gradients.size(0)
    unit = F.normalize(gradients, dim=1, eps=eps)
    cosines = unit @ unit.T
    off_diagonal = ~torch.eye(tasks, dtype=torch.bool, device=gradients.device)
    return alpha * cosines[off_diagonal].square().sum() / (tasks * (tasks - 1))


def last_shared_layer(backbone: nn.Module) -> str:
    """Name of the last shared layer of ``backbone``: the last convolution or linear module (in
    ``named_modules()`` order, which is construction order) with a trainable weight and outside
    any task-specific normalization layer.

    Normalization layers are skipped on purpose: in a TSσBN backbone they are task-specific, and
    in a hard-sharing one their scale and shift are not the "layer" the CosReg paper regularises
    (its encoder has none). For backbones whose construction order differs from their execution
    order, name the parameters explicitly instead.

    Example:
        >>> from tasknorm.models import digits_cnn
        >>> last_shared_layer(digits_cnn(width=8))
        'features.9'
    """
    task_specific = {id(m) for r in backbone.modules() if isinstance(r, TaskRouted)
                     for m in r.modules()}
    last = None
    for name, module in backbone.named_modules():
        if id(module) in task_specific or not isinstance(module, nn.Conv1d | nn.Conv2d
                                                             | nn.Conv3d | nn.Linear):
            continue
        if module.weight.requires_grad:
            last = name
    if last is None:
        raise ValueError(f"{type(backbone).__name__} has no shared convolution or linear layer; "
                         "name CosReg's parameters explicitly")
    return last


class CosReg(nn.Module):
    """The CosReg penalty on a model's shared parameters.

    Args:
        alpha: strength ``α`` (the paper: 10 alone, 0.1 with BatchNorm on MultiDigitMNIST).
        loss_scaled: multiply ``α`` by the detached mean task loss.
        parameters: names of shared parameters or modules of the backbone (parameter-name
            prefixes, see :func:`~tasknorm.train.gradients.shared_parameters`); ``None``: the
            :func:`last_shared_layer`; ``["*"]``: every shared parameter.
        eps: lower bound of a gradient's norm when normalising.
        warmup_steps: ``N``; the ``t``-th call (from 0) uses ``α_t = α · min(1, t / N)``;
            0: no warm-up. ``t`` is the buffer :attr:`step`, saved in checkpoints.
        max_grad_ratio: ``ρ``; where the penalty's gradient on the regularised parameters is
            longer than ``ρ`` times the gradient of the summed task losses on them, the penalty
            is multiplied by a detached factor that makes it exactly that long (one more
            backward pass); ``None``: no cap.

    Call :meth:`attach` with the backbone once, then ``cosreg(losses)`` every step; it returns
    the penalty (with its graph) and keeps :attr:`last_seconds` and :attr:`last_cosines` of the
    step for logging.

    Example:
        >>> import torch
        >>> from tasknorm.models import digits_cnn
        >>> backbone = digits_cnn(width=4)
        >>> cosreg = CosReg(alpha=10.0)
        >>> cosreg.attach(backbone)
        ['features.9.weight']
        >>> features = backbone(torch.randn(8, 1, 23, 23))
        >>> losses = {"a": features[:, :8].pow(2).mean(), "b": features[:, 8:].mean()}
        >>> penalty = cosreg(losses)
        >>> bool(0 <= penalty <= 10), penalty.requires_grad
        (True, True)
    """

    step: Tensor

    def __init__(self, alpha: float = 10.0, loss_scaled: bool = False,
                 parameters: Sequence[str] | None = None, eps: float = 1e-12,
                 warmup_steps: int = 0, max_grad_ratio: float | None = None) -> None:
        super().__init__()
        if alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {alpha}")
        if isinstance(parameters, str):
            raise TypeError(f"parameters must be a list of names, got the string {parameters!r}")
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}")
        if max_grad_ratio is not None and not max_grad_ratio > 0:
            raise ValueError(f"max_grad_ratio must be positive or None, got {max_grad_ratio}")
        self.alpha = float(alpha)
        self.loss_scaled = loss_scaled
        self.names = None if parameters is None else list(parameters)
        self.eps = eps
        self.warmup_steps = warmup_steps
        self.max_grad_ratio = max_grad_ratio
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._register_load_state_dict_pre_hook(_count_from_zero)
        self.params: dict[str, nn.Parameter] = {}
        self.last_seconds = 0.0
        self.last_cosines: Tensor | None = None

    def extra_repr(self) -> str:
        options = "".join(f", {name}={value}" for name, value in (
            ("warmup_steps", self.warmup_steps), ("max_grad_ratio", self.max_grad_ratio))
            if value)
        return (f"alpha={self.alpha}, loss_scaled={self.loss_scaled}, "
                f"parameters={self.names if self.names is not None else 'last shared layer'}"
                f"{options}")

    def attach(self, backbone: nn.Module) -> list[str]:
        """Select the regularised parameters of ``backbone``; returns their names."""
        if self.names is None:
            names: Sequence[str] | None = [last_shared_layer(backbone)]
        elif self.names == ["*"]:
            names = None
        else:
            names = self.names
        # plain attribute, not registered: the parameters belong to the model
        self.__dict__["params"] = shared_parameters(backbone, names)
        return list(self.params)

    def forward(self, losses: Mapping[str, Tensor], reduce: bool = False) -> Tensor:
        """The penalty for the task ``losses`` (each with its graph); advances :attr:`step`.

        Args:
            losses: ``{task: scalar loss}``.
            reduce: average the per-task gradients over all processes before the penalty (a
                differentiable all-reduce), so that under DDP the penalty is the one of the
                joined batch.
        """
        if not self.params:
            raise RuntimeError("CosReg.attach(backbone) must be called before the first step")
        start = time.perf_counter()
        params = list(self.params.values())
        gradients = task_gradients(losses, params, create_graph=True)
        if reduce:
            gradients = _mean_over_processes(gradients)
        penalty = cosreg_penalty(gradients, self.alpha, self.eps)
        if self.warmup_steps:
            penalty = penalty * (self.step / self.warmup_steps).clamp(max=1)
        if self.loss_scaled:
            penalty = penalty * torch.stack(list(losses.values())).mean().detach()
        if self.max_grad_ratio is not None and penalty.requires_grad:
            penalty = penalty * self._cap(penalty, gradients.detach().sum(0), params, reduce)
        self.step += 1
        self.last_seconds = time.perf_counter() - start
        with torch.no_grad():
            unit = F.normalize(gradients.detach(), dim=1, eps=self.eps)
            self.last_cosines = unit @ unit.T
        return penalty

    def _cap(self, penalty: Tensor, task_gradient: Tensor, params: list[nn.Parameter],
             reduce: bool) -> Tensor:
        """``min(1, ρ ‖task_gradient‖ / ‖∇ penalty‖)`` on ``params`` (1 for a zero gradient)."""
        grads = torch.autograd.grad(penalty, params, retain_graph=True, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                          for g, p in zip(grads, params, strict=True)])
        if reduce:  # DDP averages the gradients the penalty leaves on each process
            flat = _mean_over_processes(flat)
        norm = flat.norm()
        limit = self.max_grad_ratio * task_gradient.norm()
        return torch.where(norm > limit, limit / norm.clamp_min(self.eps), torch.ones_like(norm))


def _count_from_zero(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Checkpoints written before :attr:`CosReg.step` existed load with the count at 0."""
    state_dict.setdefault(f"{prefix}step", torch.zeros((), dtype=torch.long))


def _mean_over_processes(tensor: Tensor) -> Tensor:
    """Differentiable mean of ``tensor`` over the default process group (identity without one)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor) / dist.get_world_size()
