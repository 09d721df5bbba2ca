"""How every command-line tool ends: a user error is one line on stderr and a non-zero exit, a bug a traceback.

    def main(argv=None):
        return run_tool("predict.py", lambda: predict(parse_args(argv)))

`--debug` anywhere on the command line (or TRASHSEG_DEBUG=1) shows the traceback of a user error too.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from ..errors import UserError, user_message
from .logger import FILE_ONLY

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
    `name: message` and status 2."""
    try:
        return call()
    except (UserError, OSError, RuntimeError) as error:
        message = user_message(error)  # None: a bug (a traceback)
        if message is None or debug_requested(argv):
            raise
        if getattr(error, "logged", False):  # logged already, to stderr and the run's log.txt
            pass
        else:  # the terminal gets `name: message`; a run's log file gets the line too, with its time
            if any(getattr(handler, "_trashseg", False) for handler in logging.getLogger().handlers):
                logging.getLogger(name).error("%s", message, extra=FILE_ONLY)
            print(f"{name}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
