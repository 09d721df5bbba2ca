"""Sine position encoding for 2-D feature maps (DETR's convention)."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """N x C x H x W -> N x 2F x H x W: F channels encode y, then F encode x, sin and cos interleaved."""

    def __init__(
        self, num_pos_feats: int = 64, temperature: float = 10000, normalize: bool = True, scale: float | None = None
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, _, height, width = x.shape
        valid = torch.ones((batch, height, width), device=x.device, dtype=torch.float32)
        if mask is not None:
            valid = (~mask).float()
        y = valid.cumsum(1)
        xs = valid.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y = y / (y[:, -1:, :] + eps) * self.scale
            xs = xs / (xs[:, :, -1:] + eps) * self.scale
        steps = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        frequencies = self.temperature ** (2 * (steps // 2) / self.num_pos_feats)

        def encode(coordinate: torch.Tensor) -> torch.Tensor:
            angles = coordinate[..., None] / frequencies
            return torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], dim=4).flatten(3)

        return torch.cat([encode(y), encode(xs)], dim=3).permute(0, 3, 1, 2).to(x.dtype)
