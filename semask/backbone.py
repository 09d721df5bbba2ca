"""SeMask-Swin: Swin with a semantic layer after every stage, returning a semantic prior beside the features.

The semantic layer (`layers.{i}.semantic_layer`, as in the official SeMask-Mask2Former code) runs after
the stage's blocks and before its patch merging, so both the stage's output and the next stage see the
re-weighted features. Each stage's class map (B x K x H_i x W_i) is upsampled to the stride-4 grid and
the maps are summed into the semantic prior, returned under `SEMANTIC_PRIOR` (B x K x H/4 x W/4) next
to res2..res5; heads read only their IN_FEATURES, so the prior is invisible to them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode

from mask2former.modeling.backbone.base import BACKBONE_REGISTRY
from mask2former.modeling.backbone.swin import (
    D2SwinTransformer,
    checkpoint_filter_fn,
    read_weights,
    swin_options,
    unwrap_state_dict,
)

from .semantic_layer import SemanticLayer

logger = logging.getLogger(__name__)

SEMANTIC_PRIOR = "semantic_prior"
_STAGE_NAMES = ("res2", "res3", "res4", "res5")


@BACKBONE_REGISTRY.register()
class D2SeMaskSwinTransformer(D2SwinTransformer):
    """Swin + semantic layers. forward -> {res2..res5 (as Swin), SEMANTIC_PRIOR: B x K x H/4 x W/4}."""

    def __init__(self, *, num_classes: int, sem_window_size: int = 12, num_sem_blocks: int = 1, **swin: Any) -> None:
        super().__init__(**swin)
        self.num_classes = num_classes
        embed_dim = self.patch_embed.proj.out_channels
        for i, stage in enumerate(self.layers):
            stage.semantic_layer = SemanticLayer(embed_dim * 2**i, num_classes, sem_window_size, num_sem_blocks)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> D2SeMaskSwinTransformer:
        """MODEL.SWIN.* (with SEM_WINDOW_SIZE, NUM_SEM_BLOCKS for the semantic layers), NUM_CLASSES for their maps."""
        return cls(
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            sem_window_size=cfg.MODEL.SWIN.SEM_WINDOW_SIZE,
            num_sem_blocks=cfg.MODEL.SWIN.NUM_SEM_BLOCKS,
            **swin_options(cfg),
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.dim() != 4:
            raise ValueError(f"SeMask-Swin takes N x C x H x W images, got shape {tuple(images.shape)}")
        x, h, w = self.embed(images)
        outputs: dict[str, torch.Tensor] = {}
        prior = None
        for i, stage in enumerate(self.layers):
            x = stage.run_blocks(x, h, w)
            class_map, x = stage.semantic_layer(x, h, w)
            if prior is None:
                prior = class_map
            else:
                prior = prior + F.interpolate(class_map, size=prior.shape[-2:], mode="bilinear", align_corners=False)
            stage_out, x, next_h, next_w = stage.merge(x, h, w)
            name = _STAGE_NAMES[i]
            if name in self._out_features:
                normed = getattr(self, f"norm{i}")(stage_out)
                outputs[name] = normed.view(-1, h, w, stage_out.shape[-1]).permute(0, 3, 1, 2).contiguous()
            h, w = next_h, next_w
        outputs[SEMANTIC_PRIOR] = prior
        return outputs

    @staticmethod
    def convert_pretrained(state_dict: dict, model: D2SeMaskSwinTransformer) -> dict[str, torch.Tensor]:
        """`semask_checkpoint_filter_fn`: a backbone checkpoint's tensors in this backbone's key layout."""
        return semask_checkpoint_filter_fn(state_dict, model)

    @staticmethod
    def load_pretrained(model: D2SeMaskSwinTransformer, path: str | Path) -> dict[str, list[str]]:
        """`load_semask_pretrained` (the hook `MODEL.BACKBONE.WEIGHTS` uses)."""
        return load_semask_pretrained(model, path)


def semask_checkpoint_filter_fn(state_dict: dict, model: D2SeMaskSwinTransformer) -> dict[str, torch.Tensor]:
    """ImageNet Swin weights (official / timm) or an official SeMask model's backbone -> this backbone's keys.

    The Swin part goes through Swin's conversion; semantic-layer keys (`layers.{i}.semantic_layer.*`, the
    official names) are kept, except the class-map projections (`mlp_cls_q`, `mlp_cls_k`) when the
    checkpoint was trained for another number of classes (ADE20K: 150): those start fresh.
    """
    state_dict = unwrap_state_dict(state_dict)
    semantic = {k: v for k, v in state_dict.items() if ".semantic_layer." in k}
    converted = checkpoint_filter_fn({k: v for k, v in state_dict.items() if k not in semantic}, model)
    own = model.state_dict()
    for key, value in semantic.items():
        if key in own and own[key].shape != value.shape and ".mlp_cls_" in key:
            logger.info(
                "SeMask weights: %s has %d classes, the model %d: re-initialised", key, len(value), len(own[key])
            )
            continue
        converted[key] = value
    return converted


def load_semask_pretrained(model: D2SeMaskSwinTransformer, path: str | Path) -> dict[str, list[str]]:
    """Load Swin or SeMask backbone weights with strict=False; returns {"missing", "unexpected"}."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"SeMask-Swin weights not found: {path}")
    result = model.load_state_dict(semask_checkpoint_filter_fn(read_weights(path), model), strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    fresh = sorted({k.split(".semantic_layer.")[0] for k in missing if ".semantic_layer." in k})
    logger.info("SeMask-Swin weights %s: semantic layers of %s start fresh", path, fresh or "no stage")
    if unexpected:
        logger.warning("SeMask-Swin weights %s: unexpected keys %s", path, unexpected)
    return {"missing": missing, "unexpected": unexpected}


def semask_swin_large(num_classes: int, **kwargs: Sequence | Any) -> D2SeMaskSwinTransformer:
    """SeMask-Swin-L 384: Swin-L (C 192, depths 2-2-18-2, heads 6-12-24-48, window 12) + semantic window 12."""
    defaults = {
        "embed_dim": 192,
        "depths": (2, 2, 18, 2),
        "num_heads": (6, 12, 24, 48),
        "window_size": 12,
        "pretrain_img_size": 384,
        "sem_window_size": 12,
    }
    return D2SeMaskSwinTransformer(num_classes=num_classes, **{**defaults, **kwargs})
