"""A plain ViT (timm's BEiT or VisionTransformer) as a 4-level pyramid, for UPerNet on BEiT.

MODEL.BACKBONE.NAME "ViTPyramid" builds `timm.create_model(MODEL.VIT_PYRAMID.NAME, pretrained=False, ...)` with the
sizes MODEL.VIT_PYRAMID.* sets (a tiny model for tests is the same timm class with small sizes), takes the token
maps after the blocks MODEL.VIT_PYRAMID.OUT_INDICES names (stride = patch size, no final norm) and turns them into
res2..res5 at strides 4, 8, 16, 32 with the BEiT segmentation recipe's neck: stride 4 by two 2x transposed convs
(norm + GELU between them), stride 8 by one, stride 16 as it is, stride 32 by 2x2 max pooling; every level keeps
the embedding's channels. Blocks after the last out index are dropped (they would get no gradient).

Any input size divisible by 32 runs. timm's BEiT builds its relative position bias for one grid (IMG_SIZE / patch);
here the bias is looked up for the grid the image gives: the table holds one value per (dy, dx) offset, so a
smaller grid uses exactly the learned values for its offsets, and offsets beyond the table's range (a grid larger
than the native one) take the value of the nearest offset the table has, clamped per axis, rather than stretching
the table (which would change the bias of every nearby offset). An absolute position embedding (ViT; BEiT with
use_abs_pos_emb) is interpolated to the grid (timm's bicubic resampling). At the native grid the result is timm's.

MODEL.BACKBONE.WEIGHTS: a checkpoint of the whole timm model (timm's layout, or BEiT's official one: the same key
names, a shared `rel_pos_bias` table copied into every block that has its own) read with the project's safe
reader, converted by timm's `checkpoint_filter_fn` for the model's module (relative tables, position embedding and
patch embedding resized to the model) and loaded with a report; the neck starts fresh.

Layer-wise LR decay (SOLVER.LAYER_DECAY, the BEiT recipe) is the optimizer's: mask2former/engine/optimizer.py.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import nn

from ...config import CONFIG_ADDERS, ConfigError
from ...config import CfgNode as ConfigNode
from ...io.checkpoints import read_checkpoint
from ..tiny import register_tiny_sizes
from .base import BACKBONE_REGISTRY, Backbone
from .resnet import get_norm
from .timm_backbone import fit_by_shape, timm_filtered

logger = logging.getLogger(__name__)

STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
NECK_NORMS = ("BN", "SyncBN", "GN", "")


# ---- relative position bias at any grid -------------------------------------------------------------------------


def relative_position_index(grid: tuple[int, int], window: tuple[int, int]) -> torch.Tensor:
    """(h w + 1) x (h w + 1) rows of a BEiT table made for `window`, for the tokens of a `grid` (class token first).

    The table has (2 Wh - 1)(2 Ww - 1) offset rows (dy major), then class-to-patch, patch-to-class, class-to-class
    (timm's layout). Offsets beyond the window are clamped to the nearest one it has."""
    (h, w), (wh, ww) = grid, window
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # 2 x hw
    offsets = coords[:, :, None] - coords[:, None, :]  # 2 x hw x hw: query minus key
    dy = offsets[0].clamp(-(wh - 1), wh - 1) + wh - 1
    dx = offsets[1].clamp(-(ww - 1), ww - 1) + ww - 1
    offset_rows = (2 * wh - 1) * (2 * ww - 1)
    index = torch.empty(h * w + 1, h * w + 1, dtype=torch.long)
    index[1:, 1:] = dy * (2 * ww - 1) + dx
    index[0, :] = offset_rows  # class token to patches
    index[:, 0] = offset_rows + 1  # patches to class token
    index[0, 0] = offset_rows + 2
    return index


def relative_position_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """1 x heads x L x L attention bias: `table` (rows x heads) gathered at `index` (L x L)."""
    length = index.shape[0]
    return table[index.reshape(-1)].reshape(length, length, -1).permute(2, 0, 1).unsqueeze(0)


# ---- the neck --------------------------------------------------------------------------------------------------


def neck_norm(norm: str, channels: int) -> nn.Module:
    """The norm between the stride-4 level's two transposed convs (MODEL.VIT_PYRAMID.NECK_NORM)."""
    try:
        layer = get_norm(norm, channels, key="MODEL.VIT_PYRAMID.NECK_NORM", allowed=NECK_NORMS)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return nn.Identity() if layer is None else layer


def rescale(channels: int, factor: float, norm: str) -> nn.Module:
    """One pyramid level from the patch-stride map: `factor` 2^k up (k transposed 2x2 convs, norm + GELU between
    them), 1 as it is, 1/2^k down (2^k x 2^k max pooling)."""
    if factor == 1:
        return nn.Identity()
    if factor < 1:
        size = round(1 / factor)
        return nn.MaxPool2d(kernel_size=size, stride=size)
    layers: list[nn.Module] = []
    for step in range(round(math.log2(factor))):
        if step:
            layers += [neck_norm(norm, channels), nn.GELU()]
        layers.append(nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class PyramidNeck(nn.Module):
    """Four maps of one stride (the patch size) -> res2..res5 at strides 4, 8, 16, 32, same channels."""

    def __init__(self, channels: int, patch_size: int, norm: str = "BN") -> None:
        super().__init__()
        self.levels = nn.ModuleDict(
            {name: rescale(channels, patch_size / stride, norm) for name, stride in STRIDES.items()}
        )

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: level(x) for (name, level), x in zip(self.levels.items(), features, strict=True)}


# ---- the backbone ------------------------------------------------------------------------------------------------


def _is_beit(name: str) -> bool:
    import timm

    return timm.models.is_model_in_modules(name, ["beit"])


@BACKBONE_REGISTRY.register()
class ViTPyramid(Backbone):
    """A timm BEiT / ViT with the blocks `out_indices` feeding a 4-level pyramid neck (see the module doc)."""

    def __init__(
        self,
        name: str = "beit_large_patch16_512",
        kwargs: dict | None = None,
        out_indices: tuple[int, ...] = (7, 11, 15, 23),
        neck_norm: str = "BN",
    ) -> None:
        super().__init__()
        import timm
        from timm.models.beit import Beit
        from timm.models.vision_transformer import VisionTransformer

        self.timm_name = name
        self.timm_kwargs = dict(kwargs or {})
        self.is_beit = _is_beit(name)
        extra = {} if self.is_beit else {"dynamic_img_size": True}  # timm's ViT resamples its embedding per input
        try:
            vit = timm.create_model(name, pretrained=False, num_classes=0, **extra, **self.timm_kwargs)
        except (RuntimeError, TypeError, ValueError) as error:  # unknown model or argument
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(
                f"MODEL.VIT_PYRAMID.NAME {name!r} with {self.timm_kwargs}: timm refused it ({first}); give a timm "
                "BEiT or ViT name (timm.list_models('beit*'), timm.list_models('vit_*')) and sizes it takes"
            ) from None
        if not isinstance(vit, (Beit, VisionTransformer)):
            raise ConfigError(
                f"MODEL.VIT_PYRAMID.NAME {name!r} is a timm {type(vit).__name__}, not a BEiT or plain ViT "
                "(VisionTransformer): give one of those, or MODEL.BACKBONE.NAME TimmBackbone for a pyramid model"
            )
        depth = len(vit.blocks)
        indices = tuple(int(i) for i in out_indices)
        if len(indices) != 4 or any(i < 0 or i >= depth for i in indices) or list(indices) != sorted(set(indices)):
            raise ConfigError(
                f"MODEL.VIT_PYRAMID.OUT_INDICES {list(indices)}: give 4 increasing block indices in 0..{depth - 1} "
                f"({name} has {depth} blocks), e.g. BEiT-L's [7, 11, 15, 23]"
            )
        patch = vit.patch_embed.patch_size[0]
        if vit.patch_embed.patch_size[0] != vit.patch_embed.patch_size[1] or patch not in (4, 8, 16, 32):
            raise ConfigError(
                f"MODEL.VIT_PYRAMID.PATCH_SIZE {vit.patch_embed.patch_size}: the pyramid needs a square patch of "
                "4, 8, 16 or 32 px (its levels are the patch map scaled by powers of 2)"
            )
        vit.prune_intermediate_layers(list(indices), prune_norm=True, prune_head=True)
        if self.is_beit:
            vit.patch_embed.strict_img_size = False  # any size divisible by the patch; the grid is handled here
        self.vit = vit
        self.out_indices = indices
        self.patch_size = patch
        self.embed_dim = int(vit.embed_dim)
        self.neck = PyramidNeck(self.embed_dim, patch, neck_norm)
        self._index_cache: dict[tuple[int, int], torch.Tensor] = {}
        self._out_features = list(STRIDES)
        self._out_feature_channels = dict.fromkeys(STRIDES, self.embed_dim)
        self._out_feature_strides = dict(STRIDES)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> ViTPyramid:
        node = cfg.MODEL.VIT_PYRAMID
        return cls(node.NAME, vit_kwargs(node), tuple(node.OUT_INDICES), node.NECK_NORM)

    @property
    def size_divisibility(self) -> int:
        return max(32, self.patch_size)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.neck(self.token_maps(images))

    def token_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """N x C x H/patch x W/patch after each of the out_indices blocks (patch tokens only, no final norm)."""
        height, width = images.shape[-2:]
        if height % self.size_divisibility or width % self.size_divisibility:
            raise ValueError(
                f"ViTPyramid: input {height}x{width} is not divisible by {self.size_divisibility} "
                "(pad the batch to the backbone's size_divisibility)"
            )
        if not self.is_beit:
            return self.vit.forward_intermediates(
                images, indices=list(self.out_indices), norm=False, output_fmt="NCHW", intermediates_only=True
            )
        return self._beit_token_maps(images)

    def _beit_token_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        vit = self.vit
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        x = vit.patch_embed(images)
        x = torch.cat((vit.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if vit.pos_embed is not None:
            x = x + self._pos_embed(grid)
        x = vit.pos_drop(x)
        index = self._grid_index(grid, x.device)
        shared = None if vit.rel_pos_bias is None else self._shared_bias(index)
        maps = []
        for i, block in enumerate(vit.blocks):
            table = block.attn.relative_position_bias_table
            bias = shared if table is None else relative_position_bias(table, index)
            if table is not None and shared is not None:
                bias = bias + shared
            x = beit_block(block, x, bias)
            if i in self.out_indices:
                maps.append(x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid))
        return maps

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        from timm.layers import resample_abs_pos_embed

        native = tuple(self.vit.patch_embed.grid_size)
        if grid == native:
            return self.vit.pos_embed
        return resample_abs_pos_embed(self.vit.pos_embed, new_size=grid, old_size=native, num_prefix_tokens=1)

    def _shared_bias(self, index: torch.Tensor) -> torch.Tensor:
        return relative_position_bias(self.vit.rel_pos_bias.relative_position_bias_table, index)

    def _grid_index(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        key = (grid[0], grid[1])
        index = self._index_cache.get(key)
        if index is None or index.device != device:
            index = relative_position_index(grid, tuple(self.vit.patch_embed.grid_size)).to(device)
            self._index_cache[key] = index
        return index

    @staticmethod
    def load_pretrained(model: ViTPyramid, path: str | Path) -> dict[str, list[str]]:
        """MODEL.BACKBONE.WEIGHTS: a whole BEiT / ViT checkpoint into the ViT (see the module doc)."""
        return load_vit_pyramid_pretrained(model, path)


def beit_block(block: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """timm's BEiT Block with the attention bias given (timm's own takes it from its table, for one grid)."""
    y = beit_attention(block.attn, block.norm1(x), bias)
    x = x + block.drop_path1(y if block.gamma_1 is None else block.gamma_1 * y)
    y = block.mlp(block.norm2(x))
    return x + block.drop_path2(y if block.gamma_2 is None else block.gamma_2 * y)


def beit_attention(attn: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """timm's BEiT Attention (q and v biases, k unbiased) with `bias` added to the attention logits."""
    batch, tokens, _ = x.shape
    if attn.q_bias is None:
        qkv = attn.qkv(x)
    else:
        qkv = F.linear(x, attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)))
    q, k, v = qkv.reshape(batch, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    if bias is not None:
        bias = bias.to(q.dtype)  # autocast: SDPA wants the mask in the queries' dtype
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, dropout_p=attn.attn_drop.p if attn.training else 0.0, scale=attn.scale
    )
    return attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(batch, tokens, -1)))


# ---- weights -------------------------------------------------------------------------------------------------


def _share_table_per_block(state: dict[str, torch.Tensor], model: ViTPyramid) -> dict[str, torch.Tensor]:
    """BEiT pre-training checkpoints keep one shared table (`rel_pos_bias.`); a model with a table per block gets
    a copy of it in each block the file gives none."""
    shared = state.get("rel_pos_bias.relative_position_bias_table")
    if shared is None or model.vit.rel_pos_bias is not None:
        return state
    state = {k: v for k, v in state.items() if not k.startswith("rel_pos_bias.")}
    for i, block in enumerate(model.vit.blocks):
        key = f"blocks.{i}.attn.relative_position_bias_table"
        if block.attn.relative_position_bias_table is not None and key not in state:
            state[key] = shared.clone()
    return state


def load_vit_pyramid_pretrained(model: ViTPyramid, path: str | Path) -> dict[str, list[str]]:
    """Read `path` safely, convert it with timm's filter for the model's module, load it into `model.vit`.

    Returns {"missing": backbone keys the file lacked (the neck's among them), "unexpected": file keys not used
    (classifier, final norm, blocks after the last out index), "new_neck": the neck's keys, which start fresh}."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"MODEL.BACKBONE.WEIGHTS not found: {path}")
    state = read_checkpoint(path)
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    kept = len(model.vit.blocks)
    pruned = [k for k in state if (m := re.match(r"blocks\.(\d+)\.", k)) and int(m.group(1)) >= kept]
    state = {k: v for k, v in state.items() if k not in set(pruned)}
    state = _share_table_per_block(state, model)
    state = timm_filtered(state, model.vit)
    own = model.vit.state_dict()
    name = f"MODEL.VIT_PYRAMID.NAME {model.timm_name!r} with {model.timm_kwargs}"
    hint = "; give a checkpoint of that model (its EMBED_DIM / DEPTH / NUM_HEADS)"
    loaded = fit_by_shape({key: value for key, value in state.items() if key in own}, own, path, name, hint)
    model.vit.load_state_dict(loaded, strict=False)
    new_neck = [f"neck.{k}" for k in model.neck.state_dict()]
    missing = [f"vit.{k}" for k in own if k not in loaded] + new_neck
    unexpected = sorted(k for k in state if k not in loaded) + sorted(pruned)
    surprising = [k for k in missing if k not in new_neck]
    if surprising:
        logger.warning("ViT weights %s: %d backbone tensors missing, e.g. %s", path, len(surprising), surprising[:3])
    logger.info(
        "ViT weights %s: %d tensors loaded, %d unused (e.g. %s); the neck starts fresh",
        path,
        len(loaded),
        len(unexpected),
        unexpected[:3],
    )
    return {"missing": missing, "unexpected": unexpected, "new_neck": new_neck}


# ---- config -------------------------------------------------------------------------------------------------------


def vit_kwargs(node: CfgNode) -> dict[str, Any]:
    """timm keyword arguments from MODEL.VIT_PYRAMID.* (keys left null keep the timm model's own value)."""
    sizes = {
        "embed_dim": node.EMBED_DIM,
        "depth": node.DEPTH,
        "num_heads": node.NUM_HEADS,
        "patch_size": node.PATCH_SIZE,
        "img_size": node.IMG_SIZE,
        "drop_path_rate": node.DROP_PATH_RATE,
        "init_values": node.INIT_VALUES,
        "use_rel_pos_bias": node.USE_REL_POS_BIAS,
    }
    return {arg: value for arg, value in sizes.items() if value is not None}


@CONFIG_ADDERS.register()
def add_vit_pyramid_config(cfg: CfgNode) -> None:
    """MODEL.VIT_PYRAMID.*: the timm ViT behind MODEL.BACKBONE.NAME "ViTPyramid" and its pyramid neck."""
    cfg.MODEL.VIT_PYRAMID = ConfigNode()
    cfg.MODEL.VIT_PYRAMID.NAME = "beit_large_patch16_512"  # a timm BEiT or ViT (VisionTransformer) model name
    # the model's sizes under timm's names; null: the named model's own value
    cfg.MODEL.VIT_PYRAMID.EMBED_DIM = None  # token channels (= every pyramid level's channels)
    cfg.MODEL.VIT_PYRAMID.DEPTH = None  # transformer blocks
    cfg.MODEL.VIT_PYRAMID.NUM_HEADS = None  # attention heads
    cfg.MODEL.VIT_PYRAMID.PATCH_SIZE = None  # patch (px): 16 gives the recipe's neck; 4, 8, 32 rescale it
    # native input size (px): the grid of BEiT's relative tables / ViT's position embedding (BEiT-L recipe: 640)
    cfg.MODEL.VIT_PYRAMID.IMG_SIZE = None
    cfg.MODEL.VIT_PYRAMID.DROP_PATH_RATE = 0.0  # stochastic depth, rising linearly to this (BEiT-L recipe: 0.2)
    cfg.MODEL.VIT_PYRAMID.INIT_VALUES = None  # layer-scale initial value (timm init_values; BEiT-L: 1e-5)
    cfg.MODEL.VIT_PYRAMID.USE_REL_POS_BIAS = None  # BEiT only: a relative position bias table per block
    cfg.MODEL.VIT_PYRAMID.OUT_INDICES = [7, 11, 15, 23]  # blocks whose outputs become res2..res5 (BEiT-L recipe)
    cfg.MODEL.VIT_PYRAMID.NECK_NORM = "BN"  # norm in the stride-4 branch: BN, SyncBN, GN (32 groups), "" (none)


register_tiny_sizes(
    "vit_pyramid",
    ["MODEL.VIT_PYRAMID.EMBED_DIM", "32", "MODEL.VIT_PYRAMID.DEPTH", "4", "MODEL.VIT_PYRAMID.NUM_HEADS", "2",
     "MODEL.VIT_PYRAMID.IMG_SIZE", "64", "MODEL.VIT_PYRAMID.OUT_INDICES", "[0, 1, 2, 3]"],
    [(BACKBONE_REGISTRY, "ViTPyramid")],
)  # fmt: skip
