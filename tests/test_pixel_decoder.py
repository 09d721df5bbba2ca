"""The MSDeformAttn pixel decoder: shapes, gradients, key layout, fp32 encoder under autocast."""

from __future__ import annotations

import pytest
import torch

from mask2former.config import get_cfg
from mask2former.modeling.backbone.base import ShapeSpec
from mask2former.modeling.pixel_decoder.base import build_pixel_decoder
from mask2former.modeling.pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder

SHAPES = {"res2": ShapeSpec(16, 4), "res3": ShapeSpec(32, 8), "res4": ShapeSpec(64, 16), "res5": ShapeSpec(128, 32)}


def features(height: int, width: int) -> dict[str, torch.Tensor]:
    return {
        name: torch.randn(2, spec.channels, height // spec.stride, width // spec.stride)
        for name, spec in SHAPES.items()
    }


def tiny() -> MSDeformAttnPixelDecoder:
    return MSDeformAttnPixelDecoder(
        input_shape=SHAPES,
        conv_dim=32,
        mask_dim=24,
        transformer_enc_layers=2,
        transformer_nheads=4,
        transformer_dim_feedforward=64,
    )


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_outputs_and_gradients(size) -> None:
    decoder = tiny()
    mask_features, multi_scale = decoder.forward_features(features(*size))
    assert mask_features.shape == (2, 24, size[0] // 4, size[1] // 4)
    assert [m.shape[-2:] for m in multi_scale] == [(size[0] // s, size[1] // s) for s in (32, 16, 8)]
    assert all(m.shape[1] == 32 and torch.isfinite(m).all() for m in multi_scale)
    (mask_features.mean() + sum(m.mean() for m in multi_scale)).backward()
    assert decoder.input_proj[0][0].weight.grad.abs().sum() > 0
    assert decoder.transformer.encoder.layers[0].self_attn.sampling_offsets.weight.grad.abs().sum() > 0


def test_official_key_layout() -> None:
    keys = set(tiny().state_dict())
    for key in (
        "input_proj.0.0.weight",
        "input_proj.2.1.bias",
        "transformer.level_embed",
        "transformer.encoder.layers.1.self_attn.sampling_offsets.weight",
        "transformer.encoder.layers.0.self_attn.value_proj.bias",
        "transformer.encoder.layers.0.norm1.weight",
        "transformer.encoder.layers.0.linear2.weight",
        "transformer.encoder.layers.1.norm2.bias",
        "mask_features.weight",
        "adapter_1.weight",
        "adapter_1.norm.weight",
        "layer_1.weight",
        "layer_1.norm.bias",
    ):
        assert key in keys, key
    assert "adapter_1.bias" not in keys  # the norm replaces the bias


def test_from_config_and_fp32_encoder_under_autocast() -> None:
    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
    decoder = build_pixel_decoder(cfg, SHAPES)
    assert isinstance(decoder, MSDeformAttnPixelDecoder) and len(decoder.transformer.encoder.layers) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, multi_scale = decoder.forward_features(features(64, 64))
    assert all(m.dtype == torch.float32 for m in multi_scale)
    assert torch.isfinite(mask_features.float()).all()
