"""How every command-line tool ends: a user error is one line on stderr and a non-zero exit, a bug a traceback.

    def main(argv=None):
        return run_tool("predict.py", lambda: predict(parse_args(argv)))

A stop asked for (Ctrl-C, or SIGTERM: a scheduler cancelling the job, `kill`) ends the tool through its `finally`
blocks (its output folder's lock released, no half-written file) with one line and status 2 as well, e.g.
`predict.py: interrupted (Ctrl-C): the run was stopped; run the same command again to finish it`. `--debug`
anywhere on the command line (or TRASHSEG_DEBUG=1) shows the traceback of a user error or a stop too.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from ..errors import UserError, user_message
from .logger import FILE_ONLY
from .processes import sigterm_raises, stopped_message

T = TypeVar("T")

EXIT_USER_ERROR = 2


def debug_requested(argv: list[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("TRASHSEG_DEBUG", "") not in ("", "0")


def strip_debug(argv: list[str] | None) -> list[str]:
    """argv without `--debug` (so argparse parsers need not know it)."""
    argv = sys.argv[1:] if argv is None else argv
    return [arg for arg in argv if arg != "--debug"]


def run_tool(name: str, call: Callable[[], T], argv: list[str] | None = None) -> T:
    """Run `call()`; a UserError (or a missing/forbidden path, a full or read-only disk: `user_message`) exits with
    `name: message` and status 2, and so does a stop (Ctrl-C, SIGTERM: `stopped_message`)."""
    try:
        with sigterm_raises():
            return call()
    except (UserError, OSError, RuntimeError) as error:
        message = user_message(error)  # None: a bug (a traceback)
        if message is None:
            message = stopped_message(error)  # a stop met inside a library, which re-raised it as its own error
        if message is None or debug_requested(argv):
            raise
        _exit_with(name, message, logged=getattr(error, "logged", False))
    except BaseException as stop:  # KeyboardInterrupt, Terminated, or a library's SystemExit while handling one
        message = stopped_message(stop)
        if message is None or debug_requested(argv):
            raise
        _exit_with(name, message, logged=getattr(stop, "logged", False))


def _exit_with(name: str, message: str, logged: bool) -> None:
    """`name: message` on stderr (and into the run's log file, unless it is there already), status 2."""
    if not logged and any(getattr(handler, "_trashseg", False) for handler in logging.getLogger().handlers):
        logging.getLogger(name).error("%s", message, extra=FILE_ONLY)
    print(f"{name}: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR) from None
