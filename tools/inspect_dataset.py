#!/usr/bin/env python
"""Register a COCO json, render its label maps, and show what the model will see.

    python tools/inspect_dataset.py --json DATA/train.json --out output/inspect [--config-file CFG]

Prints per-class objects, images and pixel share; writes stats.json, ground_truth.png (images with
their label overlay and a legend) and augmented.png (training-mapper draws: jitter, crop, flip,
colour, as configured by --config-file or the defaults).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from mask2former.config import get_cfg
from mask2former.data.coco_semantic import load_with_manifest, read_coco_json
from mask2former.data.dataset import MapDataset
from mask2former.data.mapper import SemanticSegMapper, read_image, read_label
from mask2former.data.stats import dataset_statistics, format_statistics
from mask2former.data.trash import palette_for
from mask2former.utils.io import atomic_write_bytes, atomic_write_json
from mask2former.utils.logger import setup_logging
from mask2former.utils.visualize import grid, legend, overlay, with_legend


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="COCO json (train_all.json, train.json, ...)")
    parser.add_argument("--image-root", help="folder that file_name is relative to (default: the json's folder)")
    parser.add_argument("--out", required=True, help="output folder for stats.json and the pictures")
    parser.add_argument("--config-file", help="config whose INPUT.* keys drive the augmentation preview")
    parser.add_argument("--num", type=int, default=8, help="images in each picture")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentation draws")
    parser.add_argument("--cache-dir", help="where rendered label maps are cached")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad annotations/images (with a summary)")
    args = parser.parse_args(argv)
    setup_logging()

    json_path = Path(args.json)
    image_root = Path(args.image_root) if args.image_root else json_path.parent
    dicts, manifest = load_with_manifest(json_path, image_root, args.cache_dir, skip_bad=args.skip_bad)
    class_names = manifest["class_names"]
    palette = palette_for(class_names)
    stats = dataset_statistics(read_coco_json(json_path), dicts, class_names)
    stats["skipped"] = {k: v for k, v in manifest["skipped"].items() if k != "messages"}
    print(format_statistics(stats))
    out = Path(args.out)
    atomic_write_json(out / "stats.json", stats, indent=2)

    labelled = [d for d in dicts if "sem_seg_file_name" in d]
    if not labelled:
        print("no ground truth in this json: no pictures written")
        return stats
    picks = np.random.default_rng(args.seed).choice(len(labelled), min(args.num, len(labelled)), replace=False)
    chosen = [labelled[i] for i in sorted(picks)]
    key = legend(class_names, palette)
    truth = [overlay(read_image(d["file_name"]), read_label(d["sem_seg_file_name"]), palette) for d in chosen]
    _write_png(
        out / "ground_truth.png",
        with_legend(grid(truth, 4, captions=[Path(d["file_name"]).name for d in chosen]), key),
    )

    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.INPUT.FORMAT = "BGR"  # pictures are drawn in OpenCV's order
    augmented = MapDataset(chosen, SemanticSegMapper.from_config(cfg, is_train=True), seed=args.seed)
    draws = []
    for index in range(len(augmented)):
        sample = augmented[index]
        image = np.ascontiguousarray(sample["image"].permute(1, 2, 0).numpy())
        draws.append(overlay(image, sample["sem_seg"].numpy().astype(np.uint8), palette))
    _write_png(out / "augmented.png", with_legend(grid(draws, 4), key))
    print(f"wrote {out / 'stats.json'}, {out / 'ground_truth.png'}, {out / 'augmented.png'}")
    return stats


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path}")
    atomic_write_bytes(path, encoded.tobytes())


if __name__ == "__main__":
    main()
