"""Logging set-up shared by the command-line tools."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(output_dir: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to stderr (and to OUTPUT_DIR/log.txt when given) with timestamps; returns the root logger."""
    root = logging.getLogger()
    root.setLevel(level)
    formatter = logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    if not any(getattr(h, "_trashseg", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        handler._trashseg = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    if output_dir is not None:
        path = Path(output_dir) / "log.txt"
        if not any(getattr(h, "baseFilename", None) == str(path.resolve()) for h in root.handlers):
            path.parent.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(path)
            file_handler.setFormatter(formatter)
            root.addHandler(file_handler)
    return root
