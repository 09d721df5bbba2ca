"""Mask2Former's set criterion: class cross-entropy, mask BCE and dice on uncertain points, deep supervision.

The losses do not depend on how a global batch is split over processes: with DDP averaging the gradients of the
ranks, every rank divides its sums by a global normaliser over the world size (the matched masks for BCE and
dice, as Mask2Former does; the class weights of all queries for the cross-entropy, which with one process is
F.cross_entropy's weighted mean), and the random points of an image come from its own generator (see
point_sampling). The matching of every layer comes first, so that one all_reduce carries all the normalisers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import nn

from .matcher import HungarianMatcher
from .point_sampling import (
    LOSS_POINTS,
    SAMPLE_SEED,
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_generator,
    point_sample,
)
from .tiny import register_tiny_sizes

LOSSES = ("labels", "masks")


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


def global_normalizers(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(`local` summed over all processes, the number of processes): one all_reduce when torch.distributed runs.

    Every rank must call it the same number of times with the same shape (it is collective)."""
    if dist.is_available() and dist.is_initialized():
        total = local.clone()
        dist.all_reduce(total)
        return total, dist.get_world_size()
    return local, 1


def target_classes(logits: torch.Tensor, targets: list[dict], indices, no_object: int) -> torch.Tensor:
    """B x Q class of every query: its matched target's label, else `no_object`."""
    classes = torch.full(logits.shape[:2], no_object, dtype=torch.long, device=logits.device)
    for image, (rows, cols) in enumerate(indices):
        classes[image, rows] = targets[image]["labels"][cols]
    return classes


class SetCriterion(nn.Module):
    """Matches predictions to targets, then computes the unweighted losses (suffix _i for aux output i)."""

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        eos_coef: float = 0.1,
        losses: tuple[str, ...] = LOSSES,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        unknown = [name for name in losses if name not in LOSSES]
        if unknown:
            raise ValueError(f"unknown losses {unknown}; the criterion computes {list(LOSSES)}")
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

    def loss_labels(self, outputs: dict, classes: torch.Tensor, class_weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted cross-entropy summed over the queries, over `class_weight` (the weight sum it is the mean of:
        with one process, the batch's, which makes it F.cross_entropy(weight=empty_weight))."""
        logits = outputs["pred_logits"].float()
        summed = F.cross_entropy(logits.transpose(1, 2), classes, self.empty_weight, reduction="sum")
        return {"loss_ce": summed / class_weight}

    def _uncertain_points(self, outputs: dict, targets: list[dict], indices, layer: int) -> torch.Tensor:
        """M x num_points x 2 points for the M matched masks (in image order): one generator per image with a
        sample seed; without any, one draw from torch's global RNG for all of them."""
        predicted = [outputs["pred_masks"][i][rows][:, None].float() for i, (rows, _) in enumerate(indices)]
        settings = (calculate_uncertainty, self.num_points, self.oversample_ratio, self.importance_sample_ratio)
        if not any(SAMPLE_SEED in target for target in targets):
            return get_uncertain_point_coords_with_randomness(torch.cat(predicted), *settings)
        coords = []
        for masks, target in zip(predicted, targets, strict=True):
            if len(masks):
                generator = point_generator(target.get(SAMPLE_SEED), layer, LOSS_POINTS, masks.device)
                coords.append(get_uncertain_point_coords_with_randomness(masks, *settings, generator=generator))
        return torch.cat(coords)

    def loss_masks(
        self, outputs: dict, targets: list[dict], indices, num_masks: float, layer: int
    ) -> dict[str, torch.Tensor]:
        predicted = torch.cat([outputs["pred_masks"][i][rows] for i, (rows, _) in enumerate(indices)])[:, None].float()
        wanted = torch.cat([t["masks"][cols] for t, (_, cols) in zip(targets, indices, strict=True)])[:, None]
        if predicted.shape[0] == 0:
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        with torch.no_grad():
            coords = self._uncertain_points(outputs, targets, indices, layer)
            labels = point_sample(wanted.to(predicted), coords).squeeze(1)
        logits = point_sample(predicted, coords).squeeze(1)
        return {
            "loss_mask": sigmoid_ce_loss(logits, labels, num_masks),
            "loss_dice": dice_loss(logits, labels, num_masks),
        }

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        main = {key: value for key, value in outputs.items() if key != "aux_outputs"}
        deep_supervision = any(key.endswith("_0") for key in self.weight_dict)
        layers = [main, *(outputs.get("aux_outputs", []) if deep_supervision else [])]
        # point streams: 0 for the final prediction, 1 + i for aux output i
        indices = [self.matcher(layer, targets, layer=stream) for stream, layer in enumerate(layers)]
        classes = [
            target_classes(layer["pred_logits"], targets, idx, self.num_classes)
            for layer, idx in zip(layers, indices, strict=True)
        ]
        device = outputs["pred_logits"].device
        with torch.no_grad():
            local = torch.stack(
                [
                    torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device),
                    *(self.empty_weight[c].float().sum() for c in classes),
                ]
            )
            total, world = global_normalizers(local)
        # the floor of 1 on the global count (Mask2Former floors the per-rank average): the same for any split
        num_masks = max(float(total[0]), 1.0) / world
        class_weights = total[1:].clamp(min=torch.finfo(total.dtype).tiny) / world
        losses: dict[str, torch.Tensor] = {}
        for stream, layer in enumerate(layers):
            found: dict[str, torch.Tensor] = {}
            if "labels" in self.losses:
                found.update(self.loss_labels(layer, classes[stream], class_weights[stream]))
            if "masks" in self.losses:
                found.update(self.loss_masks(layer, targets, indices[stream], num_masks, stream))
            suffix = "" if stream == 0 else f"_{stream - 1}"
            losses.update({f"{key}{suffix}": value for key, value in found.items()})
        return losses

    logged_losses = ("loss_ce", "loss_mask", "loss_dice")  # the last layer's terms metrics.csv shows

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


register_tiny_sizes("criterion", ["MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256"])  # points per mask in the losses
