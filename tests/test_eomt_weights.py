"""EoMT's weights and encoders: both encoder families (timm VisionTransformer, Eva with RoPE) run a training step;
RoPE leaves the queries unrotated; a timm encoder checkpoint (MODEL.BACKBONE.WEIGHTS) loads strictly with its
position embedding resampled as a direct F.interpolate computes it and its patch embedding resampled from 14 to 16;
whole EoMT checkpoints in the official and transformers layouts (random tiny weights made by tests/eomt_reference.py
in those layouts' own key names) load with nothing missing and compute what the reference computes, per block in
training and as a semantic map at inference; tools/convert_checkpoint.py converts both; the documented commands
run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, TINY_MODEL, CoveredBy, doc_commands
from eomt_reference import (
    Dims,
    official_forward,
    official_state,
    semantic_scores,
    transformers_forward,
    transformers_state,
)
from safetensors.torch import save_file

from mask2former.config import ConfigError, load_config
from mask2former.engine.trainer import load_backbone_weights
from mask2former.io.checkpoints import CheckpointMismatchError
from mask2former.modeling.build import build_model
from mask2former.modeling.eomt.encoder import query_rope
from mask2former.modeling.eomt.meta_arch import EoMT
from mask2former.modeling.eomt.weights import EncoderWeightsError
from mask2former.modeling.weights import load_checkpoint_into
from mask2former.pipeline.convert_checkpoint import ConvertOptions, run

QUICKSTART = str(REPO / "configs" / "quickstart_eomt.yaml")
ENCODERS = {"dinov2": "vit_small_patch14_reg4_dinov2", "dinov3": "vit_small_patch16_dinov3_qkvb"}


def eomt(d: Dims, *extra: str, name: str | None = None) -> EoMT:
    """A tiny EoMT of the reference's sizes."""
    sizes = {
        "ENCODER_NAME": name or ENCODERS[d.encoder],
        "EMBED_DIM": d.embed_dim,
        "DEPTH": d.depth,
        "NUM_HEADS": d.num_heads,
        "IMG_SIZE": d.img_size,
        "PATCH_SIZE": d.patch,
        "NUM_QUERIES": d.queries,
        "NUM_BLOCKS": d.num_blocks,
    }
    opts = [item for key, value in sizes.items() for item in (f"MODEL.EOMT.{key}", str(value))]
    cfg = load_config(QUICKSTART, [*opts, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(d.classes), "MODEL.DEVICE", "cpu"])
    cfg.merge_from_list(list(extra))
    torch.manual_seed(0)
    return build_model(cfg)


def uint8_images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=generator).float()


def per_block(model: EoMT, images: torch.Tensor, probability: float) -> tuple[list, list]:
    """The model's predictions before each query block and after the last, in training with every query's mask
    kept (probability 1) or dropped (0)."""
    model.train()
    model.attn_mask_probs.fill_(probability)
    with torch.no_grad():
        outputs = model.mask_outputs((images - model.pixel_mean) / model.pixel_std)
    predictions = [*outputs["aux_outputs"], outputs]
    return [p["pred_masks"] for p in predictions], [p["pred_logits"] for p in predictions]


def assert_same_as_reference(model: EoMT, state: dict, forward, d: Dims, probs_key: str) -> None:  # noqa: ANN001
    images = uint8_images()
    for probability in (0.0, 1.0):
        masks, classes = per_block(model, images, probability)
        reference = dict(state, **{probs_key: torch.full((d.num_blocks,), probability)})
        ref_masks, ref_classes = forward(reference, images, d)
        assert len(masks) == len(ref_masks) == d.num_blocks + 1
        for ours, theirs in zip(masks, ref_masks, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        for ours, theirs in zip(classes, ref_classes, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    model.eval()
    with torch.no_grad():
        results = model([{"image": image.to(torch.uint8), "height": 64, "width": 64} for image in images])
    ref_masks, ref_classes = forward(dict(state, **{probs_key: torch.zeros(d.num_blocks)}), images, d, masked=False)
    expected = semantic_scores(ref_masks[-1], ref_classes[-1], (64, 64))
    for result, scores in zip(results, expected, strict=True):
        torch.testing.assert_close(result["sem_seg"], scores, rtol=1e-4, atol=1e-5)
        assert torch.equal(result["sem_seg"].argmax(0), scores.argmax(0))


# ---- the encoder families -----------------------------------------------------------------------------------------


def test_rope_identity_rows_leave_the_queries_unrotated() -> None:
    from timm.layers import apply_rot_embed_cat

    angles = torch.rand(6, 4) * 6.0
    rope = torch.cat((angles.sin().repeat(1, 2), angles.cos().repeat(1, 2)), dim=-1)  # 6 patches, head dim 8
    tokens = torch.randn(2, 3, 3 + 6, 8)  # 3 queries, then the patches
    rotated = apply_rot_embed_cat(tokens, query_rope(rope, 3), half=True)
    assert torch.equal(rotated[:, :, :3], tokens[:, :, :3])
    torch.testing.assert_close(rotated[:, :, 3:], apply_rot_embed_cat(tokens[:, :, 3:], rope, half=True))


@pytest.mark.parametrize(
    "name", ["vit_small_patch14_reg4_dinov2", "vit_small_patch16_dinov3_qkvb", "eva02_tiny_patch14_224"]
)
def test_each_encoder_family_trains_a_step_and_predicts_any_size(name: str) -> None:
    model = eomt(Dims(), name=name).train()
    model.attn_mask_probs.fill_(0.5)
    label = torch.zeros(64, 96, dtype=torch.long)
    label[:32, :40] = 2
    losses = model(
        [{"image": uint8_images(1)[0, :, :, :].to(torch.uint8).repeat(1, 1, 2)[:, :, :96], "sem_seg": label}]
    )
    model.criterion.weighted_total(losses).backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.eval()
    with torch.no_grad():
        outputs = model.mask_outputs(torch.randn(1, 3, 48, 80))
    assert outputs["pred_masks"].shape == (1, 6, 12, 20)


# ---- MODEL.BACKBONE.WEIGHTS: a timm encoder checkpoint ----------------------------------------------------------


def timm_encoder(name: str, patch: int, img_size: int) -> torch.nn.Module:
    import timm

    torch.manual_seed(1)
    kwargs = {"embed_dim": 32, "depth": 3, "num_heads": 2, "patch_size": patch, "img_size": img_size}
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_timm_dinov2_checkpoint_loads_resampled_to_patch_16_and_the_input_grid(tmp_path: Path, suffix: str) -> None:
    source = timm_encoder("vit_small_patch14_reg4_dinov2", patch=14, img_size=70)  # a 5 x 5 grid of 14 px
    state = {key: value.clone() for key, value in source.state_dict().items()}
    path = tmp_path / f"dinov2{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    model = eomt(Dims())  # patch 16, IMG_SIZE 64: a 4 x 4 grid
    load_backbone_weights(model, str(path))
    vit = model.backbone
    for key, value in state.items():
        if key not in ("pos_embed", "patch_embed.proj.weight"):
            assert torch.equal(vit.state_dict()[key], value), key
    grid = state["pos_embed"].reshape(1, 5, 5, -1).permute(0, 3, 1, 2)  # registers: no position rows for prefixes
    resized = F.interpolate(grid, size=(4, 4), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(vit.pos_embed, resized.permute(0, 2, 3, 1).reshape(1, 16, -1), rtol=1e-6, atol=1e-6)
    # the resampled 16 px kernel sees a 14 px patch upsampled to 16 as the 14 px kernel sees the patch
    patch14 = torch.randn(5, 3, 14, 14)
    patch16 = F.interpolate(patch14, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(
        F.conv2d(patch16, vit.patch_embed.proj.weight),
        F.conv2d(patch14, state["patch_embed.proj.weight"]),
        rtol=1e-3,
        atol=1e-4,
    )


def test_a_dinov3_checkpoint_loads_in_timms_layout_and_in_transformers(tmp_path: Path) -> None:
    source = timm_encoder("vit_small_patch16_dinov3_qkvb", patch=16, img_size=64)
    save_file(dict(source.state_dict()), str(tmp_path / "timm.safetensors"))
    model = eomt(Dims("dinov3"))
    load_backbone_weights(model, str(tmp_path / "timm.safetensors"))
    for key, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    # transformers' DINOv3ViT file of the encoder the reference's official state holds (the official wrapper renamed
    # embeddings -> patch_embed and layer -> blocks; undone here), with the pre-training mask token
    d = Dims("dinov3")
    official = official_state(d, seed=4)
    encoder = {
        key.removeprefix("network.encoder.backbone.")
        .replace("patch_embed.", "embeddings.")
        .replace("blocks.", "layer."): v
        for key, v in official.items()
        if key.startswith("network.encoder.backbone.")
    }
    encoder["embeddings.mask_token"] = torch.zeros(1, 1, d.embed_dim)
    save_file(encoder, str(tmp_path / "hf.safetensors"))
    hf_model = eomt(d)
    load_backbone_weights(hf_model, str(tmp_path / "hf.safetensors"))
    whole = eomt(d)
    load_checkpoint_into(whole, _save(official, tmp_path / "official.ckpt"))
    for key, value in whole.backbone.state_dict().items():
        assert torch.equal(hf_model.backbone.state_dict()[key], value), key


def test_an_eva02_checkpoint_loads_its_pooled_norm_as_the_token_norm_and_keeps_the_class_position(
    tmp_path: Path,
) -> None:
    source = timm_encoder("eva02_tiny_patch14_224", patch=14, img_size=70)  # timm's classifier form: fc_norm
    state = dict(source.state_dict())
    save_file(state, str(tmp_path / "eva02.safetensors"))
    model = eomt(Dims(), name="eva02_tiny_patch14_224")
    load_backbone_weights(model, str(tmp_path / "eva02.safetensors"))
    vit = model.backbone
    assert torch.equal(vit.norm.weight, state["fc_norm.weight"]) and torch.equal(vit.norm.bias, state["fc_norm.bias"])
    assert torch.equal(vit.pos_embed[:, :1], state["pos_embed"][:, :1])  # the class token's row, not resampled
    grid = state["pos_embed"][:, 1:].reshape(1, 5, 5, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(4, 4), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(vit.pos_embed[:, 1:], resized.permute(0, 2, 3, 1).reshape(1, 16, -1))


def test_an_encoder_checkpoint_that_does_not_fit_names_its_keys(tmp_path: Path) -> None:
    state = dict(timm_encoder("vit_small_patch14_reg4_dinov2", patch=14, img_size=70).state_dict())
    model = eomt(Dims())
    broken = {k: v for k, v in state.items() if k != "blocks.1.ls1.gamma"} | {"blocks.9.extra": torch.zeros(1)}
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(EncoderWeightsError, match=r"1 missing: blocks\.1\.ls1\.gamma; 1 unexpected: blocks\.9\.extra"):
        load_backbone_weights(model, str(tmp_path / "broken.safetensors"))
    save_file(dict(state, **{"head.weight": torch.zeros(10, 32)}), str(tmp_path / "classifier.safetensors"))
    load_backbone_weights(model, str(tmp_path / "classifier.safetensors"))  # a classifier is dropped, not an error
    dinov3 = timm_encoder("vit_small_patch16_dinov3_qkvb", patch=16, img_size=64).state_dict()
    save_file(dict(dinov3), str(tmp_path / "qkvb.safetensors"))
    plain = eomt(Dims("dinov3"), name="vit_small_patch16_dinov3")
    with pytest.raises(EncoderWeightsError, match=r"attn\.q_bias.*_dinov3_qkvb variant"):
        load_backbone_weights(plain, str(tmp_path / "qkvb.safetensors"))


# ---- MODEL.WEIGHTS: whole checkpoints in the official and transformers layouts -----------------------------------


def _save(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif path.suffix == ".ckpt":
        torch.save({"state_dict": state, "global_step": 10}, path)  # the official Lightning checkpoint
    else:
        torch.save(state, path)  # the official pytorch_model.bin
    return path


@pytest.mark.parametrize("encoder", ["dinov2", "dinov3"])
@pytest.mark.parametrize("layout", ["official", "transformers"])
def test_official_and_transformers_checkpoints_load_fully_and_compute_what_the_reference_does(
    tmp_path: Path, encoder: str, layout: str
) -> None:
    d = Dims(encoder)
    if layout == "official":
        state, forward, probs, path = official_state(d, seed=5), official_forward, "network.attn_mask_probs", "m.bin"
    else:
        state, forward, probs = transformers_state(d, seed=6), transformers_forward, "attn_mask_probs"
        path = "model.safetensors"
    model = eomt(d)
    report = load_checkpoint_into(model, _save(state, tmp_path / path))
    assert not report.missing and not report.unexpected and not report.shape_mismatch and not report.reinitialised
    assert report.loaded == len(model.state_dict())
    assert_same_as_reference(model, state, forward, d, probs)


def test_an_official_checkpoint_without_the_criterion_and_as_a_lightning_file_loads_the_same(tmp_path: Path) -> None:
    d = Dims()
    state = official_state(d, seed=7, empty_weight=False)
    model = eomt(d)
    report = load_checkpoint_into(model, _save(state, tmp_path / "last.ckpt"))
    assert not report.missing and report.loaded == len(model.state_dict())
    assert_same_as_reference(model, state, official_forward, d, "network.attn_mask_probs")


def test_checkpoints_that_do_not_fit_are_refused_naming_the_keys(tmp_path: Path) -> None:
    d = Dims()
    state = official_state(d)
    extra = dict(state, **{"network.extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected: extra\.weight"):
        load_checkpoint_into(eomt(d), _save(extra, tmp_path / "extra.bin"))
    with pytest.raises(CheckpointMismatchError, match=r"q\.weight \(6, 32\) vs \(9, 32\)"):
        load_checkpoint_into(eomt(Dims(queries=9)), _save(state, tmp_path / "m.bin"))
    missing = {k: v for k, v in transformers_state(d).items() if k != "layers.2.attention.k_proj.weight"}
    with pytest.raises(CheckpointMismatchError, match=r"backbone\.blocks\.2\.attn\.(q_proj|qkv)"):
        load_checkpoint_into(eomt(d), _save(missing, tmp_path / "missing.safetensors"))
    bgr = dict(state, **{"network.encoder.pixel_mean": torch.tensor([0.406, 0.456, 0.485]).reshape(1, 3, 1, 1)})
    with pytest.raises(CheckpointMismatchError, match=r"set MODEL.PIXEL_MEAN \[103.530, 116.280, 123.675\]"):
        load_checkpoint_into(eomt(d), _save(bgr, tmp_path / "bgr.bin"))


def test_official_dinov3_delta_weights_add_the_backbone_weights(tmp_path: Path) -> None:
    """The official DINOv3 releases store encoder - DINOv3: MODEL.EOMT.DELTA_WEIGHTS adds MODEL.BACKBONE.WEIGHTS
    (here transformers' DINOv3ViT layout of a random base) back."""
    d = Dims("dinov3")
    absolute = official_state(d, seed=8)
    prefix = "network.encoder.backbone."
    base = {k: torch.randn_like(v) for k, v in absolute.items() if k.startswith(prefix)}
    delta = {k: v - base[k] if k in base else v for k, v in absolute.items()}
    hf_base = {
        k[len(prefix) :].replace("patch_embed.", "embeddings.").replace("blocks.", "layer."): v for k, v in base.items()
    }
    base_path = _save(hf_base, tmp_path / "dinov3_base.safetensors")
    model = eomt(d, "MODEL.EOMT.DELTA_WEIGHTS", "True", "MODEL.BACKBONE.WEIGHTS", str(base_path))
    report = load_checkpoint_into(model, _save(delta, tmp_path / "delta.bin"))
    assert not report.missing and report.loaded == len(model.state_dict())
    assert_same_as_reference(model, absolute, official_forward, d, "network.attn_mask_probs")
    with pytest.raises(ConfigError, match="MODEL.EOMT.DELTA_WEIGHTS is set.*MODEL.BACKBONE.WEIGHTS.*empty"):
        load_checkpoint_into(eomt(d, "MODEL.EOMT.DELTA_WEIGHTS", "True"), tmp_path / "delta.bin")


# ---- tools/convert_checkpoint.py -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["official", "transformers"])
def test_convert_checkpoint_writes_either_layout_in_the_projects_keys(tmp_path: Path, layout: str) -> None:
    d = Dims("dinov3")
    state = official_state(d, seed=9) if layout == "official" else transformers_state(d, seed=9)
    source = _save(state, tmp_path / ("m.bin" if layout == "official" else "model.safetensors"))
    sizes = ["MODEL.EOMT.ENCODER_NAME", ENCODERS["dinov3"], "MODEL.EOMT.EMBED_DIM", "32", "MODEL.EOMT.DEPTH", "3"]
    sizes += ["MODEL.EOMT.NUM_HEADS", "2", "MODEL.EOMT.IMG_SIZE", "64", "MODEL.EOMT.NUM_QUERIES", "6"]
    sizes += ["MODEL.EOMT.NUM_BLOCKS", "2", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"]
    result = run(ConvertOptions(str(source), str(tmp_path / "out.safetensors"), config_file=QUICKSTART, opts=sizes))
    assert result.kind == "model" and not result.report.missing and not result.report.unexpected
    direct, converted = eomt(d), eomt(d)
    load_checkpoint_into(direct, source)
    report = load_checkpoint_into(converted, tmp_path / "out.safetensors")
    assert not report.missing and report.loaded == len(converted.state_dict())
    for key, value in direct.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key


# ---- docs/models.md "EoMT weights" ---------------------------------------------------------------------------------


def _tool():
    spec = importlib.util.spec_from_file_location("convert_checkpoint_tool", REPO / "tools" / "convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_documented_commands_run(tmp_path: Path) -> None:
    """Each command of docs/models.md "EoMT weights" through the tool's main, with tiny files under the documented
    names (the TINY_MODEL sizes: width 32, 3 blocks, 2 heads, IMG_SIZE 64, 8 queries in 2 blocks) and TINY_MODEL
    appended; each written file then loads into the config's tiny model with nothing missing."""
    commands = doc_commands("EoMT weights")
    assert len(commands) == 4 and all(argv[:2] == ["python", "tools/convert_checkpoint.py"] for argv in commands)
    (tmp_path / "weights").mkdir()
    (tmp_path / "configs").symlink_to(REPO / "configs")
    dinov2, dinov3 = Dims("dinov2", queries=8, classes=150), Dims("dinov3", queries=8, classes=150)
    files = {
        "vit_large_patch14_reg4_dinov2.safetensors": timm_encoder("vit_small_patch14_reg4_dinov2", 14, 70).state_dict(),
        "vit_large_patch16_dinov3_qkvb.safetensors": timm_encoder("vit_small_patch16_dinov3_qkvb", 16, 64).state_dict(),
        "ade20k_semantic_eomt_large_512.bin": official_state(dinov2),
        "eomt_large_512_transformers.safetensors": transformers_state(dinov2),
        "ade_semantic_eomt_large_512_dinov3.bin": official_state(dinov3),
    }
    for name, state in files.items():
        _save(dict(state), tmp_path / "weights" / name)
    tool = _tool()
    kinds = []
    for argv in commands:
        assert Path(argv[2]).name in files, argv[2]
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(tmp_path)
            result = tool.main([*argv[2:], *TINY_MODEL])
            kinds.append(result.kind)
            cfg = load_config(
                argv[argv.index("--config-file") + 1], [*argv[argv.index("--config-file") + 2 :], *TINY_MODEL]
            )
            cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.EOMT.DELTA_WEIGHTS", "False"])
            report = load_checkpoint_into(build_model(cfg), argv[3], fresh_head_ok=True)
        assert not report.missing and not report.unexpected and report.loaded > 0, argv[3]
    assert kinds == ["backbone", "model", "model", "model"]


# ---- what the keys added here do (tests/test_config_keys.py collects this) ---------------------------------------

CONFIG_KEY_CHECKS = {
    "MODEL.EOMT.DELTA_WEIGHTS": CoveredBy(
        "tests/test_eomt_weights.py::test_official_dinov3_delta_weights_add_the_backbone_weights"
    ),
}
