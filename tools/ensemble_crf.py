#!/usr/bin/env python
"""Pixel-level ensemble of predictions, DenseCRF refinement and consensus write-back.

    # soft vote of prediction folders (tools/predict.py outputs), weighted, with the CRF, scored on val:
    python tools/ensemble_crf.py output/pred_a output/pred_b output/pred_c --weights 2 1 1 --crf \\
        --json DATA/val.json --gt DATA/val.json --out output/ens --workers 2
    # hard vote of submission CSVs (the class list comes from --json):
    python tools/ensemble_crf.py a.csv b.csv c.csv --weights 1 1 1 --json DATA/test.json --out output/ens_csv

Inputs: N prediction folders (probs/<file_name>.npz, see mask2former/io/probabilities.py) are combined by a soft
vote, the weighted mean of their probabilities (--weights, normalised; default equal). N submission CSVs are
combined by a hard vote: per pixel the class with the largest total weight, ties to the first-listed input.
Every input must hold the same classes and the same images: the --json's (else the --gt's) images when given
(predictions of other images are then ignored), otherwise the first input's, which every input must match.
Maps must have one size, unless --size S (folders) resizes all of them to S x S (bilinear, renormalised).

--crf refines the vote with a fully connected CRF (pydensecrf2, mask2former/pipeline/crf.py dense_crf): a Gaussian
kernel (--gauss-sxy, --gauss-compat) and a bilateral kernel on position and colour (--sxy, --srgb, --compat),
--iters mean-field steps. It reads the RGB images under --image-root (default: the --json's or --gt's folder)
and resizes them to the maps' size: --sxy is in pixels of the maps (256x256 by default). For CSVs the unary is
the vote shares mixed with a uniform distribution (confidence 0.8). --consensus (with --crf; off by default)
writes back, after the CRF, the class of every pixel on which all inputs agree, which keeps small objects the CRF
alone may erase. The defaults (equal weights, sxy 20, srgb 5, compat 10, 5 iterations, Gaussian sxy 3 / compat 3,
no consensus) are the best of tools/tune_crf.py's grid (sxy 5/10/20/40 x srgb 3/5/13 x compat 3/5/10), averaged
over two mixed ensembles of a tiny Mask2Former, UPerNet and FPN: on the sample val set (48 images) the best input
0.5812 mIoU, soft vote 0.6009, CRF 0.6392 (0.6309 with --consensus); on 61 real trashbag photos 0.7347, 0.7450,
0.7481 (0.7488). Doubling any model's weight lowered the vote on both (benchmarks/RESULTS.md).

Outputs, written atomically: OUT/labels/<file_name>.png (final label map at the maps' size); for folder inputs
OUT/probs/<file_name>.npz in the same format, so OUT feeds the next tool (the CRF's probabilities, the vote's on
consensus pixels or without --crf); OUT/submission.csv (256x256, nearest; json or first-input order);
OUT/meta.json. Resuming: images whose outputs exist are skipped; a rerun with other settings is refused unless
--overwrite. --gt prints one table (mIoU of each input, the vote, the CRF, the final output, scored at the maps'
size) and writes it to OUT/eval.json. --workers N processes N images at a time in worker processes.

Bad input stops the run before anything is written, with one line naming the file (exit status 2; --debug shows
the traceback): every input file of every image to process is read and checked first, and a probability map with
NaN or Inf, negative values or classes not summing to 1 is refused (predict that folder again). OUT may not be an
input folder, lie inside one, or be the image folder, and no input file may lie where OUT's outputs go.
"""

from __future__ import annotations

import argparse

from mask2former.pipeline.crf import CRF_DEFAULTS
from mask2former.pipeline.ensemble_crf import EnsembleOptions, run
from mask2former.utils.cli import run_tool, strip_debug


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="prediction folders (soft vote) or submission CSVs (hard vote)")
    parser.add_argument("--out", required=True, help="output folder (never one of the input folders)")
    parser.add_argument("--weights", nargs="+", type=float, metavar="W", help="one weight per input (default equal)")
    parser.add_argument("--json", help="COCO json listing the images (their order; its folder holds the images)")
    parser.add_argument("--image-root", help="folder that file_name is relative to (default: the json's folder)")
    parser.add_argument("--gt", help="COCO json with ground truth: print and save the mIoU of every stage")
    parser.add_argument("--cache-dir", help="where rendered ground-truth label maps are cached")
    parser.add_argument("--size", type=int, default=0, help="resize every input's maps to SIZE x SIZE (folders)")
    crf = parser.add_argument_group("DenseCRF")
    crf.add_argument("--crf", action="store_true", help="refine the vote with a DenseCRF")
    crf.add_argument("--sxy", type=float, default=CRF_DEFAULTS["sxy"], help="bilateral kernel: position std, px")
    crf.add_argument("--srgb", type=float, default=CRF_DEFAULTS["srgb"], help="bilateral kernel: colour std")
    crf.add_argument("--compat", type=float, default=CRF_DEFAULTS["compat"], help="bilateral kernel: weight")
    crf.add_argument("--gauss-sxy", type=float, default=CRF_DEFAULTS["gaussian_sxy"], help="Gaussian kernel: std")
    crf.add_argument(
        "--gauss-compat", type=float, default=CRF_DEFAULTS["gaussian_compat"], help="Gaussian kernel: weight"
    )
    crf.add_argument("--iters", type=int, default=CRF_DEFAULTS["iters"], help="mean-field iterations")
    crf.add_argument(
        "--consensus",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="after the CRF, keep the inputs' class where they all agree (default: off, the CRF's labels)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (1: in this process)")
    parser.add_argument("--overwrite", action="store_true", help="process every image again, even with other settings")
    return parser.parse_args(strip_debug(argv))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return run_tool("ensemble_crf.py", lambda: run(EnsembleOptions(**vars(args))), argv)


if __name__ == "__main__":
    main()
