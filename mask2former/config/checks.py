"""Values a config may not hold: keys kept only so official files load (one possible value), and values that
cannot work (VALUE_RULES). `load_config` applies them, so every tool refuses them in one line."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fvcore.common.config import CfgNode as _FvCfgNode

from .node import _lookup
from .yaml_file import ConfigError

# Keys with one possible value in this project (read by nothing else): load_config refuses any other value.
ONLY_DEFAULT: dict[str, tuple[object, str]] = {
    "VERSION": (2, "detectron2's version-1 configs, with older key names, are not supported"),
    "MODEL.MASK_FORMER.TEST.SEMANTIC_ON": (True, "semantic inference is the only inference this project has"),
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON": (False, "this project has no instance inference"),
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": (False, "this project has no panoptic inference"),
    # Read by nothing in Mask2Former's semantic segmentation either: another value would change nothing.
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": (1.0, "Mask2Former's MaskFormerHead stores it and never uses it"),
    "MODEL.MASK_FORMER.ENC_LAYERS": (0, "only MaskFormer v1's decoder reads it, not Mask2Former's"),
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": (0.8, "only instance and panoptic inference read it"),
    "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": (0.8, "only panoptic inference reads it"),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sizes(value: Any, least: int) -> bool:
    """A non-empty list of whole numbers >= `least`."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    return bool(items) and all(isinstance(v, int) and not isinstance(v, bool) and v >= least for v in items)


# Keys whose values cannot work outside a range: (key, test, what to give). Read by load_config, so every tool
# (train_net, predict, evaluate, ...) refuses them in one line before anything is built.
VALUE_RULES: tuple[tuple[str, Callable[[Any, _FvCfgNode], bool], str], ...] = (
    ("SOLVER.IMS_PER_BATCH", lambda v, c: isinstance(v, int) and v >= 1, "the images per iteration (>= 1)"),
    ("SOLVER.BASE_LR", lambda v, c: _is_number(v) and v >= 0, "a learning rate >= 0 (Mask2Former: 0.0001)"),
    ("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", lambda v, c: isinstance(v, int) and v >= 1, "the queries (>= 1; 100)"),
    ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", lambda v, c: isinstance(v, int) and v >= 1, "the classes with background"),
    ("DATALOADER.NUM_WORKERS", lambda v, c: isinstance(v, int) and v >= 0, "data-loading processes (>= 0)"),
    ("INPUT.MIN_SIZE_TRAIN", lambda v, c: _sizes(v, 1), "one or more short sides in pixels, e.g. (512,)"),
    (
        "INPUT.MIN_SIZE_TRAIN",
        lambda v, c: c.INPUT.MIN_SIZE_TRAIN_SAMPLING != "range" or (isinstance(v, (list, tuple)) and len(v) == 2),
        "two sizes [min, max] with INPUT.MIN_SIZE_TRAIN_SAMPLING range",
    ),
    (
        "TEST.AUG.MIN_SIZES",
        lambda v, c: not c.TEST.AUG.ENABLED or _sizes(v, 0),
        "one or more short sides in pixels for test-time augmentation (TEST.AUG.ENABLED, predict.py --tta)",
    ),
)


def check_config_values(cfg: _FvCfgNode) -> None:
    """ConfigError for a key of ONLY_DEFAULT set to another value, or a key of VALUE_RULES set to a value that
    cannot work (the message names the key, its value and what to give)."""
    for key, (allowed, reason) in ONLY_DEFAULT.items():
        value = _lookup(cfg, key)
        if value != allowed or type(value) is not type(allowed):
            raise ConfigError(f"{key} is {value!r}: only {allowed!r} is supported ({reason})")
    for key, test, wanted in VALUE_RULES:
        value = _lookup(cfg, key)
        if not test(value, cfg):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"{key} is {shown!r}, which cannot work: give {wanted}")
