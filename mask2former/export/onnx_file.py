"""Writing model.onnx: the whole inference path of a checkpoint (export/graph.py) as one ONNX file, checked.

`export_onnx(cfg, weights, out_file)` builds the config's model with the checkpoint's weights on the CPU, traces
`ScoresGraph` with torch.export (non-strict; the levels' sizes are Python ints derived from the input's
size, so no shape depends on the data) and converts it with torch.onnx's exporter (dynamo), at a fixed input size
(default: a square of INPUT.MIN_SIZE_TEST) or with a dynamic height and width. The file's metadata follow
inference/onnx_model.py (METADATA_KEYS). Before the file takes its final name, onnxruntime runs it on a few images
(random ones, or views of the given photos) and its probabilities are compared with PyTorch's (`predict_batch` of
one unflipped view at the input's size); a largest absolute difference above the tolerance refuses the file.

Attention runs through torch's math kernel while tracing: the CPU flash kernel returns strides that the exporter's
decomposition of the attention does not reproduce (its traced reshape becomes an invalid view).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
from fvcore.common.config import CfgNode
from torch import nn

from ..data import transforms as T
from ..data.classes import palette_for
from ..errors import UserError
from ..inference.onnx_model import FORMAT_VERSION, INPUT_NAME, METADATA_KEYS, METADATA_PREFIX, OUTPUT_NAME
from ..inference.predictor import load_prediction_model
from ..inference.tta import predict_batch
from ..io.checkpoints import recorded_class_names
from ..io.files import atomic_open
from ..utils.progress import format_seconds
from .any_size import accept_any_size
from .graph import ScoresGraph, UnexportableModelError

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 19  # DeformConv (FaPN's deformable convolutions) is opset 19
MIN_OPSET = 17  # grid_sample (the deformable attention) needs 16; LayerNormalization 17
TOLERANCE = 1e-4  # largest absolute difference of fp32 probabilities between onnxruntime and PyTorch
CHECK_IMAGES = 2  # random images checked when none are given
MIN_SIDE = 32  # the smallest side of a fixed-size export
HEARTBEAT_SECONDS = 30.0  # a log line this often while tracing, converting or checking


class ExportCheckError(UserError):
    """onnxruntime's probabilities differ from PyTorch's by more than the tolerance; the file was not kept."""


@dataclass(frozen=True)
class ExportResult:
    """What `export_onnx` wrote and how it was checked."""

    path: Path
    max_abs_diff: float  # over every checked image and pixel
    images_checked: int
    tolerance: float


def export_onnx(
    cfg: CfgNode,
    weights: str,
    out_file: Path,
    size: tuple[int, int] | None = None,
    dynamic: bool = False,
    opset: int = DEFAULT_OPSET,
    images: Sequence[np.ndarray] | None = None,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Export the config's model with `weights` to `out_file` (see the module doc) and check it. `size`: (H, W) of
    a fixed-size export (default: INPUT.MIN_SIZE_TEST squared); `dynamic`: any H x W instead; `images`: BGR uint8
    photos to check with (default: CHECK_IMAGES random images). Refuses (UserError) a bad size or opset, a model
    the exporter cannot handle (naming the module) and a file whose check fails (nothing kept under the name)."""
    size = check_export_options(cfg, size, dynamic, opset)
    model = load_prediction_model(cfg, str(weights), "cpu", cfg.MODEL.ALLOW_PICKLE)
    class_names = export_class_names(cfg, weights)
    graph = ScoresGraph(model)
    proto = trace_to_onnx(graph, size, dynamic, opset)
    metadata = export_metadata(cfg, weights, class_names, None if dynamic else size, graph.size_divisibility)
    for key, value in metadata.items():
        proto.metadata_props.add(key=METADATA_PREFIX + key, value=value)
    data = proto.SerializeToString()
    views = check_views(cfg, size, dynamic, images)
    out_file = Path(out_file)
    with atomic_open(out_file, "wb") as handle:
        handle.write(data)
        try:
            with export_step(f"checking the file: onnxruntime against PyTorch on {len(views)} image(s)"):
                diff = largest_difference(model, data, views, cfg.INPUT.FORMAT)
        except Exception as error:  # onnxruntime's own errors: the file does not run at a size it should take
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            sizes = ", ".join(f"{view.shape[0]}x{view.shape[1]}" for view in views)
            raise ExportCheckError(
                f"{out_file}: onnxruntime cannot run the exported file on the check images ({sizes}): {first}; "
                f"the file was not kept: {'export at a fixed --size' if dynamic else 'report the config and this line'}"
            ) from None
        if not diff <= tolerance:  # NaN fails too
            raise ExportCheckError(
                f"{out_file}: onnxruntime's probabilities differ from PyTorch's by up to {diff:.3g} on "
                f"{len(views)} image(s), above the tolerance {tolerance:g}; the file was not kept: report the "
                "config and this line"
            )
    return ExportResult(out_file, diff, len(views), tolerance)


@contextmanager
def export_step(what: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Log `what` as a long export step starts, a line every `every` seconds while it lasts (the exporter itself
    prints nothing), and its time when it ends."""
    start = time.perf_counter()
    logger.info("%s ...", what)
    finished = threading.Event()

    def beat() -> None:
        while not finished.wait(every):
            logger.info("%s: still working (%s)", what, format_seconds(time.perf_counter() - start))

    thread = threading.Thread(target=beat, name="export-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        finished.set()
        thread.join()
    logger.info("%s: done in %s", what, format_seconds(time.perf_counter() - start))


def check_export_options(cfg: CfgNode, size: tuple[int, int] | None, dynamic: bool, opset: int) -> tuple[int, int]:
    """The (H, W) to trace with; UserError for a side below MIN_SIDE, a size with --dynamic-size, or an old opset."""
    if opset < MIN_OPSET:
        raise UserError(
            f"--opset {opset}: the exported graph needs opset {MIN_OPSET} or later (default {DEFAULT_OPSET})"
        )
    if size is not None and dynamic:
        raise UserError("--size and --dynamic-size exclude each other: give one (a fixed size, or any size)")
    if size is None:
        side = int(cfg.INPUT.MIN_SIZE_TEST)
        return (side, side)
    height, width = (int(value) for value in size)
    if height < MIN_SIDE or width < MIN_SIDE:
        raise UserError(f"--size {height} {width}: give a height and width of {MIN_SIDE} px or more")
    return (height, width)


def export_class_names(cfg: CfgNode, weights: str | Path) -> list[str]:
    """The checkpoint's recorded class names, else those of the config's training dataset (when its json can be
    read), else "class <i>"."""
    num_classes = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    names = recorded_class_names(weights, cfg.MODEL.ALLOW_PICKLE)
    if names is None:
        names = _dataset_class_names(cfg)
    if names is None or len(names) != num_classes:
        names = [f"class {index}" for index in range(num_classes)]
    return list(names)


def _dataset_class_names(cfg: CfgNode) -> list[str] | None:
    from ..data.catalog import DatasetCatalog
    from ..data.coco_semantic import set_class_metadata
    from ..data.trash import register_datasets_from_config

    if not cfg.DATASETS.TRAIN:
        return None
    try:
        name = cfg.DATASETS.TRAIN[0]
        if name not in DatasetCatalog:
            register_datasets_from_config(cfg)
        return set_class_metadata(name)
    except (UserError, OSError, KeyError, ValueError):  # no readable dataset: the names are not known
        return None


def export_metadata(
    cfg: CfgNode, weights: str | Path, class_names: list[str], size: tuple[int, int] | None, divisibility: int
) -> dict[str, str]:
    """The file's metadata (METADATA_KEYS, all strings)."""
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    values = {
        "format_version": FORMAT_VERSION,
        "class_names": json.dumps(class_names),
        "palette": json.dumps([list(color) for color in palette_for(class_names)]),
        "input_size": json.dumps(list(size) if size else None),
        "input_format": str(cfg.INPUT.FORMAT),
        "min_size_test": str(int(cfg.INPUT.MIN_SIZE_TEST)),
        "max_size_test": str(int(cfg.INPUT.MAX_SIZE_TEST)),
        "size_divisibility": str(int(divisibility)),
        "config": cfg.dump(),
        "weights_sha256": digest.hexdigest(),
    }
    assert set(values) == set(METADATA_KEYS), sorted(set(values) ^ set(METADATA_KEYS))
    return values


# ---- tracing ------------------------------------------------------------------------------------------------------


# 17 steps of 32 px: the last stage of a stride-32 backbone is 17 x 19 patches, two windows or more of up to 16
TRACE_STEPS = 17


def trace_to_onnx(graph: ScoresGraph, size: tuple[int, int], dynamic: bool, opset: int) -> onnx.ModelProto:
    """The ONNX model of `graph` for a 1 x 3 x H x W input ("image") and its "scores" (dynamic: traced for
    multiples of the size divisibility, then wrapped by any_size.py); an exporter failure is an
    UnexportableModelError naming the module it happened in."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    step = graph.size_divisibility
    if dynamic:
        size = dynamic_trace_size(size, step)
    example = (torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)) * 255,)
    dynamic_shapes = None
    if dynamic:
        height = step * torch.export.Dim("height_steps", min=2)
        width = step * torch.export.Dim("width_steps", min=2)
        dynamic_shapes = {"image": {2: height, 3: width}}
    kind = "any size" if dynamic else f"{size[0]}x{size[1]}"
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), _quiet_exporter():
        with _module_tracker(graph) as stack, export_step(f"tracing the model ({kind}) with torch.export"):
            try:
                exported = torch.export.export(graph, example, dynamic_shapes=dynamic_shapes, strict=False)
            except Exception as error:
                raise UnexportableModelError(_unexportable_message(graph, error, list(stack))) from None
        try:
            with export_step(f"converting the traced model to ONNX (opset {opset})"):
                program = torch.onnx.export(
                    exported,
                    example,
                    input_names=["image"],
                    output_names=[OUTPUT_NAME],
                    opset_version=opset,
                    dynamo=True,
                    external_data=False,
                    optimize=True,
                )
        except Exception as error:
            raise UnexportableModelError(_unexportable_message(graph, error, [])) from None
    proto = program.model_proto
    return accept_any_size(proto, step, graph.model.pixel_mean.flatten().tolist()) if dynamic else proto


def dynamic_trace_size(size: tuple[int, int], step: int) -> tuple[int, int]:
    """The size a dynamic-size export is traced at: odd multiples of `step`, two apart, of TRACE_STEPS steps or more
    and above the test size `size`. torch.export takes a size of 1 met inside the model for a constant, so the trace
    must see every grid side and window count above 1 (a Swin whose last stage was one window at the trace size
    computed wrong token counts where it has two); the trace runs on fake tensors, so a large size costs nothing.
    Odd, unequal sides keep the traced sizes apart from the model's static ones."""
    steps = max(TRACE_STEPS, -(-max(size) // step) + 1) | 1
    return (steps * step, (steps + 2) * step)


@contextmanager
def _module_tracker(graph: nn.Module) -> Iterator[list[str]]:
    """The names of the modules being run, outermost first: left holding the path of a module that raised."""
    stack: list[str] = []
    handles = []
    for name, module in graph.named_modules():
        if not name:
            continue

        def push(_module, _args, name=name):
            stack.append(name)

        def pop(_module, _args, _output):
            stack.pop()

        handles.append(module.register_forward_pre_hook(push))
        handles.append(module.register_forward_hook(pop))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's progress lines, graph dumps and optimiser notes kept off the terminal: what it prints goes to
    the debug log, and its loggers (torch's, onnxscript's, onnx_ir's) are silenced while it runs."""
    prefixes = ("torch", "onnxscript", "onnx_ir")
    names = [name for name in list(logging.root.manager.loggerDict) if name.split(".")[0] in prefixes]
    loggers = [logging.getLogger(name) for name in {*names, *prefixes}]
    levels = [item.level for item in loggers]
    for item in loggers:
        item.setLevel(logging.CRITICAL + 1)
    printed = io.StringIO()
    try:
        with redirect_stdout(printed), redirect_stderr(printed):
            yield
    finally:
        for item, level in zip(loggers, levels, strict=True):
            item.setLevel(level)
        logger.debug("the exporter printed:\n%s", printed.getvalue())


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)')


def _unexportable_message(graph: nn.Module, error: Exception, stack: list[str]) -> str:
    """One line: the module the exporter failed in (the innermost module running, else the last frame of the
    error's traceback that lies in a module's class), what it said, what to do."""
    text = str(error)
    summary = next((line.strip() for line in _summary_lines(text)), type(error).__name__)
    where = _named_module(graph, stack[-1]) if stack else _module_from_frames(graph, text)
    return (
        f"the ONNX exporter cannot handle {where or 'this model'}: {summary[:300]}; this module has no export "
        "path yet: report it with the config"
    )


def _summary_lines(text: str) -> Iterator[str]:
    """The lines that say what went wrong: the exporter's exception summary first, else the first line."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("## Exception summary"):
            yield from (item for item in lines[index + 1 :] if item.strip())
            return
    yield from (item for item in lines if item.strip())


def _named_module(graph: nn.Module, name: str) -> str:
    module = graph.get_submodule(name)
    return f"{name.removeprefix('model.')} ({type(module).__name__})"


def _module_from_frames(graph: nn.Module, text: str) -> str | None:
    frames = [(path, int(line)) for path, line, _ in _FRAME.findall(text)]
    for path, line in reversed(frames):
        for name, module in graph.named_modules():
            cls = type(module)
            try:
                source, start = inspect.getsourcelines(cls)
                in_class = Path(inspect.getsourcefile(cls) or "").resolve() == Path(path).resolve()
            except (OSError, TypeError):
                continue
            if name and in_class and start <= line < start + len(source):
                return f"{_named_module(graph, name)} at {Path(path).name}:{line}"
    return None


# ---- checking -----------------------------------------------------------------------------------------------------


def check_views(
    cfg: CfgNode, size: tuple[int, int], dynamic: bool, images: Sequence[np.ndarray] | None
) -> list[np.ndarray]:
    """BGR uint8 images at the sizes the file takes: views of `images` (a fixed-size export: resized to its size;
    a dynamic one: the test view, short side INPUT.MIN_SIZE_TEST), else random images (a dynamic export: the
    fixed size and a non-square one)."""
    if images:
        if dynamic:
            side, cap = int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST)
            return [T.resize_for_test(image, side, cap) for image in images]
        return [cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for image in images]
    rng = np.random.default_rng(0)
    sizes = [size] * CHECK_IMAGES if not dynamic else [size, (size[0] + size[0] // 2 + 3, max(size[1] - 5, 32))]
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for height, width in sizes]


def largest_difference(model: nn.Module, onnx_bytes: bytes, views: Sequence[np.ndarray], image_format: str) -> float:
    """The largest |onnxruntime - PyTorch| over the views' probabilities; PyTorch's are `predict_batch`'s for one
    unflipped view that is the image itself (short side = the image's, output size = the image's)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    largest = 0.0
    for view in views:
        height, width = view.shape[:2]
        expected = predict_batch(model, [view], [(0, False)], 0, image_format)[0]  # short side 0: the image as is
        pixels = T.apply_color_transform(view, None, image_format).transpose(2, 0, 1)[None].astype(np.float32)
        (scores,) = session.run([OUTPUT_NAME], {INPUT_NAME: pixels})
        probabilities = scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-6)  # as predict_batch divides
        expected = expected.cpu().numpy()
        same_shape = probabilities.shape[1:] == expected.shape
        diff = float(np.abs(probabilities[0] - expected).max()) if same_shape else float("inf")
        largest = diff if np.isnan(diff) else max(largest, diff)
        logger.info("checked a %dx%d image: largest difference %.3g", height, width, diff)
    return largest
