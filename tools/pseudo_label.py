#!/usr/bin/env python
"""The pseudo-label loop: label the unlabelled images, retrain on train + pseudo-labels, keep what helps, repeat.

    python tools/pseudo_label.py --config-file configs/m2f_swin_l.yaml --weights output/m2f_swin_l/model_final.pth \\
        --unlabeled DATA/test.json --out output/pseudo --rounds 3 --threshold 0.9 --tta [KEY VALUE ...]
    # round 1 from the CRF ensemble's probabilities (tools/ensemble_crf.py OUT, folder inputs) instead of the model:
    python tools/pseudo_label.py ... --init-probs output/ens_test

Round r (1..--rounds), starting from the best model so far (round 0: --weights, scored on val first):
  1. predict: tools/predict.py with that model on the unlabelled images (a COCO json such as test.json, or a
     folder of images) -> OUT/round_r/predict (class probabilities; --tta, --batch-size as in predict.py). Round 1
     takes --init-probs instead when given.
  2. label: per image, the class of highest probability where it reaches --threshold, 255 (ignored) elsewhere,
     at the image's size -> OUT/round_r/labels/<file_name>.png and OUT/round_r/pseudo.json, a dataset
     registered as pseudo_round_r (mask2former/pipeline/pseudo_label_maps.py); a few overlays in OUT/round_r/overlays.
     Probabilities of any stored size (predict.py and ensemble_crf.py store 256x256 by default) are resized
     bilinearly to the image's size and renormalised over the classes, as ensemble_crf.py --size does, before
     thresholding.
  3. train: train_net.py from that model (MODEL.WEIGHTS) on DATASETS.TRAIN + pseudo_round_r for --iters iterations
     (default SOLVER.MAX_ITER) -> OUT/round_r/train, then its final evaluation on DATASETS.TEST[0] (val).
  4. keep the round only if val mIoU rose by more than --min-gain; otherwise the loop stops there (the next round
     would start from the same model and the same labels).
With --control, every round also trains the same iterations from the same model on DATASETS.TRAIN alone
(OUT/round_r/control) and the table shows its val mIoU beside the round's: what the pseudo-labels add beyond the
extra training (a round is still kept by its own mIoU).
Every stage is one of the project's own commands in a child process (their logs under OUT/round_r), so the loop
adds nothing to how models are trained, predicted or scored. --num-gpus N goes to each of them (train_net.py
--eval-only, train_net.py, predict.py): N processes, on N GPUs, or on the CPU of a machine without a GPU (or with
MODEL.DEVICE cpu). KEY VALUE overrides go to predict and training alike.
The logic lives in mask2former/pipeline/pseudo_label.py.

Resuming: OUT/state.json records every finished stage. Rerunning the same command after an interruption, between
or inside a round, goes on from there: prediction skips images already written, labelling skips maps already
written, training resumes from its last checkpoint (train_net.py --resume). A rerun with other settings is refused
unless --overwrite; a second run on an OUT that a live run holds stops at once (OUT/.lock). At the end a table of
the rounds is printed and written to OUT/rounds.md; OUT/state.json names the best weights.

Refused before anything is computed (one line, exit status 2; --debug shows the traceback): a prediction file of
--init-probs that is missing, of other classes, or holds NaN/Inf/negative values (named); an image file_name that
is absolute, climbs out with '..', or would share its label PNG with another image; an OUT that holds files that
are not a pseudo-label run's; --overwrite when it would delete --weights or --init-probs kept in one of OUT's
rounds. Everything is written under OUT.
"""

from __future__ import annotations

import argparse
import re

import semask  # noqa: F401  (the SeMask plug-in: its config keys, backbone and meta architecture)
from mask2former.pipeline.pseudo_label import LoopOptions, run_loop
from mask2former.utils.cli import run_tool, strip_debug

_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the model's config (its DATASETS.TRAIN and TEST)")
    parser.add_argument("--weights", required=True, help="the checkpoint to start from (round 0)")
    parser.add_argument("--unlabeled", required=True, help="COCO json of the unlabelled images, or a folder of images")
    parser.add_argument("--image-root", help="folder that the json's file_name is relative to (default: its folder)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--rounds", type=int, default=3, help="most rounds to run (default %(default)s)")
    parser.add_argument(
        "--threshold", type=float, default=0.9, help="confidence below which a pixel is ignored (default %(default)s)"
    )
    parser.add_argument("--min-gain", type=float, default=0.0, help="val mIoU gain a round needs to be kept")
    parser.add_argument("--iters", type=int, default=0, help="training iterations per round (0: SOLVER.MAX_ITER)")
    parser.add_argument("--tta", action="store_true", help="predict with TEST.AUG (flip and scales)")
    parser.add_argument(
        "--control",
        action="store_true",
        help="each round also trains the same iterations from the same model without pseudo-labels, and shows it",
    )
    parser.add_argument("--init-probs", help="round 1's probabilities: a prediction folder (predict / ensemble_crf)")
    parser.add_argument("--batch-size", type=int, default=1, help="predict.py --batch-size")
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        help="processes for evaluation, training and prediction, passed to train_net.py and predict.py as --num-gpus: "
        "on GPUs when there are, else on the CPU (0: the CPU, one process; default %(default)s)",
    )
    parser.add_argument("--overlays", type=int, default=8, help="pseudo-label overlay PNGs per round (0: none)")
    parser.add_argument("--overwrite", action="store_true", help="start again, discarding OUT's rounds")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (last)")
    args = parser.parse_args(argv)
    args.opts = tuple(args.opts or ())
    if args.opts and not _CONFIG_KEY.match(args.opts[0]):
        parser.error(f"unrecognised argument {args.opts[0]!r} (config overrides are KEY VALUE pairs, last)")
    if len(args.opts) % 2:
        parser.error(f"config overrides come in KEY VALUE pairs, got {list(args.opts)}")
    if args.rounds < 1 or not 0.0 <= args.threshold <= 1.0 or args.iters < 0:
        parser.error("--rounds must be >= 1, --threshold in [0, 1] and --iters >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(strip_debug(argv))
    return run_tool("pseudo_label.py", lambda: run_loop(LoopOptions(**vars(args))), argv)


if __name__ == "__main__":
    main()
