"""Capacity allocation: how much of a layer (or of the network) each task uses.

Two views per task: the soft one, the mean gate over channels, and the hard one, the fraction of
*active* channels, those whose gate exceeds a threshold τ. τ = 0.5 is the default: it is the
sigmoid of a raw gate of 0, the midpoint of the gate's range, where a channel passes more than half
of its normalized signal; the σBN recipe draws raw gates from N(0, 1), so at initialisation every
task has about half of each layer active. Since no rule for τ is published, :func:`tau_sweep`
shows how the answer moves with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tasknorm.analysis.gates import Gates, concatenated

DEFAULT_TAU = 0.5
"""Default activity threshold: ``sigmoid(0)``, the midpoint of the gate's range."""

DEFAULT_TAUS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""τ values of the sensitivity sweep: 0.05, 0.10, ..., 0.95."""


def check_tau(tau: float) -> float:
    """``tau`` if it lies in [0, 1] (a gate is a sigmoid), else ``ValueError``."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must lie in [0, 1] (gates are sigmoids), got {tau}")
    return float(tau)


def active(gates: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """Boolean ``(T, C)``: channel ``c`` is active for task ``t`` when its gate exceeds ``tau``.

    Example:
        >>> import torch
        >>> active(torch.tensor([[0.2, 0.7], [0.5, 0.9]]))
        tensor([[False,  True],
                [False,  True]])
    """
    return gates > check_tau(tau)


def mean_gate(gates: Tensor) -> Tensor:
    """Per task, the mean gate over channels ``(T,)``: the soft share of the layer it uses."""
    return gates.float().mean(dim=1)


def active_fraction(gates: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """Per task, the fraction of channels that are active ``(T,)``.

    Example:
        >>> import torch
        >>> active_fraction(torch.tensor([[0.9, 0.9, 0.1, 0.1], [0.9, 0.1, 0.1, 0.1]]))
        tensor([0.5000, 0.2500])
    """
    return active(gates, tau).float().mean(dim=1)


def capacity(gates: Gates, tau: float = DEFAULT_TAU) -> dict[str, Tensor]:
    """Capacity allocation per task and layer, and over the whole network.

    Returns:
        ``mean_gate`` and ``active_fraction`` ``(T, L)`` with one column per layer (in the
        order of ``gates``), and ``network_mean_gate``, ``network_active_fraction`` ``(T,)`` over
        all channels of all layers (a channel-weighted average of the columns).

    Example:
        >>> import torch
        >>> gates = {"a": torch.tensor([[0.9, 0.9], [0.1, 0.9]]), "b": torch.tensor([[0.1], [0.1]])}
        >>> result = capacity(gates)
        >>> result["active_fraction"]
        tensor([[1.0000, 0.0000],
                [0.5000, 0.0000]])
        >>> result["network_active_fraction"]
        tensor([0.6667, 0.3333])
    """
    check_tau(tau)
    whole = concatenated(gates)
    return {
        "mean_gate": torch.stack([mean_gate(g) for g in gates.values()], dim=1),
        "active_fraction": torch.stack([active_fraction(g, tau) for g in gates.values()], dim=1),
        "network_mean_gate": mean_gate(whole),
        "network_active_fraction": active_fraction(whole, tau),
    }


def tau_sweep(gates: Tensor, taus: Sequence[float] = DEFAULT_TAUS) -> Tensor:
    """Active fraction per task for each threshold: ``(len(taus), T)``, non-increasing in τ.

    Example:
        >>> import torch
        >>> tau_sweep(torch.tensor([[0.2, 0.6, 0.8]]), taus=[0.1, 0.5, 0.7, 0.9])
        tensor([[1.0000],
                [0.6667],
                [0.3333],
                [0.0000]])
    """
    return torch.stack([active_fraction(gates, tau) for tau in taus])
