"""COCO json + images -> semantic label maps (PNG, cached) -> dataset dicts.

Label values: 0 is background, 1..K are the json's categories in id order, 255 is ignore.
Annotations are painted largest area first, so smaller objects win overlaps (the competition
baseline's rule). Bad annotations and images raise `DataError` naming the json, the image and the
annotation; with `skip_bad=True` they are skipped instead and a summary is logged at the end.

A json may instead give its label maps: every image then has `sem_seg_file_name`, a PNG relative to the json's
folder (the pseudo-labels of tools/pseudo_label.py are such a json), and `annotations` is empty; the maps are
checked once (size, values 0..K-1 or 255) and used as they are.

Images are in the stored pixel frame (`mask2former.io.images`): the json's width/height must be the stored
image's size, and photos whose EXIF orientation tag would rotate them are counted and logged per json (the tag
is not applied, to pixels or labels). An image file_name that is absolute or climbs out of the image root
with '..' is refused (`read_coco_json`). Asked for ground truth (`has_gt=True`), a json none of whose images
carries an annotation (a test json) is refused instead of scoring against all-background maps.

Rendered maps are cached under `<cache>/<json stem>-<hash of json bytes and options>/`, one PNG per
image, written atomically; a manifest written last marks the cache complete and records each label map's
SHA-1, so later loads neither re-validate nor re-rasterise, only check the bytes: a label map edited, replaced
or removed since is logged and rendered (a given one: checked) again. An interrupted render is finished.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..errors import FileSystemError
from ..io.coco_json import DataError, read_coco_json
from ..io.files import UnsafePathError, atomic_write_bytes, output_path, safe_relative_name
from ..io.images import LabelMapError, ReadError, describe_orientation, orientation_of, read_label, require_file
from ..utils.progress import progress as with_progress
from .catalog import DatasetCatalog, DatasetNameError, MetadataCatalog

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255
# A polygon vertex further outside the image than this share of the image size is an error
# (annotators' vertices often stray a few pixels; far-off ones mean broken coordinates).
OUT_OF_BOUNDS_MARGIN = 0.1
MANIFEST_NAME = "manifest.json"
CACHE_FORMAT_VERSION = 1


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


def default_cache_dir() -> Path:
    """$TRASH_CACHE if set, else ~/.cache/trashseg."""
    return Path(os.environ.get("TRASH_CACHE", "~/.cache/trashseg")).expanduser()


class LabelCacheError(FileSystemError):
    """The label cache cannot be written (a read-only file system, no permission); the message names its folder
    and how to move it."""


def write_cache_file(folder: Path, path: Path, data: bytes) -> None:
    """`path` (a label map or the manifest of the cache `folder`) written atomically; a cache that cannot be
    written is a LabelCacheError (other refusals of the file system are the writer's one line)."""
    try:
        atomic_write_bytes(path, data)
    except FileSystemError as error:
        if error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        why = "read-only file system" if error.errno == errno.EROFS else "no permission to write there"
        raise LabelCacheError(
            f"cannot write the label cache {folder} ({why}): set DATASETS.LABEL_CACHE_DIR (or $TRASH_CACHE) to a "
            "writable folder",
            error.errno,
        ) from error


def class_names_from_categories(categories: list[dict]) -> list[str]:
    """["Background", then the category names in id order]."""
    return ["Background"] + [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


class ClassListError(DataError):
    """Two class lists that should be one differ (in count, order or names); the message names both sources."""


def check_class_lists(
    names: list[str], source: str, reference: list[str], reference_source: str, advice: str = ""
) -> None:
    """ClassListError unless `names` (from `source`: a json, a model, a prediction folder) is `reference` (from
    `reference_source`), name for name in label order: the same ids with swapped names would score each class
    against another one. The one comparison of class lists, for every tool."""
    names, reference = [str(name) for name in names], [str(name) for name in reference]
    if names == reference:
        return
    if len(names) != len(reference):
        detail = f"{len(names)} classes against {len(reference)}"
    else:
        index = next(i for i, (a, b) in enumerate(zip(names, reference, strict=True)) if a != b)
        detail = f"label {index} is {names[index]!r} there and {reference[index]!r} in {reference_source}"
    what = advice or "give files of one class list (the same categories, ids and names)"
    raise ClassListError(f"{source}: classes {names} differ from {reference_source}'s {reference} ({detail}): {what}")


def category_to_label(categories: list[dict]) -> dict[int, int]:
    """Category id -> label value (1..K in id order)."""
    return {c["id"]: index + 1 for index, c in enumerate(sorted(categories, key=lambda c: c["id"]))}


def _describe(json_file: Path, image: dict, ann_id: Any = None) -> str:
    where = f"{json_file}: image {image.get('file_name')!r} (id {image.get('id')})"
    return where if ann_id is None else f"{where}, annotation {ann_id}"


def check_annotation(ann: dict, image: dict, labels: dict[int, int], json_file: Path) -> tuple[str, str] | None:
    """(reason, message) if the annotation cannot be rendered faithfully, else None."""
    where = _describe(json_file, image, ann.get("id"))
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


def _check_rle(rle: dict, height: int, width: int, where: str) -> tuple[str, str] | None:
    size, counts = rle.get("size"), rle.get("counts")
    if not isinstance(size, list) or len(size) != 2 or counts is None:
        return "bad RLE", f"{where}: an RLE needs 'size' [height, width] and 'counts'"
    if list(size) != [height, width]:
        return "bad RLE", f"{where}: RLE size {size} differs from the image size [{height}, {width}]"
    if isinstance(counts, list) and sum(counts) != height * width:
        return "bad RLE", f"{where}: RLE counts sum to {sum(counts)}, expected {height * width}"
    return None


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """A checked annotation's binary mask (uint8 HxW) via pycocotools (polygons or RLE)."""
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle)


def render_label_map(
    image: dict, anns: list[dict], labels: dict[int, int], crowd_as_ignore: bool = False
) -> np.ndarray:
    """Paint checked annotations largest area first (smaller objects win overlaps); uint8 HxW."""
    height, width = image["height"], image["width"]
    masks = [annotation_mask(ann, height, width) for ann in anns]
    areas = [
        float(ann["area"]) if isinstance(ann.get("area"), (int, float)) else float(m.sum())
        for ann, m in zip(anns, masks, strict=True)
    ]
    label_map = np.zeros((height, width), dtype=np.uint8)
    for index in sorted(range(len(anns)), key=lambda i: -areas[i]):  # stable: ties keep json order
        ann = anns[index]
        value = IGNORE_LABEL if crowd_as_ignore and ann.get("iscrowd", 0) else labels[ann["category_id"]]
        label_map[masks[index] == 1] = value
    return label_map


def check_image_file(path: Path, image: dict, json_file: Path) -> tuple[str, str] | None:
    """(reason, message) if the image is missing, unreadable or not the size the json says."""
    return inspect_image_file(path, image, json_file)[0]


def inspect_image_file(path: Path, image: dict, json_file: Path) -> tuple[tuple[str, str] | None, int]:
    """(the problem as in `check_image_file`, the image's EXIF orientation value). Sizes are the stored
    pixels' (the frame COCO annotations are given in); the tag is read, never applied."""
    where = _describe(json_file, image)
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


def _cache_folder(json_file: Path, json_bytes: bytes, cache_dir: Path, crowd_as_ignore: bool, skip_bad: bool) -> Path:
    key = hashlib.sha1(json_bytes)
    key.update(f"v{CACHE_FORMAT_VERSION} crowd_as_ignore={crowd_as_ignore} skip_bad={skip_bad}".encode())
    return cache_dir / f"{json_file.stem}-{key.hexdigest()[:16]}"


def load_sem_seg_dataset(
    json_file: str | Path,
    image_root: str | Path,
    cache_dir: str | Path | None = None,
    skip_bad: bool = False,
    crowd_as_ignore: bool = False,
    has_gt: bool | None = None,
    progress: bool = True,
) -> list[dict]:
    """Dataset dicts {file_name, image_id, height, width[, sem_seg_file_name]} for a COCO json.

    `has_gt=None` means: ground truth if the json has any annotation. Label maps are rendered on
    the first call and read from the cache afterwards.
    """
    dicts, _ = load_with_manifest(json_file, image_root, cache_dir, skip_bad, crowd_as_ignore, has_gt, progress)
    return dicts


def ground_truth_label_paths(
    json_file: str | Path, image_root: str | Path, cache_dir: str | Path | None = None
) -> tuple[dict[str, str], list[str]]:
    """(file_name as in the json -> its rendered label PNG, the class names) for a json with ground truth."""
    root = Path(image_root).resolve()
    dicts, manifest = load_with_manifest(json_file, root, cache_dir, has_gt=True)
    paths = {Path(d["file_name"]).relative_to(root).as_posix(): d["sem_seg_file_name"] for d in dicts}
    return paths, list(manifest["class_names"])


def load_with_manifest(
    json_file: str | Path,
    image_root: str | Path,
    cache_dir: str | Path | None = None,
    skip_bad: bool = False,
    crowd_as_ignore: bool = False,
    has_gt: bool | None = None,
    progress: bool = True,
) -> tuple[list[dict], dict[str, Any]]:
    """`load_sem_seg_dataset` plus the cache manifest (class names, skip summary)."""
    require_file(json_file, "COCO json")
    json_file, image_root = Path(json_file).resolve(), Path(image_root).resolve()
    if not json_file.is_file():
        raise FileNotFoundError(f"COCO json not found: {json_file}")
    folder = _cache_folder(
        json_file, json_file.read_bytes(), Path(cache_dir or default_cache_dir()), crowd_as_ignore, skip_bad
    )
    manifest = _complete_manifest(folder / MANIFEST_NAME)
    stale: set[str] = set()  # cached label maps whose bytes differ from what the manifest recorded
    if manifest is not None and manifest.get("image_root") == str(image_root) and has_gt in (None, manifest["has_gt"]):
        if manifest["has_gt"] and not manifest["given_label_maps"] and manifest["num_annotations"] == 0:
            raise DataError(_no_ground_truth_message(json_file, len(manifest["images"])))
        stale = set(_changed_label_maps(manifest, folder))
        changed = sorted(stale)
        if not changed:
            _log_oriented(json_file, manifest["oriented"])
            return _dicts_from_manifest(manifest, image_root, folder, json_file), manifest
        logger.warning(
            "%s: %d label map(s) changed or vanished since they were checked and cached (e.g. %s): %s",
            json_file,
            len(changed),
            changed[0],
            "checking them again" if manifest["given_label_maps"] else f"rendering them again into {folder}",
        )

    data = read_coco_json(json_file)
    labels = category_to_label(data["categories"])
    given_maps = _has_label_maps(data, json_file)
    if has_gt is None:
        has_gt = given_maps or len(data["annotations"]) > 0
    if has_gt and not given_maps and not data["annotations"]:
        raise DataError(_no_ground_truth_message(json_file, len(data["images"])))
    report = SkipReport(str(json_file))
    images, skipped_ids, oriented = _checked_images(data["images"], json_file, image_root, report, skip_bad)
    anns_by_image = _checked_annotations(data["annotations"], images, skipped_ids, labels, json_file, report, skip_bad)
    num_annotations = sum(len(anns) for anns in anns_by_image.values())
    if has_gt and not given_maps and num_annotations == 0:
        raise DataError(_no_ground_truth_message(json_file, len(images), skipped=len(data["annotations"])))

    if given_maps and has_gt:
        entries = _label_map_entries(images, json_file, len(labels) + 1, report, skip_bad)
    else:
        entries = []
        shown = images.values()
        for image in with_progress(shown, desc=f"render {json_file.name}", unit="img") if progress else shown:
            entry = _entry(image)
            if has_gt:
                label_name = f"{image['id']}.png"
                try:
                    label_path = output_path(folder, label_name)
                except UnsafePathError as error:
                    where = _describe(json_file, image)
                    raise DataError(f"{where}: its id cannot name a label file ({error})") from None
                if str(label_path) in stale or not label_path.is_file():
                    label_map = render_label_map(image, anns_by_image.get(image["id"], []), labels, crowd_as_ignore)
                    ok, encoded = cv2.imencode(".png", label_map)
                    if not ok:
                        raise OSError(f"could not encode the label map of {_describe(json_file, image)}")
                    write_cache_file(folder, label_path, encoded.tobytes())
                entry["label"] = label_name
                entry["sha1"] = _file_sha1(label_path)
            entries.append(entry)

    if report.messages:
        for message in report.messages:
            logger.warning("skipped: %s", message)
        logger.warning(report.summary())
    manifest = {
        "json_file": str(json_file),
        "image_root": str(image_root),
        "has_gt": has_gt,
        "given_label_maps": bool(given_maps and has_gt),
        "num_annotations": num_annotations,
        "class_names": class_names_from_categories(data["categories"]),
        "skipped": report.as_dict(),
        "oriented": oriented,
        "images": entries,
    }
    write_cache_file(folder, folder / MANIFEST_NAME, json.dumps(manifest).encode("utf-8"))
    _log_oriented(json_file, oriented)
    return _dicts_from_manifest(manifest, image_root, folder, json_file), manifest


def _complete_manifest(path: Path) -> dict | None:
    """The cache's manifest if it is there and has every field this version writes, a content hash for every
    label map included (older ones are rebuilt: their label maps are rendered again and compared)."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    fields = ("image_root", "has_gt", "given_label_maps", "num_annotations", "oriented", "images", "class_names")
    if not isinstance(manifest, dict) or not all(key in manifest for key in fields):
        return None
    entries = manifest["images"]
    hashed = isinstance(entries, list) and all(
        isinstance(entry, dict) and ("label" not in entry or "sha1" in entry) for entry in entries
    )
    return manifest if hashed else None


def _file_sha1(path: Path) -> str | None:
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _changed_label_maps(manifest: dict, folder: Path) -> list[str]:
    """The label maps of a cached manifest whose bytes are no longer those it recorded (edited, replaced or gone);
    a cached PNG is relative to the cache folder, a given one absolute."""
    changed = []
    for entry in manifest["images"]:
        if "label" in entry:
            path = folder / entry["label"]
            if _file_sha1(path) != entry["sha1"]:
                changed.append(str(path))
    return changed


def _no_ground_truth_message(json_file: Path, num_images: int, skipped: int = 0) -> str:
    why = f"all {skipped} of its annotations were skipped as bad" if skipped else "none of them has an annotation"
    return (
        f"{json_file}: used as ground truth, but {why} ({num_images} image(s)): scored against it every image "
        "would be all background. Give a json with annotations (e.g. val.json, not test.json), or label PNGs "
        "(sem_seg_file_name)"
    )


def _log_oriented(json_file: Path, oriented: dict) -> None:
    if oriented.get("count"):
        logger.warning(
            "%s: %d image(s) carry an EXIF orientation tag (e.g. %s: %s); images, labels and the json's sizes "
            "are all used in the stored pixel frame (the COCO convention), the tag is ignored",
            json_file,
            oriented["count"],
            oriented["example"],
            describe_orientation(oriented["tag"]),
        )


def _dicts_from_manifest(manifest: dict, image_root: Path, folder: Path, json_file: Path) -> list[dict]:
    dicts = []
    for entry in manifest["images"]:
        try:  # checked when the manifest was written; checked again for a cache written by an older version
            safe_relative_name(entry["file_name"], "file_name")
        except UnsafePathError as error:
            raise DataError(f"{json_file}: image {entry['file_name']!r} (id {entry['image_id']}): {error}") from None
        record = {
            "file_name": str(image_root / entry["file_name"]),
            "image_id": entry["image_id"],
            "height": entry["height"],
            "width": entry["width"],
        }
        if "label" in entry:
            record["sem_seg_file_name"] = str(folder / entry["label"])  # absolute for given label maps
        dicts.append(record)
    return dicts


def _entry(image: dict) -> dict:
    return {
        "image_id": image["id"],
        "file_name": image["file_name"],
        "height": image["height"],
        "width": image["width"],
    }


def _has_label_maps(data: dict, json_file: Path) -> bool:
    """True if the json gives its label maps as PNGs (every image has `sem_seg_file_name`, no annotations)."""
    given = [image for image in data["images"] if "sem_seg_file_name" in image]
    if not given:
        return False
    if len(given) != len(data["images"]):
        missing = next(image for image in data["images"] if "sem_seg_file_name" not in image)
        raise DataError(
            f"{_describe(json_file, missing)}: has no sem_seg_file_name while {len(given)} other image(s) do; "
            "a json gives label maps for every image or for none"
        )
    if data["annotations"]:
        raise DataError(f"{json_file}: gives label maps (sem_seg_file_name) and annotations; use one or the other")
    return True


def _label_map_entries(
    images: dict[int, dict], json_file: Path, num_classes: int, report: SkipReport, skip_bad: bool
) -> list[dict]:
    """Manifest entries for a json whose images name their label PNGs (relative to the json's folder):
    each map must be a single-channel 8-bit PNG of the image's size holding 0..K-1 or 255."""
    entries = []
    for image in _checking(images.values(), json_file):
        path = (json_file.parent / image["sem_seg_file_name"]).resolve()
        problem = None
        try:
            label = read_label(path, (image["height"], image["width"]))
        except (ReadError, LabelMapError) as error:
            label = None
            problem = ("bad label map", f"{_describe(json_file, image)}: {error}")
        if label is not None:
            values = np.unique(label)
            bad_values = values[(values >= num_classes) & (values != IGNORE_LABEL)]
            if bad_values.size:
                problem = (
                    "bad label map",
                    f"{_describe(json_file, image)}: label map {path} holds {bad_values.tolist()}, outside "
                    f"0..{num_classes - 1} and {IGNORE_LABEL} (ignore)",
                )
        if problem is None:
            entries.append({**_entry(image), "label": str(path), "sha1": _file_sha1(path)})
        elif skip_bad:
            report.add(problem[0], problem[1], whole_image=True)
        else:
            raise DataError(problem[1])
    return entries


def _checking(items, json_file: Path):
    """`items`, with progress when there are enough of them to take a while."""
    return with_progress(items, desc=f"check {json_file.name}", unit="img") if len(items) >= 200 else items


def _checked_images(
    images: list[dict], json_file: Path, image_root: Path, report: SkipReport, skip_bad: bool
) -> tuple[dict[int, dict], set, dict[str, Any]]:
    """(id -> image that passed, ids of skipped images, the count and an example of EXIF-oriented images)."""
    checked: dict[int, dict] = {}
    skipped_ids: set = set()
    oriented: dict[str, Any] = {"count": 0, "example": None, "tag": None}
    for image in _checking(images, json_file):
        problem = None
        missing = [key for key in ("id", "file_name", "height", "width") if key not in image]
        if missing:
            problem = (
                "bad image entry",
                f"{_describe(json_file, image)}: missing field(s) {', '.join(missing)}",
            )
        elif image["id"] in checked:
            problem = ("duplicate image id", f"{_describe(json_file, image)}: image id {image['id']} repeats")
        else:
            problem, orientation = inspect_image_file(image_root / image["file_name"], image, json_file)
            if orientation != 1:
                oriented["count"] += 1
                if oriented["example"] is None:
                    oriented.update(example=image["file_name"], tag=orientation)
        if problem is None:
            checked[image["id"]] = image
        elif skip_bad:
            report.add(problem[0], problem[1], whole_image=True)
            skipped_ids.add(image.get("id"))
        else:
            raise DataError(problem[1])
    return checked, skipped_ids, oriented


def _checked_annotations(
    anns: list[dict],
    images: dict[int, dict],
    skipped_ids: set,
    labels: dict[int, int],
    json_file: Path,
    report: SkipReport,
    skip_bad: bool,
) -> dict[int, list[dict]]:
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
        if problem is None:
            by_image.setdefault(image["id"], []).append(ann)
        elif skip_bad:
            report.add(problem[0], problem[1], whole_image=False)
        else:
            raise DataError(problem[1])
    return by_image


def register_coco_semantic(
    name: str,
    json_file: str | Path,
    image_root: str | Path,
    cache_dir: str | Path | None = None,
    skip_bad: bool = False,
    crowd_as_ignore: bool = False,
    has_gt: bool | None = None,
) -> None:
    """Register a COCO json as a semantic-segmentation dataset (loaded lazily on first use).

    Registering the same name again with the same files is a no-op; with other files, an error.
    """
    json_file, image_root = (
        str(Path(json_file).expanduser().resolve()),
        str(Path(image_root).expanduser().resolve()),
    )
    if name in DatasetCatalog:
        meta = MetadataCatalog.get(name)
        if (meta.get("json_file"), meta.get("image_root")) == (json_file, image_root):
            return
        raise DatasetNameError(
            f"dataset '{name}' is already registered with {meta.get('json_file')} (images under "
            f"{meta.get('image_root')}); refusing to re-register it with {json_file}"
        )

    def load() -> list[dict]:
        dicts, manifest = load_with_manifest(json_file, image_root, cache_dir, skip_bad, crowd_as_ignore, has_gt)
        _set_classes(name, manifest["class_names"])
        return dicts

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="sem_seg",
        ignore_label=IGNORE_LABEL,
        cache_dir=str(cache_dir) if cache_dir else None,
    )


def set_class_metadata(name: str) -> list[str]:
    """Set (once) and return the dataset's class names and palette, read from its json's categories."""
    meta = MetadataCatalog.get(name)
    if meta.get("stuff_classes") is None:
        _set_classes(name, class_names_from_categories(read_coco_json(meta.json_file)["categories"]))
    return list(meta.stuff_classes)


def _set_classes(name: str, classes: list[str]) -> None:
    from .classes import palette_for

    MetadataCatalog.get(name).set(stuff_classes=list(classes), stuff_colors=palette_for(classes))
