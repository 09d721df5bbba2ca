"""Configuration: fvcore/yacs CfgNode with Mask2Former's key names and `_BASE_` inheritance.

`get_cfg()` returns the defaults every part of the project reads. Each package adds its own keys
through one `add_<feature>_config(cfg)` function; this module holds the keys shared by all
(INPUT, DATASETS, DATALOADER, SEED, OUTPUT_DIR).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator

from fvcore.common.config import CfgNode as _FvCfgNode


class CfgNode(_FvCfgNode):
    """fvcore's CfgNode whose unknown-key errors name the closest existing keys."""

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        try:
            super().merge_from_file(cfg_filename, allow_unsafe=allow_unsafe)
        except KeyError as error:
            raise _unknown_key_error(self, error, source=cfg_filename) from None

    def merge_from_list(self, cfg_list: list) -> None:
        if len(cfg_list) % 2 != 0:
            raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd number: {cfg_list}")
        known = set(flatten_keys(self))
        for key in cfg_list[0::2]:
            if key not in known:
                raise KeyError(_unknown_key_message(key, known, source="command line"))
        super().merge_from_list(cfg_list)


def flatten_keys(cfg: _FvCfgNode, prefix: str = "") -> Iterator[str]:
    """Every leaf key of `cfg` in dotted form (`INPUT.CROP.SIZE`)."""
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        if isinstance(value, _FvCfgNode):
            yield from flatten_keys(value, prefix=f"{full}.")
        else:
            yield full


def _unknown_key_message(key: str, known: set[str], source: str) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown config key '{key}' (from {source}).{hint}"


def _unknown_key_error(cfg: CfgNode, error: KeyError, source: str) -> KeyError:
    text = str(error.args[0]) if error.args else ""
    prefix = "Non-existent config key: "
    if not text.startswith(prefix):
        return error
    key = text[len(prefix):]
    return KeyError(_unknown_key_message(key, set(flatten_keys(cfg)), source))


def _default_train_sizes(crop: int) -> tuple[int, ...]:
    # Mask2Former's semantic recipe: short side jittered over 0.5x..2.0x of the crop in steps of 0.1x.
    return tuple(int(x * 0.1 * crop) for x in range(5, 21))


def get_cfg() -> CfgNode:
    """A fresh copy of the project's defaults (every package's keys included)."""
    _C = CfgNode()
    _C.VERSION = 2
    _C.SEED = 42  # global seed for sampling, augmentation and initialisation; < 0 draws one and logs it
    _C.OUTPUT_DIR = "./output"  # run folder: merged config, logs, metrics, checkpoints

    _C.INPUT = CfgNode()
    _C.INPUT.FORMAT = "RGB"  # channel order handed to the model: RGB or BGR
    _C.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"  # the only mapper this project has
    _C.INPUT.MIN_SIZE_TRAIN = _default_train_sizes(512)  # candidate short-side lengths (px) for jitter
    _C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"  # "choice": pick one of the list; "range": uniform in [min, max]
    _C.INPUT.MAX_SIZE_TRAIN = 4096  # cap on the long side after the short-side resize (px)
    _C.INPUT.MIN_SIZE_TEST = 512  # short side at test time (px); 0 keeps the image size
    _C.INPUT.MAX_SIZE_TEST = 2048  # cap on the long side at test time (px)
    _C.INPUT.SIZE_DIVISIBILITY = -1  # pad batches to a multiple of this (px); -1 = no padding
    _C.INPUT.RANDOM_FLIP = "horizontal"  # "horizontal" or "none"
    _C.INPUT.PAD_VALUE = 128  # image fill where a crop runs past the resized image (grey, 0..255)
    _C.INPUT.CROP = CfgNode()
    _C.INPUT.CROP.ENABLED = True  # random crop after the resize
    _C.INPUT.CROP.TYPE = "absolute"  # only absolute crops (CROP.SIZE in px) are supported
    _C.INPUT.CROP.SIZE = (512, 512)  # crop height, width (px)
    _C.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0  # retry crops where one class covers more than this share
    _C.INPUT.CROP.MAX_TRIES = 10  # crop retries before the last draw is kept
    _C.INPUT.COLOR_AUG_SSD = True  # photometric jitter (brightness, contrast, saturation, hue)
    _C.INPUT.COLOR_AUG = CfgNode()
    _C.INPUT.COLOR_AUG.PROB = 0.5  # probability that each of the four jitters is applied
    _C.INPUT.COLOR_AUG.BRIGHTNESS_DELTA = 32.0  # added intensity, uniform in [-d, d] (0..255 scale)
    _C.INPUT.COLOR_AUG.CONTRAST_RANGE = (0.5, 1.5)  # contrast factor around mid-grey
    _C.INPUT.COLOR_AUG.SATURATION_RANGE = (0.5, 1.5)  # saturation factor (blend with luminance)
    _C.INPUT.COLOR_AUG.HUE_DELTA = 18.0  # hue shift in OpenCV units (180 = full turn), uniform in [-d, d]

    _C.DATASETS = CfgNode()
    _C.DATASETS.ROOT = ""  # competition data root; empty = $TRASH_DATA
    _C.DATASETS.TRAIN = ("trash_train",)  # registered dataset names used for training
    _C.DATASETS.TEST = ("trash_val",)  # registered dataset names used for evaluation
    _C.DATASETS.REGISTER = []  # extra datasets: a list of [name, json_file, image_root] triples
    _C.DATASETS.LABEL_CACHE_DIR = ""  # rendered label maps; empty = $TRASH_CACHE or ~/.cache/trashseg
    _C.DATASETS.SKIP_BAD_ANNOTATIONS = False  # skip bad annotations/images (with a summary) instead of failing
    _C.DATASETS.CROWD_AS_IGNORE = False  # paint iscrowd=1 annotations with the ignore value

    _C.DATALOADER = CfgNode()
    _C.DATALOADER.NUM_WORKERS = 4  # data-loading processes per GPU
    return _C
