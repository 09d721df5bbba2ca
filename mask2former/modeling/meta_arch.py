"""MaskFormer: images -> losses (training) or per-pixel class scores (inference).

META_ARCH_REGISTRY holds classes with `from_config(cfg)`. A meta architecture is called with a list
of mapper outputs ({"image": uint8 3 x H x W, "sem_seg": int64 H x W, "height", "width"}) and returns
a dict of losses in training mode, or one {"sem_seg": C x height x width scores} per image in eval
mode (detectron2's semantic-segmentation output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from fvcore.common.registry import Registry
from torch import nn

from ..utils.registry import lookup
from .backbone.base import Backbone, ShapeSpec, build_backbone
from .criterion import SetCriterion, build_criterion
from .pixel_decoder.base import build_pixel_decoder
from .point_sampling import SAMPLE_SEED
from .transformer_decoder.base import build_transformer_decoder

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = __doc__
SEM_SEG_HEADS_REGISTRY = Registry("SEM_SEG_HEADS")
SEM_SEG_HEADS_REGISTRY.__doc__ = "Heads named by MODEL.SEM_SEG_HEAD.NAME: classes with from_config(cfg, input_shape)."


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(nn.Module):
    """The `sem_seg_head`: pixel decoder (`pixel_decoder.*`) + transformer decoder (`predictor.*`)."""

    def __init__(self, *, pixel_decoder: nn.Module, predictor: nn.Module, in_features: list[str]) -> None:
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        self.in_features = list(in_features)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> MaskFormerHead:
        head_cfg = cfg.MODEL.SEM_SEG_HEAD
        missing = [name for name in head_cfg.IN_FEATURES if name not in input_shape]
        if missing:
            raise KeyError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES names {missing}, which the backbone does not return "
                f"(it returns {sorted(input_shape)})"
            )
        shapes = {name: input_shape[name] for name in head_cfg.IN_FEATURES}
        return cls(
            pixel_decoder=build_pixel_decoder(cfg, shapes),
            predictor=build_transformer_decoder(cfg, head_cfg.CONVS_DIM),
            in_features=head_cfg.IN_FEATURES,
        )

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        mask_features, multi_scale_features = self.pixel_decoder.forward_features(
            {name: features[name] for name in self.in_features}
        )
        return self.predictor(multi_scale_features, mask_features)


def build_sem_seg_head(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """The head named by MODEL.SEM_SEG_HEAD.NAME, built for the backbone's `input_shape`."""
    name = cfg.MODEL.SEM_SEG_HEAD.NAME
    return lookup(SEM_SEG_HEADS_REGISTRY, name, "MODEL.SEM_SEG_HEAD.NAME").from_config(cfg, input_shape)


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Q x (K + 1) class logits and Q x H x W mask logits -> K x H x W class scores."""
    class_probs = F.softmax(class_logits, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", class_probs, mask_logits.sigmoid())


def padded_size(height: int, width: int, divisibility: int) -> tuple[int, int]:
    """(height, width) rounded up to multiples of `divisibility` (unchanged for divisibility <= 1)."""
    if divisibility > 1:
        height, width = -(-height // divisibility) * divisibility, -(-width // divisibility) * divisibility
    return int(height), int(width)


def pad_to_divisible(images: list[torch.Tensor], divisibility: int, value: float = 0.0) -> torch.Tensor:
    """Stack C x H x W tensors into N x C x H' x W', padding bottom/right to a common multiple of `divisibility`."""
    height, width = padded_size(
        max(image.shape[-2] for image in images), max(image.shape[-1] for image in images), divisibility
    )
    batch = images[0].new_full((len(images), images[0].shape[0], height, width), value)
    for index, image in enumerate(images):
        batch[index, :, : image.shape[-2], : image.shape[-1]] = image
    return batch


def normalized_batch(
    batched_inputs: list[dict], pixel_mean: torch.Tensor, pixel_std: torch.Tensor, divisibility: int
) -> torch.Tensor:
    """The inputs' uint8 images on the mean's device, normalised ((x - mean) / std) and padded with 0 bottom/right
    to a common multiple of `divisibility`: every meta architecture's input."""
    device = pixel_mean.device
    images = [(item["image"].to(device).float() - pixel_mean) / pixel_std for item in batched_inputs]
    return pad_to_divisible(images, divisibility)


def semantic_targets(label: torch.Tensor, padded_hw: tuple[int, int], ignore_value: int) -> dict[str, torch.Tensor]:
    """One label map -> {"labels": classes present, "masks": one binary mask per class, padded with 0}."""
    classes = torch.unique(label)
    classes = classes[classes != ignore_value]
    masks = label[None] == classes[:, None, None]
    padded = torch.zeros((len(classes), *padded_hw), dtype=torch.float32, device=label.device)
    padded[:, : label.shape[0], : label.shape[1]] = masks
    return {"labels": classes.long(), "masks": padded}


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """Mask2Former for semantic segmentation: backbone -> sem_seg_head -> criterion / semantic inference."""

    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: SetCriterion,
        num_classes: int,
        pixel_mean: list[float],
        pixel_std: list[float],
        size_divisibility: int = 32,
        ignore_value: int = 255,
        image_format: str = "RGB",
        postprocess_before_inference: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_classes = num_classes
        self.size_divisibility = max(size_divisibility, backbone.size_divisibility)
        self.ignore_value = ignore_value
        self.image_format = image_format
        self.postprocess_before_inference = postprocess_before_inference
        # not persistent: official checkpoints do not carry them
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> MaskFormer:
        backbone = build_backbone(cfg)
        return cls(
            backbone=backbone,
            sem_seg_head=build_sem_seg_head(cfg, backbone.output_shape()),
            criterion=build_criterion(cfg),
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            pixel_mean=list(cfg.MODEL.PIXEL_MEAN),  # in INPUT.FORMAT's channel order, as in detectron2
            pixel_std=list(cfg.MODEL.PIXEL_STD),
            size_divisibility=cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            image_format=cfg.INPUT.FORMAT,
            postprocess_before_inference=cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, batched_inputs: list[dict]) -> torch.Tensor:
        return normalized_batch(batched_inputs, self.pixel_mean, self.pixel_std, self.size_divisibility)

    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor] | list[dict]:
        images = self.preprocess(batched_inputs)
        outputs = self.sem_seg_head(self.backbone(images))
        if self.training:
            return self.criterion(outputs, self.training_targets(batched_inputs, images.shape[-2:]))
        return self.inference(batched_inputs, outputs, images.shape[-2:])

    def training_targets(self, batched_inputs: list[dict], padded_hw: tuple[int, int]) -> list[dict]:
        """The criterion's target per input; an input's SAMPLE_SEED (from MapDataset) goes along, so that its
        random points do not depend on the rest of the batch."""
        targets = []
        for item in batched_inputs:
            target = semantic_targets(item["sem_seg"].to(self.device), padded_hw, self.ignore_value)
            if item.get(SAMPLE_SEED) is not None:
                target[SAMPLE_SEED] = int(item[SAMPLE_SEED])
            targets.append(target)
        return targets

    def inference(self, batched_inputs: list[dict], outputs: dict, padded_hw: tuple[int, int]) -> list[dict]:
        """Mask logits upsampled to the padded batch and cropped to each image; then, as in Mask2Former, either the
        class scores are combined and resized to the output size, or (SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE)
        the mask logits are resized first and combined at the output size."""
        mask_logits = F.interpolate(outputs["pred_masks"], size=padded_hw, mode="bilinear", align_corners=False)
        results = []
        for index, item in enumerate(batched_inputs):
            image_h, image_w = item["image"].shape[-2:]
            height, width = item.get("height", image_h), item.get("width", image_w)
            masks = mask_logits[index, :, :image_h, :image_w].float()
            resize = (height, width) != (image_h, image_w)
            if resize and self.postprocess_before_inference:
                masks = F.interpolate(masks[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            scores = semantic_inference(outputs["pred_logits"][index].float(), masks)
            if resize and not self.postprocess_before_inference:
                scores = F.interpolate(scores[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            results.append({"sem_seg": scores})
        return results
