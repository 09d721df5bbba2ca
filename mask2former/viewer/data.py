"""A COCO json indexed for the viewer: images, their annotations, classes; label maps per image.

Nothing is rendered up front: opening a json only parses it and groups annotations by image, so
a 3,000-image set opens in about a second. Label maps are rendered per image on demand with
the project's own `render_label_map` (the same maps the trainer and the evaluator use); an
annotation that `check_annotation` rejects is left out of the map and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..data.classes import palette_for
from ..data.coco_checks import check_annotation
from ..data.coco_semantic import category_to_label, class_names_from_categories
from ..data.rasterize import annotation_mask, render_label_map
from ..io.coco_json import read_coco_json
from ..io.images import read_image
from ..utils.visualize import overlay, shrink_for_overlay
from .paths import Roots

logger = logging.getLogger(__name__)


@dataclass
class DatasetIndex:
    """One COCO json: its images in json order, annotations grouped per image, classes and palette."""

    json_file: Path
    image_root: Path
    images: list[dict]
    anns_by_image: dict[Any, list[dict]]
    labels: dict[int, int]
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    has_gt: bool
    bad_annotations: dict[Any, list[str]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def image(self, image_id: Any) -> dict:
        return self._by_id[image_id]

    def __post_init__(self) -> None:
        self._by_id = {image["id"]: image for image in self.images}
        self._by_name = {image["file_name"]: image for image in self.images}
        self._object_counts = {image["id"]: len(self.anns_by_image.get(image["id"], [])) for image in self.images}

    def by_file_name(self, file_name: str) -> dict | None:
        return self._by_name.get(file_name)

    def image_path(self, roots: Roots, image: dict) -> Path:
        """The image file, checked against the roots (`PathOutsideRoots` if it leads out)."""
        return roots.join(self.image_root, image["file_name"])

    def object_counts(self) -> dict[Any, int]:
        """image id -> number of (renderable) annotations; computed once, the index is read-only."""
        return self._object_counts

    def classes_in(self, image_id: Any) -> set[int]:
        return {self.labels[a["category_id"]] for a in self.anns_by_image.get(image_id, [])}


def load_index(json_file: str | Path, image_root: str | Path) -> DatasetIndex:
    """Parse a COCO json and index it; annotations that cannot be rendered are set aside with reasons."""
    json_file = Path(json_file)
    data = read_coco_json(json_file)
    images = [image for image in data["images"] if {"id", "file_name", "height", "width"} <= image.keys()]
    known = {image["id"]: image for image in images}
    labels = category_to_label(data["categories"])
    anns_by_image: dict[Any, list[dict]] = {}
    bad: dict[Any, list[str]] = {}
    for ann in data["annotations"]:
        image = known.get(ann.get("image_id"))
        if image is None:
            bad.setdefault(None, []).append(f"annotation {ann.get('id')}: unknown image id {ann.get('image_id')!r}")
            continue
        problem = check_annotation(ann, image, labels, json_file)
        if problem is None:
            anns_by_image.setdefault(image["id"], []).append(ann)
        else:
            bad.setdefault(image["id"], []).append(problem[1])
    class_names = class_names_from_categories(data["categories"])
    return DatasetIndex(
        json_file=json_file,
        image_root=Path(image_root),
        images=images,
        anns_by_image=anns_by_image,
        labels=labels,
        class_names=class_names,
        palette=palette_for(class_names),
        has_gt=len(data["annotations"]) > 0,
        bad_annotations=bad,
    )


def label_map(index: DatasetIndex, image_id: Any) -> np.ndarray:
    """The image's uint8 label map (0 background, 1..K classes), rendered from its checked annotations."""
    image = index.image(image_id)
    return render_label_map(image, index.anns_by_image.get(image_id, []), index.labels)


def match_size(reference: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A label map at `shape` (nearest neighbour, as tools/evaluate.py reduces ground truth)."""
    if reference.shape == tuple(shape):
        return reference
    return cv2.resize(reference.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def hide_classes(label: np.ndarray, hidden: tuple[int, ...] | list[int]) -> np.ndarray:
    """The label map with the hidden classes painted as background (so the overlay leaves them out)."""
    if not hidden:
        return label
    out = label.copy()
    out[np.isin(label, list(hidden))] = 0
    return out


def overlay_picture(
    image_bgr: np.ndarray,
    label: np.ndarray | None,
    palette: list[tuple[int, int, int]],
    alpha: float = 0.5,
    hidden: tuple[int, ...] = (),
) -> np.ndarray:
    """The image with the label overlay (hidden classes left out); label None gives the image itself.

    A label of another size than the image (a 256x256 prediction) is scaled by nearest neighbour; an image longer
    than MAX_OVERLAY_SIDE is shrunk to it first (utils/visualize.py).
    """
    if label is None:
        return image_bgr
    image_bgr = shrink_for_overlay(image_bgr)
    label = match_size(label, image_bgr.shape[:2])
    if alpha <= 0:
        return image_bgr
    return overlay(image_bgr, hide_classes(label, hidden), palette, alpha=alpha)


def difference_picture(gt: np.ndarray, pred: np.ndarray, ignore_label: int = 255) -> np.ndarray:
    """BGR picture of where a prediction differs: black agree, red differ, grey ignored ground truth."""
    pred = match_size(pred, gt.shape)
    out = np.zeros((*gt.shape, 3), dtype=np.uint8)
    out[gt != pred] = (40, 40, 230)
    out[gt == ignore_label] = (128, 128, 128)
    return out


def resize_to_width(image: np.ndarray, width: int) -> np.ndarray:
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    if image.shape[1] == width:
        return image
    interpolation = cv2.INTER_AREA if width < image.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def encode_jpeg(image_bgr: np.ndarray, quality: int = 85) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError("could not encode a JPEG")
    return encoded.tobytes()


def encode_png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError("could not encode a PNG")
    return encoded.tobytes()


def thumbnail(
    index: DatasetIndex,
    roots: Roots,
    image_id: Any,
    width: int = 256,
    alpha: float = 0.5,
    hidden: tuple[int, ...] = (),
) -> bytes:
    """A JPEG of the image (scaled to `width`) with its ground-truth overlay when the json has one."""
    image = index.image(image_id)
    picture = read_image(str(index.image_path(roots, image)))
    label = label_map(index, image_id) if index.has_gt else None
    return encode_jpeg(resize_to_width(overlay_picture(picture, label, index.palette, alpha, hidden), width))


def filter_images(
    index: DatasetIndex,
    contains: list[int] | tuple[int, ...] = (),
    min_objects: int = 0,
    max_objects: int | None = None,
) -> list[Any]:
    """Image ids (json order) that hold every class in `contains` and min..max objects."""
    wanted = set(contains)
    counts = index.object_counts()
    kept = []
    for image in index.images:
        count = counts[image["id"]]
        if count < min_objects or (max_objects is not None and count > max_objects):
            continue
        if wanted and not wanted <= index.classes_in(image["id"]):
            continue
        kept.append(image["id"])
    return kept


def image_objects(index: DatasetIndex, image_id: Any) -> list[dict]:
    """One row per annotation of the image: id, class, area (px) and its share of the image."""
    image = index.image(image_id)
    total = image["height"] * image["width"]
    rows = []
    for ann in index.anns_by_image.get(image_id, []):
        area = annotation_area(ann, image)
        label = index.labels[ann["category_id"]]
        rows.append(
            {
                "annotation": ann.get("id"),
                "class": index.class_names[label],
                "area (px)": int(round(area)),
                "share": area / total,
            }
        )
    return rows


def annotation_area(ann: dict, image: dict) -> float:
    """The json's `area` when it is a number, else the area of the decoded mask."""
    if isinstance(ann.get("area"), (int, float)):
        return float(ann["area"])
    return float(annotation_mask(ann, image["height"], image["width"]).sum())
