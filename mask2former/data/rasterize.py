"""COCO segmentations to label maps: an annotation's binary mask (polygons or RLE, through pycocotools) and the
label map of an image painted from its checked annotations, largest area first, so smaller objects win overlaps
(the competition baseline's rule).

Label values: 0 is background, 1..K are the json's categories in id order, IGNORE_LABEL (255) is ignore: an
annotation with `"ignore": 1` (as the dataset converter writes ignore pixels), and with `crowd_as_ignore` any
`"iscrowd": 1` one.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from ..io.coco_json import is_ignore_region

IGNORE_LABEL = 255


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """A checked annotation's binary mask (uint8 HxW) via pycocotools (polygons or RLE)."""
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle)


def render_label_map(
    image: dict, anns: list[dict], labels: dict[int, int], crowd_as_ignore: bool = False
) -> np.ndarray:
    """Paint checked annotations largest area first (smaller objects win overlaps); uint8 HxW."""
    height, width = image["height"], image["width"]
    masks = [annotation_mask(ann, height, width) for ann in anns]
    areas = [
        float(ann["area"]) if isinstance(ann.get("area"), (int, float)) else float(m.sum())
        for ann, m in zip(anns, masks, strict=True)
    ]
    label_map = np.zeros((height, width), dtype=np.uint8)
    for index in sorted(range(len(anns)), key=lambda i: -areas[i]):  # stable: ties keep json order
        ann = anns[index]
        ignored = is_ignore_region(ann) or (crowd_as_ignore and ann.get("iscrowd", 0))
        value = IGNORE_LABEL if ignored else labels[ann["category_id"]]
        label_map[masks[index] == 1] = value
    return label_map
