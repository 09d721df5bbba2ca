#!/usr/bin/env python
"""Data and prediction viewer: the dataset, its images, predictions against ground truth, augmentations, a model.

    python tools/viewer.py --data-root DATA [--pred CSV_OR_DIR ...] [--config-file CFG ...] [--model MODEL ...]
                           [--port 8501]

starts `streamlit run tools/viewer.py` bound to 127.0.0.1 (headless); open http://127.0.0.1:8501.
`streamlit run tools/viewer.py -- --data-root DATA ...` from the repository root binds 127.0.0.1 as well
(.streamlit/config.toml); started with any non-loopback --server.address, the app refuses to show anything.

Pages: Dataset (per-class counts, objects per image, object sizes, pixel share and mean colour),
Browse (image grid with the ground-truth overlay, filters, one image large), Predictions (one or
two prediction sets against ground truth, or against each other for test images), Augmentations
(draws of the training mapper of a config) and Model (a --model predicts an image of a json, an
image under the data root or an uploaded photo, with or without TTA).

The viewer reads only under --data-root and the --pred / --config-file / --model paths: files are picked
from lists, and a path that resolves outside them (a json's "../" file_name, a symlink) is refused. It
writes only into its own temporary folder, removed when it stops; an uploaded photo stays in memory. The
page: mask2former/viewer/app.py.
"""

from __future__ import annotations

import argparse

import semask  # noqa: F401  (the SeMask plug-in: its config keys, backbone and meta architecture)
from mask2former.viewer.launch import DEFAULT_PORT, start


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/viewer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True, help="folder with the COCO jsons; file_name is relative to it")
    parser.add_argument(
        "--pred",
        nargs="+",
        action="extend",
        default=[],
        metavar="CSV_OR_DIR",
        help="submission CSVs and/or folders holding prediction folders (probs/) or CSVs",
    )
    parser.add_argument(
        "--config-file",
        nargs="+",
        action="extend",
        default=[],
        metavar="CFG",
        help="configs whose training mapper the Augmentations page may use (besides the defaults)",
    )
    parser.add_argument(
        "--model",
        nargs="+",
        action="extend",
        default=[],
        metavar="MODEL",
        help="models for the Model page: run folders, exported .onnx files, model packages, or checkpoints (each "
        "with every --config-file)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1 (launcher only)")
    return parser


if __name__ == "__main__":  # `python tools/viewer.py ...`, and every run of the page under `streamlit run`
    start(build_parser(), __file__)
