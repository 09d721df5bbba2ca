"""SeMask: semantic layer behaviour, the prior loss and its gradients, official checkpoint keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO

from mask2former.config import get_cfg
from mask2former.engine.checkpoint import load_model_weights
from mask2former.modeling.meta_arch import build_model
from semask import (
    PRIOR_LOSS,
    SEMANTIC_PRIOR,
    D2SeMaskSwinTransformer,
    load_semask_pretrained,
    semantic_prior_loss,
)
from semask.semantic_layer import SemanticAttention, SemanticLayer


def tiny_backbone(num_classes: int = 5) -> D2SeMaskSwinTransformer:
    return D2SeMaskSwinTransformer(
        num_classes=num_classes,
        sem_window_size=4,
        embed_dim=16,
        depths=(1, 1, 2, 1),
        num_heads=(1, 1, 2, 2),
        window_size=4,
        drop_path_rate=0.0,
    )


def tiny_model():
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "quickstart_semask.yaml"))
    cfg.merge_from_list(
        ["MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.SEM_WINDOW_SIZE", "4", "MODEL.MASK_FORMER.DEC_LAYERS", "2"]
    )
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


def test_one_window_equals_global_semantic_attention_over_the_valid_pixels() -> None:
    torch.manual_seed(0)
    layer = SemanticLayer(dim=8, num_classes=3, window=8).eval()
    block = layer.class_injection[0]
    with torch.no_grad():
        block.gamma.fill_(0.7)
    x = torch.randn(2, 5 * 6, 8)
    class_map, features = layer(x, 5, 6)  # padded to one 8 x 8 window; padding must not count
    normed = layer.norm1(x)
    q, k, v = block.mlp_cls_q(normed), block.mlp_cls_k(normed), block.mlp_v(normed)
    expected = normed + 0.7 * block.mlp_res((q @ k.transpose(1, 2)).softmax(-1) @ v)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(class_map, q.transpose(1, 2).reshape(2, 3, 5, 6))


def test_gain_starts_at_zero_and_the_branch_can_learn() -> None:
    torch.manual_seed(0)
    block = SemanticAttention(dim=8, num_classes=3).eval()
    x = torch.randn(4, 16, 8)
    class_map, out = block(x)
    torch.testing.assert_close(out, x)  # identity at the start
    out.square().sum().backward()
    assert block.gamma.grad.abs() > 0  # the gain learns from the main loss...
    # ...which it could not with the official init (mlp_res at zero too): each factor blocks the other's gradient
    official = SemanticAttention(dim=8, num_classes=3).eval()
    torch.nn.init.zeros_(official.mlp_res.weight)
    official(x)[1].square().sum().backward()
    assert official.gamma.grad.abs() == 0 and official.mlp_res.weight.grad.abs().sum() == 0


def test_backbone_returns_features_and_a_stride_4_prior() -> None:
    backbone = tiny_backbone(num_classes=5)
    out = backbone(torch.randn(2, 3, 64, 96))
    assert out[SEMANTIC_PRIOR].shape == (2, 5, 16, 24)
    assert [tuple(out[f"res{i}"].shape) for i in range(2, 6)] == [
        (2, 16 * 2 ** (i - 2), 16 // 2 ** (i - 2), 24 // 2 ** (i - 2)) for i in range(2, 6)
    ]


def test_prior_loss_matches_cross_entropy_and_ignores_255() -> None:
    prior = torch.randn(2, 4, 8, 8)
    labels = torch.randint(0, 4, (2, 32, 32))
    labels[:, :4] = 255
    expected = F.cross_entropy(F.interpolate(prior, size=(32, 32), mode="bilinear"), labels, ignore_index=255)
    torch.testing.assert_close(semantic_prior_loss(prior, labels, 255), expected)
    assert semantic_prior_loss(prior, torch.full((2, 32, 32), 255), 255).item() == 0.0


def test_prior_loss_is_in_the_loss_dict_and_reaches_the_semantic_layers() -> None:
    model, cfg = tiny_model()
    model.train()
    losses = model(batch())
    assert PRIOR_LOSS in losses and torch.isfinite(losses[PRIOR_LOSS]) and losses[PRIOR_LOSS] > 0
    assert model.criterion.weight_dict[PRIOR_LOSS] == pytest.approx(0.4)
    losses[PRIOR_LOSS].backward()
    for stage in model.backbone.layers:
        assert stage.semantic_layer.class_injection[0].mlp_cls_q.weight.grad.abs().sum() > 0
        assert stage.semantic_layer.norm1.weight.grad.abs().sum() > 0
    assert model.backbone.patch_embed.proj.weight.grad.abs().sum() > 0  # the prior shapes the whole backbone
    model.zero_grad()
    model.criterion.weighted_total(model(batch())).backward()
    assert model.backbone.layers[0].semantic_layer.class_injection[0].gamma.grad.abs() > 0


def test_inference_is_an_ordinary_model() -> None:
    model, cfg = tiny_model()
    model.eval()
    with torch.no_grad():
        outputs = model(batch())
    assert list(outputs[0]) == ["sem_seg"]
    assert outputs[0]["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 64, 64)


def official_semantic_keys(num_classes: int, embed: int, stages: int = 4) -> dict[str, tuple]:
    """Key names and shapes of the official SeMask semantic layers (semask_swin.py, one block per stage)."""
    shapes = {}
    for i in range(stages):
        dim, prefix = embed * 2**i, f"layers.{i}.semantic_layer."
        shapes[prefix + "norm1.weight"] = shapes[prefix + "norm1.bias"] = (dim,)
        block = prefix + "class_injection.0."
        for name, out in (("mlp_cls_q", num_classes), ("mlp_cls_k", num_classes), ("mlp_v", dim), ("mlp_res", dim)):
            shapes[f"{block}{name}.weight"], shapes[f"{block}{name}.bias"] = (out, dim), (out,)
        shapes[block + "gamma"] = (1,)
    return shapes


@pytest.mark.parametrize("checkpoint_classes", [5, 150])
def test_official_semask_backbone_keys_load(tmp_path: Path, checkpoint_classes: int) -> None:
    backbone = tiny_backbone(num_classes=5)
    swin_keys = {k: tuple(v.shape) for k, v in backbone.state_dict().items() if ".semantic_layer." not in k}
    shapes = {**swin_keys, **official_semantic_keys(checkpoint_classes, 16)}
    state = {f"backbone.{k}": torch.randn(shape) for k, shape in shapes.items()}
    state["sem_seg_head.predictor.class_embed.weight"] = torch.randn(checkpoint_classes + 1, 32)
    torch.save({"model": state}, tmp_path / "semask.pth")
    report = load_semask_pretrained(backbone, tmp_path / "semask.pth")
    assert report["unexpected"] == []
    class_maps = sorted(k for k in shapes if ".mlp_cls_" in k)
    assert sorted(report["missing"]) == ([] if checkpoint_classes == 5 else class_maps)
    key = "layers.2.semantic_layer.class_injection.0.mlp_v.weight"
    torch.testing.assert_close(backbone.state_dict()[key], state[f"backbone.{key}"])


def test_whole_model_checkpoint_with_other_classes_reinitialises_class_maps() -> None:
    model, cfg = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key in list(state):
        if ".mlp_cls_" in key or "class_embed" in key or key == "criterion.empty_weight":
            state[key] = torch.randn(151, *state[key].shape[1:]) if state[key].dim() else state[key]
    report = load_model_weights(model, state, strict=True)
    assert any(".mlp_cls_q.weight" in key for key in report.reinitialised) and not report.shape_mismatch
