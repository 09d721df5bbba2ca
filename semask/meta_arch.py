"""SeMask + Mask2Former: the Mask2Former losses plus a cross-entropy on the semantic prior.

Registered as `SeMaskMaskFormer` (MODEL.META_ARCHITECTURE, the official name), with a SeMask backbone
(D2SeMaskSwinTransformer) and the official head `BranchMaskFormerHead` (MODEL.SEM_SEG_HEAD.NAME), which sums the
backbone's class maps into the prior at the padded image size. Training: the prior is scored against the label
maps (padded with IGNORE_VALUE, which is ignored) as `loss_cate`, weighted by MODEL.MASK_FORMER.CATE_WEIGHT (0.4,
as published), next to the Mask2Former losses; it is the mean over the labelled pixels of the global batch, however
that is split over processes. Inference ignores the prior: predict, ensemble and evaluation see an ordinary model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode

from mask2former.config import ConfigError
from mask2former.modeling import criterion as set_criterion
from mask2former.modeling.meta_arch import META_ARCH_REGISTRY, MaskFormer

from .backbone import D2SeMaskSwinTransformer

PRIOR_LOSS = "loss_cate"


def semantic_prior_loss(
    prior: torch.Tensor, labels: torch.Tensor, ignore_value: int, num_pixels: float | None = None
) -> torch.Tensor:
    """Per-pixel cross-entropy of B x K x H x W prior logits against B x H x W label maps of the same size, summed
    over the labelled pixels and divided by `num_pixels` (default: their number, i.e. the mean; 0 when none)."""
    if prior.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"semantic prior {tuple(prior.shape[-2:])} and labels {tuple(labels.shape[-2:])} differ")
    summed = F.cross_entropy(prior.float(), labels, ignore_index=ignore_value, reduction="sum")
    if num_pixels is None:
        num_pixels = float((labels != ignore_value).sum())
    return summed / max(num_pixels, 1.0)  # nothing labelled: zero, but keep the graph


@META_ARCH_REGISTRY.register()
class SeMaskMaskFormer(MaskFormer):
    """MaskFormer with a SeMask backbone and BranchMaskFormerHead; adds `loss_cate` in training."""

    @classmethod
    def from_config(cls, cfg: CfgNode) -> SeMaskMaskFormer:
        if cfg.MODEL.SEM_SEG_HEAD.NAME != "BranchMaskFormerHead":
            raise ConfigError(
                f"MODEL.META_ARCHITECTURE SeMaskMaskFormer needs MODEL.SEM_SEG_HEAD.NAME BranchMaskFormerHead (the "
                f"official SeMask head, which makes the semantic prior), got {cfg.MODEL.SEM_SEG_HEAD.NAME!r}"
            )
        model = super().from_config(cfg)
        if not isinstance(model.backbone, D2SeMaskSwinTransformer):
            raise ConfigError(
                "MODEL.META_ARCHITECTURE SeMaskMaskFormer needs a SeMask backbone (MODEL.BACKBONE.NAME "
                f"D2SeMaskSwinTransformer), got {cfg.MODEL.BACKBONE.NAME!r}"
            )
        model.criterion.weight_dict[PRIOR_LOSS] = cfg.MODEL.MASK_FORMER.CATE_WEIGHT
        return model

    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor] | list[dict]:
        images = self.preprocess(batched_inputs)
        outputs, prior = self.sem_seg_head(self.backbone(images))
        if not self.training:
            return self.inference(batched_inputs, outputs, images.shape[-2:])
        losses = self.criterion(outputs, self.training_targets(batched_inputs, images.shape[-2:]))
        labels = [item["sem_seg"].to(self.device) for item in batched_inputs]
        padded = labels[0].new_full((len(labels), *images.shape[-2:]), self.ignore_value)
        for index, label in enumerate(labels):
            padded[index, : label.shape[0], : label.shape[1]] = label
        # the mean over the labelled pixels of the global batch, whatever its split over processes
        labelled = (padded != self.ignore_value).sum().float()[None]
        total, world = set_criterion.global_normalizers(labelled)
        num_pixels = max(float(total[0]), 1.0) / world
        losses[PRIOR_LOSS] = semantic_prior_loss(prior, padded, self.ignore_value, num_pixels)
        return losses
