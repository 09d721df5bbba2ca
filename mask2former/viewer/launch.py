"""Starting the viewer: the `streamlit run` command line, bound to this machine only.

`python tools/viewer.py --data-root DIR ...` runs `streamlit run tools/viewer.py` with
--server.address 127.0.0.1 and --server.headless true; `streamlit run` started from the repository root reads
the same address from .streamlit/config.toml. Whatever started it, the app checks the address it was bound to and
refuses to show anything unless it is a loopback one.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

LOOPBACK_NAMES = {"localhost"}
DEFAULT_PORT = 8501


def is_loopback(address: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"; False for unset (all interfaces), 0.0.0.0 and others."""
    if not address:
        return False
    if address.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def bind_problem(address: str | None) -> str | None:
    """None when `address` is a loopback address; else the message the app shows instead of the data."""
    if is_loopback(address):
        return None
    shown = address or "all interfaces"
    return (
        f"The viewer is bound to {shown}, so other machines could reach it; it only serves localhost. "
        "Start it with `python tools/viewer.py --data-root DIR ...` (binds 127.0.0.1), or add "
        "`--server.address 127.0.0.1` to `streamlit run`. From another machine, use an SSH tunnel "
        "(ssh -L 8501:127.0.0.1:8501 HOST)."
    )


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
