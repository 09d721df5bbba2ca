"""The Model page's computations: a model given with --model predicts one photo through
`mask2former.inference.predictor.Predictor` (the API tools/predict.py and the HTTP service use), and what the page
shows of the prediction: the overlay, the legend, the share of the pixels of each class and, for an image of a json
with ground truth, the image's mIoU.

A photo comes from a json, from the data root, or uploaded: uploaded bytes are decoded in memory, within the byte
and pixel limits of the HTTP service (`mask2former.io.images.decode_image_limited`), and never written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.classes import palette_for
from ..evaluation.sem_seg import confusion_matrix, metrics_from_confusion
from ..inference.predictor import Prediction, Predictor
from ..io.images import IMAGE_EXTENSIONS, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, decode_image_limited
from ..utils.visualize import legend
from .arguments import ModelSource
from .data import match_size, overlay_picture
from .paths import Roots, list_files

UPLOAD_TYPES = tuple(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)  # what the uploader offers
IMAGE_DEPTH = 3  # sub-folder levels under the data root searched for images


def load_predictor(source: ModelSource, roots: Roots, device: str = "auto") -> Predictor:
    """The Predictor of a --model (PyTorch weights on the GPU if any with `device` "auto"; an exported file on the
    CPU with onnxruntime); every file it reads is checked against the roots first."""
    for path in source.files:
        roots.check(path)
    return Predictor(source.source, source.weights, device=device)


def predict_photo(predictor: Predictor, image_bgr: np.ndarray, tta: bool = False) -> Prediction:
    """The prediction of a BGR uint8 photo at its size, with or without the config's test-time augmentation."""
    return predictor(image_bgr, tta=tta)


def read_upload(data: bytes) -> np.ndarray:
    """Uploaded image bytes as a BGR uint8 array, decoded in memory; over MAX_IMAGE_BYTES bytes or MAX_IMAGE_PIXELS
    pixels, not an image, or broken: an `ImageBytesError` in one line."""
    return decode_image_limited(data, MAX_IMAGE_PIXELS, MAX_IMAGE_BYTES)


def data_root_images(roots: Roots, data_root: Path) -> list[Path]:
    """The image files under the data root (IMAGE_DEPTH levels of sub-folders), sorted; links leading out are left
    out."""
    return list_files(roots, data_root, IMAGE_EXTENSIONS, max_depth=IMAGE_DEPTH)


def class_shares(prediction: Prediction) -> pd.DataFrame:
    """One row per class: its pixels in the label map, their share of the map (0..1), and the class's mean
    probability over the photo (the share of a soft vote)."""
    labels, names = prediction.labels, prediction.class_names
    counts = np.bincount(labels.ravel(), minlength=len(names))[: len(names)]
    mean = prediction.probabilities.mean(axis=(1, 2), dtype=np.float64)
    shares = {"class": list(names), "pixels": counts, "share": counts / labels.size, "mean probability": mean}
    return pd.DataFrame(shares)


def prediction_pictures(
    image_bgr: np.ndarray, prediction: Prediction, alpha: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """(the photo with the label overlay, the legend of the model's classes), BGR, in the classes' colours."""
    palette = palette_for(prediction.class_names)
    picture = overlay_picture(image_bgr, prediction.labels, palette, alpha)
    return picture, legend(prediction.class_names, palette, width=200)


def class_mismatch(model_classes: Sequence[str], json_classes: Sequence[str]) -> str | None:
    """Why the model's labels cannot be scored against the json's (a different number of classes), or None."""
    if len(model_classes) != len(json_classes):
        return (
            f"the model has {len(model_classes)} classes and the json {len(json_classes)}: "
            "its labels cannot be scored against the ground truth"
        )
    return None


def renamed_classes(model_classes: Sequence[str], json_classes: Sequence[str]) -> list[tuple[int, str, str]]:
    """(index, the model's name, the json's name) of each class named differently (scored by index all the same)."""
    return [
        (index, mine, theirs)
        for index, (mine, theirs) in enumerate(zip(model_classes, json_classes, strict=True))
        if mine != theirs
    ]


def image_scores(ground_truth: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """{"mIoU", "pACC"} of one image's predicted labels against its ground truth (reduced by nearest neighbour to
    the labels' size if it differs), as the evaluator computes them over a set: the classes absent from both are
    left out of the mean."""
    hist = confusion_matrix(match_size(ground_truth, labels.shape), labels, num_classes)
    metrics = metrics_from_confusion(hist)
    return {"mIoU": metrics["mIoU"], "pACC": metrics["pACC"]}
