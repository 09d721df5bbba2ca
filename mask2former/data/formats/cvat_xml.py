"""The `cvat-xml` reader: CVAT's "CVAT for images 1.1" export (annotations.xml, with or without its images/ folder)
(docs/formats/cvat.md).

Read from the XML: the label list (`<meta>` / `<task>`, `<project>` or `<job>` / `<labels>`, in its order), and per
`<image name width height subset>` its shapes:

- `<polygon label points="x0,y0;x1,y1;...">`: pixel coordinates;
- `<mask label rle left top width height>`: CVAT's mask RLE, run lengths alternating between 0s and 1s (starting
  with 0s) over the `width` x `height` box at (`left`, `top`), row by row;
- boxes, polylines, points, ellipses, cuboids, skeletons and tags are counted and left out.

Shapes are drawn in `z_order` (then in the file's order), the higher on top (labelling_tools.py). Images are looked
up under --images, else the XML's images/ folder, else the XML's folder, by the name CVAT gives them; the stored
size must be the one the XML gives. Classes: --classes (background first) when given, else `background` then the
XML's labels in its order; a label named background is label 0. Splits: the image's `subset` (Train, Validation,
Test; `default` or none: train). Output names: <split>/<the image's path in the image folder>.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

import numpy as np

from .base import SPLIT_NAMES, FormatError, FormatOptions, SourceDataset, SourceImage, register_format
from .labelling_tools import Shape, class_list, find_image, found_elsewhere_warnings, image_labels, stored_size

FORMAT = "cvat-xml"
ANNOTATIONS_FILE = "annotations.xml"
SUBSETS = {"": "train", "default": "train", **SPLIT_NAMES}
LEFT_OUT = ("box", "polyline", "points", "ellipse", "cuboid", "skeleton", "tag")


@register_format(FORMAT)
def read_cvat_xml(source: Path, options: FormatOptions) -> SourceDataset:
    """The images of a CVAT for images 1.1 export (`source`: annotations.xml, or the folder holding it)."""
    xml_path = source / ANNOTATIONS_FILE if source.is_dir() else source
    if not xml_path.is_file():
        raise FormatError(f"{source}: no {ANNOTATIONS_FILE}: give CVAT's annotations.xml or the folder holding it")
    folder = Path(options.images) if options.images else _default_images(xml_path)
    declared, elements = _read_xml(xml_path)
    if not declared:
        declared = sorted({shape.get("label", "") for element in elements for shape in element})
    classes = class_list(options.classes, declared, str(xml_path))
    counts: Counter = Counter()
    splits: dict[str, list[SourceImage]] = {}
    seen: dict[str, str] = {}
    warnings: list[str] = []
    for element in elements:
        split = _split(xml_path, element)
        image = _source_image(xml_path, element, folder, classes, counts, split, warnings)
        if image.name in seen:
            raise FormatError(
                f"{xml_path}: image {image.name} is given twice (ids {seen[image.name]} and "
                f"{element.get('id')}): keep one"
            )
        seen[image.name] = str(element.get("id"))
        splits.setdefault(split, []).append(image)
    conventions = _conventions(options, classes, counts)
    return SourceDataset(FORMAT, xml_path, classes, splits, conventions, warnings=found_elsewhere_warnings(warnings))


def _default_images(xml_path: Path) -> Path:
    images = xml_path.parent / "images"
    return images if images.is_dir() else xml_path.parent


def _read_xml(xml_path: Path) -> tuple[list[str], list[ElementTree.Element]]:
    """(the labels `<meta>` declares, the `<image>` elements); FormatError for broken XML or a video export."""
    declared: list[str] = []
    images = []
    try:
        for _, element in ElementTree.iterparse(xml_path, events=("end",)):
            if element.tag == "meta":
                declared = [str(name.text or "").strip() for name in element.findall("./*/labels/label/name")]
            elif element.tag == "image":
                images.append(element)
            elif element.tag == "track":
                raise FormatError(
                    f"{xml_path}: holds tracks (<track>): a 'CVAT for video' export; export the task as "
                    "'CVAT for images 1.1'"
                )
    except ElementTree.ParseError as error:
        raise FormatError(f"{xml_path}: not well-formed XML ({error})") from None
    return declared, images


def _split(xml_path: Path, element: ElementTree.Element) -> str:
    subset = element.get("subset", "")
    if subset.lower() not in SUBSETS:
        raise FormatError(
            f"{xml_path}: image {element.get('name')} is in the subset {subset!r}: name the task's subsets Train, "
            "Validation and Test in CVAT"
        )
    return SUBSETS[subset.lower()]


def _source_image(
    xml_path: Path,
    element: ElementTree.Element,
    folder: Path,
    classes: list[str],
    counts: Counter,
    split: str,
    notes: list[str],
) -> SourceImage:
    name = element.get("name")
    where = f"{xml_path} image {name!r}"
    if not name:
        raise FormatError(f"{xml_path}: image {element.get('id')} has no name")
    recorded = (_integer(element, "height", where), _integer(element, "width", where))
    path = find_image(folder, [name, name.replace("\\", "/").rsplit("/", 1)[-1]], where, notes)
    height, width = stored_size(path, where, recorded)
    drawn = []
    for order, shape in enumerate(element):
        if shape.tag in LEFT_OUT:
            counts[f"{shape.tag} shapes left out"] += 1
        elif shape.tag in ("polygon", "mask"):
            shape_where = f"{where} {shape.tag} {order} ({shape.get('label')})"
            z_order = _integer(shape, "z_order", shape_where, default=0)
            drawn.append((z_order, order, _shape(shape, shape_where, height, width)))
    shapes = [shape for _, _, shape in sorted(drawn, key=lambda item: item[:2]) if shape is not None]
    for shape in shapes:
        counts[f"{'mask' if shape.mask else 'polygon'} shapes read"] += 1
    regions, label_map = image_labels(shapes, classes, height, width)
    name = f"{split}/{path.relative_to(folder).as_posix()}"
    return SourceImage(path, name, height, width, regions=regions, label_map=label_map)


def _integer(element: ElementTree.Element, key: str, where: str, default: int | None = None) -> int:
    text = element.get(key)
    if text is None and default is not None:
        return default
    try:
        return int(float(text))
    except (TypeError, ValueError):
        raise FormatError(f"{where}: attribute {key}={text!r} is not a number") from None


def _shape(shape: ElementTree.Element, where: str, height: int, width: int) -> Shape | None:
    label = shape.get("label")
    if not label:
        raise FormatError(f"{where}: no label attribute")
    if shape.tag == "polygon":
        ring = _points(shape.get("points", ""), where)
        return Shape(label, [ring], None, where) if len(ring) >= 6 else None
    left, top, box_width, box_height = (_integer(shape, key, where) for key in ("left", "top", "width", "height"))
    runs = _run_lengths(shape.get("rle", ""), where)
    if box_width < 1 or box_height < 1 or left < 0 or top < 0 or left + box_width > width or top + box_height > height:
        raise FormatError(
            f"{where}: the mask's box {box_width}x{box_height} at ({left}, {top}) does not lie in the {width}x{height} "
            "image"
        )
    if int(runs.sum()) != box_width * box_height:
        raise FormatError(
            f"{where}: malformed mask RLE: its runs cover {int(runs.sum())} pixels, the {box_width}x{box_height} box "
            f"has {box_width * box_height}"
        )
    return Shape(label, [], lambda: decode_cvat_mask(runs, left, top, box_width, box_height, height, width), where)


def _points(text: str, where: str) -> list[float]:
    try:
        pairs = [pair.split(",") for pair in text.split(";") if pair.strip()]
        ring = [float(value) for pair in pairs for value in pair]
    except ValueError:
        raise FormatError(f"{where}: points {text[:60]!r} are not 'x,y;x,y;...' numbers") from None
    if any(len(pair) != 2 for pair in pairs) or not np.isfinite(ring).all():
        raise FormatError(f"{where}: points {text[:60]!r} are not 'x,y;x,y;...' numbers")
    return ring


def _run_lengths(text: str, where: str) -> np.ndarray:
    try:
        counts = np.array([int(value) for value in text.replace(" ", "").split(",") if value], dtype=np.int64)
    except ValueError:
        raise FormatError(f"{where}: malformed mask RLE {text[:60]!r}: not comma-separated integers") from None
    if counts.size == 0 or (counts < 0).any():
        raise FormatError(f"{where}: malformed mask RLE {text[:60]!r}: run lengths must be integers >= 0")
    return counts


def decode_cvat_mask(
    runs: np.ndarray, left: int, top: int, box_width: int, box_height: int, height: int, width: int
) -> np.ndarray:
    """The boolean height x width mask of a CVAT mask: run lengths alternating 0s and 1s (0s first) that fill its
    box (checked by the caller), row by row."""
    values = np.arange(runs.size) % 2 == 1
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + box_height, left : left + box_width] = np.repeat(values, runs).reshape(box_height, box_width)
    return mask


def _conventions(options: FormatOptions, classes: list[str], counts: Counter) -> list[str]:
    source = "--classes" if options.classes else "background, then the XML's labels in order"
    lines = [
        f"classes ({source}): " + ", ".join(f"{i} {name}" for i, name in enumerate(classes)),
        "overlaps: shapes drawn in z_order, then in the file's order, the later on top",
        "splits: the image's subset (default: train)",
    ]
    lines.extend(f"{count} {what}" for what, count in sorted(counts.items()))
    return lines
