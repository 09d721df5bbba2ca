"""The logic of tools/export_labels.py: model output written out for labelling tools, so that a user corrects it
there and trains again (docs/formats/export.md).

Input (SRC): a prediction folder (tools/predict.py or tools/ensemble_crf.py: probs/*.npz and meta.json; each
image's label map is the class of highest probability at the image's size, the probabilities resized bilinearly
as pseudo-labels are, mask2former/pipeline/pseudo_label_maps.py; with --threshold T, pixels whose top probability
is under T are left unlabelled), or a label-map dataset json such as a pseudo-label round's pseudo.json (its
images' `sem_seg_file_name` PNGs), or the folder holding pseudo.json. Labelling tools have no ignore value: ignored
(255) and thresholded pixels are written unlabelled (background), and counted.

Output (OUT, the tool's own folder, docs/output_folders.md; every file written atomically):

    labelmap.txt                          CVAT "Segmentation mask 1.1" / Pascal VOC: `name:r,g,b::` per label
    ImageSets/Segmentation/default.txt    the images' names without extension
    SegmentationClass/<name>.png          indexed PNGs, palette colour k = label k (labelmap.txt's colours)
    coco.json                             one RLE annotation per class present per image, categories 1..K
    label_studio.json                     one task per image, its classes as brush pre-annotations (predictions)
    label_studio_config.xml               the labelling config those pre-annotations fit
    meta.json, log.txt

CVAT imports the first three zipped as "Segmentation mask 1.1" into a task holding the images; Label Studio imports
label_studio.json into a project set up with label_studio_config.xml, whose tasks name their image as
--image-url + the image's file_name; coco.json is any COCO tool's (and this project's) json of the predicted masks.
A rerun of the same job writes the same files again; a folder made for another job is refused (--overwrite
replaces it).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from ..data.classes import palette_for
from ..data.coco_semantic import check_class_lists, class_names_from_categories
from ..data.formats.base import IGNORE_LABEL, SourceImage
from ..data.formats.brush_rle import encode_brush_rle
from ..data.formats.write_layout import image_annotations
from ..errors import UserError
from ..io.coco_json import read_coco_json
from ..io.files import atomic_write_json, atomic_write_text, output_path, safe_relative_name
from ..io.images import read_label, write_indexed_label_png
from ..io.probabilities import (
    load_probabilities,
    probability_key,
    read_prediction_folder,
    read_probability_field,
)
from ..utils.output_folder import refuse_input_overlap
from ..utils.progress import progress
from .output_job import JobRecord, announce, output_job, rate
from .pseudo_label_maps import pseudo_label_map

logger = logging.getLogger("export_labels")

TOOL = "export_labels.py"
LABELMAP = "labelmap.txt"
IMAGE_SETS = "ImageSets"
SET_LIST = "ImageSets/Segmentation/default.txt"
MASKS = "SegmentationClass"
COCO = "coco.json"
LABEL_STUDIO = "label_studio.json"
LABEL_STUDIO_CONFIG = "label_studio_config.xml"
OUTPUTS = (LABELMAP, IMAGE_SETS, MASKS, COCO, LABEL_STUDIO, LABEL_STUDIO_CONFIG, "meta.json", "log.txt")
PSEUDO_JSON = "pseudo.json"
FROM_NAME, TO_NAME = "label", "image"  # the Label Studio control and image names of label_studio_config.xml


class ExportError(UserError):
    """A source or an option export_labels.py cannot take; the message names it and says what to do."""


@dataclass
class ExportOptions:
    """The flags of tools/export_labels.py."""

    source: str
    out: str
    threshold: float = 0.0
    image_url: str = "/data/local-files/?d="
    overwrite: bool = False


@dataclass
class LabelSource:
    """Where the label maps come from: its kind ("predictions" or "label maps"), class names (background first),
    the images ({file_name, id, height, width} in order), what identifies its content, and a reader of one map."""

    kind: str
    path: Path
    classes: list[str]
    images: list[dict]
    identity: str
    read: Any  # (image: dict) -> uint8 H x W label map, IGNORE_LABEL where unlabelled


def run(options: ExportOptions) -> dict[str, Any]:
    """Export SRC's label maps into OUT; returns the counts (also meta.json's)."""
    if not 0.0 <= options.threshold <= 1.0:
        raise ExportError(f"--threshold {options.threshold}: give a probability in [0, 1]")
    source_path = Path(options.source).expanduser().resolve()
    out = Path(options.out).expanduser().resolve()
    if not source_path.exists():
        raise ExportError(f"{options.source}: no such file or folder: give a prediction folder or a label-map json")
    inputs = {"SRC": source_path if source_path.is_dir() else source_path.parent}
    refuse_input_overlap(out, TOOL, inputs, names=OUTPUTS)  # before any reading; output_job checks it again
    source = open_source(source_path, options.threshold)
    check_classes(source)
    names = mask_names(source)
    job = {
        "source": str(source_path),
        "source_id": source.identity,
        "threshold": options.threshold,
        "image_url": options.image_url,
    }
    started = time.monotonic()
    with output_job(out, TOOL, job, OUTPUTS, options.overwrite, inputs=inputs):
        record = JobRecord(out, {"tool": TOOL, **job, "kind": source.kind, "class_names": source.classes})
        record.begin()
        counts = write_exports(source, names, out, options.image_url)
        seconds = time.monotonic() - started
        record.finish(**counts, seconds=round(seconds, 3))
        announce(
            logger,
            f"{counts['images']} images exported to {out} ({rate(counts['images'], seconds):.2f} images/s); "
            f"{counts['unlabelled_pixels']} pixels left unlabelled",
            {"out": str(out), **counts},
        )
    return counts


def open_source(path: Path, threshold: float) -> LabelSource:
    """The label maps of SRC: a prediction folder (probs/), a label-map json, or a folder holding pseudo.json."""
    if path.is_dir() and (path / "probs").is_dir():
        return _predictions(path, threshold)
    json_path = path / PSEUDO_JSON if path.is_dir() else path
    if not json_path.is_file():
        raise ExportError(
            f"{path}: neither a prediction folder (probs/) nor a label-map json ({PSEUDO_JSON}): give the folder "
            "tools/predict.py or tools/ensemble_crf.py wrote, or a pseudo-label round's pseudo.json"
        )
    if threshold > 0:
        raise ExportError(f"--threshold applies to prediction folders; {json_path} holds label maps already")
    return _label_maps(json_path)


def _predictions(folder: Path, threshold: float) -> LabelSource:
    predictions = read_prediction_folder(folder)
    if not predictions.files:
        raise ExportError(f"{folder}: the prediction folder holds no prediction (probs/ is empty)")
    images, classes, first = [], None, None
    order = [probability_key(name) for name in predictions.file_names] or list(predictions.files)
    for path in (predictions.files[key] for key in order):  # the run's order (meta.json), else sorted
        names = [str(name) for name in read_probability_field(path, "class_names")]
        if classes is None:
            classes, first = names, path
        check_class_lists(names, str(path), classes, str(first), "export prediction files of one model")
        image = {key: read_probability_field(path, key).item() for key in ("file_name", "image_id", "height", "width")}
        image["id"], image["npz"] = image.pop("image_id"), path
        images.append(image)

    def read(image: dict) -> np.ndarray:
        probs = load_probabilities(image["npz"])["probs"]  # checked: a broken file is refused, naming it
        return pseudo_label_map(probs, image["height"], image["width"], threshold)

    return LabelSource("predictions", folder, list(classes), images, predictions.identity(), read)


def _label_maps(json_path: Path) -> LabelSource:
    data = read_coco_json(json_path)
    images = []
    for image in data["images"]:
        if not isinstance(image, dict) or "sem_seg_file_name" not in image:
            raise ExportError(
                f"{json_path}: image {image.get('file_name') if isinstance(image, dict) else image!r} has no "
                "sem_seg_file_name: give a label-map json (a pseudo-label round's pseudo.json)"
            )
        images.append({key: image[key] for key in ("file_name", "id", "height", "width", "sem_seg_file_name")})
    if not images:
        raise ExportError(f"{json_path}: no images")

    def read(image: dict) -> np.ndarray:
        relative = safe_relative_name(image["sem_seg_file_name"], "sem_seg_file_name")
        return read_label(json_path.parent / relative, (image["height"], image["width"]))

    identity = hashlib.sha1(json_path.read_bytes()).hexdigest()
    classes = class_names_from_categories(data["categories"])
    return LabelSource("label maps", json_path, classes, images, identity, read)


def check_classes(source: LabelSource) -> None:
    """Class names labelmap.txt and the tools can take: no ':' (labelmap.txt's separator), no line break."""
    if len(source.classes) < 2 or len(source.classes) >= IGNORE_LABEL:
        raise ExportError(f"{source.path}: {len(source.classes)} classes; labelling tools need 2 to 255")
    for name in source.classes:
        if ":" in name or "\n" in name or not name.strip():
            raise ExportError(f"{source.path}: class name {name!r} cannot go into {LABELMAP}: rename the class")


def mask_names(source: LabelSource) -> list[str]:
    """Each image's name in the CVAT layout: its file_name without extension ('/'-separated), distinct."""
    names: dict[str, str] = {}
    for image in source.images:
        name = safe_relative_name(image["file_name"], "image file_name").with_suffix("").as_posix()
        if name in names:
            raise ExportError(
                f"{source.path}: images {names[name]!r} and {image['file_name']!r} would share the mask {name}.png: "
                "give the images distinct names"
            )
        names[name] = image["file_name"]
    return list(names)


def write_exports(source: LabelSource, names: list[str], out: Path, image_url: str) -> dict[str, Any]:
    """Every output of the module's list for every image; returns the counts."""
    palette = palette_for(source.classes)
    atomic_write_text(out / LABELMAP, labelmap_text(source.classes, palette))
    atomic_write_text(out / LABEL_STUDIO_CONFIG, label_studio_config(source.classes, palette))
    categories = [{"id": k, "name": name, "supercategory": name} for k, name in enumerate(source.classes) if k]
    coco: dict[str, list] = {"images": [], "annotations": [], "categories": categories}
    tasks, unlabelled, pixels = [], 0, np.zeros(len(source.classes), dtype=np.int64)
    for index, (image, label) in enumerate(_label_maps_of(source)):
        unlabelled += int((label == IGNORE_LABEL).sum())
        label[label == IGNORE_LABEL] = 0
        pixels += np.bincount(label.ravel(), minlength=len(source.classes))[: len(source.classes)]
        write_indexed_label_png(output_path(out / MASKS, names[index] + ".png"), label, palette)
        image_id = image["id"] if isinstance(image["id"], int) else index
        coco["images"].append(
            {"id": image_id, "file_name": image["file_name"], "height": label.shape[0], "width": label.shape[1]}
        )
        stand_in = SourceImage(Path(image["file_name"]), image["file_name"], *label.shape, label_map=lambda m=label: m)
        for ann in image_annotations(stand_in, len(source.classes), []):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id, **ann})
        tasks.append(label_studio_task(image["file_name"], label, source.classes, image_url, source.path.name))
    if len({image["id"] for image in coco["images"]}) != len(coco["images"]):
        for number, entry in enumerate(coco["images"]):  # ids given twice: number the images instead
            old, entry["id"] = entry["id"], number
            for ann in coco["annotations"]:
                ann["image_id"] = number if ann["image_id"] == old else ann["image_id"]
    atomic_write_text(out / SET_LIST, "".join(f"{name}\n" for name in names))
    atomic_write_json(out / COCO, coco)
    atomic_write_json(out / LABEL_STUDIO, tasks)
    return {
        "images": len(names),
        "annotations": len(coco["annotations"]),
        "unlabelled_pixels": unlabelled,
        "class_pixels": dict(zip(source.classes, pixels.tolist(), strict=True)),
    }


def _label_maps_of(source: LabelSource) -> Iterator[tuple[dict, np.ndarray]]:
    for image in progress(source.images, desc="export", unit="img", logger=logger):
        label = np.array(source.read(image), dtype=np.uint8)
        if label.shape != (image["height"], image["width"]):  # a caller's bug, not a user's file
            raise ValueError(f"{image['file_name']}: label map {label.shape}, image {image['height']}x{image['width']}")
        outside = np.unique(label[(label >= len(source.classes)) & (label != IGNORE_LABEL)])
        if outside.size:
            raise ExportError(
                f"{source.path}: the label map of {image['file_name']} holds label(s) {outside.tolist()}, outside its "
                f"{len(source.classes)} classes: give the json of its class list"
            )
        yield image, label


def labelmap_text(classes: list[str], palette: list[tuple[int, int, int]]) -> str:
    """labelmap.txt of CVAT's Segmentation mask 1.1 (Pascal VOC's): label k on line k, background first."""
    lines = ["# label:color_rgb:parts:actions"]
    for index, (name, color) in enumerate(zip(classes, palette, strict=True)):
        lines.append(f"{'background' if index == 0 else name}:{','.join(str(c) for c in color)}::")
    return "\n".join(lines) + "\n"


def label_studio_config(classes: list[str], palette: list[tuple[int, int, int]]) -> str:
    """The Label Studio labelling config the exported brush pre-annotations fit (one brush label per class)."""
    labels = "".join(
        f'    <Label value={quoteattr(name)} background="#{r:02x}{g:02x}{b:02x}"/>\n'
        for name, (r, g, b) in zip(classes[1:], palette[1:], strict=True)
    )
    return (
        f'<View>\n  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
        f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}  </BrushLabels>\n</View>\n'
    )


def label_studio_task(file_name: str, label: np.ndarray, classes: list[str], image_url: str, model: str) -> dict:
    """One Label Studio task: the image's URL and one brush region per class present, as a prediction."""
    height, width = label.shape
    result = []
    for value in np.flatnonzero(np.bincount(label.ravel(), minlength=len(classes))).tolist():
        if value == 0:
            continue
        words = np.repeat((label == value).ravel().astype(np.uint8) * 255, 4)  # RGBA, every byte the alpha
        result.append(
            {
                "id": f"class{value}",
                "type": "brushlabels",
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {"format": "rle", "rle": list(encode_brush_rle(words)), "brushlabels": [classes[value]]},
            }
        )
    url = image_url + PurePosixPath(safe_relative_name(file_name, "image file_name")).as_posix()
    return {"data": {"image": url}, "predictions": [{"model_version": model, "result": result}]}
