#!/usr/bin/env python
"""Register a COCO json, render its label maps, and show what the model will see.

    python tools/inspect_dataset.py --json DATA/train.json --out output/inspect [--config-file CFG]

Prints per-class objects, images and pixel share; writes stats.json, ground_truth.png (images with
their label overlay and a legend) and augmented.png (training-mapper draws: jitter, crop, flip,
colour, as configured by --config-file or the defaults). Bad input: one line naming the file, exit status 2
(--debug for the traceback).
"""

from __future__ import annotations

import argparse

import semask  # noqa: F401  (the SeMask plug-in: its config keys, backbone and meta architecture)
from mask2former.pipeline.inspect_dataset import InspectOptions, run
from mask2former.utils.cli import run_tool, strip_debug
from mask2former.utils.logger import setup_logging


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
    options = InspectOptions(**vars(parser.parse_args(strip_debug(argv))))
    setup_logging()
    return run_tool("inspect_dataset.py", lambda: run(options), argv)


if __name__ == "__main__":
    main()
