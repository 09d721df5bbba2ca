"""Mask datasets registered without conversion: a `DATASETS.REGISTER` entry `[name, "png-masks", image_dir,
mask_dir]` pairs every image under image_dir with the mask of the same relative path and extension .png under
mask_dir, and reads the masks as label maps, as they are (the way `coco_semantic` reads `sem_seg_file_name`
PNGs): single-channel or indexed PNGs holding labels 0..K-1 and 255 (ignore), of their image's size.

The class list, background first, is a `classes.txt` (one name a line) or `labelmap.txt` (CVAT's `name:r,g,b`
lines; the colours are not used) in mask_dir or the folder above it. The pairing is written as a small COCO json
with `sem_seg_file_name` entries under `<label cache>/registered/`, and that json is registered: its masks are
checked once and their SHA-1 cached like any json's. Masks that need mapping (colours, another background,
reduce-zero-label) are converted with tools/convert_dataset.py instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ...io.coco_json import DataError
from ...io.files import atomic_write_bytes
from ..coco_semantic import register_coco_semantic
from ..label_cache import default_cache_dir
from .base import image_size
from .png_masks import folder_pairs, read_class_file

DIRECT_FORMATS = ("png-masks",)


def register_mask_folders(
    name: str,
    image_dir: str | Path,
    mask_dir: str | Path,
    cache_dir: str | Path | None = None,
    skip_bad: bool = False,
) -> Path:
    """Register `name` as the images under `image_dir` with their masks under `mask_dir`; returns the json
    written for it. DataError naming the folder or image for a missing class list, image folder or mask."""
    image_dir, mask_dir = Path(image_dir).expanduser().resolve(), Path(mask_dir).expanduser().resolve()
    for folder, what in ((image_dir, "image folder"), (mask_dir, "mask folder")):
        if not folder.is_dir():
            raise DataError(f"DATASETS.REGISTER {name}: the {what} {folder} does not exist")
    classes = _class_names(name, mask_dir)
    images = []
    for index, (relative, path, mask) in enumerate(folder_pairs(image_dir, mask_dir)):
        if mask is None or not mask.is_file():
            raise DataError(f"DATASETS.REGISTER {name}: {path} has no mask {mask}: add it or drop the image")
        height, width = image_size(path)
        images.append(
            {"id": index, "file_name": relative, "height": height, "width": width, "sem_seg_file_name": str(mask)}
        )
    categories = [{"id": label, "name": class_name} for label, class_name in enumerate(classes) if label]
    data = json.dumps({"images": images, "annotations": [], "categories": categories}).encode("utf-8")
    key = hashlib.sha1(f"{image_dir}\n{mask_dir}".encode()).hexdigest()[:12]
    json_file = Path(cache_dir or default_cache_dir()) / "registered" / f"{name}-{key}.json"
    if not json_file.is_file() or json_file.read_bytes() != data:
        atomic_write_bytes(json_file, data)
    described_as = f"DATASETS.REGISTER {name}"
    options = {"cache_dir": cache_dir, "skip_bad": skip_bad, "has_gt": True, "described_as": described_as}
    register_coco_semantic(name, json_file, image_dir, **options)
    return json_file


def _class_names(name: str, mask_dir: Path) -> list[str]:
    for folder in (mask_dir, mask_dir.parent):
        for file_name in ("classes.txt", "labelmap.txt"):
            if (folder / file_name).is_file():
                return list(read_class_file(folder / file_name).names)
    raise DataError(
        f"DATASETS.REGISTER {name}: no classes.txt or labelmap.txt in {mask_dir} or {mask_dir.parent}: write the "
        "class names there, background first, one a line"
    )
