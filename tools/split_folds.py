#!/usr/bin/env python
"""Split a COCO json into K folds grouped by image, stratified by class.

    python tools/split_folds.py --json DATA/train_all.json --folds 5 --out DATA/folds [--method multilabel]

Writes train_fold{k}.json and val_fold{k}.json (file_name stays relative to the data root, so the
image root is unchanged) and prints, per fold, the validation images and annotations per class.
Register a fold with DATASETS.REGISTER [["fold0_train", ".../train_fold0.json", DATA], ...].
An annotation of an unknown category or image is one line naming it, exit status 2 (--debug for the traceback).
"""

from __future__ import annotations

import argparse

from mask2former.data.folds import SPLIT_METHODS, format_fold_table, split_json
from mask2former.utils.cli import run_tool, strip_debug


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="COCO json to split (e.g. train_all.json)")
    parser.add_argument("--folds", type=int, default=5, help="number of folds")
    parser.add_argument("--out", required=True, help="output folder for the fold jsons")
    parser.add_argument(
        "--method",
        choices=SPLIT_METHODS,
        default="group",
        help="group: StratifiedGroupKFold on annotations; multilabel: on per-image class sets",
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed")
    args = parser.parse_args(strip_debug(argv))

    def split() -> None:
        result = split_json(args.json, args.folds, args.out, args.method, args.seed)
        print(format_fold_table(result))
        print(f"wrote {len(result.paths)} files to {args.out}")

    run_tool("split_folds.py", split, argv)


if __name__ == "__main__":
    main()
