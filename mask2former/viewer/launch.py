"""Starting the viewer: `start` is tools/viewer.py's one call, both from a shell and inside `streamlit run`.

`python tools/viewer.py --data-root DIR ...` checks the arguments (a missing path is one line and exit status 2)
and becomes `streamlit run tools/viewer.py` with --server.address 127.0.0.1 and --server.headless true; inside
Streamlit the same script draws the page (mask2former/viewer/app.py). `streamlit run` started from the
repository root reads the same address from .streamlit/config.toml. Whatever started it, the page checks the
address it was bound to and refuses to show anything unless it is a loopback one.

This module does not import streamlit (the launcher starts in a fraction of a second); only app.py does.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from ..errors import UserError
from ..utils.cli import run_tool, strip_debug
from .arguments import check_arguments

DEFAULT_PORT = 8501


def streamlit_command(script: str | Path, viewer_args: list[str], port: int = DEFAULT_PORT) -> list[str]:
    """The command that serves `script` on 127.0.0.1:`port`, headless, passing `viewer_args` to it."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(script),
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
        "--",
        *viewer_args,
    ]


# The packages the pages import (streamlit brings the others; requirements.txt pins it).
VIEWER_PACKAGES = ("streamlit", "pandas", "pyarrow", "altair")


class ViewerPackagesError(UserError):
    """A package the viewer's pages need is not installed."""


def missing_packages() -> list[str]:
    """The VIEWER_PACKAGES that cannot be imported here (looked up, not imported: the launcher stays fast)."""
    missing = []
    for name in VIEWER_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def packages_problem() -> str | None:
    """None when the viewer's packages are installed; else the line that says what to install."""
    missing = missing_packages()
    if not missing:
        return None
    return (
        f"the viewer needs {', '.join(missing)}, not installed for {sys.executable}: install "
        f"{'it' if len(missing) == 1 else 'them'} (pip install {' '.join(missing)}, or pip install -r "
        "requirements.txt, whose streamlit brings pandas, pyarrow and altair)"
    )


def in_streamlit() -> bool:
    """Whether this code runs inside a Streamlit script run (`streamlit run`, or AppTest)."""
    scriptrunner = sys.modules.get("streamlit.runtime.scriptrunner")  # never loaded outside Streamlit
    return scriptrunner is not None and scriptrunner.get_script_run_ctx(suppress_warning=True) is not None


def serve(script: str | Path, viewer_args: list[str], port: int) -> int:
    """Run `streamlit run script` on 127.0.0.1:`port` (on POSIX this process becomes the server)."""
    command = streamlit_command(Path(script).resolve(), viewer_args, port)
    print(f"viewer: http://127.0.0.1:{port}  (Ctrl-C stops it)", flush=True)
    if os.name == "posix":  # become the server: signals (Ctrl-C, SIGTERM) reach it directly
        os.execv(command[0], command)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130


def start(parser: argparse.ArgumentParser, script: str | Path, argv: list[str] | None = None) -> None:
    """The viewer's entry point (`script` is tools/viewer.py, `argv` default sys.argv[1:]).

    Inside Streamlit: draw one run of the page. From a shell: check the arguments, then serve `script` on
    127.0.0.1 (exits with its status; a bad argument exits 2 with one line, --debug shows the traceback).
    """
    raw = sys.argv[1:] if argv is None else list(argv)
    viewer_args = strip_debug(raw)
    if in_streamlit():
        problem = packages_problem()
        if problem is not None:  # the page says it once, instead of a traceback on every page
            import streamlit as st

            st.error(f"Cannot start: {problem}")
            return
        from .app import show

        show(parser, viewer_args)
        return

    def check_and_serve() -> int:
        args = parser.parse_args(viewer_args)
        check_arguments(args)
        problem = packages_problem()
        if problem is not None:
            raise ViewerPackagesError(problem)
        return serve(script, viewer_args, args.port)

    sys.exit(run_tool(Path(script).name, check_and_serve, raw))
