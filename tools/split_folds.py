#!/usr/bin/env python
"""Split a COCO json into K folds grouped by image, stratified by class.

    python tools/split_folds.py --json DATA/train_all.json --folds 5 --out DATA/folds [--method multilabel]

Writes train_fold{k}.json and val_fold{k}.json (file_name stays relative to the data root, so the
image root is unchanged) and prints, per fold, the validation images and annotations per class.
Register a fold with DATASETS.REGISTER [["fold0_train", ".../train_fold0.json", DATA], ...].
"""

from __future__ import annotations

import argparse

from mask2former.data.coco_semantic import read_coco_json
from mask2former.data.folds import SPLIT_METHODS, fold_assignment, fold_class_counts, write_folds


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
    args = parser.parse_args(argv)

    data = read_coco_json(args.json)
    assignment = fold_assignment(data, args.folds, args.seed, args.method)
    paths = write_folds(data, assignment, args.folds, args.out)
    table = fold_class_counts(data, assignment, args.folds)
    names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    width = max(len(n) for n in names + ["images"]) + 2
    print(f"{'validation':<{width}}" + "".join(f"{f'fold{k}':>8}" for k in range(args.folds)) + f"{'total':>8}")
    for column, name in enumerate(["images"] + names):
        counts = table[:, column]
        print(f"{name:<{width}}" + "".join(f"{c:>8}" for c in counts) + f"{counts.sum():>8}")
    print(f"wrote {len(paths)} files to {args.out}")


if __name__ == "__main__":
    main()
