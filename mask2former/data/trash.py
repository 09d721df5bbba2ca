"""The competition's dataset: its default class metadata (one place) and its registered splits."""

from __future__ import annotations

import os
from pathlib import Path

from fvcore.common.config import CfgNode

from ..errors import UserError
from .catalog import DatasetCatalog, DatasetNameError
from .coco_semantic import register_coco_semantic

# Label 0 is background (not in the json); labels 1..10 are the json's category ids 1..10.
TRASH_CLASSES: tuple[str, ...] = (
    "Background",
    "General trash",
    "Paper",
    "Paper pack",
    "Metal",
    "Glass",
    "Plastic",
    "Styrofoam",
    "Plastic bag",
    "Battery",
    "Clothing",
)
# RGB, the competition baseline's class colour map.
TRASH_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (192, 0, 128),
    (0, 128, 192),
    (0, 128, 64),
    (128, 0, 0),
    (64, 0, 128),
    (64, 0, 192),
    (192, 128, 64),
    (192, 192, 128),
    (64, 64, 128),
    (128, 0, 192),
)

# Registered name -> json file under the data root. trash_test has no ground truth.
TRASH_SPLITS: dict[str, str] = {
    "trash_train_all": "train_all.json",
    "trash_train": "train.json",
    "trash_val": "val.json",
    "trash_test": "test.json",
}


class DatasetEntryError(UserError, ValueError):
    """A DATASETS.REGISTER entry that is not [name, json_file, image_root]."""


def palette_for(class_names: list[str] | tuple[str, ...]) -> list[tuple[int, int, int]]:
    """Colours for a class list: the trash palette for trash names, a fixed generated one otherwise."""
    lookup = {name.lower(): color for name, color in zip(TRASH_CLASSES, TRASH_PALETTE, strict=True)}
    palette = []
    for index, name in enumerate(class_names):
        palette.append(lookup.get(name.lower(), _generated_color(index)))
    return palette


def _generated_color(index: int) -> tuple[int, int, int]:
    if index == 0:
        return (0, 0, 0)
    # The bit-interleaved PASCAL VOC colour map: distinct, stable colours for any class count.
    r = g = b = 0
    value = index
    for shift in range(7, -1, -1):
        r |= ((value >> 0) & 1) << shift
        g |= ((value >> 1) & 1) << shift
        b |= ((value >> 2) & 1) << shift
        value >>= 3
    return (r, g, b)


def data_root_from(cfg_root: str = "") -> Path | None:
    """The competition data root: the config's DATASETS.ROOT, else $TRASH_DATA, else None."""
    root = cfg_root or os.environ.get("TRASH_DATA", "")
    return Path(root).expanduser() if root else None


def register_trash_datasets(
    root: str | Path,
    cache_dir: str | Path | None = None,
    skip_bad: bool = False,
    crowd_as_ignore: bool = False,
) -> list[str]:
    """Register trash_train_all / trash_train / trash_val / trash_test under `root`; returns the names."""
    root = Path(root).expanduser().resolve()
    for name, json_name in TRASH_SPLITS.items():
        register_coco_semantic(
            name,
            root / json_name,
            root,
            cache_dir=cache_dir,
            skip_bad=skip_bad,
            crowd_as_ignore=crowd_as_ignore,
            has_gt=name != "trash_test",
        )
    return list(TRASH_SPLITS)


def register_datasets_from_config(cfg: CfgNode) -> list[str]:
    """Register what the config names: the trash splits (if a root is known) and DATASETS.REGISTER."""
    data = cfg.DATASETS
    options = dict(
        cache_dir=data.LABEL_CACHE_DIR or None,
        skip_bad=data.SKIP_BAD_ANNOTATIONS,
        crowd_as_ignore=data.CROWD_AS_IGNORE,
    )
    names: list[str] = []
    root = data_root_from(data.ROOT)
    if root is not None:
        names += register_trash_datasets(root, **options)
    for entry in data.REGISTER:
        if len(entry) != 3:
            raise DatasetEntryError(f"DATASETS.REGISTER entries are [name, json_file, image_root]; got {entry!r}")
        name, json_file, image_root = entry
        register_coco_semantic(name, json_file, image_root, **options)
        names.append(name)
    for name in list(data.TRAIN) + list(data.TEST):
        if name not in DatasetCatalog:
            hint = "" if root is not None else " Set DATASETS.ROOT or $TRASH_DATA to the competition data root."
            raise DatasetNameError(
                f"dataset '{name}' is named in the config but not registered. "
                f"Registered: {', '.join(DatasetCatalog.list()) or 'none'}.{hint}"
            )
    return names
