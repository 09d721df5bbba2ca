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

__all__ = ["DATASET_FORMATS", "IGNORE_LABEL", "FormatError", "FormatOptions", "Region", "SourceDataset", "SourceImage"]


class FormatError(DataError):
    """An input the format's reader cannot take; the message names the file and the item and says what to do."""


@dataclass(frozen=True)
class FormatOptions:
    """How ids in the source map onto labels, where the format leaves it open (each reader reads what applies)."""

    classes: tuple[str, ...] = ()  # the class names, background first, where the format has no class list
    ignore: tuple[int, ...] = (255,)  # source mask values that mean "not labelled" -> IGNORE_LABEL
    background: int = 0  # the source mask value that means background -> label 0
    reduce_zero_label: bool = False  # source 0 is ignore and source v >= 1 is label v - 1 (ADE20K's convention)


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


@dataclass
class SourceDataset:
    """A whole dataset in another format: `classes[0]` is the background, the splits are named as in the
    competition layout ("train", "val", "test"; a split without labels has only images)."""

    format: str
    source: Path
    classes: list[str]
    splits: dict[str, list[SourceImage]]
    conventions: list[str] = field(default_factory=list)
