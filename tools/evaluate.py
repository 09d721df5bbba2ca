#!/usr/bin/env python
"""Score a submission CSV or a folder of label maps against COCO ground truth.

    python tools/evaluate.py --gt DATA/val.json --pred submission.csv [--image-root DATA] [--out DIR]

A CSV is scored at its 256x256 size against the ground truth reduced the same way (nearest); a folder holds
one PNG label map per image at `<folder>/<file_name with .png>`, at the image's size (another size is an
error naming both). The ground truth json must hold annotations (a test json is refused). Prints the
per-class table and ends with `mIoU: 0.xxxx`; --out also writes the metrics, the confusion matrix as JSON and
as a PNG. Bad input: one line naming the file, exit status 2 (--debug for the traceback).
"""

from __future__ import annotations

import argparse

from mask2former.pipeline.evaluate import EvaluateOptions, run
from mask2former.utils.cli import run_tool, strip_debug
from mask2former.utils.logger import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", required=True, help="COCO json with the ground truth (e.g. val.json)")
    parser.add_argument("--image-root", help="folder that file_name is relative to (default: the json's folder)")
    parser.add_argument("--pred", required=True, help="submission CSV, or a folder of PNG label maps")
    parser.add_argument("--out", help="write sem_seg_metrics.json, confusion_matrix.json/.png here")
    parser.add_argument("--cache-dir", help="where rendered ground-truth label maps are cached")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad annotations/images (with a summary)")
    return parser.parse_args(strip_debug(argv))


def main(argv: list[str] | None = None) -> float:
    options = EvaluateOptions(**vars(parse_args(argv)))
    setup_logging()
    return run_tool("evaluate.py", lambda: run(options)["mIoU"], argv)


if __name__ == "__main__":
    main()
