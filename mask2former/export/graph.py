"""The exported computation: one image in, class scores out, as an nn.Module that torch.onnx can trace.

`ScoresGraph(model)` wraps a built model in eval mode (MaskFormer, SeMaskMaskFormer, EoMT or PerPixelSegmentor)
and computes, for an input "image" (float32 1 x 3 x H x W, pixel values 0..255 in the model's INPUT.FORMAT
order), what inference/tta.py's `predict_batch` gives for one unflipped view of that size with output size = view
size: normalisation ((x - PIXEL_MEAN) / PIXEL_STD), zero padding bottom/right to the model's size divisibility,
backbone and head, the semantic inference of the meta architecture (Mask2Former: softmax class probabilities x
mask sigmoids, summed over queries; per-pixel models: softmax of the logits) on the padded map cropped back to
H x W. The scores are not divided by their sum over the K classes: the caller resizes them to its output size
first and divides after, as the PyTorch path does (inference/tta.py), so that both give the same numbers. Every
size in it follows from the input's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..modeling.eomt.meta_arch import EoMT
from ..modeling.meta_arch import MaskFormer
from ..modeling.per_pixel.decoders import resize_logits
from ..modeling.per_pixel.meta_arch import PerPixelSegmentor


class UnexportableModelError(UserError):
    """A model this exporter cannot put into an ONNX file; the message names the module and what to do."""


class ScoresGraph(nn.Module):
    """image (1 x 3 x H x W float32, 0..255) -> scores (1 x K x H x W float32: the semantic inference's class
    scores, not renormalised over K)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, MaskFormer | EoMT | PerPixelSegmentor):
            raise UnexportableModelError(
                f"the meta architecture {type(model).__name__} has no export path: export a MaskFormer (or a "
                "subclass, such as SeMaskMaskFormer), an EoMT or a PerPixelSegmentor"
            )
        self.model = model.eval()
        self.size_divisibility = int(model.size_divisibility or 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2], image.shape[-1]
        images = self.normalized_padded(image)
        if isinstance(self.model, PerPixelSegmentor):
            scores = self.per_pixel_scores(images, height, width)
        else:
            scores = self.mask_former_scores(image, images)
        return scores[None]

    def normalized_padded(self, image: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std, zero-padded bottom/right to multiples of the size divisibility (as `normalized_batch`)."""
        images = (image - self.model.pixel_mean) / self.model.pixel_std
        step = self.size_divisibility
        # written as multiples of the step, so that a symbolic size stays provably divisible by it
        height, width = image.shape[-2], image.shape[-1]
        padded_h, padded_w = (height + step - 1) // step * step, (width + step - 1) // step * step
        torch._check(padded_h >= height)  # facts the tracer cannot derive for a symbolic size
        torch._check(padded_w >= width)
        return F.pad(images, (0, padded_w - width, 0, padded_h - height))

    def mask_former_scores(self, image: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """K x H x W class scores by the model's own `inference` (no resize: the output size is the view's)."""
        if isinstance(self.model, EoMT):
            outputs = self.model.mask_outputs(images)
        else:
            outputs = self.model.sem_seg_head(self.model.backbone(images))
        if isinstance(outputs, tuple):  # SeMask's head returns its semantic prior beside the outputs
            outputs = outputs[0]
        return self.model.inference([{"image": image[0]}], outputs, images.shape[-2:])[0]["sem_seg"]

    def per_pixel_scores(self, images: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """K x H x W softmax probabilities: `PerPixelSegmentor.inference` for an output size equal to the view's."""
        logits = self.model.sem_seg_head(self.model.backbone(images))["logits"]
        logits = resize_logits(logits, tuple(images.shape[-2:]))
        return F.softmax(logits[0, :, :height, :width].float(), dim=0)
