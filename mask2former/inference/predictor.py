"""A model ready to predict: the config's model with a checkpoint's weights, refusing any mismatch, and the
check that its probabilities are finite.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from fvcore.common.config import CfgNode
from torch import nn

from ..errors import UserError
from ..io.checkpoints import read_checkpoint_with_metadata
from ..modeling.weights import check_same_classes, load_model_weights

logger = logging.getLogger(__name__)


# ---- checkpoints --------------------------------------------------------------------------------------------------


def load_prediction_model(cfg: CfgNode, path: str, device: str | torch.device, allow_pickle: bool = False) -> nn.Module:
    """The config's model with a checkpoint's weights, in eval mode on `device`. Refuses (naming the file) a
    checkpoint of another architecture, size or class count: at prediction time nothing may be re-initialised."""
    from ..modeling.build import build_model

    checkpoint = read_checkpoint_with_metadata(path, allow_pickle)
    state = checkpoint.tensors
    model = build_model(cfg)
    report = load_model_weights(
        model, state, strict=True, source=str(path), matching_heuristics=checkpoint.matching_heuristics
    )
    check_same_classes(report, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, str(path))
    return model.to(device).eval()


class NonFiniteProbabilitiesError(UserError):
    """The model gave NaN or Inf probabilities for an image; the message names the image and the checkpoints."""


def check_finite(probs: torch.Tensor, image: dict, weights: Sequence[str]) -> None:
    """Refuse (naming the image) a probability map with NaN or Inf values: such numbers are never written."""
    if not bool(torch.isfinite(probs).all()):
        bad = int((~torch.isfinite(probs)).sum())
        raise NonFiniteProbabilitiesError(
            f"image id {image['id']} ({image['file_name']}): the model gave {bad} non-finite (NaN/Inf) "
            f"probabilities with {', '.join(map(str, weights))}: a diverged checkpoint, or try without --amp; "
            "nothing was written for it"
        )
