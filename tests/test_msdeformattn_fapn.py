"""The MSFaPN pixel decoder (MSDeformAttnPixelFANDecoder): the encoder shared with MSDeformAttnPixelDecoder, the FPN
step against a written-out reference of the official one, the shared GroupNorm, official key names, float32 under
autocast, a tiny SeMask model training a step with it, and the Swin-L model's published size (224M) (shapes:
tests/test_registry_contracts.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, TINY_MODEL
from torchvision.ops import deform_conv2d

from mask2former.config import get_cfg, load_config
from mask2former.modeling.backbone.base import ShapeSpec
from mask2former.modeling.build import build_model
from mask2former.modeling.pixel_decoder.base import build_pixel_decoder
from mask2former.modeling.pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder
from mask2former.modeling.pixel_decoder.msdeformattn_fapn import MSDeformAttnPixelFANDecoder

NAME = "MSDeformAttnPixelFANDecoder"
SHAPES = {"res2": ShapeSpec(16, 4), "res3": ShapeSpec(24, 8), "res4": ShapeSpec(40, 16), "res5": ShapeSpec(64, 32)}
SWIN_L = {"res2": ShapeSpec(192, 4), "res3": ShapeSpec(384, 8), "res4": ShapeSpec(768, 16), "res5": ShapeSpec(1536, 32)}


def decoder_cfg(**head):
    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = NAME
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 24
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 64
    for key, value in head.items():
        setattr(cfg.MODEL.SEM_SEG_HEAD, key, value)
    return cfg


def tiny(**head) -> MSDeformAttnPixelFANDecoder:
    torch.manual_seed(0)
    decoder = build_pixel_decoder(decoder_cfg(**head), SHAPES)
    assert isinstance(decoder, MSDeformAttnPixelFANDecoder)
    return decoder


def features(batch: int, height: int, width: int, shapes: dict[str, ShapeSpec] = SHAPES) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        name: torch.randn(batch, spec.channels, height // spec.stride, width // spec.stride, generator=generator)
        for name, spec in shapes.items()
    }


def randomise_alignment(decoder: MSDeformAttnPixelFANDecoder) -> None:
    """Non-zero offsets of a few tenths of a pixel (bilinear sampling between pixels), masks away from 0.5,
    and a GroupNorm affine away from (1, 0): every term of the FPN step shows."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        conv_offset_mask = decoder.align_1.dcpack_L2.conv_offset_mask
        conv_offset_mask.weight.copy_(0.05 * torch.randn(conv_offset_mask.weight.shape, generator=generator))
        conv_offset_mask.bias.copy_(0.3 * torch.randn(conv_offset_mask.bias.shape, generator=generator))
        decoder.align_1.dcpack_L2.bias.copy_(0.1 * torch.randn(decoder.align_1.dcpack_L2.bias.shape))
        norm = decoder.layer_1.norm
        norm.weight.copy_(1 + 0.2 * torch.randn(norm.weight.shape, generator=generator))
        norm.bias.copy_(0.2 * torch.randn(norm.bias.shape, generator=generator))


def written_out_fpn_step(decoder: MSDeformAttnPixelFANDecoder, res2: torch.Tensor, res3_map: torch.Tensor):
    """[SeMask] MSDeformAttnPixelFANDecoder.forward_features after the encoder, with functional ops: the one FPN
    level (res2), FeatureAlign with its offset conv normalised by layer_1's GroupNorm, and dcn_v2.DCN
    (extra_offset_mask: o1, o2, mask = chunk(conv_offset_mask(offset), 3); offset = cat(o1, o2); sigmoid(mask))."""
    norm = decoder.layer_1.norm

    def gn(x: torch.Tensor, module: torch.nn.GroupNorm) -> torch.Tensor:
        return F.group_norm(x, module.num_groups, module.weight, module.bias, module.eps)

    lateral = gn(F.conv2d(res2, decoder.adapter_1.weight), decoder.adapter_1.norm)
    summed = lateral + F.interpolate(res3_map, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
    offset = gn(F.conv2d(torch.cat([lateral, summed * 2], 1), decoder.align_1.offset.weight), norm)
    dcn = decoder.align_1.dcpack_L2
    o1, o2, mask = torch.chunk(
        F.conv2d(offset, dcn.conv_offset_mask.weight, dcn.conv_offset_mask.bias, padding=1), 3, 1
    )
    deformed = deform_conv2d(
        summed, torch.cat([o1, o2], 1), dcn.weight, dcn.bias, padding=(1, 1), mask=torch.sigmoid(mask)
    )
    aligned = F.relu(deformed) + lateral
    out = F.relu(gn(F.conv2d(aligned, decoder.layer_1.weight, padding=1), norm))
    return F.conv2d(out, decoder.mask_features.weight, decoder.mask_features.bias)


@pytest.mark.parametrize("height, width", [(64, 64), (96, 64)])
def test_encoder_is_msdeformattn_decoders_and_the_fpn_step_the_official_one(height: int, width: int) -> None:
    decoder = tiny()
    randomise_alignment(decoder)
    plain = MSDeformAttnPixelDecoder(
        input_shape=SHAPES, conv_dim=32, mask_dim=24, transformer_enc_layers=1, transformer_nheads=4,
        transformer_dim_feedforward=64,
    )  # fmt: skip
    result = plain.load_state_dict(decoder.state_dict(), strict=False)
    assert (
        result.missing_keys == []
        and result.unexpected_keys
        and all(key.startswith("align_1.") for key in result.unexpected_keys)
    )
    inputs = features(2, height, width)
    with torch.no_grad():
        mask_features, multi_scale = decoder.forward_features(inputs)
        plain_mask_features, plain_multi_scale = plain.forward_features(inputs)
        reference = written_out_fpn_step(decoder, inputs["res2"], multi_scale[-1])
    for ours, theirs in zip(multi_scale, plain_multi_scale, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # the 3 encoder maps: the same modules
    torch.testing.assert_close(mask_features, reference, rtol=1e-5, atol=1e-5)
    assert (mask_features - plain_mask_features).abs().max() > 1e-2  # the alignment changes the mask features


def test_offset_conv_shares_the_output_convs_norm() -> None:
    """[SeMask] builds FeatureAlign(conv_dim, conv_dim, norm=output_norm) with layer_1's own norm module."""
    decoder = tiny()
    assert decoder.align_1.offset.norm is decoder.layer_1.norm
    assert decoder.adapter_1.norm is not decoder.layer_1.norm
    state = decoder.state_dict()
    assert state["align_1.offset.norm.weight"].data_ptr() == state["layer_1.norm.weight"].data_ptr()
    names = [name for name, _ in decoder.named_parameters()]
    assert "layer_1.norm.weight" in names and "align_1.offset.norm.weight" not in names  # counted once
    with torch.no_grad():
        state = {key: value.clone() for key, value in state.items()}
        state["layer_1.norm.weight"].fill_(2.0)
        state["align_1.offset.norm.weight"].fill_(2.0)  # an official checkpoint holds both keys, equal
    decoder.load_state_dict(state)
    assert (decoder.align_1.offset.norm.weight == 2.0).all()
    without_norm = tiny(NORM="")
    assert without_norm.align_1.offset.norm is None and without_norm.layer_1.norm is None
    keys = set(without_norm.state_dict())
    assert {"adapter_1.bias", "layer_1.bias"} <= keys and "align_1.offset.bias" not in keys
    assert not any(key.startswith(("adapter_1.norm", "layer_1.norm", "align_1.offset.norm")) for key in keys)


# Official names (from [SeMask] msdeformattn_fapn.py: add_module("adapter_1" / "align_1" / "layer_1"),
# FeatureAlign.offset / .dcpack_L2, dcn_v2.DCN.weight / .bias / .conv_offset_mask, input_proj, transformer,
# mask_features) and the shapes they have in the Swin-L model (CONVS_DIM = MASK_DIM = 256, 8 heads, 4 points).
OFFICIAL_SWIN_L_KEYS = {
    "input_proj.0.0.weight": (256, 1536, 1, 1),  # res5
    "input_proj.2.1.bias": (256,),  # res3's GroupNorm
    "transformer.level_embed": (3, 256),
    "transformer.encoder.layers.5.self_attn.sampling_offsets.weight": (8 * 3 * 4 * 2, 256),
    "transformer.encoder.layers.5.linear1.weight": (1024, 256),
    "adapter_1.weight": (256, 192, 1, 1),
    "adapter_1.norm.weight": (256,),
    "align_1.offset.weight": (256, 512, 1, 1),
    "align_1.offset.norm.weight": (256,),
    "align_1.offset.norm.bias": (256,),
    "align_1.dcpack_L2.weight": (256, 256, 3, 3),
    "align_1.dcpack_L2.bias": (256,),
    "align_1.dcpack_L2.conv_offset_mask.weight": (3 * 8 * 9, 256, 3, 3),
    "align_1.dcpack_L2.conv_offset_mask.bias": (3 * 8 * 9,),
    "layer_1.weight": (256, 256, 3, 3),
    "layer_1.norm.bias": (256,),
    "mask_features.weight": (256, 256, 1, 1),
    "mask_features.bias": (256,),
}


def test_official_key_names_and_shapes() -> None:
    cfg = get_cfg()
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = NAME
    with torch.device("meta"):
        state = build_pixel_decoder(cfg, SWIN_L).state_dict()
    ours = {key: tuple(state[key].shape) for key in OFFICIAL_SWIN_L_KEYS if key in state}
    assert ours == OFFICIAL_SWIN_L_KEYS
    # the whole layout: MSDeformAttnPixelDecoder's keys plus the alignment module's, nothing else
    plain = set(MSDeformAttnPixelDecoder.from_config(decoder_cfg(), SHAPES).state_dict())
    added = set(tiny().state_dict()) - plain
    assert plain <= set(tiny().state_dict())
    assert added == {
        "align_1.offset.weight",
        "align_1.offset.norm.weight",
        "align_1.offset.norm.bias",
        "align_1.dcpack_L2.weight",
        "align_1.dcpack_L2.bias",
        "align_1.dcpack_L2.conv_offset_mask.weight",
        "align_1.dcpack_L2.conv_offset_mask.bias",
    }


def test_float32_under_autocast_as_officially() -> None:
    """[SeMask] forward_features is @autocast(enabled=False) with .float() inputs: bfloat16 autocast changes nothing
    (MSDeformAttnPixelDecoder here lets its FPN follow the ambient autocast instead)."""
    decoder = tiny()
    randomise_alignment(decoder)
    inputs = features(2, 64, 64)
    with torch.no_grad():
        reference, reference_maps = decoder.forward_features(inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mask_features, multi_scale = decoder.forward_features(inputs)
    assert mask_features.dtype == torch.float32 and all(m.dtype == torch.float32 for m in multi_scale)
    torch.testing.assert_close(mask_features, reference, rtol=0, atol=0)
    for ours, theirs in zip(multi_scale, reference_maps, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_gradients_reach_the_alignment() -> None:
    decoder = tiny()
    randomise_alignment(decoder)
    mask_features, multi_scale = decoder.forward_features(features(2, 32, 64))
    (mask_features.square().mean() + sum(m.square().mean() for m in multi_scale)).backward()
    for name, parameter in decoder.named_parameters():
        # the level embedding only feeds the sampling offsets and attention weights, both zero at init
        if name != "transformer.level_embed":
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_bad_convs_dim_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"CONVS_DIM 36 must be divisible by the 8 deformable groups"):
        build_pixel_decoder(decoder_cfg(CONVS_DIM=36), SHAPES)


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


def test_tiny_semask_model_with_msfapn_trains_a_step() -> None:
    cfg = load_config(
        str(REPO / "configs" / "quickstart_semask.yaml"), [*TINY_MODEL, "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", NAME]
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    decoder = model.sem_seg_head.pixel_decoder
    assert isinstance(decoder, MSDeformAttnPixelFANDecoder)
    model.train()
    losses = model(fake_batch(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES))
    total = model.criterion.weighted_total(losses)
    assert torch.isfinite(total)
    total.backward()
    for name, parameter in decoder.named_parameters():
        assert parameter.grad is not None, name
        # conv_offset_mask starts at zero (DCN.init_offset), so nothing reaches the offset conv on the first step;
        # the level embedding only feeds the encoder's sampling offsets and attention weights, zero at init too
        if name not in ("align_1.offset.weight", "transformer.level_embed"):
            assert parameter.grad.abs().sum() > 0, name
    assert (decoder.align_1.offset.weight.grad == 0).all()
    assert next(model.backbone.parameters()).grad is not None


def test_semask_swin_l_with_msfapn_has_224m_parameters_at_150_classes() -> None:
    """SeMask's published size of MSFaPN SeMask-Swin-L on ADE20K (224M). The official msfapn_..._swin_large file
    differs from the FaPN one only in the pixel decoder name, so the FaPN config with that name is the model."""
    opts = ["MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", NAME, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "150"]
    cfg = load_config(str(REPO / "configs" / "semask_fapn_swin_l.yaml"), opts)
    ours = load_config(str(REPO / "configs" / "semask_msfapn_swin_l.yaml"), opts[2:])
    ours.defrost()
    ours.OUTPUT_DIR = cfg.OUTPUT_DIR
    assert ours == cfg  # configs/semask_msfapn_swin_l.yaml is that model
    with torch.device("meta"):
        model = build_model(cfg)
    assert isinstance(model.sem_seg_head.pixel_decoder, MSDeformAttnPixelFANDecoder)
    assert abs(sum(p.numel() for p in model.parameters()) / 224e6 - 1) < 0.01
