"""All numbers of the analysis as one JSON-ready dict: the figures are drawn from it and it is
written as ``report.json``, so every number shown can be reused.

:func:`analyze_gates` covers the gates (matrices, capacity, τ sweep, specialization,
similarities, clustering); :func:`analyze_gradients` a :class:`~tasknorm.train.callbacks.
GradientCosineMonitor` history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from tasknorm.analysis.capacity import DEFAULT_TAU, DEFAULT_TAUS, capacity, check_tau, tau_sweep
from tasknorm.analysis.gates import Gates, check_gates, concatenated, short_names
from tasknorm.analysis.relationships import (
    active_jaccard,
    chance_cosine,
    chance_jaccard,
    cluster_tasks,
    gate_cosine,
    pairwise,
)
from tasknorm.analysis.specialization import category_sweep, specialization
from tasknorm.train.gradients import cosine_statistics

DIGITS = 4


def analyze_gates(gates: Gates, tasks: Sequence[str], tau: float = DEFAULT_TAU,
                  taus: Sequence[float] = DEFAULT_TAUS, linkage: str = "average"
                  ) -> dict[str, Any]:
    """Every gate-derived quantity of a model, JSON-ready (floats rounded to 4 digits).

    Args:
        gates: ``{layer: (T, C)}`` (:func:`~tasknorm.analysis.gate_matrices`).
        tasks: the task names, one per row.
        tau: activity threshold.
        taus: thresholds of the sensitivity sweep.
        linkage: scipy linkage of the task clustering (on ``1 −`` network gate cosine).

    Returns:
        ``tasks``, ``tau``, ``layers`` (name, short name, channels, gates), ``capacity``,
        ``tau_sweep``, ``specialization``, ``similarity`` (network and per layer) and
        ``clustering`` (``None`` for a single task).

    Example:
        >>> import torch
        >>> gates = {"conv.bn": torch.tensor([[0.9, 0.9, 0.1, 0.1], [0.1, 0.1, 0.9, 0.9]])}
        >>> report = analyze_gates(gates, ["left", "right"])
        >>> report["specialization"]["network"]["exclusive"]
        4
        >>> report["similarity"]["network"]["jaccard"]
        [[1.0, 0.0], [0.0, 1.0]]
    """
    tasks = list(tasks)
    check_gates(gates, tasks)
    tau = check_tau(tau)
    for value in taus:
        check_tau(value)
    names = list(gates)
    whole = concatenated(gates)
    shares = capacity(gates, tau)
    sweep = category_sweep(whole, taus)
    cosine = gate_cosine(whole)
    return {
        "tasks": tasks,
        "tau": tau,
        "layers": [{"name": name, "short_name": short, "channels": int(g.size(1)),
                    "gates": _rounded(g)}
                   for (name, g), short in zip(gates.items(), short_names(names), strict=True)],
        "capacity": {
            "mean_gate": _by_task(shares["mean_gate"], tasks),
            "active_fraction": _by_task(shares["active_fraction"], tasks),
            "network": {"mean_gate": _by_task(shares["network_mean_gate"], tasks),
                        "active_fraction": _by_task(shares["network_active_fraction"], tasks)},
        },
        "tau_sweep": {
            "taus": [float(t) for t in taus],
            "active_fraction": _by_task(tau_sweep(whole, taus).T, tasks),
            **{name: _rounded(values) for name, values in sweep.items()},
        },
        "specialization": {
            "layers": {name: _counts(specialization(g, tau), tasks) for name, g in gates.items()},
            "network": _counts(specialization(whole, tau), tasks),
        },
        "similarity": {
            "network": {"cosine": _rounded(cosine),
                        "cosine_chance": _rounded(chance_cosine(whole)),
                        "jaccard": _rounded(active_jaccard(whole, tau)),
                        "jaccard_chance": _rounded(chance_jaccard(whole, tau))},
            "layers": {name: {"cosine": _pairs(gate_cosine(g), tasks),
                              "cosine_chance": _pairs(chance_cosine(g), tasks),
                              "jaccard": _pairs(active_jaccard(g, tau), tasks),
                              "jaccard_chance": _pairs(chance_jaccard(g, tau), tasks)}
                       for name, g in gates.items()},
        },
        "clustering": _clustering(cosine, linkage) if len(tasks) > 1 else None,
    }


def analyze_gradients(history: Mapping[str, Any]) -> dict[str, Any]:
    """Statistics of a :class:`~tasknorm.train.callbacks.GradientCosineMonitor` history.

    Returns:
        the history's settings and ``steps``; per pair (``"a-b"``) the ``cosine`` and
        ``rolling_std`` series and ``mean``, ``std``, ``first_epoch_std`` (σ over the first
        epoch's measurements, which the CosReg paper found to predict final accuracy) and
        ``final_rolling_std``; the same under ``overall`` for all pairs pooled.

    Example:
        >>> history = {"tasks": ["a", "b"], "pairs": [["a", "b"]], "step": [0, 1, 2],
        ...            "epoch": [0, 0, 1], "cosine": [[0.5], [-0.5], [0.0]],
        ...            "every_n_steps": 1, "window": 2, "parameters": ["w"], "num_parameters": 3}
        >>> summary = analyze_gradients(history)
        >>> summary["pairs"]["a-b"]["first_epoch_std"], summary["pairs"]["a-b"]["rolling_std"]
        (0.5, [0.0, 0.5, 0.25])
    """
    if not history.get("step"):
        raise ValueError("the gradient-cosine history has no measurement")
    cosines = torch.tensor(history["cosine"], dtype=torch.float64)
    epochs = torch.tensor(history["epoch"])
    first = cosines[epochs == epochs.min()]
    stats = cosine_statistics(cosines, int(history["window"]))
    pairs = {}
    for k, (a, b) in enumerate(history["pairs"]):
        pairs[f"{a}-{b}"] = {
            "cosine": _rounded(cosines[:, k]),
            "rolling_std": _rounded(stats["rolling_std"][:, k]),
            "mean": _round(stats["mean"][k]),
            "std": _round(stats["std"][k]),
            "first_epoch_std": _round(first[:, k].std(correction=0)),
            "final_rolling_std": _round(stats["rolling_std"][-1, k]),
        }
    return {
        "tasks": list(history["tasks"]),
        "every_n_steps": int(history["every_n_steps"]),
        "window": int(history["window"]),
        "num_parameters": int(history["num_parameters"]),
        "parameters": list(history["parameters"]),
        "steps": [int(s) for s in history["step"]],
        "epochs": [int(e) for e in history["epoch"]],
        "pairs": pairs,
        "overall": {
            "mean_cosine": _rounded(cosines.mean(dim=1)),
            "rolling_std": _rounded(stats["overall_rolling_std"]),
            "mean": _round(stats["overall_mean"]),
            "std": _round(stats["overall_std"]),
            "first_epoch_std": _round(first.std(correction=0)),
            "final_rolling_std": _round(stats["overall_rolling_std"][-1]),
        },
    }


def _clustering(cosine: Tensor, linkage: str) -> dict[str, Any]:
    result = cluster_tasks(cosine, linkage)
    return {"measure": "1 - network gate cosine", "linkage_method": linkage,
            "linkage": _rounded(torch.tensor(result["linkage"])), "order": result["order"]}


def _pairs(matrix: Tensor, tasks: list[str]) -> dict[str, float | None]:
    """:func:`~tasknorm.analysis.relationships.pairwise`, rounded."""
    return {pair: None if value is None else round(value, DIGITS)
            for pair, value in pairwise(matrix, tasks).items()}


def _counts(result: dict[str, Tensor], tasks: list[str]) -> dict[str, Any]:
    return {
        "channels": int(result["by_k"].sum()),
        "unused": int(result["unused"]),
        "exclusive": int(result["exclusive"]),
        "shared": int(result["shared"]),
        "shared_by_all": int(result["shared_by_all"]),
        "by_k": [int(n) for n in result["by_k"]],
        "exclusive_per_task": {t: int(n) for t, n in zip(tasks, result["exclusive_per_task"],
                                                         strict=True)},
    }


def _by_task(values: Tensor, tasks: list[str]) -> dict[str, Any]:
    """Row ``t`` of ``values`` under task ``t``'s name (a number or a list)."""
    return {t: _rounded(row) for t, row in zip(tasks, values, strict=True)}


def _round(value: Tensor | float) -> float | None:
    number = float(value)
    return None if number != number else round(number, DIGITS)


def _rounded(values: Tensor) -> Any:
    """Nested lists of rounded floats (``None`` for NaN), or one float for a 0-d tensor."""
    wide = values.detach().double()
    rounded = wide.round(decimals=DIGITS).tolist()
    return _without_nan(rounded) if torch.isnan(wide).any() else rounded


def _without_nan(value: Any) -> Any:
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    return None if value != value else value
