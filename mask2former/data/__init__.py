"""Datasets: registration, COCO -> label maps, the training/test mapper."""

from .catalog import DatasetCatalog, MetadataCatalog
from .coco_semantic import DataError, load_sem_seg_dataset, register_coco_semantic
from .dataset import MapDataset
from .mapper import SemanticSegMapper
from .trash import TRASH_CLASSES, TRASH_PALETTE, register_datasets_from_config, register_trash_datasets

__all__ = [
    "DataError",
    "DatasetCatalog",
    "MapDataset",
    "MetadataCatalog",
    "SemanticSegMapper",
    "TRASH_CLASSES",
    "TRASH_PALETTE",
    "load_sem_seg_dataset",
    "register_coco_semantic",
    "register_datasets_from_config",
    "register_trash_datasets",
]
