"""The keys kept only so official Mask2Former and detectron2 config files load, in one table.

Each has one value that works in this project (ONLY_DEFAULT: what it does elsewhere is named), or does nothing
whatever its value (NO_EFFECT). `load_config` accepts them as official files set them and refuses any other value
of an ONLY_DEFAULT key in one line; a run's config.yaml (`config_yaml`) leaves them out unless a value other than
the default was set, so the file shows the settings that matter.
"""

from __future__ import annotations

import yaml
from fvcore.common.config import CfgNode as _FvCfgNode

from .node import _lookup
from .yaml_file import ConfigError

# Keys with one possible value in this project: load_config refuses any other value, naming why.
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
    # Mask2Former's choices that exist here in one form only
    "INPUT.DATASET_MAPPER_NAME": ("mask_former_semantic", "this project has only Mask2Former's semantic mapper"),
    "INPUT.CROP.TYPE": ("absolute", "crops are CROP.SIZE pixels; detectron2's relative crop types are not built"),
    "SOLVER.LR_SCHEDULER_NAME": ("WarmupPolyLR", "Mask2Former's poly schedule is the only one here"),
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": (
        "multi_scale_pixel_decoder",
        "Mask2Former's decoder reads the pixel decoder's multi-scale features; MaskFormer v1's inputs are not built",
    ),
}
# Keys read by nothing, at any value: detectron2 drops training images without (non-crowd) instance annotations
# only from datasets whose dicts hold "annotations", never from semantic ones, so it changes nothing there or here.
NO_EFFECT: dict[str, object] = {"DATALOADER.FILTER_EMPTY_ANNOTATIONS": True}


def check_compatibility_keys(cfg: _FvCfgNode) -> None:
    """ConfigError naming the key when an ONLY_DEFAULT key holds another value than its one."""
    for key, (allowed, reason) in ONLY_DEFAULT.items():
        value = _lookup(cfg, key)
        if value != allowed or type(value) is not type(allowed):
            raise ConfigError(f"{key} is {value!r}: only {allowed!r} is supported ({reason})")


def config_yaml(cfg: _FvCfgNode) -> str:
    """The config as a run writes it (OUTPUT_DIR/config.yaml, the checkpoint's copy): every key, less the
    compatibility keys that hold their default."""
    data = yaml.safe_load(cfg.dump())
    defaults = {**{key: allowed for key, (allowed, _) in ONLY_DEFAULT.items()}, **NO_EFFECT}
    for key, default in defaults.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        if node[leaf] == default:
            del node[leaf]
    return yaml.safe_dump(data)
