"""SeMask-Swin: Swin with a semantic layer after every stage, returning each stage's class map beside its features.

The semantic layer (`layers.{i}.semantic_layer`, as in the official SeMask-Mask2Former code) runs after
the stage's blocks and before its patch merging, so both the stage's output and the next stage see the
re-weighted features. forward returns res2..res5 (as Swin) and, for each of them, the stage's class map
(B x K x H_i x W_i) under `class_map_key(name)` ("class_map_res2", ...); heads read only their IN_FEATURES,
and `BranchMaskFormerHead` (semask/head.py) turns the class maps into the semantic prior, as the official head.

Which stages attend globally (no windows) is `global_stages`; `official_global_stages` is the official rule.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from fvcore.common.config import CfgNode

from mask2former.config import ConfigError
from mask2former.modeling.backbone.base import BACKBONE_REGISTRY
from mask2former.modeling.backbone.swin import (
    D2SwinTransformer,
    checkpoint_filter_fn,
    read_weights,
    swin_options,
    unwrap_state_dict,
)

from .semantic_layer import RES_INITS, SemanticLayer

logger = logging.getLogger(__name__)

_STAGE_NAMES = ("res2", "res3", "res4", "res5")
# Pixel decoders of the official SeMask-FAPN code base, whose backbone makes stages 2 and 3 global.
FAPN_PIXEL_DECODERS = ("PixelFANDecoder", "MSDeformAttnPixelFANDecoder")


def class_map_key(name: str) -> str:
    """The key under which the backbone returns stage `name`'s class map."""
    return f"class_map_{name}"


def official_global_stages(num_classes: int, pixel_decoder_name: str) -> tuple[int, ...]:
    """The stages whose semantic layer attends over the whole map in the official code.

    SeMask-Mask2Former (semask_swin.py, BasicLayer): the last stage (3) when the dataset has 150 classes
    (ADE20K), none otherwise. SeMask-FAPN (its own semask_swin.py): stages 2 and 3 at any class count; that code
    base is the one whose configs name a FaPN pixel decoder (`FAPN_PIXEL_DECODERS`).
    """
    if pixel_decoder_name in FAPN_PIXEL_DECODERS:
        return (2, 3)
    return (3,) if num_classes == 150 else ()


@BACKBONE_REGISTRY.register()
class D2SeMaskSwinTransformer(D2SwinTransformer):
    """Swin + semantic layers. forward -> {res2..res5 (as Swin), class_map_key(name): B x K x H_i x W_i}."""

    def __init__(
        self,
        *,
        num_classes: int,
        sem_window_size: int = 12,
        num_sem_blocks: int = 1,
        global_stages: Sequence[int] = (),
        mask_padding: bool = False,
        res_proj_init: str = "zeros",
        **swin: Any,
    ) -> None:
        super().__init__(**swin)
        bad = [i for i in global_stages if i not in range(4)]
        if bad:
            raise ValueError(f"global_stages {list(global_stages)}: stage indices are 0..3")
        self.num_classes = num_classes
        self.global_stages = tuple(sorted(set(global_stages)))
        embed_dim = self.patch_embed.proj.out_channels
        for i, stage in enumerate(self.layers):
            stage.semantic_layer = SemanticLayer(
                embed_dim * 2**i,
                num_classes,
                sem_window_size,
                num_sem_blocks,
                global_attention=i in self.global_stages,
                mask_padding=mask_padding,
                res_init=res_proj_init,
            )

    @classmethod
    def from_config(cls, cfg: CfgNode) -> D2SeMaskSwinTransformer:
        """MODEL.SWIN.* (SEM_WINDOW_SIZE, NUM_SEM_BLOCKS for the semantic layers), NUM_CLASSES, MODEL.SEMASK.*."""
        return cls(**semask_options(cfg), **swin_options(cfg))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.dim() != 4:
            raise ValueError(f"SeMask-Swin takes N x C x H x W images, got shape {tuple(images.shape)}")
        x, h, w = self.embed(images)
        outputs: dict[str, torch.Tensor] = {}
        for i, stage in enumerate(self.layers):
            x = stage.run_blocks(x, h, w)
            class_map, x = stage.semantic_layer(x, h, w)
            stage_out, x, next_h, next_w = stage.merge(x, h, w)
            name = _STAGE_NAMES[i]
            if name in self._out_features:
                normed = getattr(self, f"norm{i}")(stage_out)
                outputs[name] = normed.view(-1, h, w, stage_out.shape[-1]).permute(0, 3, 1, 2).contiguous()
                outputs[class_map_key(name)] = class_map
            h, w = next_h, next_w
        return outputs

    @staticmethod
    def convert_pretrained(state_dict: dict, model: D2SeMaskSwinTransformer) -> dict[str, torch.Tensor]:
        """`semask_checkpoint_filter_fn`: a backbone checkpoint's tensors in this backbone's key layout."""
        return semask_checkpoint_filter_fn(state_dict, model)

    @staticmethod
    def load_pretrained(model: D2SeMaskSwinTransformer, path: str | Path) -> dict[str, list[str]]:
        """`load_semask_pretrained` (the hook `MODEL.BACKBONE.WEIGHTS` uses)."""
        return load_semask_pretrained(model, path)


def semask_options(cfg: CfgNode) -> dict[str, Any]:
    """D2SeMaskSwinTransformer's SeMask keywords from the config; a value it cannot use is a ConfigError."""
    sem = cfg.MODEL.SEMASK
    if cfg.MODEL.SWIN.NUM_SEM_BLOCKS < 1:
        raise ConfigError(f"MODEL.SWIN.NUM_SEM_BLOCKS {cfg.MODEL.SWIN.NUM_SEM_BLOCKS}: SeMask-Swin needs >= 1")
    if cfg.MODEL.SWIN.SEM_WINDOW_SIZE < 1:
        raise ConfigError(f"MODEL.SWIN.SEM_WINDOW_SIZE {cfg.MODEL.SWIN.SEM_WINDOW_SIZE}: give a window >= 1")
    if sem.GLOBAL_STAGES is None:
        stages = official_global_stages(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME)
    else:
        stages = sem.GLOBAL_STAGES
        if not isinstance(stages, list | tuple) or any(not isinstance(i, int) or i not in range(4) for i in stages):
            raise ConfigError(
                f"MODEL.SEMASK.GLOBAL_STAGES {stages!r}: give a list of stage indices 0..3 (e.g. [3], [] for none), "
                "or null for the official rule"
            )
    if sem.RES_PROJ_INIT not in RES_INITS:
        raise ConfigError(f"MODEL.SEMASK.RES_PROJ_INIT {sem.RES_PROJ_INIT!r}: choose one of {', '.join(RES_INITS)}")
    return {
        "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        "sem_window_size": cfg.MODEL.SWIN.SEM_WINDOW_SIZE,
        "num_sem_blocks": cfg.MODEL.SWIN.NUM_SEM_BLOCKS,
        "global_stages": tuple(stages),
        "mask_padding": bool(sem.MASK_PADDING),
        "res_proj_init": sem.RES_PROJ_INIT,
    }


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
    """SeMask-Swin-L 384: Swin-L (C 192, depths 2-2-18-2, heads 6-12-24-48, window 12) + semantic window 12
    (global stages: none unless given; `official_global_stages` gives the official rule)."""
    defaults = {
        "embed_dim": 192,
        "depths": (2, 2, 18, 2),
        "num_heads": (6, 12, 24, 48),
        "window_size": 12,
        "pretrain_img_size": 384,
        "sem_window_size": 12,
    }
    return D2SeMaskSwinTransformer(num_classes=num_classes, **{**defaults, **kwargs})
