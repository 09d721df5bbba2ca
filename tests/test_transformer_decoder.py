"""The masked-attention decoder: masking rule, key layout (outputs and gradients: tests/test_registry_contracts.py)."""

from __future__ import annotations

import torch

from mask2former.config import get_cfg
from mask2former.modeling.transformer_decoder.base import build_transformer_decoder
from mask2former.modeling.transformer_decoder.masked_attention import (
    MultiScaleMaskedTransformerDecoder,
    attention_mask_from,
)


def tiny(**overrides) -> MultiScaleMaskedTransformerDecoder:
    kwargs = dict(
        in_channels=32,
        num_classes=5,
        hidden_dim=32,
        num_queries=8,
        nheads=4,
        dim_feedforward=64,
        dec_layers=3,
        mask_dim=16,
    )
    kwargs.update(overrides)
    return MultiScaleMaskedTransformerDecoder(**kwargs)


def inputs(batch: int = 2) -> tuple[list[torch.Tensor], torch.Tensor]:
    return [torch.randn(batch, 32, s, s) for s in (2, 4, 8)], torch.randn(batch, 16, 16, 16)


def test_attention_mask_blocks_outside_the_previous_mask() -> None:
    logits = torch.full((1, 2, 4, 4), -10.0)
    logits[0, 0, 1, 2] = 10.0  # query 0 covers one pixel
    blocked = attention_mask_from(logits, (4, 4), num_heads=2)
    assert blocked.shape == (2, 2, 16)
    assert not blocked[0, 0, 1 * 4 + 2] and blocked[0, 0].sum() == 15  # all others blocked
    assert not blocked[0, 1].any()  # query 1 covers nothing: it sees everything
    assert torch.equal(blocked[0], blocked[1])  # repeated per head


def test_key_layout_and_input_projection() -> None:
    keys = set(tiny().state_dict())
    for key in (
        "transformer_self_attention_layers.0.self_attn.in_proj_weight",
        "transformer_self_attention_layers.2.norm.weight",
        "transformer_cross_attention_layers.1.multihead_attn.out_proj.bias",
        "transformer_ffn_layers.0.linear1.weight",
        "transformer_ffn_layers.2.norm.bias",
        "decoder_norm.weight",
        "query_feat.weight",
        "query_embed.weight",
        "level_embed.weight",
        "class_embed.bias",
        "mask_embed.layers.2.weight",
    ):
        assert key in keys, key
    assert not any(k.startswith("input_proj") for k in keys)
    projected = tiny(enforce_input_project=True)
    assert "input_proj.0.weight" in projected.state_dict()
    assert tiny(in_channels=24).input_proj[2].weight.shape == (32, 24, 1, 1)


def test_from_config() -> None:
    cfg = get_cfg()
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 32
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 4
    decoder = build_transformer_decoder(cfg, 256)
    assert decoder.num_layers == 3 and decoder.class_embed.out_features == 12
