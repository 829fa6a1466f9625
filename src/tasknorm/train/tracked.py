"""Gradient methods that keep a running estimate of every task's gradient: the gradient-magnitude
balancing of DB-MTL and MoCo.

Both hold a ``(T, P)`` buffer ``tracked`` updated each step towards the Jacobian of the task
objectives, ``Y ← Y + a_k (J − Y)`` (step ``k`` counted from 1, ``Y`` starting at 0), and build the
update from it. The Jacobian they receive is averaged over processes, so the buffer is the same
on every process. ``tracked`` is allocated on the first step (``P`` is not known before) and
resized when a checkpoint is loaded, so that a fresh instance restores it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from tasknorm.train.aggregation import Aggregation

EPSILON = 1e-8
"""Added to a gradient norm before dividing by it."""


def project_onto_simplex(vector: Tensor) -> Tensor:
    """The Euclidean projection of ``vector`` onto the probability simplex
    ``{x : x ≥ 0, Σ x = 1}`` (the sort-based algorithm; Wang & Carreira-Perpiñán,
    arXiv:1309.1541, Algorithm 1).

    Example:
        >>> import torch
        >>> project_onto_simplex(torch.tensor([0.5, 0.2, 0.1]))  # + (1 − 0.8) / 3 each
        tensor([0.5667, 0.2667, 0.1667])
        >>> project_onto_simplex(torch.tensor([2.0, 0.0]))
        tensor([1., 0.])
    """
    if vector.dim() != 1 or vector.numel() == 0:
        raise ValueError(f"expected a non-empty vector, got shape {tuple(vector.shape)}")
    ordered = torch.sort(vector, descending=True).values
    sums = ordered.cumsum(0)
    counts = torch.arange(1, vector.numel() + 1, dtype=vector.dtype, device=vector.device)
    last = int((ordered + (1 - sums) / counts > 0).nonzero().max())
    shift = (1 - sums[last]) / (last + 1)
    return (vector + shift).clamp_min(0)


def _checked(name: str, value: float, expected: str, accept: Callable[[float], bool]) -> float:
    """``value`` as a float, or ``ValueError`` naming ``name`` if ``accept`` refuses it."""
    value = float(value)
    if not accept(value):
        raise ValueError(f"{name} must be {expected}, got {value}")
    return value


def _non_negative(name: str, value: float) -> float:
    return _checked(name, value, "non-negative and finite", lambda v: 0 <= v < math.inf)


class _TrackedGradients(Aggregation):
    """The ``tracked`` estimate ``Y`` and the step count ``steps``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("tracked", torch.zeros(0))

    def _track(self, jacobian: Tensor, rate: float) -> Tensor:
        """``Y ← Y + rate (J − Y)``; returns ``Y``."""
        if self.tracked.numel() == 0:
            self.tracked = torch.zeros_like(jacobian)
        elif self.tracked.shape != jacobian.shape:
            raise ValueError(f"{type(self).__name__} tracks gradients of shape "
                             f"{tuple(self.tracked.shape)}, got a Jacobian of shape "
                             f"{tuple(jacobian.shape)}")
        self.tracked = self.tracked + rate * (jacobian.detach().to(self.tracked) - self.tracked)
        return self.tracked

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        if prefix + "tracked" in state_dict:
            self.tracked = torch.empty_like(state_dict[prefix + "tracked"])
        super()._load_from_state_dict(state_dict, prefix, *args)


class GradientMagnitudeBalancing(_TrackedGradients):
    """The gradient-magnitude balancing of DB-MTL (Lin et al., "Dual-Balancing for Multi-Task
    Learning", arXiv:2308.12029), meant for the Jacobian of the log losses
    (:class:`~tasknorm.train.scalarization.LogLosses`): an exponential moving average of each
    task's gradient,

        ĝ_t ← β_k ĝ_t + (1 − β_k) g_t,    β_k = β / k^σ,

    and the update ``Σ_t (max_u ‖ĝ_u‖ / ‖ĝ_t‖) ĝ_t``: every task's gradient is scaled to the
    largest norm (the sum, not the mean, as in the paper).

    Args:
        beta: ``β`` in [0, 1) (0.9, the authors' default in LibMTL).
        beta_sigma: the decay ``σ ≥ 0`` of ``β_k`` (0: constant, the authors' default).

    Example:
        >>> import torch
        >>> balance = GradientMagnitudeBalancing(beta=0.0)
        >>> balance(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.zeros(2))  # (3, 4) + 5 (0, 1)
        tensor([3., 9.])
    """

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0) -> None:
        super().__init__()
        self.beta = _checked("DB-MTL beta", beta, "in [0, 1)", lambda v: 0 <= v < 1)
        self.beta_sigma = _non_negative("DB-MTL beta_sigma", beta_sigma)

    def forward(self, jacobian: Tensor, objectives: Tensor) -> Tensor:
        self.steps += 1
        beta = self.beta / int(self.steps) ** self.beta_sigma
        tracked = self._track(jacobian, 1 - beta)
        norms = tracked.norm(dim=1)
        return (norms.max() / (norms + EPSILON)) @ tracked

    def extra_repr(self) -> str:
        return f"beta={self.beta}, beta_sigma={self.beta_sigma}"


class MoCo(_TrackedGradients):
    """MoCo (Fernando et al., "Mitigating Gradient Bias in Multi-objective Learning: A Provably
    Convergent Approach", ICLR 2023, Algorithm 1): tracked task gradients ``Y`` (rows), task
    weights ``λ`` on the simplex (initially uniform) and the update ``Yᵀ λ``, each step

        Y ← Y − β_k (Y − J),
        λ ← Π_Δ(λ − γ_k (Y Yᵀ + ρ I) λ),

    with ``β_k = β / k^{σ_β}``, ``γ_k = γ / k^{σ_γ}`` and ``Π_Δ`` the projection onto the simplex
    (:func:`project_onto_simplex`). The algorithm's projection of each ``y_t`` onto a ball of
    radius the task's Lipschitz constant, a device of its analysis, is left out (the constant is
    unknown). LibMTL's MoCo, from the authors' code, also rescales every task gradient to the
    norm of its loss and replaces the projection by a softmax; this one does neither.

    Args:
        num_tasks: ``T``.
        beta: tracking step ``β`` in (0, 1] (defaults: the authors' values in LibMTL).
        beta_sigma: decay ``σ_β ≥ 0`` of ``β_k``.
        gamma: weight step ``γ ≥ 0``.
        gamma_sigma: decay ``σ_γ ≥ 0`` of ``γ_k``.
        rho: regularisation ``ρ ≥ 0``.

    Example:
        >>> import torch
        >>> moco = MoCo(2, beta=1.0, gamma=0.5)
        >>> # Y = J; λ = Π_Δ(½ − ½ diag(1, 4) ½) = Π_Δ(¼, −½) = (⅞, ⅛); Yᵀλ = (⅞, ¼)
        >>> moco(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2))
        tensor([0.8750, 0.2500])
    """

    def __init__(self, num_tasks: int, beta: float = 0.5, beta_sigma: float = 0.5,
                 gamma: float = 0.1, gamma_sigma: float = 0.5, rho: float = 0.0) -> None:
        super().__init__()
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"MoCo num_tasks must be a positive integer, got {num_tasks!r}")
        self.beta = _checked("MoCo beta", beta, "in (0, 1]", lambda v: 0 < v <= 1)
        self.beta_sigma = _non_negative("MoCo beta_sigma", beta_sigma)
        self.gamma = _non_negative("MoCo gamma", gamma)
        self.gamma_sigma = _non_negative("MoCo gamma_sigma", gamma_sigma)
        self.rho = _non_negative("MoCo rho", rho)
        self.register_buffer("task_weights", torch.full((num_tasks,), 1.0 / num_tasks))

    def forward(self, jacobian: Tensor, objectives: Tensor) -> Tensor:
        if jacobian.size(0) != self.task_weights.numel():
            raise ValueError(f"MoCo was built for {self.task_weights.numel()} tasks, got a "
                             f"Jacobian with {jacobian.size(0)} rows")
        self.steps += 1
        step = int(self.steps)
        tracked = self._track(jacobian, self.beta / step ** self.beta_sigma)
        gram = tracked @ tracked.T
        gram = gram + self.rho * torch.eye(gram.size(0), dtype=gram.dtype, device=gram.device)
        weights = self.task_weights.to(tracked)
        step_size = self.gamma / step ** self.gamma_sigma
        self.task_weights = project_onto_simplex(weights - step_size * gram @ weights)
        return self.task_weights @ tracked

    def extra_repr(self) -> str:
        return (f"beta={self.beta}, beta_sigma={self.beta_sigma}, gamma={self.gamma}, "
                f"gamma_sigma={self.gamma_sigma}, rho={self.rho}")
