"""Point sampling on mask logits (PointRend's scheme), used by the matcher and the mask losses.

Training draws its random points from a torch.Generator per image, seeded from the image's `sample_seed` (which
`MapDataset` puts into every sample), the decoder layer and the purpose (matching or loss). The points of an image
then do not depend on the other images of its batch, so a global batch split over several processes draws the
points one process would. Inputs without a sample seed draw from torch's global RNG.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..data.dataset import SAMPLE_SEED as SAMPLE_SEED  # the sample's key, re-exported for the matcher and criterion
from ..data.dataset import derived_seed

# purposes: the matcher and the mask loss of one layer draw different points
MATCHER_POINTS = 0
LOSS_POINTS = 1


def point_sample(input: torch.Tensor, point_coords: torch.Tensor, **kwargs) -> torch.Tensor:
    """Values of N x C x H x W maps at N x P x 2 points, (x, y) in [0, 1] -> N x C x P (bilinear by default)."""
    grid = 2.0 * point_coords[:, :, None, :] - 1.0
    kwargs.setdefault("align_corners", False)
    return F.grid_sample(input, grid.to(input.dtype), **kwargs).squeeze(3)


def stream_seed(sample_seed: int, layer: int, purpose: int) -> int:
    """A seed (< 2**63) for the points of one image, decoder layer and purpose, from the image's sample seed."""
    if sample_seed < 0 or layer < 0 or purpose < 0:
        raise ValueError(f"sample seed {sample_seed}, layer {layer} and purpose {purpose} must be >= 0")
    return derived_seed([sample_seed, layer, purpose])


def point_generator(
    sample_seed: int | None, layer: int, purpose: int, device: torch.device | str
) -> torch.Generator | None:
    """The generator for `stream_seed(...)` on `device`, or None (torch's global RNG) without a sample seed."""
    if sample_seed is None:
        return None
    return torch.Generator(device=device).manual_seed(stream_seed(sample_seed, layer, purpose))


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Closer to 0 logit = more uncertain: -|logit|."""
    return -torch.abs(logits)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_func: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """R x num_points x 2 points: the most uncertain of an oversampled random draw, topped up with random ones.

    The random draws come from `generator` (torch's global RNG when None)."""
    count = coarse_logits.shape[0]
    device = coarse_logits.device
    candidates = int(num_points * oversample_ratio)
    coords = torch.rand(count, candidates, 2, device=device, generator=generator)
    uncertainty = uncertainty_func(point_sample(coarse_logits, coords))[:, 0]
    num_uncertain = int(importance_sample_ratio * num_points)
    chosen = torch.topk(uncertainty, k=num_uncertain, dim=1).indices
    coords = torch.gather(coords, 1, chosen[..., None].expand(-1, -1, 2))
    num_random = num_points - num_uncertain
    if num_random > 0:
        coords = torch.cat([coords, torch.rand(count, num_random, 2, device=device, generator=generator)], dim=1)
    return coords
