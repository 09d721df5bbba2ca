"""The Dataset page's numbers: from the json alone (instant) and from the label maps (one pass).

From the json: objects and images per class, objects per image, object size relative to the image.
From the label maps and images: pixel share per class and the mean colour of each class's pixels.
Each function returns a pandas DataFrame that the page shows as a table beside its chart.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..io.images import read_image
from .data import DatasetIndex, annotation_area, label_map
from .paths import Roots

# Object area as a share of its image: bin edges and labels (the last bin is closed at 1).
SIZE_EDGES = (0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
SIZE_BINS = ("<0.1%", "0.1-0.5%", "0.5-1%", "1-5%", "5-10%", "10-25%", "25-50%", ">=50%")


def class_table(index: DatasetIndex) -> pd.DataFrame:
    """Per class (background left out): objects, images holding the class, and their shares."""
    instances = np.zeros(index.num_classes, dtype=np.int64)
    images_with = [set() for _ in range(index.num_classes)]
    for image_id, anns in index.anns_by_image.items():
        for ann in anns:
            label = index.labels[ann["category_id"]]
            instances[label] += 1
            images_with[label].add(image_id)
    num_images = max(1, len(index.images))
    total = max(1, int(instances.sum()))
    rows = [
        {
            "class": index.class_names[label],
            "objects": int(instances[label]),
            "images": len(images_with[label]),
            "objects %": round(100 * instances[label] / total, 2),
            "images %": round(100 * len(images_with[label]) / num_images, 2),
        }
        for label in range(1, index.num_classes)
    ]
    return pd.DataFrame(rows, columns=["class", "objects", "images", "objects %", "images %"])


def objects_per_image_table(index: DatasetIndex) -> pd.DataFrame:
    """How many images hold 0, 1, 2, ... objects."""
    counts = np.array(list(index.object_counts().values()), dtype=np.int64)
    histogram = np.bincount(counts, minlength=1) if counts.size else np.zeros(1, dtype=np.int64)
    return pd.DataFrame({"objects": np.arange(len(histogram)), "images": histogram})


def object_size_table(index: DatasetIndex) -> pd.DataFrame:
    """Per class: objects in each size bin (area / image area), and the median and mean share in %."""
    shares: list[list[float]] = [[] for _ in range(index.num_classes)]
    for image_id, anns in index.anns_by_image.items():
        image = index.image(image_id)
        total = image["height"] * image["width"]
        for ann in anns:
            shares[index.labels[ann["category_id"]]].append(annotation_area(ann, image) / total)
    rows = []
    for label in range(1, index.num_classes):
        values = np.asarray(shares[label], dtype=np.float64)
        bins = size_bins(values)
        row: dict[str, Any] = {"class": index.class_names[label]}
        row.update({name: int(count) for name, count in zip(SIZE_BINS, bins, strict=True)})
        row["median %"] = round(100 * float(np.median(values)), 3) if values.size else float("nan")
        row["mean %"] = round(100 * float(values.mean()), 3) if values.size else float("nan")
        rows.append(row)
    return pd.DataFrame(rows, columns=["class", *SIZE_BINS, "median %", "mean %"])


def size_bins(shares: np.ndarray) -> np.ndarray:
    """Counts of shares per SIZE_BINS bin (a share of exactly 1, or above, falls in the last)."""
    index = np.clip(np.searchsorted(SIZE_EDGES, shares, side="right") - 1, 0, len(SIZE_BINS) - 1)
    return np.bincount(index, minlength=len(SIZE_BINS))


def pixel_colour_table(index: DatasetIndex, roots: Roots) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per class (background included): pixels, pixel share (%) and mean RGB colour, over the images.

    Needs every image and its label map: one pass, reading each image once. Images that cannot be
    read (missing, outside the roots) are counted and listed in the second return value.
    """
    ids = [image["id"] for image in index.images]
    pixels = np.zeros(256, dtype=np.int64)
    colour_sums = np.zeros((256, 3), dtype=np.float64)
    failed: list[str] = []
    for image_id in ids:
        image = index.image(image_id)
        try:
            picture = read_image(str(index.image_path(roots, image)))
        except (OSError, PermissionError) as error:
            failed.append(str(error))
            continue
        label = label_map(index, image_id)
        if label.shape != picture.shape[:2]:
            failed.append(f"{image['file_name']}: image is {picture.shape[1]}x{picture.shape[0]}, json says otherwise")
            continue
        flat = label.ravel()
        pixels += np.bincount(flat, minlength=256)
        for channel in range(3):  # BGR
            colour_sums[:, channel] += np.bincount(flat, weights=picture[..., channel].ravel(), minlength=256)
    total = pixels[: index.num_classes].sum()
    rows = []
    for label in range(index.num_classes):
        count = int(pixels[label])
        b, g, r = (colour_sums[label] / count) if count else (np.nan, np.nan, np.nan)
        rows.append(
            {
                "class": index.class_names[label],
                "pixels": count,
                "pixel %": round(100 * count / total, 3) if total else 0.0,
                "mean R": _round(r),
                "mean G": _round(g),
                "mean B": _round(b),
                "mean colour": _hex(r, g, b),
            }
        )
    info = {"images": len(ids) - len(failed), "failed": failed}
    return pd.DataFrame(rows), info


def _round(value: float) -> float:
    return float("nan") if value != value else round(float(value), 1)


def _hex(r: float, g: float, b: float) -> str:
    if r != r:
        return ""
    return "#{:02x}{:02x}{:02x}".format(*(int(round(v)) for v in (r, g, b)))


def palette_hex(palette: list[tuple[int, int, int]]) -> list[str]:
    return ["#{:02x}{:02x}{:02x}".format(*color) for color in palette]
