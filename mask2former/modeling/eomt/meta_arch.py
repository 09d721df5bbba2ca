"""EoMT ("Your ViT is Secretly an Image Segmentation Model", Kerssies et al., CVPR 2025): a plain timm ViT whose
last NUM_BLOCKS blocks also carry NUM_QUERIES learned query tokens; a class head and a mask head on the queries and
an upscaler on the patch tokens give Mask2Former's outputs, so Mask2Former's criterion trains it and its semantic
inference reads it.

Training: before each of those blocks the current tokens predict masks (deep supervision); each query's mask, resized
to the patch grid, restricts what the query attends to in the block, kept with the block's probability
`attn_mask_probs[i]`, which `set_iteration` anneals from 1 to 0 (`mask_probability`). Inference: one prediction
after the last block and no mask.

Module names follow the official code (`q`, `class_head`, `mask_head`, `upscale`, `attn_mask_probs`); the ViT is
`backbone`, so SOLVER.BACKBONE_MULTIPLIER scales its learning rate. The encoder (timm VisionTransformer or Eva with
RoPE) is run through encoder.py; official and transformers checkpoints and encoder files are read by weights.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from timm.layers import LayerNorm2d
from torch import nn

from ...config import ConfigError
from ...io.checkpoints import read_checkpoint
from ..criterion import SetCriterion, build_criterion
from ..meta_arch import META_ARCH_REGISTRY, MaskFormer, normalized_batch
from ..point_sampling import SAMPLE_SEED, point_generator
from ..tiny import register_tiny_sizes
from .encoder import build_vit, embed, query_rope, run_block
from .weights import checkpoint_layout, convert_eomt_checkpoint, encoder_state, load_encoder_weights

QUERY_DRAWS = 2  # point_generator's purpose for the draws that drop query masks (0, 1: the criterion's points)


def mask_probability(block: int, iteration: int, num_blocks: int, max_iter: int, poly_power: float = 0.9) -> float:
    """The probability that block `block` (0 = the first with queries) keeps a query's attention mask at
    `iteration`: 1 before (block + 1) * max_iter / (num_blocks + 1), 0 from (block + 2) * max_iter / (num_blocks + 1),
    (1 - progress) ** poly_power between (the official schedule: each block anneals over one (NUM_BLOCKS + 1)-th of
    training, one after the other)."""
    start = (block + 1) * max_iter // (num_blocks + 1)
    end = (block + 2) * max_iter // (num_blocks + 1)
    if iteration < start:
        return 1.0
    if iteration >= end:
        return 0.0
    return (1.0 - (iteration - start) / (end - start)) ** poly_power


class ScaleBlock(nn.Module):
    """x2 upsampling: transposed conv 2x2 stride 2, GELU, depthwise conv 3x3, LayerNorm over channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels, bias=False)
        self.norm = LayerNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv2(self.act(self.conv1(x))))


@META_ARCH_REGISTRY.register()
class EoMT(nn.Module):
    """Encoder-only mask transformer for semantic segmentation: ViT with queries -> criterion / semantic inference."""

    def __init__(
        self,
        *,
        backbone: nn.Module,
        criterion: SetCriterion,
        num_classes: int,
        num_queries: int,
        num_blocks: int,
        pixel_mean: list[float],
        pixel_std: list[float],
        size_divisibility: int = 32,
        ignore_value: int = 255,
        image_format: str = "RGB",
        masked_attn_enabled: bool = True,
        annealing_enabled: bool = True,
        max_iter: int = 1,
        poly_power: float = 0.9,
        postprocess_before_inference: bool = False,
        backbone_weights: str = "",
        delta_weights: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < num_blocks <= len(backbone.blocks):
            raise ConfigError(
                f"MODEL.EOMT.NUM_BLOCKS {num_blocks}: the encoder has {len(backbone.blocks)} blocks; "
                f"set it between 1 and {len(backbone.blocks)}"
            )
        self.backbone = backbone
        self.criterion = criterion
        self.num_classes = num_classes
        self.num_q = num_queries
        self.num_blocks = num_blocks
        self.patch_size = int(backbone.patch_embed.patch_size[0])
        self.size_divisibility = math.lcm(max(1, size_divisibility), self.patch_size)
        self.ignore_value = ignore_value
        self.image_format = image_format
        self.masked_attn_enabled = masked_attn_enabled
        self.annealing_enabled = annealing_enabled
        self.max_iter = max_iter
        self.poly_power = poly_power
        self.postprocess_before_inference = postprocess_before_inference
        self.backbone_weights = backbone_weights
        self.delta_weights = delta_weights
        dim = backbone.embed_dim
        self.q = nn.Embedding(num_queries, dim)
        self.class_head = nn.Linear(dim, num_classes + 1)
        self.mask_head = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim)
        )
        upscales = max(1, int(math.log2(self.patch_size)) - 2)  # patch 16: two x2 steps, masks at stride 4
        self.upscale = nn.Sequential(*[ScaleBlock(dim) for _ in range(upscales)])
        # per block with queries: the probability of keeping a query's attention mask (set_iteration anneals it)
        self.register_buffer("attn_mask_probs", torch.ones(num_blocks))
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> EoMT:
        node = cfg.MODEL.EOMT
        loss_cfg = cfg.clone()
        loss_cfg.defrost()
        loss_cfg.MODEL.MASK_FORMER.DEC_LAYERS = int(node.NUM_BLOCKS) + 1  # one loss per prediction
        return cls(
            backbone=build_vit(cfg),
            criterion=build_criterion(loss_cfg),
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            num_queries=int(node.NUM_QUERIES),
            num_blocks=int(node.NUM_BLOCKS),
            pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
            pixel_std=list(cfg.MODEL.PIXEL_STD),
            size_divisibility=cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            image_format=cfg.INPUT.FORMAT,
            masked_attn_enabled=bool(node.MASKED_ATTN_ENABLED),
            annealing_enabled=bool(node.ATTN_MASK_ANNEALING_ENABLED),
            max_iter=int(cfg.SOLVER.MAX_ITER),
            poly_power=float(node.POLY_POWER),
            postprocess_before_inference=cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
            backbone_weights=cfg.MODEL.BACKBONE.WEIGHTS,
            delta_weights=bool(node.DELTA_WEIGHTS),
        )

    # the same targets and the same semantic inference as Mask2Former
    training_targets = MaskFormer.training_targets
    inference = MaskFormer.inference

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def class_head_keys(self) -> set[str]:
        """The state keys that depend on the class count."""
        return {"class_head.weight", "class_head.bias", "criterion.empty_weight"}

    # ---- weights (modeling/eomt/weights.py) ----

    def load_backbone_pretrained(self, path: str) -> str:
        """MODEL.BACKBONE.WEIGHTS: the encoder's timm (or Meta / transformers DINOv3ViT) checkpoint, fitted to
        IMG_SIZE / PATCH_SIZE, loaded strictly."""
        return load_encoder_weights(self.backbone, path)

    def convert_backbone_checkpoint(self, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> dict:
        """An encoder checkpoint's tensors under the encoder's keys (no `backbone.`), strictly."""
        return encoder_state(tensors, self.backbone, source)

    def convert_checkpoint_layout(self, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> dict:
        """A whole checkpoint in the official or transformers layout under this model's keys (others unchanged);
        with `delta_weights` its encoder is added to MODEL.BACKBONE.WEIGHTS."""
        base = None
        if self.delta_weights and checkpoint_layout(tensors) != "project":
            if not self.backbone_weights:
                raise ConfigError(
                    f"MODEL.EOMT.DELTA_WEIGHTS is set: {source}'s encoder is a difference to MODEL.BACKBONE.WEIGHTS, "
                    "which is empty; set it to the encoder weights the checkpoint was trained from"
                )

            def base() -> dict[str, torch.Tensor]:
                return encoder_state(read_checkpoint(self.backbone_weights), self.backbone, self.backbone_weights)

        return convert_eomt_checkpoint(tensors, self, source, base)

    def set_iteration(self, iteration: int) -> None:
        """Anneal the attention-mask probabilities for the training iteration `iteration` (0-based)."""
        if self.annealing_enabled:
            for block in range(self.num_blocks):
                probability = mask_probability(block, iteration, self.num_blocks, self.max_iter, self.poly_power)
                self.attn_mask_probs[block] = probability

    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor] | list[dict]:
        images = normalized_batch(batched_inputs, self.pixel_mean, self.pixel_std, self.size_divisibility)
        outputs = self.mask_outputs(images, [item.get(SAMPLE_SEED) for item in batched_inputs])
        if self.training:
            return self.criterion(outputs, self.training_targets(batched_inputs, images.shape[-2:]))
        return self.inference(batched_inputs, outputs, images.shape[-2:])

    def mask_outputs(self, images: torch.Tensor, sample_seeds: list[int | None] | None = None) -> dict:
        """Normalised padded images -> {"pred_logits": B x Q x (K + 1), "pred_masks": B x Q x H/4 x W/4 (patch 16),
        "aux_outputs": the same for each block with queries, in training with masked attention}. Each image's
        SAMPLE_SEED seeds which of its queries drop their mask (else torch's global RNG)."""
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        vit = self.backbone
        x, rope = embed(vit, images)
        first = len(vit.blocks) - self.num_blocks
        predictions = []
        for index, block in enumerate(vit.blocks):
            if index == first:
                x = torch.cat((self.q.weight[None].expand(x.shape[0], -1, -1), x), dim=1)
                rope = query_rope(rope, self.num_q)
            mask = None
            if index >= first and self.training and self.masked_attn_enabled:
                predictions.append(self._predict(vit.norm(x), grid))
                mask = self._attention_mask(predictions[-1]["pred_masks"], grid, x, index - first, sample_seeds)
            x = run_block(block, x, rope, mask)
        outputs = self._predict(vit.norm(x), grid)
        if predictions:
            outputs["aux_outputs"] = predictions
        return outputs

    def _predict(self, x: torch.Tensor, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Tokens (queries first) -> class logits of the queries and their mask logits on the upscaled patches."""
        queries = x[:, : self.num_q]
        patches = x[:, self.num_q + self.backbone.num_prefix_tokens :]
        patches = patches.transpose(1, 2).reshape(x.shape[0], -1, grid[0], grid[1])
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_head(queries), self.upscale(patches))
        return {"pred_logits": self.class_head(queries), "pred_masks": masks}

    def _attention_mask(
        self,
        mask_logits: torch.Tensor,
        grid: tuple[int, int],
        x: torch.Tensor,
        block: int,
        sample_seeds: list[int | None] | None = None,
    ) -> torch.Tensor | None:
        """B x 1 x N x N additive mask: each query sees the patches its mask covers (logit > 0 on the patch grid),
        every query and prefix token, and, with probability 1 - attn_mask_probs[block], everything; None when no
        query keeps its mask."""
        probability = float(self.attn_mask_probs[block])
        if probability <= 0.0:
            return None
        batch, tokens = x.shape[0], x.shape[1]
        covered = (F.interpolate(mask_logits, grid, mode="bilinear") > 0).flatten(2)
        if probability < 1.0:
            unmasked = self._query_draws(batch, block, sample_seeds, x.device) > probability
            covered = covered | unmasked[..., None]
        allowed = torch.ones(batch, tokens, tokens, dtype=torch.bool, device=x.device)
        allowed[:, : self.num_q, self.num_q + self.backbone.num_prefix_tokens :] = covered
        return torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, float("-inf"))[:, None]

    def _query_draws(
        self, batch: int, block: int, sample_seeds: list[int | None] | None, device: torch.device
    ) -> torch.Tensor:
        """B x Q uniform draws: from each image's sample seed and the block when every image has one."""
        if sample_seeds is None or any(seed is None for seed in sample_seeds):
            return torch.rand(batch, self.num_q, device=device)
        generators = [point_generator(seed, block, QUERY_DRAWS, device) for seed in sample_seeds]
        return torch.stack([torch.rand(self.num_q, generator=g, device=device) for g in generators])


register_tiny_sizes("eomt_meta_arch", [], [(META_ARCH_REGISTRY, "EoMT")])
