"""Swin backbone: official key layout, timm and official weight conversion (its registry contract:
tests/test_registry_contracts.py)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from conftest import Changes, ConfigKeyCheck
from safetensors.torch import save_file

from mask2former.config import get_cfg
from mask2former.modeling.backbone.base import build_backbone
from mask2former.modeling.backbone.swin import (
    D2SwinTransformer,
    SwinStage,
    checkpoint_filter_fn,
    load_swin_pretrained,
    swin_base,
    swin_large,
    swin_small,
    swin_tiny,
)

TINY = dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=7, drop_path_rate=0.1)
NEW_NORMS = sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))


def tiny(**overrides) -> D2SwinTransformer:
    torch.manual_seed(0)
    return D2SwinTransformer(**{**TINY, **overrides})


def test_out_features_subset() -> None:
    model = tiny(out_features=("res3", "res5"))
    assert [f["name"] for f in model.feature_info] == ["res3", "res5"]
    assert set(model(torch.randn(1, 3, 64, 96))) == {"res3", "res5"}
    assert not hasattr(model, "norm0") and hasattr(model, "norm3")
    with pytest.raises(ValueError):
        tiny(out_features=("res6",))


def _brute_force_block(block, x: torch.Tensor, h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """One Swin block written out from the paper and the official detection code, token by token.

    LayerNorm; zero-pad the H x W map to Hp x Wp (multiples of the window); a shifted block rolls the padded map
    by -shift on both axes (token (i, j) comes from ((i + shift) % Hp, (j + shift) % Wp)) and labels each padded
    position with a region id (3 bands per axis: [0, Hp - window), [Hp - window, Hp - shift), [Hp - shift, Hp));
    per window, per head, a softmax over q.k * scale + relative bias (- 100 for key/query of different regions);
    proj; roll back, crop, residual; LayerNorm, MLP, residual.
    """
    attn = block.attn
    batch, _, channels = x.shape
    heads = attn.num_heads
    head_dim = channels // heads
    hp, wp = -(-h // window) * window, -(-w // window) * window
    normed = block.norm1(x).view(batch, h, w, channels)
    padded = torch.zeros(batch, hp, wp, channels)
    padded[:, :h, :w] = normed
    rows = [(i + shift) % hp for i in range(hp)]
    cols = [(j + shift) % wp for j in range(wp)]
    rolled = padded[:, rows][:, :, cols]

    def band(index: int, size: int) -> int:
        return 0 if index < size - window else (1 if index < size - shift else 2)

    region = [[3 * band(i, hp) + band(j, wp) if shift else 0 for j in range(wp)] for i in range(hp)]
    table = attn.relative_position_bias_table
    qkv_w, qkv_b = attn.qkv.weight, attn.qkv.bias
    out = torch.zeros(batch, hp, wp, channels)
    for top in range(0, hp, window):
        for left in range(0, wp, window):
            cells = [(top + a, left + c) for a in range(window) for c in range(window)]
            bias = torch.zeros(heads, len(cells), len(cells))
            for m, (i, j) in enumerate(cells):
                for n, (i2, j2) in enumerate(cells):
                    bias[:, m, n] = table[(i - i2 + window - 1) * (2 * window - 1) + (j - j2 + window - 1)]
                    if region[i][j] != region[i2][j2]:
                        bias[:, m, n] -= 100.0
            for b in range(batch):
                tokens = torch.stack([rolled[b, i, j] for i, j in cells])  # window^2 x C
                q, k, v = (tokens @ qkv_w.T + qkv_b).split(channels, dim=-1)
                mixed = torch.zeros(len(cells), channels)
                for head in range(heads):
                    part = slice(head * head_dim, (head + 1) * head_dim)
                    logits = q[:, part] @ k[:, part].T * attn.scale + bias[head]
                    mixed[:, part] = torch.softmax(logits, dim=-1) @ v[:, part]
                projected = attn.proj(mixed)
                for m, (i, j) in enumerate(cells):
                    out[b, i, j] = projected[m]
    back = torch.zeros_like(out)
    for i in range(hp):
        for j in range(wp):
            back[:, rows[i], cols[j]] = out[:, i, j]
    x = x + back[:, :h, :w].reshape(batch, h * w, channels)
    return x + block.mlp(block.norm2(x))


def _randomised_stage(window: int) -> SwinStage:
    torch.manual_seed(0)
    stage = SwinStage(12, 2, 3, window, 2.0, True, None, 0.0, 0.0, [0.0, 0.0], False, False).eval()
    with torch.no_grad():
        for name, param in stage.named_parameters():
            param.copy_(torch.randn_like(param) * (0.5 if name.endswith("bias_table") else 0.3))
            if ".norm" in name and name.endswith("weight"):
                param.add_(1.0)
    return stage


@pytest.mark.parametrize(("window", "h", "w"), [(7, 3, 5), (7, 7, 7), (7, 9, 11), (4, 3, 5), (4, 4, 4), (4, 9, 6)])
def test_stage_equals_the_brute_force_official_shifted_windows(window: int, h: int, w: int) -> None:
    """Maps smaller than, equal to and larger than the window: the odd block always rolls by window // 2."""
    stage = _randomised_stage(window)
    assert [block.shift for block in stage.blocks] == [0, window // 2]
    x = torch.randn(2, h * w, 12)
    with torch.no_grad():
        expected = x
        for block in stage.blocks:
            expected = _brute_force_block(block, expected, h, w, window, block.shift)
        torch.testing.assert_close(stage.run_blocks(x, h, w), expected, rtol=1e-4, atol=1e-4)
        # a block on its own (mask built inside) computes the same
        first = stage.blocks[0](x, h, w)
        torch.testing.assert_close(stage.blocks[1](first, h, w), expected, rtol=1e-4, atol=1e-4)
        # the shift is not a no-op, also when the map fits in one window
        unshifted = _brute_force_block(stage.blocks[1], first, h, w, window, 0)
        assert not torch.allclose(unshifted, expected, atol=1e-3)


def test_small_maps_shift_in_the_whole_backbone() -> None:
    model = tiny(window_size=12, depths=(1, 1, 2, 2)).eval()
    unshifted = copy.deepcopy(model)
    for stage in unshifted.layers:
        for block in stage.blocks:
            block.shift = 0
    with torch.no_grad():
        small = torch.randn(1, 3, 64, 64)  # stages 3 and 4 are 4x4 and 2x2: inside one 12x12 window
        features = model(small)
        assert features["res5"].shape == (1, 256, 2, 2) and torch.isfinite(features["res5"]).all()
        assert not torch.allclose(features["res4"], unshifted(small)["res4"], atol=1e-4)


def test_official_key_layout() -> None:
    model = tiny()
    keys = set(model.state_dict())
    for key in (
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "patch_embed.norm.weight",
        "patch_embed.norm.bias",
        "layers.0.blocks.0.norm1.weight",
        "layers.0.blocks.0.attn.relative_position_bias_table",
        "layers.0.blocks.0.attn.qkv.weight",
        "layers.0.blocks.0.attn.qkv.bias",
        "layers.2.blocks.1.attn.proj.bias",
        "layers.2.blocks.1.norm2.weight",
        "layers.1.blocks.0.mlp.fc1.bias",
        "layers.1.blocks.0.mlp.fc2.weight",
        "layers.0.downsample.reduction.weight",
        "layers.0.downsample.norm.bias",
        "layers.2.downsample.norm.weight",
        "norm0.weight",
        "norm3.weight",
        "norm3.bias",
    ):
        assert key in keys, key
    assert "absolute_pos_embed" not in keys and "absolute_pos_embed" in tiny(ape=True).state_dict()
    assert not any(k.startswith(("layers.3.downsample", "norm.", "head")) for k in keys)
    assert "layers.0.downsample.reduction.bias" not in keys
    assert model.layers[0].downsample.reduction.weight.shape == (64, 128)
    assert model.layers[0].blocks[0].attn.relative_position_bias_table.shape == (13 * 13, 1)
    # derived buffer: present on the module, not saved
    assert model.layers[0].blocks[0].attn.relative_position_index.shape == (49, 49)
    assert not any(k.endswith(("relative_position_index", "attn_mask")) for k in keys)
    rates = [block.drop_path.rate for stage in model.layers for block in stage.blocks]
    assert rates == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])


def _official_checkpoint(model: D2SwinTransformer) -> dict:
    """The weights as the official ImageNet release lays them out (classifier, final norm, buffers)."""
    new_norms = ("norm0", "norm1", "norm2", "norm3")
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(new_norms)}
    for name, buffer in model.named_buffers():
        state[name] = buffer.clone()
    state["layers.2.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    state["norm.weight"] = torch.ones(256)
    state["norm.bias"] = torch.zeros(256)
    state["head.weight"] = torch.zeros(10, 256)
    state["head.bias"] = torch.zeros(10)
    return {"model": state}


def test_official_checkpoint_round_trip(tmp_path) -> None:
    source, target = tiny(), tiny(drop_path_rate=0.0)
    checkpoint = _official_checkpoint(source)
    assert "layers.0.blocks.0.attn.relative_position_index" in checkpoint["model"]
    converted = checkpoint_filter_fn(checkpoint, target)
    result = target.load_state_dict(converted, strict=False)
    assert sorted(result.missing_keys) == NEW_NORMS and result.unexpected_keys == []
    assert torch.equal(target.layers[2].blocks[1].attn.qkv.weight, source.layers[2].blocks[1].attn.qkv.weight)
    merged = target.layers[1].downsample.reduction.weight
    assert torch.equal(merged, source.layers[1].downsample.reduction.weight)

    torch.save(checkpoint, tmp_path / "official.pth")
    report = load_swin_pretrained(tiny(), tmp_path / "official.pth")
    assert sorted(report["missing"]) == NEW_NORMS and sorted(report["new_output_norms"]) == NEW_NORMS
    assert report["unexpected"] == []


def test_whole_segmentation_checkpoint_keeps_the_backbone() -> None:
    model = tiny()
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    state["sem_seg_head.predictor.class_embed.weight"] = torch.zeros(3, 4)
    result = model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_timm_weights_convert_exactly(tmp_path) -> None:
    torch.manual_seed(1)
    reference = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        embed_dim=32,
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 4, 8),
    ).eval()
    timm_state = reference.state_dict()
    assert "layers.3.downsample.reduction.weight" in timm_state and "head.fc.weight" in timm_state
    save_file({k: v.contiguous() for k, v in timm_state.items()}, tmp_path / "timm.safetensors")

    model = tiny(drop_path_rate=0.0).eval()
    report = load_swin_pretrained(model, tmp_path / "timm.safetensors")
    assert sorted(report["missing"]) == NEW_NORMS and report["unexpected"] == []
    assert torch.equal(model.layers[0].downsample.norm.weight, reference.layers[1].downsample.norm.weight)

    captured = {}
    for i in range(4):  # the stage outputs as they enter our per-output norms
        hook = lambda _, args, i=i: captured.__setitem__(i, args[0])  # noqa: E731
        getattr(model, f"norm{i}").register_forward_pre_hook(hook)
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        theirs = reference.forward_intermediates(images, indices=4, norm=False, intermediates_only=True)
        model(images)
    for i in range(4):
        ours = captured[i].view(1, *theirs[i].shape[2:], -1).permute(0, 3, 1, 2)
        torch.testing.assert_close(ours, theirs[i], atol=1e-4, rtol=1e-4)


def test_window_size_change_resizes_the_bias_table() -> None:
    source, target = tiny(), tiny(window_size=12)
    with torch.no_grad():
        source.layers[0].blocks[0].attn.relative_position_bias_table.fill_(0.5)
    converted = checkpoint_filter_fn(_official_checkpoint(source), target)
    table = converted["layers.0.blocks.0.attn.relative_position_bias_table"]
    assert table.shape == (23 * 23, 1)
    torch.testing.assert_close(table, torch.full_like(table, 0.5))  # a constant table stays constant
    assert converted["layers.3.blocks.0.attn.relative_position_bias_table"].shape == (23 * 23, 8)
    result = target.load_state_dict(converted, strict=False)
    assert sorted(result.missing_keys) == NEW_NORMS and result.unexpected_keys == []
    assert torch.isfinite(target(torch.randn(1, 3, 96, 96))["res5"]).all()


def test_absolute_position_embedding_is_resized() -> None:
    model = tiny(ape=True, pretrain_img_size=64)  # 16x16 grid
    official = torch.randn(1, 8 * 8, 32)  # classification layout: 1 x L x C for a 32 px pre-training size
    converted = checkpoint_filter_fn({"absolute_pos_embed": official}, model)
    assert converted["absolute_pos_embed"].shape == (1, 32, 16, 16)
    model.load_state_dict(converted, strict=False)
    assert model(torch.randn(1, 3, 96, 160))["res2"].shape == (1, 32, 24, 40)


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    images = torch.randn(1, 3, 64, 96)
    grads = []
    for use_checkpoint in (False, True):
        model = tiny(drop_path_rate=0.0, use_checkpoint=use_checkpoint).train()
        sum(f.sum() for f in model(images).values()).backward()
        grads.append(model.layers[2].blocks[1].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize(
    ("build", "published_millions", "head_in"),
    [(swin_tiny, 28, 768), (swin_small, 50, 768), (swin_base, 88, 1024), (swin_large, 197, 1536)],
)
def test_variant_sizes(build, published_millions: int, head_in: int) -> None:
    with torch.device("meta"):
        model = build()
    backbone = sum(p.numel() for p in model.parameters())
    # The paper counts a 1000-class classifier; the backbone has norm0..3 instead of the final norm.
    extra_norms = sum(p.numel() for i in range(3) for p in getattr(model, f"norm{i}").parameters())
    with_head = backbone - extra_norms + head_in * 1000 + 1000
    assert abs(with_head / 1e6 - published_millions) < 1.0


def test_swin_large_layout() -> None:
    with torch.device("meta"):
        model = swin_large()
    assert 195e6 < sum(p.numel() for p in model.parameters()) < 196e6  # 195.2M without the classifier
    assert model.window_size == 12 and [f["channels"] for f in model.feature_info] == [192, 384, 768, 1536]
    assert model.layers[2].blocks[17].attn.relative_position_bias_table.shape == (23 * 23, 24)
    with torch.device("meta"):
        assert swin_large(window_size=7, drop_path_rate=0.1).window_size == 7


def test_from_config() -> None:
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "D2SwinTransformer"
    cfg.MODEL.SWIN.EMBED_DIM = 32
    cfg.MODEL.SWIN.DEPTHS = [1, 1, 2, 1]
    cfg.MODEL.SWIN.NUM_HEADS = [1, 2, 4, 8]
    cfg.MODEL.SWIN.WINDOW_SIZE = 12
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    backbone = build_backbone(cfg)
    assert isinstance(backbone, D2SwinTransformer)
    assert backbone.window_size == 12
    assert backbone.output_shape()["res4"].channels == 128 and backbone.output_shape()["res4"].stride == 16
    assert backbone.layers[-1].blocks[-1].drop_path.rate == pytest.approx(cfg.MODEL.SWIN.DROP_PATH_RATE)
    assert backbone(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 256, 2, 2)


# ---- what each of the family's config keys does (tests/test_config_keys.py collects and runs these) -----------------

CONFIG_KEY_CHECKS: dict[str, ConfigKeyCheck] = {
    "MODEL.SWIN.PRETRAIN_IMG_SIZE": Changes("64", "backbone", ("MODEL.SWIN.APE", "True")),
    "MODEL.SWIN.PATCH_SIZE": Changes("2", "backbone"),
    "MODEL.SWIN.EMBED_DIM": Changes("8", "backbone"),
    "MODEL.SWIN.DEPTHS": Changes("[1, 1, 1, 1]", "backbone"),
    "MODEL.SWIN.NUM_HEADS": Changes("[1, 1, 1, 1]", "backbone"),
    "MODEL.SWIN.WINDOW_SIZE": Changes("2", "backbone"),
    "MODEL.SWIN.MLP_RATIO": Changes("2.0", "backbone"),
    "MODEL.SWIN.QKV_BIAS": Changes("False", "backbone"),
    "MODEL.SWIN.QK_SCALE": Changes("0.5", "backbone_forward"),
    "MODEL.SWIN.DROP_RATE": Changes("0.5", "backbone_train"),
    "MODEL.SWIN.ATTN_DROP_RATE": Changes("0.5", "backbone_train"),
    "MODEL.SWIN.DROP_PATH_RATE": Changes("0.0", "backbone_train"),
    "MODEL.SWIN.APE": Changes("True", "backbone"),
    "MODEL.SWIN.PATCH_NORM": Changes("False", "backbone"),
    "MODEL.SWIN.OUT_FEATURES": Changes("['res3', 'res4', 'res5']", "backbone"),
    "MODEL.SWIN.USE_CHECKPOINT": Changes("True", "checkpointing"),
}
