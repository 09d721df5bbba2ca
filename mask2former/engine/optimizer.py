"""Optimizer, gradient clipping and LR schedule builders (Mask2Former's recipe: AdamW, poly LR, no decay on
norms/embeddings, the full model's gradient norm clipped).

Layer-wise LR decay (SOLVER.LAYER_DECAY, the BEiT / ConvNeXt segmentation recipes): each backbone parameter has a
layer id (`layer_id`) and its LR is BASE_LR x BACKBONE_MULTIPLIER x LAYER_DECAY ** (num_layers + 1 - id), so the
last layer keeps the backbone LR and the embeddings get the smallest; the head's parameters are not decayed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

import torch
from fvcore.common.config import CfgNode
from torch import nn

from ..config import ConfigError

_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm2d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
# Parameters treated as embeddings (no decay), wherever they live: Swin's bias tables and position embeddings.
_EMBED_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "rpb")


# Layer ids (mmsegmentation's and BEiT's layer-decay constructors): "vit" counts the token and patch embeddings as
# layer 0 and block i as i + 1; "convnext" is stage-wise, the stem and every downsampling layer 0 and stage s s + 1.
# "eomt" (tue-mps/eomt's configure_optimizers) is "vit" with the embeddings beside block 0 (layer 1), counted over
# all blocks but the last, which keeps the full LR. Anything else in the backbone (a neck, a final norm) is layer
# num_layers + 1, undecayed.
LAYER_KINDS = ("vit", "eomt", "convnext")
_VIT_EMBED = re.compile(r"(?:^|\.)(?:patch_embed|cls_token|pos_embed|reg_token|mask_token|norm_pre)(?:\.|$)")
_VIT_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_CONVNEXT_STEM = re.compile(r"(?:^|\.)(?:stem[._]|stages[._]\d+\.downsample\.)")
_CONVNEXT_STAGE = re.compile(r"(?:^|\.)stages[._](\d+)\.")


def layer_id(name: str, num_layers: int, kind: str) -> int:
    """Layer id of the backbone parameter `name` (its name inside the backbone) for layer-wise LR decay."""
    if kind in ("vit", "eomt"):
        block = _VIT_BLOCK.search(name)
        if block:
            return int(block.group(1)) + 1
        if _VIT_EMBED.search(name):
            return 0 if kind == "vit" else 1
        return num_layers + 1
    if kind == "convnext":
        if _CONVNEXT_STEM.search(name):
            return 0
        stage = _CONVNEXT_STAGE.search(name)
        return int(stage.group(1)) + 1 if stage else num_layers + 1
    raise ValueError(f"layer_id: kind {kind!r} is not one of {LAYER_KINDS}")


def backbone_layers(backbone: nn.Module | None) -> tuple[str, int]:
    """(kind, number of layers) of a backbone that has a layer-decay rule: a ViTPyramid's blocks, a timm ConvNeXt's
    stages, EoMT's plain timm ViT encoder (its blocks but the last); a ConfigError naming SOLVER.LAYER_DECAY for any
    other."""
    from timm.models import is_model_in_modules
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    from ..modeling.backbone.timm_backbone import TimmBackbone
    from ..modeling.backbone.vit_pyramid import ViTPyramid

    if isinstance(backbone, ViTPyramid):
        return "vit", len(backbone.vit.blocks)
    if isinstance(backbone, TimmBackbone) and is_model_in_modules(backbone.timm_name, ["convnext"]):
        stages = {match.group(1) for name, _ in backbone.named_parameters() if (match := _CONVNEXT_STAGE.search(name))}
        return "convnext", len(stages)
    if isinstance(backbone, (VisionTransformer, Eva)):
        return "eomt", len(backbone.blocks) - 1
    raise ConfigError(
        f"SOLVER.LAYER_DECAY: the backbone {type(backbone).__name__} has no layer-wise rule; use it with "
        "MODEL.BACKBONE.NAME ViTPyramid, a timm ConvNeXt (TimmBackbone) or EoMT, or set SOLVER.LAYER_DECAY 1.0"
    )


def layer_scales(model: nn.Module, layer_decay: float, num_layers: int = 0) -> Callable[[str], float]:
    """LAYER_DECAY ** (num_layers + 1 - layer id) for a backbone parameter's name inside the backbone; `num_layers`
    0 takes the backbone's own count (SOLVER.LAYER_DECAY_NUM_LAYERS)."""
    if not layer_decay > 0:
        raise ConfigError(f"SOLVER.LAYER_DECAY {layer_decay}: give a factor > 0 (1.0 turns the decay off)")
    kind, own = backbone_layers(getattr(model, "backbone", None))
    if num_layers == 0:
        num_layers = own
    elif num_layers < own:
        raise ConfigError(
            f"SOLVER.LAYER_DECAY_NUM_LAYERS {num_layers} is below the backbone's {own} layers: give 0 (its own "
            f"count) or at least {own}"
        )

    def scale(name: str) -> float:
        return layer_decay ** (num_layers + 1 - layer_id(name, num_layers, kind))

    return scale


def parameter_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
    backbone_multiplier: float = 0.1,
    layer_decay: float = 1.0,
    layer_decay_num_layers: int = 0,
) -> list[dict]:
    """One group per parameter-kind: backbone LR scaled (and decayed by layer, with `layer_decay` != 1), norms and
    embeddings with their own decay."""
    scale = None if layer_decay == 1.0 else layer_scales(model, layer_decay, layer_decay_num_layers)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{name}" if module_name else name
            lr = base_lr * backbone_multiplier if full_name.startswith("backbone.") else base_lr
            if scale is not None and full_name.startswith("backbone."):
                lr = lr * scale(full_name[len("backbone.") :])
            if isinstance(module, _NORM_TYPES):
                decay = weight_decay_norm
            elif isinstance(module, nn.Embedding) or any(key in name for key in _EMBED_NAMES):
                decay = weight_decay_embed
            else:
                decay = weight_decay
            groups.setdefault((lr, decay), []).append(param)
    return [
        {"params": params, "lr": lr, "initial_lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()
    ]


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    solver = cfg.SOLVER
    groups = parameter_groups(
        model,
        solver.BASE_LR,
        solver.WEIGHT_DECAY,
        solver.WEIGHT_DECAY_NORM,
        solver.WEIGHT_DECAY_EMBED,
        solver.BACKBONE_MULTIPLIER,
        solver.LAYER_DECAY,
        solver.LAYER_DECAY_NUM_LAYERS,
    )
    if solver.OPTIMIZER == "ADAMW":
        return torch.optim.AdamW(groups, lr=solver.BASE_LR, betas=tuple(solver.BETAS))
    if solver.OPTIMIZER == "SGD":
        return torch.optim.SGD(groups, lr=solver.BASE_LR, momentum=solver.MOMENTUM)
    raise ConfigError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {solver.OPTIMIZER!r}")


CLIP_TYPES = ("full_model", "norm", "value")


def clip_gradients(parameters: Iterable[nn.Parameter], clip_type: str, clip_value: float, norm_type: float) -> None:
    """SOLVER.CLIP_GRADIENTS on the gradients of `parameters`, in place.

    "full_model" (Mask2Former's train_net): the gradients of all parameters scaled together so that their joint
    `norm_type`-norm is at most `clip_value`; a `clip_value` <= 0 clips nothing, as there. "norm" (detectron2): the
    same rule for each parameter on its own. "value" (detectron2): every gradient entry clamped to
    [-clip_value, clip_value].
    """
    grads = [param for param in parameters if param.grad is not None]
    if clip_type == "full_model":
        if clip_value > 0 and grads:
            torch.nn.utils.clip_grad_norm_(grads, clip_value, norm_type)
    elif clip_type == "norm":
        for param in grads:
            torch.nn.utils.clip_grad_norm_(param, clip_value, norm_type)
    elif clip_type == "value":
        torch.nn.utils.clip_grad_value_(grads, clip_value)
    else:
        raise ConfigError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE {clip_type!r}: use {', '.join(CLIP_TYPES)}")


def build_gradient_clipper(cfg: CfgNode) -> Callable[[Iterable[nn.Parameter]], None] | None:
    """The clipping SOLVER.CLIP_GRADIENTS asks for, as a function of the parameters (None when disabled); the
    settings are checked here, so a bad one is refused before training starts."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return None
    if clip.CLIP_TYPE not in CLIP_TYPES:
        raise ConfigError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE {clip.CLIP_TYPE!r}: use {', '.join(CLIP_TYPES)}")
    norm_type = float(clip.NORM_TYPE)
    if clip.CLIP_TYPE != "value" and not norm_type > 0:
        raise ConfigError(f"SOLVER.CLIP_GRADIENTS.NORM_TYPE {clip.NORM_TYPE}: give the p of the norm (> 0, or inf)")
    if clip.CLIP_TYPE != "full_model" and not clip.CLIP_VALUE > 0:
        raise ConfigError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE {clip.CLIP_VALUE} with CLIP_TYPE {clip.CLIP_TYPE!r} would zero every "
            "gradient: give a value > 0 (or ENABLED False)"
        )
    clip_type, clip_value = clip.CLIP_TYPE, float(clip.CLIP_VALUE)

    def clipper(parameters: Iterable[nn.Parameter]) -> None:
        clip_gradients(parameters, clip_type, clip_value, norm_type)

    return clipper


def poly_lr_factor(
    iteration: int,
    max_iter: int,
    power: float = 0.9,
    warmup_iters: int = 0,
    warmup_factor: float = 1.0,
    warmup_method: str = "linear",
    constant_ending: float = 0.0,
) -> float:
    """LR multiplier at `iteration`: warm-up factor x (1 - iteration / max_iter) ** power."""
    warmup = 1.0
    if iteration < warmup_iters:
        if warmup_method == "linear":
            alpha = iteration / warmup_iters
            warmup = warmup_factor * (1 - alpha) + alpha
        elif warmup_method == "constant":
            warmup = warmup_factor
        else:
            raise ConfigError(f"SOLVER.WARMUP_METHOD must be 'linear' or 'constant', got {warmup_method!r}")
    decay = math.pow(max(0.0, 1.0 - iteration / max_iter), power)
    if constant_ending > 0 and warmup == 1.0 and decay < constant_ending:
        return constant_ending
    return warmup * decay


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    solver = cfg.SOLVER  # SOLVER.LR_SCHEDULER_NAME has one value, WarmupPolyLR (mask2former/config/compatibility.py)

    def factor(iteration: int) -> float:
        return poly_lr_factor(
            iteration,
            solver.MAX_ITER,
            solver.POLY_LR_POWER,
            solver.WARMUP_ITERS,
            solver.WARMUP_FACTOR,
            solver.WARMUP_METHOD,
            solver.POLY_LR_CONSTANT_ENDING,
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
