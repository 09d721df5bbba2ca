"""Logging set-up shared by the command-line tools."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import USER_OS_ERRORS, UserError


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (a test's capture, a replaced stream), never to
    a stream that was closed after the handler was made."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def setup_logging(
    output_dir: str | Path | None = None, level: int = logging.INFO, file_name: str = "log.txt"
) -> logging.Logger:
    """Log to stderr (and to OUTPUT_DIR/`file_name` when given) with timestamps; returns the root logger."""
    root = logging.getLogger()
    root.setLevel(level)
    formatter = logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    if not any(getattr(h, "_trashseg", False) for h in root.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(formatter)
        handler._trashseg = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    if output_dir is not None:
        path = Path(output_dir) / file_name
        if not any(getattr(h, "baseFilename", None) == str(path.resolve()) for h in root.handlers):
            path.parent.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(path)
            file_handler.setFormatter(formatter)
            root.addHandler(file_handler)
    return root


@contextmanager
def logging_to(output_dir: str | Path, file_name: str = "log.txt") -> Iterator[logging.Logger]:
    """`setup_logging(output_dir)` for the length of a tool's run; OUTPUT_DIR/log.txt (`file_name`) is closed
    afterwards, so a tool called repeatedly in one process (tests, the pseudo-label loop) leaves no file handler
    behind."""
    root = setup_logging(output_dir, file_name=file_name)
    log_file = str((Path(output_dir) / file_name).resolve())
    try:
        yield root
    except (UserError, *USER_OS_ERRORS) as error:  # into log.txt too, while open; run_tool prints nothing more
        logging.getLogger(Path(sys.argv[0]).name or "trashseg").error("%s", str(error) or type(error).__name__)
        error.logged = True  # type: ignore[attr-defined]
        raise
    finally:
        for handler in [h for h in root.handlers if getattr(h, "baseFilename", None) == log_file]:
            root.removeHandler(handler)
            handler.close()
