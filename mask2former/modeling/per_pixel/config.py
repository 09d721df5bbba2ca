"""MODEL.PER_PIXEL.*: the per-pixel meta architecture's keys (decoder, classifier, auxiliary head, losses)."""

from __future__ import annotations

from fvcore.common.config import CfgNode

from mask2former.config import CONFIG_ADDERS
from mask2former.config import CfgNode as ConfigNode
from mask2former.modeling.tiny import register_tiny_sizes


@CONFIG_ADDERS.register()
def add_per_pixel_config(cfg: CfgNode) -> None:
    """MODEL.PER_PIXEL.*, read by MODEL.META_ARCHITECTURE "PerPixelSegmentor" (classes and ignore value come from
    MODEL.SEM_SEG_HEAD.NUM_CLASSES / IGNORE_VALUE, the input normalisation from MODEL.PIXEL_MEAN / PIXEL_STD)."""
    cfg.MODEL.PER_PIXEL = ConfigNode()
    # PER_PIXEL_DECODERS name: UPerNet, FPN, DeepLabV3Plus, UnetPlusPlus, Segformer (segmentation-models-pytorch),
    # OCR (OCRNet's object-contextual head, per_pixel/ocr.py)
    cfg.MODEL.PER_PIXEL.DECODER = "UPerNet"
    # UPerNet/FPN/DeepLabV3+/SegFormer width, OCR's pixel representations; UNet++: its first block's
    cfg.MODEL.PER_PIXEL.DECODER_CHANNELS = 512
    cfg.MODEL.PER_PIXEL.DECODER_NORM = "batchnorm"  # smp's decoder norm: batchnorm, instancenorm, identity
    cfg.MODEL.PER_PIXEL.DROPOUT = 0.1  # before the 1x1 classifier (mmsegmentation's decode heads: 0.1)
    cfg.MODEL.PER_PIXEL.ATROUS_RATES = [12, 24, 36]  # DeepLabV3+'s ASPP at output stride 16
    cfg.MODEL.PER_PIXEL.OCR_KEY_CHANNELS = 256  # OCR's pixel-region relation width (the paper's 256)
    # auxiliary FCN head on one backbone feature (mmsegmentation's UPerNet recipes: res4, 256 channels, weight 0.4);
    # a decoder with its own auxiliary output uses the weight for it. 0: no auxiliary head
    cfg.MODEL.PER_PIXEL.AUX_WEIGHT = 0.4
    cfg.MODEL.PER_PIXEL.AUX_IN_FEATURE = "res4"
    cfg.MODEL.PER_PIXEL.AUX_CHANNELS = 256
    cfg.MODEL.PER_PIXEL.LOSS = ConfigNode()
    # the weighted sum trained on; CE ignores MODEL.SEM_SEG_HEAD.IGNORE_VALUE and so do the others (smp's losses)
    cfg.MODEL.PER_PIXEL.LOSS.CE_WEIGHT = 1.0
    cfg.MODEL.PER_PIXEL.LOSS.DICE_WEIGHT = 0.0
    cfg.MODEL.PER_PIXEL.LOSS.FOCAL_WEIGHT = 0.0
    cfg.MODEL.PER_PIXEL.LOSS.FOCAL_GAMMA = 2.0
    cfg.MODEL.PER_PIXEL.LOSS.LOVASZ_WEIGHT = 0.0


# the per-pixel decoders' module declares which entries these sizes make tiny
register_tiny_sizes("per_pixel", ["MODEL.PER_PIXEL.DECODER_CHANNELS", "64", "MODEL.PER_PIXEL.AUX_CHANNELS", "16"])
