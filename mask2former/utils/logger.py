"""Logging set-up shared by the command-line tools."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError, user_message
from .processes import stopped_message


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (a test's capture, a replaced stream), never to
    a stream that was closed after the handler was made."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.addFilter(lambda record: not getattr(record, "file_only", False))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


# `logger.info(line, extra=FILE_ONLY)`: into the run's log file only, for a line the tool prints on the terminal
# itself (a summary on stdout, an error as `tool.py: message`).
FILE_ONLY = {"file_only": True}


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
    except BaseException as error:  # a user error or a stop: into log.txt while open; run_tool prints it
        message = user_message(error) if isinstance(error, (UserError, OSError, RuntimeError)) else None
        message = message if message is not None else stopped_message(error)
        if message is not None:
            logging.getLogger(Path(sys.argv[0]).name or "trashseg").error("%s", message, extra=FILE_ONLY)
            error.logged = True  # type: ignore[attr-defined]
        raise
    finally:
        for handler in [h for h in root.handlers if getattr(h, "baseFilename", None) == log_file]:
            root.removeHandler(handler)
            handler.close()


# Library lines a run has no use for, silenced once here (messages are matched from their start):
_CHATTER_WARNINGS = (
    # torch 2.14 deprecated LeafSpec, which lightning 2.6's _pytree still builds on every step
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # DDP's broadcast_buffers=False is kept on purpose (Mask2Former's: no buffer sync, not even at init, which its
    # replacement forward_sync_buffers=False would still do)
    r"`broadcast_buffers` is deprecated",
    # --resume into a run's own checkpoints/ folder is what it is for
    r"Checkpoint directory .* exists and is not empty",
)
_CHATTER_LOGGERS = ("lightning.pytorch", "lightning.fabric")


def quiet_library_chatter() -> None:
    """Lightning's info lines (device table, "Tip: ... litlogger/litmodels", "`Trainer.fit` stopped", restore
    notices: the run logs its own device, resume and end lines) and known deprecation warnings off; Lightning's
    warnings and errors stay."""
    for name in _CHATTER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in _CHATTER_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
