"""Multi-scale deformable attention (Zhu et al., Deformable DETR), in pure PyTorch.

`ms_deform_attn` is the one entry point; a GPU kernel can be dispatched behind it for CUDA tensors,
while `ms_deform_attn_reference` stays the definition used on the CPU and in tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinear samples of each level's values at the given points, weighted and summed.

    value N x S x heads x dim; spatial_shapes L x 2 (H, W); level_start_index L; sampling_locations
    N x Q x heads x L x P x 2, (x, y) in [0, 1] with pixel centres at (i + 0.5) / size and zeros
    outside; attention_weights N x Q x heads x L x P. Returns N x Q x heads * dim.
    """
    batch, _, heads, dim = value.shape
    queries, levels, points = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    grids = 2.0 * sampling_locations - 1.0
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    starts = [int(s) for s in level_start_index.tolist()]
    out = None
    for level, (height, width) in enumerate(shapes):
        level_value = value[:, starts[level] : starts[level] + height * width]
        level_value = level_value.permute(0, 2, 3, 1).reshape(batch * heads, dim, height, width)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled = F.grid_sample(
            level_value, grid.to(level_value.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
        )  # (N heads) x dim x Q x P
        weights = attention_weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, queries, points)
        contribution = (sampled * weights.to(sampled.dtype)).sum(-1)
        out = contribution if out is None else out + contribution
    assert out is not None and levels == len(shapes)
    return out.view(batch, heads, dim, queries).permute(0, 3, 1, 2).reshape(batch, queries, heads * dim)


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention; see `ms_deform_attn_reference` for the shapes."""
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


class MSDeformAttn(nn.Module):
    """Deformable attention module: each query samples `n_points` per head and level around its reference."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        # each head starts looking in its own direction, point k at distance k + 1
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        grid = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid *= torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: torch.Tensor,
        input_level_start_index: torch.Tensor,
        input_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, queries, _ = query.shape
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(batch, -1, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(batch, queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(batch, queries, self.n_heads, self.n_levels, self.n_points)
        normaliser = torch.stack([input_spatial_shapes[:, 1], input_spatial_shapes[:, 0]], -1).to(offsets.dtype)
        locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        out = ms_deform_attn(value, input_spatial_shapes, input_level_start_index, locations, weights)
        return self.output_proj(out)
