"""Multi-scale deformable attention (Zhu et al., Deformable DETR): the pure PyTorch definition and the dispatch.

`ms_deform_attn` is the one entry point the models call. By default it runs the Triton kernels of
`ms_deform_attn_triton` on CUDA tensors when Triton is importable, and `ms_deform_attn_reference` otherwise;
the reference stays the definition (used on the CPU and in tests).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .shapes import check_shapes


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    level_shapes: Sequence[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Bilinear samples of each level's values at the given points, weighted and summed over levels and points.

    value N x S x heads x dim (levels flattened row-major and concatenated); spatial_shapes L x 2 (H, W);
    level_start_index L; sampling_locations N x Q x heads x L x P x 2, normalised (x, y) where pixel i of a
    level of size n has its centre at (i + 0.5) / n, zeros outside the map; attention_weights
    N x Q x heads x L x P. Returns N x Q x heads * dim in value's dtype.

    Sampling runs in value's dtype: bf16 values mean bf16 locations (about 1/256 of the map of precision).
    `level_shapes`: the same (H, W) as Python ints, from the feature maps' shapes; given, the levels are cut by
    them instead of by reading the tensors (no data-dependent shape, so the function can be exported).
    """
    check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    batch, total, heads, dim = value.shape
    queries, points = sampling_locations.shape[1], sampling_locations.shape[4]
    shapes, starts = _level_slices(spatial_shapes, level_start_index, level_shapes)
    if sum(h * w for h, w in shapes) != total:
        raise ValueError(f"spatial_shapes {shapes} cover {sum(h * w for h, w in shapes)} positions, value has {total}")
    # grid_sample's [-1, 1] with align_corners=False puts -1 / 1 on the outer pixel edges: the same convention.
    grids = (2.0 * sampling_locations - 1.0).to(value.dtype)
    weights = attention_weights.to(value.dtype)
    out = value.new_zeros(batch * heads, dim, queries)
    for level, ((height, width), start) in enumerate(zip(shapes, starts, strict=True)):
        level_value = value[:, start : start + height * width]  # N x HW x heads x dim
        level_value = level_value.permute(0, 2, 3, 1).reshape(batch * heads, dim, height, width)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled = F.grid_sample(level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        level_weights = weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, queries, points)
        out = out + (sampled * level_weights).sum(-1)  # (N heads) x dim x Q
    return out.view(batch, heads, dim, queries).permute(0, 3, 1, 2).reshape(batch, queries, heads * dim)


def _level_slices(
    spatial_shapes: torch.Tensor, level_start_index: torch.Tensor, level_shapes: Sequence[tuple[int, int]] | None
) -> tuple[list[tuple[int, int]], list[int]]:
    """Each level's (H, W) and first position: from `level_shapes` when given, else read from the tensors."""
    if level_shapes is None:
        shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        return shapes, [int(s) for s in level_start_index.tolist()]
    shapes = [(h, w) for h, w in level_shapes]
    starts = [0]
    for height, width in shapes[:-1]:
        starts.append(starts[-1] + height * width)
    return shapes, starts


IMPLEMENTATIONS = ("auto", "reference", "triton")


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    implementation: str = "auto",
    level_shapes: Sequence[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Multi-scale deformable attention; shapes and semantics (`level_shapes` too) as in `ms_deform_attn_reference`.

    implementation: "reference"; "triton" (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1, Triton's slow
    interpreter); "auto" = "triton" for CUDA tensors when Triton is importable, else "reference".
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    args = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if implementation == "reference" or (implementation == "auto" and not value.is_cuda):
        return ms_deform_attn_reference(*args, level_shapes=level_shapes)
    # imported here: the reference path never pays for importing Triton
    from . import ms_deform_attn_triton as triton_ops

    if not triton_ops.TRITON_AVAILABLE:
        if implementation == "auto":
            return ms_deform_attn_reference(*args, level_shapes=level_shapes)
        raise RuntimeError('implementation="triton" needs the triton package, which is not importable')
    if not value.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f'implementation="triton" on {value.device} tensors runs only in Triton\'s interpreter: set '
            "TRITON_INTERPRET=1 (before importing Triton code), or pass CUDA tensors"
        )
    return triton_ops.ms_deform_attn_triton(*args)


class MSDeformAttn(nn.Module):
    """Deformable attention: each query samples `n_points` per head and level around its reference point.

    Submodule names (sampling_offsets, attention_weights, value_proj, output_proj) follow Deformable DETR,
    so its and Mask2Former's checkpoints load unchanged.
    """

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
        """Deformable DETR's initialisation: head h looks along angle 2 pi h / heads, point k at k + 1 pixels."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        # scaled so the larger component is +-1: the first point lands on a neighbouring pixel
        directions = directions / directions.abs().amax(-1, keepdim=True)
        distances = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        bias = directions.view(self.n_heads, 1, 1, 2).expand(-1, self.n_levels, self.n_points, -1) * distances
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
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
        level_shapes: Sequence[tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        """query N x Q x C, reference_points N x Q x L x 2 normalised (x, y), input_flatten N x S x C,
        input_padding_mask N x S (True = padding) -> N x Q x C. `level_shapes`: see `ms_deform_attn_reference`."""
        batch, queries, _ = query.shape
        if reference_points.shape[-2:] != (self.n_levels, 2):
            raise ValueError(
                f"reference_points must be N x Q x {self.n_levels} x 2, got {tuple(reference_points.shape)}"
            )
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(batch, input_flatten.shape[1], self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(batch, queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(batch, queries, self.n_heads, self.n_levels, self.n_points)
        # offsets are in pixels of each level; (W, H) turns them into the normalised (x, y) frame
        size_xy = input_spatial_shapes.flip(-1).to(offsets.dtype)
        locations = reference_points[:, :, None, :, None, :] + offsets / size_xy[None, None, None, :, None, :]
        out = ms_deform_attn(
            value, input_spatial_shapes, input_level_start_index, locations, weights, level_shapes=level_shapes
        )
        return self.output_proj(out)
