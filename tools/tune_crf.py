#!/usr/bin/env python
"""Grid search of tools/ensemble_crf.py's DenseCRF settings on images with ground truth.

    python tools/tune_crf.py output/pred_val/a output/pred_val/b output/pred_val/c --gt DATA/val.json \\
        --sxy 5 10 20 40 --srgb 3 5 13 --compat 4 10 --iters 5 --workers 2

The inputs are prediction folders of the --gt images (tools/predict.py outputs). Each image's soft vote
(--weights) is made once; then every combination of the listed values runs the CRF and the consensus write-back
exactly as ensemble_crf.py does (mask2former/ensemble.py), and is scored against the ground truth at the maps'
size. Prints one row per setting, best final mIoU first, with the vote's mIoU above, and writes the table to
--out (default: nothing written). Settings not listed keep ensemble_crf.py's defaults.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mask2former.data.coco_semantic import ground_truth_label_paths
from mask2former.data.mapper import read_label_at
from mask2former.ensemble import (
    CRF_DEFAULTS,
    EnsembleJob,
    consensus_write_back,
    dense_crf,
    load_inputs,
    normalize_weights,
    read_rgb,
    soft_vote,
)
from mask2former.evaluation.sem_seg import confusion_matrix, metrics_from_confusion
from mask2former.prediction_io import probability_path
from mask2former.utils.io import atomic_write_text

GRID_KEYS = ("sxy", "srgb", "compat", "iters", "gaussian_sxy", "gaussian_compat")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="prediction folders of the --gt images")
    parser.add_argument("--gt", required=True, help="COCO json with the ground truth")
    parser.add_argument("--image-root", help="folder that file_name is relative to (default: the json's folder)")
    parser.add_argument("--weights", nargs="+", type=float, help="one weight per input (default equal)")
    parser.add_argument("--cache-dir", help="where rendered ground-truth label maps are cached")
    for key in GRID_KEYS:
        kind = int if key == "iters" else float
        flag = "--" + key.replace("gaussian_", "gauss-").replace("_", "-")
        parser.add_argument(flag, dest=key, nargs="+", type=kind, default=[CRF_DEFAULTS[key]], help=f"values of {key}")
    parser.add_argument("--workers", type=int, default=1, help="worker processes over the images")
    parser.add_argument("--out", help="write the table (Markdown) to this file")
    return parser.parse_args(argv)


def settings_grid(args: argparse.Namespace) -> list[dict]:
    values = [getattr(args, key) for key in GRID_KEYS]
    return [dict(zip(GRID_KEYS, combo, strict=True)) for combo in itertools.product(*values)]


def score_image(task: tuple) -> np.ndarray:
    """Confusion matrices [vote, (crf, final) per setting] of one image."""
    job, file_name, gt_path, settings = task
    cv2.setNumThreads(1)
    maps, _ = load_inputs(job, file_name)
    inputs = [p.argmax(axis=0).astype(np.uint8) for p in maps]
    vote_probs = soft_vote(maps, job.weights)
    num_classes = len(job.class_names)
    height, width = inputs[0].shape
    gt = read_label_at(gt_path, (height, width))
    # resized once here rather than by dense_crf at every setting (the same INTER_AREA resize)
    image = cv2.resize(read_rgb(job.image_root, file_name), (width, height), interpolation=cv2.INTER_AREA)
    matrices = [confusion_matrix(gt, vote_probs.argmax(axis=0), num_classes)]
    for setting in settings:
        crf = dense_crf(vote_probs, image, return_labels=True, **setting)
        matrices.append(confusion_matrix(gt, crf, num_classes))
        matrices.append(confusion_matrix(gt, consensus_write_back(crf, inputs), num_classes))
    return np.stack(matrices)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    gt_json = Path(args.gt)
    root = Path(args.image_root) if args.image_root else gt_json.parent
    gt_paths, class_names = ground_truth_label_paths(gt_json, root, args.cache_dir)
    names = list(gt_paths)
    for folder in args.inputs:
        missing = [name for name in names if not probability_path(folder, name).is_file()]
        if missing:
            sys.exit(f"tune_crf.py: {folder} has no prediction for {len(missing)} image(s), e.g. {missing[0]!r}")
    weights = tuple(float(w) for w in normalize_weights(args.weights, len(args.inputs)))
    job = EnsembleJob("probs", tuple(args.inputs), weights, tuple(class_names), out="", image_root=str(root))
    settings = settings_grid(args)
    tasks = [(job, name, gt_paths[name], settings) for name in names]
    total = None
    with tqdm(total=len(tasks), desc=f"{len(settings)} CRF settings", unit="img") as bar:
        pool = mp.get_context("spawn").Pool(args.workers) if args.workers > 1 else None
        results = pool.imap_unordered(score_image, tasks) if pool else map(score_image, tasks)
        for matrices in results:
            total = matrices if total is None else total + matrices
            bar.update(1)
        if pool:
            pool.close()
            pool.join()
    assert total is not None
    vote = metrics_from_confusion(total[0])["mIoU"]
    rows = []
    for index, setting in enumerate(settings):
        crf = metrics_from_confusion(total[1 + 2 * index])["mIoU"]
        final = metrics_from_confusion(total[2 + 2 * index])["mIoU"]
        rows.append({**setting, "crf": crf, "final": final})
    rows.sort(key=lambda row: -row["final"])
    lines = [f"{len(names)} images of {gt_json}; soft vote of {len(args.inputs)} inputs: mIoU {vote:.4f}", ""]
    lines.append("| " + " | ".join(GRID_KEYS) + " | CRF mIoU | final (consensus) mIoU |")
    lines.append("|" + " --- |" * (len(GRID_KEYS) + 2))
    for row in rows:
        cells = [f"{row[key]:g}" for key in GRID_KEYS] + [f"{row['crf']:.4f}", f"{row['final']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        atomic_write_text(args.out, table + "\n")
    return rows


if __name__ == "__main__":
    main()
