"""DiNAT backbone: shapes at the data's sizes, the small-map rules (NATTEN 0.14's padding against a
brute-force definition, the dilation-shrinking option), both attention paths, official checkpoint keys,
the DiNAT-L Mask2Former size, configuration errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.attention.flex_attention as flex_module
from conftest import REPO, Changes, ConfigKeyCheck, CoveredBy, Refused

from mask2former.config import get_cfg, load_config
from mask2former.modeling.backbone.dinat import (
    DINAT_L_M2F_DILATIONS,
    D2DiNAT,
    NeighborhoodAttention2D,
    checkpoint_filter_fn,
    dinat_large,
    load_dinat_pretrained,
)
from mask2former.modeling.build import build_model
from mask2former.modeling.ops.neighborhood_attention import neighborhood_attention_reference

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


@pytest.mark.slow
def test_reference_and_flex_paths_give_the_same_features_at_256() -> None:
    # shrink_dilation: eager flex on the CPU scores all pairs, too many at "pad"'s 154 x 154 stage-1 maps
    torch.manual_seed(0)
    reference = tiny_official(attention_implementation="reference", small_map="shrink_dilation").eval()
    flex = tiny_official(attention_implementation="flex", small_map="shrink_dilation").eval()
    flex.load_state_dict(reference.state_dict())
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        expected, ours = reference(images), flex(images)
    for name in expected:
        torch.testing.assert_close(ours[name], expected[name], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
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
    cfg = get_cfg()
    cfg.merge_from_list(
        ["MODEL.DINAT.EMBED_DIM", "8", "MODEL.DINAT.DEPTHS", "[1, 1, 1, 1]", "MODEL.DINAT.NUM_HEADS", "[1, 1, 1, 1]",
         "MODEL.DINAT.KERNEL_SIZE", "3", "MODEL.DINAT.DILATIONS", "[[1], [1], [1], [1]]"]
    )  # fmt: skip
    D2DiNAT.from_config(cfg)(torch.randn(1, 3, 64, 64))["res5"].sum().backward()  # MODEL.DINAT.ATTENTION_IMPL auto
    cfg.merge_from_list(["MODEL.DINAT.ATTENTION_IMPL", "flex"])
    with pytest.raises(NotImplementedError):
        D2DiNAT.from_config(cfg)(torch.randn(1, 3, 64, 64))


# --- maps shorter than kernel x dilation ------------------------------------------------------------------


def natten014_axis(index: int, length: int, kernel: int, dilation: int) -> tuple[list[int], list[int]]:
    """One axis of NATTEN 0.14's kernels (get_window_start / get_pb_start) for a length >= kernel x dilation:
    the kernel key positions of the query at `index` and their rows (columns) in the position-bias table.

    Away from the borders the window is centred on the query, taking every dilation-th position; where that
    would run off the start it begins at the query's first same-remainder position, off the end it finishes
    at the last one. The bias row is the key's offset from the query in dilation steps, plus kernel - 1.
    (NATTEN's separate dilation-1 branch gives the same.)
    """
    half = kernel // 2
    if index - half * dilation < 0:
        start = index % dilation
    elif index + half * dilation >= length:
        last = index + (length - 1 - index) // dilation * dilation
        start = last - (kernel - 1) * dilation
    else:
        start = index - half * dilation
    keys = [start + step * dilation for step in range(kernel)]
    return keys, [(key - index) // dilation + kernel - 1 for key in keys]


def natten014_module(x: torch.Tensor, module: NeighborhoodAttention2D) -> torch.Tensor:
    """NATTEN 0.14's NeighborhoodAttention2D.forward written out: zero-pad the input to kernel x dilation,
    qkv, per-query neighbourhood gather with the dilation unchanged, position bias, softmax, crop, proj."""
    kernel, dilation, heads = module.kernel_size, module.dilation, module.num_heads
    batch, height, width, channels = x.shape
    span = kernel * dilation
    padded = x.new_zeros(batch, max(height, span), max(width, span), channels)
    padded[:, :height, :width] = x
    qkv = padded @ module.qkv.weight.T + module.qkv.bias
    query, key, value = qkv.unflatten(-1, (3, heads, channels // heads)).unbind(-3)  # B x H' x W' x heads x d
    rows_out = []
    for i in range(height):
        rows, bias_rows = natten014_axis(i, padded.shape[1], kernel, dilation)
        cols_out = []
        for j in range(width):
            cols, bias_cols = natten014_axis(j, padded.shape[2], kernel, dilation)
            keys = key[:, rows][:, :, cols]  # B x k x k x heads x d
            scores = torch.einsum("bhd,bxyhd->bhxy", query[:, i, j] * module.scale, keys)
            scores = scores + module.rpb[:, bias_rows][:, :, bias_cols]
            weights = scores.flatten(2).softmax(-1).unflatten(-1, (kernel, kernel))
            cols_out.append(torch.einsum("bhxy,bxyhd->bhd", weights, value[:, rows][:, :, cols]).flatten(1))
        rows_out.append(torch.stack(cols_out, dim=1))
    out = torch.stack(rows_out, dim=1)  # B x H x W x C: only the unpadded queries
    return out @ module.proj.weight.T + module.proj.bias


def random_attention(kernel: int, dilation: int, small_map: str = "pad", implementation: str = "reference"):
    torch.manual_seed(0)
    module = NeighborhoodAttention2D(
        8, 2, kernel, dilation, implementation=implementation, small_map=small_map
    ).double()
    with torch.no_grad():
        for parameter in module.parameters():  # nonzero biases: the padded tokens' keys and values
            parameter.normal_()
    return module


@pytest.fixture
def flex_backward_on_cpu(monkeypatch):
    """flex_attention refuses autograd on the CPU by a device guard; its eager math supports it."""
    monkeypatch.setattr(flex_module, "_validate_device", lambda *args: None)


# maps smaller than, equal to and larger than kernel x dilation (6 for kernel 3 dilation 2, 15 for 5 x 3)
SMALL_MAP_CASES = [
    ((4, 5), 3, 2),
    ((6, 6), 3, 2),
    ((9, 7), 3, 2),
    ((4, 9), 3, 2),  # short rows only
    ((7, 16), 5, 3),
    ((15, 15), 5, 3),
    ((17, 20), 5, 3),
    ((2, 3), 3, 1),  # shorter than the kernel itself
]


@pytest.mark.parametrize("size,kernel,dilation", SMALL_MAP_CASES)
@pytest.mark.parametrize("implementation", ["reference", "flex"])
def test_pad_rule_is_natten_0_14(size, kernel, dilation, implementation, flex_backward_on_cpu) -> None:
    module = random_attention(kernel, dilation, "pad", implementation)
    x = torch.randn(2, *size, 8, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, *size, 8, dtype=torch.float64)
    inputs = (x, *module.parameters())
    results = []
    for run in (module, lambda t: natten014_module(t, module)):
        out = run(x)
        results.append((out, torch.autograd.grad(out, inputs, grad_out)))
    (ours, our_grads), (expected, expected_grads) = results
    assert ours.shape == x.shape and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, expected)
    names = ["input"] + [name for name, _ in module.named_parameters()]
    for name, grad, expected_grad in zip(names, our_grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, msg=lambda text, name=name: f"grad of {name}: {text}")


def shrink_forward(x: torch.Tensor, module: NeighborhoodAttention2D) -> torch.Tensor:
    """The project's forward before the pad rule: qkv on the map as it is, the operator fits the dilation."""
    batch, height, width, channels = x.shape
    qkv = module.qkv(x).view(batch, height, width, 3, module.num_heads, channels // module.num_heads)
    query, key, value = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)
    out = neighborhood_attention_reference(query, key, value, module.kernel_size, module.dilation, module.rpb)
    return module.proj(out.permute(0, 2, 3, 1, 4).reshape(batch, height, width, channels))


@pytest.mark.parametrize("size,kernel,dilation", SMALL_MAP_CASES)
def test_shrink_dilation_keeps_the_previous_behaviour(size, kernel, dilation) -> None:
    shrink = random_attention(kernel, dilation, "shrink_dilation")
    pad = random_attention(kernel, dilation, "pad")
    x = torch.randn(2, *size, 8, dtype=torch.float64)
    with torch.no_grad():
        ours, padded = shrink(x), pad(x)
        torch.testing.assert_close(ours, shrink_forward(x, shrink))
    fits = min(size) >= kernel * dilation
    assert torch.allclose(ours, padded) == fits  # the two rules differ exactly where the map is too small


def test_small_map_rule_through_the_config_and_a_whole_backbone(flex_backward_on_cpu) -> None:
    cfg = get_cfg()
    assert cfg.MODEL.DINAT.SMALL_MAP == "pad"
    tiny = [
        "MODEL.DINAT.EMBED_DIM", 8, "MODEL.DINAT.DEPTHS", [2, 2, 2, 2], "MODEL.DINAT.NUM_HEADS", [1, 1, 2, 2],
        "MODEL.DINAT.KERNEL_SIZE", 3, "MODEL.DINAT.DILATIONS", [[1, 8], [1, 4], [1, 2], [1, 1]],
        "MODEL.DINAT.DROP_PATH_RATE", 0.0,
    ]  # fmt: skip
    cfg.merge_from_list(tiny + ["MODEL.DINAT.SMALL_MAP", "shrink_dilation"])
    assert {m.small_map for m in D2DiNAT.from_config(cfg).modules() if hasattr(m, "small_map")} == {"shrink_dilation"}
    images = torch.randn(1, 3, 64, 64)  # maps 16, 8, 4, 2: every level shorter than 3 x its dilation
    features = {}
    for implementation in ("reference", "flex"):
        cfg = get_cfg()
        cfg.merge_from_list(tiny + ["MODEL.DINAT.ATTENTION_IMPL", implementation])
        torch.manual_seed(0)
        model = D2DiNAT.from_config(cfg).eval()
        with torch.no_grad():
            features[implementation] = model(images)
    for name, expected in features["reference"].items():
        assert torch.isfinite(expected).all()
        torch.testing.assert_close(features["flex"][name], expected, rtol=1e-4, atol=1e-4)
    cfg.merge_from_list(["MODEL.DINAT.SMALL_MAP", "crop"])
    with pytest.raises(ValueError, match="MODEL.DINAT.SMALL_MAP must be one of"):
        D2DiNAT.from_config(cfg)


def test_dinat_large_mask2former_has_220m_parameters_at_150_classes() -> None:
    """The published size of DiNAT-L Mask2Former on ADE20K (NAT repository's model zoo: 220M)."""
    cfg = load_config(str(REPO / "configs" / "m2f_dinat_l.yaml"), ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "150"])
    assert cfg.MODEL.DINAT.SMALL_MAP == "pad"
    with torch.device("meta"):
        model = build_model(cfg)
    assert 219.5e6 < sum(p.numel() for p in model.parameters()) < 220.5e6
    blocks = [block.attn for level in model.backbone.levels for block in level.blocks]
    assert [b.dilation for b in blocks] == [d for level in DINAT_L_M2F_DILATIONS for d in level]
    assert {b.small_map for b in blocks} == {"pad"} and {b.kernel_size for b in blocks} == {11}


# ---- what each of the family's config keys does (tests/test_config_keys.py collects and runs these) -----------------

_KEYS_DINAT = ("MODEL.BACKBONE.NAME", "D2DiNAT")

CONFIG_KEY_CHECKS: dict[str, ConfigKeyCheck] = {
    "MODEL.DINAT.EMBED_DIM": Changes("8", "backbone", _KEYS_DINAT),
    "MODEL.DINAT.DEPTHS": Changes(
        "[1, 1, 1, 1]", "backbone", (*_KEYS_DINAT, "MODEL.DINAT.DILATIONS", "[[1], [1], [1], [1]]")
    ),
    "MODEL.DINAT.NUM_HEADS": Changes("[1, 1, 1, 1]", "backbone", _KEYS_DINAT),
    "MODEL.DINAT.KERNEL_SIZE": Changes("5", "backbone", _KEYS_DINAT),
    "MODEL.DINAT.DILATIONS": Changes("[[1], [1], [1, 1], [1]]", "backbone_forward", _KEYS_DINAT),
    "MODEL.DINAT.MLP_RATIO": Changes("1.0", "backbone", _KEYS_DINAT),
    "MODEL.DINAT.QKV_BIAS": Changes("False", "backbone", _KEYS_DINAT),
    "MODEL.DINAT.QK_SCALE": Changes("0.5", "backbone_forward", _KEYS_DINAT),
    "MODEL.DINAT.DROP_RATE": Changes("0.5", "backbone_train", _KEYS_DINAT),
    "MODEL.DINAT.ATTN_DROP_RATE": Refused("0.1", "backbone", _KEYS_DINAT),
    "MODEL.DINAT.DROP_PATH_RATE": Changes("0.0", "backbone_train", _KEYS_DINAT),
    "MODEL.DINAT.LAYER_SCALE": Changes("0.5", "backbone", _KEYS_DINAT),
    "MODEL.DINAT.OUT_FEATURES": Changes("['res4', 'res5']", "backbone", _KEYS_DINAT),
    "MODEL.DINAT.USE_CHECKPOINT": Changes("True", "checkpointing", _KEYS_DINAT),
    "MODEL.DINAT.ATTENTION_IMPL": CoveredBy("tests/test_dinat.py::test_training_on_cpu_needs_the_reference_path"),
    "MODEL.DINAT.SMALL_MAP": Changes(
        "'shrink_dilation'", "backbone_forward", (*_KEYS_DINAT, "MODEL.DINAT.DILATIONS", "[[4], [1], [1, 2], [1]]")
    ),
}
