"""The competition's dataset: its default class metadata (one place) and its registered splits."""

from __future__ import annotations

import os
from pathlib import Path

from fvcore.common.config import CfgNode

from ..errors import UserError
from .catalog import DatasetCatalog, DatasetNameError
from .coco_semantic import register_coco_semantic
from .formats.registration import DIRECT_FORMATS, register_mask_folders

# Registered name -> json file under the data root. trash_test has no ground truth.
TRASH_SPLITS: dict[str, str] = {
    "trash_train_all": "train_all.json",
    "trash_train": "train.json",
    "trash_val": "val.json",
    "trash_test": "test.json",
}


class DatasetEntryError(UserError, ValueError):
    """A DATASETS.REGISTER entry that is neither [name, json_file, image_root] nor [name, "png-masks", image_dir,
    mask_dir]."""


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
        if len(entry) == 4 and entry[1] in DIRECT_FORMATS:
            name, _, image_dir, mask_dir = entry
            register_mask_folders(name, image_dir, mask_dir, options["cache_dir"], options["skip_bad"])
        elif len(entry) == 3:
            name, json_file, image_root = entry
            register_coco_semantic(name, json_file, image_root, **options)
        else:
            raise DatasetEntryError(
                "DATASETS.REGISTER entries are [name, json_file, image_root] or [name, 'png-masks', image_dir, "
                f"mask_dir]; got {entry!r}"
            )
        names.append(name)
    for name in list(data.TRAIN) + list(data.TEST):
        if name not in DatasetCatalog:
            hint = "" if root is not None else " Set DATASETS.ROOT or $TRASH_DATA to the competition data root."
            raise DatasetNameError(
                f"dataset '{name}' is named in the config but not registered. "
                f"Registered: {', '.join(DatasetCatalog.list()) or 'none'}.{hint}"
            )
    return names
