"""Optimizer, gradient clipping and LR schedule builders (Mask2Former's recipe: AdamW, poly LR, no decay on
norms/embeddings, the full model's gradient norm clipped)."""

from __future__ import annotations

import math
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


def parameter_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
    backbone_multiplier: float = 0.1,
) -> list[dict]:
    """One group per parameter-kind: backbone LR scaled, norms and embeddings with their own decay."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{name}" if module_name else name
            lr = base_lr * backbone_multiplier if full_name.startswith("backbone.") else base_lr
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
