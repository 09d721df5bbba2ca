"""Inference: class probabilities for one image, with optional test-time augmentation.

TTA (TEST.AUG): the image is resized to each short side in MIN_SIZES (capped by MAX_SIZE), and
flipped when FLIP; each view's class scores are resized back to the image size, normalised to
probabilities over classes, and averaged.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import nn

from ..data import transforms as T


def inference_views(cfg: CfgNode) -> list[tuple[int, bool]]:
    """(short side, flip) for every view: TEST.AUG when enabled, else INPUT.MIN_SIZE_TEST unflipped."""
    if not cfg.TEST.AUG.ENABLED:
        return [(cfg.INPUT.MIN_SIZE_TEST, False)]
    flips = (False, True) if cfg.TEST.AUG.FLIP else (False,)
    return [(size, flip) for size in cfg.TEST.AUG.MIN_SIZES for flip in flips]


def to_model_input(image_bgr: np.ndarray, short_side: int, max_size: int, flip: bool, image_format: str) -> dict:
    """A mapper-style input dict for one view of a BGR uint8 image."""
    height, width = image_bgr.shape[:2]
    view = image_bgr
    if short_side > 0:
        new_h, new_w = T.resized_shape(height, width, T.resize_scale(height, width, short_side, max_size))
        if (new_h, new_w) != (height, width):
            view = cv2.resize(view, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if flip:
        view = view[:, ::-1]
    view = T.apply_color_transform(np.ascontiguousarray(view), None, image_format)
    tensor = torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1)))
    return {"image": tensor, "height": height, "width": width}


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    image_bgr: np.ndarray,
    views: list[tuple[int, bool]],
    max_size: int,
    image_format: str = "RGB",
) -> torch.Tensor:
    """K x H x W class probabilities (float32, on the model's device) averaged over the views."""
    total = None
    for short_side, flip in views:
        scores = model([to_model_input(image_bgr, short_side, max_size, flip, image_format)])[0]["sem_seg"].float()
        if flip:
            scores = scores.flip(-1)
        probs = scores / scores.sum(dim=0, keepdim=True).clamp_min(1e-6)
        total = probs if total is None else total + probs
    return total / len(views)


def resize_probabilities(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """K x H x W probabilities resized (bilinear) to `size`."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
