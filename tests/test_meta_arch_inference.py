"""MaskFormer's semantic inference: SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE as in Mask2Former."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import REPO, TINY_MODEL

from mask2former.config import load_config
from mask2former.modeling.build import build_model


def _model(before: bool) -> torch.nn.Module:
    opts = [*TINY_MODEL, "MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE", str(before)]
    torch.manual_seed(0)
    return build_model(load_config(str(REPO / "configs" / "quickstart.yaml"), opts)).eval()


def test_postprocessing_before_inference_resizes_the_mask_logits_first() -> None:
    queries, classes = 6, 11
    generator = torch.Generator().manual_seed(1)
    outputs = {
        "pred_logits": torch.randn(1, queries, classes + 1, generator=generator),
        "pred_masks": torch.randn(1, queries, 8, 8, generator=generator) * 4,
    }
    item = {"image": torch.zeros(3, 24, 32, dtype=torch.uint8), "height": 48, "width": 64}
    padded = (32, 32)
    after = _model(False).inference([item], outputs, padded)[0]["sem_seg"]
    before = _model(True).inference([item], outputs, padded)[0]["sem_seg"]
    assert after.shape == before.shape == (classes, 48, 64)

    # Written out from Mask2Former's MaskFormer.forward: upsample to the padded size, crop to the image, then
    # either combine and resize the class scores, or resize the mask logits and combine at the output size.
    masks = F.interpolate(outputs["pred_masks"], size=padded, mode="bilinear", align_corners=False)[0, :, :24, :32]
    probs = outputs["pred_logits"][0].softmax(-1)[:, :-1]
    combined = torch.einsum("qc,qhw->chw", probs, masks.sigmoid())
    expected_after = F.interpolate(combined[None], size=(48, 64), mode="bilinear", align_corners=False)[0]
    resized = F.interpolate(masks[None], size=(48, 64), mode="bilinear", align_corners=False)[0]
    expected_before = torch.einsum("qc,qhw->chw", probs, resized.sigmoid())
    torch.testing.assert_close(after, expected_after)
    torch.testing.assert_close(before, expected_before)
    assert (after - before).abs().max() > 1e-3  # the two orders differ (sigmoid is not linear)
