"""Swin Transformer backbone (Liu et al., 2021) for dense prediction, with the official key layout.

Feature maps of any size work: each block pads its map (after `norm1`) with zeros to Hp x Wp, the
next multiples of the window; every second block cyclically shifts that padded map by half a window
(window // 2) and attends within windows under the shifted-window mask built on Hp x Wp, then rolls
back and crops. This is the rule of the official detection/segmentation code and of Mask2Former's
D2SwinTransformer at every map size, also when the map fits inside one window (the classification
code and timm skip the shift there; official detection/segmentation checkpoints were trained with it).
Every output stage has its own LayerNorm (`norm0`..`norm3`), as in Mask2Former's D2SwinTransformer.

`checkpoint_filter_fn` maps official Swin checkpoints (ImageNet-1K/22K) and timm Swin weights to
these keys, resizing relative-position-bias tables (and the absolute position embedding) when the
window size (or pre-training grid) differs.
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
from ...io.checkpoints import read_checkpoint
from ..tiny import register_tiny_sizes
from .base import BACKBONE_REGISTRY, Backbone

logger = logging.getLogger(__name__)

_STAGE_NAMES = ("res2", "res3", "res4", "res5")
_MASKED = -100.0  # additive attention mask value for token pairs from different shifted regions


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability `rate`."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}"


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """B x H x W x C (H, W multiples of `window`) -> (B * windows) x window^2 x C, windows row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_merge(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * windows) x window^2 x C -> B x H x W x C."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(window: int) -> torch.Tensor:
    """window^2 x window^2 index into the (2 window - 1)^2 bias table for every pair of window positions."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    delta = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return delta[..., 0] * (2 * window - 1) + delta[..., 1]


def shifted_window_mask(
    h: int,
    w: int,
    window: int,
    shift: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """windows x window^2 x window^2 additive mask for an H x W map (multiples of `window`) rolled by -shift.

    After the roll, the last window row/column holds tokens from opposite borders of the image; tokens
    may only attend to tokens of the same region (3 bands per axis: 9 regions).
    """
    region = torch.zeros((1, h, w, 1), device=device)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(bands):
        for j, cols in enumerate(bands):
            region[:, rows, cols, :] = 3 * i + j
    ids = window_partition(region, window).squeeze(-1)
    different = ids[:, None, :] != ids[:, :, None]
    return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill(different, _MASKED)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learnt relative position bias."""

    def __init__(
        self,
        dim: int,
        window: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        # Derived from the window size, so not saved: checkpoints that carry it are filtered on load.
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * windows) x window^2 x C; mask: windows x window^2 x window^2 (additive) or None."""
        batch, tokens, channels = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            bias = bias.unsqueeze(1) + mask[None, :, None]  # images x windows x heads x N x N
            bias = bias.expand(batch // windows, -1, -1, -1, -1)
            bias = bias.reshape(batch, self.num_heads, tokens, tokens)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias.to(q.dtype),
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, channels)))


class SwinBlock(nn.Module):
    """norm1 -> (shifted) window attention -> residual; norm2 -> MLP -> residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        shift: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, h: int, w: int, shift_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: B x (H W) x C. A shifted block uses `shift_mask` (built here when None) for the padded map."""
        batch, _, channels = x.shape
        window, shift = self.window, self.shift
        y = self.norm1(x).view(batch, h, w, channels)
        # Official order: zero-pad to window multiples, then roll (the mask is built on the padded size).
        pad_h, pad_w = (-h) % window, (-w) % window
        if pad_h or pad_w:
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        if shift and shift_mask is None:
            shift_mask = shifted_window_mask(hp, wp, window, shift, device=x.device, dtype=x.dtype)
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        y = self.attn(window_partition(y, window), shift_mask if shift else None)
        y = window_merge(y, window, hp, wp)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        if pad_h or pad_w:
            y = y[:, :h, :w]
        x = x + self.drop_path(y.reshape(batch, h * w, channels))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated (4C) -> LayerNorm -> Linear to 2C: halves the resolution."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        batch, _, channels = x.shape
        x = x.view(batch, h, w, channels)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # channel order of the official weights: (row, col) = (0, 0), (1, 0), (0, 1), (1, 1)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(batch, -1, 4 * channels)))


class SwinStage(nn.Module):
    """`depth` blocks (every second one shifted) followed by an optional patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_paths: Sequence[float],
        downsample: bool,
        use_checkpoint: bool,
    ) -> None:
        super().__init__()
        self.window = window
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window,
                0 if i % 2 == 0 else window // 2,
                mlp_ratio,
                qkv_bias,
                qk_scale,
                drop,
                attn_drop,
                drop_paths[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor | None, int, int]:
        """Returns (stage output B x (H W) x C, merged map B x (H/2 W/2) x 2C or None, next H, next W)."""
        return self.merge(self.run_blocks(x, h, w), h, w)

    def run_blocks(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The stage's blocks on B x (H W) x C tokens."""
        window, shift = self.window, self.window // 2
        mask = None
        if shift and any(block.shift for block in self.blocks):  # at every map size, as the official code
            hp, wp = h + (-h) % window, w + (-w) % window
            mask = shifted_window_mask(hp, wp, window, shift, device=x.device, dtype=x.dtype)
        for block in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, h, w, mask, use_reentrant=False)
            else:
                x = block(x, h, w, mask)
        return x

    def merge(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor | None, int, int]:
        """(x, the patch-merged map or None for the last stage, next H, next W)."""
        if self.downsample is None:
            return x, None, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size conv (input padded to a multiple), then LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W -> B x C x H/p x W/p."""
        p = self.patch_size
        pad_w, pad_h = (-x.shape[-1]) % p, (-x.shape[-2]) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.proj(x)
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x


@BACKBONE_REGISTRY.register()
class D2SwinTransformer(Backbone):
    """Swin as a backbone: returns res2..res5 (strides 4..32, channels C, 2C, 4C, 8C), each LayerNorm-ed."""

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.3,
        ape: bool = False,
        patch_norm: bool = True,
        patch_size: int = 4,
        pretrain_img_size: int = 224,
        out_features: Sequence[str] = _STAGE_NAMES,
        use_checkpoint: bool = False,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"Swin has 4 stages: got depths {list(depths)} and heads {list(num_heads)}")
        unknown = [name for name in out_features if name not in _STAGE_NAMES]
        if unknown or not out_features:
            choices = ", ".join(_STAGE_NAMES)
            raise ValueError(f"Swin out_features {list(out_features)}: pick a non-empty subset of {choices}")
        for i, heads in enumerate(num_heads):
            if (embed_dim * 2**i) % heads:
                raise ValueError(f"stage {i}: {embed_dim * 2**i} channels do not split into {heads} heads")
        self.window_size = window_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.ape = ape
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)

        total = sum(depths)
        # Stochastic depth grows linearly over all blocks (plain floats: also works on the meta device).
        rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(
                SwinStage(
                    embed_dim * 2**i,
                    depth,
                    num_heads[i],
                    window_size,
                    mlp_ratio,
                    qkv_bias,
                    qk_scale,
                    drop_rate,
                    attn_drop_rate,
                    rates[start : start + depth],
                    downsample=i < 3,
                    use_checkpoint=use_checkpoint,
                )
            )
        self._out_features = [name for name in _STAGE_NAMES if name in out_features]
        self._out_feature_channels = {name: embed_dim * 2**i for i, name in enumerate(_STAGE_NAMES)}
        self._out_feature_strides = {name: patch_size * 2**i for i, name in enumerate(_STAGE_NAMES)}
        for i, name in enumerate(_STAGE_NAMES):
            if name in self._out_features:
                self.add_module(f"norm{i}", nn.LayerNorm(embed_dim * 2**i))
        self.apply(init_transformer_weights)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> D2SwinTransformer:
        """Build from MODEL.SWIN.*."""
        return cls(**swin_options(cfg))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """N x C x H x W -> {name: N x C_name x H/stride x W/stride} for the names in `out_features`."""
        if images.dim() != 4:
            raise ValueError(f"Swin takes N x C x H x W images, got shape {tuple(images.shape)}")
        x, h, w = self.embed(images)
        outputs = {}
        for i, stage in enumerate(self.layers):
            stage_out, x, next_h, next_w = stage(x, h, w)
            name = _STAGE_NAMES[i]
            if name in self._out_features:
                normed = getattr(self, f"norm{i}")(stage_out)
                outputs[name] = normed.view(-1, h, w, stage_out.shape[-1]).permute(0, 3, 1, 2).contiguous()
            if x is None or len(outputs) == len(self._out_features):
                break
            h, w = next_h, next_w
        return outputs

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Patch embedding (+ absolute position embedding): N x C x H x W -> (N x (h w) x C tokens, h, w)."""
        x = self.patch_embed(images)
        h, w = x.shape[-2:]
        if self.ape:
            pos = self.absolute_pos_embed
            if pos.shape[-2:] != (h, w):
                pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
            x = x + pos
        return self.pos_drop(x.flatten(2).transpose(1, 2)), h, w

    @staticmethod
    def convert_pretrained(state_dict: dict, model: D2SwinTransformer) -> dict[str, torch.Tensor]:
        """`checkpoint_filter_fn`: a backbone checkpoint's tensors in this backbone's key layout."""
        return checkpoint_filter_fn(state_dict, model)

    @staticmethod
    def load_pretrained(model: D2SwinTransformer, path: str | Path) -> dict[str, list[str]]:
        """`load_swin_pretrained` (the hook `MODEL.BACKBONE.WEIGHTS` uses)."""
        return load_swin_pretrained(model, path)


@CONFIG_ADDERS.register()
def add_swin_config(cfg: CfgNode) -> None:
    """MODEL.SWIN.*: D2SwinTransformer's keys, Mask2Former's names and defaults (Swin-T)."""
    cfg.MODEL.SWIN = ConfigNode()
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224  # image size of the pre-training (sets nothing else; recorded)
    cfg.MODEL.SWIN.PATCH_SIZE = 4  # patch embedding stride (px)
    cfg.MODEL.SWIN.EMBED_DIM = 96  # channels of stage 1 (doubles per stage)
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]  # blocks per stage
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]  # attention heads per stage
    cfg.MODEL.SWIN.WINDOW_SIZE = 7  # attention window (tokens)
    cfg.MODEL.SWIN.MLP_RATIO = 4.0  # MLP hidden size / channels
    cfg.MODEL.SWIN.QKV_BIAS = True  # bias in the qkv projection
    cfg.MODEL.SWIN.QK_SCALE = None  # attention scale; None = head_dim ** -0.5
    cfg.MODEL.SWIN.DROP_RATE = 0.0  # dropout after projections
    cfg.MODEL.SWIN.ATTN_DROP_RATE = 0.0  # dropout on attention weights
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3  # stochastic depth, linearly increasing to this rate
    cfg.MODEL.SWIN.APE = False  # absolute position embedding
    cfg.MODEL.SWIN.PATCH_NORM = True  # LayerNorm after the patch embedding
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # returned stages
    cfg.MODEL.SWIN.USE_CHECKPOINT = False  # activation checkpointing per block (saves memory)


register_tiny_sizes(
    "swin",
    ["MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.DEPTHS", "[1, 1, 2, 1]", "MODEL.SWIN.NUM_HEADS", "[1, 1, 2, 2]",
     "MODEL.SWIN.WINDOW_SIZE", "4"],
    [(BACKBONE_REGISTRY, "D2SwinTransformer")],
)  # fmt: skip


def swin_options(cfg: CfgNode) -> dict[str, Any]:
    """D2SwinTransformer's keyword arguments from MODEL.SWIN.*."""
    swin = cfg.MODEL.SWIN
    return {
        "embed_dim": swin.EMBED_DIM,
        "depths": tuple(swin.DEPTHS),
        "num_heads": tuple(swin.NUM_HEADS),
        "window_size": swin.WINDOW_SIZE,
        "mlp_ratio": swin.MLP_RATIO,
        "qkv_bias": swin.QKV_BIAS,
        "qk_scale": swin.QK_SCALE,
        "drop_rate": swin.DROP_RATE,
        "attn_drop_rate": swin.ATTN_DROP_RATE,
        "drop_path_rate": swin.DROP_PATH_RATE,
        "ape": swin.APE,
        "patch_norm": swin.PATCH_NORM,
        "patch_size": swin.PATCH_SIZE,
        "pretrain_img_size": swin.PRETRAIN_IMG_SIZE,
        "out_features": tuple(swin.OUT_FEATURES),
        "use_checkpoint": swin.USE_CHECKPOINT,
    }


def init_transformer_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) linear weights, zero biases, unit LayerNorms (Swin / NAT initialisation)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def resize_relative_position_bias_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """(2W'-1)^2 x heads table -> (2 window - 1)^2 x heads, bicubic per head over the 2-D offset grid."""
    old = round(table.shape[0] ** 0.5)
    new = 2 * window - 1
    if old * old != table.shape[0]:
        raise ValueError(f"relative position bias table with {table.shape[0]} rows is not a square grid")
    if old == new:
        return table
    grid = table.float().T.reshape(1, -1, old, old)
    resized = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return resized.reshape(-1, new * new).T.contiguous().to(table.dtype)


def _resize_absolute_pos_embed(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Official classification (1 x L x C) or D2 (1 x C x H x W) embedding -> the target's 1 x C x H x W."""
    channels = target.shape[1]
    if value.dim() == 3:
        side = round(value.shape[1] ** 0.5)
        value = value.transpose(1, 2).reshape(1, channels, side, side)
    elif value.shape[1] != channels and value.shape[-1] == channels:  # channels-last 1 x H x W x C
        value = value.permute(0, 3, 1, 2)
    if value.shape[-2:] != target.shape[-2:]:
        value = F.interpolate(value.float(), size=target.shape[-2:], mode="bicubic", align_corners=False)
    return value.to(target.dtype).contiguous()


def unwrap_state_dict(state_dict: dict) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, unwrapped from "model" / "state_dict", "module." and "backbone." prefixes."""
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("backbone.") for k in state_dict):  # a whole segmentation model: keep its backbone
        prefix = "backbone."
        state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict


def checkpoint_filter_fn(state_dict: dict, model: D2SwinTransformer) -> dict[str, torch.Tensor]:
    """Official Swin or timm Swin weights -> this backbone's keys.

    Drops the classifier (`head.*`), the final norm (`norm.*`) and derived buffers
    (`relative_position_index`, `attn_mask`); moves timm's patch merging (start of stage i+1) to the
    official place (end of stage i); resizes bias tables and the absolute position embedding to the model.
    """
    state_dict = unwrap_state_dict(state_dict)
    # Official weights keep the patch merging at the end of a stage (so stage 0 has one); timm (>= 0.9)
    # at the start of the next one (stage 0 has none).
    timm_layout = "layers.0.downsample.reduction.weight" not in state_dict and any(
        ".downsample." in k for k in state_dict
    )
    own = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if key.startswith(("head.", "norm.")) or key.endswith(("relative_position_index", "attn_mask")):
            continue
        if timm_layout and key.startswith("layers.") and ".downsample." in key:
            stage = int(key.split(".")[1])
            key = f"layers.{stage - 1}." + key.split(".", 2)[2]
        if key.endswith("relative_position_bias_table") and key in own:
            value = resize_relative_position_bias_table(value, model.window_size)
        elif key == "absolute_pos_embed" and key in own:
            value = _resize_absolute_pos_embed(value, own[key])
        out[key] = value
    return out


def read_weights(path: Path) -> dict:
    """The tensors of a .safetensors / .pth file, through the project's one checkpoint reader."""
    return read_checkpoint(path)


def load_swin_pretrained(model: D2SwinTransformer, path: str | Path) -> dict[str, list[str]]:
    """Load ImageNet Swin weights (.pth / .safetensors; official or timm layout) with `strict=False`.

    Returns {"missing": [...], "unexpected": [...], "new_output_norms": [...]}: `missing` lists every
    model key the file lacked; `new_output_norms` the part of it that is expected (norm0..norm3, which
    ImageNet checkpoints do not have).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Swin weights not found: {path}")
    result = model.load_state_dict(checkpoint_filter_fn(read_weights(path), model), strict=False)
    missing = list(result.missing_keys)
    unexpected = list(result.unexpected_keys)
    new_norms = [k for k in missing if k.split(".")[0] in {f"norm{i}" for i in range(4)}]
    surprising = [k for k in missing if k not in new_norms]
    if surprising or unexpected:
        logger.warning("Swin weights %s: missing %s, unexpected %s", path, surprising, unexpected)
    fresh = sorted({k.split(".")[0] for k in new_norms})
    logger.info("Swin weights %s: output norms %s start fresh", path, fresh)
    return {"missing": missing, "unexpected": unexpected, "new_output_norms": new_norms}


def swin_tiny(**kwargs: Any) -> D2SwinTransformer:
    """Swin-T: C 96, depths 2-2-6-2, heads 3-6-12-24, window 7 (224 pre-training)."""
    defaults = {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)}
    return D2SwinTransformer(**{**defaults, **kwargs})


def swin_small(**kwargs: Any) -> D2SwinTransformer:
    """Swin-S: C 96, depths 2-2-18-2, heads 3-6-12-24, window 7 (224 pre-training)."""
    defaults = {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)}
    return D2SwinTransformer(**{**defaults, **kwargs})


def swin_base(**kwargs: Any) -> D2SwinTransformer:
    """Swin-B 384 variant: C 128, depths 2-2-18-2, heads 4-8-16-32, window 12 (window_size=7: 224 one)."""
    defaults = {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)}
    return D2SwinTransformer(**{**defaults, "window_size": 12, "pretrain_img_size": 384, **kwargs})


def swin_large(**kwargs: Any) -> D2SwinTransformer:
    """Swin-L 384 variant: C 192, depths 2-2-18-2, heads 6-12-24-48, window 12 (window_size=7: 224 one)."""
    defaults = {"embed_dim": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48)}
    return D2SwinTransformer(**{**defaults, "window_size": 12, "pretrain_img_size": 384, **kwargs})
