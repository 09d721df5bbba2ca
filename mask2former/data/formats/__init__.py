"""Readers of the common dataset formats (YOLO-seg, PNG masks, Cityscapes, ADE20K, Label Studio, CVAT XML), each
registered in DATASET_FORMATS; see base.py for what they return."""
