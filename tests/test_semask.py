"""SeMask: the semantic layer, the official global-stage rule, the semantic prior and loss_cate, the official head,
config options and errors, official checkpoint keys. The references are written out from the official code
(SeMask-Mask2Former semask_swin.py / branch_mask_former_head.py), not by calling the project's functions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, Changes, ConfigKeyCheck, CoveredBy

from mask2former.config import ConfigError, get_cfg, load_config
from mask2former.modeling.build import build_model
from mask2former.modeling.weights import load_model_weights
from semask import (
    PRIOR_LOSS,
    BranchMaskFormerHead,
    D2SeMaskSwinTransformer,
    class_map_key,
    load_semask_pretrained,
    official_global_stages,
    semantic_prior,
    semantic_prior_loss,
)
from semask.semantic_layer import SemanticAttention, SemanticLayer

TINY_OPTS = ["MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.SEM_WINDOW_SIZE", "4", "MODEL.MASK_FORMER.DEC_LAYERS", "2"]


def tiny_backbone(num_classes: int = 5, **kwargs) -> D2SeMaskSwinTransformer:
    torch.manual_seed(0)
    options = dict(
        num_classes=num_classes,
        sem_window_size=4,
        embed_dim=16,
        depths=(1, 1, 2, 1),
        num_heads=(1, 1, 2, 2),
        window_size=4,
        drop_path_rate=0.0,
    )
    return D2SeMaskSwinTransformer(**{**options, **kwargs})


def tiny_model(config: str = "quickstart_semask.yaml", opts: tuple[str, ...] = ()):
    cfg = load_config(str(REPO / "configs" / config), [*TINY_OPTS, *opts])
    torch.manual_seed(0)
    return build_model(cfg), cfg


def batch(size: int = 64) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    items = []
    for _ in range(2):
        label = torch.zeros(size, size, dtype=torch.long)
        label[: size // 2, : size // 3] = 3
        label[size // 2 :, size // 2 :] = 10
        label[0, :5] = 255
        image = torch.randint(0, 255, (3, size, size), generator=generator, dtype=torch.uint8)
        items.append({"image": image, "sem_seg": label, "height": size, "width": size})
    return items


def randomised_layer(window: int, blocks: int = 2, **kwargs) -> SemanticLayer:
    """A layer whose attention branch is switched on (random gamma and mlp_res), so every term shows."""
    torch.manual_seed(0)
    layer = SemanticLayer(dim=6, num_classes=3, window=window, num_blocks=blocks, **kwargs).eval()
    with torch.no_grad():
        for name, param in layer.named_parameters():
            param.copy_(torch.randn_like(param) * 0.5 + (1.0 if name == "norm1.weight" else 0.0))
    return layer


def reference_block(block: SemanticAttention, tokens: torch.Tensor, valid: torch.Tensor) -> tuple:
    """One official SemanticAttention on one window's tokens (N x C); `valid` (N bools) = keys in the softmax."""
    q, k, v = block.mlp_cls_q(tokens), block.mlp_cls_k(tokens), block.mlp_v(tokens)
    mixed = torch.zeros_like(tokens)
    for m in range(len(tokens)):
        scores = torch.stack([(q[m] * k[n]).sum() for n in range(len(tokens))])
        weights = torch.zeros(len(tokens))
        weights[valid] = (
            torch.exp(scores[valid] - scores[valid].max()) / torch.exp(scores[valid] - scores[valid].max()).sum()
        )
        mixed[m] = (weights[:, None] * v).sum(0)
    return q, tokens + block.gamma * block.mlp_res(mixed)


def reference_layer(layer: SemanticLayer, x: torch.Tensor, h: int, w: int, global_attention: bool, mask_padding: bool):
    """The official SWSeMaskBlock / SeMaskBlock, written out: LayerNorm; global: the blocks on all H W tokens;
    windowed: zero-pad the normalised map to Hp x Wp (multiples of the window), the blocks on each window's
    window^2 tokens (padding among the keys unless `mask_padding`), crop."""
    batch, _, channels = x.shape
    normed = layer.norm1(x)
    if global_attention:
        outs, maps = [], []
        for b in range(batch):
            tokens = normed[b]
            for block in layer.class_injection:
                class_map, tokens = reference_block(block, tokens, torch.ones(h * w, dtype=torch.bool))
            outs.append(tokens)
            maps.append(class_map)
        return torch.stack(maps).transpose(1, 2).reshape(batch, -1, h, w), torch.stack(outs)
    window = layer.window
    hp, wp = -(-h // window) * window, -(-w // window) * window
    padded = torch.zeros(batch, hp, wp, channels)
    padded[:, :h, :w] = normed.view(batch, h, w, channels)
    features = torch.zeros(batch, hp, wp, channels)
    class_maps = torch.zeros(batch, hp, wp, layer.num_classes)
    for b in range(batch):
        for top in range(0, hp, window):
            for left in range(0, wp, window):
                cells = [(top + i, left + j) for i in range(window) for j in range(window)]
                tokens = torch.stack([padded[b, i, j] for i, j in cells])
                valid = torch.tensor([(i < h and j < w) or not mask_padding for i, j in cells])
                for block in layer.class_injection:
                    class_map, tokens = reference_block(block, tokens, valid)
                for n, (i, j) in enumerate(cells):
                    features[b, i, j], class_maps[b, i, j] = tokens[n], class_map[n]
    class_maps = class_maps[:, :h, :w].permute(0, 3, 1, 2)
    return class_maps, features[:, :h, :w].reshape(batch, h * w, channels)


@pytest.mark.parametrize(("h", "w"), [(3, 3), (2, 3), (4, 4), (9, 6), (5, 11)])  # window 4: smaller, equal, larger
@pytest.mark.parametrize(
    ("global_attention", "mask_padding"),
    [(False, False), (False, True), (True, False)],
    ids=["official", "masked", "global"],
)
def test_semantic_layer_equals_the_written_out_official_layer(h, w, global_attention, mask_padding) -> None:
    layer = randomised_layer(4, global_attention=global_attention, mask_padding=mask_padding)
    x = torch.randn(2, h * w, 6)
    with torch.no_grad():
        class_map, features = layer(x, h, w)
        expected_map, expected = reference_layer(layer, x, h, w, global_attention, mask_padding)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(class_map, expected_map, rtol=1e-5, atol=1e-5)


def test_padding_and_global_attention_change_the_result() -> None:
    x = torch.randn(1, 5 * 6, 6)
    with torch.no_grad():
        official = randomised_layer(4)(x, 5, 6)[1]
        masked = randomised_layer(4, mask_padding=True)(x, 5, 6)[1]
        glob = randomised_layer(4, global_attention=True)(x, 5, 6)[1]
        # a map of whole windows has no padding: the option changes nothing there
        whole = torch.randn(1, 8 * 4, 6)
        torch.testing.assert_close(
            randomised_layer(4)(whole, 8, 4)[1], randomised_layer(4, mask_padding=True)(whole, 8, 4)[1]
        )
    assert not torch.allclose(official, masked, atol=1e-3) and not torch.allclose(official, glob, atol=1e-3)


def test_official_init_keeps_the_branch_off_and_kaiming_lets_it_learn() -> None:
    x = torch.randn(4, 16, 8)
    official = SemanticAttention(dim=8, num_classes=3).eval()
    assert official.mlp_res.weight.abs().sum() == 0 and official.gamma.item() == 0
    class_map, out = official(x)
    torch.testing.assert_close(out, x)  # identity at the start
    out.square().sum().backward()
    # each factor blocks the other's gradient: the official branch never switches on
    assert official.gamma.grad.abs() == 0 and official.mlp_res.weight.grad.abs().sum() == 0
    kaiming = SemanticAttention(dim=8, num_classes=3, res_init="kaiming").eval()
    assert kaiming.mlp_res.weight.abs().sum() > 0
    out = kaiming(x)[1]
    torch.testing.assert_close(out, x)  # identity at the start too (gamma = 0)...
    out.square().sum().backward()
    assert kaiming.gamma.grad.abs() > 0  # ...but the gain learns from the main loss
    with pytest.raises(ValueError, match="res_init"):
        SemanticAttention(dim=8, num_classes=3, res_init="xavier")


@pytest.mark.parametrize(
    ("classes", "decoder", "expected"),
    [
        (150, "MSDeformAttnPixelDecoder", (3,)),  # SeMask-Mask2Former on ADE20K
        (11, "MSDeformAttnPixelDecoder", ()),  # SeMask-Mask2Former, any other class count
        (11, "PixelFANDecoder", (2, 3)),  # SeMask-FAPN, any class count
        (150, "MSDeformAttnPixelFANDecoder", (2, 3)),
    ],
)
def test_official_global_stage_rule(classes: int, decoder: str, expected: tuple) -> None:
    assert official_global_stages(classes, decoder) == expected


def test_global_stages_from_the_configs() -> None:
    def stages(config: str, *opts: str) -> list[int]:
        cfg = load_config(str(REPO / "configs" / config), [*TINY_OPTS, *opts])
        backbone = build_model(cfg).backbone
        return [i for i, stage in enumerate(backbone.layers) if stage.semantic_layer.global_attention]

    assert stages("quickstart_semask.yaml") == []
    assert stages("quickstart_semask.yaml", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "150") == [3]
    assert stages("quickstart_semask.yaml", "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "PixelFANDecoder") == [2, 3]
    assert stages("quickstart_semask.yaml", "MODEL.SEMASK.GLOBAL_STAGES", "[1, 3]") == [1, 3]
    fapn = load_config(str(REPO / "configs" / "semask_fapn_swin_l.yaml"))
    assert fapn.MODEL.SEMASK.GLOBAL_STAGES is None and fapn.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME == "PixelFANDecoder"
    with pytest.raises(ConfigError, match="MODEL.SEMASK.GLOBAL_STAGES"):
        stages("quickstart_semask.yaml", "MODEL.SEMASK.GLOBAL_STAGES", "[4]")
    with pytest.raises(ConfigError, match="MODEL.SEMASK.RES_PROJ_INIT"):
        stages("quickstart_semask.yaml", "MODEL.SEMASK.RES_PROJ_INIT", "xavier")
    with pytest.raises(ConfigError, match="MODEL.SWIN.NUM_SEM_BLOCKS"):
        stages("quickstart_semask.yaml", "MODEL.SWIN.NUM_SEM_BLOCKS", "0")


def test_options_reach_every_semantic_layer() -> None:
    model, _ = tiny_model(opts=("MODEL.SEMASK.MASK_PADDING", "True", "MODEL.SEMASK.RES_PROJ_INIT", "kaiming"))
    for stage in model.backbone.layers:
        assert stage.semantic_layer.mask_padding
        assert stage.semantic_layer.class_injection[0].mlp_res.weight.abs().sum() > 0
    official, _ = tiny_model()
    for stage in official.backbone.layers:
        assert not stage.semantic_layer.mask_padding
        assert stage.semantic_layer.class_injection[0].mlp_res.weight.abs().sum() == 0


def resize_align_corners(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize with align_corners=True written out: output i samples input i (n_in - 1) / (n_out - 1)."""

    def axis(size_in: int, size_out: int) -> torch.Tensor:
        matrix = torch.zeros(size_out, size_in)
        for i in range(size_out):
            pos = i * (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
            low = min(int(pos), size_in - 1)
            high = min(low + 1, size_in - 1)
            matrix[i, low] += 1 - (pos - low)
            matrix[i, high] += pos - low
        return matrix

    rows, cols = axis(x.shape[-2], height), axis(x.shape[-1], width)
    return torch.einsum("hi,bkij,wj->bkhw", rows, x, cols)


def reference_prior(class_maps: list[torch.Tensor]) -> torch.Tensor:
    """The official SemanticHead for strides 4, 8, 16, 32: x2 steps (align_corners=True) from each stage, a resize
    to the stride-4 map, the sum, then x4 (align_corners=True)."""
    prior = class_maps[0]
    for steps, class_map in enumerate(class_maps[1:], start=1):
        for _ in range(steps):
            class_map = resize_align_corners(class_map, 2 * class_map.shape[-2], 2 * class_map.shape[-1])
        prior = prior + resize_align_corners(class_map, *prior.shape[-2:])
    return resize_align_corners(prior, 4 * prior.shape[-2], 4 * prior.shape[-1])


@pytest.mark.parametrize("sizes", [[(16, 24), (8, 12), (4, 6), (2, 3)], [(7, 9), (4, 5), (2, 3), (1, 2)]])
def test_semantic_prior_equals_the_official_x2_steps(sizes: list[tuple[int, int]]) -> None:
    torch.manual_seed(0)
    maps = [torch.randn(2, 3, h, w) for h, w in sizes]
    prior = semantic_prior(maps, [4, 8, 16, 32])
    assert prior.shape == (2, 3, 4 * sizes[0][0], 4 * sizes[0][1])
    torch.testing.assert_close(prior, reference_prior(maps), rtol=1e-5, atol=1e-5)
    # not the one-step resize with align_corners=False
    one_step = sum(F.interpolate(m, size=sizes[0], mode="bilinear", align_corners=False) for m in maps)
    one_step = F.interpolate(one_step, size=prior.shape[-2:], mode="bilinear", align_corners=False)
    assert not torch.allclose(prior, one_step, atol=1e-3)


def test_backbone_returns_features_and_class_maps() -> None:
    backbone = tiny_backbone(num_classes=5)
    out = backbone(torch.randn(2, 3, 64, 96))
    for i in range(2, 6):
        stride = 4 * 2 ** (i - 2)
        assert out[f"res{i}"].shape == (2, 16 * 2 ** (i - 2), 64 // stride, 96 // stride)
        assert out[class_map_key(f"res{i}")].shape == (2, 5, 64 // stride, 96 // stride)


def test_loss_cate_is_the_cross_entropy_of_the_official_prior() -> None:
    model, cfg = tiny_model()
    model.train()
    captured = {}
    model.backbone.register_forward_hook(lambda module, args, out: captured.update(out))
    torch.manual_seed(1)
    losses = model(batch())
    maps = [captured[class_map_key(f"res{i}")].detach() for i in range(2, 6)]
    labels = torch.stack([item["sem_seg"] for item in batch()])
    expected = F.cross_entropy(reference_prior(maps), labels, ignore_index=255)
    torch.testing.assert_close(losses[PRIOR_LOSS].detach(), expected, rtol=1e-4, atol=1e-5)
    assert model.criterion.weight_dict[PRIOR_LOSS] == pytest.approx(0.4)


def test_prior_loss_ignores_the_ignore_value_and_needs_matching_sizes() -> None:
    prior = torch.randn(2, 4, 32, 32)
    labels = torch.randint(0, 4, (2, 32, 32))
    labels[:, :4] = 255
    torch.testing.assert_close(
        semantic_prior_loss(prior, labels, 255), F.cross_entropy(prior, labels, ignore_index=255)
    )
    assert semantic_prior_loss(prior, torch.full((2, 32, 32), 255), 255).item() == 0.0
    with pytest.raises(ValueError, match="differ"):
        semantic_prior_loss(prior, labels[:, :16], 255)


@pytest.mark.parametrize("res_init", ["zeros", "kaiming"])
def test_prior_loss_reaches_the_semantic_layers(res_init: str) -> None:
    model, cfg = tiny_model(opts=("MODEL.SEMASK.RES_PROJ_INIT", res_init))
    model.train()
    losses = model(batch())
    assert PRIOR_LOSS in losses and torch.isfinite(losses[PRIOR_LOSS]) and losses[PRIOR_LOSS] > 0
    losses[PRIOR_LOSS].backward()
    for stage in model.backbone.layers:
        assert stage.semantic_layer.class_injection[0].mlp_cls_q.weight.grad.abs().sum() > 0
        assert stage.semantic_layer.norm1.weight.grad.abs().sum() > 0
    assert model.backbone.patch_embed.proj.weight.grad.abs().sum() > 0  # the prior shapes the whole backbone
    model.zero_grad()
    model.criterion.weighted_total(model(batch())).backward()
    gamma = model.backbone.layers[0].semantic_layer.class_injection[0].gamma.grad.abs()
    assert (gamma > 0) if res_init == "kaiming" else (gamma == 0)


def test_inference_is_an_ordinary_model() -> None:
    model, cfg = tiny_model()
    model.eval()
    with torch.no_grad():
        outputs = model(batch())
    assert list(outputs[0]) == ["sem_seg"]
    assert outputs[0]["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 64, 64)


def test_an_official_style_config_builds(tmp_path: Path) -> None:
    """The official SeMask keys (semask_maskformer2_R50 + the Swin-L file), narrowed to a tiny model."""
    (tmp_path / "official.yaml").write_text(
        "MODEL:\n"
        '  META_ARCHITECTURE: "SeMaskMaskFormer"\n'
        '  BACKBONE:\n    NAME: "D2SeMaskSwinTransformer"\n'
        "  SWIN:\n    EMBED_DIM: 16\n    DEPTHS: [1, 1, 2, 1]\n    NUM_HEADS: [1, 1, 2, 2]\n    WINDOW_SIZE: 4\n"
        "    SEM_WINDOW_SIZE: 4\n    NUM_SEM_BLOCKS: 1\n"
        '  SEM_SEG_HEAD:\n    NAME: "BranchMaskFormerHead"\n    NUM_CLASSES: 150\n    CONVS_DIM: 32\n'
        "    MASK_DIM: 32\n    TRANSFORMER_ENC_LAYERS: 1\n"
        "  MASK_FORMER:\n    CATE_WEIGHT: 0.4\n    HIDDEN_DIM: 32\n    DEC_LAYERS: 2\n    NUM_OBJECT_QUERIES: 4\n"
    )
    model = build_model(load_config(str(tmp_path / "official.yaml")))
    assert isinstance(model.sem_seg_head, BranchMaskFormerHead)
    assert [stage.semantic_layer.global_attention for stage in model.backbone.layers] == [False, False, False, True]
    assert not any(k.startswith("sem_seg_head.sem_head") for k in model.state_dict())  # no parameters, as official


def test_head_and_meta_architecture_must_go_together() -> None:
    with pytest.raises(ConfigError, match="MODEL.SEM_SEG_HEAD.NAME BranchMaskFormerHead"):
        tiny_model(opts=("MODEL.SEM_SEG_HEAD.NAME", "MaskFormerHead"))
    with pytest.raises(ConfigError, match="MODEL.META_ARCHITECTURE SeMaskMaskFormer"):
        tiny_model(opts=("MODEL.META_ARCHITECTURE", "MaskFormer"))
    with pytest.raises(ConfigError, match="D2SeMaskSwinTransformer"):
        tiny_model(opts=("MODEL.BACKBONE.NAME", "D2SwinTransformer"))


def official_semantic_keys(num_classes: int, embed: int, stages: int = 4) -> dict[str, tuple]:
    """Key names and shapes of the official SeMask semantic layers (semask_swin.py, one block per stage): the same
    for windowed (SWSeMaskBlock) and global (SeMaskBlock) layers."""
    shapes = {}
    for i in range(stages):
        dim, prefix = embed * 2**i, f"layers.{i}.semantic_layer."
        shapes[prefix + "norm1.weight"] = shapes[prefix + "norm1.bias"] = (dim,)
        block = prefix + "class_injection.0."
        for name, out in (("mlp_cls_q", num_classes), ("mlp_cls_k", num_classes), ("mlp_v", dim), ("mlp_res", dim)):
            shapes[f"{block}{name}.weight"], shapes[f"{block}{name}.bias"] = (out, dim), (out,)
        shapes[block + "gamma"] = (1,)
    return shapes


@pytest.mark.parametrize("global_stages", [(), (3,), (2, 3)])
@pytest.mark.parametrize("checkpoint_classes", [5, 150])
def test_official_semask_backbone_keys_load(tmp_path: Path, checkpoint_classes: int, global_stages: tuple) -> None:
    backbone = tiny_backbone(num_classes=5, global_stages=global_stages)
    swin_keys = {k: tuple(v.shape) for k, v in backbone.state_dict().items() if ".semantic_layer." not in k}
    assert {k: tuple(v.shape) for k, v in backbone.state_dict().items() if ".semantic_layer." in k} == (
        official_semantic_keys(5, 16)
    )
    shapes = {**swin_keys, **official_semantic_keys(checkpoint_classes, 16)}
    state = {f"backbone.{k}": torch.randn(shape) for k, shape in shapes.items()}
    state["sem_seg_head.predictor.class_embed.weight"] = torch.randn(checkpoint_classes + 1, 32)
    torch.save({"model": state}, tmp_path / "semask.pth")
    report = load_semask_pretrained(backbone, tmp_path / "semask.pth")
    assert report["unexpected"] == []
    class_maps = sorted(k for k in shapes if ".mlp_cls_" in k)
    assert sorted(report["missing"]) == ([] if checkpoint_classes == 5 else class_maps)
    key = "layers.3.semantic_layer.class_injection.0.mlp_v.weight"
    torch.testing.assert_close(backbone.state_dict()[key], state[f"backbone.{key}"])


def test_whole_model_checkpoint_with_other_classes_reinitialises_class_maps() -> None:
    model, cfg = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key in list(state):
        if ".mlp_cls_" in key or "class_embed" in key or key == "criterion.empty_weight":
            state[key] = torch.randn(151, *state[key].shape[1:]) if state[key].dim() else state[key]
    report = load_model_weights(model, state, strict=True)
    assert any(".mlp_cls_q.weight" in key for key in report.reinitialised) and not report.shape_mismatch


def test_defaults_are_the_official_behaviour() -> None:
    cfg = get_cfg()
    assert cfg.MODEL.SEMASK.GLOBAL_STAGES is None
    assert cfg.MODEL.SEMASK.MASK_PADDING is False and cfg.MODEL.SEMASK.RES_PROJ_INIT == "zeros"


# ---- what each of the family's config keys does (tests/test_config_keys.py collects and runs these) -----------------

_KEYS_SEMASK = ("MODEL.BACKBONE.NAME", "D2SeMaskSwinTransformer")
_KEYS_SEMASK_MODEL = (
    "MODEL.META_ARCHITECTURE",
    "SeMaskMaskFormer",
    *_KEYS_SEMASK,
    "MODEL.SEM_SEG_HEAD.NAME",
    "BranchMaskFormerHead",
)

CONFIG_KEY_CHECKS: dict[str, ConfigKeyCheck] = {
    "MODEL.MASK_FORMER.CATE_WEIGHT": Changes("1.0", "losses", _KEYS_SEMASK_MODEL),
    "MODEL.SWIN.SEM_WINDOW_SIZE": Changes("2", "backbone_grads", _KEYS_SEMASK),
    "MODEL.SWIN.NUM_SEM_BLOCKS": Changes("2", "backbone", _KEYS_SEMASK),
    "MODEL.SEMASK.GLOBAL_STAGES": Changes("[0, 1, 2, 3]", "backbone_grads", _KEYS_SEMASK),
    # the tiny backbone's freshly initialised semantic attention gives the same numbers with and without it
    "MODEL.SEMASK.MASK_PADDING": CoveredBy("tests/test_semask.py::test_options_reach_every_semantic_layer"),
    "MODEL.SEMASK.RES_PROJ_INIT": Changes("'kaiming'", "backbone_grads", _KEYS_SEMASK),
}
