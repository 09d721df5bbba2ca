"""ResNet backbone (`build_resnet_backbone`): detectron2's key layout and options, torchvision / timm / detectron2 /
MSRA weights, the official R50 config."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from conftest import REPO, TINY_MODEL, Changes, ConfigKeyCheck, Refused
from torch import nn

from mask2former.config import ConfigError, get_cfg, load_config
from mask2former.io.checkpoints import CheckpointMismatchError, read_checkpoint, read_checkpoint_with_metadata
from mask2former.modeling.backbone.base import build_backbone
from mask2former.modeling.backbone.resnet import (
    BottleneckBlock,
    DeepLabStem,
    FrozenBatchNorm2d,
    ResNet,
    checkpoint_filter_fn,
    checkpoint_layout,
    load_resnet_pretrained,
    resnet50,
)
from mask2former.modeling.build import build_model
from mask2former.modeling.weights import load_checkpoint_into, plan_weights

NARROW = dict(stem_out_channels=8, res2_out_channels=16, width_per_group=4)
STAGES = ("res2", "res3", "res4", "res5")


def narrow(**overrides) -> ResNet:
    torch.manual_seed(0)
    return ResNet(**{**NARROW, **overrides})


def randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine, so that a wrong mapping of norms shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.1, generator=generator)


def torchvision_features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """layer1..layer4 of a torchvision (or timm) ResNet: what res2..res5 must equal."""
    act = getattr(model, "relu", None) or model.act1
    y = model.maxpool(act(model.bn1(model.conv1(x))))
    out = {}
    for i, name in enumerate(STAGES):
        y = getattr(model, f"layer{i + 1}")(y)
        out[name] = y
    return out


def detectron2_converted(torchvision_state: dict) -> dict[str, np.ndarray]:
    """What detectron2's tools/convert-torchvision-to-d2.py writes into R-50.pkl, by its documented rules: keys
    outside layerN get "stem.", layerN -> res(N+1), bnK -> convK.norm, downsample.0/1 -> shortcut / shortcut.norm."""
    out = {}
    for key, value in torchvision_state.items():
        name = key if "layer" in key else "stem." + key
        for t in (1, 2, 3, 4):
            name = name.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            name = name.replace(f"bn{t}", f"conv{t}.norm")
        name = name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[name] = value.detach().numpy()
    return out


def write_r50_pkl(path: Path, torchvision_state: dict) -> Path:
    data = {"model": detectron2_converted(torchvision_state), "__author__": "torchvision", "matching_heuristics": True}
    with path.open("wb") as handle:
        pickle.dump(data, handle)
    return path


X = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def torchvision_r50() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """torchvision's ResNet-50 with random norms, and its layer1..4 features of X."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    randomise_norms(model)
    model.eval()
    with torch.no_grad():
        return model, torchvision_features(model, X)


def meta_resnet50(**kwargs) -> ResNet:
    """An R50 without initialisation (cheap), to be filled by `load_state_dict(..., assign=True)`."""
    with torch.device("meta"):
        return resnet50(**kwargs).eval()


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (70, 90)])
def test_feature_contract(size: tuple[int, int]) -> None:
    model = narrow(stride_in_1x1=False)
    assert model.feature_info == [
        {"name": "res2", "channels": 16, "stride": 4},
        {"name": "res3", "channels": 32, "stride": 8},
        {"name": "res4", "channels": 64, "stride": 16},
        {"name": "res5", "channels": 128, "stride": 32},
    ]
    features = model(torch.randn(2, 3, *size))
    assert list(features) == list(STAGES)
    for info in model.feature_info:
        expected = tuple(-(-side // info["stride"]) for side in size)  # ceil: the convs pad
        assert features[info["name"]].shape == (2, info["channels"], *expected)
        assert torch.isfinite(features[info["name"]]).all()
    sum(f.square().mean() for f in features.values()).backward()
    assert model.stem.conv1.weight.grad.abs().sum() > 0
    assert model.res5[2].conv3.weight.grad.abs().sum() > 0


def test_detectron2_key_layout_and_r50_size() -> None:
    with torch.device("meta"):
        model = resnet50()
    state = model.state_dict()
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    # R-50.pkl's names (detectron2 model zoo, torchvision conversion), each conv followed by its norm's 4 tensors.
    norm = ("weight", "bias", "running_mean", "running_var")
    expected = {
        "stem.conv1.weight": (64, 3, 7, 7),
        "res2.0.shortcut.weight": (256, 64, 1, 1),
        "res2.0.conv1.weight": (64, 64, 1, 1),
        "res2.0.conv2.weight": (64, 64, 3, 3),
        "res2.0.conv3.weight": (256, 64, 1, 1),
        "res2.2.conv3.weight": (256, 64, 1, 1),
        "res3.0.shortcut.weight": (512, 256, 1, 1),
        "res3.3.conv2.weight": (128, 128, 3, 3),
        "res4.5.conv3.weight": (1024, 256, 1, 1),
        "res5.0.shortcut.weight": (2048, 1024, 1, 1),
        "res5.2.conv3.weight": (2048, 512, 1, 1),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape
        conv = key.removesuffix(".weight")
        for name in norm:
            assert shapes[f"{conv}.norm.{name}"] == (shape[0],)
    assert "res2.1.shortcut.weight" not in state and "res5.1.shortcut.weight" not in state
    # 53 convs (stem, 16 x 3 in the blocks, 4 shortcuts), each with weight + 4 norm tensors; no fc, no counters
    assert len(state) == 53 * 5
    assert not any(k.startswith(("fc", "linear")) or k.endswith("num_batches_tracked") for k in state)
    # ResNet-50 without its classifier: torchvision's 25,557,032 less fc (2048 x 1000 + 1000) = 23,508,032, of
    # which 53,120 are the (here frozen) norms' affine values.
    params = sum(p.numel() for p in model.parameters())
    frozen_affine = sum(v.numel() for k, v in state.items() if k.endswith(("norm.weight", "norm.bias")))
    assert (params, frozen_affine) == (23_454_912, 53_120)
    with torch.device("meta"):
        assert sum(p.numel() for p in resnet50(norm="BN").parameters()) == 23_508_032


def test_official_r50_config_has_the_published_size() -> None:
    """Mask2Former R50 on ADE20K (150 classes): 44M in the model zoo."""
    cfg = load_config(str(REPO / "configs" / "m2f_r50.yaml"), ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "150"])
    with torch.device("meta"):
        model = build_model(cfg)
    assert isinstance(model.backbone, ResNet) and model.backbone.depth == 50
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 44.0) < 0.5
    assert [f["channels"] for f in model.backbone.feature_info] == [256, 512, 1024, 2048]
    assert all(isinstance(m, FrozenBatchNorm2d) for n, m in model.backbone.named_modules() if n.endswith(".norm"))
    assert model.backbone.res3[0].conv2.stride == (2, 2)  # STRIDE_IN_1X1 False (torchvision weights)


def test_torchvision_weights_convert_exactly(torchvision_r50) -> None:
    source, expected = torchvision_r50
    assert checkpoint_layout(source.state_dict()) == "torchvision"
    model = meta_resnet50()
    # zero missing, zero unexpected (fc and counters dropped)
    model.load_state_dict(ResNet.convert_pretrained(source.state_dict(), model), strict=True, assign=True)
    with torch.no_grad():
        ours = model(X)
    for name in STAGES:
        torch.testing.assert_close(ours[name], expected[name], rtol=1e-5, atol=1e-5)


def test_timm_layout_and_resnet18_convert_exactly(tmp_path: Path) -> None:
    with torch.device("meta"):
        timm_r50, torchvision_r50_keys = timm.create_model("resnet50"), torchvision.models.resnet50().state_dict()
        assert list(timm_r50.state_dict()) == list(torchvision_r50_keys)  # timm's ResNet-50 has torchvision's names
        ours = resnet50()
    assert set(checkpoint_filter_fn(timm_r50.state_dict(), ours)) == set(ours.state_dict())
    torch.manual_seed(1)
    for source in (timm.create_model("resnet18", pretrained=False), torchvision.models.resnet18(weights=None)):
        randomise_norms(source, seed=1)
        source.eval()
        model = ResNet(depth=18, stride_in_1x1=False, res2_out_channels=64).eval()
        torch.save(source.state_dict(), tmp_path / "resnet18.pth")
        assert ResNet.load_pretrained(model, tmp_path / "resnet18.pth")["layout"] == "torchvision"
        x = torch.randn(1, 3, 64, 96)
        with torch.no_grad():
            ours_out, theirs = model(x), torchvision_features(source, x)
        for name in STAGES:
            torch.testing.assert_close(ours_out[name], theirs[name], rtol=1e-5, atol=1e-5)


def test_detectron2_r50_pkl_loads_with_zero_missing_keys(torchvision_r50, tmp_path: Path) -> None:
    source, expected = torchvision_r50
    path = write_r50_pkl(tmp_path / "R-50.pkl", source.state_dict())
    raw = read_checkpoint(path)  # detectron2's pickled numpy arrays, read without running code
    assert "stem.fc.weight" in raw and "res2.0.conv1.norm.weight" in raw and checkpoint_layout(raw) == "detectron2"
    model = meta_resnet50()
    model.load_state_dict(ResNet.convert_pretrained(raw, model), strict=True, assign=True)
    with torch.no_grad():
        torch.testing.assert_close(model(X)["res4"], expected["res4"], rtol=1e-5, atol=1e-5)
    # the same file as the BN variant: its counters are the model's own
    bn_model = meta_resnet50(norm="BN")
    assert set(ResNet.convert_pretrained(raw, bn_model)) == set(bn_model.state_dict())
    # MODEL.BACKBONE.WEIGHTS' hook
    fresh = resnet50().eval()
    report = ResNet.load_pretrained(fresh, path)
    assert report["missing"] == [] and report["unexpected"] == [] and report["layout"] == "detectron2"
    with torch.no_grad():
        torch.testing.assert_close(fresh(X)["res5"], expected["res5"], rtol=1e-5, atol=1e-5)
    with pytest.raises(CheckpointMismatchError, match="does not fit this ResNet.*shape-mismatched"):
        load_resnet_pretrained(narrow(), path)
    with pytest.raises(CheckpointMismatchError, match="depth 101.*missing: res4.6"):
        load_resnet_pretrained(ResNet(depth=101, **NARROW), path)
    with pytest.raises(FileNotFoundError, match="ResNet weights not found"):
        load_resnet_pretrained(narrow(), tmp_path / "nothing.pkl")
    # MODEL.WEIGHTS R-50.pkl, as the official config gives it: detectron2's matching heuristics put every tensor of
    # the backbone in place (the head starts fresh)
    checkpoint = read_checkpoint_with_metadata(path)
    assert checkpoint.matching_heuristics
    with torch.device("meta"):
        whole = build_model(load_config(str(REPO / "configs" / "m2f_r50.yaml")))
    plan = plan_weights(whole.state_dict(), checkpoint.tensors, matching_heuristics=True, fresh_head_ok=True)
    assert plan.report.backbone_only and plan.report.missing == [] and plan.report.shape_mismatch == []
    assert plan.report.loaded == len(whole.backbone.state_dict()) and plan.report.fits()
    assert plan.mapped["backbone.res3.1.conv2.norm.running_var"] is checkpoint.tensors["res3.1.conv2.norm.running_var"]


def test_msra_caffe2_names_convert() -> None:
    """MSRA's R-50.pkl (Caffe2 names; BN folded into scale and bias): the same function after conversion."""
    source = narrow(stride_in_1x1=True).eval()
    randomise_norms(source)
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, FrozenBatchNorm2d):  # folded statistics: the affine is all there is
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
    own = source.state_dict()

    def caffe2(key: str) -> str:
        if key.startswith("stem."):
            return {
                "conv1.weight": "conv1_w",
                "conv1.norm.weight": "res_conv1_bn_s",
                "conv1.norm.bias": "res_conv1_bn_b",
            }[key.removeprefix("stem.")]
        stage, block, rest = re.fullmatch(r"res(\d)\.(\d+)\.(.+)", key).groups()
        conv, param = rest.split(".", 1)
        branch = {"shortcut": "branch1", "conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c"}[conv]
        suffix = {"weight": "w", "norm.weight": "bn_s", "norm.bias": "bn_b"}[param]
        return f"res{stage}_{block}_{branch}_{suffix}"

    msra = {caffe2(k): v.numpy() for k, v in own.items() if not k.endswith(("running_mean", "running_var"))}
    msra |= {"fc1000_w": np.zeros((10, 128), np.float32), "fc1000_b": np.zeros(10, np.float32)}
    msra["res2_0_branch2a_w_momentum"] = np.zeros_like(msra["res2_0_branch2a_w"])
    assert checkpoint_layout(msra) == "msra"
    target = narrow(stride_in_1x1=True).eval()
    target.load_state_dict(checkpoint_filter_fn(msra, target), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x)["res5"], source(x)["res5"])


def test_whole_mask2former_checkpoint_keys_match_the_model(tmp_path: Path) -> None:
    cfg = load_config(str(REPO / "configs" / "quickstart_r50.yaml"), TINY_MODEL)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert "backbone.stem.conv1.weight" in model.state_dict()
    assert "backbone.res2.0.conv1.norm.running_var" in model.state_dict()
    torch.save({"model": model.state_dict()}, tmp_path / "m2f_r50.pth")
    other = build_model(cfg)
    report = load_checkpoint_into(other, tmp_path / "m2f_r50.pth", strict=True)
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(other.backbone.res4[1].conv2.weight, model.backbone.res4[1].conv2.weight)
    # a whole model's backbone part is what convert_pretrained keeps
    backbone_only = ResNet.convert_pretrained({"model": model.state_dict()}, other.backbone)
    assert set(backbone_only) == set(other.backbone.state_dict())


def test_stride_in_1x1_moves_the_stride() -> None:
    msra, torch_style = narrow(stride_in_1x1=True), narrow(stride_in_1x1=False)
    for stage in ("res3", "res4", "res5"):
        first = getattr(msra, stage)[0]
        assert (first.conv1.stride, first.conv2.stride, first.shortcut.stride) == ((2, 2), (1, 1), (2, 2))
        first = getattr(torch_style, stage)[0]
        assert (first.conv1.stride, first.conv2.stride, first.shortcut.stride) == ((1, 1), (2, 2), (2, 2))
    assert msra.res2[0].conv1.stride == msra.res2[0].conv2.stride == (1, 1)
    assert msra(torch.randn(1, 3, 64, 64))["res5"].shape == torch_style(torch.randn(1, 3, 64, 64))["res5"].shape


def test_res5_dilation_and_multi_grid() -> None:
    dilated = narrow(res5_dilation=2)
    assert dilated.output_shape()["res5"].stride == 16
    assert dilated(torch.randn(1, 3, 64, 96))["res5"].shape == (1, 128, 4, 6)
    assert [b.conv2.dilation for b in dilated.res5] == [(2, 2)] * 3 and dilated.res5[0].shortcut.stride == (1, 1)
    assert [b.conv2.padding for b in dilated.res5] == [(2, 2)] * 3
    # DeepLab's multi-grid: block i dilates by RES5_DILATION x MULTI_GRID[i]
    grid = narrow(res5_dilation=2, res5_multi_grid=(1, 2, 4))
    assert [b.conv2.dilation for b in grid.res5] == [(2, 2), (4, 4), (8, 8)]
    assert grid(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 128, 4, 4)
    undilated = narrow(res5_multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in undilated.res5] == [1, 2, 4] and undilated.output_shape()["res5"].stride == 32
    assert all(b.conv2.dilation == (1, 1) for stage in ("res2", "res3", "res4") for b in getattr(grid, stage))
    cfg = tiny_backbone_cfg(["MODEL.RESNETS.RES5_MULTI_GRID", "[1, 2]"])
    with pytest.raises(ConfigError, match=r"MODEL.RESNETS.RES5_MULTI_GRID.*one positive factor per res5 block \(3"):
        build_backbone(cfg)
    with pytest.raises(ConfigError, match="MODEL.RESNETS.RES5_DILATION"):
        build_backbone(tiny_backbone_cfg(["MODEL.RESNETS.RES5_DILATION", "4"]))


def test_deeplab_stem() -> None:
    model = build_backbone(tiny_backbone_cfg(["MODEL.RESNETS.STEM_TYPE", "'deeplab'"]))
    assert isinstance(model.stem, DeepLabStem)
    shapes = {k: tuple(v.shape) for k, v in model.stem.state_dict().items()}
    assert shapes["conv1.weight"] == (4, 3, 3, 3) and shapes["conv2.weight"] == (4, 4, 3, 3)
    assert shapes["conv3.weight"] == (8, 4, 3, 3) and shapes["conv3.norm.running_var"] == (8,)
    assert model.stem.conv1.stride == (2, 2) and model.stem.conv2.stride == model.stem.conv3.stride == (1, 1)
    assert model(torch.randn(1, 3, 64, 64))["res2"].shape == (1, 16, 16, 16)
    with pytest.raises(ConfigError, match="MODEL.RESNETS.STEM_TYPE"):
        build_backbone(tiny_backbone_cfg(["MODEL.RESNETS.STEM_TYPE", "'deep'"]))


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_freeze_at_freezes_stem_and_stages(freeze_at: int) -> None:
    model = build_backbone(
        tiny_backbone_cfg(["MODEL.BACKBONE.FREEZE_AT", str(freeze_at), "MODEL.RESNETS.NORM", "'BN'"])
    )
    parts = ("stem", *STAGES)
    for index, part in enumerate(parts, start=1):
        module = getattr(model, part)
        frozen = freeze_at >= index
        assert all(p.requires_grad != frozen for p in module.parameters()), part
        norms = [m for n, m in module.named_modules() if n.endswith("norm")]
        assert all(isinstance(m, FrozenBatchNorm2d if frozen else nn.BatchNorm2d) for m in norms), part
    if freeze_at == 5:
        assert not any(p.requires_grad for p in model.parameters())
        return
    model.train()
    model(torch.randn(2, 3, 64, 64))["res5"].sum().backward()
    for index, part in enumerate(parts, start=1):
        grads = [p.grad for p in getattr(model, part).parameters()]
        if freeze_at >= index:
            assert all(g is None for g in grads)
        else:
            assert grads and all(g is not None for g in grads)
    with pytest.raises(ConfigError, match="MODEL.BACKBONE.FREEZE_AT"):
        build_backbone(tiny_backbone_cfg(["MODEL.BACKBONE.FREEZE_AT", "6"]))


@pytest.mark.parametrize(("norm", "kind"), [("BN", nn.BatchNorm2d), ("SyncBN", nn.SyncBatchNorm), ("GN", nn.GroupNorm)])
def test_norms_build_and_train(norm: str, kind: type) -> None:
    widths = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
    model = build_backbone(
        tiny_backbone_cfg(["MODEL.RESNETS.NORM", repr(norm), *widths, "MODEL.RESNETS.WIDTH_PER_GROUP", "32"])
    )
    norms = [m for n, m in model.named_modules() if n.endswith(".norm")]
    assert len(norms) == 53 and all(type(m) is kind for m in norms)
    if norm == "GN":
        assert model.res3[0].conv1.norm.num_groups == 32
    model.train()
    model(torch.randn(2, 3, 32, 32))["res5"].mean().backward()
    assert model.stem.conv1.norm.weight.grad is not None
    with pytest.raises(ConfigError, match=r"MODEL.RESNETS.NORM.*32 groups: 8 channels"):
        build_backbone(tiny_backbone_cfg(["MODEL.RESNETS.NORM", "'GN'"]))
    with pytest.raises(ConfigError, match=r"MODEL.RESNETS.NORM.*'FrozenBN'"):
        build_backbone(tiny_backbone_cfg(["MODEL.RESNETS.NORM", "'LN'"]))


def test_refusals_name_the_key() -> None:
    with pytest.raises(ConfigError, match="deformable convolutions are not supported"):
        build_backbone(tiny_backbone_cfg(["MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, True, True, True]"]))
    with pytest.raises(ConfigError, match="deformable convolutions are not supported"):
        build_backbone(tiny_backbone_cfg(["MODEL.RESNETS.DEFORM_MODULATED", "True"]))
    with pytest.raises(ConfigError, match="deformable convolutions are not supported"):
        build_backbone(tiny_backbone_cfg(["MODEL.RESNETS.DEFORM_NUM_GROUPS", "2"]))
    with pytest.raises(ConfigError, match=r"MODEL.RESNETS.DEPTH.*18, 34, 50, 101, 152"):
        build_backbone(tiny_backbone_cfg(["MODEL.RESNETS.DEPTH", "42"]))
    with pytest.raises(ConfigError, match="RES2_OUT_CHANNELS 64"):
        build_backbone(tiny_backbone_cfg(["MODEL.RESNETS.DEPTH", "18"]))
    with pytest.raises(ConfigError, match="MODEL.RESNETS.OUT_FEATURES"):
        build_backbone(tiny_backbone_cfg(["MODEL.RESNETS.OUT_FEATURES", "['res6']"]))


def test_depths_and_out_features() -> None:
    r34 = build_backbone(
        tiny_backbone_cfg(
            [
                "MODEL.RESNETS.DEPTH",
                "34",
                "MODEL.RESNETS.RES2_OUT_CHANNELS",
                "64",
                "MODEL.RESNETS.STEM_OUT_CHANNELS",
                "64",
            ]
        )
    )
    assert [len(getattr(r34, s)) for s in STAGES] == [3, 4, 6, 3] and r34.res2[0].shortcut is None
    assert r34(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 512, 2, 2)
    r101 = build_backbone(tiny_backbone_cfg(["MODEL.RESNETS.DEPTH", "101"]))
    assert [len(getattr(r101, s)) for s in STAGES] == [3, 4, 23, 3]
    assert isinstance(r101.res4[22], BottleneckBlock)
    # ResNeXt: groups in the 3x3 convs, width = groups x width per group
    x = build_backbone(tiny_backbone_cfg(["MODEL.RESNETS.NUM_GROUPS", "2"]))
    assert x.res2[0].conv2.groups == 2 and x.res2[0].conv2.out_channels == 8
    # stages past the deepest output are not built (as detectron2: no parameters without gradients)
    short = build_backbone(tiny_backbone_cfg(["MODEL.RESNETS.OUT_FEATURES", "['res3']"]))
    assert not hasattr(short, "res4") and list(short(torch.randn(1, 3, 64, 64))) == ["res3"]


def test_tiny_r50_mask2former_trains_a_step() -> None:
    """quickstart_r50.yaml at test widths, with the stem and res2 frozen: the loss reaches res3 and the head only."""
    cfg = load_config(str(REPO / "configs" / "quickstart_r50.yaml"), TINY_MODEL + ["MODEL.BACKBONE.FREEZE_AT", "2"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = []
    for seed in range(2):
        label = torch.zeros(64, 64, dtype=torch.long)
        label[:32, :20], label[40:, 40:] = 2, 5
        image = torch.randint(0, 255, (3, 64, 64), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
        batch.append({"image": image, "sem_seg": label, "height": 64, "width": 64})
    total = model.criterion.weighted_total(model(batch))
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.stem.conv1.weight.grad is None and model.backbone.res2[0].conv1.weight.grad is None
    assert isinstance(model.backbone.res2[0].conv1.norm, FrozenBatchNorm2d)
    assert isinstance(model.backbone.res3[0].conv1.norm, nn.BatchNorm2d)  # NORM "BN" in quickstart_r50.yaml
    assert model.backbone.res3[0].conv1.weight.grad.abs().sum() > 0
    assert model.sem_seg_head.predictor.class_embed.weight.grad.abs().sum() > 0


def tiny_backbone_cfg(opts: list[str]):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.merge_from_list(
        ["MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16"]
        + ["MODEL.RESNETS.WIDTH_PER_GROUP", "4", *opts]
    )
    return cfg


def test_train_net_takes_a_backbone_pkl_in_model_weights_as_the_official_configs_do(
    sample_root, tmp_path, capsys
) -> None:
    """MODEL.WEIGHTS <a detectron2 backbone .pkl>: training starts from it (backbone matched by suffix, head fresh);
    --eval-only refuses it, since it holds no trained head."""
    from conftest import tiny_run_argv

    from mask2former.engine.launch import main

    opts = ["MODEL.BACKBONE.FREEZE_AT", "5"]  # everything frozen: the trained backbone must equal the file's
    cfg = load_config(str(REPO / "configs" / "quickstart_r50.yaml"), TINY_MODEL + opts)
    torch.manual_seed(1)
    backbone = build_model(cfg).backbone.state_dict()
    arrays = {name: value.numpy() for name, value in backbone.items()}
    path = tmp_path / "R-50-tiny.pkl"
    with path.open("wb") as handle:
        pickle.dump({"model": arrays, "__author__": "test", "matching_heuristics": True}, handle)

    output = tmp_path / "run"
    config = "quickstart_r50.yaml"
    argv = tiny_run_argv(sample_root, output, *opts, "MODEL.WEIGHTS", str(path), max_iter=2, config=config)
    main(argv)
    final = torch.load(output / "model_final.pth", weights_only=True)["model"]
    for name, value in backbone.items():
        torch.testing.assert_close(final[f"backbone.{name}"], value, rtol=0, atol=0)

    evaluation = tiny_run_argv(sample_root, tmp_path / "eval", *opts, "MODEL.WEIGHTS", str(path), config=config)
    with pytest.raises(SystemExit) as exit_info:
        main(["--eval-only", *evaluation])
    assert exit_info.value.code == 2
    assert "backbone weights only" in capsys.readouterr().err


# ---- what each of the family's config keys does (tests/test_config_keys.py collects and runs these) -----------------

_KEYS_RESNET = ("MODEL.BACKBONE.NAME", "build_resnet_backbone")

CONFIG_KEY_CHECKS: dict[str, ConfigKeyCheck] = {
    "MODEL.RESNETS.DEPTH": Changes("18", "backbone", (*_KEYS_RESNET, "MODEL.RESNETS.RES2_OUT_CHANNELS", "64")),
    "MODEL.RESNETS.OUT_FEATURES": Changes("['res4', 'res5']", "backbone", _KEYS_RESNET),
    "MODEL.RESNETS.NUM_GROUPS": Changes("2", "backbone", _KEYS_RESNET),
    "MODEL.RESNETS.NORM": Changes("'BN'", "backbone", _KEYS_RESNET),
    "MODEL.RESNETS.WIDTH_PER_GROUP": Changes("32", "backbone", _KEYS_RESNET),
    "MODEL.RESNETS.STRIDE_IN_1X1": Changes("False", "backbone_forward", _KEYS_RESNET),
    "MODEL.RESNETS.RES5_DILATION": Changes("2", "backbone", _KEYS_RESNET),
    "MODEL.RESNETS.RES2_OUT_CHANNELS": Changes("128", "backbone", _KEYS_RESNET),
    "MODEL.RESNETS.STEM_OUT_CHANNELS": Changes("32", "backbone", _KEYS_RESNET),
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": Refused("[False, False, False, True]", "backbone", _KEYS_RESNET),
    "MODEL.RESNETS.DEFORM_MODULATED": Refused("True", "backbone", _KEYS_RESNET),
    "MODEL.RESNETS.DEFORM_NUM_GROUPS": Refused("2", "backbone", _KEYS_RESNET),
    "MODEL.RESNETS.STEM_TYPE": Changes("'deeplab'", "backbone", _KEYS_RESNET),
    "MODEL.RESNETS.RES5_MULTI_GRID": Changes(
        "[1, 2, 4]", "backbone_forward", (*_KEYS_RESNET, "MODEL.RESNETS.RES5_DILATION", "2")
    ),
}
