"""Layer-wise LR decay (SOLVER.LAYER_DECAY, mask2former/engine/optimizer.py): the layer id of named parameters, the
LR of every parameter against a direct computation for tiny BEiT / ConvNeXt UPerNets and an EoMT-style encoder, the
published recipes in the configs, and LAYER_DECAY 1.0 giving exactly the groups built before the key existed."""

from __future__ import annotations

import re

import pytest
import timm
import torch
from conftest import REPO, make_tiny
from torch import nn

from mask2former.config import ConfigError, get_cfg
from mask2former.engine.optimizer import _EMBED_NAMES, _NORM_TYPES, build_optimizer, layer_id, parameter_groups
from mask2former.modeling.build import build_model


def tiny_cfg(name: str, *opts: str):
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / name))
    make_tiny(cfg)
    cfg.merge_from_list(list(opts))
    return cfg


def groups_before_layer_decay(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    weight_decay_embed: float,
    backbone_multiplier: float,
) -> list[dict]:
    """parameter_groups as it was before SOLVER.LAYER_DECAY (the reference the key at 1.0 must reproduce)."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{name}" if module_name else name
            lr = base_lr * backbone_multiplier if full_name.startswith("backbone.") else base_lr
            if isinstance(module, _NORM_TYPES):
                decay = weight_decay_norm
            elif isinstance(module, nn.Embedding) or any(key in name for key in _EMBED_NAMES):
                decay = weight_decay_embed
            else:
                decay = weight_decay
            groups.setdefault((lr, decay), []).append(param)
    return [
        {"params": params, "lr": lr, "initial_lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()
    ]


def lr_of_each_parameter(groups: list[dict]) -> dict[int, float]:
    return {id(param): group["lr"] for group in groups for param in group["params"]}


def same_groups(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for mine, theirs in zip(got, want, strict=True):
        assert [id(p) for p in mine["params"]] == [id(p) for p in theirs["params"]]
        assert (mine["lr"], mine["initial_lr"], mine["weight_decay"]) == (
            theirs["lr"],
            theirs["initial_lr"],
            theirs["weight_decay"],
        )


# ---- layer ids of named parameters ----------------------------------------------------------------------------------


def test_vit_ids_are_the_beit_recipes() -> None:
    assert layer_id("vit.cls_token", 24, "vit") == 0
    assert layer_id("vit.pos_embed", 24, "vit") == 0
    assert layer_id("vit.patch_embed.proj.weight", 24, "vit") == 0
    assert layer_id("vit.blocks.0.attn.qkv.weight", 24, "vit") == 1
    assert layer_id("vit.blocks.23.mlp.fc2.bias", 24, "vit") == 24
    assert layer_id("vit.blocks.7.attn.relative_position_bias_table", 24, "vit") == 8
    assert layer_id("vit.rel_pos_bias.relative_position_bias_table", 24, "vit") == 25  # shared table: BEiT's "else"
    assert layer_id("neck.levels.res2.0.weight", 24, "vit") == 25


def test_convnext_ids_are_stage_wise() -> None:
    for stem in ("body.stem_0.weight", "body.stem_1.bias", "stem.0.weight", "body.stages_1.downsample.1.weight"):
        assert layer_id(stem, 12, "convnext") == 0, stem
    assert layer_id("body.stages_0.blocks.1.conv_dw.weight", 12, "convnext") == 1
    assert layer_id("body.stages_2.blocks.26.mlp.fc1.weight", 12, "convnext") == 3
    assert layer_id("stages.3.blocks.0.gamma", 12, "convnext") == 4
    assert layer_id("body.norm_pre.weight", 12, "convnext") == 13


def test_eomt_ids_put_the_embeddings_beside_block_0() -> None:
    for name in ("cls_token", "reg_token", "pos_embed", "patch_embed.proj.bias", "blocks.0.norm1.weight"):
        assert layer_id(name, 23, "eomt") == 1, name
    assert layer_id("blocks.23.mlp.fc1.weight", 23, "eomt") == 24
    assert layer_id("norm.weight", 23, "eomt") == 24


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind 'swin' is not one of"):
        layer_id("blocks.0.x", 4, "swin")


# ---- the LR of every parameter under decay --------------------------------------------------------------------------


def beit_layer(name: str, depth: int) -> int:
    if name.startswith("backbone.vit.blocks."):
        return int(name.split(".")[3]) + 1
    if name in ("backbone.vit.cls_token", "backbone.vit.pos_embed") or name.startswith("backbone.vit.patch_embed."):
        return 0
    return depth + 1


def convnext_stage(name: str, num_layers: int) -> int:
    part = name.split(".")[2]  # backbone.body.<stem_i | stages_s>...
    if part.startswith("stem_") or ".downsample." in name:
        return 0
    return int(part.removeprefix("stages_")) + 1 if part.startswith("stages_") else num_layers + 1


@pytest.mark.parametrize(
    ("config", "decay", "num_layers", "own_layers", "layer"),
    [
        ("upernet_beit_l.yaml", 0.95, 0, 4, beit_layer),  # tiny: 4 blocks
        ("upernet_convnext_xl.yaml", 0.9, 12, 4, convnext_stage),
    ],
)
def test_each_parameters_lr_is_the_decayed_backbone_lr(config, decay, num_layers, own_layers, layer) -> None:
    cfg = tiny_cfg(config, "SOLVER.BACKBONE_MULTIPLIER", "0.5")
    assert (decay, num_layers) == (cfg.SOLVER.LAYER_DECAY, cfg.SOLVER.LAYER_DECAY_NUM_LAYERS)  # the published recipes
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    lrs = lr_of_each_parameter(optimizer.param_groups)
    count = num_layers or own_layers
    base = cfg.SOLVER.BASE_LR
    seen_layers = set()
    for name, param in model.named_parameters():
        if name.startswith("backbone."):
            seen_layers.add(layer(name, count))
            want = base * 0.5 * decay ** (count + 1 - layer(name, count))
        else:
            want = base
        assert lrs[id(param)] == pytest.approx(want, rel=1e-12), name
    assert seen_layers == ({0, 1, 2, 3, 4, count + 1} if config.startswith("upernet_beit") else {0, 1, 2, 3, 4})
    before = groups_before_layer_decay(model, base, cfg.SOLVER.WEIGHT_DECAY, 0.0, 0.0, 0.5)
    decays = {id(p): group["weight_decay"] for group in before for p in group["params"]}
    assert all(decays[id(p)] == group["weight_decay"] for group in optimizer.param_groups for p in group["params"])


def official_eomt_lrs(named: list[tuple[str, nn.Parameter]], blocks: int, lr: float, llrd: float) -> dict[int, float]:
    """tue-mps/eomt's configure_optimizers for its encoder (lr_mult 1.0, llrd_l2_enabled True), written out: the
    parameters walked last to first, each block i at lr x llrd ** (blocks - 1 - i), what precedes block 0 (tokens,
    patch embedding) at block 0's LR, the final norm and what follows the blocks at lr."""
    lrs = {}
    block = blocks
    for name, param in reversed(named):
        match = re.search(r"(?:^|\.)blocks\.(\d+)\.", name)
        if match:
            block = int(match.group(1))
        scaled = lr * llrd ** (blocks - 1 - block) if match or block == 0 else lr
        lrs[id(param)] = lr if name.startswith("backbone.norm") else scaled
    return lrs


def test_an_eomt_encoder_gets_the_official_llrd() -> None:
    model = nn.Module()
    model.backbone = timm.create_model(
        "vit_small_patch14_reg4_dinov2",
        pretrained=False,
        num_classes=0,
        img_size=28,
        embed_dim=16,
        depth=5,
        num_heads=2,
    )
    model.q = nn.Embedding(3, 16)
    model.class_head = nn.Linear(16, 4)
    groups = parameter_groups(model, 1e-4, 0.05, 0.0, 0.0, 1.0, layer_decay=0.8)
    want = official_eomt_lrs(list(model.named_parameters()), 5, 1e-4, 0.8)
    got = lr_of_each_parameter(groups)
    for name, param in model.named_parameters():
        assert got[id(param)] == pytest.approx(want[id(param)], rel=1e-12), name
    assert got[id(model.backbone.cls_token)] == pytest.approx(1e-4 * 0.8**4)
    assert got[id(model.backbone.blocks[4].mlp.fc1.weight)] == 1e-4


# ---- LAYER_DECAY 1.0 is exactly the groups without it ---------------------------------------------------------------


@pytest.mark.parametrize("config", ["upernet_beit_l.yaml", "upernet_convnext_xl.yaml", "quickstart.yaml"])
def test_decay_1_gives_the_groups_built_before_the_key(config: str) -> None:
    cfg = tiny_cfg(config, "SOLVER.LAYER_DECAY", "1.0", "SOLVER.WEIGHT_DECAY_NORM", "0.01")
    torch.manual_seed(0)
    model = build_model(cfg)
    solver = cfg.SOLVER
    want = groups_before_layer_decay(
        model,
        solver.BASE_LR,
        solver.WEIGHT_DECAY,
        solver.WEIGHT_DECAY_NORM,
        solver.WEIGHT_DECAY_EMBED,
        solver.BACKBONE_MULTIPLIER,
    )
    same_groups(build_optimizer(cfg, model).param_groups, want)


# ---- refusals -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "opts", "message"),
    [
        ("upernet_beit_l.yaml", ("SOLVER.LAYER_DECAY", "0.0"), "SOLVER.LAYER_DECAY 0.0: give a factor > 0"),
        (
            "upernet_beit_l.yaml",
            ("SOLVER.LAYER_DECAY_NUM_LAYERS", "2"),
            "SOLVER.LAYER_DECAY_NUM_LAYERS 2 is below the backbone's 4 layers: give 0",
        ),
        (
            "quickstart.yaml",
            ("SOLVER.LAYER_DECAY", "0.9"),
            "SOLVER.LAYER_DECAY: the backbone D2SwinTransformer has no layer-wise rule",
        ),
    ],
)
def test_settings_that_cannot_work_are_refused_in_one_line(config: str, opts: tuple[str, ...], message: str) -> None:
    cfg = tiny_cfg(config, *opts)
    model = build_model(cfg)
    with pytest.raises(ConfigError) as error:
        build_optimizer(cfg, model)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
