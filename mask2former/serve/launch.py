"""tools/serve.py's command line and its one call: load a model package and serve it with uvicorn.

The socket is bound here, before uvicorn starts, so that a port in use is one line (and `--port 0` takes any free
port; the line printed says which). A host that is not a loopback address needs --allow-remote: the service has
no authentication, so any machine that reaches it can use it.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import socket
import sys
from pathlib import Path

from ..errors import UserError
from ..utils.cli import run_tool, strip_debug
from ..utils.processes import Terminated
from .app import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES, create_app

TOOL = "serve.py"
DEFAULT_PORT = 8000


class ServeError(UserError):
    """Arguments the service cannot start with; the message names the argument and what to give."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/serve.py",
        description="Serve a model package over HTTP: POST /predict (an image -> its label map as an indexed PNG, "
        "or ?format=json: the pixel fraction of each class), GET /health. Uploads stay in memory.",
    )
    parser.add_argument("--package", required=True, metavar="DIR", help="a folder written by tools/export.py --package")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0: any free port, printed)")
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow a --host that other machines reach (no authentication)"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
        help="largest upload accepted, in MiB (default %(default)g)",
    )
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=DEFAULT_MAX_PIXELS / 1e6,
        help="largest image accepted, in millions of pixels, judged from its header (default %(default)g)",
    )
    parser.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(strip_debug(argv))


def main(argv: list[str] | None = None) -> None:
    """tools/serve.py's command: a user error is one line and exit status 2."""
    run_tool(TOOL, lambda: serve(parse_args(argv)), argv)


def serve(args: argparse.Namespace) -> None:
    """Check the arguments, bind the socket, load the package, and serve until Ctrl-C."""
    check_arguments(args)
    sock = bind(args.host, args.port)
    app = load_app(args)
    host, port = sock.getsockname()[:2]
    print(f"serving {args.package} on http://{_url_host(host)}:{port} (POST /predict, GET /health); Ctrl-C stops")
    sys.stdout.flush()
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    # uvicorn shuts down gracefully, then raises the Ctrl-C (or SIGTERM: run_tool's Terminated) again
    with contextlib.suppress(KeyboardInterrupt, Terminated):
        server.run(sockets=[sock])
    print("stopped")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse a folder that is not a model package, a non-loopback --host without --allow-remote (and warn with
    it), and limits that are not positive."""
    from ..export.package import check_package

    check_package(args.package)
    if not is_loopback(args.host):
        if not args.allow_remote:
            raise ServeError(
                f"--host {args.host} is not a loopback address and the service has no authentication: add "
                "--allow-remote to let other machines use it, or leave --host out (127.0.0.1)"
            )
        print(
            f"{TOOL}: warning: serving on {args.host}: any machine that reaches this port can use the model",
            file=sys.stderr,
        )
    for name in ("max_upload_mb", "max_megapixels"):
        if not getattr(args, name) > 0:
            raise ServeError(f"--{name.replace('_', '-')} {getattr(args, name)} must be above 0")
    if not 0 <= args.port <= 65535:
        raise ServeError(f"--port {args.port} is not a port number (0..65535; 0: any free port)")


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only: localhost or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only known by resolving it, which may change
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; one line naming them when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port} ({error.strerror or error}): give another --port or --host"
        ) from None
    return sock


def load_app(args: argparse.Namespace):  # noqa: ANN201  (a FastAPI app; fastapi is imported by app.py)
    """The app around the package's Predictor, with its classes and colours from classes.json."""
    from ..export.package import read_package_classes
    from ..inference.predictor import Predictor

    package = Path(args.package)
    class_names, palette = read_package_classes(package)
    predictor = Predictor(str(package), runtime=args.runtime)
    return create_app(
        predictor,
        class_names=class_names,
        palette=palette,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=int(args.max_megapixels * 1e6),
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
