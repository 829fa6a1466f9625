"""Multi-task Δm: the relative gain of a multi-task result over an explicit single-task baseline.

For every metric m of task t with multi-task value M and single-task value B,
``gain = ±(M − B) / B`` with ``+`` when higher is better, so a positive gain is an improvement.
The gains are then averaged in one of three ways, as the public codebases do:

* ``"task"``: average within each task, then over tasks (LibMTL's Δp,
  github.com/median-research-group/LibMTL ``LibMTL/utils.py`` ``count_improvement``).
* ``"metric"``: one average over all metrics of all tasks (CAGrad / Nash-MTL / FAMO Δm,
  github.com/AvivNavon/nash-mtl ``experiments/nyuv2/utils.py`` ``delta_fn``).
* ``"primary"``: one primary metric per task, averaged over tasks (Maninis / Vandenhende,
  github.com/SimonVandenhende/Multi-Task-Learning-PyTorch ``evaluation/evaluate_utils.py``).

Results are in percent. ``positive="better"`` (default) reports improvements as positive numbers;
``positive="worse"`` flips the sign to match tables where "lower Δm is better".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

Pooling = Literal["task", "metric", "primary"]
POOLINGS: tuple[Pooling, ...] = ("task", "metric", "primary")
Results = Mapping[str, Mapping[str, float]]


def delta_m(
    results: Results,
    baseline: Results,
    higher_is_better: Mapping[str, Mapping[str, bool]],
    *,
    pooling: Pooling = "task",
    primary: Mapping[str, str] | None = None,
    positive: Literal["better", "worse"] = "better",
) -> float:
    """Δm in percent of ``results`` against ``baseline``, both ``{task: {metric: value}}``.

    Args:
        results: the multi-task model's metrics.
        baseline: the single-task models' metrics (same tasks and metrics).
        higher_is_better: each metric's direction, ``{task: {metric: bool}}``.
        pooling: ``"task"``, ``"metric"`` or ``"primary"`` (see the module docstring).
        primary: the primary metric of each task (needed for ``"primary"``).
        positive: whether a positive Δm means ``"better"`` or ``"worse"`` than the baseline.

    Example:
        >>> results = {"left": {"acc": 0.90}, "right": {"acc": 0.80, "loss": 0.5}}
        >>> baseline = {"left": {"acc": 0.80}, "right": {"acc": 0.80, "loss": 0.4}}
        >>> directions = {"left": {"acc": True}, "right": {"acc": True, "loss": False}}
        >>> round(delta_m(results, baseline, directions), 6)  # (12.5 + (0 - 25) / 2) / 2
        0.0
        >>> round(delta_m(results, baseline, directions, pooling="metric"), 6)
        -4.166667
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    if positive not in ("better", "worse"):
        raise ValueError(f"positive must be 'better' or 'worse', got {positive!r}")
    if set(results) != set(baseline):
        raise ValueError(f"results have tasks {sorted(results)} but the baseline has "
                         f"{sorted(baseline)}")
    gains: dict[str, list[float]] = {}
    for task, metrics in results.items():
        names = list(metrics)
        if pooling == "primary":
            if primary is None or task not in primary:
                raise ValueError(f"pooling='primary' needs the primary metric of task {task!r}")
            names = [primary[task]]
        gains[task] = [_gain(task, name, results, baseline, higher_is_better) for name in names]
    if pooling == "metric":
        pooled = [g for task_gains in gains.values() for g in task_gains]
        value = sum(pooled) / len(pooled)
    else:
        value = sum(sum(g) / len(g) for g in gains.values()) / len(gains)
    return 100 * value if positive == "better" else -100 * value


def _gain(task: str, metric: str, results: Results, baseline: Results,
          higher_is_better: Mapping[str, Mapping[str, bool]]) -> float:
    try:
        value, base = results[task][metric], baseline[task][metric]
    except KeyError:
        raise ValueError(f"metric {task}/{metric} is missing from the results or the "
                         "baseline") from None
    try:
        higher = higher_is_better[task][metric]
    except KeyError:
        raise ValueError(f"no direction given for metric {task}/{metric}") from None
    if base == 0:
        raise ValueError(f"baseline value of {task}/{metric} is 0; a relative gain is undefined")
    sign = 1.0 if higher else -1.0
    return sign * (value - base) / abs(base)
