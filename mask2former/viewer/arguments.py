"""What the viewer accepts: its paths (checked before anything is served), the models among them, and the address
it is bound to (a loopback one only). Used by the launcher and by the page alike."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
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
    """A --data-root, --pred, --config-file or --model path that does not exist (or is not what it should be)."""


def check_arguments(args: argparse.Namespace) -> None:
    """Every path given exists: --data-root a folder, --pred, --config-file and --model files or folders; each
    --model is a model the Predictor takes (`model_sources`)."""
    if not Path(args.data_root).expanduser().is_dir():
        raise ViewerArgumentError(
            f"--data-root {args.data_root}: not a folder (give the folder that holds the COCO jsons)"
        )
    for flag, paths in (("--pred", args.pred), ("--config-file", args.config_file), ("--model", args.model)):
        for path in paths:
            if not Path(path).expanduser().exists():
                raise ViewerArgumentError(f"{flag} {path}: not found (check the path)")
    model_sources(args.model, args.config_file)


# What a --model folder holds (mask2former.inference.predictor): a package, or a finished run.
PACKAGE_MODEL, RUN_CONFIG, RUN_WEIGHTS = "model.onnx", "config.yaml", "model_final.pth"
CONFIG_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ModelSource:
    """A model of the Model page: `source` and `weights` as `Predictor(source, weights)` takes them (weights only
    for a checkpoint, whose source is then a --config-file), `label` as the page lists it, and `files`, the files
    the Predictor reads (their signatures key its cache)."""

    label: str
    source: Path
    weights: Path | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        if self.weights is not None:
            return self.source, self.weights
        if self.source.is_dir() and (self.source / PACKAGE_MODEL).is_file():
            return (self.source / PACKAGE_MODEL,)
        if self.source.is_dir():
            return self.source / RUN_CONFIG, self.source / RUN_WEIGHTS
        return (self.source,)


def model_sources(models: Sequence[str | Path], configs: Sequence[str | Path]) -> list[ModelSource]:
    """The models the --model paths name: a model package or a run folder (a folder), an exported .onnx file, or a
    checkpoint, offered once with each --config-file (it needs one). A folder that is neither, a config file
    given as a model and a checkpoint without a --config-file are refused in one line."""
    sources = []
    for given in models:
        path = Path(given).expanduser()
        if path.is_dir():
            if (path / PACKAGE_MODEL).is_file():
                sources.append(ModelSource(f"{given} (model package)", path))
            elif (path / RUN_CONFIG).is_file() and (path / RUN_WEIGHTS).is_file():
                sources.append(ModelSource(f"{given} (run folder)", path))
            else:
                raise ViewerArgumentError(
                    f"--model {given}: a folder with neither {PACKAGE_MODEL} (a model package) nor {RUN_CONFIG} and "
                    f"{RUN_WEIGHTS} (a finished run): give a package, a run folder, an .onnx file or a checkpoint"
                )
        elif path.suffix.lower() == ".onnx":
            sources.append(ModelSource(f"{given} (ONNX)", path))
        elif path.suffix.lower() in CONFIG_SUFFIXES:
            raise ViewerArgumentError(
                f"--model {given}: a config file: give it with --config-file, and its checkpoint with --model"
            )
        elif not configs:
            raise ViewerArgumentError(
                f"--model {given}: a checkpoint needs its config: add --config-file CFG (or give the run folder)"
            )
        else:
            sources += [ModelSource(f"{given} with {config}", Path(config).expanduser(), path) for config in configs]
    return sources
