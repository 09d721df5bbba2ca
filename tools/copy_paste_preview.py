#!/usr/bin/env python
"""Write training-mapper draws with copy-paste (INPUT.COPY_PASTE) as pictures, to check it by eye.

    python tools/copy_paste_preview.py --config-file configs/quickstart.yaml --out output/copy_paste \\
        --num 16 [--seed 0] [KEY VALUE ...]

Each PNG shows the augmented crop and its label overlay side by side, with a legend; pasted objects
are outlined in yellow on the overlay and their classes are named in the caption. Copy-paste is
switched on even where the config has it off; PROB and the other keys are the config's. The pasted
pixels are found by drawing the same sample again without copy-paste (the mapper draws the paste
last, so the crop is the same). Bad input: one line naming the file or key, exit status 2 (--debug for the
traceback).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import semask  # noqa: F401  (the SeMask plug-in: its config keys, backbone and meta architecture)
from mask2former.pipeline.copy_paste_preview import PreviewOptions, run
from mask2former.utils.cli import run_tool, strip_debug
from mask2former.utils.logger import setup_logging


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="training config (INPUT.*, DATASETS.*)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs")
    parser.add_argument("--num", type=int, default=16, help="number of pictures")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image choice and the augmentation")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs that override the config")
    args = parser.parse_args(strip_debug(argv))
    options = PreviewOptions(args.config_file, args.out, args.num, args.seed, list(args.opts or []))
    setup_logging()
    return run_tool("copy_paste_preview.py", lambda: run(options), argv)


if __name__ == "__main__":
    main()
