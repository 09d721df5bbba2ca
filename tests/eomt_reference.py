"""An independent re-implementation of the EoMT forward, in plain torch, for the tests only: it reads a state dict in
the official repository's layout (tue-mps/eomt: `network.*`, the encoder a timm DINOv2 ViT or transformers'
DINOv3ViT) or in transformers' layout (`EomtForUniversalSegmentation`, `EomtDinov3ForUniversalSegmentation`) by those
layouts' own key names and computes what those models compute: the masks and class logits before each of the last
`num_blocks` blocks (with masked attention, each query's attention kept with probability 1 or dropped with 0) and
after the last. Written from reading the official models/eomt.py, models/vit.py, models/scale_block.py and
transformers' modeling_eomt.py / modeling_dinov3_vit.py; it shares no code with the project.

`official_state` / `transformers_state` make random state dicts of those layouts (tiny sizes), by the key names and
shapes the layouts' modules have. RoPE (DINOv3) is the evaluation-mode table: transformers' DINOv3ViT also rescales
its coordinates at random in training, which is not reproduced here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Dims:
    """A tiny EoMT: `encoder` "dinov2" (timm ViT, absolute positions) or "dinov3" (DINOv3ViT, RoPE)."""

    encoder: str = "dinov2"
    embed_dim: int = 32
    depth: int = 3
    num_heads: int = 2
    registers: int = 4
    patch: int = 16
    img_size: int = 64
    queries: int = 6
    num_blocks: int = 2
    classes: int = 5
    rope_theta: float = 100.0

    @property
    def grid(self) -> int:
        return self.img_size // self.patch

    @property
    def prefix(self) -> int:
        return 1 + self.registers

    @property
    def eps(self) -> float:  # timm's DINOv2 LayerNorm 1e-6; DINOv3ViT's 1e-5
        return 1e-6 if self.encoder == "dinov2" else 1e-5

    @property
    def upscales(self) -> int:
        return max(1, int(math.log2(self.patch)) - 2)


# ---- random state dicts by each layout's names -------------------------------------------------------------------


def _shapes_official(d: Dims) -> dict[str, tuple[int, ...]]:
    c, h = d.embed_dim, 4 * d.embed_dim
    enc = "network.encoder.backbone."
    shapes: dict[str, tuple[int, ...]] = {}
    if d.encoder == "dinov2":
        shapes |= {
            enc + "cls_token": (1, 1, c),
            enc + "reg_token": (1, d.registers, c),
            enc + "pos_embed": (1, d.grid * d.grid, c),
            enc + "patch_embed.proj.weight": (c, 3, d.patch, d.patch),
            enc + "patch_embed.proj.bias": (c,),
        }
        for i in range(d.depth):
            b = f"{enc}blocks.{i}."
            shapes |= {
                b + "norm1.weight": (c,),
                b + "norm1.bias": (c,),
                b + "attn.qkv.weight": (3 * c, c),
                b + "attn.qkv.bias": (3 * c,),
                b + "attn.proj.weight": (c, c),
                b + "attn.proj.bias": (c,),
                b + "ls1.gamma": (c,),
                b + "norm2.weight": (c,),
                b + "norm2.bias": (c,),
                b + "mlp.fc1.weight": (h, c),
                b + "mlp.fc1.bias": (h,),
                b + "mlp.fc2.weight": (c, h),
                b + "mlp.fc2.bias": (c,),
                b + "ls2.gamma": (c,),
            }
    else:  # transformers' DINOv3ViT, renamed by the official ViT wrapper: embeddings -> patch_embed, layer -> blocks
        shapes |= {
            enc + "patch_embed.cls_token": (1, 1, c),
            enc + "patch_embed.register_tokens": (1, d.registers, c),
            enc + "patch_embed.patch_embeddings.weight": (c, 3, d.patch, d.patch),
            enc + "patch_embed.patch_embeddings.bias": (c,),
        }
        for i in range(d.depth):
            shapes |= _dinov3_layer_shapes(f"{enc}blocks.{i}.", c, h)
    shapes |= {enc + "norm.weight": (c,), enc + "norm.bias": (c,)}
    shapes |= {"network.q.weight": (d.queries, c)}
    shapes |= {"network.class_head.weight": (d.classes + 1, c), "network.class_head.bias": (d.classes + 1,)}
    for j in (0, 2, 4):
        shapes |= {f"network.mask_head.{j}.weight": (c, c), f"network.mask_head.{j}.bias": (c,)}
    for j in range(d.upscales):
        u = f"network.upscale.{j}."
        shapes |= {
            u + "conv1.weight": (c, c, 2, 2),
            u + "conv1.bias": (c,),
            u + "conv2.weight": (c, 1, 3, 3),
            u + "norm.weight": (c,),
            u + "norm.bias": (c,),
        }
    return shapes


def _dinov3_layer_shapes(b: str, c: int, h: int) -> dict[str, tuple[int, ...]]:
    return {
        b + "norm1.weight": (c,),
        b + "norm1.bias": (c,),
        b + "attention.q_proj.weight": (c, c),
        b + "attention.q_proj.bias": (c,),
        b + "attention.k_proj.weight": (c, c),
        b + "attention.v_proj.weight": (c, c),
        b + "attention.v_proj.bias": (c,),
        b + "attention.o_proj.weight": (c, c),
        b + "attention.o_proj.bias": (c,),
        b + "layer_scale1.lambda1": (c,),
        b + "norm2.weight": (c,),
        b + "norm2.bias": (c,),
        b + "mlp.up_proj.weight": (h, c),
        b + "mlp.up_proj.bias": (h,),
        b + "mlp.down_proj.weight": (c, h),
        b + "mlp.down_proj.bias": (c,),
        b + "layer_scale2.lambda1": (c,),
    }


def _shapes_transformers(d: Dims) -> dict[str, tuple[int, ...]]:
    c, h = d.embed_dim, 4 * d.embed_dim
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.cls_token": (1, 1, c),
        "embeddings.register_tokens": (1, d.registers, c),
    }
    if d.encoder == "dinov2":
        shapes |= {
            "embeddings.patch_embeddings.projection.weight": (c, 3, d.patch, d.patch),
            "embeddings.patch_embeddings.projection.bias": (c,),
            "embeddings.position_embeddings.weight": (d.grid * d.grid, c),
        }
        for i in range(d.depth):
            b = f"layers.{i}."
            shapes |= {
                b + "norm1.weight": (c,),
                b + "norm1.bias": (c,),
                b + "norm2.weight": (c,),
                b + "norm2.bias": (c,),
            }
            for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                shapes |= {f"{b}attention.{name}.weight": (c, c), f"{b}attention.{name}.bias": (c,)}
            shapes |= {b + "layer_scale1.lambda1": (c,), b + "layer_scale2.lambda1": (c,)}
            shapes |= {b + "mlp.fc1.weight": (h, c), b + "mlp.fc1.bias": (h,)}
            shapes |= {b + "mlp.fc2.weight": (c, h), b + "mlp.fc2.bias": (c,)}
    else:
        shapes |= {"embeddings.patch_embeddings.weight": (c, 3, d.patch, d.patch)}
        shapes |= {"embeddings.patch_embeddings.bias": (c,)}
        for i in range(d.depth):
            shapes |= _dinov3_layer_shapes(f"layers.{i}.", c, h)
    shapes |= {"layernorm.weight": (c,), "layernorm.bias": (c,), "query.weight": (d.queries, c)}
    shapes |= {"class_predictor.weight": (d.classes + 1, c), "class_predictor.bias": (d.classes + 1,)}
    for j in (1, 2, 3):
        shapes |= {f"mask_head.fc{j}.weight": (c, c), f"mask_head.fc{j}.bias": (c,)}
    for j in range(d.upscales):
        u = f"upscale_block.block.{j}."
        shapes |= {u + "conv1.weight": (c, c, 2, 2), u + "conv1.bias": (c,), u + "conv2.weight": (c, 1, 3, 3)}
        shapes |= {u + "layernorm2d.weight": (c,), u + "layernorm2d.bias": (c,)}
    return shapes


def _random(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Values that make every part count: norm weights near 1, layer scales near 0.5, weights of std 1/sqrt(fan in)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=generator)
        if key.endswith(("norm1.weight", "norm2.weight", "norm.weight", "layernorm.weight", "layernorm2d.weight")):
            value = 1.0 + 0.2 * noise
        elif key.endswith(("gamma", "lambda1")):
            value = 0.5 + 0.1 * noise
        elif key.endswith("bias"):
            value = 0.1 * noise
        elif len(shape) >= 2 and not key.endswith(("token", "tokens", "pos_embed", "q.weight", "query.weight")):
            fan_in = math.prod(shape[1:]) if "conv1" not in key else shape[0] * math.prod(shape[2:])
            value = noise / math.sqrt(fan_in)
        else:
            value = noise
        state[key] = value
    return state


def official_state(d: Dims, seed: int = 0, empty_weight: bool = True) -> dict[str, torch.Tensor]:
    """A random state dict of the official Lightning module (`network.*`, `criterion.empty_weight`), with the
    masked-attention probabilities annealed to 0 (a finished run) and ImageNet normalisation."""
    state = _random(_shapes_official(d), seed)
    state["network.attn_mask_probs"] = torch.zeros(d.num_blocks)
    state["network.encoder.pixel_mean"] = torch.tensor(IMAGENET_MEAN).reshape(1, -1, 1, 1)
    state["network.encoder.pixel_std"] = torch.tensor(IMAGENET_STD).reshape(1, -1, 1, 1)
    if empty_weight:
        state["criterion.empty_weight"] = torch.cat((torch.ones(d.classes), torch.tensor([0.1])))
    return state


def transformers_state(d: Dims, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict of transformers' EoMT model (DINOv2) or EoMT-DINOv3 model."""
    state = _random(_shapes_transformers(d), seed)
    state["attn_mask_probs"] = torch.zeros(d.num_blocks)
    state["criterion.empty_weight"] = torch.cat((torch.ones(d.classes), torch.tensor([0.1])))
    return state


# ---- the forward -------------------------------------------------------------------------------------------------


def _linear(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))


def _layer_norm(x: torch.Tensor, sd: dict, name: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def _rope(d: Dims, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv3's RoPE (transformers' DINOv3ViTRopePositionEmbedding, evaluation mode): patch centres in [-1, 1],
    angles 2 pi * coordinate * base^(-4k / head_dim) for y then x, repeated twice -> cos, sin (patches x head_dim)."""
    head_dim = d.embed_dim // d.num_heads
    ys = (torch.arange(grid[0], dtype=torch.float32) + 0.5) / grid[0] * 2 - 1
    xs = (torch.arange(grid[1], dtype=torch.float32) + 0.5) / grid[1] * 2 - 1
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)
    inv_freq = 1.0 / d.rope_theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32)
    angles = (2 * math.pi * coords[:, :, None] * inv_freq[None, None, :]).flatten(1)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the last len(cos) tokens (the patches); the tokens before them (queries, class, registers) unrotated."""
    patches = cos.shape[0]
    head, tail = x[..., :-patches, :], x[..., -patches:, :]
    half = tail.shape[-1] // 2
    rotated = torch.cat((-tail[..., half:], tail[..., :half]), dim=-1)
    return torch.cat((head, tail * cos + rotated * sin), dim=-2)


def _attention(q, k, v, mask: torch.Tensor | None) -> torch.Tensor:  # noqa: ANN001
    """softmax(q k^T / sqrt(d)) v, with `mask` (B x N x N bool, True: may attend) for every head."""
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None], float("-inf"))
    return logits.softmax(dim=-1) @ v


def _heads(x: torch.Tensor, d: Dims) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], d.num_heads, -1).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def _block(sd: dict, b: str, x: torch.Tensor, mask, d: Dims, kind: str, rope) -> torch.Tensor:  # noqa: ANN001
    """One encoder block: "timm" (official DINOv2: fused qkv, ls1 / ls2), "eomt_hf" (transformers' EoMT layer:
    separate q / k / v, out_proj, layer_scale), "dinov3" (DINOv3ViT layer: RoPE on the patches, o_proj, up / down)."""
    y = _layer_norm(x, sd, b + "norm1", d.eps)
    if kind == "timm":
        qkv = _linear(y, sd, b + "attn.qkv").reshape(y.shape[0], y.shape[1], 3, d.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out, scale1, scale2 = b + "attn.proj", sd[b + "ls1.gamma"], sd[b + "ls2.gamma"]
    else:
        q, k, v = (_heads(_linear(y, sd, f"{b}attention.{n}_proj"), d) for n in "qkv")
        out = b + ("attention.out_proj" if kind == "eomt_hf" else "attention.o_proj")
        scale1, scale2 = sd[b + "layer_scale1.lambda1"], sd[b + "layer_scale2.lambda1"]
        if kind == "dinov3":
            q, k = _rotate(q, *rope), _rotate(k, *rope)
    x = x + scale1 * _linear(_merge(_attention(q, k, v, mask)), sd, out)
    y = _layer_norm(x, sd, b + "norm2", d.eps)
    if kind == "dinov3":
        y = _linear(F.gelu(_linear(y, sd, b + "mlp.up_proj")), sd, b + "mlp.down_proj")
    else:
        y = _linear(F.gelu(_linear(y, sd, b + "mlp.fc1")), sd, b + "mlp.fc2")
    return x + scale2 * y


def _predict(x: torch.Tensor, heads: dict, d: Dims, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries -> class logits; queries through the mask MLP x upscaled patch tokens -> mask logits."""
    q = x[:, : d.queries]
    classes = F.linear(q, heads["class_w"], heads["class_b"])
    patches = x[:, d.queries + d.prefix :].transpose(1, 2).reshape(x.shape[0], -1, *grid)
    for w1, b1, w2, nw, nb in heads["upscale"]:
        patches = F.conv_transpose2d(patches, w1, b1, stride=2)
        patches = F.conv2d(F.gelu(patches), w2, padding=1, groups=patches.shape[1])
        patches = F.layer_norm(patches.permute(0, 2, 3, 1), (patches.shape[1],), nw, nb, 1e-6).permute(0, 3, 1, 2)
    (w0, b0), (w2_, b2), (w4, b4) = heads["mask_mlp"]
    embedded = F.linear(F.gelu(F.linear(F.gelu(F.linear(q, w0, b0)), w2_, b2)), w4, b4)
    return torch.einsum("bqc,bchw->bqhw", embedded, patches), classes


def _query_mask(x: torch.Tensor, mask_logits: torch.Tensor, d: Dims, grid, probability: float) -> torch.Tensor:  # noqa: ANN001
    """B x N x N bool: everything allowed but the queries' attention to patches, where the mask (resized to the
    grid) is positive; with probability 0 every query's mask is dropped (the official draw rand() > 0)."""
    allowed = torch.ones(x.shape[0], x.shape[1], x.shape[1], dtype=torch.bool)
    if probability > 0:
        if probability < 1:
            raise NotImplementedError("the reference keeps each query's mask with probability 1 or 0 only")
        resized = F.interpolate(mask_logits, grid, mode="bilinear").flatten(2)
        allowed[:, : d.queries, d.queries + d.prefix :] = resized > 0
    return allowed


def _run(tokens, blocks, norm, heads, d: Dims, grid, probs, masked: bool) -> tuple[list, list]:  # noqa: ANN001
    """The official loop: queries joined before the last num_blocks blocks; with masked attention each of them
    first predicts (after the final norm) and masks the queries' attention; one prediction after the last block."""
    masks, classes = [], []
    first = len(blocks) - d.num_blocks
    x = tokens
    for index, block in enumerate(blocks):
        if index == first:
            x = torch.cat((heads["q"][None].expand(x.shape[0], -1, -1), x), dim=1)
        mask = None
        if masked and index >= first:
            mask_logits, class_logits = _predict(norm(x), heads, d, grid)
            masks.append(mask_logits)
            classes.append(class_logits)
            mask = _query_mask(x, mask_logits, d, grid, float(probs[index - first]))
        x = block(x, mask)
    mask_logits, class_logits = _predict(norm(x), heads, d, grid)
    return [*masks, mask_logits], [*classes, class_logits]


def official_forward(
    sd: dict[str, torch.Tensor], images: torch.Tensor, d: Dims, masked: bool = True
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The official EoMT on uint8-valued images (B x 3 x H x W, H and W multiples of the patch, at IMG_SIZE for the
    DINOv2 encoder's fixed position table): (mask logits, class logits) per prediction, the last after the last
    block. Normalisation as the official module: x / 255, then the file's pixel mean and std."""
    enc = "network.encoder.backbone."
    x = (images / 255.0 - sd["network.encoder.pixel_mean"]) / sd["network.encoder.pixel_std"]
    grid = (x.shape[-2] // d.patch, x.shape[-1] // d.patch)
    rope = None
    if d.encoder == "dinov2":
        patches = F.conv2d(x, sd[enc + "patch_embed.proj.weight"], sd[enc + "patch_embed.proj.bias"], stride=d.patch)
        patches = patches.flatten(2).transpose(1, 2) + sd[enc + "pos_embed"]  # registers: no position for prefix
        prefix = [sd[enc + "cls_token"], sd[enc + "reg_token"]]
        kind = "timm"
    else:
        w, b = sd[enc + "patch_embed.patch_embeddings.weight"], sd[enc + "patch_embed.patch_embeddings.bias"]
        patches = F.conv2d(x, w, b, stride=d.patch).flatten(2).transpose(1, 2)
        prefix = [sd[enc + "patch_embed.cls_token"], sd[enc + "patch_embed.register_tokens"]]
        kind, rope = "dinov3", _rope(d, grid)
    tokens = torch.cat([p.expand(x.shape[0], -1, -1) for p in prefix] + [patches], dim=1)
    blocks = [(lambda y, m, i=i: _block(sd, f"{enc}blocks.{i}.", y, m, d, kind, rope)) for i in range(d.depth)]

    def norm(y: torch.Tensor) -> torch.Tensor:
        return _layer_norm(y, sd, enc + "norm", d.eps)

    heads = {
        "q": sd["network.q.weight"],
        "class_w": sd["network.class_head.weight"],
        "class_b": sd["network.class_head.bias"],
        "mask_mlp": [(sd[f"network.mask_head.{j}.weight"], sd[f"network.mask_head.{j}.bias"]) for j in (0, 2, 4)],
        "upscale": [
            tuple(
                sd[f"network.upscale.{j}.{n}"]
                for n in ("conv1.weight", "conv1.bias", "conv2.weight", "norm.weight", "norm.bias")
            )
            for j in range(d.upscales)
        ],
    }
    return _run(tokens, blocks, norm, heads, d, grid, sd["network.attn_mask_probs"], masked)


def transformers_forward(
    sd: dict[str, torch.Tensor], images: torch.Tensor, d: Dims, masked: bool = True
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """transformers' EoMT (DINOv2) or EoMT-DINOv3 on uint8-valued images, normalised as its image processor does
    (x / 255, ImageNet mean and std); the same outputs as `official_forward`."""
    mean, std = torch.tensor(IMAGENET_MEAN).reshape(1, -1, 1, 1), torch.tensor(IMAGENET_STD).reshape(1, -1, 1, 1)
    x = (images / 255.0 - mean) / std
    grid = (x.shape[-2] // d.patch, x.shape[-1] // d.patch)
    rope = None
    if d.encoder == "dinov2":
        w, b = sd["embeddings.patch_embeddings.projection.weight"], sd["embeddings.patch_embeddings.projection.bias"]
        patches = F.conv2d(x, w, b, stride=d.patch).flatten(2).transpose(1, 2)
        patches = patches + sd["embeddings.position_embeddings.weight"][None]
        kind = "eomt_hf"
    else:
        w, b = sd["embeddings.patch_embeddings.weight"], sd["embeddings.patch_embeddings.bias"]
        patches = F.conv2d(x, w, b, stride=d.patch).flatten(2).transpose(1, 2)
        kind, rope = "dinov3", _rope(d, grid)
    prefix = [sd["embeddings.cls_token"], sd["embeddings.register_tokens"]]
    tokens = torch.cat([p.expand(x.shape[0], -1, -1) for p in prefix] + [patches], dim=1)
    blocks = [(lambda y, m, i=i: _block(sd, f"layers.{i}.", y, m, d, kind, rope)) for i in range(d.depth)]

    def norm(y: torch.Tensor) -> torch.Tensor:
        return _layer_norm(y, sd, "layernorm", d.eps)

    heads = {
        "q": sd["query.weight"],
        "class_w": sd["class_predictor.weight"],
        "class_b": sd["class_predictor.bias"],
        "mask_mlp": [(sd[f"mask_head.fc{j}.weight"], sd[f"mask_head.fc{j}.bias"]) for j in (1, 2, 3)],
        "upscale": [
            tuple(
                sd[f"upscale_block.block.{j}.{n}"]
                for n in ("conv1.weight", "conv1.bias", "conv2.weight", "layernorm2d.weight", "layernorm2d.bias")
            )
            for j in range(d.upscales)
        ],
    }
    return _run(tokens, blocks, norm, heads, d, grid, sd["attn_mask_probs"], masked)


def semantic_scores(mask_logits: torch.Tensor, class_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The official semantic inference of one crop: mask logits resized to the crop (bilinear), sigmoid, weighted by
    the class probabilities without the no-object class, summed over queries: B x K x H x W."""
    masks = F.interpolate(mask_logits, size, mode="bilinear").sigmoid()
    return torch.einsum("bqhw,bqc->bchw", masks, class_logits.softmax(dim=-1)[..., :-1])
