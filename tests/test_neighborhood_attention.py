"""Neighborhood attention: reference against masked full attention built position by position, the
operator's small-map rule (shrink_dilation; the pad rule is the module's, tests/test_dinat.py), chunking,
and the flex_attention path against the reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.attention.flex_attention as flex_module

from mask2former.modeling.ops import neighborhood_attention as na
from mask2former.modeling.ops.neighborhood_attention import (
    fit_window,
    neighborhood_attention,
    neighborhood_attention_flex,
    neighborhood_attention_reference,
    neighborhood_starts,
)


def brute_force(query, key, value, kernel, dilation, rpb):
    """Full attention where each query sees only its neighborhood, decided one position at a time."""
    batch, heads, height, width, dim = query.shape
    out = torch.zeros_like(query)

    def window(i: int, length: int) -> list[tuple[int, int]]:
        size, step = fit_window(length, kernel, dilation)
        remainder, index = i % step, i // step
        grid_length = len(range(remainder, length, step))
        start = min(max(index - size // 2, 0), grid_length - size)
        return [(remainder + (start + s) * step, start + s - index) for s in range(size)]

    for y in range(height):
        for x in range(width):
            scores = torch.full((batch, heads, height, width), float("-inf"), dtype=query.dtype)
            for ky, dy in window(y, height):
                for kx, dx in window(x, width):
                    score = (query[:, :, y, x] * key[:, :, ky, kx]).sum(-1) * dim**-0.5
                    if rpb is not None:
                        score = score + rpb[:, dy + kernel - 1, dx + kernel - 1]
                    scores[:, :, ky, kx] = score
            weights = scores.flatten(2).softmax(-1)
            out[:, :, y, x] = torch.einsum("bhn,bhnd->bhd", weights, value.flatten(2, 3))
    return out


def random_inputs(size, kernel, heads=2, dim=4, batch=2, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, heads, *size, dim)
    tensors = [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(3)]
    rpb = torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1, generator=generator, dtype=torch.float64)
    for tensor in (*tensors, rpb):
        tensor.requires_grad_(requires_grad)
    return (*tensors, rpb)


CASES = [
    ((5, 7), 3, 1),
    ((7, 9), 3, 2),
    ((9, 8), 5, 1),
    ((12, 13), 3, 4),
    ((10, 7), 3, 5),  # too small for dilation 5 on both axes: 3 rows / 2 columns per sub-grid
    ((4, 9), 5, 2),  # rows shorter than the kernel
]


@pytest.mark.parametrize("size,kernel,dilation", CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_reference_matches_masked_full_attention(size, kernel, dilation, with_bias) -> None:
    query, key, value, rpb = random_inputs(size, kernel)
    rpb = rpb if with_bias else None
    ours = neighborhood_attention_reference(query, key, value, kernel, dilation, rpb)
    torch.testing.assert_close(ours, brute_force(query, key, value, kernel, dilation, rpb))


def test_reference_gradients_are_exact() -> None:
    query, key, value, rpb = random_inputs((6, 7), 3, batch=1, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v, b: neighborhood_attention_reference(q, k, v, 3, 2, b),
        (query, key, value, rpb),
        eps=1e-6,
        atol=1e-5,
    )


def test_chunked_reference_equals_one_chunk_in_values_and_gradients(monkeypatch) -> None:
    inputs = random_inputs((9, 11), 3, requires_grad=True)
    grad_out = torch.randn(2, 2, 9, 11, 4, dtype=torch.float64)

    def run():
        out = neighborhood_attention_reference(*inputs[:3], 3, 2, inputs[3])
        return out, torch.autograd.grad(out, inputs, grad_out)

    whole, whole_grads = run()
    monkeypatch.setattr(na, "_CHUNK_ELEMENTS", 2 * 2 * 9 * 4 * 7)  # 7 queries per chunk, a ragged last one
    chunked, chunked_grads = run()
    torch.testing.assert_close(chunked, whole)
    for ours, expected in zip(chunked_grads, whole_grads, strict=True):
        torch.testing.assert_close(ours, expected)


def test_small_input_rule() -> None:
    # MODEL.DINAT.SMALL_MAP "shrink_dilation" (the default "pad" hands the operator maps that fit), DiNAT-L
    # stage 1 (stride 4): 640 px keeps dilation 14; 512 px fits 11; 256 px fits 5
    assert fit_window(160, 11, 14) == (11, 14)
    assert fit_window(128, 11, 14) == (11, 11)
    assert fit_window(64, 11, 14) == (11, 5)
    assert fit_window(8, 11, 1) == (8, 1)  # shorter than the kernel: the whole axis
    assert fit_window(30, 3, 1) == (3, 1)
    with pytest.raises(ValueError, match=">= 1"):
        fit_window(10, 0, 1)


def test_borders_shift_inwards_and_unfit_windows_are_refused() -> None:
    assert neighborhood_starts(7, 3, 1).tolist() == [0, 0, 1, 2, 3, 4, 4]
    assert neighborhood_starts(8, 3, 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="at least window x dilation = 22"):
        neighborhood_starts(20, 11, 2)


def test_bad_shapes_are_named() -> None:
    query, key, value, rpb = random_inputs((5, 5), 3)
    with pytest.raises(ValueError, match="B x heads x H x W x dim"):
        neighborhood_attention_reference(query[0], key[0], value[0], 3)
    with pytest.raises(ValueError, match="rpb must be"):
        neighborhood_attention_reference(query, key, value, 3, 1, rpb[:, :3, :3])
    with pytest.raises(ValueError, match="implementation"):
        neighborhood_attention(query, key, value, 3, implementation="natten")


@pytest.fixture
def flex_backward_on_cpu(monkeypatch):
    """flex_attention refuses autograd on CPU by a device guard; its eager math supports it, which lets
    these tests check the fused path's mask and score modifications (values and gradients) without a GPU."""
    monkeypatch.setattr(flex_module, "_validate_device", lambda *args: None)


@pytest.mark.parametrize("size,kernel,dilation", CASES)
def test_flex_path_matches_reference(size, kernel, dilation, flex_backward_on_cpu) -> None:
    inputs = random_inputs(size, kernel, requires_grad=True)
    grad_out = torch.randn(*inputs[0].shape, dtype=torch.float64)
    results = []
    for run in (neighborhood_attention_reference, neighborhood_attention_flex):
        out = run(*inputs[:3], kernel, dilation, inputs[3])
        results.append((out, torch.autograd.grad(out, inputs, grad_out)))
    (reference, reference_grads), (flex, flex_grads) = results
    torch.testing.assert_close(flex, reference)
    for name, ours, expected in zip(("query", "key", "value", "rpb"), flex_grads, reference_grads, strict=True):
        torch.testing.assert_close(ours, expected, msg=lambda text, name=name: f"grad of {name}: {text}")


def test_flex_path_without_bias_and_dispatch_on_cpu(monkeypatch) -> None:
    query, key, value, _ = random_inputs((7, 6), 3)
    expected = neighborhood_attention_reference(query, key, value, 3, 2)
    torch.testing.assert_close(neighborhood_attention_flex(query, key, value, 3, 2), expected)
    monkeypatch.setattr(na, "neighborhood_attention_flex", None)  # "auto" must not take the flex path on CPU
    torch.testing.assert_close(neighborhood_attention(query, key, value, 3, 2), expected)
