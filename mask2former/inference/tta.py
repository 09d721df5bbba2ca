"""Test-time augmentation: class probabilities for images, with views, batching and checkpoint ensembles.

How the probabilities of one image are made (the same rule for one view or many, one checkpoint or many):
  1. views: TEST.AUG off: one view, short side INPUT.MIN_SIZE_TEST capped by INPUT.MAX_SIZE_TEST. TEST.AUG on:
     every short side in TEST.AUG.MIN_SIZES (capped by TEST.AUG.MAX_SIZE), each also flipped when TEST.AUG.FLIP.
  2. each view goes through the model, whose K class scores (sum over queries of softmax class probability x
     mask sigmoid, computed at the padded view size and cropped to the view) are resized bilinearly
     (align_corners=False) to the output size: the image size, or a fixed size such as 256x256;
  3. a flipped view's scores are flipped back, then divided by their sum over the K classes (probabilities);
  4. the views' probabilities are averaged with equal weights: the checkpoint's prediction;
  5. several checkpoints of the same architecture: their predictions are averaged with weights w_i / sum(w).
Batching groups views of the same scale whose padded sizes (to the model's size divisibility) agree, so each
view is padded exactly as it would be alone: batched results equal one-image results within float tolerance.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from fvcore.common.config import CfgNode
from torch import nn

from ..data import transforms as T
from ..modeling.meta_arch import padded_size

logger = logging.getLogger(__name__)

View = tuple[int, bool]  # (short side, flip)


def inference_views(cfg: CfgNode) -> list[View]:
    """(short side, flip) for every view: TEST.AUG when enabled, else INPUT.MIN_SIZE_TEST unflipped."""
    if not cfg.TEST.AUG.ENABLED:
        return [(cfg.INPUT.MIN_SIZE_TEST, False)]
    flips = (False, True) if cfg.TEST.AUG.FLIP else (False,)
    return [(size, flip) for size in cfg.TEST.AUG.MIN_SIZES for flip in flips]


def inference_max_size(cfg: CfgNode) -> int:
    """The long-side cap of the views: TEST.AUG.MAX_SIZE with TTA, else INPUT.MAX_SIZE_TEST (as evaluation)."""
    return cfg.TEST.AUG.MAX_SIZE if cfg.TEST.AUG.ENABLED else cfg.INPUT.MAX_SIZE_TEST


def to_model_input(
    image_bgr: np.ndarray,
    short_side: int,
    max_size: int,
    flip: bool,
    image_format: str,
    output_size: tuple[int, int] | None = None,
) -> dict:
    """A mapper-style input dict for one view of a BGR uint8 image (`transforms.view_for_test`, the validation
    mapper's preprocessing); the model resizes its scores to `output_size` (default: the image size)."""
    height, width = image_bgr.shape[:2]
    view = T.view_for_test(image_bgr, short_side, max_size, flip, image_format)
    tensor = torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1)))
    out_h, out_w = output_size if output_size else (height, width)
    return {"image": tensor, "height": int(out_h), "width": int(out_w)}


@torch.inference_mode()
def predict_batch(
    models: nn.Module | Sequence[nn.Module],
    images_bgr: Sequence[np.ndarray],
    views: Sequence[View],
    max_size: int,
    image_format: str = "RGB",
    output_sizes: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 1,
    weights: Sequence[float] | None = None,
    amp: bool = False,
) -> list[torch.Tensor]:
    """Per image, K x H x W class probabilities (float32, on the models' device) at its output size
    (default: the image size), made as the module docstring says. `batch_size` is the most views in one
    forward pass; `weights` are the checkpoints' ensemble weights (default: equal); `amp`: bf16 autocast."""
    models = [models] if isinstance(models, nn.Module) else list(models)
    if not models:
        raise ValueError("no model to predict with")
    if weights is not None and (len(weights) != len(models) or min(weights) < 0 or sum(weights) <= 0):
        raise ValueError(f"ensemble weights {list(weights)}: one non-negative weight per model, with a positive sum")
    ensemble_weights = [1.0 / len(models)] * len(models) if weights is None else [w / sum(weights) for w in weights]
    if output_sizes is None:
        output_sizes = [image.shape[:2] for image in images_bgr]
    batch_size = max(1, int(batch_size))
    scales = list(dict.fromkeys(short_side for short_side, _ in views))
    flips = {short_side: [flip for size, flip in views if size == short_side] for short_side in scales}
    totals: list[torch.Tensor | None] = [None] * len(images_bgr)
    for model, ensemble_weight in zip(models, ensemble_weights, strict=True):
        if ensemble_weight == 0:
            continue
        device = next(model.parameters()).device
        divisibility = int(getattr(model, "size_divisibility", 1) or 1)
        sums: list[torch.Tensor | None] = [None] * len(images_bgr)
        for short_side in scales:
            # every (image, flip) view of this scale, grouped by padded size so each is padded as if alone
            groups: dict[tuple[int, int], list[tuple[int, bool, dict]]] = defaultdict(list)
            for index, image in enumerate(images_bgr):
                for flip in flips[short_side]:
                    item = to_model_input(image, short_side, max_size, flip, image_format, output_sizes[index])
                    groups[padded_size(*item["image"].shape[-2:], divisibility)].append((index, flip, item))
            for members in groups.values():
                for start in range(0, len(members), batch_size):
                    chunk = members[start : start + batch_size]
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        results = model([item for _, _, item in chunk])
                    for (index, flip, _), result in zip(chunk, results, strict=True):
                        scores = result["sem_seg"].float()
                        if flip:
                            scores = scores.flip(-1)
                        probs = scores / scores.sum(dim=0, keepdim=True).clamp_min(1e-6)
                        sums[index] = probs if sums[index] is None else sums[index] + probs
        for index, total in enumerate(sums):
            mean = total * (ensemble_weight / len(views))
            totals[index] = mean if totals[index] is None else totals[index] + mean
    return totals


def predict_probabilities(
    model: nn.Module,
    image_bgr: np.ndarray,
    views: list[View],
    max_size: int,
    image_format: str = "RGB",
) -> torch.Tensor:
    """K x H x W class probabilities of one image (float32, on the model's device) averaged over the views."""
    return predict_batch(model, [image_bgr], views, max_size, image_format)[0]
