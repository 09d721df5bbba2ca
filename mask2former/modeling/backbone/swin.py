"""Swin Transformer backbone (Liu et al., 2021) for dense prediction, with the official key layout.

Feature maps of any size divisible by 32: each stage pads its map to a multiple of the window,
attends within (shifted) windows and crops back. When a whole map fits in one window the shift is
skipped (the shifted windows would only split that one window). Every output stage has its own
LayerNorm (`norm0`..`norm3`), as in Mask2Former's D2SwinTransformer.

`checkpoint_filter_fn` maps official Swin checkpoints (ImageNet-1K/22K) and timm Swin weights to
these keys, resizing relative-position-bias tables when the window size differs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from fvcore.common.config import CfgNode
from torch import nn

from .base import BACKBONE_REGISTRY, Backbone

logger = logging.getLogger(__name__)


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


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """B x H x W x C (H, W multiples of window) -> (B * windows) x window^2 x C."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_merge(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * windows) x window^2 x C -> B x H x W x C."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(window: int) -> torch.Tensor:
    """window^2 x window^2 index into the (2 window - 1)^2 bias table for each pair of window positions."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    delta = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return delta[..., 0] * (2 * window - 1) + delta[..., 1]


def shifted_window_mask(h: int, w: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """windows x window^2 x window^2 additive mask keeping shifted windows from mixing distant regions."""
    region = torch.zeros((1, h, w, 1), device=device)
    label = 0
    for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            region[:, rows, cols, :] = label
            label += 1
    ids = window_partition(region, window).squeeze(-1)
    different = ids[:, None, :] != ids[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, -100.0)


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
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, tokens, channels = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, -1).permute(2, 0, 1)
        attn = (q * self.scale) @ k.transpose(-2, -1) + bias[None]
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(batch // windows, windows, self.num_heads, tokens, tokens) + mask[None, :, None]
            attn = attn.view(batch, self.num_heads, tokens, tokens)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(out))


class SwinBlock(nn.Module):
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

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        batch, _, channels = x.shape
        window = self.window
        shift = self.shift if max(h, w) > window else 0
        shortcut = x
        x = self.norm1(x).view(batch, h, w, channels)
        pad_h, pad_w = (-h) % window, (-w) % window
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        mask = None
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(hp, wp, window, shift, x.device).to(x.dtype)
        x = window_merge(self.attn(window_partition(x, window), mask), window, hp, wp)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = x[:, :h, :w].reshape(batch, h * w, channels)
        x = shortcut + self.drop_path(x)
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
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # order of the official layout: (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(batch, -1, 4 * channels)))


class SwinStage(nn.Module):
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
        drop_paths: list[float],
        downsample: bool,
        use_checkpoint: bool,
    ) -> None:
        super().__init__()
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
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, h, w, use_reentrant=False)
            else:
                x = block(x, h, w)
        if self.downsample is None:
            return x, None, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = self.proj(F.pad(x, (0, (-x.shape[-1]) % p, 0, (-x.shape[-2]) % p)))
        if self.norm is not None:
            h, w = x.shape[-2:]
            x = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).view(-1, x.shape[1], h, w)
        return x


@BACKBONE_REGISTRY.register()
class D2SwinTransformer(Backbone):
    """Swin as a backbone: returns res2..res5 (strides 4..32, channels C, 2C, 4C, 8C)."""

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        ape: bool = False,
        patch_norm: bool = True,
        patch_size: int = 4,
        pretrain_img_size: int = 224,
        out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5"),
        use_checkpoint: bool = False,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"Swin has 4 stages: got depths {depths} and heads {num_heads}")
        self.window_size = window_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.ape = ape
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
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
        names = ("res2", "res3", "res4", "res5")
        unknown = [name for name in out_features if name not in names]
        if unknown:
            raise ValueError(f"unknown Swin output(s) {unknown}; choose from {names}")
        self._out_features = [name for name in names if name in out_features]
        self._out_feature_channels = {name: embed_dim * 2**i for i, name in enumerate(names)}
        self._out_feature_strides = {name: patch_size * 2**i for i, name in enumerate(names)}
        for i, name in enumerate(names):
            if name in out_features:
                self.add_module(f"norm{i}", nn.LayerNorm(embed_dim * 2**i))
        self.apply(_init_weights)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> D2SwinTransformer:
        swin = cfg.MODEL.SWIN
        return cls(
            embed_dim=swin.EMBED_DIM,
            depths=tuple(swin.DEPTHS),
            num_heads=tuple(swin.NUM_HEADS),
            window_size=swin.WINDOW_SIZE,
            mlp_ratio=swin.MLP_RATIO,
            qkv_bias=swin.QKV_BIAS,
            qk_scale=swin.QK_SCALE,
            drop_rate=swin.DROP_RATE,
            attn_drop_rate=swin.ATTN_DROP_RATE,
            drop_path_rate=swin.DROP_PATH_RATE,
            ape=swin.APE,
            patch_norm=swin.PATCH_NORM,
            patch_size=swin.PATCH_SIZE,
            pretrain_img_size=swin.PRETRAIN_IMG_SIZE,
            out_features=tuple(swin.OUT_FEATURES),
            use_checkpoint=swin.USE_CHECKPOINT,
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.dim() != 4:
            raise ValueError(f"Swin takes N x C x H x W images, got shape {tuple(images.shape)}")
        x = self.patch_embed(images)
        h, w = x.shape[-2:]
        if self.ape:
            x = x + F.interpolate(self.absolute_pos_embed, size=(h, w), mode="bicubic", align_corners=False)
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        outputs = {}
        for i, stage in enumerate(self.layers):
            stage_out, x, next_h, next_w = stage(x, h, w)
            name = f"res{i + 2}"
            if name in self._out_features:
                normed = getattr(self, f"norm{i}")(stage_out)
                outputs[name] = normed.view(-1, h, w, stage_out.shape[-1]).permute(0, 3, 1, 2).contiguous()
            h, w = next_h, next_w
        return outputs

    @staticmethod
    def load_pretrained(model: D2SwinTransformer, path: str | Path) -> dict:
        return load_swin_pretrained(model, path)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _resize_bias_table(table: torch.Tensor, window: int) -> torch.Tensor:
    old = int(round(table.shape[0] ** 0.5))
    new = 2 * window - 1
    if old == new:
        return table
    grid = table.T.reshape(1, -1, old, old).float()
    resized = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return resized.reshape(-1, new * new).T.to(table.dtype)


def checkpoint_filter_fn(state_dict: dict, model: D2SwinTransformer) -> dict[str, torch.Tensor]:
    """Official Swin or timm Swin weights -> this backbone's keys (classifier and final norm dropped)."""
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    state_dict = {k.removeprefix("backbone.").removeprefix("module."): v for k, v in state_dict.items()}
    # timm (>= 0.9) puts the patch merging at the start of the next stage: layers.{i+1}.downsample
    timm_layout = any(k.startswith("layers.3.downsample.") for k in state_dict)
    own = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if key.startswith(("head", "norm.")) or key.endswith(("relative_position_index", "attn_mask")):
            continue
        if timm_layout and ".downsample." in key:
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.downsample", f"layers.{stage - 1}.downsample", 1)
        if key.endswith("relative_position_bias_table") and key in own:
            value = _resize_bias_table(value, model.window_size)
        if key == "absolute_pos_embed" and key in own:
            if value.dim() == 3:  # official: 1 x (H W) x C
                side = int(round(value.shape[1] ** 0.5))
                value = value.transpose(1, 2).reshape(1, -1, side, side)
            value = F.interpolate(value, size=own[key].shape[-2:], mode="bicubic", align_corners=False)
        out[key] = value
    return out


def load_swin_pretrained(model: D2SwinTransformer, path: str | Path) -> dict:
    """Load ImageNet Swin weights (.pth / .safetensors; official or timm); returns missing/unexpected keys."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    result = model.load_state_dict(checkpoint_filter_fn(state, model), strict=False)
    new_norms = [k for k in result.missing_keys if k.startswith("norm") and k[4:5].isdigit()]
    missing = [k for k in result.missing_keys if k not in new_norms]
    if missing or result.unexpected_keys:
        logger.warning("Swin weights %s: missing %s, unexpected %s", path, missing, result.unexpected_keys)
    return {"missing": missing, "unexpected": list(result.unexpected_keys), "new_output_norms": new_norms}


def swin_tiny(**kwargs) -> D2SwinTransformer:
    return D2SwinTransformer(**{"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24), **kwargs})


def swin_small(**kwargs) -> D2SwinTransformer:
    return D2SwinTransformer(**{"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24), **kwargs})


def swin_base(**kwargs) -> D2SwinTransformer:
    return D2SwinTransformer(
        **{
            "embed_dim": 128,
            "depths": (2, 2, 18, 2),
            "num_heads": (4, 8, 16, 32),
            "window_size": 12,
            "pretrain_img_size": 384,
            **kwargs,
        }
    )


def swin_large(**kwargs) -> D2SwinTransformer:
    return D2SwinTransformer(
        **{
            "embed_dim": 192,
            "depths": (2, 2, 18, 2),
            "num_heads": (6, 12, 24, 48),
            "window_size": 12,
            "pretrain_img_size": 384,
            **kwargs,
        }
    )
