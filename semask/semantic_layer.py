"""SeMask's semantic layer (Jain et al., 2021, "SeMask: Semantically Masked Transformers").

After a backbone stage, `SemanticLayer` LayerNorms the stage's tokens and runs `NUM_SEM_BLOCKS`
`SemanticAttention` blocks, either inside non-overlapping windows or over the whole map (global). Each block
predicts a per-pixel class map (one channel per class) from the features, uses the similarity of the class
maps of two pixels as attention weights to mix the features, and adds the mixed features back through a
learnable gain:

    class_map = q(x)                         # N x K, the stage's class prediction (supervised as the prior)
    weights   = softmax(class_map @ k(x)^T)  # N x N inside a window (or the whole map), no scaling
    x         = x + gamma * dropout(res(weights @ v(x)))

Official behaviour (SeMask-Mask2Former/mask2former/modeling/backbone/semask_swin.py), the default here:
module names `norm1`, `class_injection.{i}.{mlp_cls_q, mlp_cls_k, mlp_v, mlp_res, gamma}` for windowed
(`SWSeMaskBlock`) and global (`SeMaskBlock`) layers alike; dropout 0.1; Kaiming-normal linear weights, zero
biases; gamma and `mlp_res` both start at zero; a windowed layer zero-pads the normalised map to multiples of
the window and the padded positions take part in the softmax as keys.

Two project options (MODEL.SEMASK.*, off by default):
- `res_init="kaiming"` (RES_PROJ_INIT): `mlp_res` keeps its Kaiming init. With the official init gamma and
  `mlp_res` are both zero, so neither gets a gradient (each is multiplied by the other) and the attention branch
  stays switched off for the whole of training: the layer is LayerNorm + class map. With Kaiming, gamma alone
  makes the layer start as the identity and the branch can learn.
- `mask_padding=True` (MASK_PADDING): padded positions are masked out of the softmax, so a token's result does
  not depend on how far its window runs past the map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mask2former.modeling.backbone.swin import window_merge, window_partition

RES_INITS = ("zeros", "kaiming")


class SemanticAttention(nn.Module):
    """One semantic-attention block: (B x N x C, key padding) -> (class map B x N x K, features B x N x C)."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.1, res_init: str = "zeros") -> None:
        super().__init__()
        if res_init not in RES_INITS:
            raise ValueError(f"res_init {res_init!r}: choose one of {', '.join(RES_INITS)}")
        self.res_init = res_init
        self.mlp_cls_q = nn.Linear(dim, num_classes)
        self.mlp_cls_k = nn.Linear(dim, num_classes)
        self.mlp_v = nn.Linear(dim, dim)
        self.mlp_res = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for linear in (self.mlp_cls_q, self.mlp_cls_k, self.mlp_v, self.mlp_res):
            nn.init.kaiming_normal_(linear.weight)
            nn.init.zeros_(linear.bias)
        if self.res_init == "zeros":
            nn.init.zeros_(self.mlp_res.weight)
        nn.init.zeros_(self.gamma)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: B x N x C (N: a window's or the whole map's tokens); key_padding: B x N, True = left out."""
        class_map = self.mlp_cls_q(x)
        scores = class_map @ self.mlp_cls_k(x).transpose(-2, -1)
        if key_padding is not None:
            scores = scores.masked_fill(key_padding[:, None, :], float("-inf"))
        mixed = scores.softmax(dim=-1) @ self.mlp_v(x)
        return class_map, x + self.gamma * self.proj_drop(self.mlp_res(mixed))


class SemanticLayer(nn.Module):
    """LayerNorm, then `num_blocks` SemanticAttention blocks in `window` x `window` windows, or over the whole
    map when `global_attention` (the official `SeMaskBlock`; `window` is then unused).

    forward(x B x (H W) x C, h, w) -> (class map B x K x H x W of the last block, features B x (H W) x C).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        window: int,
        num_blocks: int = 1,
        *,
        global_attention: bool = False,
        mask_padding: bool = False,
        res_init: str = "zeros",
    ) -> None:
        super().__init__()
        if num_blocks < 1 or window < 1:
            raise ValueError(f"a semantic layer needs >= 1 block and window >= 1, got {num_blocks} and {window}")
        self.window = window
        self.num_classes = num_classes
        self.global_attention = global_attention
        self.mask_padding = mask_padding
        self.norm1 = nn.LayerNorm(dim)
        self.class_injection = nn.ModuleList(
            SemanticAttention(dim, num_classes, res_init=res_init) for _ in range(num_blocks)
        )

    def extra_repr(self) -> str:
        where = "global" if self.global_attention else f"window={self.window}, mask_padding={self.mask_padding}"
        return f"{where}, classes={self.num_classes}"

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch, tokens, channels = x.shape
        if tokens != h * w:
            raise ValueError(f"{tokens} tokens do not form a {h} x {w} map")
        x = self.norm1(x)
        if self.global_attention:
            for block in self.class_injection:
                class_map, x = block(x)
            return class_map.transpose(1, 2).reshape(batch, -1, h, w), x
        window = self.window
        pad_h, pad_w = (-h) % window, (-w) % window
        grid = x.view(batch, h, w, channels)
        padding = None
        if pad_h or pad_w:
            grid = F.pad(grid, (0, 0, 0, pad_w, 0, pad_h))  # zeros after the norm, as the official code
            if self.mask_padding:
                valid = torch.zeros(1, h + pad_h, w + pad_w, 1, dtype=grid.dtype, device=grid.device)
                valid[:, :h, :w] = 1
                padding = (window_partition(valid, window)[..., 0] == 0).repeat(batch, 1)  # windows x window^2
        windows = window_partition(grid, window)
        for block in self.class_injection:
            class_map, windows = block(windows, padding)
        features = window_merge(windows, window, h + pad_h, w + pad_w)[:, :h, :w]
        class_map = window_merge(class_map, window, h + pad_h, w + pad_w)[:, :h, :w]
        return class_map.permute(0, 3, 1, 2).contiguous(), features.reshape(batch, tokens, channels)
