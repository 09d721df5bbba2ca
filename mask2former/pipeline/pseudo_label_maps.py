"""Pseudo-labels: class probabilities of unlabelled images -> label maps with uncertain pixels ignored -> a dataset.

A pixel's pseudo-label is the class of highest probability when that probability reaches the threshold, else 255
(ignored by the losses). Label maps are made at the image's size: probabilities stored at any other size (256x256
by default in what tools/predict.py and tools/ensemble_crf.py write, see mask2former/io/probabilities.py) are first
resized bilinearly to the image and renormalised over the classes (`mask2former.pipeline.voting.resize_probabilities`,
the
resize of ensemble_crf.py --size), then thresholded.

The pseudo-labelled dataset is a COCO-layout json whose images name their label PNGs (`sem_seg_file_name`,
relative to the json's folder) and which has no annotations; `register_coco_semantic` (and DATASETS.REGISTER)
load such a json as they load any other (mask2former/data/coco_semantic.py). Label PNG names come from the images'
file_names through `mask2former.io.files.output_path`, so an absolute or climbing name is refused, never written
outside the dataset folder. The rounds themselves: mask2former/pipeline/pseudo_label.py (tools/pseudo_label.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.rasterize import IGNORE_LABEL
from ..io.files import atomic_write_json, output_path, safe_relative_name
from .voting import resize_probabilities


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
    """Where an image's pseudo-label lives, relative to the dataset folder: labels/<file_name>.png (POSIX); a
    file_name that is absolute or climbs out with '..' is refused (UnsafePathError)."""
    return str("labels" / safe_relative_name(file_name, "image file_name").with_suffix(".png"))


def label_png_path(folder: str | Path, file_name: str) -> Path:
    """FOLDER/labels/<file_name>.png, guaranteed to lie under FOLDER (UnsafePathError otherwise)."""
    return output_path(folder, label_png_name(file_name))


def write_pseudo_dataset(folder: str | Path, images: Sequence[dict], categories: Sequence[dict]) -> Path:
    """FOLDER/pseudo.json (atomically): the images {id, file_name, height, width} with their label PNGs
    (labels/<file_name>.png, which must exist), the categories, no annotations. Returns the json's path."""
    folder = Path(folder)
    entries = []
    for image in images:
        name = label_png_name(image["file_name"])
        if not label_png_path(folder, image["file_name"]).is_file():
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
