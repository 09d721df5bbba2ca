"""BranchMaskFormerHead: Mask2Former's head plus SeMask's semantic prior (the official SEM_SEG_HEAD.NAME).

As in the official SeMask-Mask2Former (modeling/meta_arch/branch_mask_former_head.py), the head holds the pixel
decoder (`pixel_decoder.*`) and the transformer decoder (`predictor.*`) of MaskFormerHead, so checkpoint keys
are the same, and a parameter-free `sem_head` that sums the backbone's per-stage class maps into the semantic
prior that SeMaskMaskFormer scores as `loss_cate`:

    each stage's class map (stride s_i) is upsampled by log2(s_i / s_0) bilinear x2 steps (align_corners=True),
    then resized to the finest map's size (align_corners=True, a no-op when the sizes already agree); the sum is
    upsampled by s_0 (4 for Swin: the official x4) with align_corners=True, to the padded image size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import nn

from mask2former.config import ConfigError
from mask2former.modeling.backbone.base import ShapeSpec
from mask2former.modeling.meta_arch import SEM_SEG_HEADS_REGISTRY, MaskFormerHead

from .backbone import class_map_key


def semantic_prior(class_maps: list[torch.Tensor], strides: list[int]) -> torch.Tensor:
    """The official SemanticHead: B x K x h_i x w_i class maps (strides ascending) -> B x K x (s_0 h_0) x (s_0 w_0)."""
    if list(strides) != sorted(strides) or len(strides) != len(class_maps) or not class_maps:
        raise ValueError(f"semantic_prior needs one class map per stride, strides ascending; got {list(strides)}")
    prior = class_maps[0]
    for class_map, stride in zip(class_maps[1:], strides[1:], strict=True):
        for _ in range(round(math.log2(stride / strides[0]))):
            class_map = F.interpolate(class_map, scale_factor=2, mode="bilinear", align_corners=True)
        prior = prior + F.interpolate(class_map, size=prior.shape[-2:], mode="bilinear", align_corners=True)
    height, width = prior.shape[-2:]
    return F.interpolate(prior, size=(height * strides[0], width * strides[0]), mode="bilinear", align_corners=True)


class SemanticHead(nn.Module):
    """`sem_head`: no parameters; {name: class map} for `in_features` -> the semantic prior (see module doc)."""

    def __init__(self, in_features: list[str], strides: list[int]) -> None:
        super().__init__()
        order = sorted(range(len(in_features)), key=lambda i: strides[i])
        self.in_features = [in_features[i] for i in order]
        self.strides = [strides[i] for i in order]

    def forward(self, class_maps: dict[str, torch.Tensor]) -> torch.Tensor:
        return semantic_prior([class_maps[name] for name in self.in_features], self.strides)


@SEM_SEG_HEADS_REGISTRY.register()
class BranchMaskFormerHead(MaskFormerHead):
    """MaskFormerHead + `sem_head`. forward(features) -> (predictions, semantic prior B x K x H x W or None).

    `features` must hold the SeMask backbone's class maps (`class_map_key(name)`) for every IN_FEATURES name;
    the prior is computed in training only (None in eval: inference does not use it).
    """

    def __init__(
        self, *, pixel_decoder: nn.Module, predictor: nn.Module, in_features: list[str], strides: list[int]
    ) -> None:
        super().__init__(pixel_decoder=pixel_decoder, predictor=predictor, in_features=in_features)
        self.sem_head = SemanticHead(list(in_features), list(strides))

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> BranchMaskFormerHead:
        if cfg.MODEL.META_ARCHITECTURE != "SeMaskMaskFormer":
            raise ConfigError(
                f"MODEL.SEM_SEG_HEAD.NAME BranchMaskFormerHead needs MODEL.META_ARCHITECTURE SeMaskMaskFormer "
                f"(got {cfg.MODEL.META_ARCHITECTURE!r}): only it trains the semantic prior"
            )
        head = MaskFormerHead.from_config(cfg, input_shape)
        in_features = list(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES)
        return cls(
            pixel_decoder=head.pixel_decoder,
            predictor=head.predictor,
            in_features=in_features,
            strides=[input_shape[name].stride for name in in_features],
        )

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[dict, torch.Tensor | None]:
        missing = [name for name in self.in_features if class_map_key(name) not in features]
        if missing:
            raise KeyError(
                f"BranchMaskFormerHead needs the class maps of {missing} (a SeMask backbone such as "
                "D2SeMaskSwinTransformer returns them)"
            )
        predictions = super().forward(features)
        if not self.training:
            return predictions, None
        return predictions, self.sem_head({name: features[class_map_key(name)] for name in self.in_features})
