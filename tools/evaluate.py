#!/usr/bin/env python
"""Score a submission CSV or a folder of label maps against COCO ground truth.

    python tools/evaluate.py --gt DATA/val.json --pred submission.csv [--image-root DATA] [--out DIR]

A CSV is scored at its 256x256 size against the ground truth reduced the same way (nearest); a
folder holds one PNG label map per image at `<folder>/<file_name with .png>`, scored at its own
size. Prints the per-class table and ends with `mIoU: 0.xxxx`; --out also writes the metrics,
the confusion matrix as JSON and as a PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from mask2former.data.coco_semantic import load_with_manifest
from mask2former.data.mapper import read_label
from mask2former.evaluation.sem_seg import SemSegEvaluator
from mask2former.submission import downsample_label_map, read_submission
from mask2former.utils.logger import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", required=True, help="COCO json with the ground truth (e.g. val.json)")
    parser.add_argument("--image-root", help="folder that file_name is relative to (default: the json's folder)")
    parser.add_argument("--pred", required=True, help="submission CSV, or a folder of PNG label maps")
    parser.add_argument("--out", help="write sem_seg_metrics.json, confusion_matrix.json/.png here")
    parser.add_argument("--cache-dir", help="where rendered ground-truth label maps are cached")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad annotations/images (with a summary)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    setup_logging()
    gt_json = Path(args.gt)
    image_root = Path(args.image_root) if args.image_root else gt_json.parent
    dicts, manifest = load_with_manifest(gt_json, image_root, args.cache_dir, skip_bad=args.skip_bad, has_gt=True)
    class_names = manifest["class_names"]
    evaluator = SemSegEvaluator(class_names, output_dir=args.out, log_table=False)
    pred_path = Path(args.pred)
    relative = {d["file_name"]: Path(d["file_name"]).relative_to(image_root.resolve()).as_posix() for d in dicts}

    if pred_path.is_file():
        predictions = read_submission(pred_path)
        missing = [relative[d["file_name"]] for d in dicts if relative[d["file_name"]] not in predictions]
        if missing:
            sys.exit(f"{pred_path}: no row for {len(missing)} ground-truth image(s), e.g. {', '.join(missing[:3])}")
        extra = sorted(set(predictions) - set(relative.values()))
        if extra:
            sys.exit(f"{pred_path}: {len(extra)} row(s) are not in {gt_json}, e.g. {', '.join(extra[:3])}")
    elif not pred_path.is_dir():
        sys.exit(f"prediction not found: {pred_path}")

    for record in tqdm(dicts, desc="evaluate", unit="img"):
        name = relative[record["file_name"]]
        gt = read_label(record["sem_seg_file_name"])
        if pred_path.is_file():
            pred = predictions[name]
            gt = downsample_label_map(gt, pred.shape[0], "nearest")
        else:
            pred = read_label(str(pred_path / Path(name).with_suffix(".png")))
            if pred.shape != gt.shape:
                gt = cv2.resize(gt, (pred.shape[1], pred.shape[0]), interpolation=cv2.INTER_NEAREST)
        evaluator.add(gt, pred)

    result = evaluator.evaluate()["sem_seg"]
    print(evaluator.table)
    print(f"mIoU: {result['mIoU']:.4f}")
    return result["mIoU"]


if __name__ == "__main__":
    main()
