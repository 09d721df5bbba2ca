"""Mask2Former's transformer decoder: queries attend to one feature level per layer, inside their masks.

Layer i uses level i % 3 (coarsest first): masked cross-attention (a query sees only the pixels its
previous mask prediction covers; a query whose mask covers nothing sees everything), then
self-attention among queries, then an FFN. Class and mask predictions are made before the first
layer and after every layer; the last is the output, the others are auxiliary outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import nn

from ..layers import c2_xavier_fill
from ..position_encoding import PositionEmbeddingSine
from ..tiny import register_tiny_sizes
from .base import TRANSFORMER_DECODER_REGISTRY


def _xavier(module: nn.Module) -> None:
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


def _with_pos(tensor: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return tensor if pos is None else tensor + pos


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, pre_norm: bool = False) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        _xavier(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor | None = None) -> torch.Tensor:
        source = self.norm(tgt) if self.pre_norm else tgt
        q = k = _with_pos(source, query_pos)
        tgt = tgt + self.dropout(self.self_attn(q, k, value=source)[0])
        return tgt if self.pre_norm else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, pre_norm: bool = False) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        _xavier(self)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        source = self.norm(tgt) if self.pre_norm else tgt
        attended = self.multihead_attn(
            query=_with_pos(source, query_pos), key=_with_pos(memory, pos), value=memory, attn_mask=memory_mask
        )[0]
        tgt = tgt + self.dropout(attended)
        return tgt if self.pre_norm else self.norm(tgt)


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0, pre_norm: bool = False) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        _xavier(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        source = self.norm(tgt) if self.pre_norm else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(source)))))
        return tgt if self.pre_norm else self.norm(tgt)


class MLP(nn.Module):
    """Linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == len(self.layers) - 1 else F.relu(layer(x))
        return x


def attention_mask_from(mask_logits: torch.Tensor, size: tuple[int, int], num_heads: int) -> torch.Tensor:
    """(N heads) x Q x HW boolean mask, True = blocked: pixels where the resized mask's sigmoid is below 0.5.

    A query whose mask blocks every pixel is unblocked entirely (otherwise its attention is undefined).
    """
    resized = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    blocked = resized.sigmoid().flatten(2) < 0.5
    blocked = blocked & ~blocked.all(-1, keepdim=True)  # no in-place boolean indexing: the graph exports as is
    return blocked.repeat_interleave(num_heads, dim=0).detach()


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 9,
        pre_norm: bool = False,
        mask_dim: int = 256,
        enforce_input_project: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dec_layers < 1:
            raise ValueError(f"the decoder needs at least one layer, got {dec_layers}")
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.num_feature_levels = 3
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout, pre_norm) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout, pre_norm) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout, pre_norm) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                conv = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                c2_xavier_fill(conv)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg: CfgNode, in_channels: int) -> MultiScaleMaskedTransformerDecoder:
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 2:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS counts the layers plus one; got {mf.DEC_LAYERS}, need >= 2")
        return cls(
            in_channels=in_channels,
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            hidden_dim=mf.HIDDEN_DIM,
            num_queries=mf.NUM_OBJECT_QUERIES,
            nheads=mf.NHEADS,
            dim_feedforward=mf.DIM_FEEDFORWARD,
            dec_layers=mf.DEC_LAYERS - 1,
            pre_norm=mf.PRE_NORM,
            mask_dim=cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            enforce_input_project=mf.ENFORCE_INPUT_PROJ,
            dropout=mf.DROPOUT,
        )

    def predict(
        self, queries: torch.Tensor, mask_features: torch.Tensor, target_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class logits N x Q x (K+1), mask logits N x Q x H x W, and the next layer's attention mask."""
        decoded = self.decoder_norm(queries).transpose(0, 1)
        class_logits = self.class_embed(decoded)
        mask_logits = torch.einsum("nqc,nchw->nqhw", self.mask_embed(decoded), mask_features)
        return class_logits, mask_logits, attention_mask_from(mask_logits, target_size, self.num_heads)

    def forward(self, x: list[torch.Tensor], mask_features: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
        if len(x) != self.num_feature_levels:
            raise ValueError(f"the decoder takes {self.num_feature_levels} feature levels, got {len(x)}")
        batch = x[0].shape[0]
        sources, positions, sizes = [], [], []
        for level, feature in enumerate(x):
            sizes.append(tuple(feature.shape[-2:]))
            positions.append(self.pe_layer(feature).flatten(2).permute(2, 0, 1))
            projected = self.input_proj[level](feature).flatten(2) + self.level_embed.weight[level][None, :, None]
            sources.append(projected.permute(2, 0, 1))  # HW x N x C
        query_pos = self.query_embed.weight[:, None].repeat(1, batch, 1)
        queries = self.query_feat.weight[:, None].repeat(1, batch, 1)

        predictions = []
        class_logits, mask_logits, attn_mask = self.predict(queries, mask_features, sizes[0])
        predictions.append((class_logits, mask_logits))
        for layer in range(self.num_layers):
            level = layer % self.num_feature_levels
            queries = self.transformer_cross_attention_layers[layer](
                queries, sources[level], memory_mask=attn_mask, pos=positions[level], query_pos=query_pos
            )
            queries = self.transformer_self_attention_layers[layer](queries, query_pos=query_pos)
            queries = self.transformer_ffn_layers[layer](queries)
            class_logits, mask_logits, attn_mask = self.predict(
                queries, mask_features, sizes[(layer + 1) % self.num_feature_levels]
            )
            predictions.append((class_logits, mask_logits))
        return {
            "pred_logits": predictions[-1][0],
            "pred_masks": predictions[-1][1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in predictions[:-1]],
        }


register_tiny_sizes(
    "masked_attention",
    ["MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.NHEADS", "4", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "6",
     "MODEL.MASK_FORMER.DEC_LAYERS", "3", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64"],
    [(TRANSFORMER_DECODER_REGISTRY, "MultiScaleMaskedTransformerDecoder")],
)  # fmt: skip
