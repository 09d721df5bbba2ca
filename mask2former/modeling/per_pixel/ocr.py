"""OCRNet's object-contextual head (Yuan, Chen, Wang, "Object-Contextual Representations for Semantic
Segmentation", ECCV 2020), registered as PER_PIXEL_DECODERS "OCR"; segmentation-models-pytorch has none.

On HRNetV2 the input is the four branches (res2..res5) upsampled to stride 4 and concatenated (720 channels for
W48). The head, as the paper describes it (section 3.3):
  1. soft object regions: a 1x1 conv-BN-ReLU at the input's width, then a 1x1 classifier, K region maps; they are
     trained by CE against the labels (the auxiliary loss, weight MODEL.PER_PIXEL.AUX_WEIGHT, 0.4 in the paper);
  2. pixel representations x_i: a 3x3 conv-BN-ReLU to MODEL.PER_PIXEL.DECODER_CHANNELS (512);
  3. object region representations f_k = sum_i softmax_i(m_ki) x_i (a spatial softmax of each region map);
  4. pixel-region relations w_ik = softmax_k(phi(x_i)^T psi(f_k) / sqrt(d)), phi and psi two 1x1 conv-BN-ReLU layers
     each to d = MODEL.PER_PIXEL.OCR_KEY_CHANNELS (256);
  5. object-contextual representations y_i = rho(sum_k w_ik delta(f_k)), delta to d and rho back to 512 (1x1
     conv-BN-ReLU each);
  6. augmented representations z_i = g([x_i, y_i]), a 1x1 conv-BN-ReLU of the concatenation to 512, then the
     classifier (dropout MODEL.PER_PIXEL.DROPOUT, 1x1 to K).
Both outputs are at stride 4 and upsampled to the labels for the losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import nn

from ..backbone.base import ShapeSpec
from ..tiny import register_tiny_sizes
from .decoders import PER_PIXEL_DECODERS, PYRAMID, check_pyramid, classifier


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def concat_pyramid(features: dict[str, torch.Tensor]) -> torch.Tensor:
    """res2..res5 upsampled (bilinear) to res2's size and concatenated: HRNetV2's representation."""
    size = features[PYRAMID[0]].shape[-2:]
    maps = [features[PYRAMID[0]]]
    maps += [F.interpolate(features[name], size=size, mode="bilinear", align_corners=False) for name in PYRAMID[1:]]
    return torch.cat(maps, dim=1)


def region_representations(pixels: torch.Tensor, region_logits: torch.Tensor) -> torch.Tensor:
    """f_k = sum_i softmax_i(m_ki) x_i: B x C x h x w pixels, B x K x h x w region logits -> B x C x K x 1."""
    weights = F.softmax(region_logits.flatten(2).float(), dim=2).to(pixels.dtype)  # B x K x hw, sums to 1 over i
    regions = torch.bmm(weights, pixels.flatten(2).transpose(1, 2))  # B x K x C
    return regions.transpose(1, 2).unsqueeze(-1)


class ObjectContext(nn.Module):
    """y_i = rho(sum_k softmax_k(phi(x_i) . psi(f_k) / sqrt(d)) delta(f_k)) (steps 4 and 5)."""

    def __init__(self, channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.phi = nn.Sequential(conv_bn_relu(channels, key_channels), conv_bn_relu(key_channels, key_channels))
        self.psi = nn.Sequential(conv_bn_relu(channels, key_channels), conv_bn_relu(key_channels, key_channels))
        self.delta = conv_bn_relu(channels, key_channels)
        self.rho = conv_bn_relu(key_channels, channels)

    def forward(self, pixels: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = pixels.shape
        query = self.phi(pixels).flatten(2).transpose(1, 2)  # B x hw x d
        key = self.psi(regions).flatten(2)  # B x d x K
        value = self.delta(regions).flatten(2).transpose(1, 2)  # B x K x d
        relation = F.softmax(torch.bmm(query, key).float() * self.key_channels**-0.5, dim=-1).to(value.dtype)
        context = torch.bmm(relation, value).transpose(1, 2).reshape(batch, self.key_channels, height, width)
        return self.rho(context)


@PER_PIXEL_DECODERS.register()
class OCR(nn.Module):
    """OCRNet's head on the concatenated pyramid (MODEL.PER_PIXEL.DECODER "OCR"); its soft object regions are its
    auxiliary output."""

    has_aux_output = True

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 512, key_channels: int = 256, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.region_head = conv_bn_relu(in_channels, in_channels)
        self.region_classifier = nn.Conv2d(in_channels, num_classes, 1)
        self.pixel_head = conv_bn_relu(in_channels, channels, kernel_size=3)
        self.object_context = ObjectContext(channels, key_channels)
        self.fuse = conv_bn_relu(2 * channels, channels)
        self.classifier = classifier(channels, num_classes, dropout)
        self.stride = 4

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> OCR:
        check_pyramid(input_shape)
        pp = cfg.MODEL.PER_PIXEL
        return cls(
            in_channels=sum(input_shape[name].channels for name in PYRAMID),
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            channels=pp.DECODER_CHANNELS,
            key_channels=pp.OCR_KEY_CHANNELS,
            dropout=pp.DROPOUT,
        )

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        inputs = concat_pyramid(features)
        region_logits = self.region_classifier(self.region_head(inputs))
        pixels = self.pixel_head(inputs)
        context = self.object_context(pixels, region_representations(pixels, region_logits))
        logits = self.classifier(self.fuse(torch.cat([pixels, context], dim=1)))
        return {"logits": logits, "aux_logits": [region_logits]}


register_tiny_sizes("ocr", [], [(PER_PIXEL_DECODERS, "OCR")])  # tiny at MODEL.PER_PIXEL.DECODER_CHANNELS' size
