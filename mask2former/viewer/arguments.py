"""What the viewer accepts: its paths (checked before anything is served) and the address it is bound to (a
loopback one only). Used by the launcher and by the page alike."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from ..errors import UserError

LOOPBACK_NAMES = {"localhost"}


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


class ViewerArgumentError(UserError):
    """A --data-root, --pred or --config-file path that does not exist (or is not what it should be)."""


def check_arguments(args: argparse.Namespace) -> None:
    """Every path given exists: --data-root a folder, --pred and --config-file files or folders."""
    if not Path(args.data_root).expanduser().is_dir():
        raise ViewerArgumentError(
            f"--data-root {args.data_root}: not a folder (give the folder that holds the COCO jsons)"
        )
    for flag, paths in (("--pred", args.pred), ("--config-file", args.config_file)):
        for path in paths:
            if not Path(path).expanduser().exists():
                raise ViewerArgumentError(f"{flag} {path}: not found (check the path)")
