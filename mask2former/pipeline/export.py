"""Export a trained model to ONNX (tools/export.py).

    python tools/export.py --config-file configs/quickstart.yaml --weights output/demo/train/model_final.pth \\
        --out output/export [--size H W | --dynamic-size] [--opset 18] [--images DATA/val.json] [KEY VALUE ...]

Writes OUT/model.onnx: the model's whole inference path (input normalisation, backbone, pixel decoder, decoder,
semantic inference) from a float32 1 x 3 x H x W image (0..255, INPUT.FORMAT order) to 1 x K x H x W class
probabilities, with the class names, palette, input size, normalisation, config and the weights' sha256 in its
metadata (mask2former/inference/onnx_model.py). --size H W fixes the input size (default: INPUT.MIN_SIZE_TEST
squared); --dynamic-size takes any size. After writing, onnxruntime runs the file on a few images (random ones,
or up to four of --images: a COCO json or a folder of photos) and the largest difference to PyTorch's
probabilities is printed; above the tolerance (1e-4) the tool says so, exits non-zero and keeps no model.onnx.
OUT is export's own (docs/output_folders.md): a new or empty folder, or one export made for the same job (written
again); another job's folder is refused unless --overwrite, any other folder always. Put KEY VALUE config
overrides last.

--package DIR instead of --out writes a model package (mask2former/export/package.py): DIR/model.onnx, checked
the same way, with model.safetensors, config.yaml, classes.json and a model card (README.md), the folder that
`Predictor(DIR)` and tools/serve.py load; DIR follows the same folder rules.

--int8 --calibration JSON_OR_FOLDER also writes OUT/model_int8.onnx: onnxruntime's static INT8 quantization of
model.onnx (mask2former/export/quantize.py), calibrated on up to 32 of the photos (evenly spread over the json's
images or the folder's sorted files), with the same metadata; Predictor and tools/predict.py run it as model.onnx.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import numpy as np
from fvcore.common.config import CfgNode

from ..config import load_config
from ..errors import UserError
from ..export.onnx_file import DEFAULT_OPSET, ExportResult, check_export_options, export_onnx
from ..export.package import PackageResult, export_folder_in_the_way, write_package
from ..export.quantize import calibration_photos, quantize_onnx
from ..io.images import IMAGE_EXTENSIONS, read_image
from ..modeling import register_all  # noqa: F401  (every model family's config keys and classes)
from ..utils.output_folder import file_sha1
from .output_job import announce, output_job

logger = logging.getLogger("export")

TOOL = "export.py"
MODEL_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
CHECK_IMAGES = 4  # the most --images photos checked
CALIBRATION_IMAGES = 32  # the most --calibration photos the INT8 quantization is calibrated on
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


class ExportError(UserError):
    """A problem with export's command line or inputs; the message says which."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the model's config")
    parser.add_argument("--weights", required=True, help="the checkpoint (.pth, .ckpt, .safetensors)")
    parser.add_argument("--out", help="output folder: OUT/model.onnx (nothing is written outside it)")
    parser.add_argument(
        "--size", nargs=2, type=int, metavar=("H", "W"), help="fixed input size (default: MIN_SIZE_TEST)"
    )
    parser.add_argument("--dynamic-size", action="store_true", help="accept any input height and width")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default %(default)s, >= 17)")
    parser.add_argument("--images", help="a COCO json or a folder of photos to check the file on (default: random)")
    parser.add_argument("--overwrite", action="store_true", help="replace what export wrote in OUT for another job")
    parser.add_argument("--package", metavar="DIR", help="instead of --out: write a model package folder")
    parser.add_argument("--int8", action="store_true", help="also write OUT/model_int8.onnx (needs --calibration)")
    parser.add_argument("--calibration", help="a COCO json or a folder of photos to calibrate --int8 on")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (last)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; anything after the options must be KEY VALUE config overrides."""
    args = build_parser().parse_args(argv)
    args.opts = [item for item in (args.opts or []) if item != "--"]
    if (args.out is None) == (args.package is None):
        raise ExportError("give one of --out DIR (model.onnx) and --package DIR (a model package)")
    if args.int8 and (not args.calibration or args.package):
        raise ExportError("--int8 needs --out DIR and --calibration JSON_OR_FOLDER (photos to calibrate on)")
    if args.calibration and not args.int8:
        raise ExportError("--calibration is for --int8: add --int8, or leave --calibration out")
    if args.opts and not _CONFIG_KEY.match(args.opts[0]):
        raise ExportError(f"unexpected argument {args.opts[0]!r}: config overrides are KEY VALUE pairs, given last")
    return args


def export(args: argparse.Namespace) -> ExportResult | PackageResult:
    """Run the command: check the inputs, claim OUT, write and check OUT/model.onnx, print the result."""
    config_file, weights = _existing(args.config_file, "--config-file"), _existing(args.weights, "--weights")
    cfg = load_config(str(config_file), list(args.opts or []))
    size = tuple(args.size) if args.size else None
    check_export_options(cfg, size, args.dynamic_size, args.opset)  # before OUT is claimed
    images = check_images(args.images)
    if args.package:
        return export_package(args, cfg, config_file, weights, images)
    calibration = calibration_images(args.calibration)
    out = Path(args.out).expanduser()
    inputs = {"--config-file": config_file, "--weights": weights, "--images": args.images}
    inputs["--calibration"] = args.calibration
    job = {
        "config": str(config_file.resolve()),
        "config_sha1": file_sha1(config_file),
        "weights": str(weights.resolve()),
        "weights_sha1": file_sha1(weights),
        "opts": list(args.opts or []),
        "size": list(args.size) if args.size else None,
        "dynamic_size": bool(args.dynamic_size),
        "opset": int(args.opset),
    }
    if calibration is not None:
        job.update(int8=True, calibration=str(Path(args.calibration).resolve()), calibration_images=len(calibration))
    writes = [MODEL_FILE, *([INT8_FILE] if calibration is not None else []), "log.txt"]
    with output_job(out, TOOL, job, writes=writes, overwrite=args.overwrite, inputs=inputs):
        result = export_onnx(cfg, str(weights), out / MODEL_FILE, size, args.dynamic_size, args.opset, images)
        announce(
            logger,
            f"wrote {result.path}: onnxruntime vs PyTorch on {result.images_checked} image(s), largest difference "
            f"{result.max_abs_diff:.3g} (tolerance {result.tolerance:g})",
        )
        if calibration is not None:
            quantized = quantize_onnx(out / MODEL_FILE, out / INT8_FILE, calibration)
            announce(logger, f"wrote {quantized.path}: INT8, calibrated on {quantized.calibration_images} image(s)")
    return result


def export_package(
    args: argparse.Namespace, cfg: CfgNode, config_file: Path, weights: Path, images: list[np.ndarray] | None
) -> PackageResult:
    """--package DIR: write the model package (mask2former/export/package.py) and print what it holds."""
    size = tuple(args.size) if args.size else None
    in_the_way = export_folder_in_the_way(Path(args.package).expanduser())
    if in_the_way and not args.overwrite:
        raise ExportError(in_the_way)
    inputs = {"--config-file": config_file, "--images": args.images}
    options = {"size": size, "dynamic": args.dynamic_size, "opset": args.opset, "images": images}
    options.update(overwrite=args.overwrite, inputs=inputs, config_name=config_file.name)
    result = write_package(cfg, str(weights), Path(args.package).expanduser(), **options)
    check = result.export
    print(
        f"wrote the model package {result.folder}: model.onnx (onnxruntime vs PyTorch on {check.images_checked} "
        f"image(s), largest difference {check.max_abs_diff:.3g}, tolerance {check.tolerance:g}), model.safetensors, "
        f"config.yaml, classes.json, README.md; {result.speed.images_per_second:.2f} images/s on this CPU"
    )
    return result


def _existing(path: str, option: str) -> Path:
    found = Path(path).expanduser()
    if not found.is_file():
        raise ExportError(f"{option} {path}: no such file: give the path of an existing file")
    return found


def check_images(source: str | None) -> list[np.ndarray] | None:
    """Up to CHECK_IMAGES BGR photos of `source` (a COCO json's images, or a folder's image files, sorted), None
    without one; a source with no readable image is refused."""
    if not source:
        return None
    return [read_image(file) for file in image_files(source, "--images")[:CHECK_IMAGES]]


def calibration_images(source: str | None) -> list[np.ndarray] | None:
    """Up to CALIBRATION_IMAGES BGR photos of `source` (as check_images), evenly spread over its images, the
    unreadable ones skipped (`calibration_photos`); None without one."""
    if not source:
        return None
    return calibration_photos(image_files(source, "--calibration"), CALIBRATION_IMAGES)


def image_files(source: str, option: str) -> list[Path]:
    """The image files of `source`: a COCO json's images, or a folder's image files (recursive, sorted); a source
    naming none is refused."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    elif path.is_file() and path.suffix.lower() == ".json":
        from ..io.coco_json import read_coco_json

        files = [path.parent / image["file_name"] for image in read_coco_json(path).get("images", [])]
    else:
        raise ExportError(f"{option} {source}: give a COCO json or a folder of photos")
    if not files:
        raise ExportError(f"{option} {source} names no image: give a json listing images or a folder holding some")
    return files
