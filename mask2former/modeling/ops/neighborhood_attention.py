"""2-D neighborhood attention (Hassani et al., NAT / DiNAT), pure PyTorch reference.

Each query attends to a kernel x kernel neighborhood of keys on its dilated sub-grid (pixels that
share its row and column remainders modulo the dilation). Near the borders the neighborhood is
shifted inwards so that it always holds kernel x kernel keys; this needs every sub-grid to be at
least `kernel` long, i.e. size >= kernel x dilation in each axis. An optional relative position
bias (heads x (2 kernel - 1) x (2 kernel - 1)) is added to the scores, indexed by the key's offset
from the query in sub-grid steps.

Memory is O(N x kernel^2): keys and values are gathered per query, never a full N x N score matrix.
"""

from __future__ import annotations

import torch


def neighborhood_starts(length: int, kernel: int, dilation: int, device: torch.device | None = None) -> torch.Tensor:
    """For each position 0..length-1, the sub-grid index where its neighborhood starts (shifted at borders)."""
    if kernel < 1 or dilation < 1:
        raise ValueError(f"kernel and dilation must be >= 1, got {kernel} and {dilation}")
    positions = torch.arange(length, device=device)
    remainder = positions % dilation
    index = positions // dilation  # position within its sub-grid
    grid_length = (length - remainder + dilation - 1) // dilation
    if int(grid_length.min()) < kernel:
        raise ValueError(
            f"a length of {length} with dilation {dilation} leaves sub-grids shorter than the kernel {kernel}; "
            f"inputs need at least kernel x dilation = {kernel * dilation} positions per axis"
        )
    return torch.minimum(torch.clamp(index - kernel // 2, min=0), grid_length - kernel)


def neighborhood_indices(
    length: int, kernel: int, dilation: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(length x kernel key positions, length x kernel bias indices in [0, 2 kernel - 2]) along one axis."""
    positions = torch.arange(length, device=device)
    starts = neighborhood_starts(length, kernel, dilation, device)
    steps = torch.arange(kernel, device=device)
    grid_index = starts[:, None] + steps[None, :]
    keys = grid_index * dilation + (positions % dilation)[:, None]
    bias = grid_index - (positions // dilation)[:, None] + (kernel - 1)
    return keys, bias


def neighborhood_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """query, key, value: B x heads x H x W x dim -> B x heads x H x W x dim."""
    batch, heads, height, width, dim = query.shape
    scale = dim**-0.5 if scale is None else scale
    rows, row_bias = neighborhood_indices(height, kernel_size, dilation, query.device)
    cols, col_bias = neighborhood_indices(width, kernel_size, dilation, query.device)
    # flat key index for every (query row, query col, kernel row, kernel col)
    flat = (rows[:, None, :, None] * width + cols[None, :, None, :]).reshape(height * width, -1)
    keys = key.reshape(batch, heads, height * width, dim)[:, :, flat]  # B x h x N x k^2 x dim
    values = value.reshape(batch, heads, height * width, dim)[:, :, flat]
    scores = torch.einsum("bhnd,bhnkd->bhnk", query.reshape(batch, heads, height * width, dim) * scale, keys)
    if rpb is not None:
        bias_index = (row_bias[:, None, :, None] * (2 * kernel_size - 1) + col_bias[None, :, None, :]).reshape(
            height * width, -1
        )
        scores = scores + rpb.reshape(heads, -1)[:, bias_index][None]
    out = torch.einsum("bhnk,bhnkd->bhnd", scores.softmax(dim=-1), values)
    return out.reshape(batch, heads, height, width, dim)


def neighborhood_attention(query, key, value, kernel_size: int, dilation: int = 1, rpb=None, scale=None):
    """2-D neighborhood attention; a fused GPU path can be dispatched here, the reference is the definition."""
    return neighborhood_attention_reference(query, key, value, kernel_size, dilation, rpb, scale)
