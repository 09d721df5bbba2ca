"""INT8 post-training static quantization of an exported file (tools/export.py --int8).

`quantize_onnx(fp32_file, out_file, images)` calibrates the fp32 export on views of `images` prepared as the
Predictor prepares a photo (a fixed-size file: resized to its size; a dynamic-size one: the test view, short side
INPUT.MIN_SIZE_TEST capped at MAX_SIZE_TEST; then INPUT.FORMAT channel order, float32 0..255) and writes the
onnxruntime static quantization of it: QDQ format, int8 weights per output channel and int8 activations from the
calibration's min/max, for the matrix products only (Conv, MatMul, Gemm: where the time goes). Every other op
(normalisation, Softmax, the deformable attention's GridSample, Resize, the semantic inference) stays fp32.
`calibration_photos` reads the photos, skipping (and counting, in one warning naming the first) those that cannot be
read. The file keeps the fp32 file's metadata plus "quantization" ("int8 static, N calibration images"), so
`Predictor(out_file)` and tools/predict.py read it as they read the fp32 one. Written atomically: nothing under
the final name until the quantized model is complete.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx

from ..data import transforms as T
from ..errors import UserError
from ..inference.onnx_model import INPUT_NAME, METADATA_PREFIX, ExportedFile
from ..io.files import atomic_open
from ..io.images import ReadError, read_image

logger = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")  # the ops given int8 inputs; all others run in fp32
QUANTIZATION_KEY = "quantization"  # the metadata key (after METADATA_PREFIX) saying how the file was quantized


class QuantizeError(UserError):
    """A quantization that cannot run (no calibration image, or onnxruntime refusing the graph)."""


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize_onnx` wrote."""

    path: Path
    calibration_images: int
    quantized_nodes: int  # QuantizeLinear nodes in the file: the int8 activations and weights


def quantize_onnx(
    fp32_file: str | Path, out_file: str | Path, images: Sequence[np.ndarray], ops: Sequence[str] = QUANTIZED_OPS
) -> QuantizeResult:
    """Write the INT8 static quantization of `fp32_file` (an export of tools/export.py) to `out_file`, calibrated
    on `images` (BGR uint8 photos, see the module doc); `ops`: the op types quantized."""
    fp32_file, out_file = Path(fp32_file), Path(out_file)
    exported = ExportedFile(fp32_file)
    views = calibration_views(exported, images)
    if not views:
        raise QuantizeError(f"{fp32_file}: no calibration image: give --calibration a json or folder with photos")
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=out_file.parent) as folder:
        quantized = Path(folder) / "model_int8.onnx"
        _quantize_static(fp32_file, quantized, views, ops)
        model = onnx.load(str(quantized))
    note = f"int8 static, {len(views)} calibration images"
    _set_metadata(model, {**exported.metadata, QUANTIZATION_KEY: note})
    with atomic_open(out_file, "wb") as handle:
        handle.write(model.SerializeToString())
    count = sum(node.op_type == "QuantizeLinear" for node in model.graph.node)
    return QuantizeResult(out_file, len(views), count)


def _quantize_static(fp32_file: Path, target: Path, views: list[np.ndarray], ops: Sequence[str]) -> None:
    """onnxruntime's static quantization of `fp32_file` (pre-processed beside `target`) written to `target` (see
    the module doc); its failure is one QuantizeError line."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    source = _prepared(fp32_file, target.with_name("prepared.onnx"))
    options = {"ActivationSymmetric": False, "WeightSymmetric": True}
    try:
        with _quiet_root_logger():
            quantize_static(
                str(source),
                str(target),
                CalibrationViews(views),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(ops),
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options=options,
            )
    except Exception as error:  # noqa: BLE001 (onnxruntime raises many kinds; one line names the file)
        summary = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        raise QuantizeError(f"{fp32_file}: onnxruntime could not quantize it ({summary}): report it") from None


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantization notes (it logs through the root logger: "Created a copy of bias input ...") kept
    off the terminal and the log: the root logger at WARNING while it runs."""
    level = logging.root.level
    logging.root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logging.root.setLevel(level)


def _prepared(fp32_file: Path, prepared: Path) -> Path:
    """onnxruntime's pre-quantization pass (ONNX shape inference and graph optimisation) of `fp32_file` written to
    `prepared`; `fp32_file` itself when the pass cannot run on it (its symbolic shape inference is not used: it
    fails on the export's reshapes)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32_file), str(prepared), skip_symbolic_shape=True)
    except Exception as error:  # noqa: BLE001 (an optional optimisation: quantize the file as it is)
        logger.info("%s: quantizing without onnxruntime's pre-processing (%s)", fp32_file, str(error)[:200])
        return fp32_file
    return prepared


def calibration_photos(
    files: Sequence[Path], count: int, option: str = "--calibration", needed: int = 1
) -> list[np.ndarray]:
    """Up to `count` BGR photos of `files`, evenly spread over them; an unreadable file is skipped (the next unused
    file, in order, is read in its place) and the skipped ones are one warning naming the first. Fewer than
    `needed` readable photos: QuantizeError."""
    step = max(1, len(files) // max(1, count))
    spread = list(files[::step][:count])
    taken = set(spread)
    order = spread + [file for file in files if file not in taken]
    photos: list[np.ndarray] = []
    skipped: list[str] = []
    for file in order:
        if len(photos) >= count:
            break
        try:
            photos.append(read_image(file))
        except ReadError as error:
            skipped.append(str(error))
    if skipped:
        logger.warning("%s: skipped %d unreadable photo(s), the first: %s", option, len(skipped), skipped[0])
    if len(photos) < needed:
        first = f" (the first: {skipped[0]})" if skipped else ""
        raise QuantizeError(
            f"{option}: {len(photos)} readable photo(s) of {len(files)}, {needed} needed{first}: give a json or "
            "folder with more readable photos"
        )
    return photos


def calibration_views(exported: ExportedFile, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """float32 1 x 3 x H x W inputs of the file, one per BGR uint8 image, prepared as the Predictor prepares a
    photo: resized to a fixed-size file's size, else to the test view (short side min_size_test, long side capped
    at max_size_test), in the file's channel order."""
    side = int(exported.metadata.get("min_size_test", 0) or 0)
    cap = int(exported.metadata.get("max_size_test", 0) or 0)
    views = []
    for image in images:
        if exported.input_size is not None:
            height, width = exported.input_size
            view = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        else:
            view = T.resize_for_test(image, side, cap) if side > 0 else image
        pixels = T.apply_color_transform(view, None, exported.input_format).transpose(2, 0, 1)
        views.append(np.ascontiguousarray(pixels[None], dtype=np.float32))
    return views


class CalibrationViews:
    """onnxruntime's CalibrationDataReader over prepared views: {"image": view} for each, then None."""

    def __init__(self, views: Sequence[np.ndarray]) -> None:
        self.views = list(views)
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.views):
            return None
        self.index += 1
        return {INPUT_NAME: self.views[self.index - 1]}

    def rewind(self) -> None:
        self.index = 0


def _set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """The trashseg metadata of `model` replaced by `metadata` (other metadata kept)."""
    kept = [(prop.key, prop.value) for prop in model.metadata_props if not prop.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    for key, value in metadata.items():
        model.metadata_props.add(key=METADATA_PREFIX + key, value=value)
