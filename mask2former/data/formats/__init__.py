"""Readers of the common dataset formats (YOLO-seg, PNG masks, Cityscapes, ADE20K, Label Studio, CVAT XML), each
registered in DATASET_FORMATS under its `--from` name; see base.py for what they return. Importing this package
registers them all."""

from . import ade20k, cityscapes, cvat_xml, label_studio, png_masks, yolo_seg  # noqa: F401  (each registers its reader)
from .base import DATASET_FORMATS

__all__ = ["DATASET_FORMATS"]
