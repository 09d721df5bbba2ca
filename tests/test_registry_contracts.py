"""Every entry of every model registry keeps its registry's contract, at its family's declared tiny sizes.

The entries are read from the live registries after `mask2former.modeling.register_all` and `semask` (conftest
imports both), so a new backbone, pixel decoder, transformer decoder or per-pixel decoder is tested by registering
it; one whose family declares no tiny sizes (register_tiny_sizes, mask2former/modeling/tiny.py) fails here by name.
The contracts are the registries' docstrings (modeling/backbone/base.py, pixel_decoder/base.py,
transformer_decoder/base.py, per_pixel/decoders.py).
"""

from __future__ import annotations

import re

import pytest
import torch
from conftest import make_tiny
from fvcore.common.registry import Registry

from mask2former.config import ConfigError, get_cfg
from mask2former.modeling.backbone.base import BACKBONE_REGISTRY, ShapeSpec, build_backbone
from mask2former.modeling.per_pixel.decoders import PER_PIXEL_DECODERS, build_per_pixel_decoder
from mask2former.modeling.pixel_decoder.base import PIXEL_DECODER_REGISTRY, build_pixel_decoder
from mask2former.modeling.tiny import TINY_SIZES, has_tiny_sizes, register_tiny_sizes
from mask2former.modeling.transformer_decoder.base import TRANSFORMER_DECODER_REGISTRY, build_transformer_decoder

REGISTRIES = {
    "MODEL.BACKBONE.NAME": BACKBONE_REGISTRY,
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": PIXEL_DECODER_REGISTRY,
    "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": TRANSFORMER_DECODER_REGISTRY,
    "MODEL.PER_PIXEL.DECODER": PER_PIXEL_DECODERS,
}
SIZES = [(64, 64), (64, 96)]  # (height, width): square and not, both multiples of every size_divisibility
PYRAMID = {"res2": ShapeSpec(16, 4), "res3": ShapeSpec(32, 8), "res4": ShapeSpec(64, 16), "res5": ShapeSpec(128, 32)}
# DeepLabV3+ and other decoders that need a dilated backbone: res5 at stride 16
DILATED = {**PYRAMID, "res5": ShapeSpec(128, 16)}
# Parameters whose gradient is zero (not missing) at initialisation, by design: entry -> (name pattern, why)
_LEVEL_EMBED = r"transformer\.level_embed$"  # the deformable encoder's sampling offsets and weights start at zero
_FAPN_OFFSETS = r"align_\d\.offset\."  # FaPN's offset convs feed a zero-initialised conv_offset_mask
ZERO_GRAD_AT_INIT = {
    "D2SeMaskSwinTransformer": (
        r"layers\.\d\.semantic_layer\.class_injection\.",
        "MODEL.SEMASK.RES_PROJ_INIT 'zeros' (official) keeps the class-injection branch off at initialisation",
    ),
    "MSDeformAttnPixelDecoder": (_LEVEL_EMBED, "Deformable DETR's init: the level embedding moves nothing yet"),
    "PixelFANDecoder": (_FAPN_OFFSETS, "FaPN's alignment starts as a plain conv of the upsampled map"),
    "MSDeformAttnPixelFANDecoder": (f"{_LEVEL_EMBED}|{_FAPN_OFFSETS}", "both of the above"),
}


def entries(registry: Registry) -> list[str]:
    return sorted(name for name, _ in registry)


def tiny_cfg(key: str, name: str):
    """get_cfg() with `key` naming the entry, at every family's tiny sizes."""
    assert has_tiny_sizes(REGISTRIES[key], name), (
        f"{key} {name!r} is registered but no family declares its tiny sizes: call register_tiny_sizes(family, "
        "overrides, [(registry, name)]) beside its config keys (mask2former/modeling/tiny.py)"
    )
    cfg = get_cfg()
    cfg.merge_from_list([key, name])
    make_tiny(cfg)
    return cfg


def pyramid_features(shapes: dict[str, ShapeSpec], height: int, width: int, batch: int = 2) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        name: torch.randn(batch, spec.channels, height // spec.stride, width // spec.stride, generator=generator)
        for name, spec in shapes.items()
    }


def assert_gradients_reach(name: str, module: torch.nn.Module, zero_allowed: str = r"(?!)") -> None:
    """Every trainable parameter of `module` has a finite gradient, non-zero unless its name matches
    `zero_allowed`."""
    trainable = {key: p for key, p in module.named_parameters() if p.requires_grad}
    assert trainable, f"{name}: no trainable parameter"
    missing = [key for key, p in trainable.items() if p.grad is None]
    assert not missing, f"{name}: no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for p in trainable.values()), f"{name}: a gradient is not finite"
    zero = [key for key, p in trainable.items() if not p.grad.abs().sum() > 0 and not re.match(zero_allowed, key)]
    assert not zero, f"{name}: zero gradients at {zero}"


def weighted_sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A scalar that depends on every element (random weights: no symmetry cancels a gradient)."""
    generator = torch.Generator().manual_seed(1)
    return sum((t.float() * torch.randn(t.shape, generator=generator)).sum() for t in tensors)


# ---- the declarations ----------------------------------------------------------------------------------------------


def test_every_registry_entry_has_declared_tiny_sizes() -> None:
    missing = [
        f"{key} {name!r}"
        for key, registry in REGISTRIES.items()
        for name in entries(registry)
        if not has_tiny_sizes(registry, name)
    ]
    assert not missing, f"registered without tiny sizes (register_tiny_sizes beside the config keys): {missing}"


def test_an_entry_registered_without_tiny_sizes_fails_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry("BACKBONE")

    @registry.register()
    class UndeclaredBackbone(torch.nn.Module):
        pass

    monkeypatch.setitem(REGISTRIES, "MODEL.BACKBONE.NAME", registry)
    with pytest.raises(AssertionError, match=re.escape("MODEL.BACKBONE.NAME 'UndeclaredBackbone'")):
        test_every_registry_entry_has_declared_tiny_sizes()
    with pytest.raises(AssertionError, match=re.escape("MODEL.BACKBONE.NAME 'UndeclaredBackbone' is registered but")):
        tiny_cfg("MODEL.BACKBONE.NAME", "UndeclaredBackbone")


def test_declared_sizes_name_real_keys_and_entries() -> None:
    keys = set()
    cfg = get_cfg()
    for sizes in TINY_SIZES.values():
        cfg.merge_from_list(list(sizes.overrides))  # an unknown key is a KeyError naming it
        keys.update(sizes.overrides[::2])
        for registry, name in sizes.entries:
            assert name in registry, f"tiny sizes of {sizes.family!r} name {name!r}, which is not registered"
    assert len(keys) * 2 == sum(len(sizes.overrides) for sizes in TINY_SIZES.values())


def test_a_key_sized_by_two_families_or_an_odd_list_is_refused() -> None:
    family = next(iter(TINY_SIZES.values()))
    with pytest.raises(ValueError, match=re.escape(f"and {family.family!r} both set ['{family.overrides[0]}']")):
        register_tiny_sizes("test_other_family", [family.overrides[0], "1"])
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        register_tiny_sizes("test_odd_family", ["MODEL.SWIN.EMBED_DIM"])
    with pytest.raises(ValueError, match="declared twice"):
        register_tiny_sizes(family.family, [])
    assert "test_other_family" not in TINY_SIZES and "test_odd_family" not in TINY_SIZES


# ---- backbones -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", entries(BACKBONE_REGISTRY))
def test_backbone_returns_what_output_shape_promises(name: str) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(tiny_cfg("MODEL.BACKBONE.NAME", name)).eval()
    shapes = backbone.output_shape()
    assert shapes, f"{name}: output_shape() names no feature"
    assert [(f["name"], f["channels"], f["stride"]) for f in backbone.feature_info] == [
        (key, spec.channels, spec.stride) for key, spec in shapes.items()
    ], f"{name}: feature_info and output_shape() disagree"
    assert all(spec.stride == 2 ** int(key[-1]) for key, spec in shapes.items() if re.fullmatch(r"res[2-5]", key)), (
        f"{name}: res2..res5 must have strides 4, 8, 16, 32: {shapes}"
    )
    divisor = backbone.size_divisibility
    for height, width in SIZES:
        assert divisor <= 0 or (height % divisor == 0 and width % divisor == 0)
        with torch.no_grad():
            outputs = backbone(torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0)))
        for key, spec in shapes.items():
            assert key in outputs, f"{name}: output_shape() names {key}, forward returned {sorted(outputs)}"
            expected = (2, spec.channels, height // spec.stride, width // spec.stride)
            assert tuple(outputs[key].shape) == expected, f"{name} at {height}x{width}: {key} {outputs[key].shape}"
        for key, value in outputs.items():
            assert torch.isfinite(value).all(), f"{name} at {height}x{width}: {key} is not finite"


@pytest.mark.parametrize("name", entries(BACKBONE_REGISTRY))
def test_backbone_gradients_reach_every_trainable_parameter(name: str) -> None:
    torch.manual_seed(0)
    # eval: stochastic depth can drop a whole block for every sample of a small batch, and its gradient with it
    backbone = build_backbone(tiny_cfg("MODEL.BACKBONE.NAME", name)).eval()
    outputs = backbone(torch.randn(2, 3, *SIZES[1], generator=torch.Generator().manual_seed(0)))
    weighted_sum(list(outputs.values())).backward()
    assert_gradients_reach(name, backbone, ZERO_GRAD_AT_INIT.get(name, (r"(?!)", ""))[0])


# ---- pixel decoders ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", entries(PIXEL_DECODER_REGISTRY))
def test_pixel_decoder_returns_mask_features_and_three_scales(name: str) -> None:
    cfg = tiny_cfg("MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", name)
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 24  # not CONVS_DIM (32): a width used in the other's place shows
    torch.manual_seed(0)
    decoder = build_pixel_decoder(cfg, PYRAMID)
    mask_dim, convs_dim = cfg.MODEL.SEM_SEG_HEAD.MASK_DIM, cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM
    for batch, height, width in [(2, *SIZES[0]), (2, *SIZES[1]), (1, 32, 96)]:
        mask_features, multi_scale = decoder.forward_features(pyramid_features(PYRAMID, height, width, batch))
        assert tuple(mask_features.shape) == (batch, mask_dim, height // 4, width // 4), f"{name}: mask features"
        assert [tuple(m.shape) for m in multi_scale] == [
            (batch, convs_dim, height // stride, width // stride) for stride in (32, 16, 8)
        ], f"{name} at {batch}x{height}x{width}: multi-scale features"
        assert all(torch.isfinite(t).all() for t in (mask_features, *multi_scale)), f"{name}: not finite"
    weighted_sum([mask_features, *multi_scale]).backward()
    assert_gradients_reach(name, decoder, ZERO_GRAD_AT_INIT.get(name, (r"(?!)", ""))[0])


# ---- transformer decoders ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", entries(TRANSFORMER_DECODER_REGISTRY))
def test_transformer_decoder_returns_class_logits_and_masks(name: str) -> None:
    cfg = tiny_cfg("MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", name)
    head, mf = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.MASK_FORMER
    torch.manual_seed(0)
    decoder = build_transformer_decoder(cfg, head.CONVS_DIM)
    height, width = SIZES[1]
    generator = torch.Generator().manual_seed(0)
    multi_scale = [torch.randn(2, head.CONVS_DIM, height // s, width // s, generator=generator) for s in (32, 16, 8)]
    mask_features = torch.randn(2, head.MASK_DIM, height // 4, width // 4, generator=generator)
    out = decoder(multi_scale, mask_features)
    predictions = [out, *out["aux_outputs"]]
    assert len(out["aux_outputs"]) == mf.DEC_LAYERS - 1, f"{name}: one auxiliary prediction per earlier layer"
    for prediction in predictions:
        assert tuple(prediction["pred_logits"].shape) == (2, mf.NUM_OBJECT_QUERIES, head.NUM_CLASSES + 1), name
        assert tuple(prediction["pred_masks"].shape) == (2, mf.NUM_OBJECT_QUERIES, height // 4, width // 4), name
        assert torch.isfinite(prediction["pred_logits"]).all() and torch.isfinite(prediction["pred_masks"]).all()
    weighted_sum([out["pred_logits"], out["pred_masks"]]).backward()
    assert_gradients_reach(name, decoder)


# ---- per-pixel decoders --------------------------------------------------------------------------------------------


def _build_per_pixel(cfg, name: str) -> tuple:
    """The decoder on the plain pyramid (strides 4..32), or on the dilated one (res5 at 16) where it refuses the plain
    one with a ConfigError (DeepLabV3+)."""
    try:
        return build_per_pixel_decoder(cfg, PYRAMID), PYRAMID
    except ConfigError as error:
        assert "MODEL." in str(error), f"{name}: a refusal that names no key: {error}"
        return build_per_pixel_decoder(cfg, DILATED), DILATED


@pytest.mark.parametrize("name", entries(PER_PIXEL_DECODERS))
def test_per_pixel_decoder_returns_class_logits_at_its_stride(name: str) -> None:
    cfg = tiny_cfg("MODEL.PER_PIXEL.DECODER", name)
    torch.manual_seed(0)
    decoder, shapes = _build_per_pixel(cfg, name)
    classes, stride = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, decoder.stride
    for height, width in SIZES:
        out = decoder(pyramid_features(shapes, height, width))
        assert tuple(out["logits"].shape) == (2, classes, height // stride, width // stride), f"{name}: logits"
        assert torch.isfinite(out["logits"]).all(), f"{name}: logits not finite"
        aux = out.get("aux_logits", [])
        assert bool(aux) == bool(getattr(decoder, "has_aux_output", False)), f"{name}: has_aux_output and aux_logits"
        assert all(a.shape[:2] == (2, classes) and torch.isfinite(a).all() for a in aux), f"{name}: aux_logits"
    weighted_sum([out["logits"], *aux]).backward()
    assert_gradients_reach(name, decoder)
