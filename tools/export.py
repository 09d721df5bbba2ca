#!/usr/bin/env python
"""Export a trained model to one ONNX file, checked against PyTorch with onnxruntime.

    python tools/export.py --config-file configs/quickstart.yaml --weights output/demo/train/model_final.pth \\
        --out output/export [--size H W | --dynamic-size] [--opset 18] [--images JSON_OR_FOLDER] \\
        [--int8 --calibration JSON_OR_FOLDER] [KEY VALUE ...]

Writes OUT/model.onnx (with --int8 also OUT/model_int8.onnx) and OUT/log.txt, nothing outside OUT. The logic,
and the full description (printed by --help), is in mask2former/pipeline/export.py.
"""

from __future__ import annotations

import semask  # noqa: F401  (the SeMask plug-in: its config keys, backbone and meta architecture)
from mask2former.pipeline.export import export, parse_args
from mask2former.utils.cli import run_tool, strip_debug
from mask2former.utils.logger import setup_logging


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    run_tool("export.py", lambda: export(parse_args(strip_debug(argv))), argv)


if __name__ == "__main__":
    main()
