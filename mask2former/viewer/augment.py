"""Draws of the training mapper for one image, exactly as training builds it from a config.

The mapper is `SemanticSegMapper.from_config(cfg, is_train=True, dataset_dicts=...)`, so whatever
the config turns on (jitter, crop, flip, colour, copy-paste under INPUT.COPY_PASTE.*, and any
augmentation later added to the mapper) shows here unchanged. The mapper reads label maps from
PNGs: the viewer renders them into its own scratch folder and hands those paths over. With
copy-paste on, the object bank is built from the images of the chosen json (those inside the
viewer's roots), as training builds it from DATASETS.TRAIN. Configs come from mask2former.config.load_config,
as every entry point builds them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..io.files import atomic_write_bytes
from .data import DatasetIndex, encode_png, label_map
from .paths import PathOutsideRoots, Roots, file_signature


def copy_paste_enabled(cfg: Any) -> bool | None:
    """INPUT.COPY_PASTE.ENABLED, or None when this version of the config has no copy-paste."""
    node = cfg.INPUT.get("COPY_PASTE")
    return None if node is None else bool(node.ENABLED)


def input_settings(cfg: Any) -> str:
    """The config's INPUT keys, one `INPUT.KEY: value` line each (what the mapper is built from)."""
    from ..config import flatten_keys

    lines = []
    for key in sorted(flatten_keys(cfg.INPUT, prefix="INPUT.")):
        value: Any = cfg
        for part in key.split("."):
            value = value[part]
        lines.append(f"{key}: {value!r}")
    return "\n".join(lines)


def build_mapper(cfg: Any, dataset_dicts: list[dict] | None = None) -> Any:
    """The config's training mapper, producing BGR images (the config itself is left unchanged)."""
    from ..data.mapper import SemanticSegMapper

    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.FORMAT = "BGR"  # pictures are drawn in OpenCV's channel order
    if dataset_dicts is None:
        return SemanticSegMapper.from_config(cfg, is_train=True)
    return SemanticSegMapper.from_config(cfg, is_train=True, dataset_dicts=dataset_dicts)


def write_label_png(index: DatasetIndex, image_id: Any, scratch: Path) -> Path:
    """Render the image's label map into the scratch folder (once per json version) and return its path."""
    json_key = hashlib.sha1(repr(file_signature(index.json_file)).encode()).hexdigest()[:16]
    # named by a digest of the id: a json's id ("../x", "a/b") never becomes a path
    path = scratch / json_key / f"{hashlib.sha1(repr(image_id).encode()).hexdigest()[:16]}.png"
    if not path.is_file():
        atomic_write_bytes(path, encode_png(label_map(index, image_id)))
    return path


def mapper_record(index: DatasetIndex, roots: Roots, image_id: Any, scratch: Path) -> dict:
    """The dataset dict training would hand the mapper (image path checked, label map in the scratch folder)."""
    image = index.image(image_id)
    record = {
        "file_name": str(index.image_path(roots, image)),
        "image_id": image_id,
        "height": image["height"],
        "width": image["width"],
    }
    if index.has_gt:
        record["sem_seg_file_name"] = str(write_label_png(index, image_id, scratch))
    return record


def training_dicts(index: DatasetIndex, roots: Roots, scratch: Path) -> list[dict]:
    """Dataset dicts of every image of the json inside the roots (the copy-paste object bank's sources)."""
    records = []
    for image in index.images:
        try:
            records.append(mapper_record(index, roots, image["id"], scratch))
        except PathOutsideRoots:
            continue
    return records


def draw_samples(mapper: Any, record: dict, draws: int, seed: int = 0) -> list[dict[str, Any]]:
    """`draws` outputs of the mapper for one dataset dict: {image: BGR HxWx3 uint8, label: HxW uint8 or None}.

    Draw i uses the generator seeded by (seed, i), as `MapDataset` seeds (seed, epoch, index).
    """
    out = []
    for draw in range(draws):
        sample = mapper(dict(record), np.random.default_rng([seed, draw]))
        image = np.ascontiguousarray(sample["image"].permute(1, 2, 0).numpy()).astype(np.uint8)
        label = sample["sem_seg"].numpy().astype(np.uint8) if "sem_seg" in sample else None
        out.append({"image": image, "label": label})
    return out
