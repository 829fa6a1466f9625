"""How the ``tasknorm`` command reports an error: one line on stderr and an exit status.

Library code raises ordinary exceptions whose message names the thing and what was expected
(``ValueError``, ``TypeError``, ``FileNotFoundError``, ...). Every subcommand runs through
:func:`run_command` (the ``main`` of ``compare``, ``prune`` and ``analyze`` through
:func:`command`), which turns the exception that ends it into one line:

* ``tasknorm fit: error: <message>``, exit status 2 (:data:`USAGE_STATUS`): a usage error, i.e.
  an option, file or folder the user gave is wrong (:data:`USAGE_ERRORS`);
* ``tasknorm fit: failed: <message>``, exit status 1 (:data:`FAILURE_STATUS`): the run started
  and failed (a diverged loss, out of memory, ...).

``--debug`` anywhere on the command line, or ``TASKNORM_DEBUG=1``, prints the traceback before
that line.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from lightning.fabric.utilities.exceptions import MisconfigurationException

USAGE_STATUS = 2
FAILURE_STATUS = 1
DEBUG_FLAG = "--debug"
DEBUG_VARIABLE = "TASKNORM_DEBUG"

Main = Callable[[Sequence[str] | None], None]


class UsageError(ValueError):
    """A mistake in what the user asked for: an option, a file or a folder (exit status 2)."""


class RunFailed(RuntimeError):
    """A run that started and could not finish (exit status 1)."""


USAGE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError,
    NotADirectoryError, PermissionError, argparse.ArgumentError, MisconfigurationException)
"""Exceptions that report a usage error; any other one ends a failed run."""
EXPECTED_FAILURES: tuple[type[BaseException], ...] = (RunFailed, ArithmeticError)
"""Failures whose message says it all; any other one is also named by its type."""


class CommandExit(SystemExit):
    """Ends a command whose error line was printed: ``code`` is the exit status and ``str()``
    the line."""

    def __init__(self, status: int, line: str) -> None:
        super().__init__(status)
        self.line = line

    def __str__(self) -> str:
        return self.line


class ArgumentParser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` whose errors are :class:`UsageError` (one line, see
    :func:`run_command`) rather than the usage text followed by the message."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def error_line(error: BaseException, prog: str) -> tuple[int, str]:
    """The exit status and the one line that report ``error`` as coming from ``prog``.

    Example:
        >>> error_line(ValueError("unknown backbone 'x';\\n expected one of ['a']"), "tasknorm fit")
        (2, "tasknorm fit: error: unknown backbone 'x'; expected one of ['a']")
        >>> error_line(FloatingPointError("loss of task 'left' is nan"), "tasknorm fit")
        (1, "tasknorm fit: failed: loss of task 'left' is nan")
        >>> error_line(RuntimeError("CUDA error"), "tasknorm fit")[1]
        'tasknorm fit: failed: RuntimeError: CUDA error (--debug shows the traceback)'
    """
    error = _reported(error)
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, USAGE_ERRORS):
        return USAGE_STATUS, f"{prog}: error: {message}"
    if isinstance(error, EXPECTED_FAILURES):
        return FAILURE_STATUS, f"{prog}: failed: {message}"
    return FAILURE_STATUS, (f"{prog}: failed: {type(error).__name__}: {message} "
                            f"({DEBUG_FLAG} shows the traceback)")


def _reported(error: BaseException) -> BaseException:
    """The exception whose message reports ``error``: jsonargparse re-raises an error of the
    class it instantiates (e.g. a datamodule's) wrapped in its own list of failed
    alternatives; the original says what was wrong."""
    while (error.__cause__ is not None and not isinstance(error, argparse.ArgumentError)
           and error.__traceback__ is not None
           and "jsonargparse" in traceback.extract_tb(error.__traceback__)[-1].filename):
        error = error.__cause__
    return error


def run_command(prog: str, main: Callable[[list[str]], None], argv: Sequence[str]) -> None:
    """Run ``main`` on ``argv`` without ``--debug``; an exception ends the process with its
    :func:`error_line` on stderr and its exit status, after the traceback in debug mode."""
    args = [arg for arg in argv if arg != DEBUG_FLAG]
    debug = len(args) < len(argv) or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    try:
        main(args)
    except Exception as error:
        if debug:
            traceback.print_exc()
        status, line = error_line(error, prog)
        print(line, file=sys.stderr, flush=True)
        raise CommandExit(status, line) from None


def command(prog: str) -> Callable[[Callable[[list[str]], None]], Main]:
    """Decorate the ``main(argv)`` of a subcommand so that it reports errors through
    :func:`run_command` (``argv=None``: the process's arguments)."""

    def decorate(main: Callable[[list[str]], None]) -> Main:
        @functools.wraps(main)
        def wrapped(argv: Sequence[str] | None = None) -> None:
            run_command(prog, main, list(sys.argv[1:] if argv is None else argv))

        return wrapped

    return decorate
