"""Building a model from a config: importing this module registers every model family (register_all), so the
registry holds every meta architecture the package has, and those of the plug-ins an entry point imported."""

from __future__ import annotations

from fvcore.common.config import CfgNode
from torch import nn

from ..utils.registry import lookup
from . import register_all  # noqa: F401  (fills the registries)
from .meta_arch import META_ARCH_REGISTRY


def build_model(cfg: CfgNode) -> nn.Module:
    """The meta architecture named by MODEL.META_ARCHITECTURE."""
    name = cfg.MODEL.META_ARCHITECTURE
    return lookup(META_ARCH_REGISTRY, name, "MODEL.META_ARCHITECTURE").from_config(cfg)
