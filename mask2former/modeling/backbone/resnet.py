"""ResNet (He et al., 2016) as detectron2 builds it, for the official Mask2Former R50/R101 configs.

Registered as `build_resnet_backbone`, the name official configs give in MODEL.BACKBONE.NAME. Module names are
detectron2's, so detectron2 and Mask2Former checkpoints load unchanged: `stem.conv1` (+ `stem.conv1.norm`),
`res{2..5}.{block}.conv{1,2,3}` and `.shortcut`, each conv carrying its norm as `.norm`. Bottleneck blocks for
depths 50/101/152, basic blocks (two 3x3 convs) for 18/34. Only the stages up to the deepest requested output
are built, as in detectron2.

Two keys plain detectron2 leaves to its DeepLab project are read here, as `build_resnet_deeplab_backbone`
reads them: MODEL.RESNETS.STEM_TYPE ("deeplab": three 3x3 convs `stem.conv1..3` instead of one 7x7) and
MODEL.RESNETS.RES5_MULTI_GRID (res5 block i dilates by RES5_DILATION x MULTI_GRID[i]). Their defaults here
("basic", [1, 1, 1]) build exactly detectron2's `build_resnet_backbone`, the values the official Mask2Former
configs set (their "# not used" comments); DeepLab's own defaults ("deeplab", [1, 2, 4]) would change every
config that leaves the keys out.

`convert_pretrained` maps detectron2 (`R-50.pkl`), torchvision / timm (`conv1`, `bn1`, `layer1.0.downsample.0`)
and MSRA/Caffe2 (`res2_0_branch2a_w`) weights to these names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import nn

from ...config import CONFIG_ADDERS, ConfigError
from ...config import CfgNode as ConfigNode
from ...io.checkpoints import CheckpointMismatchError, read_checkpoint
from ..tiny import register_tiny_sizes
from ..weights import load_model_weights
from .base import BACKBONE_REGISTRY, Backbone

logger = logging.getLogger(__name__)

_STAGE_NAMES = ("res2", "res3", "res4", "res5")
BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
NORMS = ("FrozenBN", "BN", "SyncBN", "GN", "")
STEM_TYPES = ("basic", "deeplab")
GN_GROUPS = 32


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine: `weight`, `bias`, `running_mean`, `running_var` are buffers.

    Starts as the identity (running_var = 1 - eps, so that var + eps = 1)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Every BatchNorm2d / SyncBatchNorm in `module` replaced by a FrozenBatchNorm2d holding its values (in
        place for children; a BN `module` itself is returned as a new module)."""
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            stats = module.running_mean if module.running_mean is not None else module.weight
            frozen = cls(module.num_features, eps=module.eps).to(stats.device)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.running_mean is not None:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            converted = cls.convert_frozen_batchnorm(child)
            if converted is not child:
                module.add_module(name, converted)
        return module


def get_norm(
    norm: str, channels: int, key: str = "MODEL.RESNETS.NORM", allowed: tuple[str, ...] = NORMS
) -> nn.Module | None:
    """The norm layer `norm` (one of `allowed`, the value of config key `key`) for `channels` channels; None for ""
    (no norm). A bad value raises ValueError naming the key."""
    if norm not in allowed:
        raise ValueError(f"norm {norm!r} ({key}): choose one of {', '.join(repr(n) for n in allowed)}")
    if norm == "":
        return None
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm == "GN":
        if channels % GN_GROUPS:
            raise ValueError(
                f"norm 'GN' ({key}) has {GN_GROUPS} groups: {channels} channels do not split into them;"
                " use widths that are multiples of 32 or another norm"
            )
        return nn.GroupNorm(GN_GROUPS, channels)
    raise AssertionError(norm)


class Conv2d(nn.Conv2d):
    """A bias-free convolution followed by its norm (`.norm`, detectron2's key layout)."""

    def __init__(self, *args: Any, norm: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(*args, bias=False, **kwargs)
        self.norm = norm
        c2_msra_fill(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return x if self.norm is None else self.norm(x)


def c2_msra_fill(module: nn.Conv2d) -> None:
    """Caffe2's MSRAFill: He normal with fan-out for ReLU, zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class _Freezable(nn.Module):
    """A stem or block: `freeze()` stops its gradients and turns its BatchNorms into FrozenBatchNorm2d."""

    in_channels: int
    out_channels: int
    stride: int

    def freeze(self) -> _Freezable:
        for param in self.parameters():
            param.requires_grad_(False)
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        return self


class BasicStem(_Freezable):
    """7x7 stride-2 conv + norm + ReLU, 3x3 stride-2 max pool: stride 4."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "BN") -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, 4
        self.conv1 = Conv2d(
            in_channels, out_channels, kernel_size=7, stride=2, padding=3, norm=get_norm(norm, out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class DeepLabStem(_Freezable):
    """Three 3x3 convs (stride 2, 1, 1; widths C/2, C/2, C), each + norm + ReLU, then the 3x3 stride-2 max pool."""

    def __init__(self, in_channels: int = 3, out_channels: int = 128, norm: str = "BN") -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, 4
        half = out_channels // 2
        self.conv1 = Conv2d(in_channels, half, kernel_size=3, stride=2, padding=1, norm=get_norm(norm, half))
        self.conv2 = Conv2d(half, half, kernel_size=3, padding=1, norm=get_norm(norm, half))
        self.conv3 = Conv2d(half, out_channels, kernel_size=3, padding=1, norm=get_norm(norm, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv3(F.relu_(self.conv2(F.relu_(self.conv1(x))))))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def projection_shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> Conv2d | None:
    """The 1x1 (strided) conv + norm a block adds to its input when the width changes; None when it does not."""
    if in_channels == out_channels:
        return None
    return Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, norm=get_norm(norm, out_channels))


class BasicBlock(_Freezable):
    """ResNet-18/34 block: 3x3 (stride) -> 3x3, plus a 1x1 projection shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm: str = "BN") -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.shortcut = projection_shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = Conv2d(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, norm=get_norm(norm, out_channels)
        )
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size=3, padding=1, norm=get_norm(norm, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu_(self.conv1(x)))
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class BottleneckBlock(_Freezable):
    """1x1 -> 3x3 (groups, dilation) -> 1x1, plus a 1x1 projection shortcut when the width changes.

    The stride sits in the first 1x1 conv with `stride_in_1x1` (original MSRA models), else in the 3x3 conv
    (torchvision, Caffe2 ResNeXt)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.shortcut = projection_shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, norm=get_norm(norm, out_channels))
        # detectron2 leaves the last norm's gamma at 1 (zero-init hurt GN models trained from scratch).

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(F.relu_(self.conv2(F.relu_(self.conv1(x)))))
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class ResNet(Backbone):
    """ResNet / ResNeXt with detectron2's module names; returns the requested maps of res2..res5.

    Strides 4, 8, 16, 32 (res5 stays at 16 with `res5_dilation` 2); channels `res2_out_channels` doubling per
    stage (64 for depth 18/34); the stem has `stem_out_channels`."""

    def __init__(
        self,
        *,
        depth: int = 50,
        out_features: Sequence[str] = _STAGE_NAMES,
        num_groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = True,
        res5_dilation: int = 1,
        res5_multi_grid: Sequence[int] = (1, 1, 1),
        res2_out_channels: int = 256,
        stem_out_channels: int = 64,
        stem_type: str = "basic",
        norm: str = "FrozenBN",
        freeze_at: int = 0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(
                f"depth {depth} (MODEL.RESNETS.DEPTH): choose one of {', '.join(map(str, BLOCKS_PER_STAGE))}"
            )
        if not out_features or any(name not in _STAGE_NAMES for name in out_features):
            raise ValueError(
                f"out_features {list(out_features)} (MODEL.RESNETS.OUT_FEATURES): pick a non-empty subset of "
                f"{', '.join(_STAGE_NAMES)}"
            )
        if res5_dilation not in (1, 2):
            raise ValueError(f"res5_dilation {res5_dilation} (MODEL.RESNETS.RES5_DILATION): use 1 or 2")
        if stem_type not in STEM_TYPES:
            raise ValueError(f"stem type {stem_type!r} (MODEL.RESNETS.STEM_TYPE): use 'basic' or 'deeplab'")
        if not 0 <= freeze_at <= 5:
            raise ValueError(
                f"freeze_at {freeze_at} (MODEL.BACKBONE.FREEZE_AT): 0 (nothing frozen) .. 5 (stem and res2..res5)"
            )
        blocks_per_stage = BLOCKS_PER_STAGE[depth]
        basic = depth in (18, 34)
        multi_grid = tuple(int(m) for m in res5_multi_grid)
        if basic:
            if res2_out_channels != 64:
                raise ValueError("ResNet-18/34 need res2_out_channels 64 (MODEL.RESNETS.RES2_OUT_CHANNELS 64)")
            if res5_dilation != 1 or num_groups != 1 or any(m != 1 for m in multi_grid):
                raise ValueError(
                    "ResNet-18/34 (basic blocks) have no dilation or groups: MODEL.RESNETS.RES5_DILATION 1, "
                    "NUM_GROUPS 1 and RES5_MULTI_GRID of ones"
                )
        elif len(multi_grid) != blocks_per_stage[3] or min(multi_grid) < 1:
            raise ValueError(
                f"res5_multi_grid {list(multi_grid)} (MODEL.RESNETS.RES5_MULTI_GRID): one positive factor per res5 "
                f"block ({blocks_per_stage[3]} for depth {depth})"
            )
        self.depth = depth
        stem_class = BasicStem if stem_type == "basic" else DeepLabStem
        self.stem = stem_class(in_channels, stem_out_channels, norm=norm)
        self._out_feature_channels: dict[str, int] = {}
        self._out_feature_strides: dict[str, int] = {}
        self.stage_names: list[str] = []

        last = max(_STAGE_NAMES.index(name) for name in out_features)
        channels_in, channels_out = stem_out_channels, res2_out_channels
        bottleneck = num_groups * width_per_group
        stride = 4
        for index, name in enumerate(_STAGE_NAMES[: last + 1]):
            dilation = res5_dilation if name == "res5" else 1
            first_stride = 1 if index == 0 or dilation > 1 else 2
            dilations = [dilation * m for m in multi_grid] if name == "res5" else [dilation] * blocks_per_stage[index]
            blocks = []
            for block_index in range(blocks_per_stage[index]):
                block_stride = first_stride if block_index == 0 else 1
                if basic:
                    block = BasicBlock(channels_in, channels_out, stride=block_stride, norm=norm)
                else:
                    block = BottleneckBlock(
                        channels_in,
                        channels_out,
                        bottleneck_channels=bottleneck,
                        stride=block_stride,
                        num_groups=num_groups,
                        norm=norm,
                        stride_in_1x1=stride_in_1x1,
                        dilation=dilations[block_index],
                    )
                blocks.append(block)
                channels_in = channels_out
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            stride *= first_stride
            self._out_feature_channels[name] = channels_out
            self._out_feature_strides[name] = stride
            channels_out *= 2
            bottleneck *= 2
        self._out_features = [name for name in _STAGE_NAMES if name in out_features]
        self.freeze(freeze_at)

    @property
    def size_divisibility(self) -> int:
        return 0  # any size works (detectron2's ResNet); MODEL.MASK_FORMER.SIZE_DIVISIBILITY pads the batch

    def freeze(self, freeze_at: int = 0) -> ResNet:
        """Freeze the stem (`freeze_at` >= 1) and res2 .. res{freeze_at} (>= 2): no gradients, FrozenBN norms."""
        if freeze_at >= 1:
            self.stem.freeze()
        for index, name in enumerate(self.stage_names, start=2):
            if freeze_at >= index:
                for block in getattr(self, name):
                    block.freeze()
        return self

    @classmethod
    def from_config(cls, cfg: CfgNode) -> ResNet:
        """Build from MODEL.RESNETS.* and MODEL.BACKBONE.FREEZE_AT."""
        try:
            return cls(**resnet_options(cfg))
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """N x C x H x W -> {name: N x C_name x ceil(H/stride) x ceil(W/stride)} for the names in `out_features`."""
        if images.dim() != 4:
            raise ValueError(f"ResNet takes N x C x H x W images, got shape {tuple(images.shape)}")
        outputs = {}
        x = self.stem(images)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    @staticmethod
    def convert_pretrained(state_dict: dict, model: ResNet) -> dict[str, torch.Tensor]:
        """`checkpoint_filter_fn`: a ResNet checkpoint's tensors in this backbone's key layout."""
        return checkpoint_filter_fn(state_dict, model)

    @staticmethod
    def load_pretrained(model: ResNet, path: str | Path) -> dict[str, Any]:
        """`load_resnet_pretrained` (the hook `MODEL.BACKBONE.WEIGHTS` uses)."""
        return load_resnet_pretrained(model, path)


# The official configs name the builder, not a class: the class keeps its own name.
BACKBONE_REGISTRY._do_register("build_resnet_backbone", ResNet)


@CONFIG_ADDERS.register()
def add_resnet_config(cfg: CfgNode) -> None:
    """MODEL.RESNETS.*: detectron2's keys and defaults (plus STEM_TYPE / RES5_MULTI_GRID from its DeepLab project,
    with the defaults that build plain detectron2's ResNet)."""
    cfg.MODEL.RESNETS = ConfigNode()
    cfg.MODEL.RESNETS.DEPTH = 50  # 18, 34 (basic blocks), 50, 101, 152 (bottleneck blocks)
    # Returned maps (res2..res5); stages past the deepest one are not built. detectron2's default is
    # ["res4"] (its C4 detectors); every Mask2Former head reads res2..res5.
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.NUM_GROUPS = 1  # groups of the 3x3 convs: 1 = ResNet, > 1 = ResNeXt
    cfg.MODEL.RESNETS.NORM = "FrozenBN"  # norm after every conv: FrozenBN, BN, SyncBN, GN (32 groups), "" (none)
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 64  # res2 bottleneck channels per group (doubles per stage)
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = True  # stride in the first 1x1 conv (MSRA models); False: in the 3x3 conv
    cfg.MODEL.RESNETS.RES5_DILATION = 1  # 2: res5 dilated instead of strided (stride 16)
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 256  # res2 output channels (doubles per stage); 64 for R18/R34
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 64  # stem output channels
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]  # deformable 3x3 convs: not supported
    cfg.MODEL.RESNETS.DEFORM_MODULATED = False  # modulated deformable convs (DCNv2): not supported
    cfg.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1  # deformable conv groups: not supported (only 1)
    cfg.MODEL.RESNETS.STEM_TYPE = "basic"  # "basic" (one 7x7 conv) or "deeplab" (three 3x3 convs)
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 1, 1]  # res5 block i dilation = RES5_DILATION x this[i] (DeepLab)


register_tiny_sizes(
    "resnet",
    ["MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
     "MODEL.RESNETS.WIDTH_PER_GROUP", "4"],
    [(BACKBONE_REGISTRY, "build_resnet_backbone")],
)  # fmt: skip


def resnet_options(cfg: CfgNode) -> dict[str, Any]:
    """ResNet's keyword arguments from MODEL.RESNETS.* and MODEL.BACKBONE.FREEZE_AT; deformable convolutions
    (DEFORM_*) other than the defaults are refused."""
    r = cfg.MODEL.RESNETS
    if any(r.DEFORM_ON_PER_STAGE) or r.DEFORM_MODULATED or r.DEFORM_NUM_GROUPS != 1:
        raise ConfigError(
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE / DEFORM_MODULATED / DEFORM_NUM_GROUPS: deformable convolutions are "
            "not supported; keep [False, False, False, False] / False / 1"
        )
    if len(r.DEFORM_ON_PER_STAGE) != 4:
        raise ConfigError("MODEL.RESNETS.DEFORM_ON_PER_STAGE needs one entry per stage (res2..res5)")
    return {
        "depth": r.DEPTH,
        "out_features": tuple(r.OUT_FEATURES),
        "num_groups": r.NUM_GROUPS,
        "width_per_group": r.WIDTH_PER_GROUP,
        "stride_in_1x1": r.STRIDE_IN_1X1,
        "res5_dilation": r.RES5_DILATION,
        "res5_multi_grid": tuple(r.RES5_MULTI_GRID),
        "res2_out_channels": r.RES2_OUT_CHANNELS,
        "stem_out_channels": r.STEM_OUT_CHANNELS,
        "stem_type": r.STEM_TYPE,
        "norm": r.NORM,
        "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
    }


# --- checkpoint conversion -------------------------------------------------------------------------------------

_TORCHVISION = re.compile(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(.+)")
_MSRA_BLOCK = re.compile(r"res(\d)_(\d+)_branch(1|2a|2b|2c)_(w|b|bn_s|bn_b)")
_MSRA_CONV = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}
_MSRA_PARAM = {"w": "weight", "b": "bias", "bn_s": "norm.weight", "bn_b": "norm.bias"}
_MSRA_STEM = {
    "conv1_w": "stem.conv1.weight",
    "res_conv1_bn_s": "stem.conv1.norm.weight",
    "res_conv1_bn_b": "stem.conv1.norm.bias",
}


def unwrap_resnet_state_dict(state_dict: dict) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint (numpy arrays included), unwrapped from "model" / "state_dict" / "blobs" and a
    "module." prefix; a whole segmentation model (`backbone.*` keys) gives its backbone."""
    for wrapper in ("model", "state_dict", "blobs"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    tensors = {}
    for key, value in state_dict.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, torch.Tensor):
            tensors[key.removeprefix("module.")] = value
    if any(k.startswith("backbone.") for k in tensors):
        tensors = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
    return tensors


def checkpoint_layout(state_dict: dict[str, torch.Tensor]) -> str:
    """The file's naming: "torchvision" (also timm's ResNets), "msra" (Caffe2 names) or "detectron2"."""
    if "conv1.weight" in state_dict or any(k.startswith("layer1.") for k in state_dict):
        return "torchvision"
    if "conv1_w" in state_dict or any(_MSRA_BLOCK.fullmatch(k) for k in state_dict):
        return "msra"
    return "detectron2"


def _torchvision_name(key: str) -> str | None:
    if key.startswith("fc."):
        return None
    if key.startswith("conv1."):
        return "stem." + key
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1.") :]
    match = _TORCHVISION.fullmatch(key)
    if match is None:
        return key
    stage, block, layer, param = match.groups()
    if layer.startswith("bn"):
        layer = f"conv{layer[2:]}.norm"
    else:
        layer = {"downsample.0": "shortcut", "downsample.1": "shortcut.norm"}.get(layer, layer)
    return f"res{int(stage) + 1}.{block}.{layer}.{param}"


def _msra_name(key: str) -> str | None:
    if key.startswith("fc1000") or key.endswith("_momentum"):
        return None
    if key in _MSRA_STEM:
        return _MSRA_STEM[key]
    match = _MSRA_BLOCK.fullmatch(key)
    if match is None:
        return key
    stage, block, branch, param = match.groups()
    return f"res{stage}.{block}.{_MSRA_CONV[branch]}.{_MSRA_PARAM[param]}"


def checkpoint_filter_fn(state_dict: dict, model: ResNet) -> dict[str, torch.Tensor]:
    """detectron2 (`R-50.pkl`, Mask2Former `backbone.*`), torchvision / timm or MSRA ResNet weights -> this
    backbone's keys.

    Drops classifiers (`fc.*`, detectron2's converted `stem.fc.*`, `fc1000_*`) and `num_batches_tracked`; a BN
    model gets its own counters instead. MSRA files fold the statistics into the affine (`_bn_s`, `_bn_b`): their
    norms get mean 0 and variance 1, as detectron2 gives them."""
    tensors = unwrap_resnet_state_dict(state_dict)
    layout = checkpoint_layout(tensors)
    rename = {"torchvision": _torchvision_name, "msra": _msra_name}.get(layout, lambda key: key)
    out = {}
    for key, value in tensors.items():
        name = rename(key)
        if name is None or name.startswith(("stem.fc.", "fc1000.")) or name.endswith("num_batches_tracked"):
            continue
        out[name] = value
    own = model.state_dict()
    for key, value in own.items():
        if key in out:
            continue
        if key.endswith("num_batches_tracked"):
            out[key] = value.clone()
        elif layout == "msra" and key.endswith(("running_mean", "running_var")):
            weight = out.get(key.rsplit(".", 1)[0] + ".weight")
            if weight is not None:
                fill = torch.zeros_like if key.endswith("running_mean") else torch.ones_like
                out[key] = fill(weight)
    return out


def load_resnet_pretrained(model: ResNet, path: str | Path) -> dict[str, Any]:
    """Load ImageNet ResNet weights (detectron2 .pkl, torchvision / timm .pth or .safetensors, MSRA .pkl).

    Every key of the backbone must come from the file with its shape (CheckpointMismatchError otherwise: a file of
    another depth or width); keys of stages this backbone does not build are skipped. Returns {"missing": [],
    "unexpected": [...], "loaded": n, "layout": ...}."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ResNet weights not found: {path}")
    raw = read_checkpoint(path)
    converted = checkpoint_filter_fn(raw, model)
    report = load_model_weights(model, converted, strict=False, source=str(path))
    if report.missing or report.shape_mismatch:
        raise CheckpointMismatchError(
            f"{path} does not fit this ResNet (depth {model.depth}; another depth or width, or not a ResNet?): "
            f"{report.summary()}"
        )
    if report.unexpected:
        logger.info("ResNet weights %s: skipped %d keys this backbone does not build", path, len(report.unexpected))
    return {
        "missing": [],
        "unexpected": report.unexpected,
        "loaded": report.loaded,
        "layout": checkpoint_layout(unwrap_resnet_state_dict(raw)),
    }


def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 as in the official Mask2Former R50 config (torchvision weights: stride in the 3x3 conv)."""
    return ResNet(**{"depth": 50, "stride_in_1x1": False, **kwargs})


def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101 as in the official Mask2Former R101 config."""
    return ResNet(**{"depth": 101, "stride_in_1x1": False, **kwargs})
