"""The option groups of :class:`~tasknorm.train.MultiTaskModule`: :class:`Optimization`,
:class:`Gates`, :class:`Balancing` and :class:`Regularization`, each checking its own values
when built, and :func:`group_options`, which reads configs, command lines and checkpoints that
give the options by their old flat names (``lr``, ``gate_init_mean``, ``cosreg_alpha``, ...).

In a ``tasknorm fit`` config each group is a mapping under ``model``::

    model:
      backbone: digits_cnn
      optimization: {optimizer: sgd, lr: 0.05, norm_lr_mult: 10.0}
      gates: {mean: 2.0}

and on the command line ``--model.optimization.lr 0.1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Literal

from tasknorm.nn.convert import GATE_INIT_MEAN, GATE_INIT_STD, GateInit
from tasknorm.train.balancing import check_method

OPTIMIZERS = ("sgd", "adam")
SCHEDULERS = ("cosine", "poly", "step", "none")
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: 0 <= v < math.inf, "non-negative"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "non-negative"),
    "norm_lr_mult": (lambda v: 0 <= v < math.inf, "non-negative"),
    "norm_weight_decay": (lambda v: 0 <= v < math.inf, "non-negative"),
    "heads_lr_mult": (lambda v: 0 <= v < math.inf, "non-negative"),
    "architecture_lr_mult": (lambda v: 0 <= v < math.inf, "non-negative"),
    "step_size": (lambda v: v >= 1, "at least 1"),
    "step_gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "cosreg_alpha": (lambda v: 0 <= v < math.inf, "non-negative"),
}
"""Valid values of the numeric options (finite, hence not NaN): a test and its wording."""


def check_ranges(values: dict[str, float]) -> None:
    """Raise ValueError naming the first option of ``values`` outside its :data:`RANGES`.

    Example:
        >>> check_ranges({"lr": 0.05, "momentum": 0.9})
        >>> check_ranges({"lr": 0.05, "momentum": 1.5})
        Traceback (most recent call last):
        ...
        ValueError: momentum must be in [0, 1), got 1.5
    """
    for name, value in values.items():
        inside, wording = RANGES[name]
        if not inside(value):
            raise ValueError(f"{name} must be {wording}, got {value}")


@dataclass(frozen=True)
class Optimization:
    """The optimizer, its parameter groups and the learning-rate schedule.

    Args:
        optimizer: ``sgd`` (momentum, Nesterov) or ``adam``.
        lr: base learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay of non-normalization parameters.
        norm_lr_mult: learning-rate multiplier of normalization parameters (σBN recipe: 10).
        norm_weight_decay: weight decay of normalization parameters (σBN recipe: 0).
        heads_lr_mult: learning-rate multiplier of the task heads (their norm layers included,
            which get ``norm_weight_decay``); see :func:`tasknorm.nn.param_groups`.
        architecture_lr_mult: learning-rate multiplier of the parameters that choose the
            network's structure (:meth:`~tasknorm.models.MultiTaskModel.architecture_parameters`:
            Learning to Branch's branching logits; other architectures have none). 10: at the
            base rate the logits of ``ltb`` stay near uniform for 60 epochs on
            ``multidigits_contested`` (``docs/results.md``).
        scheduler: ``cosine`` (over ``max_epochs``), ``poly`` (``(1 − epoch / max_epochs)^0.9``,
            Vandenhende et al.), ``step`` (multiply the learning rate by ``step_gamma`` every
            ``step_size`` epochs: mtan / LibMTL's StepLR(100, 0.5)) or ``none``.
        step_size: epochs between learning-rate drops of ``scheduler="step"``.
        step_gamma: factor of each drop of ``scheduler="step"``.
    """

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    norm_lr_mult: float = 10.0
    norm_weight_decay: float = 0.0
    heads_lr_mult: float = 1.0
    architecture_lr_mult: float = 10.0
    scheduler: Literal["cosine", "poly", "step", "none"] = "cosine"
    step_size: int = 100
    step_gamma: float = 0.5

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of "
                             f"{OPTIMIZERS}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; expected one of "
                             f"{SCHEDULERS}")
        check_ranges({name: getattr(self, name) for name in (
            "lr", "momentum", "weight_decay", "norm_lr_mult", "norm_weight_decay",
            "heads_lr_mult", "architecture_lr_mult", "step_size", "step_gamma")})


@dataclass(frozen=True)
class Gates:
    """How the σ gates of a converted backbone start (checked by :func:`tasknorm.nn.convert`,
    which uses them).

    Args:
        init: ``normal`` (logits drawn from N(``mean``, ``std``²)) or ``pretrained`` (from the
            pretrained BatchNorm scales).
        mean: mean of the gate logits with ``init="normal"``.
        std: their standard deviation.
    """

    init: GateInit = "normal"
    mean: float = GATE_INIT_MEAN
    std: float = GATE_INIT_STD


@dataclass(frozen=True)
class Balancing:
    """How the tasks' losses or gradients are combined (:mod:`tasknorm.train.balancing`).

    Args:
        weighting: a balancing method in :data:`tasknorm.train.METHODS`: a loss weighting
            (``equal``, ``uncertainty``, ``dwa``, ``famo``, ...), a gradient method (``upgrad``,
            ``pcgrad``, ``gradvac``, ``modo``, ...) or a hybrid (``imtl``, ``db_mtl``).
        weighting_args: keyword arguments of the method, e.g. ``{"weights": {...}}`` for
            ``fixed``.
        aggregator: a gradient method applied to the Jacobian of the weighting's objectives on
            all shared backbone parameters, or ``None``; combines with a loss weighting (e.g.
            ``weighting: uncertainty, aggregator: upgrad``).
        aggregator_args: keyword arguments of the aggregator, e.g. ``{"c": 0.4}`` for ``cagrad``.
    """

    weighting: str = "equal"
    weighting_args: dict[str, Any] | None = None
    aggregator: str | None = None
    aggregator_args: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_method(self.weighting)
        if self.aggregator is not None:
            check_method(self.aggregator, "aggregator")


@dataclass(frozen=True)
class Regularization:
    """Penalties added to the training loss.

    Args:
        cosreg_alpha: strength of the CosReg penalty; 0 turns it off.
        cosreg_args: other arguments of :class:`~tasknorm.train.CosReg` (``loss_scaled``,
            ``parameters``, ``eps``, ``max_grad_ratio``, ``warmup_steps``).
    """

    cosreg_alpha: float = 0.0
    cosreg_args: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_ranges({"cosreg_alpha": self.cosreg_alpha})


GROUPS: dict[str, type] = {"optimization": Optimization, "gates": Gates,
                           "balancing": Balancing, "regularization": Regularization}
"""Each option group of :class:`~tasknorm.train.MultiTaskModule` by its argument name."""
FLAT_NAMES: dict[str, tuple[str, str]] = {
    **{field.name: ("optimization", field.name) for field in fields(Optimization)},
    "gate_init": ("gates", "init"), "gate_init_mean": ("gates", "mean"),
    "gate_init_std": ("gates", "std"),
    **{field.name: ("balancing", field.name) for field in fields(Balancing)},
    **{field.name: ("regularization", field.name) for field in fields(Regularization)},
}
"""The old flat name of each grouped option → its group and field."""


def grouped_name(name: str) -> str:
    """``group.field`` for an old flat option name, any other name as it is.

    Example:
        >>> grouped_name("gate_init_mean"), grouped_name("optimization.lr"), grouped_name("head")
        ('gates.mean', 'optimization.lr', 'head')
    """
    return ".".join(FLAT_NAMES[name]) if name in FLAT_NAMES else name


def group_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` (a module's keyword arguments, or a config's ``model`` section) with every
    old flat name moved into its group, as a mapping of fields; the groups may be given as
    mappings or as their classes. Other keys are kept as they are.

    Raises:
        ValueError: an option is given both by its flat name and in its group.

    Example:
        >>> group_options({"backbone": "digits_cnn", "lr": 0.1, "gates": {"mean": 0.0}})
        {'backbone': 'digits_cnn', 'gates': {'mean': 0.0}, 'optimization': {'lr': 0.1}}
    """
    grouped = {key: value for key, value in options.items() if key not in FLAT_NAMES}
    for name, value in options.items():
        if name not in FLAT_NAMES:
            continue
        group, field = FLAT_NAMES[name]
        fields_given = group_fields(grouped.get(group))
        if field in fields_given:
            raise ValueError(f"model option {name} is given twice: as {name} and as "
                             f"{group}.{field}")
        grouped[group] = {**fields_given, field: value}
    return grouped


def group_fields(value: Any) -> dict[str, Any]:
    """The fields given in a group's value: a mapping, a group object or ``None`` (none)."""
    if value is None:
        return {}
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"an option group must be a mapping of its fields, got {value!r}")


def build_group(name: str, value: Any) -> Any:
    """The group ``name`` of :data:`GROUPS` from ``value``: the group itself, or a mapping of
    its fields (as saved in checkpoints); an unknown field raises TypeError naming it."""
    cls = GROUPS[name]
    if isinstance(value, cls):
        return value
    given = group_fields(value)
    known = [field.name for field in fields(cls)]
    unknown = [key for key in given if key not in known]
    if unknown:
        raise TypeError(f"unknown {name} option(s) {unknown}; expected some of {known}")
    return cls(**given)


def build_groups(groups: Mapping[str, Any], flat: Mapping[str, Any]) -> dict[str, Any]:
    """Every group of :data:`GROUPS` from ``groups`` (each the group itself, a mapping of its
    fields or ``None``), with the options ``flat`` gives by their old flat names set over them
    (how checkpoints written before the groups existed are read).

    Raises:
        TypeError: a key of ``flat`` is no old flat name, or a group has an unknown field.
    """
    unknown = [name for name in flat if name not in FLAT_NAMES]
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}: neither an option nor an "
                        f"old flat option name ({', '.join(FLAT_NAMES)})")
    given = group_options(flat)
    return {name: build_group(name, {**group_fields(groups.get(name)), **given.get(name, {})})
            for name in GROUPS}
