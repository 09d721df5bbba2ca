"""Values that cannot work (VALUE_RULES). `load_config` applies them, so every tool refuses them in one line."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fvcore.common.config import CfgNode as _FvCfgNode

from .compatibility import check_compatibility_keys
from .node import _lookup
from .yaml_file import ConfigError


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
    """ConfigError for a key kept for official files (compatibility.ONLY_DEFAULT) set to another value, or a key of
    VALUE_RULES set to a value that cannot work (the message names the key, its value and what to give)."""
    check_compatibility_keys(cfg)
    for key, test, wanted in VALUE_RULES:
        value = _lookup(cfg, key)
        if not test(value, cfg):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"{key} is {shown!r}, which cannot work: give {wanted}")
