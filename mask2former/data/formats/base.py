"""What every dataset-format reader gives: a `SourceDataset` (class list, splits, images with their regions or
label maps), before it is written in the competition layout (`write_layout.py`) or registered directly.

Class convention, for every format: label 0 is background, labels 1..K are `classes[1:]`, IGNORE_LABEL (255) is
ignore. A reader maps its format's ids onto this (documented per format in docs/formats/) and says how in
`SourceDataset.conventions`, which the conversion report repeats.

Readers register themselves in DATASET_FORMATS under their `--from` name: `read(source, options) ->
SourceDataset`. A problem with the input is a `FormatError` naming the file and the item.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fvcore.common.registry import Registry

from ...io.coco_json import DataError
from ..rasterize import IGNORE_LABEL

DATASET_FORMATS = Registry("DATASET_FORMATS")

# the names formats give their splits (folders, CVAT subsets; any case) -> the competition layout's split
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}

__all__ = [
    "DATASET_FORMATS",
    "IGNORE_LABEL",
    "SPLIT_NAMES",
    "FormatError",
    "FormatOptions",
    "Region",
    "SourceDataset",
    "SourceImage",
    "image_header",
    "image_size",
    "label_map_of",
    "read_dataset",
    "register_format",
    "region_mask",
]


def register_format(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register a reader `read(source: Path, options: FormatOptions) -> SourceDataset` under its
    `--from` name (which may hold a dash, unlike a function's name)."""

    def register(read: Callable) -> Callable:
        DATASET_FORMATS._do_register(name, read)
        return read

    return register


def read_dataset(format_name: str, source: str | Path, options: FormatOptions | None = None) -> SourceDataset:
    """The dataset at `source` read by the reader registered as `format_name` (UnknownNameError naming the
    registered ones otherwise; the readers register when `mask2former.data.formats` is imported)."""
    from ...utils.registry import lookup

    read = lookup(DATASET_FORMATS, format_name, "--from")
    source = Path(source).expanduser()
    if not source.exists():
        raise FormatError(f"{source}: no such file or folder: give the dataset's folder")
    dataset = read(source, options or FormatOptions())
    if not isinstance(dataset, SourceDataset):
        raise TypeError(f"the {format_name} reader returned {type(dataset).__name__}, not a SourceDataset")
    return dataset


class FormatError(DataError):
    """An input the format's reader cannot take; the message names the file and the item and says what to do."""


@dataclass(frozen=True)
class FormatOptions:
    """How ids in the source map onto labels, where the format leaves it open (each reader reads what applies)."""

    classes: tuple[str, ...] = ()  # the class names, background first, where the format has no class list
    ignore: tuple[int, ...] = (255,)  # source mask values that mean "not labelled" -> IGNORE_LABEL
    background: int = 0  # the source mask value that means background -> label 0
    # source 0 is ignore and source v >= 1 is label v - 1 (ADE20K's convention); None: the format's own default
    reduce_zero_label: bool | None = None
    images: Path | None = None  # the image folder of exports that do not hold their images (label-studio, cvat-xml)


@dataclass
class Region:
    """One labelled object: its label (1..K, or IGNORE_LABEL) and its shape, polygons in pixel coordinates
    (each ring a flat [x0, y0, x1, y1, ...] list, COCO's form) or a boolean H x W mask. `where` names the file
    and the item, for messages."""

    label: int
    polygons: list[list[float]] = field(default_factory=list)
    mask: np.ndarray | None = None
    where: str = ""


@dataclass
class SourceImage:
    """One image: its file, the name it gets in the output layout (relative, '/'-separated), its stored size, and
    either its regions (polygon and instance formats) or a function reading its label map (mask formats:
    uint8 H x W of labels 0..K and IGNORE_LABEL, already mapped to the convention above)."""

    path: Path
    name: str
    height: int
    width: int
    regions: list[Region] = field(default_factory=list)
    label_map: Callable[[], np.ndarray] | None = None
    label_path: Path | None = None  # the file its labels come from (a mask, a .txt), for messages and checks


@dataclass
class SourceDataset:
    """A whole dataset in another format: `classes[0]` is the background, the splits are named as in the
    competition layout ("train", "val", "test"; a split without labels has only images)."""

    format: str
    source: Path
    classes: list[str]
    splits: dict[str, list[SourceImage]]
    conventions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # problems the reader read past, one line each

    def labelled_splits(self) -> list[str]:
        """The splits with labels (any image with regions, a label map or a label file, even an empty one)."""
        return [
            split
            for split, images in self.splits.items()
            if any(image.regions or image.label_map is not None or image.label_path is not None for image in images)
        ]


def label_map_of(image: SourceImage) -> np.ndarray:
    """The image's label map (uint8 H x W): its reader's, or its regions painted largest area first (smaller
    objects win overlaps, as the COCO loader paints them), IGNORE_LABEL regions included; all 0 without labels."""
    if image.label_map is not None:
        return image.label_map()
    label = np.zeros((image.height, image.width), dtype=np.uint8)
    masks = [region_mask(region, image.height, image.width) for region in image.regions]
    for index in sorted(range(len(masks)), key=lambda i: -int(masks[i].sum())):
        label[masks[index] > 0] = image.regions[index].label
    return label


def region_mask(region: Region, height: int, width: int) -> np.ndarray:
    """A region's uint8 H x W mask: its mask, or its polygons rasterised by pycocotools (as the COCO loader does)."""
    if region.mask is not None:
        return np.asarray(region.mask, dtype=np.uint8)
    from pycocotools import mask as mask_utils

    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(region.polygons, height, width)))


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file as stored (no EXIF rotation), read from its header; FormatError naming the
    file when it is not an image."""
    return image_header(path)[:2]


def image_header(path: Path) -> tuple[int, int, int]:
    """(height, width, EXIF orientation 1..8) of an image file as stored, from its header; FormatError naming the
    file when it is not an image."""
    from PIL import Image

    from ...io.images import orientation_of

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = orientation_of(image)
    except FileNotFoundError:
        raise FormatError(f"{path}: image not found") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise FormatError(f"{path}: not a readable image ({error})") from None
    return height, width, orientation
