"""DiNAT (Hassani & Shi, 2022: Dilated Neighborhood Attention Transformer) for dense prediction.

A hierarchical transformer in channels-last layout: an overlapping convolutional tokenizer (two 3x3
stride-2 convs, then LayerNorm) makes the stride-4 map; four levels of blocks follow, each block
LayerNorm -> neighborhood attention (with relative position bias) -> residual, LayerNorm -> MLP ->
residual (optionally scaled by learned per-channel gains, "layer scale"); a 3x3 stride-2 conv
(no bias) + LayerNorm halves the map and doubles the channels between levels. Blocks alternate local
(dilation 1) and dilated (sparse, global) attention, as each level's `dilations` list says. Every output
level has its own LayerNorm (`norm0`..`norm3`), as in the official segmentation backbone.

Module names follow the official NAT/DiNAT code (`patch_embed.proj.{0,1}`, `patch_embed.norm`,
`levels.{i}.blocks.{j}.{norm1, attn.{qkv, rpb, proj}, norm2, mlp.{fc1, fc2}}`,
`levels.{i}.downsample.{reduction, norm}`), so official ImageNet checkpoints load through
`checkpoint_filter_fn` (drops the classifier and the final norm, resizes `rpb` to the kernel).

Inputs of any size divisible by 32 work. Where a level's map is shorter than a block's kernel x dilation
(DiNAT-L: every input under 616 px, the 512 crops included), `small_map` (MODEL.DINAT.SMALL_MAP) decides:
"pad" (default) zero-pads the block's input to kernel x dilation before the qkv projection, attends with
the dilation unchanged and crops the output, as NATTEN 0.14's module did when the official checkpoints
were trained; "shrink_dilation" fits the dilation to the map instead (the rules in full:
`mask2former.modeling.ops.neighborhood_attention`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from fvcore.common.config import CfgNode
from torch import nn

from ...config import CONFIG_ADDERS
from ...config import CfgNode as ConfigNode
from ..ops.neighborhood_attention import IMPLEMENTATIONS, neighborhood_attention
from ..tiny import register_tiny_sizes
from .base import BACKBONE_REGISTRY, Backbone
from .swin import DropPath, Mlp, init_transformer_weights, read_weights, unwrap_state_dict

logger = logging.getLogger(__name__)

_STAGE_NAMES = ("res2", "res3", "res4", "res5")
SMALL_MAP_RULES = ("pad", "shrink_dilation")

# Official DiNAT-L in Mask2Former (SHI-Labs/Neighborhood-Attention-Transformer, mask2former/configs/
# ade20k/semantic-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_160k.yaml; MLP ratio 2.0 from
# add_dinat_config in its train_m2f.py): kernel 11, these dilations, drop path 0.3, AMP disabled, 640 crops.
DINAT_L_M2F_DILATIONS: tuple[tuple[int, ...], ...] = (
    (1, 14, 1),
    (1, 4, 1, 7),
    (1, 2, 1, 3, 1, 2, 1, 3, 1, 2, 1, 3, 1, 2, 1, 3, 1, 3),
    (1, 1, 1, 1, 1),
)
# ImageNet models (classification/dinat.py of the same repository), kernel 7 at 224 px.
_IMAGENET_DILATIONS: tuple[tuple[int, ...], ...] = ((1, 8, 1), (1, 4, 1, 4), (1, 2) * 9, (1, 1, 1, 1, 1))


@CONFIG_ADDERS.register()
def add_dinat_config(cfg: CfgNode) -> None:
    """MODEL.DINAT.*: D2DiNAT's keys, the official names; the defaults are DiNAT-L as in NAT's Mask2Former."""
    # DiNAT backbone (mask2former/modeling/backbone/dinat.py); defaults are DiNAT-L as in Mask2Former
    cfg.MODEL.DINAT = ConfigNode()
    cfg.MODEL.DINAT.EMBED_DIM = 192  # channels of level 1 (doubles per level)
    cfg.MODEL.DINAT.DEPTHS = [3, 4, 18, 5]  # blocks per level
    cfg.MODEL.DINAT.NUM_HEADS = [6, 12, 24, 48]  # attention heads per level
    cfg.MODEL.DINAT.KERNEL_SIZE = 11  # neighborhood size (odd)
    # per level, per block; maps shorter than kernel x dilation follow SMALL_MAP
    cfg.MODEL.DINAT.DILATIONS = [list(level) for level in DINAT_L_M2F_DILATIONS]
    cfg.MODEL.DINAT.MLP_RATIO = 2.0  # MLP hidden size / channels
    cfg.MODEL.DINAT.QKV_BIAS = True  # bias in the qkv projection
    cfg.MODEL.DINAT.QK_SCALE = None  # attention scale; None = head_dim ** -0.5
    cfg.MODEL.DINAT.DROP_RATE = 0.0  # dropout after projections
    cfg.MODEL.DINAT.ATTN_DROP_RATE = 0.0  # must stay 0 (not supported by the fused path)
    cfg.MODEL.DINAT.DROP_PATH_RATE = 0.3  # stochastic depth, linearly increasing to this rate
    cfg.MODEL.DINAT.LAYER_SCALE = None  # initial layer-scale gain; None = no layer scale (DiNAT-L has none)
    cfg.MODEL.DINAT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # returned levels
    cfg.MODEL.DINAT.USE_CHECKPOINT = False  # activation checkpointing per block (saves memory)
    cfg.MODEL.DINAT.ATTENTION_IMPL = "auto"  # "auto" (flex on CUDA, reference on CPU), "reference" or "flex"
    # maps shorter than kernel x dilation: "pad" (zero-pad the block input, as NATTEN 0.14, which trained the
    # official checkpoints) or "shrink_dilation" (fit the dilation to the map; no padded tokens)
    cfg.MODEL.DINAT.SMALL_MAP = "pad"


register_tiny_sizes(
    "dinat",
    ["MODEL.DINAT.EMBED_DIM", "16", "MODEL.DINAT.DEPTHS", "[1, 1, 2, 1]", "MODEL.DINAT.NUM_HEADS", "[1, 1, 2, 2]",
     "MODEL.DINAT.KERNEL_SIZE", "3", "MODEL.DINAT.DILATIONS", "[[2], [1], [1, 2], [1]]"],
    [(BACKBONE_REGISTRY, "D2DiNAT")],
)  # fmt: skip


class ConvTokenizer(nn.Module):
    """Two overlapping 3x3 stride-2 convs (3 -> C/2 -> C), then LayerNorm: B x 3 x H x W -> B x H/4 x W/4 x C."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """3x3 stride-2 conv without bias (C -> 2C), then LayerNorm, on channels-last maps."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class NeighborhoodAttention2D(nn.Module):
    """qkv projection -> neighborhood attention with relative position bias -> output projection.

    small_map "pad" (NATTEN 0.14's module): a B x H x W x C input with H or W below kernel x dilation is
    zero-padded at the bottom/right to max(H, kernel x dilation) x max(W, kernel x dilation) before the
    qkv projection (padded tokens: key and value = the qkv bias), attended with the dilation unchanged,
    cropped back to H x W and projected. "shrink_dilation": no padding; the operator fits the dilation.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int,
        dilation: int = 1,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        implementation: str = "auto",
        small_map: str = "pad",
    ) -> None:
        super().__init__()
        if small_map not in SMALL_MAP_RULES:
            raise ValueError(f"MODEL.DINAT.SMALL_MAP must be one of {SMALL_MAP_RULES}, got {small_map!r}")
        if dim % num_heads:
            raise ValueError(f"{dim} channels do not split into {num_heads} heads")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"neighborhood kernel must be odd, got {kernel_size}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        if attn_drop:
            raise ValueError("attention dropout is not supported by the fused path; DiNAT uses ATTN_DROP_RATE 0")
        self.num_heads, self.kernel_size, self.dilation = num_heads, kernel_size, dilation
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.implementation, self.small_map = implementation, small_map
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        nn.init.trunc_normal_(self.rpb, std=0.02)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x H x W x C -> B x H x W x C."""
        batch, height, width, channels = x.shape
        span = self.kernel_size * self.dilation
        if self.small_map == "pad" and (height < span or width < span):
            x = F.pad(x, (0, 0, 0, max(0, span - width), 0, max(0, span - height)))  # zeros, bottom and right
        padded_height, padded_width = x.shape[1:3]
        qkv = self.qkv(x).view(batch, padded_height, padded_width, 3, self.num_heads, channels // self.num_heads)
        query, key, value = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # each B x heads x H x W x d
        out = neighborhood_attention(
            query.contiguous(),
            key.contiguous(),
            value.contiguous(),
            self.kernel_size,
            self.dilation,
            self.rpb,
            self.scale,
            implementation=self.implementation,
        )
        out = out.permute(0, 2, 3, 1, 4).reshape(batch, padded_height, padded_width, channels)
        return self.proj_drop(self.proj(out[:, :height, :width]))

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, kernel={self.kernel_size}, dilation={self.dilation}, small_map={self.small_map}"
        )


class NATBlock(nn.Module):
    """Pre-norm transformer block with neighborhood attention; optional layer scale (gamma1, gamma2)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int,
        dilation: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: float,
        layer_scale: float | None,
        implementation: str,
        small_map: str,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention2D(
            dim, num_heads, kernel_size, dilation, qkv_bias, qk_scale, attn_drop, drop, implementation, small_map
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attended = self.attn(self.norm1(x))
        if self.layer_scale:
            x = x + self.drop_path(self.gamma1 * attended)
            return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))
        x = x + self.drop_path(attended)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class NATLevel(nn.Module):
    """`depth` blocks at one resolution, then (except for the last level) the downsampler."""

    def __init__(self, dim: int, dilations: Sequence[int], downsample: bool, use_checkpoint: bool, **block) -> None:
        super().__init__()
        drop_paths = block.pop("drop_paths")
        self.blocks = nn.ModuleList(
            NATBlock(dim, dilation=dilation, drop_path=rate, **block)
            for dilation, rate in zip(dilations, drop_paths, strict=True)
        )
        self.downsample = ConvDownsampler(dim) if downsample else None
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """B x H x W x C -> (this level's output, the next level's input or None)."""
        for block in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x, None if self.downsample is None else self.downsample(x)


@BACKBONE_REGISTRY.register()
class D2DiNAT(Backbone):
    """DiNAT as a backbone: res2..res5 (strides 4..32, channels C, 2C, 4C, 8C), each LayerNorm-ed."""

    def __init__(
        self,
        *,
        embed_dim: int = 64,
        depths: Sequence[int] = (3, 4, 18, 5),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        kernel_size: int = 7,
        dilations: Sequence[Sequence[int]] | None = None,
        mlp_ratio: float = 3.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        layer_scale: float | None = None,
        out_features: Sequence[str] = _STAGE_NAMES,
        use_checkpoint: bool = False,
        attention_implementation: str = "auto",
        small_map: str = "pad",
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"DiNAT has 4 levels: got depths {list(depths)} and heads {list(num_heads)}")
        dilations = [[1] * depth for depth in depths] if dilations is None else [list(d) for d in dilations]
        if [len(d) for d in dilations] != list(depths):
            raise ValueError(f"DILATIONS needs one list per level with one entry per block: {dilations} vs {depths}")
        unknown = [name for name in out_features if name not in _STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(f"DiNAT out_features {list(out_features)}: pick a non-empty subset of {_STAGE_NAMES}")
        self.kernel_size = kernel_size
        self.patch_embed = ConvTokenizer(in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        total = sum(depths)
        rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        self.levels = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.levels.append(
                NATLevel(
                    embed_dim * 2**i,
                    dilations[i],
                    downsample=i < 3,
                    use_checkpoint=use_checkpoint,
                    num_heads=num_heads[i],
                    kernel_size=kernel_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_paths=rates[start : start + depth],
                    layer_scale=layer_scale,
                    implementation=attention_implementation,
                    small_map=small_map,
                )
            )
        self._out_features = [name for name in _STAGE_NAMES if name in out_features]
        self._out_feature_channels = {name: embed_dim * 2**i for i, name in enumerate(_STAGE_NAMES)}
        self._out_feature_strides = {name: 4 * 2**i for i, name in enumerate(_STAGE_NAMES)}
        for i, name in enumerate(_STAGE_NAMES):
            if name in self._out_features:
                self.add_module(f"norm{i}", nn.LayerNorm(embed_dim * 2**i))
        self.apply(init_transformer_weights)  # linears and norms; rpb keeps its truncated-normal init

    @classmethod
    def from_config(cls, cfg: CfgNode) -> D2DiNAT:
        """Build from MODEL.DINAT.*."""
        dinat = cfg.MODEL.DINAT
        return cls(
            embed_dim=dinat.EMBED_DIM,
            depths=tuple(dinat.DEPTHS),
            num_heads=tuple(dinat.NUM_HEADS),
            kernel_size=dinat.KERNEL_SIZE,
            dilations=dinat.DILATIONS,
            mlp_ratio=dinat.MLP_RATIO,
            qkv_bias=dinat.QKV_BIAS,
            qk_scale=dinat.QK_SCALE,
            drop_rate=dinat.DROP_RATE,
            attn_drop_rate=dinat.ATTN_DROP_RATE,
            drop_path_rate=dinat.DROP_PATH_RATE,
            layer_scale=dinat.LAYER_SCALE,
            out_features=tuple(dinat.OUT_FEATURES),
            use_checkpoint=dinat.USE_CHECKPOINT,
            attention_implementation=dinat.ATTENTION_IMPL,
            small_map=dinat.SMALL_MAP,
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """N x C x H x W -> {name: N x C_name x H/stride x W/stride} for the names in `out_features`."""
        if images.dim() != 4:
            raise ValueError(f"DiNAT takes N x C x H x W images, got shape {tuple(images.shape)}")
        x = self.pos_drop(self.patch_embed(images))
        outputs = {}
        for i, level in enumerate(self.levels):
            level_out, x = level(x)
            name = _STAGE_NAMES[i]
            if name in self._out_features:
                outputs[name] = getattr(self, f"norm{i}")(level_out).permute(0, 3, 1, 2).contiguous()
            if x is None or len(outputs) == len(self._out_features):
                break
        return outputs

    @staticmethod
    def convert_pretrained(state_dict: dict, model: D2DiNAT) -> dict[str, torch.Tensor]:
        """`checkpoint_filter_fn`: a backbone checkpoint's tensors in this backbone's key layout."""
        return checkpoint_filter_fn(state_dict, model)

    @staticmethod
    def load_pretrained(model: D2DiNAT, path: str | Path) -> dict[str, list[str]]:
        """`load_dinat_pretrained` (the hook `MODEL.BACKBONE.WEIGHTS` uses)."""
        return load_dinat_pretrained(model, path)


def resize_rpb(rpb: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """heads x (2k'-1) x (2k'-1) position bias -> heads x (2k-1) x (2k-1), bicubic per head.

    The same resizing the DiNAT authors used to make their 11x11 ImageNet-22K checkpoint from the 7x7 one.
    """
    size = 2 * kernel_size - 1
    if rpb.shape[-1] == size and rpb.shape[-2] == size:
        return rpb
    resized = F.interpolate(rpb.float()[None], size=(size, size), mode="bicubic", align_corners=False)[0]
    return resized.to(rpb.dtype).contiguous()


def checkpoint_filter_fn(state_dict: dict, model: D2DiNAT) -> dict[str, torch.Tensor]:
    """Official NAT/DiNAT weights (ImageNet classification or a segmentation model's backbone) -> these keys.

    Drops the classifier (`head.*`) and the classification model's final norm (`norm.*`); resizes every
    `rpb` to the model's kernel size.
    """
    state_dict = unwrap_state_dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        if key.startswith(("head.", "norm.")):
            continue
        if key.endswith(".rpb"):
            value = resize_rpb(value, model.kernel_size)
        out[key] = value
    return out


def load_dinat_pretrained(model: D2DiNAT, path: str | Path) -> dict[str, list[str]]:
    """Load ImageNet DiNAT weights (.pth / .safetensors) with `strict=False`.

    Returns {"missing": [...], "unexpected": [...], "new_output_norms": [...]}, as `load_swin_pretrained`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"DiNAT weights not found: {path}")
    result = model.load_state_dict(checkpoint_filter_fn(read_weights(path), model), strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    new_norms = [k for k in missing if k.split(".")[0] in {f"norm{i}" for i in range(4)}]
    surprising = [k for k in missing if k not in new_norms]
    if surprising or unexpected:
        logger.warning("DiNAT weights %s: missing %s, unexpected %s", path, surprising, unexpected)
    logger.info("DiNAT weights %s: output norms %s start fresh", path, sorted({k.split(".")[0] for k in new_norms}))
    return {"missing": missing, "unexpected": unexpected, "new_output_norms": new_norms}


def _variant(defaults: dict[str, Any], kwargs: dict[str, Any]) -> D2DiNAT:
    return D2DiNAT(**{"kernel_size": 7, "dilations": _IMAGENET_DILATIONS, **defaults, **kwargs})


def dinat_tiny(**kwargs: Any) -> D2DiNAT:
    """DiNAT-T: C 64, depths 3-4-18-5, heads 2-4-8-16, MLP ratio 3 (ImageNet kernel 7 and dilations)."""
    return _variant({"embed_dim": 64, "num_heads": (2, 4, 8, 16), "mlp_ratio": 3.0, "drop_path_rate": 0.2}, kwargs)


def dinat_small(**kwargs: Any) -> D2DiNAT:
    """DiNAT-S: C 96, depths 3-4-18-5, heads 3-6-12-24, MLP ratio 2."""
    return _variant({"embed_dim": 96, "num_heads": (3, 6, 12, 24), "mlp_ratio": 2.0, "drop_path_rate": 0.3}, kwargs)


def dinat_base(**kwargs: Any) -> D2DiNAT:
    """DiNAT-B: C 128, depths 3-4-18-5, heads 4-8-16-32, MLP ratio 2."""
    return _variant({"embed_dim": 128, "num_heads": (4, 8, 16, 32), "mlp_ratio": 2.0, "drop_path_rate": 0.5}, kwargs)


def dinat_large(**kwargs: Any) -> D2DiNAT:
    """DiNAT-L as in Mask2Former: C 192, depths 3-4-18-5, heads 6-12-24-48, MLP ratio 2, kernel 11."""
    defaults = {
        "embed_dim": 192,
        "num_heads": (6, 12, 24, 48),
        "mlp_ratio": 2.0,
        "drop_path_rate": 0.3,
        "kernel_size": 11,
        "dilations": DINAT_L_M2F_DILATIONS,
    }
    return _variant(defaults, kwargs)
