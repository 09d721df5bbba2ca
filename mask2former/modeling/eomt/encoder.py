"""EoMT's encoder: a timm ViT of one of two families, and what EoMT does with it that timm's own forward does not.

- `VisionTransformer` (DINOv2, plain ViTs): an absolute position embedding added to the patch tokens.
- `Eva` (DINOv3 `vit_*_patch16_dinov3*`, EVA-02): rotary position embeddings (RoPE) inside each block's attention,
  applied to the patch tokens only (timm skips the block's `num_prefix_tokens` first tokens: class and registers);
  DINOv3 has no absolute position embedding, EVA-02 has both.

`embed` turns images into tokens (prefix tokens first, then the patches) and, for Eva, the RoPE table of the
input's patch grid; `run_block` runs one block on tokens that may start with EoMT's queries, with an optional
attention mask. The queries get no rotation, as in the official model (its DINOv3 attention rotates the last
`patches` tokens only): the RoPE table is extended by identity rows (sine 0, cosine 1) for as many tokens as there
are queries, which leaves their query and key vectors exactly as they are.
"""

from __future__ import annotations

import torch
from fvcore.common.config import CfgNode
from torch import nn

from ...config import ConfigError


def build_vit(cfg: CfgNode) -> nn.Module:
    """MODEL.EOMT.ENCODER_NAME from timm, without weights, at PATCH_SIZE and IMG_SIZE, any input size accepted (the
    position embedding is interpolated to the input's grid, RoPE computed for it); EMBED_DIM / DEPTH / NUM_HEADS
    other than 0 replace the model's own. An Eva model is built with its final norm on the tokens (`norm`, not the
    pooled `fc_norm` of EVA-02's classifier): EoMT normalises every token before its heads."""
    import timm

    node = cfg.MODEL.EOMT
    sizes = {"embed_dim": node.EMBED_DIM, "depth": node.DEPTH, "num_heads": node.NUM_HEADS}
    kwargs = {key: int(value) for key, value in sizes.items() if value}
    name = node.ENCODER_NAME
    extra = {"use_fc_norm": False} if _timm_module(name) == "timm.models.eva" else {}
    try:
        vit = timm.create_model(
            name,
            pretrained=False,
            img_size=int(node.IMG_SIZE),
            patch_size=int(node.PATCH_SIZE),
            num_classes=0,
            dynamic_img_size=True,
            **extra,
            **kwargs,
        )
    except (RuntimeError, TypeError, ValueError, AssertionError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"MODEL.EOMT.ENCODER_NAME {name!r} with {kwargs}: timm refused it ({first}); name a timm ViT "
            "(timm.list_models('vit_*dinov2*'), timm.list_models('vit_*dinov3*'), timm.list_models('eva02_*'))"
        ) from None
    check_encoder(vit, name)
    return vit


def _timm_module(name: str) -> str | None:
    """The module of timm that defines model `name` (None for a name timm does not know: create_model says so)."""
    from timm.models import is_model, model_entrypoint

    return model_entrypoint(name).__module__ if is_model(name) else None


def is_rotary(vit: nn.Module) -> bool:
    """Whether `vit` is of timm's Eva family (RoPE in its blocks' attention)."""
    from timm.models.eva import Eva

    return isinstance(vit, Eva)


def check_encoder(vit: nn.Module, name: str) -> None:
    """ConfigError unless `vit` is a timm VisionTransformer or an Eva whose RoPE is one table for every block."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(vit, VisionTransformer) and not is_rotary(vit):
        raise ConfigError(
            f"MODEL.EOMT.ENCODER_NAME {name!r} builds a timm {type(vit).__name__}: EoMT runs timm's VisionTransformer "
            "(DINOv2, ViT) and Eva (DINOv3, EVA-02) encoders; name one of those"
        )
    if is_rotary(vit) and getattr(vit, "rope_mixed", False):
        raise ConfigError(
            f"MODEL.EOMT.ENCODER_NAME {name!r}: its RoPE differs per block (timm's 'mixed' RoPE), which EoMT does "
            "not run; name a DINOv3 or EVA-02 model"
        )


def embed(vit: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalised images -> (B x (prefix + patches) x C tokens, the RoPE table of the input's patch grid or None):
    patch embedding, class and register tokens, position embedding resized to the grid, patch dropout and the
    pre-norm, as the timm model's own forward does them."""
    if is_rotary(vit):
        tokens, rope = vit._pos_embed(vit.patch_embed(images))
        if rope is not None and rope.dim() != 2:
            raise ConfigError("an Eva encoder with patch dropout gives a RoPE table per image, which EoMT does not run")
        return vit.norm_pre(tokens), rope
    return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images)))), None


def query_rope(rope: torch.Tensor | None, num_queries: int) -> torch.Tensor | None:
    """The RoPE table for tokens that start with `num_queries` queries: identity rows before the patches' rows.

    timm's Eva attention rotates every token after the block's first `num_prefix_tokens` with one row each; with the
    queries in front there are `num_queries` more tokens before the patches, which must stay unrotated."""
    if rope is None or num_queries == 0:
        return rope
    half = rope.shape[-1] // 2  # timm's table: sines, then cosines
    identity = torch.cat((rope.new_zeros(num_queries, half), rope.new_ones(num_queries, half)), dim=-1)
    return torch.cat((identity, rope), dim=0)


def run_block(
    block: nn.Module, tokens: torch.Tensor, rope: torch.Tensor | None, attn_mask: torch.Tensor | None
) -> torch.Tensor:
    """One encoder block on `tokens` (RoPE table as `query_rope` gives it, for Eva); `attn_mask` is added to the
    attention logits (B x 1 x N x N, 0 or -inf), None for none."""
    if rope is not None:
        return block(tokens, rope=rope, attn_mask=attn_mask)
    return block(tokens) if attn_mask is None else block(tokens, attn_mask=attn_mask)
