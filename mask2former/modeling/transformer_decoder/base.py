"""The transformer-decoder contract and its registry.

TRANSFORMER_DECODER_REGISTRY holds classes with `from_config(cfg, in_channels)`. Called as
`decoder(multi_scale_features, mask_features)` with the pixel decoder's outputs, it returns
{"pred_logits": N x Q x (K + 1) (the last column is "no object"), "pred_masks": N x Q x H/4 x W/4
logits, "aux_outputs": [{"pred_logits", "pred_masks"} for every earlier prediction]}.
"""

from __future__ import annotations

from fvcore.common.config import CfgNode
from fvcore.common.registry import Registry
from torch import nn

from ...utils.registry import lookup

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_DECODER")
TRANSFORMER_DECODER_REGISTRY.__doc__ = __doc__


def build_transformer_decoder(cfg: CfgNode, in_channels: int) -> nn.Module:
    """The decoder named by MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return lookup(
        TRANSFORMER_DECODER_REGISTRY,
        name,
        "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME",
    ).from_config(cfg, in_channels)
