"""The backbone contract and its registry.

BACKBONE_REGISTRY holds classes with a `from_config(cfg)` classmethod. A backbone is called with
an image batch N x 3 x H x W (H, W divisible by its `size_divisibility`) and returns a dict
{name: N x C x H/stride x W/stride} for each name in `output_shape()`; its `feature_info` lists the
same (name, channels, stride) in order, res2..res5 with strides 4, 8, 16, 32.
"""

from __future__ import annotations

from dataclasses import dataclass

from fvcore.common.config import CfgNode
from fvcore.common.registry import Registry
from torch import nn

from ...utils.registry import lookup

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = __doc__


@dataclass(frozen=True)
class ShapeSpec:
    """One feature map: channels and stride relative to the input."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class: subclasses set `self._out_features`, `self._out_feature_channels`, `..._strides`."""

    _out_features: list[str]
    _out_feature_channels: dict[str, int]
    _out_feature_strides: dict[str, int]

    @property
    def size_divisibility(self) -> int:
        return 32

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(self._out_feature_channels[name], self._out_feature_strides[name])
            for name in self._out_features
        }

    @property
    def feature_info(self) -> list[dict]:
        return [
            {
                "name": name,
                "channels": self._out_feature_channels[name],
                "stride": self._out_feature_strides[name],
            }
            for name in self._out_features
        ]


def build_backbone(cfg: CfgNode) -> Backbone:
    """The backbone named by MODEL.BACKBONE.NAME, built from the config."""
    name = cfg.MODEL.BACKBONE.NAME
    backbone = lookup(BACKBONE_REGISTRY, name, "MODEL.BACKBONE.NAME").from_config(cfg)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone {name!r} built a {type(backbone).__name__}, not a Backbone")
    return backbone
