"""ViTPyramid: the pyramid contract, timm's BEiT forward reproduced at the native grid, other grids, weights."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import TINY_MODEL, Changes, ConfigKeyCheck
from safetensors.torch import save_file
from timm.models.beit import gen_relative_position_index

from mask2former.config import ConfigError, get_cfg
from mask2former.modeling.backbone import vit_pyramid  # noqa: F401  (registers ViTPyramid and its keys)
from mask2former.modeling.backbone.base import build_backbone
from mask2former.modeling.backbone.vit_pyramid import (
    ViTPyramid,
    load_vit_pyramid_pretrained,
    relative_position_bias,
    relative_position_index,
)

BEIT = "beit_large_patch16_512"
VIT = "vit_large_patch16_384"
TINY = dict(embed_dim=32, depth=4, num_heads=2, img_size=64)  # 4 x 4 patch grid
INDICES = (0, 1, 2, 3)


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values everywhere (timm starts relative tables at zero and layer scales at one value)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def tiny(name: str = BEIT, seed: int = 0, **overrides) -> ViTPyramid:
    torch.manual_seed(seed)
    return ViTPyramid(name, {**TINY, **overrides}, INDICES, "BN")


def image(*size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


def tiny_cfg(*overrides: str):
    """conftest's TINY_MODEL sizes (EMBED_DIM 32, DEPTH 4, NUM_HEADS 2, IMG_SIZE 64, OUT_INDICES [0, 1, 2, 3])."""
    cfg = get_cfg()
    cfg.merge_from_list([*TINY_MODEL, "MODEL.BACKBONE.NAME", "ViTPyramid", *overrides])
    return cfg


# ---- the contract ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [BEIT, VIT])
@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_levels_have_strides_4_to_32_and_the_embedding_channels(name: str, size: tuple[int, int]) -> None:
    model = tiny(name).eval()
    assert model.size_divisibility == 32
    assert [(f["name"], f["channels"], f["stride"]) for f in model.feature_info] == [
        ("res2", 32, 4),
        ("res3", 32, 8),
        ("res4", 32, 16),
        ("res5", 32, 32),
    ]
    with torch.no_grad():
        outputs = model(image(*size))
    for level, spec in model.output_shape().items():
        assert tuple(outputs[level].shape) == (2, spec.channels, size[0] // spec.stride, size[1] // spec.stride)
        assert torch.isfinite(outputs[level]).all()


def test_the_neck_is_the_beit_recipe() -> None:
    levels = tiny().neck.levels
    up4 = levels["res2"]
    assert [type(m).__name__ for m in up4] == ["ConvTranspose2d", "BatchNorm2d", "GELU", "ConvTranspose2d"]
    assert all(m.kernel_size == (2, 2) and m.stride == (2, 2) for m in up4 if isinstance(m, torch.nn.ConvTranspose2d))
    assert [type(m).__name__ for m in levels["res3"]] == ["ConvTranspose2d"] and levels["res3"][0].stride == (2, 2)
    assert isinstance(levels["res4"], torch.nn.Identity)
    assert isinstance(levels["res5"], torch.nn.MaxPool2d) and levels["res5"].kernel_size == 2
    sync = ViTPyramid(BEIT, TINY, INDICES, "SyncBN").neck.levels["res2"]
    assert isinstance(sync[1], torch.nn.SyncBatchNorm)


def test_res4_is_the_token_map_and_res5_its_max_pool() -> None:
    model = tiny().eval()
    randomize(model.vit)
    x = image(64, 64)
    with torch.no_grad():
        maps, outputs = model.token_maps(x), model(x)
    torch.testing.assert_close(outputs["res4"], maps[2], rtol=0, atol=0)
    torch.testing.assert_close(outputs["res5"], torch.nn.functional.max_pool2d(maps[3], 2), rtol=0, atol=0)


@pytest.mark.parametrize("name", [BEIT, VIT])
def test_every_parameter_gets_a_finite_gradient(name: str) -> None:
    model = tiny(name, drop_path_rate=0.1).train()
    randomize(model.vit)
    outputs = model(image(64, 96))
    sum((value * torch.linspace(-1, 1, value.numel()).view_as(value)).sum() for value in outputs.values()).backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not without
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_blocks_after_the_last_out_index_are_dropped() -> None:
    model = ViTPyramid(BEIT, {**TINY, "depth": 6}, (0, 1, 2, 3))
    assert len(model.vit.blocks) == 4
    assert not any(name.startswith(("vit.head", "vit.norm", "vit.fc_norm")) for name, _ in model.named_parameters())


# ---- timm's own forward at the native grid --------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        {},  # BEiT-L: a table per block, no absolute embedding
        {"use_rel_pos_bias": False, "use_shared_rel_pos_bias": True},  # BEiT pre-training layout: one table
        {"use_abs_pos_emb": True, "use_rel_pos_bias": True, "use_shared_rel_pos_bias": True},  # both and abs
        {"init_values": None},  # no layer scale
    ],
)
def test_at_the_native_grid_the_blocks_equal_timms_forward(variant: dict) -> None:
    kwargs = {**TINY, **variant}
    model = ViTPyramid(BEIT, kwargs, INDICES).eval()
    randomize(model.vit, seed=3)
    reference = timm.create_model(BEIT, pretrained=False, num_classes=0, **kwargs).eval()
    result = reference.load_state_dict(model.vit.state_dict(), strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"fc_norm.weight", "fc_norm.bias"}
    x = image(64, 64, seed=1)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, indices=list(INDICES), intermediates_only=True)
        got = model.token_maps(x)
    assert expected[0].abs().mean() > 0.1  # not a trivial comparison
    for want, have in zip(expected, got, strict=True):
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)


def test_a_vit_gives_timms_intermediates_at_any_size() -> None:
    model = tiny(VIT).eval()
    randomize(model.vit, seed=4)
    reference = timm.create_model(VIT, pretrained=False, num_classes=0, dynamic_img_size=True, **TINY).eval()
    reference.load_state_dict(model.vit.state_dict(), strict=False)
    for size in [(64, 64), (96, 128)]:
        x = image(*size)
        with torch.no_grad():
            expected = reference.forward_intermediates(x, indices=list(INDICES), intermediates_only=True)
            got = model.token_maps(x)
        for want, have in zip(expected, got, strict=True):
            torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)


# ---- other grids ---------------------------------------------------------------------------------------------------


def test_the_index_at_the_native_grid_is_timms() -> None:
    for window in [(4, 4), (3, 5)]:
        assert torch.equal(relative_position_index(window, window), gen_relative_position_index(window))


@pytest.mark.parametrize("grid", [(2, 3), (6, 8)])
def test_each_pair_gets_the_tables_value_for_its_offset_clamped_to_the_window(grid: tuple[int, int]) -> None:
    window, heads = (4, 4), 2
    rows = (2 * window[0] - 1) * (2 * window[1] - 1)
    table = torch.randn(rows + 3, heads)
    bias = relative_position_bias(table, relative_position_index(grid, window))
    h, w = grid
    assert bias.shape == (1, heads, h * w + 1, h * w + 1)
    for query in range(h * w):
        for key in range(h * w):
            dy = max(-3, min(3, query // w - key // w))
            dx = max(-3, min(3, query % w - key % w))
            assert torch.equal(bias[0, :, 1 + query, 1 + key], table[(dy + 3) * 7 + dx + 3])
    assert torch.equal(bias[0, :, 0, 1], table[rows])  # class token to a patch
    assert torch.equal(bias[0, :, 1, 0], table[rows + 1])  # a patch to the class token
    assert torch.equal(bias[0, :, 0, 0], table[rows + 2])


@pytest.mark.parametrize("variant", [{}, {"use_abs_pos_emb": True, "use_shared_rel_pos_bias": True}])
def test_a_64px_model_runs_at_96x128_with_finite_outputs_and_gradients(variant: dict) -> None:
    model = ViTPyramid(BEIT, {**TINY, **variant}, INDICES).train()
    randomize(model.vit)
    outputs = model(image(96, 128))
    assert {k: tuple(v.shape[-2:]) for k, v in outputs.items()} == {
        "res2": (24, 32),
        "res3": (12, 16),
        "res4": (6, 8),
        "res5": (3, 4),
    }
    assert all(torch.isfinite(v).all() for v in outputs.values())
    sum(v.sum() for v in outputs.values()).backward()
    table = model.vit.blocks[0].attn.relative_position_bias_table
    assert table is None or (table.grad is not None and torch.isfinite(table.grad).all())
    with torch.no_grad():  # the cached index of one grid does not leak into another
        assert tuple(model.eval()(image(64, 64))["res4"].shape[-2:]) == (4, 4)


def test_a_size_not_divisible_by_32_is_refused() -> None:
    with pytest.raises(ValueError, match="divisible by 32"):
        tiny()(image(48, 64))


# ---- weights ------------------------------------------------------------------------------------------------------


def saved_timm_model(tmp_path, name: str = BEIT, suffix: str = ".pth", wrap: bool = False, **overrides):
    """A whole timm model (classifier included) with random values, saved as a checkpoint; returns (path, state)."""
    torch.manual_seed(5)
    source = timm.create_model(name, pretrained=False, **{**TINY, **overrides})
    randomize(source, seed=6)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state} if wrap else state, path)
    return path, state


@pytest.mark.parametrize("name,suffix", [(BEIT, ".pth"), (BEIT, ".safetensors"), (VIT, ".pth")])
def test_weights_land_in_the_vit_and_the_neck_starts_fresh(tmp_path, name: str, suffix: str) -> None:
    path, state = saved_timm_model(tmp_path, name, suffix)
    model = tiny(name).eval()
    neck_before = {k: v.clone() for k, v in model.neck.state_dict().items()}
    x = image(64, 64)
    with torch.no_grad():
        before = model(x)
    report = ViTPyramid.load_pretrained(model, path)
    own = model.vit.state_dict()
    for key, value in own.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert set(report["missing"]) == set(report["new_neck"]) == {f"neck.{k}" for k in neck_before}
    assert {"head.weight", "head.bias"} <= set(report["unexpected"])
    for key, value in model.neck.state_dict().items():
        assert torch.equal(value, neck_before[key])
    with torch.no_grad():
        after = model(x)
    assert all(not torch.allclose(before[k], after[k]) for k in before)


def test_a_shared_table_checkpoint_in_the_official_wrapper_fills_every_blocks_table(tmp_path) -> None:
    path, state = saved_timm_model(tmp_path, wrap=True, use_rel_pos_bias=False, use_shared_rel_pos_bias=True)
    model = tiny()
    report = load_vit_pyramid_pretrained(model, path)
    shared = state["rel_pos_bias.relative_position_bias_table"]
    for block in model.vit.blocks:
        assert torch.equal(block.attn.relative_position_bias_table.detach(), shared)
    assert not [k for k in report["missing"] if not k.startswith("neck.")]


def test_weights_of_another_grid_are_resized_by_timms_filter(tmp_path) -> None:
    path, state = saved_timm_model(tmp_path, img_size=32)  # 2 x 2 window: 9 + 3 table rows
    model = tiny()  # 4 x 4 window: 49 + 3 rows
    load_vit_pyramid_pretrained(model, path)
    table = model.vit.blocks[0].attn.relative_position_bias_table
    assert table.shape == (52, 2)
    torch.testing.assert_close(table[-3:].detach(), state["blocks.0.attn.relative_position_bias_table"][-3:])
    torch.testing.assert_close(model.vit.blocks[1].mlp.fc1.weight.detach(), state["blocks.1.mlp.fc1.weight"])


def test_blocks_the_model_dropped_are_reported_unused(tmp_path) -> None:
    path, _ = saved_timm_model(tmp_path, depth=6)
    model = ViTPyramid(BEIT, {**TINY, "depth": 6}, INDICES)
    report = load_vit_pyramid_pretrained(model, path)
    assert any(k.startswith("blocks.5.") for k in report["unexpected"])
    assert not [k for k in report["missing"] if not k.startswith("neck.")]


def test_a_checkpoint_of_another_width_is_refused(tmp_path) -> None:
    path, _ = saved_timm_model(tmp_path, embed_dim=64)
    with pytest.raises(ConfigError, match="MODEL.BACKBONE.WEIGHTS .* does not fit MODEL.VIT_PYRAMID.NAME"):
        load_vit_pyramid_pretrained(tiny(), path)


# ---- config ------------------------------------------------------------------------------------------------------


def test_the_config_builds_the_tiny_model_through_the_registry() -> None:
    cfg = tiny_cfg("MODEL.VIT_PYRAMID.DROP_PATH_RATE", "0.2", "MODEL.VIT_PYRAMID.INIT_VALUES", "0.5")
    model = build_backbone(cfg)
    assert isinstance(model, ViTPyramid)
    assert model.vit.embed_dim == 32 and len(model.vit.blocks) == 4
    assert model.vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    assert torch.all(model.vit.blocks[0].gamma_1 == 0.5)
    defaults = get_cfg().MODEL.VIT_PYRAMID
    assert defaults.NAME == BEIT and list(defaults.OUT_INDICES) == [7, 11, 15, 23]


def test_no_rel_pos_bias_and_patch_8_follow_the_keys() -> None:
    model = build_backbone(tiny_cfg("MODEL.VIT_PYRAMID.USE_REL_POS_BIAS", "False", "MODEL.VIT_PYRAMID.PATCH_SIZE", "8"))
    assert model.vit.blocks[0].attn.relative_position_bias_table is None
    outputs = model.eval()(image(64, 64))
    assert {k: v.shape[-1] for k, v in outputs.items()} == {"res2": 16, "res3": 8, "res4": 4, "res5": 2}


@pytest.mark.parametrize("indices", ["[0, 1, 2, 4]", "[-1, 0, 1, 2]", "[0, 1, 2]", "[3, 2, 1, 0]"])
def test_out_indices_that_do_not_name_4_increasing_blocks_are_refused(indices: str) -> None:
    with pytest.raises(ConfigError, match=r"MODEL.VIT_PYRAMID.OUT_INDICES .* block indices in 0\.\.3"):
        build_backbone(tiny_cfg("MODEL.VIT_PYRAMID.OUT_INDICES", indices))


def test_models_that_are_not_plain_vits_and_bad_norms_are_refused() -> None:
    with pytest.raises(ConfigError, match="MODEL.VIT_PYRAMID.NAME 'resnet18'"):
        build_backbone(tiny_cfg("MODEL.VIT_PYRAMID.NAME", "'resnet18'"))
    with pytest.raises(ConfigError, match="MODEL.VIT_PYRAMID.NAME 'no_such_vit'"):
        build_backbone(tiny_cfg("MODEL.VIT_PYRAMID.NAME", "'no_such_vit'"))
    with pytest.raises(ConfigError, match=r"norm 'LN' \(MODEL.VIT_PYRAMID.NECK_NORM\)"):
        build_backbone(tiny_cfg("MODEL.VIT_PYRAMID.NECK_NORM", "'LN'"))
    with pytest.raises(ConfigError, match="MODEL.VIT_PYRAMID.PATCH_SIZE"):
        build_backbone(tiny_cfg("MODEL.VIT_PYRAMID.PATCH_SIZE", "12", "MODEL.VIT_PYRAMID.IMG_SIZE", "48"))


# ---- what each of the family's config keys does (tests/test_config_keys.py collects and runs these) -----------------

_KEYS_VIT = (
    "MODEL.BACKBONE.NAME", "ViTPyramid", "MODEL.VIT_PYRAMID.EMBED_DIM", "32", "MODEL.VIT_PYRAMID.DEPTH", "6",
    "MODEL.VIT_PYRAMID.NUM_HEADS", "2", "MODEL.VIT_PYRAMID.IMG_SIZE", "64", "MODEL.VIT_PYRAMID.OUT_INDICES",
    "[1, 2, 3, 5]",
)  # fmt: skip

CONFIG_KEY_CHECKS: dict[str, ConfigKeyCheck] = {
    "MODEL.VIT_PYRAMID.NAME": Changes("'vit_base_patch16_224'", "backbone", _KEYS_VIT),
    "MODEL.VIT_PYRAMID.EMBED_DIM": Changes("64", "backbone", _KEYS_VIT),
    "MODEL.VIT_PYRAMID.DEPTH": Changes("8", "backbone", (*_KEYS_VIT, "MODEL.VIT_PYRAMID.OUT_INDICES", "[1, 2, 3, 7]")),
    "MODEL.VIT_PYRAMID.NUM_HEADS": Changes("4", "backbone_forward", _KEYS_VIT),
    "MODEL.VIT_PYRAMID.PATCH_SIZE": Changes("8", "backbone", _KEYS_VIT),
    "MODEL.VIT_PYRAMID.IMG_SIZE": Changes("32", "backbone", _KEYS_VIT),
    "MODEL.VIT_PYRAMID.DROP_PATH_RATE": Changes("0.5", "backbone_train", _KEYS_VIT),
    "MODEL.VIT_PYRAMID.INIT_VALUES": Changes("0.5", "backbone_forward", _KEYS_VIT),
    "MODEL.VIT_PYRAMID.USE_REL_POS_BIAS": Changes("False", "backbone", _KEYS_VIT),
    "MODEL.VIT_PYRAMID.OUT_INDICES": Changes("[0, 1, 2, 3]", "backbone", _KEYS_VIT),
    "MODEL.VIT_PYRAMID.NECK_NORM": Changes("'GN'", "backbone", _KEYS_VIT),
}
