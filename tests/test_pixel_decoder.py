"""The MSDeformAttn pixel decoder: key layout, config, fp32 encoder; sine positions (shapes and gradients:
tests/test_registry_contracts.py)."""

from __future__ import annotations

import math

import pytest
import torch

from mask2former.config import get_cfg
from mask2former.modeling.backbone.base import ShapeSpec
from mask2former.modeling.pixel_decoder.base import build_pixel_decoder
from mask2former.modeling.pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder
from mask2former.modeling.position_encoding import PositionEmbeddingSine

SHAPES = {"res2": ShapeSpec(16, 4), "res3": ShapeSpec(32, 8), "res4": ShapeSpec(64, 16), "res5": ShapeSpec(128, 32)}


def features(height: int, width: int, shapes: dict[str, ShapeSpec] = SHAPES) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        name: torch.randn(2, spec.channels, height // spec.stride, width // spec.stride, generator=generator)
        for name, spec in shapes.items()
    }


def tiny(**overrides) -> MSDeformAttnPixelDecoder:
    kwargs = {
        "input_shape": SHAPES,
        "conv_dim": 32,
        "mask_dim": 24,
        "transformer_enc_layers": 2,
        "transformer_nheads": 4,
        "transformer_dim_feedforward": 64,
    }
    kwargs.update(overrides)
    return MSDeformAttnPixelDecoder(**kwargs)


def expected_keys(layers: int, levels: int) -> set[str]:
    keys = {"transformer.level_embed", "mask_features.weight", "mask_features.bias"}
    keys |= {f"input_proj.{i}.{j}.{p}" for i in range(levels) for j in (0, 1) for p in ("weight", "bias")}
    attention = ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
    per_layer = [f"self_attn.{m}" for m in attention] + ["norm1", "linear1", "linear2", "norm2"]
    keys |= {
        f"transformer.encoder.layers.{k}.{m}.{p}" for k in range(layers) for m in per_layer for p in ("weight", "bias")
    }
    keys |= {"adapter_1.weight", "adapter_1.norm.weight", "adapter_1.norm.bias"}
    keys |= {"layer_1.weight", "layer_1.norm.weight", "layer_1.norm.bias"}
    return keys


def test_official_key_layout_and_shapes() -> None:
    state = tiny().state_dict()
    assert set(state) == expected_keys(layers=2, levels=3)
    assert state["input_proj.0.0.weight"].shape == (32, 128, 1, 1)  # level 0 is res5
    assert state["input_proj.2.0.weight"].shape == (32, 32, 1, 1)  # level 2 is res3
    assert state["transformer.level_embed"].shape == (3, 32)
    assert state["transformer.encoder.layers.0.self_attn.sampling_offsets.weight"].shape == (4 * 3 * 4 * 2, 32)
    assert state["transformer.encoder.layers.0.self_attn.attention_weights.weight"].shape == (4 * 3 * 4, 32)
    assert state["transformer.encoder.layers.1.linear1.weight"].shape == (64, 32)
    assert state["mask_features.weight"].shape == (24, 32, 1, 1)
    assert state["adapter_1.weight"].shape == (32, 16, 1, 1)
    assert state["layer_1.weight"].shape == (32, 32, 3, 3)


def test_initialisation() -> None:
    decoder = tiny()
    for proj in decoder.input_proj:
        assert proj[0].bias.abs().max() == 0 and proj[1].num_groups == 32
    layer = decoder.transformer.encoder.layers[0]
    assert layer.self_attn.attention_weights.weight.abs().max() == 0
    assert layer.self_attn.sampling_offsets.weight.abs().max() == 0
    assert layer.self_attn.sampling_offsets.bias.abs().max() == 4  # points at 1..4 pixels
    assert decoder.transformer.level_embed.std() > 0.5  # normal(0, 1)
    assert decoder.mask_features.bias.abs().max() == 0
    assert list(decoder.pe_layer.parameters()) == []


def test_without_norm_the_fpn_convs_keep_their_bias() -> None:
    keys = set(tiny(norm="").state_dict())
    assert {"adapter_1.bias", "layer_1.bias"} <= keys
    assert not any(key.startswith(("adapter_1.norm", "layer_1.norm")) for key in keys)
    assert "input_proj.0.1.weight" in keys  # the input projections are always GroupNorm'd


def test_fpn_numbering_starts_at_the_finest_map() -> None:
    shapes = {"res1": ShapeSpec(8, 2), **SHAPES}
    decoder = tiny(input_shape=shapes, common_stride=2)
    assert decoder.adapter_1.weight.shape[1] == 8 and decoder.adapter_2.weight.shape[1] == 16
    mask_features, multi_scale = decoder.forward_features(features(64, 64, shapes))
    assert mask_features.shape == (2, 24, 32, 32)
    assert [m.shape[-1] for m in multi_scale] == [2, 4, 8]


def test_unknown_transformer_feature_is_an_error() -> None:
    with pytest.raises(KeyError, match="res6"):
        tiny(transformer_in_features=("res4", "res5", "res6"))


def test_from_config_and_fp32_encoder_under_autocast() -> None:
    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 2
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 48
    decoder = build_pixel_decoder(cfg, SHAPES)
    assert isinstance(decoder, MSDeformAttnPixelDecoder)
    layers = decoder.transformer.encoder.layers
    assert len(layers) == 1 and layers[0].linear1.out_features == 48
    attn = layers[0].self_attn
    assert (attn.n_heads, attn.n_points, attn.n_levels) == (4, 2, 3)
    assert decoder.transformer_in_features == ["res5", "res4", "res3"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, multi_scale = decoder.forward_features(features(64, 64))
    # the whole decoder runs in float32 under autocast, as the official one
    assert all(m.dtype == torch.float32 for m in multi_scale) and mask_features.dtype == torch.float32
    assert mask_features.shape == (2, 32, 16, 16) and torch.isfinite(mask_features).all()
    with torch.no_grad():
        reference, _ = decoder.forward_features(features(64, 64))
    torch.testing.assert_close(mask_features, reference)


def test_encoder_heads_follow_the_decoder_heads_as_in_mask2former() -> None:
    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
    cfg.MODEL.MASK_FORMER.NHEADS = 4
    assert cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS is None
    assert build_pixel_decoder(cfg, SHAPES).transformer.encoder.layers[0].self_attn.n_heads == 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 2
    assert build_pixel_decoder(cfg, SHAPES).transformer.encoder.layers[0].self_attn.n_heads == 2


def test_from_config_reads_only_the_head_in_features() -> None:
    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
    decoder = build_pixel_decoder(cfg, {"res1": ShapeSpec(8, 2), **SHAPES})
    assert decoder.in_features == ["res2", "res3", "res4", "res5"]


def test_sine_position_encoding_layout() -> None:
    pe = PositionEmbeddingSine(8, normalize=True)
    x = torch.zeros(2, 3, 4, 6)
    pos = pe(x)
    assert pos.shape == (2, 16, 4, 6) and pos.dtype == torch.float32
    row, col = 2, 5
    y = (row + 1) / 4 * 2 * math.pi  # 1-based, normalised by the last row, scaled to 2 pi
    xc = (col + 1) / 6 * 2 * math.pi
    for i in range(8):
        period = 10000 ** (2 * (i // 2) / 8)
        trig = math.sin if i % 2 == 0 else math.cos
        assert pos[0, i, row, col].item() == pytest.approx(trig(y / period), abs=1e-5)  # y first
        assert pos[0, 8 + i, row, col].item() == pytest.approx(trig(xc / period), abs=1e-5)
    assert torch.equal(pos[0], pos[1])
    assert pe(x.bfloat16()).dtype == torch.bfloat16


def test_sine_position_encoding_mask_and_options() -> None:
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[:, :, 3:] = True  # right half is padding: x is normalised over the valid 3 columns
    pos = PositionEmbeddingSine(4, normalize=True)(torch.zeros(1, 1, 4, 6), mask)
    unpadded = PositionEmbeddingSine(4, normalize=True)(torch.zeros(1, 1, 4, 3))
    torch.testing.assert_close(pos[..., :3], unpadded)
    raw = PositionEmbeddingSine(4, normalize=False)(torch.zeros(1, 1, 2, 2))
    assert raw[0, 0, 1, 0].item() == pytest.approx(math.sin(2.0))  # unnormalised: the 1-based row index
    with pytest.raises(ValueError):
        PositionEmbeddingSine(4, normalize=False, scale=1.0)
