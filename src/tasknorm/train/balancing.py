"""One interface for every multi-task balancing method: loss weightings, gradient aggregators
and the hybrids that need both.

A method is two parts, either of which may be plain:

* a :class:`~tasknorm.train.weighting.LossWeighting`: the losses → per-task objectives
  ``(T,)`` (equal weighting: the losses themselves). It may learn (uncertainty weighting), keep
  per-epoch state (DWA) or learn from the losses after the optimizer step (FAMO).
* an :class:`~tasknorm.train.aggregation.Aggregation`: the Jacobian of those objectives on the
  shared parameters → their update (``None``: the sum of the rows, i.e. ordinary
  back-propagation of the summed objectives).

Each training step the module computes the losses and the weighting's objectives; without an
aggregation it back-propagates their sum (Lightning's automatic optimization); with one it takes
one backward pass per task (:func:`~tasknorm.train.gradients.task_jacobian`), hands the Jacobian
and the objectives, both averaged over processes, to the aggregation and writes its update, while
the parameters one task reaches (heads, task-specific norms) get the gradient of the summed
objectives. Both parts are submodules of the training module, so their state is saved with every
checkpoint and restored on resume.

:data:`METHODS` maps every name to a builder; ``Balancing(weighting=NAME)`` takes any of them,
``Balancing(weighting=W, aggregator=A)`` combines a loss weighting with a gradient method (the
aggregator then sees the Jacobian of the weighted objectives).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from torchjd.aggregation import MoDoWeighting, SDMGradWeighting

from tasknorm.train.aggregation import (
    AGGREGATORS,
    Aggregation,
    ThreeBatchWeighting,
    TorchJDAggregation,
    build_aggregator,
)
from tasknorm.train.scalarization import (
    FastAdaptiveWeighting,
    GeometricLossStrategy,
    ImpartialLossScaling,
    LogLosses,
    SmoothTchebycheff,
)
from tasknorm.train.tracked import GradientMagnitudeBalancing, MoCo
from tasknorm.train.weighting import WEIGHTINGS, EqualWeighting, LossWeighting


@dataclass
class Balance:
    """A built method: its loss side and its gradient side (``None``: plain back-propagation)."""

    weighting: LossWeighting
    aggregation: Aggregation | None = None


Builder = Callable[..., Balance]
"""``(tasks, **kwargs)`` → :class:`Balance`."""


def _loss_method(name: str, tasks: Sequence[str], **kwargs: Any) -> Balance:
    return Balance(WEIGHTINGS[name](tasks, **kwargs))


def _torchjd_aggregator(name: str, tasks: Sequence[str], **kwargs: Any) -> Balance:
    return Balance(EqualWeighting(tasks),
                   TorchJDAggregation(build_aggregator(name, len(tasks), **kwargs)))


def _three_batch(weighting: Callable[..., Any], tasks: Sequence[str], **kwargs: Any) -> Balance:
    return Balance(EqualWeighting(tasks), ThreeBatchWeighting(weighting(**kwargs)))


METHODS: dict[str, Builder] = {
    **{name: partial(_loss_method, name) for name in WEIGHTINGS},
    **{name: partial(_torchjd_aggregator, name) for name in AGGREGATORS},
    "modo": partial(_three_batch, MoDoWeighting),
    "sdmgrad": partial(_three_batch, SDMGradWeighting),
    "gls": lambda tasks, **kw: Balance(GeometricLossStrategy(tasks, **kw)),
    "stch": lambda tasks, **kw: Balance(SmoothTchebycheff(tasks, **kw)),
    "famo": lambda tasks, **kw: Balance(FastAdaptiveWeighting(tasks, **kw)),
    "imtl_l": lambda tasks, **kw: Balance(ImpartialLossScaling(tasks, **kw)),
    "imtl": lambda tasks, **kw: Balance(
        ImpartialLossScaling(tasks),
        TorchJDAggregation(build_aggregator("imtl_g", len(tasks), **kw))),
    "db_mtl": lambda tasks, **kw: Balance(LogLosses(tasks), GradientMagnitudeBalancing(**kw)),
    "moco": lambda tasks, **kw: Balance(EqualWeighting(tasks), MoCo(len(tasks), **kw)),
}
"""Every balancing method by name (see ``docs/training.md`` for papers and options)."""


def check_method(name: str, what: str = "balancing method") -> None:
    """Raise ``ValueError`` if ``name`` is not in :data:`METHODS`."""
    if name not in METHODS:
        raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(METHODS)}")


def build_balance(tasks: Sequence[str], weighting: str = "equal",
                  weighting_args: Mapping[str, Any] | None = None,
                  aggregator: str | None = None,
                  aggregator_args: Mapping[str, Any] | None = None) -> Balance:
    """The method ``weighting`` (any name of :data:`METHODS`), optionally with the gradient side
    of ``aggregator`` in place of plain back-propagation.

    Example:
        >>> balance = build_balance(["left", "right"], "uncertainty", aggregator="upgrad")
        >>> type(balance.weighting).__name__, type(balance.aggregation).__name__
        ('UncertaintyWeighting', 'TorchJDAggregation')
        >>> build_balance(["left", "right"], "pcgrad", aggregator="upgrad")
        Traceback (most recent call last):
        ...
        ValueError: balancing method 'pcgrad' already combines the gradients; it cannot be ...
    """
    check_method(weighting)
    balance = _build(weighting, tasks, weighting_args)
    if aggregator is None:
        return balance
    check_method(aggregator, "aggregator")
    if balance.aggregation is not None:
        raise ValueError(f"balancing method {weighting!r} already combines the gradients; it "
                         f"cannot be combined with aggregator {aggregator!r}")
    gradient = _build(aggregator, tasks, aggregator_args)
    if gradient.aggregation is None or not isinstance(gradient.weighting, EqualWeighting):
        raise ValueError(f"aggregator {aggregator!r} is a loss weighting, not a gradient method; "
                         f"give it as the weighting")
    return Balance(balance.weighting, gradient.aggregation)


def _build(name: str, tasks: Sequence[str], kwargs: Mapping[str, Any] | None) -> Balance:
    try:
        return METHODS[name](tuple(tasks), **dict(kwargs or {}))
    except TypeError as error:
        raise ValueError(f"bad arguments {dict(kwargs or {})} for balancing method {name!r}: "
                         f"{error}") from None
