"""Multi-scale deformable attention as Triton kernels (forward and backward), same semantics as the reference.

`ms_deform_attn_triton` has `ms_deform_attn_reference`'s signature and definition: bilinear samples with pixel i's
centre at (i + 0.5) / n, each of the four corner taps outside its map contributing zero (grid_sample's zeros
padding), weighted and summed over levels and points. Differences from the reference: the sampling arithmetic and
the sums run in fp32 whatever the inputs' dtype (bf16 / fp16 values do not mean bf16 / fp16 locations); the
result is cast to value's dtype.

Layout: one program per (batch, block of BLOCK_Q queries) and head; it holds a BLOCK_Q x BLOCK_D tile (BLOCK_D the
channels of a head rounded up to a power of 2), so each gather reads a head's channels of one position, which are
contiguous in value (N x S x heads x dim). The backward recomputes the samples; grad_value is scattered with fp32
atomic adds, the location and weight gradients are reduced over the channels inside the program (no atomics).

Kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter: TRITON_INTERPRET=1 must be set before
this module is imported (Triton reads it when the kernels are decorated). Without Triton the module still imports,
with `TRITON_AVAILABLE` False.
"""

from __future__ import annotations

import torch

from .shapes import check_shapes

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

TRITON_AVAILABLE = triton is not None

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


if TRITON_AVAILABLE:

    @triton.jit
    def _ms_deform_attn_fwd_kernel(
        value_ptr,
        shapes_ptr,
        starts_ptr,
        loc_ptr,
        attn_ptr,
        out_ptr,
        num_queries,
        num_keys,
        HEADS: tl.constexpr,
        DIM: tl.constexpr,
        LEVELS: tl.constexpr,
        POINTS: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        q_blocks = tl.cdiv(num_queries, BLOCK_Q)
        pid = tl.program_id(0)
        head = tl.program_id(1)
        batch = pid // q_blocks
        q = (pid % q_blocks) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        d = tl.arange(0, BLOCK_D)
        q_mask = q < num_queries
        d_mask = d < DIM
        # (batch, query, head) row index into locations / weights / output; int64 against overflow
        row = (batch * num_queries + q).to(tl.int64) * HEADS + head
        value_base = value_ptr + batch.to(tl.int64) * num_keys * HEADS * DIM + head * DIM
        acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
        for level in range(LEVELS):
            height = tl.load(shapes_ptr + 2 * level).to(tl.int32)
            width = tl.load(shapes_ptr + 2 * level + 1).to(tl.int32)
            start = tl.load(starts_ptr + level).to(tl.int32)
            for point in range(POINTS):
                index = row * (LEVELS * POINTS) + level * POINTS + point
                weight = tl.load(attn_ptr + index, mask=q_mask, other=0.0).to(tl.float32)
                x = tl.load(loc_ptr + 2 * index, mask=q_mask, other=0.0).to(tl.float32) * width - 0.5
                y = tl.load(loc_ptr + 2 * index + 1, mask=q_mask, other=0.0).to(tl.float32) * height - 0.5
                # beyond one pixel outside every tap is outside anyway; clamping keeps the int conversion finite
                x = tl.minimum(tl.maximum(x, -2.0), width + 1.0)
                y = tl.minimum(tl.maximum(y, -2.0), height + 1.0)
                x_floor = tl.floor(x)
                y_floor = tl.floor(y)
                x_frac = x - x_floor
                y_frac = y - y_floor
                x0 = x_floor.to(tl.int32)
                y0 = y_floor.to(tl.int32)
                for corner in tl.static_range(4):
                    dy = corner // 2
                    dx = corner % 2
                    xc = x0 + dx
                    yc = y0 + dy
                    # dx / dy are compile-time 0 or 1: picks (1 - frac) or frac
                    wx = (1 - dx) + (2 * dx - 1) * x_frac
                    wy = (1 - dy) + (2 * dy - 1) * y_frac
                    valid = q_mask & (xc >= 0) & (xc < width) & (yc >= 0) & (yc < height)
                    position = tl.where(valid, start + yc * width + xc, 0).to(tl.int64)
                    tap = tl.load(
                        value_base + position[:, None] * (HEADS * DIM) + d[None, :],
                        mask=valid[:, None] & d_mask[None, :],
                        other=0.0,
                    ).to(tl.float32)
                    acc += (weight * wx * wy)[:, None] * tap
        out_mask = q_mask[:, None] & d_mask[None, :]
        tl.store(out_ptr + row[:, None] * DIM + d[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)

    @triton.jit
    def _ms_deform_attn_bwd_kernel(
        value_ptr,
        shapes_ptr,
        starts_ptr,
        loc_ptr,
        attn_ptr,
        grad_out_ptr,
        grad_value_ptr,
        grad_loc_ptr,
        grad_attn_ptr,
        num_queries,
        num_keys,
        HEADS: tl.constexpr,
        DIM: tl.constexpr,
        LEVELS: tl.constexpr,
        POINTS: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        q_blocks = tl.cdiv(num_queries, BLOCK_Q)
        pid = tl.program_id(0)
        head = tl.program_id(1)
        batch = pid // q_blocks
        q = (pid % q_blocks) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        d = tl.arange(0, BLOCK_D)
        q_mask = q < num_queries
        d_mask = d < DIM
        tile_mask = q_mask[:, None] & d_mask[None, :]
        row = (batch * num_queries + q).to(tl.int64) * HEADS + head
        key_offset = batch.to(tl.int64) * num_keys * HEADS * DIM + head * DIM
        value_base = value_ptr + key_offset
        grad_value_base = grad_value_ptr + key_offset
        grad_out = tl.load(grad_out_ptr + row[:, None] * DIM + d[None, :], mask=tile_mask, other=0.0).to(tl.float32)
        for level in range(LEVELS):
            height = tl.load(shapes_ptr + 2 * level).to(tl.int32)
            width = tl.load(shapes_ptr + 2 * level + 1).to(tl.int32)
            start = tl.load(starts_ptr + level).to(tl.int32)
            for point in range(POINTS):
                index = row * (LEVELS * POINTS) + level * POINTS + point
                weight = tl.load(attn_ptr + index, mask=q_mask, other=0.0).to(tl.float32)
                x = tl.load(loc_ptr + 2 * index, mask=q_mask, other=0.0).to(tl.float32) * width - 0.5
                y = tl.load(loc_ptr + 2 * index + 1, mask=q_mask, other=0.0).to(tl.float32) * height - 0.5
                # clamped only where every tap is outside, i.e. where all gradients are zero anyway
                x = tl.minimum(tl.maximum(x, -2.0), width + 1.0)
                y = tl.minimum(tl.maximum(y, -2.0), height + 1.0)
                x_floor = tl.floor(x)
                y_floor = tl.floor(y)
                x_frac = x - x_floor
                y_frac = y - y_floor
                x0 = x_floor.to(tl.int32)
                y0 = y_floor.to(tl.int32)
                sampled = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
                sampled_dx = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)  # d sample / d x (pixels)
                sampled_dy = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
                for corner in tl.static_range(4):
                    dy = corner // 2
                    dx = corner % 2
                    xc = x0 + dx
                    yc = y0 + dy
                    wx = (1 - dx) + (2 * dx - 1) * x_frac
                    wy = (1 - dy) + (2 * dy - 1) * y_frac
                    valid = q_mask & (xc >= 0) & (xc < width) & (yc >= 0) & (yc < height)
                    position = tl.where(valid, start + yc * width + xc, 0).to(tl.int64)
                    offsets = position[:, None] * (HEADS * DIM) + d[None, :]
                    tap_mask = valid[:, None] & d_mask[None, :]
                    tap = tl.load(value_base + offsets, mask=tap_mask, other=0.0).to(tl.float32)
                    sampled += (wx * wy)[:, None] * tap
                    sampled_dx += ((2 * dx - 1) * wy)[:, None] * tap
                    sampled_dy += ((2 * dy - 1) * wx)[:, None] * tap
                    tl.atomic_add(
                        grad_value_base + offsets, (weight * wx * wy)[:, None] * grad_out, mask=tap_mask, sem="relaxed"
                    )
                tl.store(grad_attn_ptr + index, tl.sum(grad_out * sampled, axis=1), mask=q_mask)
                # x_pix = loc_x * width - 0.5, so d / d loc_x = width * d / d x_pix
                grad_x = weight * tl.sum(grad_out * sampled_dx, axis=1) * width
                grad_y = weight * tl.sum(grad_out * sampled_dy, axis=1) * height
                tl.store(grad_loc_ptr + 2 * index, grad_x, mask=q_mask)
                tl.store(grad_loc_ptr + 2 * index + 1, grad_y, mask=q_mask)

    _INTERPRETED = not isinstance(_ms_deform_attn_fwd_kernel, triton.runtime.JITFunction)
else:
    _INTERPRETED = False


def _block_sizes(queries: int, dim: int, block_q: int | None, tile: int) -> tuple[int, int]:
    block_d = triton.next_power_of_2(dim)
    if block_q is None:
        # about `tile` elements per tile, never more queries than there are. With 4 warps, 512 (forward) and 256
        # (backward) compile for sm_90 to about 70 registers without spills; larger tiles spilled.
        block_q = max(1, min(64, tile // block_d, triton.next_power_of_2(max(queries, 1))))
    elif block_q < 1 or block_q & (block_q - 1):
        raise ValueError(f"block_q must be a power of 2, got {block_q}")
    return block_q, block_d


def _prepare(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    if not TRITON_AVAILABLE:
        raise RuntimeError("ms_deform_attn_triton needs triton, which is not importable here")
    check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    for name, tensor in (
        ("value", value),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if tensor.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")
    if sampling_locations.device != value.device or attention_weights.device != value.device:
        raise ValueError(
            f"value on {value.device}, sampling_locations on {sampling_locations.device}, "
            f"attention_weights on {attention_weights.device}: expected one device"
        )
    if value.device.type != "cuda" and not _INTERPRETED:
        raise RuntimeError(
            f"Triton kernels need CUDA tensors (got {value.device}), or TRITON_INTERPRET=1 set before "
            "mask2former.modeling.ops.ms_deform_attn_triton is imported, to run them in Triton's interpreter"
        )
    if spatial_shapes.device.type == "cpu":  # free to check here; on the GPU it would cost a sync
        total = int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())
        if total != value.shape[1]:
            raise ValueError(f"spatial_shapes cover {total} positions, value has {value.shape[1]}")
    spatial_shapes = spatial_shapes.to(device=value.device, dtype=torch.int64).contiguous()
    level_start_index = level_start_index.to(device=value.device, dtype=torch.int64).contiguous()
    return (
        value.contiguous(),
        spatial_shapes,
        level_start_index,
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
    )


def ms_deform_attn_triton_forward(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    block_q: int | None = None,
) -> torch.Tensor:
    """Forward kernel launch on contiguous inputs (see `ms_deform_attn_triton`); no autograd."""
    batch, keys, heads, dim = value.shape
    queries, levels, points = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    out = value.new_empty(batch, queries, heads * dim)
    if out.numel() == 0:
        return out
    block_q, block_d = _block_sizes(queries, dim, block_q, tile=512)
    grid = (batch * triton.cdiv(queries, block_q), heads)
    _ms_deform_attn_fwd_kernel[grid](
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        out,
        queries,
        keys,
        HEADS=heads,
        DIM=dim,
        LEVELS=levels,
        POINTS=points,
        BLOCK_Q=block_q,
        BLOCK_D=block_d,
    )
    return out


def ms_deform_attn_triton_backward(
    grad_out: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    block_q: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward kernel launch on contiguous inputs: (grad_value, grad_locations, grad_weights) in their dtypes."""
    batch, keys, heads, dim = value.shape
    queries, levels, points = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
    grad_loc = torch.zeros(sampling_locations.shape, dtype=torch.float32, device=value.device)
    grad_attn = torch.zeros(attention_weights.shape, dtype=torch.float32, device=value.device)
    if batch * queries * heads * dim > 0:
        block_q, block_d = _block_sizes(queries, dim, block_q, tile=256)
        grid = (batch * triton.cdiv(queries, block_q), heads)
        _ms_deform_attn_bwd_kernel[grid](
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            grad_out.contiguous(),
            grad_value,
            grad_loc,
            grad_attn,
            queries,
            keys,
            HEADS=heads,
            DIM=dim,
            LEVELS=levels,
            POINTS=points,
            BLOCK_Q=block_q,
            BLOCK_D=block_d,
        )
    return grad_value.to(value.dtype), grad_loc.to(sampling_locations.dtype), grad_attn.to(attention_weights.dtype)


class MSDeformAttnTritonFunction(torch.autograd.Function):
    """Autograd wrapper: gradients for value, sampling_locations and attention_weights."""

    @staticmethod
    def forward(
        ctx,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        block_q: int | None = None,
    ) -> torch.Tensor:
        inputs = _prepare(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        ctx.save_for_backward(*inputs)
        ctx.block_q = block_q
        return ms_deform_attn_triton_forward(*inputs, block_q=block_q)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_loc, grad_attn = ms_deform_attn_triton_backward(
            grad_out, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, ctx.block_q
        )
        return grad_value, None, None, grad_loc, grad_attn, None


def ms_deform_attn_triton(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    block_q: int | None = None,
) -> torch.Tensor:
    """Multi-scale deformable attention by the Triton kernels; arguments and result as `ms_deform_attn_reference`.

    value fp32 / fp16 / bf16; sampling_locations and attention_weights any of those (computed in fp32). On the GPU,
    spatial_shapes is trusted to cover value's positions (checking would sync). `block_q` (a power of 2) overrides
    the queries per program.
    """
    return MSDeformAttnTritonFunction.apply(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, block_q
    )
