"""Loss weightings written from their papers: the Geometric Loss Strategy, smooth Tchebycheff
scalarization, FAMO, the log losses of DB-MTL and the learned loss scales of IMTL-L.

Each turns the task losses into per-task objectives (:meth:`LossWeighting.objectives`) whose sum
has the value and the gradient of the method's loss, so that it also composes with a gradient
method (:mod:`tasknorm.train.balancing`), which then sees the Jacobian of those objectives.

A method whose loss ``F`` is not linear in the task losses (all but IMTL-L) is a
:class:`Scalarization`: ``F`` is evaluated at the losses averaged over processes ``L̄``
(:func:`~tasknorm.train.aggregation.mean_over_processes`; on one process, the losses themselves),
and the objectives are its first-order expansion there::

    o_t = F_t(L̄) + ∂F/∂L_t(L̄) · (L_t − L̄_t),        Σ_t F_t = F.

On one process their values are the terms ``F_t(L)`` and their summed gradient is ``∇F``; under
DDP, which averages the gradients of the processes, the update is the one of ``F`` on the joined
batch, and what a method keeps from the losses (FAMO's losses before the step) is the same on
every process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from tasknorm.train.aggregation import mean_over_processes
from tasknorm.train.weighting import LossWeighting

EPSILON = 1e-8
"""Added to a loss before its logarithm or a division by it (FAMO's and DB-MTL's value)."""

_ADAM = (0.9, 0.999, 1e-8)
"""Adam's moment decays and ε for FAMO's logits (PyTorch's defaults, which FAMO's code keeps)."""


class Scalarization(LossWeighting):
    """A loss ``F`` of the task losses, given by its per-task terms ``F_t`` (:meth:`terms`),
    turned into first-order objectives at the process-averaged losses (module docstring).

    :meth:`weights` are the last ``∂F/∂L_t``: each task gradient's weight in the update.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self.register_buffer("slopes", torch.ones(len(self.tasks)), persistent=False)

    def terms(self, losses: Tensor) -> Tensor:
        """The ``(T,)`` terms ``F_t`` of the ``(T,)`` detached ``losses`` (differentiable in
        them), whose sum is the method's loss."""
        raise NotImplementedError

    def weights(self) -> dict[str, float]:
        return {t: float(w) for t, w in zip(self.tasks, self.slopes, strict=True)}

    def objectives(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = torch.stack([losses[t] for t in self.tasks])
        at = mean_over_processes(stacked.detach()).clone().requires_grad_()
        with torch.enable_grad():
            terms = self.terms(at)
            (slopes,) = torch.autograd.grad(terms.sum(), at)
        self.slopes = slopes
        return terms.detach() + slopes * (stacked - at.detach())


class GeometricLossStrategy(Scalarization):
    """GLS (Chennupati et al., "MultiNet++", CVPR-W 2019, arXiv:1904.08492): the geometric mean
    of the losses,

        F = (Π_t L_t)^{1/T},    ∂F/∂L_t = F / (T L_t),

    split evenly (``F_t = F / T``). Losses are clamped to at least :data:`EPSILON`, so that a zero
    loss gives a finite gradient.

    Example:
        >>> import torch
        >>> gls = GeometricLossStrategy(["a", "b"])
        >>> gls({"a": torch.tensor(4.0), "b": torch.tensor(1.0)})  # √(4 · 1)
        tensor(2.)
        >>> {t: round(w, 4) for t, w in gls.weights().items()}  # F / (2 L_t)
        {'a': 0.25, 'b': 1.0}
    """

    def terms(self, losses: Tensor) -> Tensor:
        mean = losses.clamp_min(EPSILON).log().mean().exp()
        return mean.expand(len(self.tasks)) / len(self.tasks)


class LogLosses(Scalarization):
    """The loss-scale balancing of DB-MTL (Lin et al., "Dual-Balancing for Multi-Task Learning",
    arXiv:2308.12029): each loss replaced by its logarithm, ``F_t = log(L_t + ε)``, so that its
    gradient ``∇L_t / (L_t + ε)`` no longer depends on the loss's scale (ε = :data:`EPSILON`).

    Example:
        >>> import torch
        >>> logs = LogLosses(["a", "b"])
        >>> logs.objectives({"a": torch.tensor(1.0), "b": torch.tensor(4.0)})
        tensor([0.0000, 1.3863])
    """

    def terms(self, losses: Tensor) -> Tensor:
        return torch.log(losses + EPSILON)


class SmoothTchebycheff(Scalarization):
    """Smooth Tchebycheff scalarization (Lin et al., ICML 2024, arXiv:2402.19078):

        g_μ(λ) = μ log Σ_t exp(λ_t (f_t − z*_t) / μ),

    a smooth upper bound of the Tchebycheff scalarization ``max_t λ_t (f_t − z*_t)``, tighter as
    the smoothing ``μ`` decreases. As in the authors' multi-task code (github.com/Xi-L/STCH,
    ``STCH_MTL``), the objectives are the log losses ``f_t = log(L_t + ε)`` and the point
    ``z*_t = log n_t`` is a typical loss: for the first ``warmup_epochs`` epochs the loss is
    ``Σ_t log(L_t + ε)`` and ``n_t`` is then task ``t``'s mean training loss over the last of those
    epochs (as :meth:`epoch_end` receives it, already averaged over processes); afterwards the
    loss is ``T · g_μ(λ)``, split evenly, whose task weights ``T softmax(λ (f − z*)/μ)_t λ_t`` sum
    to ``T`` (for ``λ = 1``) like those of the warm-up. ``warmup_epochs=0`` means ``n = 1``
    (``z* = 0``).

    Args:
        tasks: the task names.
        mu: the smoothing ``μ > 0`` (1 in the authors' multi-task code).
        preference: ``λ_t > 0`` per task; ``None``: 1 for every task (the authors' code).
        warmup_epochs: epochs on the summed log losses; 5 is the authors' ``STCH_warmup_epoch=4``
            (epochs 0–4 counted from 0).

    Example:
        >>> import torch
        >>> stch = SmoothTchebycheff(["a", "b"], warmup_epochs=1)
        >>> losses = {"a": torch.tensor(2.0), "b": torch.tensor(0.5)}
        >>> stch.objectives(losses)  # warm-up: log L
        tensor([ 0.6931, -0.6931])
        >>> stch.epoch_end({"a": 2.0, "b": 1.0})
        >>> stch(losses)  # 2 log(e^{log(2/2)} + e^{log(0.5/1)}) = 2 log 1.5
        tensor(0.8109)
    """

    def __init__(self, tasks: Sequence[str], mu: float = 1.0,
                 preference: Mapping[str, float] | None = None, warmup_epochs: int = 5) -> None:
        super().__init__(tasks)
        if not 0 < float(mu) < float("inf"):
            raise ValueError(f"STCH smoothing mu must be positive and finite, got {mu}")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) \
                or warmup_epochs < 0:
            raise ValueError(f"STCH warmup_epochs must be a non-negative integer, got "
                             f"{warmup_epochs!r}")
        preference = dict.fromkeys(self.tasks, 1.0) if preference is None else dict(preference)
        if set(preference) != set(self.tasks):
            raise ValueError(f"STCH preference is given for {sorted(preference)} but the tasks "
                             f"are {sorted(self.tasks)}")
        bad = {t: p for t, p in preference.items() if not 0 < float(p) < float("inf")}
        if bad:
            raise ValueError(f"STCH preference must be positive and finite, got {bad}")
        self.mu, self.warmup_epochs = float(mu), warmup_epochs
        self.register_buffer("preference", torch.tensor([float(preference[t])
                                                         for t in self.tasks]), persistent=False)
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))
        self.register_buffer("typical", torch.ones(len(self.tasks)))

    def terms(self, losses: Tensor) -> Tensor:
        logs = torch.log(losses + EPSILON)
        if int(self.epochs) < self.warmup_epochs:
            return logs
        ideal = self.typical.to(logs).clamp_min(EPSILON).log()
        scaled = self.preference.to(logs) * (logs - ideal) / self.mu
        return self.mu * torch.logsumexp(scaled, 0).expand(len(self.tasks))

    def epoch_end(self, mean_losses: Mapping[str, float]) -> None:
        self.epochs += 1
        if int(self.epochs) == self.warmup_epochs:
            self.typical = torch.tensor([float(mean_losses[t]) for t in self.tasks],
                                        dtype=self.typical.dtype, device=self.typical.device)

    def extra_repr(self) -> str:
        return f"mu={self.mu}, warmup_epochs={self.warmup_epochs}"


class FastAdaptiveWeighting(Scalarization):
    """FAMO (Liu et al., NeurIPS 2023, arXiv:2306.03792): task weights ``z = softmax(ξ)`` and the
    loss ``F = c Σ_t z_t log(L_t + ε)``, ``c = (Σ_t z_t / (L_t + ε))⁻¹`` held constant, whose
    gradient ``Σ_t c z_t ∇L_t / (L_t + ε)`` is a convex combination of the task gradients.

    After each optimizer step (:meth:`after_step`, with the same batch's losses under the updated
    model) the logits learn from how much each log loss fell,
    ``δ_t = log(L_t + ε) − log(L'_t + ε)``: their gradient is ``J_zᵀ δ + γ ξ``, with
    ``J_z = diag(z) − z zᵀ`` the Jacobian of the softmax, and Adam with step size ``β`` takes the
    step (the paper's practical algorithm, its Algorithm 2; Algorithm 1 writes a plain gradient
    step). Tasks whose loss fell faster than the ``z``-weighted average lose weight. The losses
    before the step and the logits' Adam moments are buffers; both come from process-averaged
    losses, so they are the same on every process.

    Args:
        tasks: the task names.
        beta: Adam step size of the logits (0.025 in the paper).
        gamma: weight decay of the logits (1e-3, the paper's Algorithm 2).
    """

    needs_losses_after_step = True

    def __init__(self, tasks: Sequence[str], beta: float = 0.025, gamma: float = 1e-3) -> None:
        super().__init__(tasks)
        for name, value in (("beta", beta), ("gamma", gamma)):
            if not 0 <= float(value) < float("inf"):
                raise ValueError(f"FAMO {name} must be non-negative and finite, got {value}")
        self.beta, self.gamma = float(beta), float(gamma)
        size = len(self.tasks)
        self.register_buffer("logits", torch.zeros(size))
        self.register_buffer("first_moment", torch.zeros(size))
        self.register_buffer("second_moment", torch.zeros(size))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("before", torch.ones(size))

    def task_weights(self) -> Tensor:
        """``z = softmax(ξ)``."""
        return torch.softmax(self.logits, 0)

    def terms(self, losses: Tensor) -> Tensor:
        self.before = losses.detach().to(self.before)
        z = self.task_weights().to(losses)
        shifted = losses + EPSILON
        normaliser = (z / shifted).sum().detach()
        return z * torch.log(shifted) / normaliser

    def after_step(self, losses: Mapping[str, Tensor]) -> None:
        after = torch.stack([torch.as_tensor(losses[t]) for t in self.tasks]).to(self.before)
        delta = torch.log(self.before + EPSILON) - torch.log(after + EPSILON)
        z = self.task_weights()
        gradient = z * (delta - (z * delta).sum()) + self.gamma * self.logits
        first, second, eps = _ADAM
        self.steps += 1
        self.first_moment.mul_(first).add_((1 - first) * gradient)
        self.second_moment.mul_(second).add_((1 - second) * gradient ** 2)
        step = int(self.steps)
        denominator = (self.second_moment / (1 - second ** step)).sqrt() + eps
        self.logits -= self.beta * self.first_moment / (1 - first ** step) / denominator

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}"


class ImpartialLossScaling(LossWeighting):
    """IMTL-L, the loss balance of IMTL (Liu et al., "Towards Impartial Multi-task Learning",
    ICLR 2021): a learned log-scale ``s_t`` per task (initially 0) and the objective
    ``e^{s_t} L_t − s_t``, minimised over ``s_t`` (by the training optimizer) where
    ``e^{s_t} L_t = 1``: every scaled loss is driven towards the same value. Linear in the
    losses, so DDP's gradient averaging is exact.

    Example:
        >>> import torch
        >>> imtl = ImpartialLossScaling(["a", "b"])
        >>> imtl.objectives({"a": torch.tensor(2.0), "b": torch.tensor(0.5)})
        tensor([2.0000, 0.5000], grad_fn=<SubBackward0>)
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self.log_scales = nn.Parameter(torch.zeros(len(self.tasks)))

    def weights(self) -> dict[str, float]:
        return {t: float(s.exp()) for t, s in zip(self.tasks, self.log_scales.detach(),
                                                  strict=True)}

    def objectives(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = torch.stack([losses[t] for t in self.tasks])
        return torch.exp(self.log_scales) * stacked - self.log_scales
