#!/usr/bin/env python
"""Grid search of tools/ensemble_crf.py's DenseCRF settings on images with ground truth.

    python tools/tune_crf.py output/pred_val/a output/pred_val/b output/pred_val/c --gt DATA/val.json \\
        --sxy 5 10 20 40 --srgb 3 5 13 --compat 4 10 --iters 5 --workers 2

The inputs are prediction folders of the --gt images (tools/predict.py outputs). Each image's soft vote
(--weights) is made once; then every combination of the listed values runs the CRF and the consensus write-back
exactly as ensemble_crf.py does (mask2former/pipeline/ensemble_images.py), and is scored against the ground truth at
the maps'
size. Prints one row per setting, best CRF mIoU first (ensemble_crf.py's default final output; the mIoU with
--consensus beside it), with the vote's mIoU above, and writes the table to
--out (default: nothing written; never the --gt json nor a file inside an input folder). Settings not listed
keep ensemble_crf.py's defaults. A bad input (a missing prediction, a probability file with NaN, another class
list) stops the run with one line naming the file (exit status 2; --debug shows the traceback).
"""

from __future__ import annotations

import argparse

from mask2former.pipeline.crf import CRF_DEFAULTS
from mask2former.pipeline.tune_crf import GRID_KEYS, TuneOptions, run
from mask2former.utils.cli import run_tool, strip_debug


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
    return parser.parse_args(strip_debug(argv))


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    return run_tool("tune_crf.py", lambda: run(TuneOptions(**vars(args))), argv)


if __name__ == "__main__":
    main()
