"""Pseudo-labels: class probabilities of unlabelled images -> label maps with uncertain pixels ignored -> a dataset.

A pixel's pseudo-label is the class of highest probability when that probability reaches the threshold, else 255
(ignored by the losses). Probabilities stored at another size than the image (256x256 by default, see
mask2former/prediction_io.py) are resized bilinearly to the image first, as predict.py does for its CSV's source.

The pseudo-labelled dataset is a COCO-layout json whose images name their label PNGs (`sem_seg_file_name`,
relative to the json's folder) and which has no annotations; `register_coco_semantic` (and DATASETS.REGISTER)
load such a json as they load any other (mask2former/data/coco_semantic.py). tools/pseudo_label.py runs the rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .data.coco_semantic import IGNORE_LABEL
from .ensemble import resize_probabilities
from .utils.io import atomic_write_json


def pseudo_label_map(probs: np.ndarray, height: int, width: int, threshold: float) -> np.ndarray:
    """uint8 HxW label map from K x h x w probabilities: argmax where the top probability is at least
    `threshold`, IGNORE_LABEL elsewhere; probabilities of another size are resized bilinearly first."""
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise ValueError(f"expected K x H x W probabilities, got shape {probs.shape}")
    if probs.shape[0] >= IGNORE_LABEL:
        raise ValueError(f"{probs.shape[0]} classes do not fit a uint8 label map beside the ignore value")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the confidence threshold must lie in [0, 1], got {threshold}")
    probs = resize_probabilities(probs, height, width)
    label = probs.argmax(axis=0).astype(np.uint8)
    label[probs.max(axis=0) < threshold] = IGNORE_LABEL
    return label


def ignored_share(label: np.ndarray) -> float:
    """Share of the map's pixels set to IGNORE_LABEL."""
    return float((np.asarray(label) == IGNORE_LABEL).mean()) if label.size else 0.0


def label_png_name(file_name: str) -> str:
    """Where an image's pseudo-label lives, relative to the dataset folder: labels/<file_name>.png."""
    return str(Path("labels") / Path(file_name).with_suffix(".png"))


def write_pseudo_dataset(folder: str | Path, images: Sequence[dict], categories: Sequence[dict]) -> Path:
    """FOLDER/pseudo.json (atomically): the images {id, file_name, height, width} with their label PNGs
    (labels/<file_name>.png, which must exist), the categories, no annotations. Returns the json's path."""
    folder = Path(folder)
    entries = []
    for image in images:
        name = label_png_name(image["file_name"])
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"pseudo-label of image {image['id']} ({image['file_name']}) missing: {folder / name}"
            )
        entries.append(
            {
                "id": image["id"],
                "file_name": image["file_name"],
                "height": image["height"],
                "width": image["width"],
                "sem_seg_file_name": name,
            }
        )
    path = folder / "pseudo.json"
    atomic_write_json(path, {"images": entries, "annotations": [], "categories": list(categories)})
    return path


def keeps_round(val_miou: float, best_miou: float, min_gain: float = 0.0) -> bool:
    """A round is kept only if it raised val mIoU by more than `min_gain` over the best so far."""
    return bool(np.isfinite(val_miou)) and val_miou > best_miou + min_gain
