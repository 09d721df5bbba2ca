"""SeMask + Mask2Former: the Mask2Former losses plus a cross-entropy on the backbone's semantic prior.

Registered as `SeMaskMaskFormer` (MODEL.META_ARCHITECTURE, the official name). Training: the prior
(B x K x H/4 x W/4) is upsampled to the padded image and scored against the label map (IGNORE_VALUE
ignored) as `loss_cate`, weighted by MODEL.MASK_FORMER.CATE_WEIGHT (0.4, as published), next to the
Mask2Former losses. Inference ignores the prior: predict, ensemble and evaluation see an ordinary model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode

from mask2former.modeling.meta_arch import META_ARCH_REGISTRY, MaskFormer, semantic_targets

from .backbone import SEMANTIC_PRIOR

PRIOR_LOSS = "loss_cate"


def semantic_prior_loss(prior: torch.Tensor, labels: torch.Tensor, ignore_value: int) -> torch.Tensor:
    """Per-pixel cross-entropy of B x K x h x w prior logits, upsampled to the B x H x W label maps."""
    logits = F.interpolate(prior.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if bool((labels == ignore_value).all()):
        return logits.sum() * 0.0  # nothing labelled: zero, but keep the graph
    return F.cross_entropy(logits, labels, ignore_index=ignore_value)


@META_ARCH_REGISTRY.register()
class SeMaskMaskFormer(MaskFormer):
    """MaskFormer whose backbone also returns a semantic prior; adds `loss_cate` in training."""

    @classmethod
    def from_config(cls, cfg: CfgNode) -> SeMaskMaskFormer:
        model = super().from_config(cfg)
        if not hasattr(model.backbone, "num_classes"):
            raise ValueError(
                f"SeMaskMaskFormer needs a SeMask backbone (D2SeMaskSwinTransformer), got {cfg.MODEL.BACKBONE.NAME}"
            )
        model.criterion.weight_dict[PRIOR_LOSS] = cfg.MODEL.MASK_FORMER.CATE_WEIGHT
        return model

    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor] | list[dict]:
        images = self.preprocess(batched_inputs)
        features = self.backbone(images)
        prior = features.pop(SEMANTIC_PRIOR)
        outputs = self.sem_seg_head(features)
        if not self.training:
            return self.inference(batched_inputs, outputs, images.shape[-2:])
        labels = [item["sem_seg"].to(self.device) for item in batched_inputs]
        losses = self.criterion(
            outputs, [semantic_targets(label, images.shape[-2:], self.ignore_value) for label in labels]
        )
        padded = labels[0].new_full((len(labels), *images.shape[-2:]), self.ignore_value)
        for index, label in enumerate(labels):
            padded[index, : label.shape[0], : label.shape[1]] = label
        losses[PRIOR_LOSS] = semantic_prior_loss(prior, padded, self.ignore_value)
        return losses
