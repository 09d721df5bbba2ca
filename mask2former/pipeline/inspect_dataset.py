"""The logic of tools/inspect_dataset.py: register a COCO json, render its label maps, and show what the model
will see: per-class statistics (OUT/stats.json), images with their label overlay (OUT/ground_truth.png) and
training-mapper draws (OUT/augmented.png: jitter, crop, flip, colour as the config sets them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..config import load_config
from ..data.classes import palette_for
from ..data.coco_semantic import load_with_manifest
from ..data.dataset import MapDataset
from ..data.mapper import SemanticSegMapper
from ..data.stats import dataset_statistics, format_statistics
from ..errors import UserError
from ..io.coco_json import read_coco_json
from ..io.files import atomic_write_bytes, atomic_write_json
from ..io.images import read_image, read_label
from ..modeling import register_all  # noqa: F401  (every model family's config keys and classes)
from ..utils.output_folder import check_claim, owned_output_folder
from ..utils.visualize import grid, legend, overlay, with_legend

TOOL = "inspect_dataset.py"
OUTPUT_FILES = ("stats.json", "ground_truth.png", "augmented.png")


@dataclass
class InspectOptions:
    """The flags of tools/inspect_dataset.py."""

    json: str
    out: str
    image_root: str | None = None
    config_file: str | None = None
    num: int = 8
    seed: int = 0
    cache_dir: str | None = None
    skip_bad: bool = False


def run(options: InspectOptions) -> dict[str, Any]:
    """Print the statistics, write the files under OUT; returns the statistics."""
    json_path = Path(options.json)
    out = Path(options.out)
    for name in OUTPUT_FILES:
        if (out / name).resolve() == json_path.resolve():
            raise UserError(f"--out {out}: writing {name} would replace the json {json_path}; choose another folder")
    if options.num < 1:
        raise UserError(f"--num must be at least 1, got {options.num}")
    job = {"json": str(json_path.resolve()), "num": options.num, "seed": options.seed}
    check_claim(out, TOOL, job, writes=OUTPUT_FILES)  # a folder of someone else's: refused before any work
    cfg = load_config(options.config_file, freeze=False)
    cfg.INPUT.FORMAT = "BGR"  # pictures are drawn in OpenCV's order
    image_root = Path(options.image_root) if options.image_root else json_path.parent
    dicts, manifest = load_with_manifest(json_path, image_root, options.cache_dir, skip_bad=options.skip_bad)
    class_names = manifest["class_names"]
    stats = dataset_statistics(read_coco_json(json_path), dicts, class_names)
    stats["skipped"] = {k: v for k, v in manifest["skipped"].items() if k != "messages"}
    print(format_statistics(stats))
    with owned_output_folder(out, TOOL, job, writes=OUTPUT_FILES) as owned:
        owned.record(*OUTPUT_FILES)
        atomic_write_json(out / "stats.json", stats, indent=2)
        labelled = [d for d in dicts if "sem_seg_file_name" in d]
        if labelled:
            write_pictures(out, labelled, class_names, cfg, options)
        else:
            print("no ground truth in this json: no pictures written")
    return stats


def write_pictures(out: Path, labelled: list[dict], class_names: list[str], cfg, options: InspectOptions) -> None:
    """OUT/ground_truth.png and OUT/augmented.png: --num labelled images, as they are and as training sees them."""
    palette = palette_for(class_names)
    picks = np.random.default_rng(options.seed).choice(len(labelled), min(options.num, len(labelled)), replace=False)
    chosen = [labelled[i] for i in sorted(picks)]
    key = legend(class_names, palette)
    truth = [overlay(read_image(d["file_name"]), read_label(d["sem_seg_file_name"]), palette) for d in chosen]
    _write_png(
        out / "ground_truth.png",
        with_legend(grid(truth, 4, captions=[Path(d["file_name"]).name for d in chosen]), key),
    )

    augmented = MapDataset(chosen, SemanticSegMapper.from_config(cfg, is_train=True), seed=options.seed)
    draws = []
    for index in range(len(augmented)):
        sample = augmented[index]
        image = np.ascontiguousarray(sample["image"].permute(1, 2, 0).numpy())
        draws.append(overlay(image, sample["sem_seg"].numpy().astype(np.uint8), palette))
    _write_png(out / "augmented.png", with_legend(grid(draws, 4), key))
    print(f"wrote {out / 'stats.json'}, {out / 'ground_truth.png'}, {out / 'augmented.png'}")


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path}")
    atomic_write_bytes(path, encoded.tobytes())
