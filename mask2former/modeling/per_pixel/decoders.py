"""Per-pixel decoders: backbone features -> class logits, registered in PER_PIXEL_DECODERS.

The contract: a class with `from_config(cfg, input_shape)` (input_shape: the backbone's {name: ShapeSpec}, res2..res5
at strides 4..32, res1 at stride 2 when the backbone has it) building a module whose forward takes the backbone's
feature dict and returns {"logits": B x K x h x w} at any stride, plus "aux_logits": [B x K x h' x w', ...] when the
decoder makes its own auxiliary predictions (its class attribute `has_aux_output` is then True, and no FCN auxiliary
head is added). The modules whose outputs are per class are named `classifier` (or end in `_classifier`): a checkpoint
of another class count re-initialises exactly them.

The smp decoders (UPerNet, FPN, DeepLabV3Plus, UnetPlusPlus, Segformer) are segmentation-models-pytorch's, fed the
feature list smp's encoders make: [input, stride 2, 4, 8, 16, 32] (a 0-channel map where the backbone has no such
level, as smp does for transformer encoders).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from fvcore.common.registry import Registry
from torch import nn

from ...config import ConfigError
from ...utils.registry import lookup
from ..backbone.base import ShapeSpec
from ..tiny import register_tiny_sizes

PER_PIXEL_DECODERS = Registry("PER_PIXEL_DECODERS")
PER_PIXEL_DECODERS.__doc__ = __doc__

PYRAMID = ("res2", "res3", "res4", "res5")  # strides 4, 8, 16, 32
# smp's names (FPN and SegFormer have their own norms); smp's "layernorm" is for channels-last maps, not these
DECODER_NORMS = ("batchnorm", "instancenorm", "identity")


def classifier(in_channels: int, num_classes: int, dropout: float, kernel_size: int = 1) -> nn.Sequential:
    """Dropout then a conv to one channel per class (mmsegmentation's decode heads: dropout 0.1, 1x1)."""
    return nn.Sequential(
        nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
        nn.Conv2d(in_channels, num_classes, kernel_size, padding=kernel_size // 2),
    )


def check_pyramid(input_shape: dict[str, ShapeSpec], needs: tuple[str, ...] = PYRAMID) -> None:
    strides = {"res1": 2, "res2": 4, "res3": 8, "res4": 16, "res5": 32}
    for name in needs:
        if name not in input_shape:
            raise ConfigError(
                f"the per-pixel decoder needs backbone feature {name} (stride {strides[name]}); the backbone returns "
                f"{sorted(input_shape)}: pick a backbone with res2..res5 (MODEL.BACKBONE.NAME)"
            )


class SmpDecoder(nn.Module):
    """A segmentation-models-pytorch decoder on this project's backbone features, then the classifier."""

    has_aux_output = False

    def __init__(self, decoder: nn.Module, out_channels: int, num_classes: int, dropout: float, stride: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.classifier = classifier(out_channels, num_classes, dropout)
        self.stride = stride  # of the decoder's output, for the record

    @staticmethod
    def feature_list(features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        res2 = features["res2"]
        batch, _, height, width = res2.shape
        # smp reads the input level only for its size (SegFormer) and skips it otherwise
        full = res2.new_zeros(batch, 0, height * 4, width * 4)
        res1 = features.get("res1", res2.new_zeros(batch, 0, height * 2, width * 2))
        return [full, res1, *(features[name] for name in PYRAMID)]

    @staticmethod
    def channel_list(input_shape: dict[str, ShapeSpec]) -> list[int]:
        res1 = input_shape["res1"].channels if "res1" in input_shape else 0
        return [3, res1, *(input_shape[name].channels for name in PYRAMID)]

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": self.classifier(self.decoder(self.feature_list(features)))}


def _smp_decoder(name: str, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> tuple[nn.Module, int, int]:
    """(decoder, its output channels, its output stride) for smp decoder `name`."""
    from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3PlusDecoder
    from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder
    from segmentation_models_pytorch.decoders.segformer.decoder import SegformerDecoder
    from segmentation_models_pytorch.decoders.unetplusplus.decoder import UnetPlusPlusDecoder
    from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

    pp = cfg.MODEL.PER_PIXEL
    channels = SmpDecoder.channel_list(input_shape)
    width, norm = int(pp.DECODER_CHANNELS), pp.DECODER_NORM
    if norm not in DECODER_NORMS:
        raise ConfigError(f"MODEL.PER_PIXEL.DECODER_NORM {norm!r}: choose one of {', '.join(DECODER_NORMS)}")
    if name == "UPerNet":
        return (
            UPerNetDecoder(encoder_channels=channels, encoder_depth=5, decoder_channels=width, use_norm=norm),
            width,
            4,
        )
    if name == "FPN":
        if width % 64:
            raise ConfigError(
                f"MODEL.PER_PIXEL.DECODER_CHANNELS {width}: FPN merges at half of it with GroupNorm(32), so it must be "
                "a multiple of 64"
            )
        # smp's FPN: a pyramid of DECODER_CHANNELS, merged at half that (smp's defaults: 256 and 128)
        decoder = FPNDecoder(
            encoder_channels=channels, encoder_depth=5, pyramid_channels=width, segmentation_channels=width // 2,
            dropout=0.0, merge_policy="add",
        )  # fmt: skip
        return decoder, width // 2, 4
    if name == "DeepLabV3Plus":
        stride = input_shape["res5"].stride
        if stride not in (8, 16):
            raise ConfigError(
                f"DeepLabV3Plus needs a dilated backbone (output stride 8 or 16, got {stride}): set "
                "MODEL.TIMM.OUTPUT_STRIDE 16 (timm backbones) or MODEL.RESNETS.RES5_DILATION 2"
            )
        decoder = DeepLabV3PlusDecoder(
            encoder_channels=channels, encoder_depth=5, out_channels=width, atrous_rates=tuple(pp.ATROUS_RATES),
            output_stride=stride, aspp_separable=True, aspp_dropout=0.5,
        )  # fmt: skip
        return decoder, width, 4
    if name == "UnetPlusPlus":
        # five blocks, halving from DECODER_CHANNELS (smp's default: 256, 128, 64, 32, 16); output at stride 1
        widths = [max(width >> level, 8) for level in range(5)]
        decoder = UnetPlusPlusDecoder(encoder_channels=channels, decoder_channels=widths, n_blocks=5, use_norm=norm)
        return decoder, widths[-1], 1
    if name == "Segformer":
        decoder = SegformerDecoder(encoder_channels=channels, encoder_depth=5, segmentation_channels=width)
        return decoder, width, 4
    raise AssertionError(name)


def _register_smp(name: str) -> None:
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> SmpDecoder:
        check_pyramid(input_shape)
        decoder, channels, stride = _smp_decoder(name, cfg, input_shape)
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        return SmpDecoder(decoder, channels, num_classes, cfg.MODEL.PER_PIXEL.DROPOUT, stride)

    doc = f"segmentation-models-pytorch's {name} decoder and a classifier (MODEL.PER_PIXEL.DECODER {name!r})."
    PER_PIXEL_DECODERS.register(type(name, (SmpDecoder,), {"from_config": classmethod(from_config), "__doc__": doc}))


SMP_DECODERS = ("UPerNet", "FPN", "DeepLabV3Plus", "UnetPlusPlus", "Segformer")
for _name in SMP_DECODERS:
    _register_smp(_name)
# tiny at MODEL.PER_PIXEL.DECODER_CHANNELS' tiny size (per_pixel/config.py)
register_tiny_sizes("smp_decoders", [], [(PER_PIXEL_DECODERS, name) for name in SMP_DECODERS])


class FCNAuxHead(nn.Module):
    """The auxiliary head of mmsegmentation's UPerNet recipes: conv 3x3 + BN + ReLU on one backbone feature, dropout,
    1x1 classifier. Trained only (its logits add a weighted CE); inference ignores it."""

    def __init__(self, in_feature: str, in_channels: int, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.in_feature = in_feature
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        self.classifier = classifier(channels, num_classes, dropout)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.conv(features[self.in_feature]))


def build_per_pixel_decoder(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """The decoder named by MODEL.PER_PIXEL.DECODER, built for the backbone's `input_shape`."""
    name = cfg.MODEL.PER_PIXEL.DECODER
    return lookup(PER_PIXEL_DECODERS, name, "MODEL.PER_PIXEL.DECODER").from_config(cfg, input_shape)


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) to `size`; unchanged when it already has it."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
