"""The ``tasknorm`` command.

* ``tasknorm fit [--config FILE|NAME] [--key value ...]``: train (default: TSσBN on
  MultiDigits), test the best validation checkpoint, print a per-task table and where everything
  went. ``NAME`` is a packaged config (:func:`tasknorm.fit.packaged_configs`), e.g. ``scenes``.
* ``tasknorm test CKPT``: test a checkpoint with the configuration of the run that wrote it.
* ``tasknorm validate`` / ``tasknorm test --config ... --ckpt_path ...``: LightningCLI as usual.
* ``tasknorm compare``: see :mod:`tasknorm.compare`.
* ``tasknorm prune``: train, prune and fine-tune σBN+RNI / L1 / uniform models, see
  :mod:`tasknorm.prune.command`.
* ``tasknorm analyze CKPT``: gate and gradient analysis report, see
  :mod:`tasknorm.analysis.command`.
* ``tasknorm simplify CKPT --out DIR``: a trained TSσBN model turned into a cheaper task tree,
  see :mod:`tasknorm.simplify.command`.

Every subcommand reports an error in one line with exit status 2 (usage error) or 1 (failed
run), see :mod:`tasknorm.errors`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tasknorm.errors import DEBUG_FLAG, run_command
from tasknorm.fit import TasknormCLI, resolve_configs, run_cli, run_config


def _test_args(argv: list[str]) -> list[str]:
    """``test CKPT [...]`` → ``test --config <run>/config.yaml --ckpt_path CKPT [...]`` (the
    config of :func:`~tasknorm.fit.run_config`), with its configuration and results in
    ``<run>/test-<checkpoint name>/`` and no logger, so that nothing the run wrote is touched."""
    checkpoint = Path(argv[1])
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    config = run_config(checkpoint)
    folder = config.parent / f"test-{checkpoint.stem}"
    if folder.exists():
        raise FileExistsError(f"{folder} exists already; move it away to test again")
    return ["test", "--config", str(config), "--ckpt_path", str(checkpoint),
            "--trainer.logger", "false", "--trainer.default_root_dir", str(folder), *argv[2:]]


def main(argv: Sequence[str] | None = None) -> None:
    """The ``tasknorm`` command (``argv=None``: the process's arguments, and Lightning's
    progress messages then go to stdout, so that stderr holds warnings and errors only)."""
    if argv is None:
        _lightning_messages_to_stdout()
    args = list(sys.argv[1:] if argv is None else argv)
    name = next((arg for arg in args if arg != DEBUG_FLAG), "fit")
    if name == "compare":
        from tasknorm.compare import main as subcommand
    elif name == "prune":
        from tasknorm.prune.command import main as subcommand
    elif name == "analyze":
        from tasknorm.analysis.command import main as subcommand
    elif name == "simplify":
        from tasknorm.simplify.command import main as subcommand
    else:
        prog = f"tasknorm {name}" if name in TasknormCLI.subcommands() else "tasknorm"
        run_command(prog, _run_lightning, args)
        return
    args.remove(name)
    subcommand(args)


def _run_lightning(args: list[str]) -> None:
    """``fit``, ``validate`` and ``test`` (also ``test CKPT``): LightningCLI."""
    if len(args) >= 2 and args[0] == "test" and not args[1].startswith("-"):
        args = _test_args(args)
    run_cli(resolve_configs(args) or ["fit"])


def _lightning_messages_to_stdout() -> None:
    """Send Lightning's info messages ("Seed set to 0", "GPU available: ...") to stdout."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
                handler.setStream(sys.stdout)
