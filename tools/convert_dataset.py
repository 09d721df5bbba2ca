#!/usr/bin/env python
"""Convert a dataset in another format into the competition layout (images + a COCO json per split).

    python tools/convert_dataset.py --from yolo-seg SRC --out DST

Formats (--from): yolo-seg, png-masks, cityscapes, ade20k, label-studio, cvat-xml (docs/formats/README.md).
Images are hard-linked (--copy: copied), never moved; DST gets train.json, val.json, test.json (train_all.json
when train and val both exist), report.json and report.txt (counts per split and class, the conventions applied,
the problems found).
Each problem is one line naming the file and the item; errors stop it before anything is written, --strict makes
warnings errors. Bad input: one line, exit status 2 (--debug for the traceback).
"""

from __future__ import annotations

import argparse

from mask2former.data.formats import DATASET_FORMATS
from mask2former.pipeline.convert_dataset import ConvertOptions, run
from mask2former.utils.cli import run_tool, strip_debug
from mask2former.utils.logger import setup_logging


def main(argv: list[str] | None = None) -> dict:
    formats = ", ".join(sorted(name for name, _ in DATASET_FORMATS))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="format", required=True, help=f"the dataset's format: {formats}")
    parser.add_argument("source", help="the dataset's folder (or its data.yaml, its export file)")
    parser.add_argument("--out", required=True, help="the output folder (new, empty, or made by this tool)")
    parser.add_argument("--classes", nargs="+", default=[], help="class names, background first (mask formats)")
    parser.add_argument(
        "--classes-file", help="the class names of a labelmap.txt or classes.txt (one name a line), background first"
    )
    parser.add_argument("--ignore", type=int, nargs="+", help="mask values meaning 'not labelled' (default: 255)")
    parser.add_argument("--background", type=int, help="the mask value meaning background (default: 0)")
    parser.add_argument(
        "--reduce-zero-label",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mask value 0 is ignore and v >= 1 is label v - 1 (default: the format's; ADE20K: on)",
    )
    parser.add_argument("--images", help="the image folder, for exports without their images (label-studio, cvat-xml)")
    parser.add_argument("--copy", action="store_true", help="copy the images (default: hard links)")
    parser.add_argument("--strict", action="store_true", help="warnings are errors (exit status 2)")
    parser.add_argument("--overwrite", action="store_true", help="redo a folder this tool made with other settings")
    parser.add_argument(
        "--no-duplicates", dest="duplicates", action="store_false", help="skip the duplicate-image checks"
    )
    options = ConvertOptions(**vars(parser.parse_args(strip_debug(argv))))
    setup_logging()
    return run_tool("convert_dataset.py", lambda: run(options), argv)


if __name__ == "__main__":
    main()
