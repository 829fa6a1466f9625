"""Loss weightings: how per-task losses combine into the training loss.

* :class:`EqualWeighting`: the plain sum (TSσBN's default: the method needs no weighting).
* :class:`UncertaintyWeighting`: Kendall et al. (CVPR 2018), a learned log-variance ``s_t`` per
  task, ``Σ_t exp(−s_t) L_t / 2 + s_t / 2`` (the form used by LibMTL and mtan).
* :class:`FixedWeighting`: constant per-task weights given in the config (e.g. Vandenhende et al.'s
  PASCAL-Context weights: segmentation 1, parts 2, saliency 5, edges 50, normals 10).
* :class:`DynamicWeightAverage`: Liu et al. (MTAN, CVPR 2019), ``w_t = T softmax(r_t / τ)`` with
  ``r_t`` the ratio of task ``t``'s mean loss over the last two epochs; weights are 1 for the
  first two epochs.
* :class:`RandomLossWeighting`: Lin et al. (RLW, TMLR 2022), ``w = softmax(z)``, ``z ~ N(0, I)``
  drawn afresh every step (the form of LibMTL).
* :class:`GradNorm`: Chen et al. (ICML 2018), learned weights ``w_t`` (Σ w_t = T) trained so
  that the gradient norms ``G_t = ‖∇_W w_t L_t‖`` on the last shared layer ``W`` approach
  ``mean(G) · r_t^a`` with ``r_t`` task ``t``'s inverse training rate.

A weighting turns the task losses into per-task *objectives* (:meth:`LossWeighting.objectives`,
a ``(T,)`` tensor with its graph) whose sum is the training loss; a gradient method
(:mod:`tasknorm.train.aggregation`) may combine their gradients instead of summing them
(:mod:`tasknorm.train.balancing`). A weighting that needs the shared parameters has an
``attach(backbone)`` method, called once by :class:`~tasknorm.train.MultiTaskModule`; one that
learns from how the losses moved (FAMO) sets ``needs_losses_after_step`` and gets
:meth:`LossWeighting.after_step`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from tasknorm.train.gradients import shared_parameters


class LossWeighting(nn.Module):
    """Turns ``{task: loss}`` into per-task objectives whose sum is the training loss; may hold
    parameters or state (saved with the checkpoint).

    Subclasses override :meth:`weights` (a weighted sum) or :meth:`objectives` (any per-task
    terms, e.g. a learned log-variance, or a surrogate whose gradient is the method's).
    """

    needs_losses_after_step: ClassVar[bool] = False
    """Whether :meth:`after_step` must be called after every optimizer step."""

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        self.tasks = tuple(tasks)

    def weights(self) -> dict[str, float]:
        """The current weight of each task (for logging)."""
        return dict.fromkeys(self.tasks, 1.0)

    def objectives(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The ``(T,)`` per-task objectives, in the order of ``tasks``, with their graph."""
        w = self.weights()
        return torch.stack([w[t] * losses[t] for t in self.tasks])

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        return self.objectives(losses).sum()

    def epoch_end(self, mean_losses: Mapping[str, float]) -> None:
        """Called with each task's mean training loss at the end of every epoch."""

    def after_step(self, losses: Mapping[str, Tensor]) -> None:
        """Called after each optimizer step with the losses of the same batch under the updated
        model, averaged over processes (only when ``needs_losses_after_step``)."""


class EqualWeighting(LossWeighting):
    """Sum of the task losses."""


class FixedWeighting(LossWeighting):
    """Weighted sum with constant ``weights``, one for every task."""

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float]) -> None:
        super().__init__(tasks)
        if set(weights) != set(self.tasks):
            raise ValueError(f"fixed loss weights are given for {sorted(weights)} but the tasks "
                             f"are {sorted(self.tasks)}")
        bad = {t: w for t, w in weights.items() if not 0 <= float(w) < float("inf")}
        if bad:
            raise ValueError(f"fixed loss weights must be finite and non-negative, got {bad}")
        self.fixed = {t: float(weights[t]) for t in self.tasks}

    def weights(self) -> dict[str, float]:
        return dict(self.fixed)


class UncertaintyWeighting(LossWeighting):
    """Homoscedastic-uncertainty weighting with a learned log-variance per task."""

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def weights(self) -> dict[str, float]:
        return {t: 0.5 * float(torch.exp(-s)) for t, s in zip(self.tasks, self.log_vars,
                                                               strict=True)}

    def objectives(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = torch.stack([losses[t] for t in self.tasks])
        return 0.5 * torch.exp(-self.log_vars) * stacked + 0.5 * self.log_vars


class DynamicWeightAverage(LossWeighting):
    """DWA with temperature ``temperature`` (2 in the MTAN paper)."""

    def __init__(self, tasks: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        self.temperature = temperature
        self.register_buffer("history", torch.zeros(0, len(self.tasks)))

    def weights(self) -> dict[str, float]:
        if self.history.size(0) < 2:
            return dict.fromkeys(self.tasks, 1.0)
        ratios = self.history[-1] / self.history[-2]
        w = len(self.tasks) * torch.softmax(ratios / self.temperature, dim=0)
        return {t: float(v) for t, v in zip(self.tasks, w, strict=True)}

    def epoch_end(self, mean_losses: Mapping[str, float]) -> None:
        row = torch.tensor([[mean_losses[t] for t in self.tasks]], dtype=self.history.dtype)
        self.history = torch.cat([self.history, row])[-2:]

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        key = prefix + "history"
        if key in state_dict:
            self.history = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args)


class RandomLossWeighting(LossWeighting):
    """RLW: weights ``softmax(z)`` with ``z ~ N(0, I)`` drawn every step (global RNG, so
    seeded runs repeat)."""

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self.register_buffer("last", torch.full((len(self.tasks),), 1.0 / len(self.tasks)),
                             persistent=False)

    def weights(self) -> dict[str, float]:
        """The weights drawn at the last step."""
        return {t: float(w) for t, w in zip(self.tasks, self.last, strict=True)}

    def objectives(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = torch.stack([losses[t] for t in self.tasks])
        w = torch.softmax(torch.randn(len(self.tasks)), dim=0).to(stacked)
        self.last = w.detach()
        return w * stacked


class GradNorm(LossWeighting):
    """GradNorm with asymmetry ``alpha`` (1.5 in the paper for NYUv2).

    Each step, with ``g_t = ‖∇_W L_t‖`` on the shared parameters ``W`` (no graph kept),
    ``G_t = w_t g_t``, ``r_t = (L_t / L_t(0)) / mean_u(L_u / L_u(0))`` (``L(0)``: the losses of
    the first step) and the target ``mean(G) · r_t^alpha`` (constant), the returned objective is
    ``Σ_t w_t.detach() L_t + Σ_t |G_t − target_t|`` (per task: ``w_t.detach() L_t +
    |G_t − target_t|``): the network learns from the weighted sum, the weights only from the
    second term. Before each step the weights are clamped positive and
    renormalised to sum to ``T``.

    Args:
        tasks: the task names.
        alpha: asymmetry ``a``.
        parameters: names of shared parameters (prefixes) of the backbone; ``None``: its last
            shared layer (:func:`~tasknorm.train.cosreg.last_shared_layer`).
    """

    def __init__(self, tasks: Sequence[str], alpha: float = 1.5,
                 parameters: Sequence[str] | None = None) -> None:
        super().__init__(tasks)
        self.alpha = float(alpha)
        self.names = None if parameters is None else list(parameters)
        self.task_weights = nn.Parameter(torch.ones(len(self.tasks)))
        self.register_buffer("initial", torch.zeros(0))
        self.__dict__["params"] = []

    def attach(self, backbone: nn.Module) -> None:
        """Use the shared parameters of ``backbone``."""
        from tasknorm.train.cosreg import last_shared_layer

        names = self.names if self.names is not None else [last_shared_layer(backbone)]
        self.__dict__["params"] = list(shared_parameters(backbone, names).values())

    def weights(self) -> dict[str, float]:
        return {t: float(w) for t, w in zip(self.tasks, self.task_weights.detach(), strict=True)}

    def objectives(self, losses: Mapping[str, Tensor]) -> Tensor:
        if not self.params:
            raise RuntimeError("GradNorm.attach(backbone) must be called before the first step")
        with torch.no_grad():
            w = self.task_weights.clamp_(min=1e-6)
            w.mul_(len(self.tasks) / w.sum())
        stacked = torch.stack([losses[t] for t in self.tasks])
        if self.initial.numel() == 0:
            self.initial = stacked.detach().clone()
        norms = torch.stack([
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(
                losses[t], self.params, retain_graph=True)]).norm()
            for t in self.tasks]).detach()
        scaled = self.task_weights * norms
        ratios = stacked.detach() / self.initial
        target = (scaled.mean() * (ratios / ratios.mean()) ** self.alpha).detach()
        return self.task_weights.detach() * stacked + (scaled - target).abs()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        key = prefix + "initial"
        if key in state_dict:
            self.initial = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args)


WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "equal": EqualWeighting,
    "fixed": FixedWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "gradnorm": GradNorm,
    "rlw": RandomLossWeighting,
}


def build_weighting(name: str, tasks: Sequence[str], **kwargs: object) -> LossWeighting:
    """The weighting registered as ``name`` for ``tasks``, with its keyword arguments."""
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {name!r}; expected one of "
                         f"{sorted(WEIGHTINGS)}")
    try:
        return WEIGHTINGS[name](tasks, **kwargs)
    except TypeError as error:
        raise ValueError(f"bad arguments {kwargs} for loss weighting {name!r}: {error}") from None
