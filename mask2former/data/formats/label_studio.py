"""The `label-studio` reader: a Label Studio JSON export (Export -> JSON: a list of tasks) and the image folder it
was labelled from (docs/formats/label_studio.md).

Each task names its image in `data.image` (an upload such as /data/upload/3/1a2b3c4d-photo.jpg, a local-storage
URL /data/local-files/?d=folder/photo.jpg, or any URL or path); it is looked up in the image folder (--images,
default the export's folder) by its path, its trailing parts, its file name and, for an upload, the file name
without the 8-character prefix Label Studio adds. Of a task's annotations the most recent (`updated_at`, else
`created_at`) not cancelled one is read; a task without one is left out, one whose annotation has no region is an
image without objects. Read from its `result` items:

- `polygonlabels`: `points` in percent of `original_width` / `original_height`, turned into pixels;
- `brushlabels` with `format: "rle"`: Label Studio's brush RLE of the RGBA layer (brush_rle.py), the pixels whose
  alpha is at least 128;
- anything else (rectangles, key points, choices, text) is counted and left out.

The image's stored size must be the `original_width` x `original_height` the tool recorded (a photo rotated by its
EXIF tag was labelled in its rotated view and is refused, saying so). Classes: --classes (background first) when
given, else `background` followed by the labels met, sorted; a label named background is label 0. Later results
are drawn on top of earlier ones (labelling_tools.py). Label Studio has no splits: every task is in `train`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from .base import FormatError, FormatOptions, SourceDataset, SourceImage, register_format
from .brush_rle import BrushRleError, brush_mask
from .labelling_tools import Shape, class_list, find_image, found_elsewhere_warnings, image_labels, stored_size

FORMAT = "label-studio"
SPLIT = "train"
REGION_TYPES = ("polygonlabels", "brushlabels")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")


@register_format(FORMAT)
def read_label_studio(source: Path, options: FormatOptions) -> SourceDataset:
    """The tasks of a Label Studio JSON export (`source`: the json, or a folder holding exactly one) as a
    SourceDataset with one split, train."""
    json_path = _export_file(source)
    tasks = _read_tasks(json_path)
    images_folder = Path(options.images) if options.images else json_path.parent
    counts: Counter = Counter()
    chosen = []
    for index, task in enumerate(tasks):
        where = f"{json_path} task {task.get('id', index)}"
        annotation = _latest_annotation(task, where, counts)
        if annotation is not None:
            chosen.append((where, task, annotation))
    labels = sorted({name for _, _, annotation in chosen for name in _region_labels(annotation)})
    classes = class_list(options.classes, labels, str(json_path))
    images, seen, warnings = [], {}, []
    for where, task, annotation in chosen:
        image = _source_image(where, task, annotation, images_folder, classes, counts, warnings)
        if image.name in seen:
            raise FormatError(
                f"{where}: names the image {image.name} that {seen[image.name]} names too: keep one task (or, if "
                "they name different folders, give --images the folder that holds those folders)"
            )
        seen[image.name] = where
        images.append(image)
    conventions = _conventions(options, classes, counts)
    warnings = found_elsewhere_warnings(warnings)
    return SourceDataset(FORMAT, json_path, classes, {SPLIT: images}, conventions, warnings=warnings)


def _export_file(source: Path) -> Path:
    if source.is_file():
        return source
    found = sorted(source.glob("*.json"))
    if len(found) != 1:
        listed = ", ".join(path.name for path in found) or "none"
        raise FormatError(
            f"{source}: expected one Label Studio JSON export in the folder, found {listed}: give the json"
        )
    return found[0]


def _read_tasks(json_path: Path) -> list[dict]:
    try:
        tasks = json.loads(json_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FormatError(f"{json_path}: not valid JSON ({error})") from None
    if not isinstance(tasks, list) or not all(isinstance(task, dict) for task in tasks):
        raise FormatError(f"{json_path}: a Label Studio JSON export is a list of tasks: export the project as JSON")
    for index, task in enumerate(tasks):
        if not isinstance(task.get("data"), dict) or not isinstance(task.get("annotations", []), list):
            raise FormatError(
                f"{json_path} task {task.get('id', index)}: no 'data' object or 'annotations' list: export the "
                "project as JSON (not JSON-MIN, CSV or COCO)"
            )
    return tasks


def _latest_annotation(task: dict, where: str, counts: Counter) -> dict | None:
    """The most recent annotation not cancelled (ties: the later in the list), None when there is none."""
    kept = [a for a in task.get("annotations", []) if isinstance(a, dict) and not a.get("was_cancelled", False)]
    if not kept:
        counts["tasks without an annotation"] += 1
        return None
    if len(task.get("annotations", [])) > 1:
        counts["tasks with several annotations"] += 1
    latest = max(range(len(kept)), key=lambda i: (_time(kept[i], where), i))
    if not isinstance(kept[latest].get("result", []), list):
        raise FormatError(f"{where}: annotation {kept[latest].get('id')} has no 'result' list")
    return kept[latest]


def _time(annotation: dict, where: str) -> datetime:
    text = annotation.get("updated_at") or annotation.get("created_at")
    if not text:
        return datetime.min
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        raise FormatError(
            f"{where}: annotation {annotation.get('id')} has the time {text!r}, not an ISO time"
        ) from None
    return moment.replace(tzinfo=None) - (moment.utcoffset() or timedelta(0))


def _region_labels(annotation: dict) -> list[str]:
    names = []
    for result in annotation.get("result", []):
        if isinstance(result, dict) and result.get("type") in REGION_TYPES:
            names.extend(str(name) for name in (result.get("value") or {}).get(result["type"], []))
    return names


def _source_image(
    where: str, task: dict, annotation: dict, folder: Path, classes: list[str], counts: Counter, notes: list[str]
) -> SourceImage:
    reference = _image_reference(task, where)
    path = find_image(folder, _candidates(reference, task), f"{where} (image {reference})", notes)
    results = [r for r in annotation.get("result", []) if isinstance(r, dict)]
    recorded = {(r.get("original_height"), r.get("original_width")) for r in results if r.get("type") in REGION_TYPES}
    recorded.discard((None, None))
    if len(recorded) > 1:
        raise FormatError(f"{where}: its regions give several image sizes {sorted(recorded)}: label one image per task")
    height, width = stored_size(path, f"{where} ({path.name})", next(iter(recorded), None))
    shapes = []
    for number, result in enumerate(results):
        shape = _shape(result, f"{where} result {result.get('id', number)}", height, width, counts)
        if shape is not None:
            shapes.append(shape)
    regions, label_map = image_labels(shapes, classes, height, width)
    name = f"{SPLIT}/{path.relative_to(folder).as_posix()}"
    return SourceImage(path, name, height, width, regions=regions, label_map=label_map)


def _image_reference(task: dict, where: str) -> str:
    data = task["data"]
    if isinstance(data.get("image"), str):
        return data["image"]
    strings = [value for value in data.values() if isinstance(value, str) and _looks_like_image(value)]
    if len(strings) != 1:
        raise FormatError(f"{where}: no data.image naming the task's image (data holds {sorted(data)})")
    return strings[0]


def _looks_like_image(text: str) -> bool:
    return Path(urlparse(text).path).suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _candidates(reference: str, task: dict) -> list[str]:
    """Relative paths to try in the image folder, most specific first (see the module)."""
    parsed = urlparse(reference)
    paths = [unquote(value) for value in parse_qs(parsed.query).get("d", [])]
    paths.append(unquote(parsed.path))
    names = []
    for path in paths:
        parts = [part for part in path.replace("\\", "/").split("/") if part]
        names.extend("/".join(parts[i:]) for i in range(len(parts)))
    for path in [*paths, str(task.get("file_upload") or "")]:
        base = path.replace("\\", "/").rsplit("/", 1)[-1]
        stripped = _UPLOAD_PREFIX.match(base)
        if stripped:
            names.append(stripped.group(1))
    return names


def _shape(result: dict, where: str, height: int, width: int, counts: Counter) -> Shape | None:
    kind = result.get("type")
    if kind not in REGION_TYPES:
        counts[f"results of type {kind} left out"] += 1
        return None
    value = result.get("value")
    names = value.get(kind) if isinstance(value, dict) else None
    if not isinstance(names, list) or len(names) != 1:
        raise FormatError(f"{where}: a region needs exactly one label in value.{kind}, got {names!r}")
    if result.get("image_rotation", 0) not in (0, None):
        raise FormatError(
            f"{where}: labelled on a rotated view (image_rotation {result['image_rotation']}): relabel it unrotated"
        )
    if kind == "polygonlabels":
        points = value.get("points")
        if not isinstance(points, list) or not all(_is_point(point) for point in points):
            raise FormatError(f"{where}: value.points must be a list of [x, y] percentages")
        if len(points) < 3:
            counts["polygons of fewer than 3 points left out"] += 1
            return None
        ring = [coordinate for x, y in points for coordinate in (x * width / 100.0, y * height / 100.0)]
        return Shape(str(names[0]), [ring], None, where)
    if value.get("format") != "rle" or not isinstance(value.get("rle"), list):
        raise FormatError(f"{where}: a brush region needs value.format 'rle' and a value.rle list")
    code = value["rle"]

    def mask():
        try:
            return brush_mask(code, height, width)
        except BrushRleError as error:
            raise FormatError(f"{where}: malformed brush RLE ({error}): export the project again") from None

    return Shape(str(names[0]), [], mask, where)


def _is_point(point: object) -> bool:
    return (
        isinstance(point, (list, tuple))
        and len(point) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)
    )


def _conventions(options: FormatOptions, classes: list[str], counts: Counter) -> list[str]:
    source = "--classes" if options.classes else "background, then the labels met, sorted"
    lines = [
        f"classes ({source}): " + ", ".join(f"{i} {name}" for i, name in enumerate(classes)),
        "polygons: points in percent of original_width/original_height; brush masks: alpha >= 128",
        "overlaps: a later result is drawn on top of an earlier one",
        f"Label Studio has no splits: every task is in {SPLIT}",
    ]
    if counts["tasks with several annotations"]:
        lines.append(
            f"{counts['tasks with several annotations']} task(s) with several annotations: the most recent one not "
            "cancelled is read"
        )
    lines.extend(
        f"{count} {what}" for what, count in sorted(counts.items()) if what != "tasks with several annotations"
    )
    return lines
