"""The FaPN pixel decoder (PixelFANDecoder): the deformable conv's plain-conv limit, gradients, config errors, key
layout, autocast, and a tiny Mask2Former training a step with it (shapes: tests/test_registry_contracts.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, TINY_MODEL

from mask2former.config import get_cfg
from mask2former.modeling.backbone.base import ShapeSpec
from mask2former.modeling.build import build_model
from mask2former.modeling.pixel_decoder.base import build_pixel_decoder
from mask2former.modeling.pixel_decoder.fapn import FeatureAlign, ModulatedDeformConv, PixelFANDecoder

SHAPES = {"res2": ShapeSpec(8, 4), "res3": ShapeSpec(16, 8), "res4": ShapeSpec(24, 16), "res5": ShapeSpec(32, 32)}
TINY = TINY_MODEL + ["MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "PixelFANDecoder"]


def decoder_cfg(**head):
    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "PixelFANDecoder"
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 24
    for key, value in head.items():
        setattr(cfg.MODEL.SEM_SEG_HEAD, key, value)
    return cfg


def features(batch: int, height: int, width: int, shapes: dict[str, ShapeSpec] = SHAPES) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        name: torch.randn(batch, spec.channels, height // spec.stride, width // spec.stride, generator=generator)
        for name, spec in shapes.items()
    }


def test_fam_at_init_is_a_plain_conv_of_the_upsampled_map() -> None:
    """Zero offsets and masks sigmoid(0) = 0.5: the deformable conv is 0.5 * conv3x3 + bias."""
    torch.manual_seed(0)
    align = FeatureAlign(16, 32, "GN")
    lateral_input, coarse = torch.randn(2, 16, 8, 12), torch.randn(2, 32, 4, 6)
    up = F.interpolate(coarse, size=(8, 12), mode="bilinear", align_corners=False)
    lateral = align.lateral_conv(lateral_input)
    offset, mask = align.dcpack_L2.offsets_and_masks(align.offset(torch.cat([lateral, 2 * up], 1)))
    assert offset.shape == (2, 2 * 8 * 9, 8, 12) and mask.shape == (2, 8 * 9, 8, 12)
    assert (offset == 0).all() and (mask == 0.5).all()
    dcn = align.dcpack_L2
    plain = F.conv2d(up, 0.5 * dcn.weight, dcn.bias, padding=1)
    torch.testing.assert_close(dcn(up, torch.randn(2, 32, 8, 12)), plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(align(lateral_input, coarse), F.relu(plain) + lateral, rtol=1e-5, atol=1e-5)


def test_integer_offsets_shift_the_sampling_grid() -> None:
    """Offsets are (dy, dx) per kernel point, then mask logits: dx = +1 with masks ~1 is the plain conv's
    output one column to the right (samples beyond the map read zeros)."""
    torch.manual_seed(0)
    dcn = ModulatedDeformConv(16, 8, 3, deformable_groups=4)
    points = 4 * 9
    with torch.no_grad():
        dcn.conv_offset_mask.bias[1 : 2 * points : 2] = 1.0  # dx of every kernel point of every group
        dcn.conv_offset_mask.bias[2 * points :] = 40.0  # masks sigmoid(40) == 1 in float32
    x = torch.randn(2, 16, 5, 7)
    expected = F.conv2d(F.pad(x, (1, 2, 1, 1)), dcn.weight, dcn.bias)[..., 1:]
    torch.testing.assert_close(dcn(x, torch.zeros(2, 16, 5, 7)), expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_offset_convs_and_fsm() -> None:
    torch.manual_seed(0)
    decoder = build_pixel_decoder(decoder_cfg(), SHAPES)

    def backward() -> None:
        decoder.zero_grad(set_to_none=True)
        mask_features, multi_scale = decoder.forward_features(features(2, 32, 64))
        (mask_features.square().mean() + sum(m.square().mean() for m in multi_scale)).backward()

    backward()
    for index in (1, 2, 3):
        align = getattr(decoder, f"align_{index}")
        for parameter in [
            align.lateral_conv.conv_atten.weight,
            align.lateral_conv.conv.weight,
            align.dcpack_L2.weight,
            align.dcpack_L2.bias,
            align.dcpack_L2.conv_offset_mask.weight,
            align.dcpack_L2.conv_offset_mask.bias,
        ]:
            assert parameter.grad.abs().sum() > 0
        # conv_offset_mask starts at zero, so nothing flows back into the 1x1 offset conv on the first step
        assert align.offset.weight.grad is not None and (align.offset.weight.grad == 0).all()
    with torch.no_grad():
        for index in (1, 2, 3):
            getattr(decoder, f"align_{index}").dcpack_L2.conv_offset_mask.weight.normal_(std=0.01)
    backward()
    for index in (1, 2, 3):
        align = getattr(decoder, f"align_{index}")
        assert align.offset.weight.grad.abs().sum() > 0 and align.offset.norm.weight.grad.abs().sum() > 0
    assert decoder.layer_4.weight.grad.abs().sum() > 0 and decoder.mask_features.weight.grad.abs().sum() > 0


def test_wrong_in_features_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"needs 4 input maps.*'res3', 'res4', 'res5'"):
        build_pixel_decoder(decoder_cfg(IN_FEATURES=["res3", "res4", "res5"]), SHAPES)
    with pytest.raises(ValueError, match=r"IN_FEATURES .*\['res6'\] not among the backbone's maps"):
        build_pixel_decoder(decoder_cfg(IN_FEATURES=["res2", "res3", "res4", "res6"]), SHAPES)
    skipping = {**SHAPES, "res5": ShapeSpec(32, 64)}
    with pytest.raises(ValueError, match="each twice the previous"):
        build_pixel_decoder(decoder_cfg(), skipping)
    with pytest.raises(ValueError, match="divisible by the 8 deformable groups"):
        build_pixel_decoder(decoder_cfg(CONVS_DIM=36), SHAPES)


def test_state_dict_layout() -> None:
    keys = set(build_pixel_decoder(decoder_cfg(), SHAPES).state_dict())
    expected = {"mask_features.weight", "mask_features.bias"}
    for index in (1, 2, 3, 4):
        expected |= {f"layer_{index}.weight", f"layer_{index}.norm.weight", f"layer_{index}.norm.bias"}
    for index in (1, 2, 3):
        prefix = f"align_{index}."
        expected |= {
            prefix + "lateral_conv.conv_atten.weight",
            prefix + "lateral_conv.conv.weight",
            prefix + "offset.weight",
            prefix + "offset.norm.weight",
            prefix + "offset.norm.bias",
            prefix + "dcpack_L2.weight",
            prefix + "dcpack_L2.bias",
            prefix + "dcpack_L2.conv_offset_mask.weight",
            prefix + "dcpack_L2.conv_offset_mask.bias",
        }
    assert keys == expected
    without_norm = set(build_pixel_decoder(decoder_cfg(NORM=""), SHAPES).state_dict())
    assert "layer_1.bias" in without_norm and not any(".norm." in key for key in without_norm)


def test_autocast_keeps_the_ambient_dtype() -> None:
    torch.manual_seed(0)
    decoder = build_pixel_decoder(decoder_cfg(), SHAPES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, multi_scale = decoder.forward_features(features(2, 64, 64))
    assert mask_features.dtype == torch.bfloat16 and all(m.dtype == torch.bfloat16 for m in multi_scale)
    assert torch.isfinite(mask_features.float()).all()


def fake_batch(num_classes: int, size: int = 64) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(2):
        label = torch.zeros(size, size, dtype=torch.long)
        label[: size // 2, : size // 3] = 2
        label[size // 2 :, size // 2 :] = num_classes - 1
        label[0, 0] = 255
        image = torch.randint(0, 255, (3, size, size), generator=generator, dtype=torch.uint8)
        batch.append({"image": image, "sem_seg": label, "height": size, "width": size})
    return batch


def test_tiny_mask2former_with_fapn_trains_a_step() -> None:
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "quickstart.yaml"))
    cfg.merge_from_list(TINY)
    torch.manual_seed(0)
    model = build_model(cfg)
    decoder = model.sem_seg_head.pixel_decoder
    assert isinstance(decoder, PixelFANDecoder)
    model.train()
    losses = model(fake_batch(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES))
    total = model.criterion.weighted_total(losses)
    assert torch.isfinite(total)
    total.backward()
    for name, parameter in decoder.named_parameters():
        assert parameter.grad is not None, name
        if ".offset." not in name:  # zero on the first step, see test_gradients_reach_offset_convs_and_fsm
            assert parameter.grad.abs().sum() > 0, name
    assert next(model.backbone.parameters()).grad is not None
