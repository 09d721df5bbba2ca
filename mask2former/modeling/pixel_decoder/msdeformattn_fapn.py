"""MSFaPN pixel decoder: Mask2Former's deformable-attention encoder over res3..res5, then the FPN step to res2
with a feature-alignment module (FaPN's deformable FAM, without its feature selection) before the output conv.

SeMask-FAPN's `MSDeformAttnPixelFANDecoder`. Source read (the structure follows it; the code here is written
from scratch): [SeMask] Picsart-AI-Research/SeMask-Segmentation SeMask-FAPN/SeMask-Mask2Former/mask2former/
modeling/pixel_decoder/msdeformattn_fapn.py. Everything up to the encoder's three maps is `MSDeformAttnPixelDecoder`'s
(same modules, same names); per FPN level j (j = 1 for the finest map), fine to coarse as there:

    lateral = adapter_j(res)                        1x1 conv + norm, as Mask2Former's (no FSM: "Without FSM")
    summed  = lateral + bilinear(previous map to the lateral's size)        as Mask2Former's FPN
    aligned = align_j(lateral, summed):
              offset  = align_j.offset(cat[lateral, 2 * summed])            1x1 conv, no bias, norm, no activation
              return ReLU(DCNv2_3x3(summed; offsets and masks from offset)) + lateral
    map_j   = layer_j(aligned)                      3x3 conv + norm + ReLU, as Mask2Former's

The official code passes the same norm module to layer_j and to align_j.offset, so the two share one GroupNorm
(two state-dict keys, one pair of parameters); that sharing is kept. The whole forward runs in float32 with
autocast off (the official `@autocast(enabled=False)` on forward_features and `.float()` on every input map).

State-dict layout (prefix `sem_seg_head.pixel_decoder.`): MSDeformAttnPixelDecoder's (input_proj.*, transformer.*,
adapter_j.*, layer_j.*, mask_features.*) plus, as [SeMask] names them,
    align_j.offset.weight, align_j.offset.norm.{weight,bias}      (the latter = layer_j.norm.{weight,bias})
    align_j.dcpack_L2.{weight,bias}, align_j.dcpack_L2.conv_offset_mask.{weight,bias}
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Conv2d, c2_xavier_fill
from ..tiny import register_tiny_sizes
from .base import PIXEL_DECODER_REGISTRY
from .fapn import ModulatedDeformConv
from .msdeformattn import MSDeformAttnPixelDecoder


class FeatureAlignWithoutSelection(nn.Module):
    """FaPN's alignment of `coarse` to `lateral` by a modulated deformable conv, plus `lateral` (no FSM)."""

    def __init__(self, conv_dim: int, norm: nn.Module | None, deformable_groups: int = 8) -> None:
        super().__init__()
        self.offset = Conv2d(2 * conv_dim, conv_dim, kernel_size=1, bias=False, norm=norm)
        c2_xavier_fill(self.offset)
        self.dcpack_L2 = ModulatedDeformConv(conv_dim, conv_dim, 3, deformable_groups)

    def forward(self, lateral: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        up = coarse
        if coarse.shape[-2:] != lateral.shape[-2:]:
            up = F.interpolate(coarse, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        # [SeMask] offsets from cat([feat_l, feat_up * 2]); the factor 2 is the official code's
        offset_feature = self.offset(torch.cat([lateral, 2 * up], dim=1))
        return F.relu(self.dcpack_L2(up, offset_feature)) + lateral


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelFANDecoder(MSDeformAttnPixelDecoder):
    """MSDeformAttnPixelDecoder whose FPN levels align the summed map to the lateral one before the output conv.

    Built from the same config keys (`from_config` is MSDeformAttnPixelDecoder's).
    """

    def __init__(self, *, conv_dim: int = 256, deformable_groups: int = 8, **decoder: Any) -> None:
        """`decoder`: MSDeformAttnPixelDecoder's keyword arguments."""
        if conv_dim % deformable_groups:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.CONVS_DIM {conv_dim} must be divisible by the {deformable_groups} deformable "
                "groups of MSDeformAttnPixelFANDecoder's alignment convs"
            )
        super().__init__(conv_dim=conv_dim, **decoder)
        for index in range(1, len(self.fpn_features) + 1):
            # [SeMask] FeatureAlign(conv_dim, conv_dim, norm=output_norm): the output conv's own norm module
            shared_norm = getattr(self, f"layer_{index}").norm
            self.add_module(f"align_{index}", FeatureAlignWithoutSelection(conv_dim, shared_norm, deformable_groups))

    def fpn_level(self, index: int, lateral: torch.Tensor, upsampled: torch.Tensor) -> torch.Tensor:
        """The summed map aligned to the lateral one (FaPN's deformable alignment), then the output conv."""
        aligned = getattr(self, f"align_{index}")(lateral, lateral + upsampled)
        return getattr(self, f"layer_{index}")(aligned)


# the pixel decoders' widths and MSDeformAttnPixelDecoder's encoder sizes
register_tiny_sizes("msdeformattn_fapn", [], [(PIXEL_DECODER_REGISTRY, "MSDeformAttnPixelFANDecoder")])
