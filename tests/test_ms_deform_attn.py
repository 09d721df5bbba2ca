"""Deformable attention: the reference against a naive per-point bilinear loop, gradients, dtypes."""

from __future__ import annotations

import pytest
import torch

from mask2former.modeling.ops.ms_deform_attn import MSDeformAttn, ms_deform_attn, ms_deform_attn_reference


def naive(value, shapes, starts, locations, weights):
    """Explicit bilinear interpolation with zero padding, pixel centres at (i + 0.5) / size."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = torch.zeros(batch, queries, heads, dim, dtype=value.dtype)
    for n in range(batch):
        for q in range(queries):
            for m in range(heads):
                for lvl in range(levels):
                    height, width = shapes[lvl]
                    for p in range(points):
                        x = locations[n, q, m, lvl, p, 0] * width - 0.5
                        y = locations[n, q, m, lvl, p, 1] * height - 0.5
                        x0, y0 = int(torch.floor(x)), int(torch.floor(y))
                        sample = torch.zeros(dim, dtype=value.dtype)
                        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= yy < height and 0 <= xx < width:
                                    sample += wy * wx * value[n, starts[lvl] + yy * width + xx, m]
                        out[n, q, m] += weights[n, q, m, lvl, p] * sample
    return out.reshape(batch, queries, heads * dim)


def random_inputs(shapes, heads, dim, points, queries=3, batch=2, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    spatial = torch.tensor(shapes, dtype=torch.long)
    starts = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    total = int(spatial.prod(1).sum())
    value = torch.randn(batch, total, heads, dim, generator=generator, dtype=dtype)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator, dtype=dtype) * 1.4 - 0.2
    locations[0, 0, 0, 0, 0] = torch.tensor([0.0, 1.0], dtype=dtype)  # exactly on the border
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=generator, dtype=dtype)
    weights = weights / weights.flatten(3).sum(-1)[..., None, None]
    return value, spatial, starts, locations, weights


@pytest.mark.parametrize(
    "shapes,heads,points", [([(5, 7)], 1, 1), ([(4, 4), (2, 3)], 2, 2), ([(6, 5), (3, 3), (1, 2)], 4, 4)]
)
def test_reference_matches_naive_bilinear(shapes, heads, points) -> None:
    value, spatial, starts, locations, weights = random_inputs(shapes, heads, 3, points)
    ours = ms_deform_attn_reference(value, spatial, starts, locations, weights)
    expected = naive(value, shapes, starts.tolist(), locations, weights)
    assert ours.shape == (2, 3, heads * 3)
    torch.testing.assert_close(ours, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ms_deform_attn(value, spatial, starts, locations, weights), ours)


def test_gradcheck() -> None:
    value, spatial, starts, locations, weights = random_inputs([(3, 4), (2, 2)], 2, 2, 2, queries=2, batch=1)
    locations = locations.clamp(0.05, 0.95)  # away from bilinear kinks for finite differences
    inputs = (value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn_reference(v, spatial, starts, loc, w), inputs, eps=1e-6, atol=1e-5
    )


def test_bfloat16_close_to_float32() -> None:
    value, spatial, starts, locations, weights = random_inputs([(8, 8), (4, 4)], 2, 8, 4, dtype=torch.float32)
    full = ms_deform_attn_reference(value, spatial, starts, locations, weights)
    half = ms_deform_attn_reference(value.bfloat16(), spatial, starts, locations.bfloat16(), weights.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=0.05, rtol=0.05)


def test_module_initialisation_and_shapes() -> None:
    module = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3)
    bias = module.sampling_offsets.bias.view(4, 2, 3, 2)
    assert torch.allclose(bias[:, 0, 2], 3 * bias[:, 0, 0])  # point k at distance k + 1
    assert torch.allclose(bias[0, 0, 0], torch.tensor([1.0, 0.0]))
    shapes = torch.tensor([[4, 4], [2, 2]])
    starts = torch.tensor([0, 16])
    query = torch.randn(2, 5, 32)
    out = module(query, torch.rand(2, 5, 2, 2), torch.randn(2, 20, 32), shapes, starts)
    assert out.shape == (2, 5, 32) and torch.isfinite(out).all()
