"""2-D neighborhood attention (Hassani et al., NAT / DiNAT): one definition, two implementations.

Each query attends to a kernel x kernel neighborhood of keys on its dilated sub-grid (the pixels that
share its row and column remainders modulo the dilation). Near the borders the neighborhood is shifted
inwards so that it always holds kernel x kernel keys. An optional relative position bias
(heads x (2 kernel - 1) x (2 kernel - 1)) is added to the scores, indexed by the key's offset from the
query in sub-grid steps.

Small maps. A dilated neighborhood needs kernel x dilation positions per axis (DiNAT-L in Mask2Former:
kernel 11, dilation 14 on the stride-4 map, i.e. inputs of 616 px), while this data trains on 512 crops
and is tested at 256..640. Two rules exist; the backbone chooses (MODEL.DINAT.SMALL_MAP, backbone/dinat.py):
- "pad" (the default): what NATTEN 0.14 and 0.15's NeighborhoodAttention2D module does, and so what the
  official DiNAT checkpoints were trained with (NATTEN 0.14). In the attention module, before the qkv
  projection, the B x H x W x C input is zero-padded at the bottom and the right to
  max(H, kernel x dilation) x max(W, kernel x dilation) (only when an axis is short; nothing otherwise);
  the padded tokens therefore carry the qkv bias as their key and value and are real keys for the
  queries near the bottom and right. Attention runs on the padded map with the dilation unchanged, the
  output is cropped back to H x W, then projected (the crop before the projection; the projection is per
  token, so the order does not matter). The padding is done by the module (dinat.NeighborhoodAttention2D),
  so both implementations here see a map that fits and never shrink anything. NATTEN >= 0.17 dropped
  the padding from its module and refuses such maps ("Input axes must be greater than or equal to the
  product of kernel size and dilation").
- "shrink_dilation": this operator's own rule, `fit_window`, applied when it is handed a map that does
  not fit: per axis the dilation shrinks to the largest that fits (length // kernel), as DiNAT itself
  sizes dilations to the map (ImageNet 224: stage-1 map 56, kernel 7, dilation 8), and an axis shorter
  than the kernel attends to all its positions. No fake tokens, but a neighborhood the checkpoints never
  saw: at a 512 input every query of DiNAT-L's dilation-14, -7 and -3 blocks attends elsewhere.
Once the map fits, NATTEN 0.14's kernels place windows and position biases exactly as here (their
get_window_start / get_pb_start: clamped on the query's sub-grid, bias indexed by sub-grid offset).

Implementations behind `neighborhood_attention`:
- "reference": pure PyTorch, trainable anywhere. Keys and values are gathered per query in chunks of
  queries, recomputed in the backward pass (activation checkpointing), so memory stays
  O(N x kernel^2) scores plus one chunk, never an N x N matrix.
- "flex": torch's flex_attention with the neighborhood as a block-sparse mask and the position bias as
  a score modification, compiled on CUDA. Chosen over NATTEN because NATTEN >= 0.20 has no position
  bias argument (DiNAT checkpoints carry one) and no CPU backward, and over a hand-written kernel
  because the compiled flex kernel already skips the masked-out blocks. CPU runs it eagerly (tests).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch.utils.checkpoint import checkpoint

IMPLEMENTATIONS = ("auto", "reference", "flex")
# Elements of gathered keys per chunk (batch x heads x queries x kernel^2 x dim), about 128 MiB in fp32.
_CHUNK_ELEMENTS = 1 << 25


def fit_window(length: int, kernel: int, dilation: int) -> tuple[int, int]:
    """(window, dilation) used along an axis of `length` for a `kernel` and a requested `dilation`.

    The "shrink_dilation" rule; a length of at least kernel x dilation (always so under "pad") keeps both.
    """
    if kernel < 1 or dilation < 1 or length < 1:
        raise ValueError(f"length, kernel and dilation must be >= 1, got {length}, {kernel} and {dilation}")
    window = min(kernel, length)
    return window, max(1, min(dilation, length // window))


def neighborhood_starts(length: int, window: int, dilation: int, device: torch.device | None = None) -> torch.Tensor:
    """For each position 0..length-1, the sub-grid index where its neighborhood starts (shifted at borders)."""
    if window < 1 or dilation < 1:
        raise ValueError(f"window and dilation must be >= 1, got {window} and {dilation}")
    positions = torch.arange(length, device=device)
    remainder = positions % dilation
    index = positions // dilation  # position within its sub-grid
    grid_length = (length - remainder + dilation - 1) // dilation
    # the shortest sub-grid is the one of the largest remainder present: computed from ints, not read from the
    # tensor (no data-dependent value, so the reference exports to ONNX)
    largest_remainder = min(dilation, length) - 1
    if (length - largest_remainder + dilation - 1) // dilation < window:
        raise ValueError(
            f"a length of {length} with dilation {dilation} leaves sub-grids shorter than the window {window}; "
            f"it needs at least window x dilation = {window * dilation} positions (fit_window chooses ones that fit)"
        )
    return torch.minimum(torch.clamp(index - window // 2, min=0), grid_length - window)


def neighborhood_indices(
    length: int, kernel: int, dilation: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis, after `fit_window`: (length x window key positions, length x window bias indices).

    Bias indices are offsets in sub-grid steps shifted by kernel - 1, i.e. columns of a (2 kernel - 1) table.
    """
    window, dilation = fit_window(length, kernel, dilation)
    positions = torch.arange(length, device=device)
    starts = neighborhood_starts(length, window, dilation, device)
    grid_index = starts[:, None] + torch.arange(window, device=device)[None, :]
    keys = grid_index * dilation + (positions % dilation)[:, None]
    bias = grid_index - (positions // dilation)[:, None] + (kernel - 1)
    return keys, bias


def _check_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: int, rpb) -> None:
    if query.dim() != 5 or key.shape != query.shape or value.shape[:-1] != query.shape[:-1]:
        raise ValueError(
            "expected query, key, value of shape B x heads x H x W x dim, got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    if rpb is not None and rpb.shape != (query.shape[1], 2 * kernel_size - 1, 2 * kernel_size - 1):
        raise ValueError(
            f"rpb must be heads x (2 kernel - 1) x (2 kernel - 1) = {(query.shape[1], 2 * kernel_size - 1)}^2, "
            f"got {tuple(rpb.shape)}"
        )


def _attend_chunk(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_index: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """query B x h x n x d, key/value B x h x N x d, key_index n x k^2, bias h x n x k^2 -> B x h x n x d."""
    scores = torch.einsum("bhnd,bhnkd->bhnk", query, key[:, :, key_index])
    if bias is not None:
        scores = scores + bias[None]
    return torch.einsum("bhnk,bhnkd->bhnd", scores.softmax(dim=-1), value[:, :, key_index])


def neighborhood_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """query, key, value: B x heads x H x W x dim -> B x heads x H x W x dim (pure PyTorch)."""
    _check_inputs(query, key, value, kernel_size, rpb)
    batch, heads, height, width, dim = query.shape
    scale = dim**-0.5 if scale is None else scale
    rows, row_bias = neighborhood_indices(height, kernel_size, dilation, query.device)
    cols, col_bias = neighborhood_indices(width, kernel_size, dilation, query.device)
    tokens = height * width
    key_index = (rows[:, None, :, None] * width + cols[None, :, None, :]).reshape(tokens, -1)
    flat_query = query.reshape(batch, heads, tokens, dim) * scale
    flat_key = key.reshape(batch, heads, tokens, dim)
    flat_value = value.reshape(batch, heads, tokens, value.shape[-1])
    bias = None
    if rpb is not None:
        bias_index = row_bias[:, None, :, None] * (2 * kernel_size - 1) + col_bias[None, :, None, :]
        bias = rpb.reshape(heads, -1)[:, bias_index.reshape(tokens, -1)]  # h x N x k^2
    per_query = batch * heads * key_index.shape[1] * max(dim, value.shape[-1])
    chunk = max(1, _CHUNK_ELEMENTS // per_query)
    recompute = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (query, key, value, rpb))
    outputs = []
    for start in range(0, tokens, chunk):
        part = slice(start, start + chunk)
        args = (flat_query[:, :, part], flat_key, flat_value, key_index[part], None if bias is None else bias[:, part])
        if recompute and chunk < tokens:
            outputs.append(checkpoint(_attend_chunk, *args, use_reentrant=False))
        else:
            outputs.append(_attend_chunk(*args))
    out = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
    return out.reshape(batch, heads, height, width, value.shape[-1])


def neighborhood_score_mods(height: int, width: int, kernel_size: int, dilation: int, device: torch.device):
    """(mask_mod, bias_index) for flex_attention over row-major H x W tokens, following `fit_window`.

    bias_index(q_idx, kv_idx) gives the flat index into a heads x (2 kernel - 1)^2 position-bias table.
    Indices are clamped so that evaluating the mods on padded positions (as compiled kernels may) stays
    in bounds.
    """
    row_window, row_dilation = fit_window(height, kernel_size, dilation)
    col_window, col_dilation = fit_window(width, kernel_size, dilation)
    row_starts = neighborhood_starts(height, row_window, row_dilation, device)
    col_starts = neighborhood_starts(width, col_window, col_dilation, device)
    table = 2 * kernel_size - 1

    def coordinates(index):
        row = torch.clamp(index // width, max=height - 1)
        return row, index % width

    def mask_mod(b, h, q_idx, kv_idx):
        q_row, q_col = coordinates(q_idx)
        k_row, k_col = coordinates(kv_idx)
        k_grid_row, k_grid_col = k_row // row_dilation, k_col // col_dilation
        row_start, col_start = row_starts[q_row], col_starts[q_col]
        same_grid = (k_row % row_dilation == q_row % row_dilation) & (k_col % col_dilation == q_col % col_dilation)
        in_rows = (k_grid_row >= row_start) & (k_grid_row < row_start + row_window)
        in_cols = (k_grid_col >= col_start) & (k_grid_col < col_start + col_window)
        return same_grid & in_rows & in_cols

    def bias_index(q_idx, kv_idx):
        q_row, q_col = coordinates(q_idx)
        k_row, k_col = coordinates(kv_idx)
        row_offset = torch.clamp(k_row // row_dilation - q_row // row_dilation + kernel_size - 1, 0, table - 1)
        col_offset = torch.clamp(k_col // col_dilation - q_col // col_dilation + kernel_size - 1, 0, table - 1)
        return row_offset * table + col_offset

    return mask_mod, bias_index


@lru_cache(maxsize=64)
def _block_mask(height: int, width: int, kernel_size: int, dilation: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    mask_mod, _ = neighborhood_score_mods(height, width, kernel_size, dilation, device)
    tokens = height * width
    return create_block_mask(mask_mod, None, None, tokens, tokens, device=device)


@lru_cache(maxsize=1)
def _compiled_flex_attention():
    import torch._dynamo
    from torch.nn.attention.flex_attention import flex_attention

    # One compiled kernel per (map size, dilation): DiNAT-L alone has 9 at one input size, and each test-time
    # scale adds more; past dynamo's default limit of 8 it would silently fall back to the unfused N x N path.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 128)
    return torch.compile(flex_attention, dynamic=False)


def neighborhood_attention_flex(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The same as the reference through flex_attention (compiled on CUDA, eager elsewhere)."""
    from torch.nn.attention.flex_attention import flex_attention

    _check_inputs(query, key, value, kernel_size, rpb)
    batch, heads, height, width, dim = query.shape
    block_mask = _block_mask(height, width, kernel_size, dilation, query.device)
    score_mod = None
    if rpb is not None:
        _, bias_index = neighborhood_score_mods(height, width, kernel_size, dilation, query.device)
        flat_rpb = rpb.reshape(heads, -1)

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + flat_rpb[h, bias_index(q_idx, kv_idx)]

    attend = _compiled_flex_attention() if query.is_cuda else flex_attention
    out = attend(
        query.reshape(batch, heads, height * width, dim),
        key.reshape(batch, heads, height * width, dim),
        value.reshape(batch, heads, height * width, value.shape[-1]),
        score_mod=score_mod,
        block_mask=block_mask,
        scale=scale,
    )
    return out.reshape(batch, heads, height, width, value.shape[-1])


def neighborhood_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    implementation: str = "auto",
) -> torch.Tensor:
    """2-D neighborhood attention on B x heads x H x W x dim tensors.

    implementation: "auto" (flex on CUDA, the reference elsewhere), "reference" or "flex".
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto":
        implementation = "flex" if query.is_cuda else "reference"
    run = neighborhood_attention_flex if implementation == "flex" else neighborhood_attention_reference
    return run(query, key, value, kernel_size, dilation, rpb, scale)
