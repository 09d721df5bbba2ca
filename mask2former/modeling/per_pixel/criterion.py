"""The per-pixel losses: cross-entropy plus optional dice, focal and Lovasz terms (segmentation-models-pytorch's), and
the auxiliary heads' cross-entropy; every term ignores MODEL.SEM_SEG_HEAD.IGNORE_VALUE.

Logits are resized bilinearly to the (padded) label size first, as mmsegmentation does. The cross-entropies are the
mean over the labelled pixels of the global batch whatever its split over processes (one all_reduce of the count);
dice, focal and Lovasz are smp's batch-level losses, computed on each process's share (so, like BatchNorm, they
differ slightly with the process count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import nn

from ..criterion import global_normalizers
from .decoders import resize_logits

MAIN_LOSSES = ("loss_ce", "loss_dice", "loss_focal", "loss_lovasz")


def aux_loss_name(index: int) -> str:
    return f"loss_aux_ce_{index}"


class PerPixelCriterion(nn.Module):
    """{"logits", "aux_logits"} and B x H x W labels -> the unweighted losses; `weight_dict` weighs them."""

    def __init__(
        self,
        ignore_value: int = 255,
        ce_weight: float = 1.0,
        dice_weight: float = 0.0,
        focal_weight: float = 0.0,
        lovasz_weight: float = 0.0,
        focal_gamma: float = 2.0,
        aux_weight: float = 0.4,
        num_aux: int = 0,
    ) -> None:
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss, FocalLoss, LovaszLoss

        self.ignore_value = ignore_value
        self.weight_dict = {
            "loss_ce": ce_weight,
            "loss_dice": dice_weight,
            "loss_focal": focal_weight,
            "loss_lovasz": lovasz_weight,
            **{aux_loss_name(index): aux_weight for index in range(num_aux)},
        }
        self.extra_losses = {}
        if dice_weight:
            self.extra_losses["loss_dice"] = DiceLoss("multiclass", ignore_index=ignore_value, from_logits=True)
        if focal_weight:
            self.extra_losses["loss_focal"] = FocalLoss("multiclass", gamma=focal_gamma, ignore_index=ignore_value)
        if lovasz_weight:
            self.extra_losses["loss_lovasz"] = LovaszLoss("multiclass", ignore_index=ignore_value, from_logits=True)

    @classmethod
    def from_config(cls, cfg: CfgNode, num_aux: int) -> PerPixelCriterion:
        loss = cfg.MODEL.PER_PIXEL.LOSS
        return cls(
            ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            ce_weight=loss.CE_WEIGHT,
            dice_weight=loss.DICE_WEIGHT,
            focal_weight=loss.FOCAL_WEIGHT,
            lovasz_weight=loss.LOVASZ_WEIGHT,
            focal_gamma=loss.FOCAL_GAMMA,
            aux_weight=cfg.MODEL.PER_PIXEL.AUX_WEIGHT,
            num_aux=num_aux,
        )

    @property
    def logged_losses(self) -> tuple[str, ...]:
        """The terms metrics.csv shows (those that are trained on)."""
        return tuple(key for key in MAIN_LOSSES if self.weight_dict[key]) or ("loss_ce",)

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor, num_pixels: float) -> torch.Tensor:
        summed = F.cross_entropy(logits.float(), labels, ignore_index=self.ignore_value, reduction="sum")
        return summed / num_pixels

    def forward(self, outputs: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        labelled = (labels != self.ignore_value).sum().float()[None]
        total, world = global_normalizers(labelled)
        num_pixels = max(float(total[0]), 1.0) / world  # nothing labelled anywhere: zero, but keep the graph
        logits = resize_logits(outputs["logits"], labels.shape[-2:])
        losses = {"loss_ce": self.cross_entropy(logits, labels, num_pixels)}
        for name, loss in self.extra_losses.items():
            losses[name] = loss(logits.float(), labels)
        for index, aux in enumerate(outputs.get("aux_logits", [])):
            losses[aux_loss_name(index)] = self.cross_entropy(resize_logits(aux, labels.shape[-2:]), labels, num_pixels)
        return losses

    def weighted_total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of loss x weight over the losses that have a weight."""
        return sum(value * self.weight_dict[key] for key, value in losses.items() if key in self.weight_dict)
