#!/usr/bin/env python
"""Generate the procedural sample dataset in the competition's layout.

    python tools/make_sample_dataset.py --out datasets/sample [--num-train 240 --num-test 60 --seed 0] [--overwrite]

Writes train_all.json, train.json, val.json (80/20 by image), test.json (no annotations) and
512x512 JPEGs under batch_01_vt/, batch_02_vt/, batch_03/. Same seed, same bytes. --out must be a new or
empty folder, or one this tool made with the same arguments (written again); --overwrite starts over in one it
made with other arguments. A folder of anyone else's is never written (docs/output_folders.md).
"""

from __future__ import annotations

import argparse
import time

from mask2former.data.sample_dataset import make_sample_dataset
from mask2former.utils.cli import run_tool, strip_debug
from mask2former.utils.logger import setup_logging


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output data root (new, empty, or made by this tool)")
    parser.add_argument("--num-train", type=int, default=240, help="labelled images (split into train/val)")
    parser.add_argument("--num-test", type=int, default=60, help="unlabelled test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite", action="store_true", help="start over in a folder this tool made with other arguments"
    )
    args = parser.parse_args(strip_debug(argv))
    setup_logging()

    def make() -> dict:
        start = time.perf_counter()
        summary = make_sample_dataset(
            args.out, args.num_train, args.num_test, args.seed, progress=True, overwrite=args.overwrite
        )
        print(
            f"wrote {args.out}: {summary['num_train']} train, {summary['num_val']} val, {summary['num_test']} test "
            f"images in {time.perf_counter() - start:.1f} s"
        )
        for name, count in summary["annotations_per_class"].items():
            print(f"  {name:<14}{count:>6} objects")
        return summary

    return run_tool("make_sample_dataset.py", make, argv)


if __name__ == "__main__":
    main()
