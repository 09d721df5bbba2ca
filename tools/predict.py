#!/usr/bin/env python
"""Predict class probabilities and a submission CSV for a set of images.

    python tools/predict.py --config-file configs/m2f_swin_l.yaml --weights output/m2f_swin_l/model_final.pth \
        --json DATA/test.json --out output/predict [--tta] [--overlays 16] [KEY VALUE ...]

Writes OUT/probs/<file_name>.npz (float16 class probabilities, see mask2former/prediction_io.py),
OUT/meta.json, OUT/submission.csv (256x256 label maps) and OUT/overlays/*.png. Images whose npz
already exists are skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from mask2former.config import get_cfg  # noqa: E402
from mask2former.data.coco_semantic import class_names_from_categories, read_coco_json  # noqa: E402
from mask2former.data.mapper import read_image  # noqa: E402
from mask2former.data.trash import palette_for  # noqa: E402
from mask2former.engine.checkpoint import load_checkpoint_into  # noqa: E402
from mask2former.engine.inference import inference_views, predict_probabilities, resize_probabilities  # noqa: E402
from mask2former.modeling.meta_arch import build_model  # noqa: E402
from mask2former.prediction_io import load_probabilities, probability_path, save_probabilities  # noqa: E402
from mask2former.submission import SUBMISSION_SIZE, downsample_label_map, write_submission  # noqa: E402
from mask2former.utils.io import atomic_write_bytes, atomic_write_json  # noqa: E402
from mask2former.utils.logger import setup_logging  # noqa: E402
from mask2former.utils.visualize import overlay  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the model's config")
    parser.add_argument("--weights", required=True, help="checkpoint (.pth, .ckpt, .safetensors)")
    parser.add_argument("--json", required=True, help="COCO json listing the images (e.g. test.json)")
    parser.add_argument("--image-root", help="folder that file_name is relative to (default: the json's folder)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tta", action="store_true", help="enable TEST.AUG (flip and scales)")
    parser.add_argument(
        "--prob-size",
        type=int,
        default=SUBMISSION_SIZE,
        help="side of the stored probability maps; 0 keeps the image size",
    )
    parser.add_argument("--overlays", type=int, default=16, help="overlay PNGs to write (0: none)")
    parser.add_argument("--allow-pickle", action="store_true", help="allow pickled checkpoints (runs code)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    setup_logging()
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    if args.tta:
        cfg.TEST.AUG.ENABLED = True
    device = "cuda" if cfg.MODEL.DEVICE in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    model = build_model(cfg).to(device).eval()
    load_checkpoint_into(model, args.weights, allow_pickle=args.allow_pickle or cfg.MODEL.ALLOW_PICKLE)

    json_path = Path(args.json)
    image_root = Path(args.image_root) if args.image_root else json_path.parent
    data = read_coco_json(json_path)
    class_names = class_names_from_categories(data["categories"])
    if len(class_names) != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
        sys.exit(f"{json_path} has {len(class_names)} classes, the model {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}")
    out = Path(args.out)
    views = inference_views(cfg)
    atomic_write_json(
        out / "meta.json",
        {
            "class_names": class_names,
            "weights": str(args.weights),
            "config_file": args.config_file,
            "views": views,
            "prob_size": args.prob_size,
            "json": str(json_path),
        },
        indent=2,
    )
    done = 0
    for image in tqdm(data["images"], desc="predict", unit="img"):
        if probability_path(out, image["file_name"]).is_file():
            done += 1
            continue
        bgr = read_image(str(image_root / image["file_name"]))
        probs = predict_probabilities(model, bgr, views, cfg.TEST.AUG.MAX_SIZE, cfg.INPUT.FORMAT)
        if args.prob_size:
            probs = resize_probabilities(probs, (args.prob_size, args.prob_size))
        save_probabilities(
            out, image["file_name"], image["id"], probs.cpu().numpy(), bgr.shape[0], bgr.shape[1], class_names
        )
    if done:
        print(f"resumed: {done} image(s) were already predicted")

    palette = palette_for(class_names)
    rows = []
    for index, image in enumerate(data["images"]):
        label = load_probabilities(probability_path(out, image["file_name"]))["probs"].argmax(axis=0)
        rows.append((image["file_name"], downsample_label_map(label.astype(np.uint8))))
        if index < args.overlays:
            bgr = read_image(str(image_root / image["file_name"]))
            full = cv2.resize(label.astype(np.uint8), (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_NEAREST)
            ok, encoded = cv2.imencode(".png", np.hstack([bgr, overlay(bgr, full, palette)]))
            atomic_write_bytes(out / "overlays" / Path(image["file_name"]).with_suffix(".png"), encoded.tobytes())
    csv = out / "submission.csv"
    write_submission(csv, rows)
    print(json.dumps({"submission": str(csv), "probabilities": str(out / "probs"), "images": len(rows)}))
    return csv


if __name__ == "__main__":
    main()
