"""What the readers of labelling-tool exports (Label Studio, CVAT XML) share: the class list taken from the labels
a tool names, the image a tool names found in the user's image folder with its stored size checked against the
size the tool recorded, and shapes drawn in order turned into disjoint regions.

Overlaps: a labelling tool draws its shapes in an order (CVAT: z_order, then document order; Label Studio: the
order of an annotation's results), the later one on top. The project's renderer paints regions largest first
(mask2former/data/rasterize.py), so `stack_shapes` makes the regions disjoint first: a shape that something drawn
above it overlaps keeps only its visible pixels (as a mask); a shape nothing covers keeps its polygons. Any
renderer then gives the label map the tool showed. `image_labels` keeps an image's regions when they are all
polygons, and otherwise gives its label map as a function, so that decoded masks are held one image at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...io.images import describe_orientation
from .base import FormatError, Region, image_header, region_mask

BACKGROUND_NAME = "background"


@dataclass
class Shape:
    """One drawn shape: its class name, polygons (pixel coordinates, COCO's flat rings) or a function giving its
    boolean H x W mask (decoded when needed), and where it is (for messages)."""

    name: str
    polygons: list[list[float]]
    mask: Callable[[], np.ndarray] | None
    where: str


def class_list(given: Sequence[str], declared: Iterable[str], source: str) -> list[str]:
    """The class list, background first: `given` (--classes) when not empty, else BACKGROUND_NAME followed by the
    tool's `declared` labels (a label named background, any case, is label 0, not a class)."""
    if given:
        return list(given)
    names = [name for name in dict.fromkeys(declared) if name.lower() != BACKGROUND_NAME]
    if not names:
        raise FormatError(f"{source}: no labels found: label some images, or give the class list with --classes")
    return [BACKGROUND_NAME, *names]


def label_of(name: str, classes: Sequence[str], where: str) -> int:
    """The label (0..K) of class `name`; FormatError naming `where` for a name not in the class list."""
    if name in classes:
        return classes.index(name)
    if name.lower() == BACKGROUND_NAME or name.lower() == classes[0].lower():
        return 0
    raise FormatError(
        f"{where}: label {name!r} is not in the class list {list(classes)}: give a list holding it (--classes or "
        "--classes-file), or add it to the project's labels in the labelling tool and export again"
    )


def find_image(folder: Path, candidates: Iterable[str], where: str, notes: list[str] | None = None) -> Path:
    """The first of `candidates` (relative '/'-separated paths, most specific first) that is a file under `folder`;
    FormatError naming `where` and the folder when none is. A match that drops folders of the first candidate other
    than `folder` itself (the task names a/b/x.jpg, `folder` is not a/b or b, and x.jpg is found) may be another
    photo of that name: a line in `notes`."""
    tried = []
    candidates = list(candidates)
    for name in candidates:
        parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]
        if not parts or ".." in parts:
            continue
        path = folder.joinpath(*parts)
        if path.is_file():
            if notes is not None:
                _note_dropped_folders(candidates[0], parts, folder, path, where, notes)
            return path
        tried.append("/".join(parts))
    shown = ", ".join(dict.fromkeys(tried)) or "no usable file name"
    raise FormatError(f"{where}: image not found in {folder} (tried {shown}): give the image folder with --images")


def found_elsewhere_warnings(notes: list[str]) -> list[str]:
    """`find_image`'s notes as one warning: the count and the first."""
    if not notes:
        return []
    more = f" (and {len(notes) - 1} more image(s) found so)" if len(notes) > 1 else ""
    return [f"{notes[0]}{more}"]


def _note_dropped_folders(named: str, found: list[str], folder: Path, path: Path, where: str, notes: list[str]) -> None:
    parts = [part for part in named.replace("\\", "/").split("/") if part not in ("", ".")]
    dropped = parts[: len(parts) - len(found)]
    if parts[len(dropped) :] != found or not dropped or dropped[-1] == folder.name:
        return
    notes.append(
        f"{where}: found as {path} by leaving out the folder {'/'.join(dropped)} it names: check it is the photo "
        f"the labels were drawn on, or give --images the folder that holds {'/'.join(dropped)}"
    )


def stored_size(path: Path, where: str, recorded: tuple[int, int] | None = None) -> tuple[int, int]:
    """(height, width) of the image file's stored pixels (its header only); FormatError when unreadable, or when
    `recorded` (the tool's height, width) differs, naming an EXIF rotation that explains it."""
    height, width, orientation = image_header(path)
    if recorded is not None and recorded != (height, width):
        message = f"{where}: the export says {recorded[1]}x{recorded[0]}, the image {path} is {width}x{height}"
        if orientation in (5, 6, 7, 8) and recorded == (width, height):
            message += (
                f"; the photo carries {describe_orientation(orientation)} and the tool labelled the rotated view: "
                "rotate the photo's pixels and drop the tag, then label it again"
            )
        else:
            message += ": give the images the labels were drawn on"
        raise FormatError(message)
    return height, width


def stack_shapes(shapes: Sequence[Shape], classes: Sequence[str], height: int, width: int) -> list[Region]:
    """Disjoint regions from `shapes` in drawing order (the last on top), as the module says: a covered shape keeps
    its visible pixels as a mask, an uncovered one its polygons; background shapes cover what is below them and
    give no region; a shape left with no visible pixel gives none either."""
    covered = np.zeros((height, width), dtype=bool)
    regions: list[Region] = []
    for shape in reversed(shapes):
        label = label_of(shape.name, classes, shape.where)
        drawn = shape.mask() if shape.mask is not None else region_mask(Region(label, shape.polygons), height, width)
        drawn = drawn.astype(bool)
        hidden = drawn & covered
        if label != 0 and drawn.any():
            if hidden.any():
                visible = drawn & ~covered
                if visible.any():
                    regions.append(Region(label, mask=visible, where=shape.where))
            elif shape.mask is not None:
                regions.append(Region(label, mask=drawn, where=shape.where))
            else:
                regions.append(Region(label, polygons=shape.polygons, where=shape.where))
        covered |= drawn
    regions.reverse()
    return regions


def image_labels(
    shapes: Sequence[Shape], classes: Sequence[str], height: int, width: int
) -> tuple[list[Region], Callable[[], np.ndarray] | None]:
    """An image's labels for its `SourceImage`: (its disjoint regions, None) when they are all polygons, else
    ([], a function painting its label map); every shape's label is checked here, each mask decoded once."""
    regions = stack_shapes(shapes, classes, height, width)
    if all(region.mask is None for region in regions):
        return regions, None

    def paint() -> np.ndarray:
        label = np.zeros((height, width), dtype=np.uint8)
        for region in stack_shapes(shapes, classes, height, width):
            label[region_mask(region, height, width) > 0] = region.label
        return label

    return [], paint
