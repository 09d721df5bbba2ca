"""Mask2Former's pixel decoder: a deformable-attention encoder over res3..res5, then an FPN down to res2.

State-dict layout as in the official model (prefixed `sem_seg_head.pixel_decoder.` in the full model):
input_proj.{i}.0 (1x1 conv) / input_proj.{i}.1 (GroupNorm), level 0 being the coarsest map;
transformer.level_embed; transformer.encoder.layers.{k}.{self_attn.*, norm1, linear1, linear2, norm2};
adapter_{j} / layer_{j} (lateral and output convs of the FPN, j = 1 for the finest map); mask_features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import nn

from ..backbone.base import ShapeSpec
from ..layers import Conv2d, c2_xavier_fill, group_norm
from ..ops.ms_deform_attn import MSDeformAttn
from ..position_encoding import PositionEmbeddingSine
from ..tiny import register_tiny_sizes
from .base import PIXEL_DECODER_REGISTRY


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention over all levels, then a ReLU feed-forward network."""

    def __init__(
        self, d_model: int, dim_feedforward: int, dropout: float, n_levels: int, n_heads: int, n_points: int
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        level_shapes: list[tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        attended = self.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask, level_shapes
        )
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(hidden))


class DeformableEncoder(nn.Module):
    """A stack of `DeformableEncoderLayer`s (the `layers` list of the official key layout)."""

    def __init__(self, layers: list[DeformableEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        level_shapes: list[tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask, level_shapes)
        return src


def encoder_reference_points(shapes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """S x 2 normalised (x, y) pixel centres of every level, levels concatenated in the given order."""
    points = []
    for height, width in shapes:
        ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], -1))
    return torch.cat(points, 0)


class DeformableTransformerEncoderOnly(nn.Module):
    """Flattens the levels, adds position + level embeddings, runs the encoder, splits the levels back."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        num_layers: int,
        dim_feedforward: int,
        dropout: float,
        n_levels: int,
        n_points: int,
    ) -> None:
        super().__init__()
        self.encoder = DeformableEncoder(
            [
                DeformableEncoderLayer(d_model, dim_feedforward, dropout, n_levels, n_heads, n_points)
                for _ in range(num_layers)
            ]
        )
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        # Deformable DETR: xavier for every matrix, then the attention modules' own scheme on top
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, sources: list[torch.Tensor], positions: list[torch.Tensor]) -> list[torch.Tensor]:
        """sources / positions: one N x C x H_l x W_l map per level -> the encoded maps, same shapes."""
        if len(sources) != self.level_embed.shape[0]:
            raise ValueError(f"expected {self.level_embed.shape[0]} levels, got {len(sources)}")
        batch = sources[0].shape[0]
        shapes = [(s.shape[-2], s.shape[-1]) for s in sources]  # ints; symbolic sizes while exporting
        device = sources[0].device
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device)
        level_start_index = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
        src = torch.cat([source.flatten(2).transpose(1, 2) for source in sources], 1)
        pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[level] for level, p in enumerate(positions)], 1
        )
        # no padding inside a batch here, so every level's valid ratio is 1 and the points are plain centres
        reference_points = encoder_reference_points(shapes, device, src.dtype)
        reference_points = reference_points[None, :, None, :].expand(batch, -1, len(sources), -1)
        # the levels' sizes go along as Python ints too: the attention cuts the levels by them, not by the tensor
        memory = self.encoder(src, pos, reference_points, spatial_shapes, level_start_index, level_shapes=shapes)
        parts = memory.split([h * w for h, w in shapes], dim=1)
        return [part.transpose(1, 2).reshape(batch, -1, h, w) for part, (h, w) in zip(parts, shapes, strict=True)]


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable-attention encoder on the coarse maps plus an FPN on the finer ones (Mask2Former)."""

    def __init__(
        self,
        *,
        input_shape: dict[str, ShapeSpec],
        transformer_dropout: float = 0.0,
        transformer_nheads: int = 8,
        transformer_dim_feedforward: int = 1024,
        transformer_enc_layers: int = 6,
        conv_dim: int = 256,
        mask_dim: int = 256,
        norm: str = "GN",
        transformer_in_features: tuple[str, ...] | list[str] = ("res3", "res4", "res5"),
        common_stride: int = 4,
        n_points: int = 4,
    ) -> None:
        super().__init__()
        by_stride = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in by_stride]  # fine to coarse
        missing = [name for name in transformer_in_features if name not in input_shape]
        if missing or not transformer_in_features:
            raise KeyError(
                f"pixel decoder: transformer features {list(transformer_in_features)} must be among {self.in_features}"
            )
        # coarse to fine: level 0 is the highest stride, as in the official model
        self.transformer_in_features = [name for name, _ in reversed(by_stride) if name in transformer_in_features]
        self.input_proj = nn.ModuleList()
        for name in self.transformer_in_features:
            conv = nn.Conv2d(input_shape[name].channels, conv_dim, kernel_size=1)
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.zeros_(conv.bias)
            # always GroupNorm here (whatever `norm` says), 32 groups when conv_dim allows
            self.input_proj.append(nn.Sequential(conv, group_norm(conv_dim, "GN")))
        self.transformer = DeformableTransformerEncoderOnly(
            d_model=conv_dim,
            n_heads=transformer_nheads,
            num_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            n_levels=len(self.transformer_in_features),
            n_points=n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.mask_dim = mask_dim
        # 1x1 as in the official Mask2Former checkpoints (MaskFormer v1's decoder used 3x3)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        c2_xavier_fill(self.mask_features)
        self.maskformer_num_feature_levels = 3  # the transformer decoder attends to the 3 coarsest maps
        self.common_stride = common_stride

        # FPN over the maps finer than the encoder's finest, down to common_stride; adapter_1 is the finest
        finest_encoded = min(input_shape[name].stride for name in self.transformer_in_features)
        self.fpn_features = [
            name for name, shape in by_stride if common_stride <= shape.stride < finest_encoded
        ]  # fine to coarse
        for index, name in enumerate(self.fpn_features, start=1):
            lateral = Conv2d(
                input_shape[name].channels, conv_dim, kernel_size=1, bias=not norm, norm=group_norm(conv_dim, norm)
            )
            output = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=not norm,
                norm=group_norm(conv_dim, norm),
                activation=F.relu,
            )
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"adapter_{index}", lateral)
            self.add_module(f"layer_{index}", output)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> MSDeformAttnPixelDecoder:
        """Keyword arguments from MODEL.SEM_SEG_HEAD.* and MODEL.MASK_FORMER.DROPOUT / NHEADS."""
        head = cfg.MODEL.SEM_SEG_HEAD
        heads = head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS
        return cls(
            input_shape={name: shape for name, shape in input_shape.items() if name in head.IN_FEATURES},
            transformer_dropout=cfg.MODEL.MASK_FORMER.DROPOUT,
            # Mask2Former gives the encoder the decoder's head count; the project's key may set its own
            transformer_nheads=cfg.MODEL.MASK_FORMER.NHEADS if heads is None else heads,
            transformer_dim_feedforward=head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
            transformer_enc_layers=head.TRANSFORMER_ENC_LAYERS,
            conv_dim=head.CONVS_DIM,
            mask_dim=head.MASK_DIM,
            norm=head.NORM,
            transformer_in_features=tuple(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            common_stride=head.COMMON_STRIDE,
            n_points=head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
        )

    def forward_features(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Backbone maps -> (mask_features N x mask_dim x H/4 x W/4, [stride 32, 16, 8 maps of conv_dim])."""
        device_type = features[self.transformer_in_features[0]].device.type
        # all of it in float32 under autocast, as the official decoder (sampling locations need the precision)
        with torch.autocast(device_type=device_type, enabled=False):
            sources = [
                proj(features[name].float())
                for proj, name in zip(self.input_proj, self.transformer_in_features, strict=True)
            ]
            positions = [self.pe_layer(source) for source in sources]
            maps = self.transformer(sources, positions)
            for index in range(len(self.fpn_features), 0, -1):
                lateral = getattr(self, f"adapter_{index}")(features[self.fpn_features[index - 1]].float())
                upsampled = F.interpolate(maps[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
                maps.append(self.fpn_level(index, lateral, upsampled))
            return self.mask_features(maps[-1]), maps[: self.maskformer_num_feature_levels]

    def fpn_level(self, index: int, lateral: torch.Tensor, upsampled: torch.Tensor) -> torch.Tensor:
        """One FPN step: the lateral map plus the upsampled coarser one, through the output conv."""
        return getattr(self, f"layer_{index}")(lateral + upsampled)


register_tiny_sizes(
    "msdeformattn",
    ["MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", "4",
     "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD", "64"],
    [(PIXEL_DECODER_REGISTRY, "MSDeformAttnPixelDecoder")],
)  # fmt: skip
