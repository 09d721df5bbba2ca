"""MODEL.EOMT.*: the EoMT meta architecture's keys (encoder, queries, masked-attention annealing).

Names follow the official code (tue-mps/eomt: `num_q` -> NUM_QUERIES, `num_blocks`, `masked_attn_enabled`,
`attn_mask_annealing_enabled`, `poly_power`, the encoder's `backbone_name`, `patch_size`, `img_size`). Classes,
ignore value and input normalisation come from MODEL.SEM_SEG_HEAD.* and MODEL.PIXEL_MEAN / PIXEL_STD; the loss is
MODEL.MASK_FORMER's (weights, points, no-object weight, DEEP_SUPERVISION).
"""

from __future__ import annotations

from fvcore.common.config import CfgNode

from mask2former.config import CONFIG_ADDERS
from mask2former.config import CfgNode as ConfigNode
from mask2former.modeling.tiny import register_tiny_sizes


@CONFIG_ADDERS.register()
def add_eomt_config(cfg: CfgNode) -> None:
    """MODEL.EOMT.*, read by MODEL.META_ARCHITECTURE "EoMT"."""
    cfg.MODEL.EOMT = ConfigNode()
    # the timm ViT (timm.list_models("*dinov2*")), built without weights (MODEL.BACKBONE.WEIGHTS loads them)
    cfg.MODEL.EOMT.ENCODER_NAME = "vit_large_patch14_reg4_dinov2"
    cfg.MODEL.EOMT.PATCH_SIZE = 16  # pixels per patch side (the official models re-sample DINOv2's 14 to 16)
    cfg.MODEL.EOMT.IMG_SIZE = 512  # pixels per side of the position-embedding grid; other sizes interpolate it
    # the encoder's width, depth and heads; 0 keeps ENCODER_NAME's own (smaller values: a narrow test model)
    cfg.MODEL.EOMT.EMBED_DIM = 0
    cfg.MODEL.EOMT.DEPTH = 0
    cfg.MODEL.EOMT.NUM_HEADS = 0
    cfg.MODEL.EOMT.NUM_QUERIES = 100  # learned queries (official `num_q`; ADE20K semantic: 100)
    cfg.MODEL.EOMT.NUM_BLOCKS = 4  # the last blocks that see the queries, each predicting masks
    # training: each of those blocks masks its queries' attention with the previous prediction
    cfg.MODEL.EOMT.MASKED_ATTN_ENABLED = True
    # the probability of keeping a query's mask falls from 1 to 0 per block, block i over iterations
    # [(i + 1) T / (NUM_BLOCKS + 1), (i + 2) T / (NUM_BLOCKS + 1)] of T = SOLVER.MAX_ITER, as (1 - progress)^POLY_POWER
    cfg.MODEL.EOMT.ATTN_MASK_ANNEALING_ENABLED = True
    cfg.MODEL.EOMT.POLY_POWER = 0.9
    # MODEL.WEIGHTS (official or transformers layout) stores the encoder as its difference to MODEL.BACKBONE.WEIGHTS
    # (official `delta_weights`: the official DINOv3 releases); the two are added when it is loaded or converted
    cfg.MODEL.EOMT.DELTA_WEIGHTS = False


register_tiny_sizes(
    "eomt",
    [
        "MODEL.EOMT.EMBED_DIM",
        "32",
        "MODEL.EOMT.DEPTH",
        "3",
        "MODEL.EOMT.NUM_HEADS",
        "2",
        "MODEL.EOMT.IMG_SIZE",
        "64",
        "MODEL.EOMT.NUM_QUERIES",
        "8",
        "MODEL.EOMT.NUM_BLOCKS",
        "2",
    ],
)
