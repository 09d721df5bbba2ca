"""EoMT's weights: the encoder's pre-trained checkpoint (MODEL.BACKBONE.WEIGHTS) and whole EoMT checkpoints in the
official repository's and transformers' layouts (MODEL.WEIGHTS, tools/convert_checkpoint.py), converted strictly to
this project's keys (`backbone.*` the timm encoder, `q`, `class_head`, `mask_head`, `upscale`, `attn_mask_probs`).

Encoder files (`encoder_state`): timm's layout (`vit_*_dinov2`, `vit_*_dinov3*`, `eva02_*` state dicts), Meta's
original DINOv2 / DINOv3 files (through timm's own `checkpoint_filter_fn`) and transformers' DINOv3ViT layout
(`embeddings.patch_embeddings`, `layer.N.attention.q_proj`). The position embedding is resampled to the model's
IMG_SIZE / PATCH_SIZE grid (bicubic, antialiased, prefix tokens kept) and the patch embedding to PATCH_SIZE (DINOv2's
14 to 16), with timm's `resample_abs_pos_embed` and `resample_patch_embed`, as timm does when the official code
builds its encoder; a classifier (`head.*`) is dropped; any other missing or unexpected key is an error naming them.

Whole checkpoints (`convert_eomt_checkpoint`), told apart by their key names:
- official (tue-mps/eomt, the Lightning module's `network.*`): `network.encoder.backbone.*` is the encoder, in
  timm's layout for DINOv2 and in transformers' DINOv3ViT layout for DINOv3 (`patch_embed.patch_embeddings`,
  `blocks.N.attention.q_proj`, `layer_scale1.lambda1`, `mlp.up_proj`); `network.q`, `network.class_head`,
  `network.mask_head.{0,2,4}`, `network.upscale.N.{conv1,conv2,norm}` and `network.attn_mask_probs` are this
  project's names less `network.`; `network.encoder.pixel_mean / pixel_std` (0..1 scale) must be MODEL.PIXEL_MEAN /
  PIXEL_STD / 255. The official DINOv3 releases store the encoder as its difference to DINOv3 (`delta_weights`):
  MODEL.EOMT.DELTA_WEIGHTS adds MODEL.BACKBONE.WEIGHTS to it.
- transformers (`EomtForUniversalSegmentation`, `EomtDinov3ForUniversalSegmentation`): `embeddings.*`,
  `layers.N.*` (separate q / k / v projections), `layernorm`, `query`, `class_predictor`, `mask_head.fc1..3`,
  `upscale_block.block.N.{conv1,conv2,layernorm2d}`, `attn_mask_probs`.
`criterion.empty_weight` is derived from MODEL.MASK_FORMER.NO_OBJECT_WEIGHT and the class count: the model's own
is kept (the official loader drops the file's too). Keys no rule knows keep their names, so the load names them as
unexpected.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from ...io.checkpoints import CheckpointMismatchError, read_checkpoint
from ..backbone.timm_backbone import timm_filtered

logger = logging.getLogger(__name__)

OFFICIAL_PREFIX = "network."
OFFICIAL_ENCODER = "network.encoder.backbone."
OFFICIAL_PIXEL_STATS = ("network.encoder.pixel_mean", "network.encoder.pixel_std")
BACKBONE = "backbone."
EMPTY_WEIGHT = "criterion.empty_weight"
_CLASSIFIER = ("head.weight", "head.bias")

Tensors = dict[str, torch.Tensor]


class EncoderWeightsError(CheckpointMismatchError):
    """An encoder checkpoint that does not fit MODEL.EOMT.ENCODER_NAME; the message names the keys."""


# ---- layouts -----------------------------------------------------------------------------------------------------


def checkpoint_layout(keys: list[str] | Mapping[str, object]) -> str:
    """ "official" (tue-mps/eomt), "transformers" (EomtForUniversalSegmentation) or "project" (anything else)."""
    keys = list(keys)
    if any(key.startswith(OFFICIAL_PREFIX) for key in keys):
        return "official"
    if "query.weight" in keys and any(key.startswith("layers.") for key in keys):
        return "transformers"
    return "project"


def _encoder_layout(tensors: Mapping[str, torch.Tensor]) -> str:
    """How an encoder's own keys are named: "dinov3_hf" (transformers' DINOv3ViT: the official DINOv3 EoMT's
    encoder), "eomt_hf" (transformers' EoMT layers), "meta" (Meta's original DINOv2 / DINOv3 files) or "timm"."""
    if any(".patch_embeddings." in f".{key}" for key in tensors) and any(".o_proj." in key for key in tensors):
        return "dinov3_hf"
    if any(key.startswith("embeddings.patch_embeddings.projection.") for key in tensors):
        return "eomt_hf"
    if "storage_tokens" in tensors or "mask_token" in tensors or "register_tokens" in tensors:
        return "meta"
    return "timm"


def _rename(tensors: Tensors, rules: list[tuple[str, str]]) -> Tensors:
    """Each key through the first rule (regex, replacement) that matches it; keys no rule matches keep their name."""
    renamed = {}
    for key, value in tensors.items():
        for pattern, replacement in rules:
            if re.fullmatch(pattern, key):
                key = re.sub(pattern, replacement, key)
                break
        renamed[key] = value
    return renamed


# transformers' DINOv3ViT (also the official DINOv3 EoMT's encoder, with embeddings -> patch_embed, layer ->
# blocks) -> timm's Eva; the q / k / v projections are handled by `_merge_qkv`
_DINOV3_HF_RULES = [
    (r"(?:embeddings|patch_embed)\.cls_token", "cls_token"),
    (r"(?:embeddings|patch_embed)\.register_tokens", "reg_token"),
    (r"(?:embeddings|patch_embed)\.patch_embeddings\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"(?:model\.)?(?:layers?|blocks)\.(\d+)\.attention\.o_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"(?:model\.)?(?:layers?|blocks)\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)", r"blocks.\1.attn.\2_proj.\3"),
    (r"(?:model\.)?(?:layers?|blocks)\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.gamma_\2"),
    (r"(?:model\.)?(?:layers?|blocks)\.(\d+)\.mlp\.up_proj\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"(?:model\.)?(?:layers?|blocks)\.(\d+)\.mlp\.down_proj\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"(?:model\.)?(?:layers?|blocks)\.(\d+)\.(norm[12])\.(weight|bias)", r"blocks.\1.\2.\3"),
    (r"(?:layernorm|norm)\.(weight|bias)", r"norm.\1"),
]
# transformers' EoMT (DINOv2) layers -> timm's VisionTransformer
_EOMT_HF_RULES = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.register_tokens", "reg_token"),
    (r"embeddings\.position_embeddings\.weight", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"layers\.(\d+)\.attention\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)", r"blocks.\1.attn.\2_proj.\3"),
    (r"layers\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"layers\.(\d+)\.mlp\.(?:fc1|weights_in)\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"layers\.(\d+)\.mlp\.(?:fc2|weights_out)\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"layers\.(\d+)\.(norm[12])\.(weight|bias)", r"blocks.\1.\2.\3"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
]
# transformers' EoMT heads -> this project's
_HEAD_HF_RULES = [
    (r"query\.weight", "q.weight"),
    (r"class_predictor\.(weight|bias)", r"class_head.\1"),
    (r"mask_head\.fc1\.(weight|bias)", r"mask_head.0.\1"),
    (r"mask_head\.fc2\.(weight|bias)", r"mask_head.2.\1"),
    (r"mask_head\.fc3\.(weight|bias)", r"mask_head.4.\1"),
    (r"upscale_block\.block\.(\d+)\.(conv[12])\.(weight|bias)", r"upscale.\1.\2.\3"),
    (r"upscale_block\.block\.(\d+)\.layernorm2d\.(weight|bias)", r"upscale.\1.norm.\2"),
]
# what the files carry that no model keeps: pre-training's mask token, RoPE frequencies (recomputed)
_DROPPED = re.compile(r"(?:.*\.)?(?:mask_token|inv_freq|periods|bias_mask)|(?:rope|rope_embeddings)\..*")


def _merge_qkv(tensors: Tensors, vit: nn.Module) -> Tensors:
    """Separate q / k / v projections (`blocks.N.attn.{q,k,v}_proj.*`) in the encoder's own form: one `qkv`
    weight (and bias, or timm Eva's `q_bias` / `v_bias` with the key bias fixed at zero) when its attention is fused;
    left separate otherwise. A key bias that is not zero has no place in an Eva model: it stays, as unexpected."""
    own = vit.state_dict()
    out = dict(tensors)
    blocks = sorted({int(m.group(1)) for key in tensors if (m := re.match(r"blocks\.(\d+)\.attn\.q_proj\.", key))})
    for index in blocks:
        prefix = f"blocks.{index}.attn."
        parts = [f"{prefix}{name}_proj.weight" for name in "qkv"]
        if f"{prefix}qkv.weight" in own and all(part in out for part in parts):
            out[f"{prefix}qkv.weight"] = torch.cat([out.pop(part) for part in parts])
        biases = {name: f"{prefix}{name}_proj.bias" for name in "qkv"}
        if f"{prefix}qkv.bias" in own and all(key in out for key in biases.values()):
            out[f"{prefix}qkv.bias"] = torch.cat([out.pop(biases[name]) for name in "qkv"])
        elif f"{prefix}qkv.weight" in own:
            key_bias = out.get(biases["k"])
            if key_bias is not None and not bool(key_bias.any()):
                out.pop(biases["k"])
            for name in "qv":
                if biases[name] in out and f"{prefix}{name}_bias" in own:
                    out[f"{prefix}{name}_bias"] = out.pop(biases[name])
    return out


def _fit_embeddings(tensors: Tensors, vit: nn.Module) -> Tensors:
    """The position embedding resampled to the model's patch grid (bicubic, antialiased, the prefix tokens' rows
    kept), the patch embedding to its patch size, a (1, N, C) or (N, C) position table as (1, N, C)."""
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    out = dict(tensors)
    weight = out.get("patch_embed.proj.weight")
    size = tuple(vit.patch_embed.proj.weight.shape[-2:])
    if weight is not None and weight.dim() == 4 and tuple(weight.shape[-2:]) != size:
        out["patch_embed.proj.weight"] = resample_patch_embed(weight, list(size), interpolation="bicubic")
    pos = out.get("pos_embed")
    if pos is not None and getattr(vit, "pos_embed", None) is not None:
        pos = pos[None] if pos.dim() == 2 else pos
        prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
        grid = tuple(vit.patch_embed.grid_size)
        side = int(round((pos.shape[1] - prefix) ** 0.5))
        if side * side == pos.shape[1] - prefix and (side, side) != grid:
            pos = resample_abs_pos_embed(pos, list(grid), (side, side), prefix, interpolation="bicubic")
        out["pos_embed"] = pos
    return out


def _convert_encoder_keys(tensors: Tensors, vit: nn.Module) -> Tensors:
    """An encoder's tensors, in any layout `_encoder_layout` knows, under the timm encoder's names (not checked)."""
    if tensors and all(key.startswith(BACKBONE) for key in tensors):  # written by tools/convert_checkpoint.py
        tensors = {key.removeprefix(BACKBONE): value for key, value in tensors.items()}
    tensors = {key: value for key, value in tensors.items() if not _DROPPED.fullmatch(key)}
    layout = _encoder_layout(tensors)
    if layout == "dinov3_hf":
        tensors = _merge_qkv(_rename(tensors, _DINOV3_HF_RULES), vit)
    elif layout == "eomt_hf":
        tensors = _merge_qkv(_rename(tensors, _EOMT_HF_RULES), vit)
        if "reg_token" in tensors and tensors["reg_token"].shape[1] == 0 and "reg_token" not in vit.state_dict():
            tensors.pop("reg_token")  # transformers keeps an empty register table for models without registers
    elif layout == "meta":
        tensors = timm_filtered(tensors, vit)
    own = vit.state_dict()
    if "norm.weight" in own and "norm.weight" not in tensors and "fc_norm.weight" in tensors:
        tensors = {
            key.replace("fc_norm.", "norm.", 1) if key.startswith("fc_norm.") else key: v for key, v in tensors.items()
        }
    return _fit_embeddings(tensors, vit)


def _short(keys: list[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def encoder_state(tensors: Mapping[str, torch.Tensor], vit: nn.Module, source: str = "checkpoint") -> Tensors:
    """An encoder checkpoint's tensors as `vit`'s state dict (see the module doc); EncoderWeightsError naming the
    missing, unexpected and mis-shaped keys (a classifier `head.*` is dropped, not an error)."""
    converted = _convert_encoder_keys(dict(tensors), vit)
    converted = {key: value for key, value in converted.items() if key not in _CLASSIFIER}
    own = vit.state_dict()
    missing = [key for key in own if key not in converted]
    unexpected = [key for key in converted if key not in own]
    shapes = [
        f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
        for key, value in converted.items()
        if key in own and tuple(value.shape) != tuple(own[key].shape)
    ]
    if missing or unexpected or shapes:
        problems = [
            f"{len(keys)} {what}: {_short(keys)}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
            if keys
        ]
        hint = _encoder_hint(unexpected, vit)
        raise EncoderWeightsError(
            f"{source} does not fit the EoMT encoder ({type(vit).__name__}, {len(vit.blocks)} blocks of "
            f"{vit.embed_dim}): {'; '.join(problems)}. Give the checkpoint of MODEL.EOMT.ENCODER_NAME{hint}"
        )
    return {key: converted[key].to(own[key].dtype) for key in own}


def _encoder_hint(unexpected: list[str], vit: nn.Module) -> str:
    if any(key.endswith(("attn.q_bias", "attn.v_bias", "attn.q_proj.bias", "attn.v_proj.bias")) for key in unexpected):
        return " (its attention has q / v biases: a DINOv3 model of timm's *_dinov3_qkvb variant)"
    return " (its EMBED_DIM / DEPTH / NUM_HEADS) or name the model this file is of"


def load_encoder_weights(vit: nn.Module, path: str | Path) -> str:
    """MODEL.BACKBONE.WEIGHTS: read `path` (io/checkpoints), convert it (`encoder_state`), load it; a summary."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"MODEL.BACKBONE.WEIGHTS not found: {path}")
    state = encoder_state(read_checkpoint(path), vit, str(path))
    vit.load_state_dict(state, strict=True)
    return f"loaded {len(state)} tensors into the {type(vit).__name__} encoder"


# ---- whole checkpoints ------------------------------------------------------------------------------------------


def convert_eomt_checkpoint(
    tensors: Mapping[str, torch.Tensor],
    model: nn.Module,
    source: str = "checkpoint",
    delta_base: Callable[[], Tensors] | None = None,
) -> Tensors:
    """A whole EoMT checkpoint in the official or transformers layout under `model`'s keys; one in this project's
    layout unchanged. `delta_base`: the encoder weights the file's encoder is a difference to (MODEL.EOMT.
    DELTA_WEIGHTS), as `encoder_state` gives them; the sum is the encoder."""
    tensors = dict(tensors)
    layout = checkpoint_layout(tensors)
    if layout == "project":
        return tensors
    if layout == "official":
        _check_pixel_stats(tensors, model, source)
        encoder = {k.removeprefix(OFFICIAL_ENCODER): v for k, v in tensors.items() if k.startswith(OFFICIAL_ENCODER)}
        rest = {
            key.removeprefix(OFFICIAL_PREFIX) if key.startswith(OFFICIAL_PREFIX) else key: value
            for key, value in tensors.items()
            if not key.startswith(OFFICIAL_ENCODER) and key not in OFFICIAL_PIXEL_STATS
        }
    else:
        encoder_keys = re.compile(r"(?:embeddings|layers|layernorm|rope_embeddings)\..*")
        encoder = {key: value for key, value in tensors.items() if encoder_keys.fullmatch(key)}
        rest = _rename({k: v for k, v in tensors.items() if k not in encoder}, _HEAD_HF_RULES)
    converted = _convert_encoder_keys(encoder, model.backbone)
    if delta_base is not None:
        converted = _add_delta(converted, delta_base(), source)
    out = {BACKBONE + key: value for key, value in converted.items()}
    out.update(rest)
    if EMPTY_WEIGHT in model.state_dict():  # derived from the config; the official loader drops the file's too
        out[EMPTY_WEIGHT] = model.state_dict()[EMPTY_WEIGHT].clone()
    logger.info("%s: an EoMT checkpoint in the %s layout, converted to this project's keys", source, layout)
    return out


def _add_delta(delta: Tensors, base: Tensors, source: str) -> Tensors:
    """base + delta for every encoder key; a delta key the base lacks is an error naming it."""
    unknown = [key for key in delta if key not in base]
    if unknown:
        raise CheckpointMismatchError(
            f"{source}: MODEL.EOMT.DELTA_WEIGHTS adds its encoder to MODEL.BACKBONE.WEIGHTS, which lacks "
            f"{_short(unknown)}: give the encoder weights it was trained from"
        )
    return {key: value + delta[key].to(value.dtype) if key in delta else value for key, value in base.items()}


def _check_pixel_stats(tensors: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """CheckpointMismatchError when the official file's input normalisation (0..1 scale) is not the model's."""
    for key, own in zip(OFFICIAL_PIXEL_STATS, (model.pixel_mean, model.pixel_std), strict=True):
        stored = tensors.get(key)
        if stored is None:
            continue
        theirs = stored.flatten().double() * 255.0
        if theirs.shape != own.flatten().shape or not torch.allclose(theirs, own.flatten().double(), atol=0.01):
            name = "MODEL.PIXEL_MEAN" if key.endswith("mean") else "MODEL.PIXEL_STD"
            values = ", ".join(f"{value:.3f}" for value in theirs.tolist())
            raise CheckpointMismatchError(
                f"{source} normalises its input with {key.rsplit('.', 1)[-1]} [{values}] (0..255 scale, RGB), the "
                f"config with {name} {[round(v, 3) for v in own.flatten().tolist()]}: set {name} [{values}] "
                "(and INPUT.FORMAT RGB)"
            )
