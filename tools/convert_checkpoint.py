#!/usr/bin/env python
"""Convert a weights file into a plain safetensors file (no pickle, no code, the project's key layout).

    python tools/convert_checkpoint.py IN OUT.safetensors [--config-file CFG [KEY VALUE ...]] [--overwrite]
        [--allow-pickle]

IN: anything MODEL.WEIGHTS / MODEL.BACKBONE.WEIGHTS read: a detectron2 .pkl (model zoo, ImageNet R-50.pkl,
converted Swin), an official Mask2Former / timm / torchvision .pth, this project's .ckpt / .pth, .safetensors.
A .pkl is read without running code (numpy arrays only); a file that needs a full unpickling (one holding other
objects) is converted only with --allow-pickle, if you trust it: OUT then never needs it again.

Without --config-file the tensors are written as they are (unwrapped from model / state_dict / module.,
numpy -> torch, NaN or Inf refused); detectron2's matching_heuristics flag is kept in OUT's metadata, so
MODEL.WEIGHTS OUT loads exactly as MODEL.WEIGHTS IN.

With --config-file (and KEY VALUE overrides) the file is checked against the model the config builds, with
MODEL.WEIGHTS's rules, and written in that model's key layout:
  - a whole model: every tensor that fits; MODEL.WEIGHTS OUT then loads with nothing missing (a class head for
    another class count is kept, and re-initialised at each load, which says so);
  - a backbone checkpoint (ImageNet Swin in official or timm layout, DiNAT, ...): the backbone's own conversion
    (window / kernel resizing, timm's patch-merging place), written under backbone.; the head's keys are not
    in it (expected: use it as MODEL.BACKBONE.WEIGHTS OUT).
Prints the load report (loaded N tensors, missing, unexpected, re-initialised) and what was written. A file that
does not fit the config's model is refused, as MODEL.WEIGHTS refuses it (MODEL.LOAD_STRICT False: take what
fits). OUT must end with .safetensors, is never IN, and an existing OUT is replaced only with --overwrite; it is
written atomically. Bad input: one line naming the file, exit status 2 (--debug for the traceback).
"""

from __future__ import annotations

import argparse

import semask  # noqa: F401  (the SeMask plug-in: its config keys, backbone and meta architecture)
from mask2former.pipeline.convert_checkpoint import ConvertOptions, ConvertResult, run
from mask2former.utils.cli import run_tool, strip_debug
from mask2former.utils.logger import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="IN", help="weights file to convert (.pkl, .pth, .ckpt, .safetensors)")
    parser.add_argument("output", metavar="OUT", help="safetensors file to write (ends with .safetensors)")
    parser.add_argument("--config-file", help="match IN against this config's model and write its key layout")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--allow-pickle", action="store_true", help="allow a full unpickling of IN (runs code)")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides (with --config-file)")
    return parser.parse_intermixed_args(strip_debug(argv))


def main(argv: list[str] | None = None) -> ConvertResult:
    options = ConvertOptions(**vars(parse_args(argv)))
    setup_logging()
    return run_tool("convert_checkpoint.py", lambda: run(options), argv)


if __name__ == "__main__":
    main()
