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

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone.base import ShapeSpec
from ..layers import Conv2d, c2_xavier_fill
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

    def __init__(
        self,
        *,
        input_shape: dict[str, ShapeSpec],
        transformer_dropout: float = 0.0,
        transformer_nheads: int = 8,
        transformer_dim_feedforward: int = 1024,
        transformer_enc_layers: int = 6,
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str = "GN",
        transformer_in_features: tuple[str, ...] | list[str] = ("res3", "res4", "res5"),
        common_stride: int = 4,
        n_points: int = 4,
        deformable_groups: int = 8,
    ) -> None:
        if conv_dim % deformable_groups:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.CONVS_DIM {conv_dim} must be divisible by the {deformable_groups} deformable "
                "groups of MSDeformAttnPixelFANDecoder's alignment convs"
            )
        super().__init__(
            input_shape=input_shape,
            transformer_dropout=transformer_dropout,
            transformer_nheads=transformer_nheads,
            transformer_dim_feedforward=transformer_dim_feedforward,
            transformer_enc_layers=transformer_enc_layers,
            conv_dim=conv_dim,
            mask_dim=mask_dim,
            norm=norm,
            transformer_in_features=transformer_in_features,
            common_stride=common_stride,
            n_points=n_points,
        )
        for index in range(1, len(self.fpn_features) + 1):
            # [SeMask] FeatureAlign(conv_dim, conv_dim, norm=output_norm): the output conv's own norm module
            shared_norm = getattr(self, f"layer_{index}").norm
            self.add_module(f"align_{index}", FeatureAlignWithoutSelection(conv_dim, shared_norm, deformable_groups))

    def forward_features(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Backbone maps -> (mask_features N x mask_dim x H/4 x W/4, [stride 32, 16, 8 maps of conv_dim]), float32."""
        device_type = features[self.transformer_in_features[0]].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            sources = [
                proj(features[name].float())
                for proj, name in zip(self.input_proj, self.transformer_in_features, strict=True)
            ]
            positions = [self.pe_layer(source) for source in sources]
            maps = self.transformer(sources, positions)
            for index in range(len(self.fpn_features), 0, -1):
                lateral = getattr(self, f"adapter_{index}")(features[self.fpn_features[index - 1]].float())
                summed = lateral + F.interpolate(
                    maps[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
                )
                aligned = getattr(self, f"align_{index}")(lateral, summed)
                maps.append(getattr(self, f"layer_{index}")(aligned))
            return self.mask_features(maps[-1]), maps[: self.maskformer_num_feature_levels]
