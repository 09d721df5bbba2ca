"""Hungarian matching of predicted masks to ground-truth masks on randomly sampled points."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .point_sampling import MATCHER_POINTS, SAMPLE_SEED, point_generator, point_sample


def dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Q x P logits, T x P binary targets -> Q x T (1 - dice)."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def sigmoid_ce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Q x P logits, T x P binary targets -> Q x T mean binary cross-entropy."""
    positive = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    negative = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (positive @ targets.T + negative @ (1 - targets).T) / logits.shape[-1]


class HungarianMatcher(nn.Module):
    def __init__(
        self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matching costs are 0")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict], layer: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image: (query indices, target indices) of the minimum-cost assignment.

        The points come from the image's generator for (its SAMPLE_SEED, `layer`) where the target has a sample
        seed, else from torch's global RNG."""
        indices = []
        for index, target in enumerate(targets):
            labels = target["labels"]
            device = outputs["pred_logits"].device
            if len(labels) == 0:
                empty = torch.empty(0, dtype=torch.long, device=device)
                indices.append((empty, empty))
                continue
            with torch.autocast(device_type=device.type, enabled=False):
                probs = outputs["pred_logits"][index].float().softmax(-1)
                pred_masks = outputs["pred_masks"][index].float()[:, None]
                target_masks = target["masks"].to(pred_masks)[:, None]
                generator = point_generator(target.get(SAMPLE_SEED), layer, MATCHER_POINTS, device)
                points = torch.rand(1, self.num_points, 2, device=device, generator=generator)
                pred_points = point_sample(pred_masks, points.repeat(len(pred_masks), 1, 1)).squeeze(1)
                target_points = point_sample(target_masks, points.repeat(len(target_masks), 1, 1)).squeeze(1)
                cost = (
                    self.cost_class * -probs[:, labels]
                    + self.cost_mask * sigmoid_ce_cost(pred_points, target_points)
                    + self.cost_dice * dice_cost(pred_points, target_points)
                )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (
                    torch.as_tensor(rows, dtype=torch.long, device=device),
                    torch.as_tensor(cols, dtype=torch.long, device=device),
                )
            )
        return indices
