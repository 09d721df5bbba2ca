"""Dataset statistics for EDA: per class images, instances and pixel share."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..io.coco_json import object_annotations
from ..io.images import read_label
from .coco_semantic import category_to_label


def dataset_statistics(data: dict[str, Any], dicts: list[dict], class_names: list[str]) -> dict[str, Any]:
    """Counts from the json (instances, images per class, objects per image) and the label maps (pixels)."""
    labels = category_to_label(data["categories"])
    kept_ids = {d["image_id"] for d in dicts}
    instances = np.zeros(len(class_names), dtype=np.int64)
    images_with = [set() for _ in class_names]
    objects_per_image: dict[int, int] = dict.fromkeys(kept_ids, 0)
    for ann in object_annotations(data["annotations"]):
        if ann["image_id"] in kept_ids and ann.get("category_id") in labels:
            label = labels[ann["category_id"]]
            instances[label] += 1
            images_with[label].add(ann["image_id"])
            objects_per_image[ann["image_id"]] += 1
    pixels = np.zeros(256, dtype=np.int64)
    for record in dicts:
        if "sem_seg_file_name" in record:
            pixels += np.bincount(read_label(record["sem_seg_file_name"]).ravel(), minlength=256)
    total = pixels[: len(class_names)].sum()
    counts = list(objects_per_image.values())
    return {
        "num_images": len(dicts),
        "num_annotations": int(instances.sum()),
        "objects_per_image": {
            "mean": float(np.mean(counts)) if counts else 0.0,
            "max": int(max(counts)) if counts else 0,
        },
        "classes": [
            {
                "name": name,
                "instances": int(instances[i]),
                "images": len(images_with[i]),
                "pixel_share": float(pixels[i] / total) if total else 0.0,
            }
            for i, name in enumerate(class_names)
        ],
        "ignored_pixels": int(pixels[255]),
    }


def format_statistics(stats: dict[str, Any]) -> str:
    width = max(len(c["name"]) for c in stats["classes"]) + 2
    lines = [
        f"{stats['num_images']} images, {stats['num_annotations']} objects "
        f"({stats['objects_per_image']['mean']:.1f} per image, max {stats['objects_per_image']['max']})",
        f"{'class':<{width}}{'objects':>9}{'images':>8}{'pixels':>9}",
    ]
    for c in stats["classes"]:
        lines.append(f"{c['name']:<{width}}{c['instances']:>9}{c['images']:>8}{100 * c['pixel_share']:>8.2f}%")
    return "\n".join(lines)
