"""PerPixelSegmentor: backbone -> per-pixel decoder -> K class logits per pixel (UPerNet, FPN, DeepLabV3+, UNet++,
SegFormer), the peer teams' models, in the same pipeline as MaskFormer.

Inputs, normalisation (MODEL.PIXEL_MEAN / PIXEL_STD in INPUT.FORMAT's order) and padding are MaskFormer's; so is the
output, one {"sem_seg": K x height x width} per image, here the softmax class probabilities. Evaluation, test-time
augmentation, predict, ensemble_crf, pseudo_label and the viewer take it unchanged. Training pads labels with
IGNORE_VALUE; an auxiliary FCN head (MODEL.PER_PIXEL.AUX_*) is added when the decoder has no auxiliary output of its
own. Checkpoints: `backbone.*` (MODEL.BACKBONE.WEIGHTS loads there through the backbone's key conversion),
`sem_seg_head.*` (the decoder), `aux_head.*`; the modules named `classifier` hold everything per class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import nn

from ...config import ConfigError
from ..backbone.base import Backbone, build_backbone
from ..meta_arch import META_ARCH_REGISTRY, normalized_batch, pad_to_divisible
from .criterion import PerPixelCriterion
from .decoders import FCNAuxHead, build_per_pixel_decoder, resize_logits


def is_class_head_key(key: str) -> bool:
    """A state key of a module whose outputs are per class (re-initialised when the class count differs)."""
    return any(part == "classifier" or part.endswith("_classifier") for part in key.split(".")[:-1])


@META_ARCH_REGISTRY.register()
class PerPixelSegmentor(nn.Module):
    """A per-pixel segmentation model (see the module doc)."""

    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        aux_head: nn.Module | None,
        criterion: PerPixelCriterion,
        num_classes: int,
        pixel_mean: list[float],
        pixel_std: list[float],
        size_divisibility: int = 32,
        ignore_value: int = 255,
        image_format: str = "RGB",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.aux_head = aux_head
        self.criterion = criterion
        self.num_classes = num_classes
        self.size_divisibility = max(size_divisibility, backbone.size_divisibility)
        self.ignore_value = ignore_value
        self.image_format = image_format
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> PerPixelSegmentor:
        pp = cfg.MODEL.PER_PIXEL
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        decoder = build_per_pixel_decoder(cfg, shapes)
        aux_head = None
        if pp.AUX_WEIGHT > 0 and not decoder.has_aux_output:
            if pp.AUX_IN_FEATURE not in shapes:
                raise ConfigError(
                    f"MODEL.PER_PIXEL.AUX_IN_FEATURE {pp.AUX_IN_FEATURE!r} is not a backbone output "
                    f"({sorted(shapes)}); name one of them, or set MODEL.PER_PIXEL.AUX_WEIGHT 0"
                )
            channels = shapes[pp.AUX_IN_FEATURE].channels
            aux_head = FCNAuxHead(pp.AUX_IN_FEATURE, channels, pp.AUX_CHANNELS, num_classes, pp.DROPOUT)
        num_aux = 1 if (aux_head is not None or decoder.has_aux_output) else 0
        return cls(
            backbone=backbone,
            sem_seg_head=decoder,
            aux_head=aux_head,
            criterion=PerPixelCriterion.from_config(cfg, num_aux=num_aux),
            num_classes=num_classes,
            pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
            pixel_std=list(cfg.MODEL.PIXEL_STD),
            ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            image_format=cfg.INPUT.FORMAT,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def class_head_keys(self) -> list[str]:
        """The state keys that depend on the class count (the loader re-initialises them for another count)."""
        return [key for key in self.state_dict() if is_class_head_key(key)]

    def preprocess(self, batched_inputs: list[dict]) -> torch.Tensor:
        return normalized_batch(batched_inputs, self.pixel_mean, self.pixel_std, self.size_divisibility)

    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor] | list[dict]:
        images = self.preprocess(batched_inputs)
        features = self.backbone(images)
        try:
            outputs = self.sem_seg_head(features)
        except ValueError as error:
            if "Expected more than 1 value per channel when training" not in str(error):
                raise
            raise ConfigError(
                f"the decoder's BatchNorm cannot train on {len(batched_inputs)} image(s) of {tuple(images.shape[-2:])} "
                "px per process (UPerNet's pooling branch sees one value per channel): give each process 2 or more "
                "images (SOLVER.IMS_PER_BATCH), or set MODEL.PER_PIXEL.DECODER_NORM identity (no norm)"
            ) from None
        if not self.training:
            return self.inference(batched_inputs, outputs["logits"], images.shape[-2:])
        if self.aux_head is not None:
            outputs = {**outputs, "aux_logits": [*outputs.get("aux_logits", []), self.aux_head(features)]}
        labels = [item["sem_seg"].to(self.device) for item in batched_inputs]
        padded = pad_to_divisible([label[None] for label in labels], self.size_divisibility, self.ignore_value)
        return self.criterion(outputs, padded[:, 0].long())

    def inference(self, batched_inputs: list[dict], logits: torch.Tensor, padded_hw: tuple[int, int]) -> list[dict]:
        """Logits upsampled to the padded batch, cropped to each image, resized to its output size, softmax."""
        logits = resize_logits(logits, tuple(padded_hw))
        results = []
        for index, item in enumerate(batched_inputs):
            image_h, image_w = item["image"].shape[-2:]
            height, width = item.get("height", image_h), item.get("width", image_w)
            scores = logits[index : index + 1, :, :image_h, :image_w].float()
            scores = resize_logits(scores, (int(height), int(width)))
            results.append({"sem_seg": F.softmax(scores[0], dim=0)})
        return results
