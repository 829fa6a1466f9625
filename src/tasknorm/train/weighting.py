"""Loss weightings: how per-task losses combine into the training loss.

* :class:`EqualWeighting`: the plain sum (TSσBN's default: the method needs no weighting).
* :class:`UncertaintyWeighting`: Kendall et al. (CVPR 2018), a learned log-variance ``s_t`` per
  task, ``Σ_t exp(−s_t) L_t / 2 + s_t / 2`` (the form used by LibMTL and mtan).
* :class:`FixedWeighting`: constant per-task weights given in the config (e.g. Vandenhende et al.'s
  PASCAL-Context weights: segmentation 1, parts 2, saliency 5, edges 50, normals 10).
* :class:`DynamicWeightAverage`: Liu et al. (MTAN, CVPR 2019), ``w_t = T softmax(r_t / τ)`` with
  ``r_t`` the ratio of task ``t``'s mean loss over the last two epochs; weights are 1 for the
  first two epochs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn


class LossWeighting(nn.Module):
    """Combines ``{task: loss}`` into one scalar; may hold parameters or per-epoch state."""

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        self.tasks = tuple(tasks)

    def weights(self) -> dict[str, float]:
        """The current weight of each task (for logging)."""
        return dict.fromkeys(self.tasks, 1.0)

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        w = self.weights()
        return sum(w[t] * losses[t] for t in self.tasks)

    def epoch_end(self, mean_losses: Mapping[str, float]) -> None:
        """Called with each task's mean training loss at the end of every epoch."""


class EqualWeighting(LossWeighting):
    """Sum of the task losses."""


class FixedWeighting(LossWeighting):
    """Weighted sum with constant ``weights``, one for every task."""

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float]) -> None:
        super().__init__(tasks)
        if set(weights) != set(self.tasks):
            raise ValueError(f"fixed loss weights are given for {sorted(weights)} but the tasks "
                             f"are {sorted(self.tasks)}")
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

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = torch.stack([losses[t] for t in self.tasks])
        return (0.5 * torch.exp(-self.log_vars) * stacked + 0.5 * self.log_vars).sum()


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


WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "equal": EqualWeighting,
    "fixed": FixedWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
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
