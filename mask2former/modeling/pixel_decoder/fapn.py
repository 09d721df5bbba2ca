"""FaPN pixel decoder: a top-down pyramid whose lateral maps pass a Feature Selection Module (FSM) and whose
upsampled coarse maps are aligned to them by a Feature Alignment Module (FAM) before the sum.

Huang et al. 2021, "FaPN: Feature-aligned Pyramid Network for Dense Image Prediction". Sources read (the
structure follows them; the code here is written from scratch):
[FaPN] EMI-Group/FaPN detectron2/modeling/backbone/fan.py (FeatureSelectionModule, FeatureAlign_V2, FAN),
[DCN] EMI-Group/FaPN DCNv2/dcn_v2.py (DCN with extra_offset_mask=True, the deformable conv FaPN uses),
[SeMask] Picsart-AI-Research/SeMask-Segmentation SeMask-FAPN/SeMask-Mask2Former/.../pixel_decoder/fapn.py
(`PixelFANDecoder`, the Mask2Former pixel decoder this class is named after).

Per level, finest (res2) to coarsest (res5), with index i = 1..4 as in [SeMask] (i = position by stride + 1):
    layer_4 = 3x3 conv + norm + ReLU on res5 (no lateral, no alignment at the top), [SeMask]
    y_i     = layer_i(align_i(res_i, y_{i+1}))  for i = 3, 2, 1,
    align_i(x, coarse):  lateral = FSM(x)                                    (lateral_conv)
                         up      = bilinear upsampling of coarse to x's size
                         feat    = offset(cat[lateral, 2 * up])              (1x1 conv + norm)
                         aligned = ReLU(DCNv2_3x3(up; offsets, masks from conv_offset_mask(feat)))
                         return aligned + lateral,
    FSM(x) = conv(x + x * sigmoid(conv_atten(GAP(x)))),
    mask_features = 3x3 conv on y_1 (stride 4); multi-scale features = [y_4, y_3, y_2] (strides 32, 16, 8).

State-dict layout (prefix `sem_seg_head.pixel_decoder.` in the full model), module names as in [FaPN] / [DCN]:
    align_{i}.lateral_conv.conv_atten.weight          FSM attention 1x1 conv, C_i -> C_i, no bias, no norm
    align_{i}.lateral_conv.conv.weight                FSM projection 1x1 conv, C_i -> CONVS_DIM, no bias, no norm
    align_{i}.offset.weight / .offset.norm.{weight,bias}   1x1 conv 2*CONVS_DIM -> CONVS_DIM, no bias, GN
    align_{i}.dcpack_L2.{weight,bias}                 deformable 3x3 conv CONVS_DIM -> CONVS_DIM
    align_{i}.dcpack_L2.conv_offset_mask.{weight,bias}  3x3 conv CONVS_DIM -> 3 * 8 * 9 (offsets, mask logits)
    layer_{i}.weight / .norm.{weight,bias}            3x3 output conv (+ .bias when NORM is "")
    mask_features.{weight,bias}
for i = 1..3 (align) and 1..4 (layer). A FaPN detectron2 checkpoint's `fan_align{stage}.*` maps onto
`align_{stage - 1}.*` by a rename. An official SeMask `PixelFANDecoder` checkpoint does not map fully: its
lateral is a plain 1x1 conv with GN (`adapter_{i}`, "FeatureAlign ... Without FSM" there), not an FSM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import nn
from torchvision.ops import deform_conv2d

from ..backbone.base import ShapeSpec
from ..layers import Conv2d, c2_xavier_fill, group_norm
from ..tiny import register_tiny_sizes
from .base import PIXEL_DECODER_REGISTRY


class FeatureSelectionModule(nn.Module):
    """Channel re-weighting of a lateral map, added back to it, then a 1x1 projection to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # [FaPN] FeatureAlign_V2 builds its FSM with norm="", and FeatureSelectionModule gives `conv` no norm
        # whatever its argument: both 1x1 convs have neither bias nor norm, and there is no activation.
        self.conv_atten = Conv2d(in_channels, in_channels, kernel_size=1, bias=False)
        self.conv = Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        c2_xavier_fill(self.conv_atten)
        c2_xavier_fill(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = torch.sigmoid(self.conv_atten(x.mean(dim=(2, 3), keepdim=True)))
        return self.conv(x + x * attention)


class ModulatedDeformConv(nn.Module):
    """DCNv2 whose offsets and masks come from a separate feature: `forward(x, offset_feature)`.

    Matches [DCN]'s `DCN(..., extra_offset_mask=True)`: `conv_offset_mask` (same kernel as the main conv,
    zero-initialised, so training starts from a plain conv with masks sigmoid(0) = 0.5) predicts
    3 * groups * k * k channels: the first 2 * groups * k * k are the offsets, (dy, dx) interleaved per kernel
    point within each group (the layout of both DCNv2 and torchvision), the rest the mask logits.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, deformable_groups: int = 8) -> None:
        super().__init__()
        if in_channels % deformable_groups:
            raise ValueError(f"{in_channels} channels do not split into {deformable_groups} deformable groups")
        self.kernel_size = kernel_size
        self.padding = kernel_size // 2
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        points = deformable_groups * kernel_size * kernel_size
        self.conv_offset_mask = nn.Conv2d(in_channels, 3 * points, kernel_size, padding=self.padding)
        # [DCN] DCNv2.reset_parameters: uniform(+-1/sqrt(fan_in)) weight, zero bias; DCN.init_offset: zeros
        bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def offsets_and_masks(self, offset_feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """N x 2*G*k*k offsets (in pixels) and N x G*k*k masks in (0, 1)."""
        out = self.conv_offset_mask(offset_feature)
        points = self.deformable_groups * self.kernel_size * self.kernel_size
        return out[:, : 2 * points], torch.sigmoid(out[:, 2 * points :])

    def forward(self, x: torch.Tensor, offset_feature: torch.Tensor) -> torch.Tensor:
        # float32 with autocast off, as [SeMask] feeds it `.float()` inputs: sampling positions need the precision
        with torch.autocast(device_type=x.device.type, enabled=False):
            offset, mask = self.offsets_and_masks(offset_feature.float())
            out = deform_conv2d(
                x.float(), offset, self.weight, self.bias, padding=(self.padding, self.padding), mask=mask
            )
        return out.to(x.dtype)


class FeatureAlign(nn.Module):
    """FSM on the lateral map plus the FAM that aligns the upsampled coarse map to it; returns their sum."""

    def __init__(self, in_channels: int, conv_dim: int, norm: str = "GN", deformable_groups: int = 8) -> None:
        super().__init__()
        self.lateral_conv = FeatureSelectionModule(in_channels, conv_dim)
        # [FaPN] FeatureAlign_V2: 1x1 offset conv on the concatenation, bias=False, the level's norm
        # (FAN passes get_norm(norm, out_channels)), no activation, c2_xavier_fill.
        self.offset = Conv2d(2 * conv_dim, conv_dim, kernel_size=1, bias=False, norm=group_norm(conv_dim, norm))
        c2_xavier_fill(self.offset)
        # [FaPN] dcn_v2(out_nc, out_nc, 3, stride=1, padding=1, dilation=1, deformable_groups=8, extra_offset_mask=True)
        self.dcpack_L2 = ModulatedDeformConv(conv_dim, conv_dim, 3, deformable_groups)

    def forward(self, lateral_input: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        lateral = self.lateral_conv(lateral_input)
        up = coarse
        if coarse.shape[-2:] != lateral.shape[-2:]:
            # [FaPN] bilinear, align_corners=False, to the lateral's size (not FPN's nearest)
            up = F.interpolate(coarse, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        up = up.to(lateral.dtype)
        # [FaPN] offsets from cat([feat_arm, feat_up * 2]): the factor 2 is the official code's
        offset_feature = self.offset(torch.cat([lateral, 2 * up], dim=1))
        # [FaPN] / [SeMask]: ReLU after the deformable conv, then the sum with the lateral inside the module
        return F.relu(self.dcpack_L2(up, offset_feature)) + lateral


@PIXEL_DECODER_REGISTRY.register()
class PixelFANDecoder(nn.Module):
    """FaPN pixel decoder for Mask2Former: FSM laterals, FAM-aligned top-down sums, 3x3 output convs."""

    def __init__(
        self,
        *,
        input_shape: dict[str, ShapeSpec],
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str = "GN",
        common_stride: int = 4,
        deformable_groups: int = 8,
    ) -> None:
        super().__init__()
        self.maskformer_num_feature_levels = 3  # the transformer decoder attends to the 3 coarsest maps
        by_stride = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in by_stride]  # fine to coarse: res2 .. res5
        strides = [shape.stride for _, shape in by_stride]
        if len(by_stride) != self.maskformer_num_feature_levels + 1:
            raise ValueError(
                f"PixelFANDecoder needs {self.maskformer_num_feature_levels + 1} input maps (mask features at "
                f"stride {common_stride} plus {self.maskformer_num_feature_levels} coarser levels), "
                f"got {self.in_features} with strides {strides}"
            )
        if strides[0] != common_stride or any(b != 2 * a for a, b in zip(strides, strides[1:], strict=False)):
            raise ValueError(
                f"PixelFANDecoder needs strides {common_stride}, {2 * common_stride}, ... each twice the previous "
                f"(e.g. res2..res5: 4, 8, 16, 32); got {dict(zip(self.in_features, strides, strict=True))}"
            )
        if conv_dim % deformable_groups:
            raise ValueError(f"CONVS_DIM {conv_dim} must be divisible by the {deformable_groups} deformable groups")
        self.mask_dim = mask_dim
        self.common_stride = common_stride
        last = len(self.in_features)
        for index, (_, shape) in enumerate(by_stride, start=1):
            # [SeMask] output convs: 3x3, bias only without norm, norm + ReLU, c2_xavier_fill; the coarsest one
            # reads the backbone map directly
            output = Conv2d(
                shape.channels if index == last else conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=not norm,
                norm=group_norm(conv_dim, norm),
                activation=F.relu,
            )
            c2_xavier_fill(output)
            if index != last:
                self.add_module(f"align_{index}", FeatureAlign(shape.channels, conv_dim, norm, deformable_groups))
            self.add_module(f"layer_{index}", output)
        # [SeMask] 3x3 with bias, no norm (MaskFormer's BasePixelDecoder; MSDeformAttn's is 1x1)
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=3, padding=1)
        c2_xavier_fill(self.mask_features)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> PixelFANDecoder:
        """Keyword arguments from MODEL.SEM_SEG_HEAD.{IN_FEATURES, CONVS_DIM, MASK_DIM, NORM, COMMON_STRIDE}."""
        head = cfg.MODEL.SEM_SEG_HEAD
        missing = [name for name in head.IN_FEATURES if name not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES {list(head.IN_FEATURES)}: {missing} not among the backbone's "
                f"maps {sorted(input_shape)}"
            )
        return cls(
            input_shape={name: shape for name, shape in input_shape.items() if name in head.IN_FEATURES},
            conv_dim=head.CONVS_DIM,
            mask_dim=head.MASK_DIM,
            norm=head.NORM,
            common_stride=head.COMMON_STRIDE,
        )

    def forward_features(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Backbone maps -> (mask_features N x mask_dim x H/4 x W/4, [stride 32, 16, 8 maps of conv_dim])."""
        last = len(self.in_features)
        y = getattr(self, f"layer_{last}")(features[self.in_features[-1]])
        outputs = [y]
        for index in range(last - 1, 0, -1):
            aligned = getattr(self, f"align_{index}")(features[self.in_features[index - 1]], y)
            y = getattr(self, f"layer_{index}")(aligned)
            outputs.append(y)
        return self.mask_features(y), outputs[: self.maskformer_num_feature_levels]

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Same as `forward_features`."""
        return self.forward_features(features)


register_tiny_sizes("fapn", [], [(PIXEL_DECODER_REGISTRY, "PixelFANDecoder")])  # the pixel decoders' widths only
