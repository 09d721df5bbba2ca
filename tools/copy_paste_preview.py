#!/usr/bin/env python
"""Write training-mapper draws with copy-paste (INPUT.COPY_PASTE) as pictures, to check it by eye.

    python tools/copy_paste_preview.py --config-file configs/quickstart.yaml --out output/copy_paste \\
        --num 16 [--seed 0] [KEY VALUE ...]

Each PNG shows the augmented crop and its label overlay side by side, with a legend; pasted objects
are outlined in yellow on the overlay and their classes are named in the caption. Copy-paste is
switched on even where the config has it off; PROB and the other keys are the config's. The pasted
pixels are found by drawing the same sample again without copy-paste (the mapper draws the paste
last, so the crop is the same).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import cv2
import numpy as np

from mask2former.config import get_cfg
from mask2former.data.catalog import DatasetCatalog
from mask2former.data.mapper import SemanticSegMapper
from mask2former.data.trash import palette_for, register_datasets_from_config
from mask2former.utils.io import atomic_write_bytes
from mask2former.utils.logger import setup_logging
from mask2former.utils.visualize import legend, overlay, with_legend

OUTLINE_BGR = (0, 255, 255)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="training config (INPUT.*, DATASETS.*)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs")
    parser.add_argument("--num", type=int, default=16, help="number of pictures")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image choice and the augmentation")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs that override the config")
    args = parser.parse_args(argv)
    setup_logging()

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    if not cfg.INPUT.COPY_PASTE.ENABLED:
        print("INPUT.COPY_PASTE.ENABLED is off in the config; switched on for the preview")
        cfg.INPUT.COPY_PASTE.ENABLED = True
    cfg.INPUT.FORMAT = "BGR"  # pictures are drawn in OpenCV's order
    register_datasets_from_config(cfg)
    dicts = [d for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name) if "sem_seg_file_name" in d]
    if not dicts:
        raise SystemExit(f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)} has no labelled images")

    mapper = SemanticSegMapper.from_config(cfg, is_train=True, dataset_dicts=dicts)
    plain = copy.copy(mapper)
    plain.copy_paste = None
    class_names = mapper.copy_paste.class_names
    palette = palette_for(class_names)
    key = legend(class_names, palette)

    out = Path(args.out)
    picks = np.random.default_rng(args.seed).choice(len(dicts), args.num, replace=args.num > len(dicts))
    written = []
    for number, index in enumerate(picks):
        record = dicts[int(index)]
        sample = mapper(record, np.random.default_rng([args.seed, number]))
        base = plain(record, np.random.default_rng([args.seed, number]))
        image = np.ascontiguousarray(sample["image"].permute(1, 2, 0).numpy())
        label = sample["sem_seg"].numpy().astype(np.uint8)
        pasted = (label != base["sem_seg"].numpy()) | (image != base["image"].permute(1, 2, 0).numpy()).any(axis=2)
        shown = overlay(image, label, palette)
        contours, _ = cv2.findContours(pasted.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(shown, contours, -1, OUTLINE_BGR, 1)
        names = [class_names[c] for c in np.unique(label[pasted]) if c < len(class_names)]
        caption = f"{Path(record['file_name']).name}  pasted: {', '.join(names) if names else 'nothing'}"
        picture = with_legend(_captioned(np.hstack([image, shown]), caption), key)
        path = out / f"{number:04d}_{Path(record['file_name']).stem}.png"
        _write_png(path, picture)
        written.append(path)
        print(f"[{number + 1}/{args.num}] {path} ({caption})", flush=True)
    return written


def _captioned(picture: np.ndarray, caption: str) -> np.ndarray:
    bar = np.full((24, picture.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(bar, caption, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, picture])


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path}")
    atomic_write_bytes(path, encoded.tobytes())


if __name__ == "__main__":
    main()
