"""Point sampling on mask logits (PointRend's scheme), used by the matcher and the mask losses."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def point_sample(input: torch.Tensor, point_coords: torch.Tensor, **kwargs) -> torch.Tensor:
    """Values of N x C x H x W maps at N x P x 2 points, (x, y) in [0, 1] -> N x C x P (bilinear by default)."""
    grid = 2.0 * point_coords[:, :, None, :] - 1.0
    kwargs.setdefault("align_corners", False)
    return F.grid_sample(input, grid.to(input.dtype), **kwargs).squeeze(3)


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Closer to 0 logit = more uncertain: -|logit|."""
    return -torch.abs(logits)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_func: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """R x num_points x 2 points: the most uncertain of an oversampled random draw, topped up with random ones."""
    count = coarse_logits.shape[0]
    candidates = int(num_points * oversample_ratio)
    coords = torch.rand(count, candidates, 2, device=coarse_logits.device)
    uncertainty = uncertainty_func(point_sample(coarse_logits, coords))[:, 0]
    num_uncertain = int(importance_sample_ratio * num_points)
    chosen = torch.topk(uncertainty, k=num_uncertain, dim=1).indices
    coords = torch.gather(coords, 1, chosen[..., None].expand(-1, -1, 2))
    num_random = num_points - num_uncertain
    if num_random > 0:
        coords = torch.cat([coords, torch.rand(count, num_random, 2, device=coarse_logits.device)], dim=1)
    return coords
