#!/usr/bin/env python
"""Predict class probabilities and a submission CSV for a set of images.

    python tools/predict.py --config-file configs/m2f_swin_l.yaml --weights output/m2f_swin_l/model_final.pth \\
        --json DATA/test.json --out output/predict [--tta] [--batch-size 8] [--overlays 16] [KEY VALUE ...]
    # 4 processes: on 4 GPUs, or on the CPU of a machine without a GPU (or with --device cpu)
    python tools/predict.py ... --num-gpus 4
    # photos without a json: an image, a folder (recursive), a quoted glob, a .txt list of paths, or a video
    python tools/predict.py --config-file CFG --weights W --input photos/ --out output/photos
    python tools/predict.py --config-file CFG --weights W --input clip.mp4 --every 5 --out output/clip

Writes OUT/probs/*.npz, OUT/meta.json, OUT/submission.csv, OUT/overlays/*.png and OUT/log.txt, nothing outside
OUT; with --input, OUT/labels/*.png (indexed PNGs in the class colours) instead of the CSV, and for a video
OUT/frames/ and OUT/overlay.mp4 (docs/deployment.md). Resumes an interrupted run. The files do not depend on the
number of processes. The logic, and the full description (printed by --help), is in mask2former/pipeline/predict.py.
"""

import semask  # noqa: F401  (the SeMask plug-in: its config keys, backbone and meta architecture)
from mask2former.commands.predict import main

if __name__ == "__main__":
    main()
