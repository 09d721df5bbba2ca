"""Exported models (model.onnx): the file's contract, its metadata, and running it on the CPU.

The contract every exported file keeps (tools/export.py writes it, `Predictor` and tools/predict.py read it):
  input  "image":         float32 [1, 3, H, W], pixel values 0..255 in the model's INPUT.FORMAT channel order;
                          H, W fixed (metadata input_size) or any (a dynamic-size export, input_size null);
  output "scores":        float32 [1, K, H, W], the semantic inference's class scores at the input's size (Mask2Former:
                          softmax class probabilities x mask sigmoids summed over queries; per-pixel models: the
                          softmax), not renormalised: what the PyTorch model gives for one unflipped view whose
                          output size is the view's. A caller resizes them to its output size, then divides by their
                          sum over K (inference/tta.py does both), as the PyTorch path does.
The metadata (ONNX metadata_props, all strings, keys below) make the file alone enough to predict.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import nn

from ..data import transforms as T
from ..errors import UserError
from .tta import View

METADATA_PREFIX = "trashseg."
FORMAT_VERSION = "1"
# metadata keys (without the prefix) and what each holds
METADATA_KEYS = {
    "format_version": "the contract's version, FORMAT_VERSION",
    "class_names": "JSON list of the K class names, background first",
    "palette": "JSON list of K [r, g, b] colours",
    "input_size": "JSON [H, W] of a fixed-size export, or null (dynamic size)",
    "input_format": "RGB or BGR: the channel order of the input",
    "min_size_test": "the short side a photo is resized to (INPUT.MIN_SIZE_TEST) for a dynamic-size export",
    "max_size_test": "the long-side cap (INPUT.MAX_SIZE_TEST)",
    "size_divisibility": "the padding multiple the graph applies inside (informative)",
    "config": "the YAML of the config the model was built from",
    "weights_sha256": "sha256 of the checkpoint the weights came from",
}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The file's trashseg metadata, {key without prefix: string value}; reads only the graph's header fields."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {
        prop.key[len(METADATA_PREFIX) :]: prop.value
        for prop in model.metadata_props
        if prop.key.startswith(METADATA_PREFIX)
    }


def metadata_json(metadata: dict[str, str], key: str) -> object:
    return json.loads(metadata[key])


# ---- running an exported file -------------------------------------------------------------------------------------

INPUT_NAME, OUTPUT_NAME = "image", "scores"  # the graph's input and output (the contract above)
RUNTIMES = ("onnxruntime", "openvino")


class OnnxFileError(UserError):
    """An .onnx file that is not this project's export, a runtime that is not known, or a view the file cannot
    take; the message names the file."""


def read_export_metadata(path: str | Path) -> dict[str, str]:
    """The file's metadata (read_metadata), refused in one line unless it is a readable export of this format."""
    path = Path(path)
    if not path.is_file():
        raise OnnxFileError(f"{path}: no such .onnx file")
    try:
        metadata = read_metadata(path)
    except Exception as error:  # noqa: BLE001 (onnx raises several kinds for a file that is not a model)
        raise OnnxFileError(f"{path}: not a readable ONNX model ({str(error).splitlines()[0][:200]})") from None
    missing = [key for key in ("format_version", "class_names", "input_size", "input_format") if key not in metadata]
    if missing:
        raise OnnxFileError(
            f"{path}: no {METADATA_PREFIX}{missing[0]} metadata: not a file tools/export.py wrote; export the "
            "model with tools/export.py"
        )
    if metadata["format_version"] != FORMAT_VERSION:
        raise OnnxFileError(
            f"{path}: export format {metadata['format_version']}, this code reads {FORMAT_VERSION}: export it again"
        )
    return metadata


class ViewSizeError(OnnxFileError):
    """Images whose test-time views a fixed-size export cannot take; the message counts them, names the first and
    says what to do."""


class ExportedFile:
    """What an exported file's metadata say, read without loading its graph: `.path`, `.metadata` (the trashseg
    metadata, strings), `.class_names`, `.palette` (None if absent), `.input_size` ((H, W) of a fixed-size export,
    None for a dynamic one), `.input_format`, `.config_yaml`. `check_view_sizes` refuses images whose views the
    file cannot take."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.metadata = read_export_metadata(self.path)
        self.class_names: list[str] = [str(name) for name in metadata_json(self.metadata, "class_names")]
        palette = metadata_json(self.metadata, "palette") if "palette" in self.metadata else None
        self.palette: list[list[int]] | None = palette
        size = metadata_json(self.metadata, "input_size")
        self.input_size: tuple[int, int] | None = (int(size[0]), int(size[1])) if size else None
        self.input_format: str = self.metadata["input_format"]
        self.config_yaml: str = self.metadata.get("config", "")

    def takes_any_size(self) -> bool:
        """Whether the file takes views of any size (a dynamic-size export)."""
        return self.input_size is None

    def check_view_sizes(
        self, images: Iterable[tuple[str, tuple[int, int]]], views: Sequence[View], max_size: int
    ) -> None:
        """Refuse, before anything is predicted, images (name, (height, width)) one of whose test-time views
        (`views`, long side capped at `max_size`, as inference/tta.py makes them) is not the size a fixed-size
        export takes: one ViewSizeError counting them and naming the first. A dynamic-size file takes every image."""
        if self.input_size is None:
            return
        offending = []
        for name, (height, width) in images:
            shapes = dict.fromkeys(T.shape_for_test(height, width, short, max_size) for short, _ in views)
            wrong = [shape for shape in shapes if shape != self.input_size]
            if wrong:
                offending.append((name, height, width, wrong[0]))
        if offending:
            name, height, width, (view_h, view_w) = offending[0]
            size_h, size_w = self.input_size
            count = f"{len(offending)} image(s) cannot be predicted, the first " if len(offending) > 1 else ""
            if len({short for short, _ in views}) > 1:
                advice = (
                    "test-time augmentation makes views of several sizes: predict without it, or with a dynamic-size "
                    "export (tools/export.py --dynamic-size)"
                )
            else:
                advice = "predict with a dynamic-size export (tools/export.py --dynamic-size), or give images of "
                advice += "that shape"
            raise ViewSizeError(
                f"{count}{name} ({width}x{height} pixels, width x height) makes a {view_w}x{view_h} view, and "
                f"{self.path} is a fixed-size export that takes only {size_w}x{size_h} views: {advice}"
            )


class OnnxModel(ExportedFile):
    """An exported file (the contract above) run on the CPU by onnxruntime or OpenVINO, both reading the same file;
    `run(image)` gives its K x H x W scores, `as_module()` the model inference/tta.predict_batch takes.
    A fixed-size export takes views of exactly its size: for other view sizes, export one file per view size or a
    dynamic-size file (`tools/export.py --dynamic-size`); another size is refused in one line, never resized.
    """

    def __init__(self, path: str | Path, runtime: str = "onnxruntime", num_threads: int = 0) -> None:
        if runtime not in RUNTIMES:
            raise OnnxFileError(f"{path}: unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
        super().__init__(path)
        self.runtime = runtime
        opener = _onnxruntime_runner if runtime == "onnxruntime" else _openvino_runner
        self._infer = opener(self.path, num_threads)

    def run(self, image_chw: np.ndarray) -> np.ndarray:
        """K x H x W float32 class scores (the contract's "scores") of one C x H x W float32 image (pixels 0..255
        in the file's `input_format` channel order), at the image's size."""
        height, width = image_chw.shape[-2:]
        if self.input_size is not None and (height, width) != self.input_size:
            raise OnnxFileError(
                f"{self.path}: a fixed-size export ({self.input_size[0]}x{self.input_size[1]}) was given a "
                f"{height}x{width} view: export one file per view size, or a dynamic-size file "
                "(tools/export.py --dynamic-size)"
            )
        batch = np.ascontiguousarray(image_chw[None], dtype=np.float32)
        return np.asarray(self._infer(batch)[0], dtype=np.float32)

    def as_module(self) -> OnnxModule:
        """This file where inference/tta.predict_batch takes a model (`OnnxModule`)."""
        return OnnxModule(self)


class OnnxModule(nn.Module):
    """An `OnnxModel` with the interface inference/tta.predict_batch uses: called with [{"image": uint8 C x h x w,
    "height", "width"}], it returns [{"sem_seg": K x height x width}]: the file's scores at the view's size,
    resized bilinearly (align_corners=False) to (height, width) as the PyTorch model resizes its own.
    `size_divisibility` is 1 (the graph pads inside) and a parameter of no size tells predict_batch the device:
    the CPU. The only difference to the PyTorch model is the float rounding of another library (and, with
    SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE, which resizes mask logits before combining them, where the view is
    not the output size).
    """

    size_divisibility = 1

    def __init__(self, model: OnnxModel) -> None:
        super().__init__()
        self.onnx_model = model
        self.device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        results = []
        for item in batched_inputs:
            image = item["image"].cpu().numpy().astype(np.float32)
            probs = torch.from_numpy(self.onnx_model.run(image))
            size = (int(item.get("height", image.shape[-2])), int(item.get("width", image.shape[-1])))
            if tuple(probs.shape[-2:]) != size:
                probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
            results.append({"sem_seg": probs})
        return results


def _onnxruntime_runner(path: Path, num_threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if num_threads > 0:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]


def _openvino_runner(path: Path, num_threads: int):
    import openvino

    config = {"INFERENCE_PRECISION_HINT": "f32"}  # fp32 as onnxruntime (some CPUs would otherwise run bf16)
    if num_threads > 0:
        config["INFERENCE_NUM_THREADS"] = str(num_threads)
    compiled = openvino.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(OUTPUT_NAME)
    return lambda batch: request.infer({INPUT_NAME: batch})[output]


def onnx_config(model: ExportedFile, opts: list[str] | tuple[str, ...] = ()) -> CfgNode:
    """The config a file predicts with: its recorded config's INPUT and TEST sections (views, sizes, channel order)
    over the defaults, MODEL.SEM_SEG_HEAD.NUM_CLASSES from its classes, then the KEY VALUE `opts`. Only those
    sections: the model itself is in the file, so no model family or plug-in needs to be importable."""
    import yaml

    from ..config import ConfigError, load_config

    recorded = yaml.safe_load(model.config_yaml) if model.config_yaml else None
    kept = {key: recorded[key] for key in ("INPUT", "TEST") if isinstance(recorded, dict) and key in recorded}
    kept["MODEL"] = {"SEM_SEG_HEAD": {"NUM_CLASSES": len(model.class_names)}}
    try:
        cfg = load_config(None, list(opts), values=kept)
    except ConfigError as error:
        raise OnnxFileError(f"{model.path}: its recorded config: {error}") from None
    if model.input_format != cfg.INPUT.FORMAT:
        raise OnnxFileError(
            f"{model.path}: INPUT.FORMAT {cfg.INPUT.FORMAT} given, the file takes {model.input_format} images"
        )
    return cfg
