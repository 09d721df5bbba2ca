"""Small layers shared by the heads."""

from __future__ import annotations

import torch
from torch import nn


class Conv2d(nn.Conv2d):
    """nn.Conv2d that also applies an optional `norm` submodule and activation (detectron2's layout)."""

    def __init__(self, *args, norm: nn.Module | None = None, activation=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def group_norm(channels: int, norm: str) -> nn.Module | None:
    """GroupNorm(32) for "GN" (fewer groups if the channels do not allow 32), None for ""."""
    if not norm:
        return None
    if norm != "GN":
        raise ValueError(f"unsupported norm {norm!r}; use 'GN' or ''")
    groups = 32
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


def c2_xavier_fill(module: nn.Module) -> None:
    """Kaiming-uniform (a = 1) weights and zero bias: detectron2's init for these convs."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
