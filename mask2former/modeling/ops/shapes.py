"""The shapes multi-scale deformable attention takes, checked alike by the reference and the Triton kernels."""

from __future__ import annotations

import torch


def check_shapes(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> None:
    if value.dim() != 4 or sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "expected value N x S x heads x dim and sampling_locations N x Q x heads x L x P x 2, got "
            f"{tuple(value.shape)} and {tuple(sampling_locations.shape)}"
        )
    levels = sampling_locations.shape[3]
    if spatial_shapes.shape != (levels, 2) or level_start_index.shape != (levels,):
        raise ValueError(
            f"{levels} levels in sampling_locations but spatial_shapes {tuple(spatial_shapes.shape)} "
            f"and level_start_index {tuple(level_start_index.shape)}"
        )
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights {tuple(attention_weights.shape)} do not match sampling_locations "
            f"{tuple(sampling_locations.shape)}"
        )
    if value.shape[0] != sampling_locations.shape[0] or value.shape[2] != sampling_locations.shape[2]:
        raise ValueError(
            f"batch/heads differ: value {tuple(value.shape)}, sampling_locations {tuple(sampling_locations.shape)}"
        )
