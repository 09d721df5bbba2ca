"""SeMask's config keys, under their official names (SeMask-Mask2Former/mask2former/config.py)."""

from __future__ import annotations

from fvcore.common.config import CfgNode

from mask2former.config import CONFIG_ADDERS
from mask2former.modeling.backbone import swin  # noqa: F401  (registers MODEL.SWIN first: these keys extend it)


@CONFIG_ADDERS.register()
def add_semask_config(cfg: CfgNode) -> None:
    """MODEL.SWIN.SEM_WINDOW_SIZE / NUM_SEM_BLOCKS and MODEL.MASK_FORMER.CATE_WEIGHT (official names and defaults)."""
    cfg.MODEL.SWIN.SEM_WINDOW_SIZE = 7  # window of the semantic attention (official Swin-L configs: 12)
    cfg.MODEL.SWIN.NUM_SEM_BLOCKS = 1  # semantic-attention blocks in each stage's semantic layer
    cfg.MODEL.MASK_FORMER.CATE_WEIGHT = 0.4  # weight of the semantic prior's cross-entropy (loss_cate)
