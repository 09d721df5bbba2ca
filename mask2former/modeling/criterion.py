"""Mask2Former's set criterion: class cross-entropy, mask BCE and dice on uncertain points, deep supervision."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import nn

from .matcher import HungarianMatcher
from .point_sampling import calculate_uncertainty, get_uncertain_point_coords_with_randomness, point_sample


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


class SetCriterion(nn.Module):
    """Matches predictions to targets, then computes the unweighted losses (suffix _i for aux output i)."""

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        eos_coef: float = 0.1,
        losses: tuple[str, ...] = ("labels", "masks"),
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.losses = tuple(losses)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def loss_labels(self, outputs: dict, targets: list[dict], indices, num_masks: float) -> dict[str, torch.Tensor]:
        logits = outputs["pred_logits"].float()
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)
        for image, (rows, cols) in enumerate(indices):
            classes[image, rows] = targets[image]["labels"][cols]
        return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), classes, self.empty_weight)}

    def loss_masks(self, outputs: dict, targets: list[dict], indices, num_masks: float) -> dict[str, torch.Tensor]:
        predicted = torch.cat([outputs["pred_masks"][i][rows] for i, (rows, _) in enumerate(indices)])[:, None].float()
        wanted = torch.cat([t["masks"][cols] for t, (_, cols) in zip(targets, indices, strict=True)])[:, None]
        if predicted.shape[0] == 0:
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                predicted, calculate_uncertainty, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            labels = point_sample(wanted.to(predicted), coords).squeeze(1)
        logits = point_sample(predicted, coords).squeeze(1)
        return {
            "loss_mask": sigmoid_ce_loss(logits, labels, num_masks),
            "loss_dice": dice_loss(logits, labels, num_masks),
        }

    def _losses_for(self, outputs: dict, targets: list[dict], num_masks: float) -> dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        losses: dict[str, torch.Tensor] = {}
        for name in self.losses:
            losses.update(getattr(self, f"loss_{name}")(outputs, targets, indices, num_masks))
        return losses

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        num_masks = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=outputs["pred_logits"].device)
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
            world = dist.get_world_size()
        num_masks = max(float(num_masks) / world, 1.0)
        main = {key: value for key, value in outputs.items() if key != "aux_outputs"}
        losses = self._losses_for(main, targets, num_masks)
        deep_supervision = any(key.endswith("_0") for key in self.weight_dict)
        for index, aux in enumerate(outputs.get("aux_outputs", []) if deep_supervision else []):
            losses.update({f"{key}_{index}": value for key, value in self._losses_for(aux, targets, num_masks).items()})
        return losses

    def weighted_total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of loss x weight over the losses that have a weight."""
        return sum(value * self.weight_dict[key] for key, value in losses.items() if key in self.weight_dict)


def build_criterion(cfg: CfgNode) -> SetCriterion:
    mf = cfg.MODEL.MASK_FORMER
    matcher = HungarianMatcher(mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.TRAIN_NUM_POINTS)
    weights = {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
    if mf.DEEP_SUPERVISION:
        base = dict(weights)
        for index in range(mf.DEC_LAYERS - 1):
            weights.update({f"{key}_{index}": value for key, value in base.items()})
    return SetCriterion(
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        matcher,
        weights,
        eos_coef=mf.NO_OBJECT_WEIGHT,
        num_points=mf.TRAIN_NUM_POINTS,
        oversample_ratio=mf.OVERSAMPLE_RATIO,
        importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
    )
