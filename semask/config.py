"""SeMask's config keys: the official ones under their official names (SeMask-Mask2Former/mask2former/config.py),
the project's options under MODEL.SEMASK.* (defaults: the official behaviour)."""

from __future__ import annotations

from fvcore.common.config import CfgNode

from mask2former.config import PLUGIN_CONFIG_ADDERS
from mask2former.config import CfgNode as ConfigNode
from mask2former.modeling.backbone.base import BACKBONE_REGISTRY
from mask2former.modeling.tiny import register_tiny_sizes


@PLUGIN_CONFIG_ADDERS.register()  # applied after the families' adders: MODEL.SWIN exists then
def add_semask_config(cfg: CfgNode) -> None:
    """MODEL.SWIN.SEM_WINDOW_SIZE / NUM_SEM_BLOCKS, MODEL.MASK_FORMER.CATE_WEIGHT (official), MODEL.SEMASK.*."""
    cfg.MODEL.SWIN.SEM_WINDOW_SIZE = 7  # window of the semantic attention (official Swin-L configs: 12)
    cfg.MODEL.SWIN.NUM_SEM_BLOCKS = 1  # semantic-attention blocks in each stage's semantic layer
    cfg.MODEL.MASK_FORMER.CATE_WEIGHT = 0.4  # weight of the semantic prior's cross-entropy (loss_cate)
    cfg.MODEL.SEMASK = ConfigNode()
    # Stages (0..3) whose semantic layer attends over the whole map instead of windows. null: the official rule,
    # [3] with 150 classes, else [] (SeMask-Mask2Former); [2, 3] with a FaPN pixel decoder (SeMask-FAPN)
    cfg.MODEL.SEMASK.GLOBAL_STAGES = None
    cfg.MODEL.SEMASK.MASK_PADDING = False  # True: windows' zero padding left out of the softmax (official: in it)
    cfg.MODEL.SEMASK.RES_PROJ_INIT = "zeros"  # mlp_res init: "zeros" (official) or "kaiming" (the branch can learn)


# at the Swin family's tiny sizes (mask2former/modeling/backbone/swin.py), with a window that fits their maps
register_tiny_sizes("semask", ["MODEL.SWIN.SEM_WINDOW_SIZE", "4"], [(BACKBONE_REGISTRY, "D2SeMaskSwinTransformer")])
