"""A model ready to predict: the config's model with a checkpoint's weights, refusing any mismatch, and the
check that its probabilities are finite; `Predictor`, the Python API on one photo, over PyTorch weights, a run
folder, an exported .onnx file or a model package.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fvcore.common.config import CfgNode
from torch import nn

from ..errors import UserError
from ..io.checkpoints import read_checkpoint_with_metadata
from ..modeling.weights import PREDICTION_ADVICE, check_same_classes, load_model_weights
from .tta import inference_max_size, inference_views, predict_batch

logger = logging.getLogger(__name__)


# ---- checkpoints --------------------------------------------------------------------------------------------------


def load_prediction_model(cfg: CfgNode, path: str, device: str | torch.device, allow_pickle: bool = False) -> nn.Module:
    """The config's model with a checkpoint's weights, in eval mode on `device`. Refuses (naming the file) a
    checkpoint of another architecture, size or class count: at prediction time nothing may be re-initialised."""
    from ..modeling.build import build_model

    checkpoint = read_checkpoint_with_metadata(path, allow_pickle)
    state = checkpoint.tensors
    model = build_model(cfg)
    options = {"matching_heuristics": checkpoint.matching_heuristics, "mismatch_advice": PREDICTION_ADVICE}
    report = load_model_weights(model, state, strict=True, source=str(path), **options)
    check_same_classes(report, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, str(path))
    return model.to(device).eval()


class NonFiniteProbabilitiesError(UserError):
    """The model gave NaN or Inf probabilities for an image; the message names the image and the checkpoints."""


def check_finite(probs: torch.Tensor, image: dict, weights: Sequence[str]) -> None:
    """Refuse (naming the image) a probability map with NaN or Inf values: such numbers are never written."""
    if not bool(torch.isfinite(probs).all()):
        bad = int((~torch.isfinite(probs)).sum())
        raise NonFiniteProbabilitiesError(
            f"image id {image['id']} ({image['file_name']}): the model gave {bad} non-finite (NaN/Inf) "
            f"probabilities with {', '.join(map(str, weights))}: a diverged checkpoint, or try without --amp; "
            "nothing was written for it"
        )


# ---- the Python API: one photo in, probabilities and a label map out ----------------------------------------------

RUN_CONFIG, RUN_WEIGHTS, PACKAGE_MODEL = "config.yaml", "model_final.pth", "model.onnx"


class PredictorError(UserError):
    """A Predictor source that is not a config with weights, a run folder, an .onnx file or a package folder, or
    an image it cannot take; the message names it."""


@dataclass
class Prediction:
    """One image's prediction at the image's size."""

    probabilities: np.ndarray  # float32 K x H x W, normalised over the K classes
    labels: np.ndarray  # uint8 H x W, the most probable class of each pixel
    class_names: list[str]


class Predictor:
    """A model ready to predict photos, from any of its forms (as detectron2's DefaultPredictor):

        Predictor("configs/quickstart.yaml", "output/run/model_final.pth")  # a config and PyTorch weights
        Predictor.from_run("output/run")          # a training run's folder: its config.yaml and model_final.pth
        Predictor("model.onnx")                    # an exported file (tools/export.py): its metadata hold the config
        Predictor("package_dir")                   # a model package: its model.onnx

    `predictor(image, tta=False)` returns a `Prediction` at the image's size, made by inference/tta.py exactly as
    tools/predict.py makes it (one view of INPUT.MIN_SIZE_TEST, or with `tta` the TEST.AUG views). `image` is a
    path (read as tools/predict.py reads it), a PIL image (converted to RGB) or a numpy H x W x 3 uint8 array in
    BGR order, as cv2.imread returns it. PyTorch weights run on `device` ("cpu", "cuda", "auto": the GPU if any);
    an exported file runs on the CPU with `runtime` ("onnxruntime" or "openvino"). `opts`: KEY VALUE config
    overrides (for an exported file, of its INPUT and TEST keys).
    """

    def __init__(
        self,
        source: str | Path,
        weights: str | Path | None = None,
        runtime: str = "onnxruntime",
        device: str = "cpu",
        opts: Sequence[str] = (),
    ) -> None:
        source = Path(source).expanduser()
        onnx_file = _exported_file(source, weights)
        if onnx_file is not None:
            from .onnx_model import OnnxModel, onnx_config

            exported = OnnxModel(onnx_file, runtime)
            self.exported: OnnxModel | None = exported
            self.cfg = onnx_config(exported, opts)
            self.model: nn.Module = exported.as_module()
            self.class_names = list(exported.class_names)
            self.weights = str(onnx_file)
        else:
            self.exported = None
            config_file, checkpoint = _config_and_weights(source, weights)
            self.cfg, self.model, self.class_names = _torch_model(config_file, checkpoint, device, opts)
            self.weights = str(checkpoint)

    @classmethod
    def from_run(cls, folder: str | Path, **kwargs) -> Predictor:
        """The run folder's config.yaml with its model_final.pth (keywords as `Predictor`)."""
        folder = Path(folder).expanduser()
        _require_run_folder(folder)
        return cls(folder / RUN_CONFIG, folder / RUN_WEIGHTS, **kwargs)

    def __call__(self, image: str | Path | np.ndarray | object, tta: bool = False) -> Prediction:
        bgr, name = _as_bgr(image)
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.TEST.AUG.ENABLED = bool(tta)
        views, max_size = inference_views(cfg), inference_max_size(cfg)
        if self.exported is not None:  # a fixed-size file: refused in one line before predicting
            self.exported.check_view_sizes([(name, bgr.shape[:2])], views, max_size)
        probs = predict_batch(self.model, [bgr], views, max_size, cfg.INPUT.FORMAT)[0]
        check_finite(probs, {"id": "-", "file_name": name}, [self.weights])
        probabilities = probs.float().cpu().numpy()
        return Prediction(probabilities, probabilities.argmax(axis=0).astype(np.uint8), list(self.class_names))


def _exported_file(source: Path, weights: str | Path | None) -> Path | None:
    """The .onnx file `source` names (itself, or a package folder's model.onnx); None for PyTorch sources."""
    package = source.is_dir() and (source / PACKAGE_MODEL).is_file()
    if source.suffix.lower() != ".onnx" and not package:
        return None
    if weights is not None:
        raise PredictorError(f"{source}: an exported model holds its weights: give no weights ({weights})")
    return source / PACKAGE_MODEL if package else source


def _require_run_folder(folder: Path) -> None:
    missing = [name for name in (RUN_CONFIG, RUN_WEIGHTS) if not (folder / name).is_file()]
    if missing:
        raise PredictorError(
            f"{folder}: no {' and no '.join(missing)}: give a finished run's OUTPUT_DIR (or a config and weights)"
        )


def _config_and_weights(source: Path, weights: str | Path | None) -> tuple[Path, Path]:
    """(config file, checkpoint) of a PyTorch source: a run folder (weights default to its model_final.pth) or a
    config file with weights."""
    if source.is_dir():
        if weights is None:
            _require_run_folder(source)
        elif not (source / RUN_CONFIG).is_file():
            raise PredictorError(f"{source}: no {RUN_CONFIG}: give a run folder, a package folder or a config file")
        return source / RUN_CONFIG, Path(weights or source / RUN_WEIGHTS).expanduser()
    if not source.is_file():
        raise PredictorError(
            f"{source}: not found: give a config file and weights, a run folder, a .onnx file or a package"
        )
    if weights is None:
        raise PredictorError(f"{source}: a config file needs weights: Predictor(config, weights)")
    if not Path(weights).expanduser().is_file():
        raise PredictorError(f"{weights}: checkpoint not found")
    return source, Path(weights).expanduser()


def _torch_model(
    config_file: Path, weights: Path, device: str, opts: Sequence[str]
) -> tuple[CfgNode, nn.Module, list[str]]:
    """(config, model in eval mode on `device`, class names: the checkpoint's record, else "class <i>")."""
    from ..config import load_config
    from ..io.checkpoints import recorded_class_names
    from ..modeling import register_all  # noqa: F401  (every model family's config keys and classes)

    cfg = load_config(str(config_file), list(opts))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_prediction_model(cfg, str(weights), device, cfg.MODEL.ALLOW_PICKLE)
    names = recorded_class_names(weights, cfg.MODEL.ALLOW_PICKLE)
    return cfg, model, names or [f"class {index}" for index in range(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)]


def _as_bgr(image: str | Path | np.ndarray | object) -> tuple[np.ndarray, str]:
    """(BGR uint8 H x W x 3 pixels, a name for messages) of a path, a PIL image or a BGR array."""
    from ..io.images import read_image

    if isinstance(image, str | Path):
        return read_image(image), str(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise PredictorError(
                f"an array of {image.dtype} {tuple(image.shape)}: give H x W x 3 uint8 pixels in BGR order "
                "(as cv2.imread returns them)"
            )
        return image, "the image"
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1]), "the PIL image"
    raise PredictorError(f"an image of type {type(image).__name__}: give a path, a PIL image or a BGR uint8 array")
