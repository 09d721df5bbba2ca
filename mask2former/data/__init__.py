"""Datasets: registration, COCO -> label maps, the training/test mapper.

The names below are imported on first use, so that importing one light module of the package (the class list,
`mask2former.data.classes`) does not pull in torch through the mapper and the dataset.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DatasetCatalog": ".catalog",
    "MetadataCatalog": ".catalog",
    "DataError": ".coco_semantic",
    "load_sem_seg_dataset": ".coco_semantic",
    "register_coco_semantic": ".coco_semantic",
    "MapDataset": ".dataset",
    "SemanticSegMapper": ".mapper",
    "TRASH_CLASSES": ".classes",
    "TRASH_PALETTE": ".classes",
    "register_datasets_from_config": ".trash",
    "register_trash_datasets": ".trash",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)
