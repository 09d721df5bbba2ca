"""`python -m mask2former.commands.predict ...`: tools/predict.py, with the plug-ins TRASHSEG_PLUGINS names."""

from __future__ import annotations

from pathlib import Path

from ..config.plugins import import_plugins_from_environment
from ..pipeline.predict import parse_args, predict
from ..utils.cli import run_tool, strip_debug

# at import, not in main: predict's worker processes are spawned and import this module again
import_plugins_from_environment()


def main(argv: list[str] | None = None) -> Path:
    """tools/predict.py's command: a user error is one line and exit status 2."""
    return run_tool("predict.py", lambda: predict(parse_args(strip_debug(argv))), argv)


if __name__ == "__main__":
    main()
