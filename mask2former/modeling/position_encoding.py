"""Sine position encoding for 2-D feature maps (DETR's convention, as used by Mask2Former)."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """N x C x H x W -> N x 2F x H x W: F channels encode the row (y), then F the column (x).

    Within each half, channel 2i is sin and 2i + 1 cos of coordinate / temperature^(2i / F). With
    `normalize`, coordinates (1-based counts of valid pixels) are divided by the last one and scaled
    to (0, scale], scale = 2 pi by default. `mask` (N x H x W, True = padding) is optional. The result
    has x's dtype; it is computed in float32.
    """

    def __init__(
        self, num_pos_feats: int = 64, temperature: float = 10000, normalize: bool = True, scale: float | None = None
    ) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("scale only applies with normalize=True")
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even (sin/cos pairs), got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, _, height, width = x.shape
        if mask is None:
            valid = torch.ones((batch, height, width), device=x.device, dtype=torch.float32)
        else:
            valid = (~mask.bool()).to(torch.float32)
        rows = valid.cumsum(1)
        cols = valid.cumsum(2)
        if self.normalize:
            eps = 1e-6
            rows = rows / (rows[:, -1:, :] + eps) * self.scale
            cols = cols / (cols[:, :, -1:] + eps) * self.scale
        steps = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        periods = self.temperature ** (2 * torch.div(steps, 2, rounding_mode="floor") / self.num_pos_feats)

        def encode(coordinate: torch.Tensor) -> torch.Tensor:
            angles = coordinate[..., None] / periods  # N x H x W x F
            return torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], dim=-1).flatten(3)

        return torch.cat([encode(rows), encode(cols)], dim=3).permute(0, 3, 1, 2).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}, scale={self.scale}"
        )
