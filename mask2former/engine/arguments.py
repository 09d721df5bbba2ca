"""train_net.py's command line: detectron2's arguments, the config overrides last as KEY VALUE pairs."""

from __future__ import annotations

import argparse

from .distributed import DEFAULT_TIMEOUT_S


def default_argument_parser() -> argparse.ArgumentParser:
    """detectron2's train_net arguments."""
    parser = argparse.ArgumentParser(
        description="Train or evaluate Mask2Former on recycling-trash photos.",
        epilog="Example: python train_net.py --config-file configs/quickstart.yaml SOLVER.MAX_ITER 500",
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to the config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR/checkpoints/last.ckpt if it exists (else start anew)",
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS on DATASETS.TEST and exit")
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        help="processes per machine, one per GPU; without GPUs (or MODEL.DEVICE cpu) N CPU processes (0: one)",
    )
    parser.add_argument("--num-machines", type=int, default=1, help="machines taking part")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine (0 .. machines - 1)")
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="tcp://HOST:PORT of machine 0 (the same on every machine) for multi-machine runs; 'auto' on one machine",
    )
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="how long a process waits for the others (start-up, each step) before the run stops (default %(default)s)",
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="KEY VALUE pairs that override the config, e.g. SOLVER.BASE_LR 0.0002",
    )
    return parser
