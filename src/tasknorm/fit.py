"""The LightningCLI behind ``tasknorm fit``, ``validate`` and ``test`` (:class:`TasknormCLI`,
:func:`run_cli`), the packaged configs and how a run's test results are reported. The command
itself (subcommands, errors) is :mod:`tasknorm.cli`; :mod:`tasknorm.compare` runs fits through
:func:`run_cli`.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import fields
from importlib.resources import files
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from tasknorm.analysis.checkpoint import read_checkpoint
from tasknorm.errors import UsageError
from tasknorm.io import write_json
from tasknorm.train import MultiTaskModule
from tasknorm.train.options import FLAT_NAMES, GROUPS, group_options, grouped_name

CONFIGS = files("tasknorm") / "configs"
DEFAULT_CONFIG = str(CONFIGS / "multidigits.yaml")
SPECIAL_CHECKPOINTS = ("last", "best", "hpc")
"""``--ckpt_path`` values that Lightning resolves to a file itself."""
DATA_LOCATION = ("root", "cache_dir", "num_workers")
"""Data options that say where and how the data is read, not what it is: a checkpoint may be
used with other values."""


def packaged_configs() -> list[str]:
    """Names of the configs shipped with tasknorm (``tasknorm fit --config NAME``)."""
    return sorted(p.name.removesuffix(".yaml") for p in CONFIGS.iterdir()
                  if p.name.endswith(".yaml"))


def resolve_config(value: str) -> str:
    """An existing file as given, else the packaged config named ``value``."""
    if Path(value).is_file():
        return value
    name = value.removesuffix(".yaml")
    if name in packaged_configs():
        return str(CONFIGS / f"{name}.yaml")
    raise UsageError(f"config {value!r} is neither a file nor a packaged config "
                     f"({', '.join(packaged_configs())})")


def parse_results(logged: dict[str, float], stage: str = "test") -> dict[str, dict[str, float]]:
    """``{"test/left/accuracy": v, ...}`` → ``{"left": {"accuracy": v}, ...}``."""
    results: dict[str, dict[str, float]] = {}
    for key, value in logged.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == stage:
            results.setdefault(parts[1], {})[parts[2]] = float(value)
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per task and one column per metric when every task has the
    same metrics, else one row per task and metric.

    Example:
        >>> print(format_table({"left": {"accuracy": 0.5}, "right": {"accuracy": 0.25}}))
        task            accuracy
        left              0.5000
        right             0.2500
        >>> print(format_table({"seg": {"miou": 0.5}, "depth": {"abs_err": 0.25, "rmse": 1.0}}))
        task         metric                value
        seg          miou                 0.5000
        depth        abs_err              0.2500
                     rmse                 1.0000
    """
    metric_sets = {tuple(values) for values in results.values()}
    if len(metric_sets) == 1:
        metrics = sorted(next(iter(metric_sets)))
        header = f"{'task':<12}" + "".join(f"{m:>12}" for m in metrics)
        rows = [f"{task:<12}" + "".join(f"{values[m]:>12.4f}" for m in metrics)
                for task, values in results.items()]
        return "\n".join([header, *rows])
    rows = [f"{'task':<12} {'metric':<16} {'value':>10}"]
    for task, values in results.items():
        for i, (metric, value) in enumerate(values.items()):
            rows.append(f"{task if i == 0 else '':<12} {metric:<16} {value:>10.4f}")
    return "\n".join(rows)


class TasknormCLI(LightningCLI):
    """LightningCLI for :class:`MultiTaskModule`; the datamodule supplies the tasks. Model
    options in ``args`` may also have their old flat names (:func:`grouped_args`)."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True,
                 quiet: bool = False) -> None:
        self.quiet = quiet
        self.results: dict[str, Any] = {}
        # parse errors are raised (and reported in one line by tasknorm.errors), not printed
        # with the usage text
        raising = {"exit_on_error": False}
        super().__init__(
            MultiTaskModule, L.LightningDataModule, subclass_mode_data=True, run=run,
            args=None if args is None else grouped_args(list(args)),
            parser_kwargs={**raising, **{name: raising for name in self.subcommands()}})

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("data.tasks", "model.tasks", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before anything is built: a readable tasknorm checkpoint
        written with the model and data options of this command line
        (:func:`checkpoint_differences`). (LightningCLI's own method would silently replace the
        command line's model options by the checkpoint's.)"""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or path in SPECIAL_CHECKPOINTS or str(path).startswith("registry"):
            return
        checkpoint = read_checkpoint(path)
        self._dump_config()
        differences = checkpoint_differences(checkpoint, self.config_dump)
        if differences:
            raise UsageError(f"checkpoint {path} was written with other options than this "
                             f"command line's: {'; '.join(differences)}. Give the options of "
                             "its run (its config.yaml) or start a new run without --ckpt_path")

    def before_instantiate_classes(self) -> None:
        """Refuse LightningCLI's ``--optimizer`` and ``--lr_scheduler``: they would replace
        :meth:`MultiTaskModule.configure_optimizers` and drop its parameter groups."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        given = [f"--{key}" for key in ("optimizer", "lr_scheduler") if config.get(key)]
        if given:
            raise UsageError(f"{' and '.join(given)} would train every parameter alike, "
                             "dropping the norm and heads parameter groups; use the model's "
                             "options instead: --model.optimization.NAME for optimizer (sgd or "
                             "adam), lr, momentum, weight_decay, norm_lr_mult, "
                             "norm_weight_decay, heads_lr_mult, architecture_lr_mult and "
                             "scheduler (cosine, poly, step or none)")

    def before_fit(self) -> None:
        """Check, before any data is read, that every callback's monitored metric is one the
        module logs (Lightning would find out after the first epoch)."""
        logged = self.model.monitorable_metrics()
        for callback in self.trainer.callbacks:
            monitor = getattr(callback, "monitor", None)
            if monitor is not None and monitor not in logged:
                raise UsageError(f"{type(callback).__name__} monitors {monitor!r}, which is not "
                                 f"logged; expected one of {', '.join(logged)}")

    def instantiate_classes(self) -> None:
        """Instantiate with all loggers sharing one version folder; the saved config keeps
        ``version: null`` so that re-running it starts a new folder."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        loggers = config.trainer.logger
        shared = isinstance(loggers, list) and _share_version(loggers)
        super().instantiate_classes()
        if shared:
            for logger in loggers:
                logger.init_args.version = None

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.interrupted:
            return
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        # the configuration was saved when fitting; testing must not try to save it again
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, SaveConfigCallback)]
        logged = trainer.test(self.model, datamodule=self.datamodule,
                              ckpt_path=best or None, verbose=False)
        self._report(logged[0], best)

    def after_test(self) -> None:
        self._report(dict(self.trainer.callback_metrics), self.config.test.get("ckpt_path") or "")

    def _report(self, logged: dict[str, Any], checkpoint: str) -> None:
        results = parse_results({k: float(v) for k, v in logged.items()})
        log_dir = Path(self.trainer.log_dir or ".")
        self.results = {"test": results, "checkpoint": checkpoint,
                        "log_dir": str(log_dir), "epochs": self.trainer.current_epoch}
        if self.trainer.is_global_zero:
            path = write_json(log_dir / "results.json", self.results)
            if not self.quiet:
                source = f"checkpoint {checkpoint}" if checkpoint else "final model"
                print(f"\nTest split, {source}")
                print(format_table(results))
                print(f"\nresults:    {path}")
                if self.trainer.loggers:
                    print(f"logs:       {log_dir}")
                print(f"checkpoint: {checkpoint or '(none)'}")


def _share_version(loggers: list[Any]) -> bool:
    """Give every logger the first free version number of the first logger's folder (unless
    one has an explicit version), so that all of a run's logs land in one ``version_N``."""
    if any(logger.init_args.get("version") is not None for logger in loggers):
        return False
    first = loggers[0].init_args
    root = Path(first.get("save_dir") or ".") / (first.get("name") or "")
    taken = [int(p.name.split("_")[1]) for p in root.glob("version_*")
             if p.name.split("_")[1].isdigit()]
    version = max(taken, default=-1) + 1
    for logger in loggers:
        logger.init_args.version = version
    return True


def checkpoint_differences(checkpoint: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The model and data options (``model.<key>``, ``data.<key>``) whose values in
    ``config`` (a subcommand's dumped configuration) differ from those ``checkpoint`` was
    written with, each as ``"<option>: <checkpoint value> in the checkpoint, <value> here"``.

    Model options are compared by their grouped names (``model.optimization.lr``), also with a
    checkpoint that saved them by their old flat names; one that either side does not give took
    :class:`MultiTaskModule`'s default. Data options are compared when the checkpoint records
    them, except :data:`DATA_LOCATION`.

    Example:
        >>> checkpoint = {"hyper_parameters": {"architecture": "task_sigma", "lr": 0.05},
        ...               "datamodule_hyper_parameters": {"variant": "left_right"}}
        >>> config = {"model": {"architecture": "hard", "optimization": {"lr": 0.1}},
        ...           "data": {"init_args": {"variant": "even_odd", "num_workers": 2}}}
        >>> for difference in checkpoint_differences(checkpoint, config):
        ...     print(difference)
        model.architecture: 'task_sigma' in the checkpoint, 'hard' here
        model.optimization.lr: 0.05 in the checkpoint, 0.1 here
        data.variant: 'left_right' in the checkpoint, 'even_odd' here
    """
    saved = model_options(checkpoint.get("hyper_parameters") or {})
    given = model_options(config.get("model") or {})
    pairs = [(f"model.{name}", saved[name], given[name]) for name in saved]
    saved_data = checkpoint.get("datamodule_hyper_parameters")
    if saved_data:
        data = config.get("data") or {}
        if "_class_path" in saved_data:
            pairs.append(("data.class_path", saved_data["_class_path"], data.get("class_path")))
        pairs += [(f"data.{key}", saved_data[key], value)
                  for key, value in (data.get("init_args") or {}).items()
                  if key in saved_data and key not in DATA_LOCATION]
    return [f"{option}: {old!r} in the checkpoint, {new!r} here"
            for option, old, new in pairs if _plain(old) != _plain(new)]


def model_defaults() -> dict[str, Any]:
    """Every option of :class:`MultiTaskModule` but ``tasks``, by its grouped name
    (``backbone``, ``optimization.lr``, ``gates.mean``, ...), with its default."""
    defaults: dict[str, Any] = {}
    for name, parameter in inspect.signature(MultiTaskModule).parameters.items():
        if name in GROUPS:
            defaults.update({f"{name}.{field.name}": field.default
                             for field in fields(GROUPS[name])})
        elif name != "tasks" and parameter.kind is not parameter.VAR_KEYWORD:
            defaults[name] = parameter.default
    return defaults


def model_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`model_defaults` with the values ``options`` gives (a ``model`` config section or
    a checkpoint's hyper-parameters, grouped or by the old flat names); other keys are
    ignored."""
    values = model_defaults()
    for key, value in group_options(options).items():
        items = value.items() if key in GROUPS and isinstance(value, Mapping) else ()
        for name, item in [(key, value), *((f"{key}.{field}", i) for field, i in items)]:
            if name in values:
                values[name] = item
    return values


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists, as in a dumped configuration."""
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def resolve_configs(args: list[str]) -> list[str]:
    """Replace the value of every ``--config`` option by :func:`resolve_config`'s path."""
    resolved = list(args)
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            resolved[i + 1] = resolve_config(args[i + 1])
        elif arg.startswith("--config="):
            resolved[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    return resolved


def grouped_args(args: list[str]) -> list[str]:
    """``args`` with the model options given by their old flat names
    (:data:`~tasknorm.train.options.FLAT_NAMES`) grouped: ``--model.lr 0.1`` →
    ``--model.optimization.lr 0.1``, and a ``--config`` (file or YAML text) whose ``model``
    section has them → YAML text of that config with them grouped
    (:func:`~tasknorm.train.options.group_options`). Other arguments are kept as they are."""
    grouped = []
    for i, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if name.startswith("--model.") and name.removeprefix("--model.") in FLAT_NAMES:
            arg = f"--model.{grouped_name(name.removeprefix('--model.'))}{equals}{value}"
        elif name == "--config" and equals:
            arg = f"--config={_grouped_config(value)}"
        elif i > 0 and args[i - 1] == "--config":
            arg = _grouped_config(arg)
        grouped.append(arg)
    return grouped


def _grouped_config(value: str) -> str:
    """A ``--config`` value as it is, or, if its ``model`` section gives options by their old
    flat names, YAML text of the config with them grouped."""
    try:
        text = Path(value).read_text() if Path(value).is_file() else value
        config = yaml.safe_load(text)
    except (OSError, yaml.YAMLError):
        return value  # jsonargparse reports it
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not FLAT_NAMES.keys() & model.keys():
        return value
    return yaml.safe_dump({**config, "model": group_options(model)}, sort_keys=False)


def run_config(checkpoint: Path) -> Path:
    """The ``config.yaml`` of the run that wrote ``checkpoint``: beside it (``tasknorm
    simplify``'s layout) or one folder up (``<run>/checkpoints/<name>.ckpt``, ``tasknorm fit``'s).

    Raises:
        FileNotFoundError: neither exists.
    """
    configs = [folder / "config.yaml" for folder in (checkpoint.parent, checkpoint.parent.parent)]
    config = next((path for path in configs if path.is_file()), None)
    if config is None:
        raise FileNotFoundError(f"no config.yaml of the run beside {checkpoint} (looked for "
                                f"{' and '.join(map(str, configs))}); pass --config explicitly")
    return config


def run_cli(args: list[str], quiet: bool = False) -> TasknormCLI:
    """Run :class:`TasknormCLI` on ``args`` (a subcommand and its options); without a
    ``--config`` the MultiDigits default config is used. (It is not a default config file of
    the parser, because those are merged under every other config and would leak into it.)"""
    if args[:1] in (["fit"], ["validate"], ["test"]) and not any(
            a == "--config" or a.startswith("--config=") for a in args):
        args = [args[0], "--config", DEFAULT_CONFIG, *args[1:]]

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        # testing restores a checkpoint without its run's logger; ModelCheckpoint's bookkeeping
        # of the other checkpoints is not needed then
        warnings.filterwarnings("ignore", message="The dirpath has changed from")
        return TasknormCLI(args, quiet=quiet)
