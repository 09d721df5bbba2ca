#!/usr/bin/env python
"""Export model output for labelling tools: correct it in CVAT or Label Studio, then train again.

    python tools/export_labels.py output/predict --out output/to_label [--threshold 0.7] [--image-url PREFIX]
    python tools/export_labels.py output/pseudo/round_1/pseudo.json --out output/to_label_pseudo

SRC: a prediction folder (tools/predict.py, tools/ensemble_crf.py) or a label-map json (a pseudo-label round's
pseudo.json). OUT gets CVAT's "Segmentation mask 1.1" layout (labelmap.txt, ImageSets/Segmentation/default.txt,
SegmentationClass/*.png indexed with the class palette), coco.json (one RLE annotation per class per image),
label_studio.json (brush pre-annotations) with label_studio_config.xml, meta.json and log.txt. The logic and the
conventions: mask2former/pipeline/export_labels.py, docs/formats/export.md. Bad input: one line, exit status 2
(--debug for the traceback).
"""

from __future__ import annotations

import argparse

from mask2former.pipeline.export_labels import ExportOptions, run
from mask2former.utils.cli import run_tool, strip_debug
from mask2former.utils.logger import setup_logging


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a prediction folder, or a label-map json such as a round's pseudo.json")
    parser.add_argument("--out", required=True, help="the output folder (new, empty, or made by this tool)")
    parser.add_argument(
        "--threshold", type=float, default=0.0, help="leave pixels whose top probability is under this unlabelled"
    )
    parser.add_argument(
        "--image-url",
        default="/data/local-files/?d=",
        help="what Label Studio tasks put before an image's file_name in data.image (default: local storage)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a folder this tool made for another job")
    options = ExportOptions(**vars(parser.parse_args(strip_debug(argv))))
    setup_logging()
    return run_tool("export_labels.py", lambda: run(options), argv)


if __name__ == "__main__":
    main()
