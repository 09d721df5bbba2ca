"""The pixel-decoder contract and its registry.

PIXEL_DECODER_REGISTRY holds classes with `from_config(cfg, input_shape)`, where input_shape is the
backbone's {name: ShapeSpec}. `forward_features(features)` takes the backbone's dict and returns
(mask_features, multi_scale_features): mask_features is N x MASK_DIM x H/4 x W/4 and
multi_scale_features a list of 3 maps N x CONVS_DIM x h x w, lowest resolution first (strides
32, 16, 8), which the transformer decoder attends to in turn.
"""

from __future__ import annotations

from fvcore.common.config import CfgNode
from fvcore.common.registry import Registry
from torch import nn

from ...utils.registry import lookup
from ..backbone.base import ShapeSpec
from ..tiny import register_tiny_sizes

PIXEL_DECODER_REGISTRY = Registry("PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = __doc__

# the widths every pixel decoder reads; each decoder's module declares its entry (and its own keys)
register_tiny_sizes("pixel_decoder", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32"])


def build_pixel_decoder(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """The pixel decoder named by MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    decoder = lookup(PIXEL_DECODER_REGISTRY, name, "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME").from_config(
        cfg, input_shape
    )
    if not callable(getattr(decoder, "forward_features", None)):
        raise TypeError(f"pixel decoder {name!r} has no forward_features(features) method")
    return decoder
