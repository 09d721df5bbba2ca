"""Per-pixel segmentation models (UPerNet, FPN, DeepLabV3+, UNet++, SegFormer): a backbone from
BACKBONE_REGISTRY, a decoder from PER_PIXEL_DECODERS, a per-pixel loss; the same inputs and outputs as MaskFormer."""
