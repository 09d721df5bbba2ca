"""The checks of a COCO json's images, annotations and given label maps, before anything is rendered.

A problem is a (reason, message) pair whose message names the json, the image and the annotation. It raises
`DataError`, or with `skip_bad=True` the item is skipped and counted in a `SkipReport` (logged at the end).
Images are in the stored pixel frame (`mask2former.io.images`): the json's width/height must be the stored
image's size, and the EXIF orientation tag is read (to be reported), never applied.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..io.coco_json import DataError
from ..io.images import LabelMapError, ReadError, describe_orientation, orientation_of, read_label
from ..utils.progress import progress as with_progress
from .rasterize import IGNORE_LABEL

# A polygon vertex further outside the image than this share of the image size is an error
# (annotators' vertices often stray a few pixels; far-off ones mean broken coordinates).
OUT_OF_BOUNDS_MARGIN = 0.1

Problem = tuple[str, str]  # (reason, message)


@dataclass
class SkipReport:
    """Items skipped under `skip_bad`, counted by reason, with the messages for the log."""

    json_file: str
    messages: list[str] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    skipped_images: int = 0
    skipped_annotations: int = 0

    def add(self, reason: str, message: str, whole_image: bool) -> None:
        self.reasons[reason] += 1
        self.messages.append(message)
        if whole_image:
            self.skipped_images += 1
        else:
            self.skipped_annotations += 1

    def summary(self) -> str:
        if not self.messages:
            return f"{self.json_file}: nothing skipped"
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.reasons.items()))
        return (
            f"{self.json_file}: skipped {self.skipped_images} image(s) and "
            f"{self.skipped_annotations} annotation(s) ({reasons})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "skipped_images": self.skipped_images,
            "skipped_annotations": self.skipped_annotations,
            "reasons": dict(self.reasons),
            "messages": self.messages,
        }


def passes(problem: Problem | None, report: SkipReport, skip_bad: bool, whole_image: bool) -> bool:
    """True without a problem; else False with the problem counted in `report` (`skip_bad`), or DataError."""
    if problem is None:
        return True
    if not skip_bad:
        raise DataError(problem[1])
    report.add(problem[0], problem[1], whole_image=whole_image)
    return False


def describe_image(json_file: Path, image: dict, ann_id: Any = None) -> str:
    """'<json>: image '<file_name>' (id <id>)[, annotation <ann_id>]': where a problem is."""
    where = f"{json_file}: image {image.get('file_name')!r} (id {image.get('id')})"
    return where if ann_id is None else f"{where}, annotation {ann_id}"


def check_annotation(ann: dict, image: dict, labels: dict[int, int], json_file: Path) -> Problem | None:
    """(reason, message) if the annotation cannot be rendered faithfully, else None."""
    where = describe_image(json_file, image, ann.get("id"))
    if ann.get("category_id") not in labels:
        known = ", ".join(str(c) for c in sorted(labels))
        return "unknown category", f"{where}: unknown category_id {ann.get('category_id')!r} (known: {known})"
    area = ann.get("area")
    if area is not None and (
        isinstance(area, bool) or not isinstance(area, (int, float)) or not math.isfinite(area) or area <= 0
    ):
        return (
            "bad area",
            f"{where}: area is {area!r}; objects are painted largest area first, so this one would be painted last, "
            "over every object it overlaps: set area to the object's pixel count, or remove the field to have it "
            "counted (or DATASETS.SKIP_BAD_ANNOTATIONS True to skip such annotations)",
        )
    segmentation = ann.get("segmentation")
    height, width = image["height"], image["width"]
    if isinstance(segmentation, dict):
        return _check_rle(segmentation, height, width, where)
    if not isinstance(segmentation, list) or not segmentation:
        return "empty segmentation", f"{where}: segmentation is empty or not a list of polygons / an RLE dict"
    return _check_polygons(segmentation, height, width, where)


def _check_polygons(segmentation: list, height: int, width: int, where: str) -> Problem | None:
    margin = OUT_OF_BOUNDS_MARGIN * max(height, width)
    for index, polygon in enumerate(segmentation):
        if not isinstance(polygon, list) or not all(isinstance(v, (int, float)) for v in polygon):
            return "bad polygon", f"{where}: polygon {index} is not a flat list of numbers"
        if len(polygon) % 2:
            return "bad polygon", f"{where}: polygon {index} has an odd number of values ({len(polygon)})"
        if len(polygon) < 6:
            return (
                "bad polygon",
                f"{where}: polygon {index} has {len(polygon) // 2} point(s); a polygon needs at least 3",
            )
        xs, ys = np.asarray(polygon[0::2], dtype=np.float64), np.asarray(polygon[1::2], dtype=np.float64)
        if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
            return "bad polygon", f"{where}: polygon {index} has non-finite coordinates"
        if xs.min() < -margin or ys.min() < -margin or xs.max() > width + margin or ys.max() > height + margin:
            return (
                "out of bounds",
                f"{where}: polygon {index} reaches ({xs.min():.1f}..{xs.max():.1f}, {ys.min():.1f}..{ys.max():.1f}), "
                f"far outside the {width}x{height} image",
            )
    return None


def _check_rle(rle: dict, height: int, width: int, where: str) -> Problem | None:
    size, counts = rle.get("size"), rle.get("counts")
    if not isinstance(size, list) or len(size) != 2 or counts is None:
        return "bad RLE", f"{where}: an RLE needs 'size' [height, width] and 'counts'"
    if list(size) != [height, width]:
        return "bad RLE", f"{where}: RLE size {size} differs from the image size [{height}, {width}]"
    if isinstance(counts, list) and sum(counts) != height * width:
        return "bad RLE", f"{where}: RLE counts sum to {sum(counts)}, expected {height * width}"
    return None


def check_image_file(path: Path, image: dict, json_file: Path) -> Problem | None:
    """(reason, message) if the image is missing, unreadable or not the size the json says."""
    return inspect_image_file(path, image, json_file)[0]


def inspect_image_file(path: Path, image: dict, json_file: Path) -> tuple[Problem | None, int]:
    """(the problem as in `check_image_file`, the image's EXIF orientation value). Sizes are the stored
    pixels' (the frame COCO annotations are given in); the tag is read, never applied."""
    where = describe_image(json_file, image)
    if not path.is_file():
        return ("missing image", f"{where}: image file not found at {path}"), 1
    try:
        with Image.open(path) as img:
            width, height = img.size  # the stored size: PIL does not apply the orientation tag
            orientation = orientation_of(img)
            img.draft("L", (max(1, width // 8), max(1, height // 8)))  # decode small: still reads all data
            img.load()
    except (OSError, SyntaxError, ValueError) as error:
        return ("unreadable image", f"{where}: cannot read {path} ({error})"), 1
    if (height, width) != (image["height"], image["width"]):
        message = f"{where}: {path} is {width}x{height} but the json says {image['width']}x{image['height']}"
        if orientation in (5, 6, 7, 8) and (width, height) == (image["height"], image["width"]):
            message += (
                f"; the photo carries {describe_orientation(orientation)} and the json gives the rotated size: "
                "annotations must be given on the stored pixels (the COCO convention) - re-export them on the "
                "stored image, or rotate its pixels and drop the tag"
            )
        return ("size mismatch", message), orientation
    return None, orientation


def has_label_maps(data: dict, json_file: Path) -> bool:
    """True if the json gives its label maps as PNGs (every image has `sem_seg_file_name`, no annotations)."""
    given = [image for image in data["images"] if "sem_seg_file_name" in image]
    if not given:
        return False
    if len(given) != len(data["images"]):
        missing = next(image for image in data["images"] if "sem_seg_file_name" not in image)
        raise DataError(
            f"{describe_image(json_file, missing)}: has no sem_seg_file_name while {len(given)} other image(s) do; "
            "a json gives label maps for every image or for none"
        )
    if data["annotations"]:
        raise DataError(f"{json_file}: gives label maps (sem_seg_file_name) and annotations; use one or the other")
    return True


def checking(items: Any, json_file: Path) -> Iterable:
    """`items`, with progress when there are enough of them to take a while."""
    return with_progress(items, desc=f"check {json_file.name}", unit="img") if len(items) >= 200 else items


def checked_images(
    images: list[dict], json_file: Path, image_root: Path, report: SkipReport, skip_bad: bool
) -> tuple[dict[int, dict], set, dict[str, Any]]:
    """(id -> image that passed, ids of skipped images, the count and an example of EXIF-oriented images)."""
    checked: dict[int, dict] = {}
    skipped_ids: set = set()
    oriented: dict[str, Any] = {"count": 0, "example": None, "tag": None}
    for image in checking(images, json_file):
        problem, orientation = _image_problem(image, checked, json_file, image_root)
        if orientation != 1:
            oriented["count"] += 1
            if oriented["example"] is None:
                oriented.update(example=image["file_name"], tag=orientation)
        if passes(problem, report, skip_bad, whole_image=True):
            checked[image["id"]] = image
        else:
            skipped_ids.add(image.get("id"))
    return checked, skipped_ids, oriented


def _image_problem(
    image: dict, checked: dict[int, dict], json_file: Path, image_root: Path
) -> tuple[Problem | None, int]:
    """(the image entry's or its file's problem, the file's EXIF orientation: 1 when the file is not read)."""
    missing = [key for key in ("id", "file_name", "height", "width") if key not in image]
    if missing:
        return ("bad image entry", f"{describe_image(json_file, image)}: missing field(s) {', '.join(missing)}"), 1
    if image["id"] in checked:
        return ("duplicate image id", f"{describe_image(json_file, image)}: image id {image['id']} repeats"), 1
    return inspect_image_file(image_root / image["file_name"], image, json_file)


def checked_annotations(
    anns: list[dict],
    images: dict[int, dict],
    skipped_ids: set,
    labels: dict[int, int],
    json_file: Path,
    report: SkipReport,
    skip_bad: bool,
) -> dict[int, list[dict]]:
    """Image id -> its annotations that passed; those of skipped images are left out silently."""
    by_image: dict[int, list[dict]] = {}
    for ann in anns:
        image = images.get(ann.get("image_id"))
        if image is None:
            if ann.get("image_id") in skipped_ids:
                continue  # its image was skipped and counted above
            problem = (
                "unknown image",
                f"{json_file}: annotation {ann.get('id')} refers to image id "
                f"{ann.get('image_id')!r}, which is not in 'images'",
            )
        else:
            problem = check_annotation(ann, image, labels, json_file)
        if passes(problem, report, skip_bad, whole_image=False):
            by_image.setdefault(image["id"], []).append(ann)
    return by_image


def checked_label_maps(
    images: dict[int, dict], json_file: Path, num_classes: int, report: SkipReport, skip_bad: bool
) -> list[tuple[dict, Path]]:
    """(image, its label PNG) for a json whose images name their label maps (relative to the json's folder), for
    each map that passed: a single-channel 8-bit PNG of the image's size holding 0..K-1 or 255."""
    passed = []
    for image in checking(images.values(), json_file):
        path = (json_file.parent / image["sem_seg_file_name"]).resolve()
        if passes(_label_map_problem(path, image, json_file, num_classes), report, skip_bad, whole_image=True):
            passed.append((image, path))
    return passed


def _label_map_problem(path: Path, image: dict, json_file: Path, num_classes: int) -> Problem | None:
    try:
        label = read_label(path, (image["height"], image["width"]))
    except (ReadError, LabelMapError) as error:
        return ("bad label map", f"{describe_image(json_file, image)}: {error}")
    values = np.unique(label)
    bad_values = values[(values >= num_classes) & (values != IGNORE_LABEL)]
    if bad_values.size:
        return (
            "bad label map",
            f"{describe_image(json_file, image)}: label map {path} holds {bad_values.tolist()}, outside "
            f"0..{num_classes - 1} and {IGNORE_LABEL} (ignore)",
        )
    return None
