"""Neighborhood attention reference against masked full attention built position by position."""

from __future__ import annotations

import pytest
import torch

from mask2former.modeling.ops.neighborhood_attention import neighborhood_attention_reference, neighborhood_starts


def brute_force(query, key, value, kernel, dilation, rpb):
    """Full attention where each query sees only its neighborhood, decided one position at a time."""
    batch, heads, height, width, dim = query.shape
    out = torch.zeros_like(query)

    def window(i: int, length: int) -> list[int]:
        remainder, index = i % dilation, i // dilation
        grid_length = len(range(remainder, length, dilation))
        start = min(max(index - kernel // 2, 0), grid_length - kernel)
        return [remainder + (start + step) * dilation for step in range(kernel)]

    for y in range(height):
        for x in range(width):
            scores = torch.full((batch, heads, height, width), float("-inf"), dtype=query.dtype)
            for ky in window(y, height):
                for kx in window(x, width):
                    score = (query[:, :, y, x] * key[:, :, ky, kx]).sum(-1) * dim**-0.5
                    if rpb is not None:
                        score = score + rpb[:, (ky - y) // dilation + kernel - 1, (kx - x) // dilation + kernel - 1]
                    scores[:, :, ky, kx] = score
            weights = scores.flatten(2).softmax(-1)
            out[:, :, y, x] = torch.einsum("bhn,bhnd->bhd", weights, value.flatten(2, 3))
    return out


@pytest.mark.parametrize("size,kernel,dilation", [((5, 7), 3, 1), ((7, 9), 3, 2), ((9, 8), 5, 1), ((12, 13), 3, 4)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_masked_full_attention(size, kernel, dilation, with_bias) -> None:
    generator = torch.Generator().manual_seed(0)
    shape = (2, 2, *size, 4)
    query, key, value = (torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(3))
    rpb = (
        torch.randn(2, 2 * kernel - 1, 2 * kernel - 1, generator=generator, dtype=torch.float64) if with_bias else None
    )
    ours = neighborhood_attention_reference(query, key, value, kernel, dilation, rpb)
    torch.testing.assert_close(ours, brute_force(query, key, value, kernel, dilation, rpb))


def test_gradients_reach_every_input() -> None:
    shape = (1, 2, 6, 6, 4)
    tensors = [torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    rpb = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v, b: neighborhood_attention_reference(q, k, v, 3, 2, b), (*tensors, rpb), eps=1e-6, atol=1e-5
    )


def test_borders_shift_inwards_and_small_inputs_are_refused() -> None:
    assert neighborhood_starts(7, 3, 1).tolist() == [0, 0, 1, 2, 3, 4, 4]
    assert neighborhood_starts(8, 3, 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="at least kernel x dilation = 22"):
        neighborhood_starts(20, 11, 2)
