"""A model package (tools/export.py --package DIR): the folder a site copies to predict offline.

    DIR/model.onnx         the exported model (mask2former/export/onnx_file.py), its metadata enough to predict
    DIR/model.safetensors  the PyTorch weights under the model's key names (MODEL.WEIGHTS loads it as it is)
    DIR/config.yaml        the config the model is built from (its weight paths cleared: the weights are here)
    DIR/classes.json       {"class_names": [...], "palette": [[r, g, b], ...]}
    DIR/README.md          the model card (model_card.py)

The layout follows Hugging Face's (config, model.safetensors, card) without needing the network. DIR follows the
output-folder contract (docs/output_folders.md): a new or empty folder, or one this tool made for the same model;
`Predictor(DIR)` loads it.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fvcore.common.config import CfgNode

from ..errors import UserError
from ..inference.onnx_model import metadata_json, read_metadata
from ..io.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..utils.output_folder import file_sha1, owned_output_folder
from .model_card import CardFacts, Speed, licence_identifier, model_card, run_facts, starting_licences

TOOL = "export.py"
ONNX_FILE, WEIGHTS_FILE, CONFIG_FILE, CLASSES_FILE, CARD_FILE = (
    "model.onnx",
    "model.safetensors",
    "config.yaml",
    "classes.json",
    "README.md",
)
PACKAGE_FILES = (ONNX_FILE, WEIGHTS_FILE, CONFIG_FILE, CLASSES_FILE, CARD_FILE)
SPEED_RUNS = 3  # timed onnxruntime runs (after one warm-up) for the card's images/s


class PackageError(UserError):
    """A folder that is not a whole model package; the message names the folder, the missing file and the fix."""


@dataclass
class PackageResult:
    """What `write_package` wrote: the folder, the export's check against PyTorch and the measured speed."""

    folder: Path
    export: object  # onnx_file.ExportResult
    speed: Speed


def write_package(
    cfg: CfgNode,
    weights: str,
    out_dir: str | Path,
    *,
    size: tuple[int, int] | None = None,
    dynamic: bool = False,
    opset: int = 18,
    images: Sequence[np.ndarray] | None = None,
    command: str | None = None,
    overwrite: bool | None = None,
    inputs: Mapping[str, str | Path | None] | None = None,
    config_name: str = "",
) -> PackageResult:
    """Export `cfg` with `weights` into the package folder `out_dir` (layout above); `command` is the command line
    the card names (default: this process's), `overwrite` export.py's --overwrite (None: no such flag), `inputs`
    ({option: path}) what else the command reads (the config file), never replaced; `config_name` the config
    file's name the card's title gives (default: the run's config when `weights` are a run's model_final.pth).
    `size`, `dynamic`, `opset` and `images` are export_onnx's: a fixed-size file predicts the views of that size
    only (the photos that the test resize brings to it); `dynamic` takes any size."""
    from .onnx_file import export_onnx

    job = package_job(cfg, weights, size, dynamic, opset)
    inputs = {"--weights": weights, **(inputs or {})}
    options = {"what": "--package", "writes": PACKAGE_FILES, "overwrite": overwrite, "inputs": inputs}
    with owned_output_folder(out_dir, TOOL, job, **options) as folder:
        run = run_facts(Path(weights))
        licences = starting_licences(Path(weights), run)
        export = export_onnx(cfg, weights, folder.path / ONNX_FILE, size, dynamic, opset, images)
        folder.record(ONNX_FILE)
        metadata = read_metadata(folder.path / ONNX_FILE)
        class_names, palette = metadata_json(metadata, "class_names"), metadata_json(metadata, "palette")
        atomic_write_json(folder.path / CLASSES_FILE, {"class_names": class_names, "palette": palette}, indent=2)
        folder.record(CLASSES_FILE)
        stored = {"class_names": json.dumps(class_names), "license": licence_identifier(licences)}
        tensors = write_weights(cfg, weights, folder.path / WEIGHTS_FILE, stored)
        folder.record(WEIGHTS_FILE)
        atomic_write_text(folder.path / CONFIG_FILE, package_config(cfg).dump())
        folder.record(CONFIG_FILE)
        speed = measure_speed(folder.path / ONNX_FILE, timed_size(metadata))
        facts = CardFacts(
            cfg,
            Path(weights),
            class_names,
            palette,
            metadata,
            export,
            speed,
            tensors,
            command or this_command(),
            run,
            licences,
            config_name or (f"{run.folder.name}/config.yaml" if run is not None else ""),
        )
        atomic_write_text(folder.path / CARD_FILE, model_card(facts))
        folder.record(CARD_FILE)
    return PackageResult(Path(out_dir), export, speed)


def package_job(cfg: CfgNode, weights: str, size: tuple[int, int] | None, dynamic: bool, opset: int) -> dict:
    """What a package's files depend on (its owner record's job): the config, the weights by path and content,
    the export's size, dynamic flag and opset."""
    path = Path(weights).expanduser()
    return {
        "output": "package",
        "config_sha1": _text_sha1(cfg.dump()),
        "weights": str(path.resolve()),
        "weights_sha1": file_sha1(path) if path.is_file() else None,
        "size": list(size) if size else None,
        "dynamic": bool(dynamic),
        "opset": int(opset),
    }


def _text_sha1(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def write_weights(cfg: CfgNode, weights: str, path: Path, metadata: dict[str, str]) -> int:
    """The model's state dict (the config's model with `weights`, every tensor checked to fit) as a safetensors
    file, atomically, with `metadata` added to its own; returns the number of tensors."""
    from safetensors.torch import save

    from ..inference.predictor import load_prediction_model

    model = load_prediction_model(cfg, weights, "cpu", allow_pickle=bool(cfg.MODEL.ALLOW_PICKLE))
    state = model.state_dict()
    # safetensors refuses tensors that share memory: each one detached, contiguous and of its own storage
    own = {key: state[key].detach().clone(memory_format=torch.contiguous_format) for key in sorted(state)}
    sha = file_sha1(weights)
    stored = {"format": "pt", "source": Path(weights).name, "source_sha1": sha, **metadata}
    atomic_write_bytes(path, save(own, metadata=stored))
    return len(own)


def package_config(cfg: CfgNode) -> CfgNode:
    """The config as the package holds it: its weight paths (files on the exporting machine) cleared."""
    config = cfg.clone()
    config.defrost()
    config.MODEL.WEIGHTS = ""
    config.MODEL.BACKBONE.WEIGHTS = ""
    return config


def timed_size(metadata: dict[str, str]) -> tuple[int, int]:
    """The input size the speed is measured at: the export's fixed size, else MIN_SIZE_TEST square."""
    fixed = metadata_json(metadata, "input_size")
    if fixed:
        return int(fixed[0]), int(fixed[1])
    side = int(metadata.get("min_size_test", "512"))
    return side, side


def measure_speed(onnx_path: Path, size: tuple[int, int], runs: int = SPEED_RUNS) -> Speed:
    """CPU images/s of the exported file with onnxruntime's defaults, timed over `runs` random images of `size`
    after one warm-up run."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = np.random.default_rng(0)
    images = [generator.uniform(0, 255, (1, 3, *size)).astype(np.float32) for _ in range(runs + 1)]
    session.run(None, {"image": images[0]})
    start = time.perf_counter()
    for image in images[1:]:
        session.run(None, {"image": image})
    seconds = time.perf_counter() - start
    cpu = platform.processor() or platform.machine()
    return Speed(runs / seconds, size, f"onnxruntime {onnxruntime.__version__}", _cpu_count(), cpu)


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def this_command() -> str:
    """This process's command line as a user would type it (`python tools/export.py ...`)."""
    argv = list(sys.argv)
    prefix = ["python"] if argv and argv[0].endswith(".py") else []
    return shlex.join(prefix + argv)


def read_package_classes(folder: str | Path) -> tuple[list[str], list[list[int]]]:
    """The class names and palette of a package folder (classes.json), after checking it is a whole package."""
    folder = check_package(folder)
    path = folder / CLASSES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names, palette = list(data["class_names"]), [list(map(int, colour)) for colour in data["palette"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PackageError(f"{path} is not a package's classes.json ({error}): export the package again") from None
    if len(names) != len(palette) or not names:
        raise PackageError(f"{path}: {len(names)} class names but {len(palette)} colours: export the package again")
    return names, palette


def check_package(folder: str | Path) -> Path:
    """`folder` when it holds every file of a package; PackageError naming the first missing one otherwise."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise PackageError(f"model package {folder} {what}: give the folder written by tools/export.py --package")
    if (folder / ONNX_FILE).is_file() and not (folder / CLASSES_FILE).is_file():
        raise PackageError(
            f"{folder} is not a model package (no {CLASSES_FILE}): its {ONNX_FILE} is an export made with --out; "
            f"{MAKE_PACKAGE} (tools/predict.py --weights {folder / ONNX_FILE} runs the file as it is)"
        )
    for name in (ONNX_FILE, CLASSES_FILE):
        if not (folder / name).is_file():
            raise PackageError(f"{folder} is not a model package (no {name}): {MAKE_PACKAGE}")
    return folder


# how a package is made, for messages: into a folder of its own, never into an --out folder
MAKE_PACKAGE = (
    "write one with tools/export.py --config-file CONFIG --weights CHECKPOINT --package NEW_FOLDER (a new folder)"
)


def export_folder_in_the_way(folder: Path) -> str | None:
    """Why `folder` cannot become a package without --overwrite: it holds the model.onnx of an export made with
    --out (a folder of another kind), else None."""
    if (folder / ONNX_FILE).is_file() and not (folder / CLASSES_FILE).is_file():
        return (
            f"--package {folder} holds the {ONNX_FILE} of an export made with --out, not a package: give a new "
            "--package folder (or --overwrite to replace that export)"
        )
    return None
