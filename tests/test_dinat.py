"""DiNAT backbone: shapes at the data's sizes, the small-input rule end to end, both attention paths,
official checkpoint keys, configuration errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mask2former.modeling.backbone.dinat import (
    DINAT_L_M2F_DILATIONS,
    D2DiNAT,
    checkpoint_filter_fn,
    dinat_large,
    load_dinat_pretrained,
)

OFFICIAL_DEPTHS = (3, 4, 18, 5)


def official_dinat_state_shapes(embed, depths, heads, kernel, mlp_ratio, classes=1000) -> dict[str, tuple]:
    """Key names and shapes of an official NAT/DiNAT ImageNet checkpoint (SHI-Labs classification/nat.py)."""
    shapes = {
        "patch_embed.proj.0.weight": (embed // 2, 3, 3, 3),
        "patch_embed.proj.0.bias": (embed // 2,),
        "patch_embed.proj.1.weight": (embed, embed // 2, 3, 3),
        "patch_embed.proj.1.bias": (embed,),
        "patch_embed.norm.weight": (embed,),
        "patch_embed.norm.bias": (embed,),
    }
    for i, depth in enumerate(depths):
        dim, hidden = embed * 2**i, int(embed * 2**i * mlp_ratio)
        for j in range(depth):
            block = f"levels.{i}.blocks.{j}."
            shapes.update(
                {
                    block + "norm1.weight": (dim,),
                    block + "norm1.bias": (dim,),
                    block + "attn.rpb": (heads[i], 2 * kernel - 1, 2 * kernel - 1),
                    block + "attn.qkv.weight": (3 * dim, dim),
                    block + "attn.qkv.bias": (3 * dim,),
                    block + "attn.proj.weight": (dim, dim),
                    block + "attn.proj.bias": (dim,),
                    block + "norm2.weight": (dim,),
                    block + "norm2.bias": (dim,),
                    block + "mlp.fc1.weight": (hidden, dim),
                    block + "mlp.fc1.bias": (hidden,),
                    block + "mlp.fc2.weight": (dim, hidden),
                    block + "mlp.fc2.bias": (dim,),
                }
            )
        if i < len(depths) - 1:
            shapes[f"levels.{i}.downsample.reduction.weight"] = (2 * dim, dim, 3, 3)
            shapes[f"levels.{i}.downsample.norm.weight"] = (2 * dim,)
            shapes[f"levels.{i}.downsample.norm.bias"] = (2 * dim,)
    last = embed * 2 ** (len(depths) - 1)
    shapes.update(
        {"norm.weight": (last,), "norm.bias": (last,), "head.weight": (classes, last), "head.bias": (classes,)}
    )
    return shapes


def tiny_official(**kwargs) -> D2DiNAT:
    """Official depths, kernel and dilations; tiny widths."""
    options = {
        "embed_dim": 8,
        "depths": OFFICIAL_DEPTHS,
        "num_heads": (1, 1, 2, 2),
        "kernel_size": 11,
        "dilations": DINAT_L_M2F_DILATIONS,
        "mlp_ratio": 1.0,
        "drop_path_rate": 0.0,
    }
    return D2DiNAT(**{**options, **kwargs})


def test_dinat_large_has_the_official_keys_and_shapes() -> None:
    with torch.device("meta"):
        model = dinat_large()
    expected = official_dinat_state_shapes(192, OFFICIAL_DEPTHS, (6, 12, 24, 48), 11, 2.0)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    classifier_only = {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    output_norms = {f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")}
    assert {k: v for k, v in expected.items() if k not in classifier_only} == {
        k: v for k, v in ours.items() if k not in output_norms
    }
    assert set(ours) - set(expected) == output_norms
    assert model.output_shape()["res5"].channels == 1536 and model.output_shape()["res2"].stride == 4


def test_official_checkpoint_loads_with_zero_missing_keys(tmp_path: Path) -> None:
    model = tiny_official()
    generator = torch.Generator().manual_seed(0)
    # an ImageNet-style file: kernel 7 position biases, classifier and final norm included, wrapped in "model"
    shapes = official_dinat_state_shapes(8, OFFICIAL_DEPTHS, (1, 1, 2, 2), 7, 1.0)
    state = {k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    path = tmp_path / "dinat_official.pth"
    torch.save({"model": state}, path)
    report = load_dinat_pretrained(model, path)
    assert report["unexpected"] == []
    assert sorted(report["missing"]) == sorted(report["new_output_norms"])  # only the segmentation norms are new
    assert {k.split(".")[0] for k in report["missing"]} == {"norm0", "norm1", "norm2", "norm3"}
    loaded = model.state_dict()
    torch.testing.assert_close(loaded["levels.2.blocks.17.mlp.fc2.weight"], state["levels.2.blocks.17.mlp.fc2.weight"])
    rpb = loaded["levels.0.blocks.1.attn.rpb"]
    assert rpb.shape == (1, 21, 21)
    # bicubic resizing keeps the centre of the 13 x 13 table at the centre of the 21 x 21 one, roughly in value
    assert torch.sign(rpb[0, 10, 10]) == torch.sign(state["levels.0.blocks.1.attn.rpb"][0, 6, 6])


def test_segmentation_checkpoint_backbone_is_taken_as_is() -> None:
    model = tiny_official()
    whole = {f"backbone.{k}": v + 1 for k, v in model.state_dict().items()}
    whole["sem_seg_head.predictor.class_embed.weight"] = torch.zeros(12, 4)
    filtered = checkpoint_filter_fn({"model": whole}, model)
    assert set(filtered) == set(model.state_dict())


@pytest.mark.parametrize("size", [256, 512])
def test_official_dilations_run_at_the_data_sizes(size: int) -> None:
    model = tiny_official().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert [tuple(v.shape) for v in out.values()] == [
        (1, 8 * 2**i, size // 4 // 2**i, size // 4 // 2**i) for i in range(4)
    ]
    assert all(torch.isfinite(v).all() for v in out.values())


def test_reference_and_flex_paths_give_the_same_features_at_256() -> None:
    torch.manual_seed(0)
    reference = tiny_official(attention_implementation="reference").eval()
    flex = tiny_official(attention_implementation="flex").eval()
    flex.load_state_dict(reference.state_dict())
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        expected, ours = reference(images), flex(images)
    for name in expected:
        torch.testing.assert_close(ours[name], expected[name], rtol=1e-4, atol=1e-4)


def test_gradients_reach_position_biases_and_the_tokenizer() -> None:
    model = D2DiNAT(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), kernel_size=3, dilations=[[1, 4]] * 4)
    out = model(torch.randn(2, 3, 64, 96))
    sum(v.square().mean() for v in out.values()).backward()
    assert model.levels[0].blocks[1].attn.rpb.grad.abs().sum() > 0
    assert model.patch_embed.proj[0].weight.grad.abs().sum() > 0


def test_layer_scale_and_checkpointing() -> None:
    model = D2DiNAT(
        embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), kernel_size=3, layer_scale=1e-5, use_checkpoint=True
    )
    assert torch.allclose(model.levels[0].blocks[0].gamma1, torch.full((8,), 1e-5))
    model(torch.randn(1, 3, 64, 64))["res5"].sum().backward()
    assert model.levels[3].blocks[0].gamma2.grad is not None


def test_configuration_errors_are_named() -> None:
    with pytest.raises(ValueError, match="one list per level"):
        D2DiNAT(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), dilations=[[1], [1], [1]])
    with pytest.raises(ValueError, match="odd"):
        D2DiNAT(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), kernel_size=4)
    with pytest.raises(ValueError, match="do not split"):
        D2DiNAT(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(3, 1, 1, 1))
    with pytest.raises(FileNotFoundError, match="DiNAT weights not found"):
        load_dinat_pretrained(tiny_official(), "/nonexistent/dinat.pth")


def test_training_on_cpu_needs_the_reference_path() -> None:
    """torch refuses flex_attention's backward on the CPU; "auto" (the default) picks the reference there."""
    model = D2DiNAT(
        embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), kernel_size=3, attention_implementation="flex"
    )
    with pytest.raises(NotImplementedError):
        model(torch.randn(1, 3, 64, 64))
    auto = D2DiNAT(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), kernel_size=3)
    auto(torch.randn(1, 3, 64, 64))["res5"].sum().backward()
    assert auto.levels[0].blocks[0].attn.rpb.grad is not None
