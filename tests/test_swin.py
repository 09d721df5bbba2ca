"""Swin backbone: the feature contract, official key layout, timm and official weight conversion."""

from __future__ import annotations

import pytest
import timm
import torch

from mask2former.config import get_cfg
from mask2former.modeling.backbone.base import build_backbone
from mask2former.modeling.backbone.swin import D2SwinTransformer, checkpoint_filter_fn, load_swin_pretrained, swin_large

TINY = dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=7, drop_path_rate=0.1)


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (224, 224)])
def test_feature_contract(size: tuple[int, int]) -> None:
    model = D2SwinTransformer(**TINY)
    assert model.feature_info == [{"name": f"res{i + 2}", "channels": 32 * 2**i, "stride": 4 * 2**i} for i in range(4)]
    images = torch.randn(2, 3, *size, requires_grad=False)
    features = model(images)
    for info in model.feature_info:
        feature = features[info["name"]]
        assert feature.shape == (2, info["channels"], size[0] // info["stride"], size[1] // info["stride"])
        assert torch.isfinite(feature).all()
    sum(f.mean() for f in features.values()).backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_window_larger_than_the_map() -> None:
    model = D2SwinTransformer(**{**TINY, "window_size": 12})
    features = model(torch.randn(1, 3, 64, 64))
    assert features["res5"].shape == (1, 256, 2, 2) and torch.isfinite(features["res5"]).all()


def test_official_key_layout() -> None:
    keys = set(D2SwinTransformer(**TINY).state_dict())
    for key in (
        "patch_embed.proj.weight",
        "patch_embed.norm.bias",
        "layers.0.blocks.0.norm1.weight",
        "layers.0.blocks.0.attn.relative_position_bias_table",
        "layers.0.blocks.0.attn.qkv.weight",
        "layers.2.blocks.1.attn.proj.bias",
        "layers.1.blocks.0.mlp.fc2.weight",
        "layers.0.downsample.reduction.weight",
        "layers.2.downsample.norm.weight",
        "norm0.weight",
        "norm3.bias",
    ):
        assert key in keys, key
    assert not any(k.startswith("layers.3.downsample") for k in keys)


def test_official_checkpoint_loads_with_zero_missing() -> None:
    source = D2SwinTransformer(**TINY)
    official = {k: v for k, v in source.state_dict().items() if k[:5] not in ("norm0", "norm1", "norm2", "norm3")}
    official.update(
        {
            "head.weight": torch.zeros(10, 256),
            "norm.weight": torch.ones(256),
            "layers.0.blocks.1.attn_mask": torch.zeros(1),
            "layers.0.blocks.0.attn.relative_position_index": torch.zeros(49, 49, dtype=torch.long),
        }
    )
    target = D2SwinTransformer(**TINY)
    result = target.load_state_dict(checkpoint_filter_fn({"model": official}, target), strict=False)
    assert sorted(result.missing_keys) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    assert result.unexpected_keys == []
    assert torch.equal(target.layers[2].blocks[1].attn.qkv.weight, source.layers[2].blocks[1].attn.qkv.weight)


def test_timm_weights_convert_exactly(tmp_path) -> None:
    reference = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)
    ).eval()
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    model = D2SwinTransformer(**{**TINY, "drop_path_rate": 0.0}).eval()
    report = load_swin_pretrained(model, tmp_path / "timm.pth")
    assert report["missing"] == [] and report["unexpected"] == [] and len(report["new_output_norms"]) == 8
    for i in range(4):  # our output norms become identities to compare the stages themselves
        norm = getattr(model, f"norm{i}")
        norm.weight.data.fill_(1.0)
        norm.bias.data.zero_()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        theirs = reference.forward_intermediates(images, indices=4, norm=False, intermediates_only=True)
        ours = model(images)
    for i in range(4):
        expected = torch.nn.functional.layer_norm(theirs[i].permute(0, 2, 3, 1), theirs[i].shape[1:2]).permute(
            0, 3, 1, 2
        )
        assert torch.allclose(ours[f"res{i + 2}"], expected, atol=1e-4), i


def test_window_size_change_resizes_the_bias_table() -> None:
    source = D2SwinTransformer(**TINY)
    target = D2SwinTransformer(**{**TINY, "window_size": 12})
    converted = checkpoint_filter_fn(source.state_dict(), target)
    table = converted["layers.0.blocks.0.attn.relative_position_bias_table"]
    assert table.shape == (23 * 23, 1)
    target.load_state_dict(converted, strict=True)


def test_swin_large_size_and_config() -> None:
    model = swin_large()
    params = sum(p.numel() for p in model.parameters())
    assert 195e6 < params < 200e6  # Swin-L backbone without classifier: about 197M
    cfg = get_cfg()
    cfg.MODEL.SWIN.EMBED_DIM = 32
    cfg.MODEL.SWIN.DEPTHS = [1, 1, 2, 1]
    cfg.MODEL.SWIN.NUM_HEADS = [1, 2, 4, 8]
    backbone = build_backbone(cfg)
    assert isinstance(backbone, D2SwinTransformer) and backbone.output_shape()["res4"].channels == 128
