"""Deformable attention: the reference against a naive per-point bilinear loop, gradients, dtypes, the module."""

from __future__ import annotations

import pytest
import torch

from mask2former.modeling.ops.ms_deform_attn import MSDeformAttn, ms_deform_attn, ms_deform_attn_reference


def naive(value, shapes, starts, locations, weights):
    """Explicit bilinear interpolation with zero padding, pixel i's centre at (i + 0.5) / size."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = torch.zeros(batch, queries, heads, dim, dtype=value.dtype)
    for n in range(batch):
        for q in range(queries):
            for m in range(heads):
                for lvl in range(levels):
                    height, width = shapes[lvl]
                    for p in range(points):
                        x = float(locations[n, q, m, lvl, p, 0]) * width - 0.5
                        y = float(locations[n, q, m, lvl, p, 1]) * height - 0.5
                        x0, y0 = int(torch.floor(torch.tensor(x))), int(torch.floor(torch.tensor(y)))
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
    # a margin beyond [0, 1] so some points fall partly or wholly outside the maps
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=generator, dtype=dtype)
    weights = weights / weights.flatten(3).sum(-1)[..., None, None]
    return value, spatial, starts, locations, weights


CASES = [
    ([(5, 7)], 1, 1),
    ([(5, 7)], 3, 4),
    ([(4, 4), (2, 3)], 2, 2),
    ([(1, 1), (7, 5)], 1, 3),
    ([(6, 5), (3, 3), (1, 2)], 4, 4),
    ([(3, 8), (5, 7), (2, 2)], 3, 1),
]


@pytest.mark.parametrize("shapes,heads,points", CASES)
def test_reference_matches_naive_bilinear(shapes, heads, points) -> None:
    value, spatial, starts, locations, weights = random_inputs(shapes, heads, 3, points)
    locations[0, 0, 0, 0, 0] = torch.tensor([0.0, 1.0], dtype=locations.dtype)  # exactly on a corner
    ours = ms_deform_attn_reference(value, spatial, starts, locations, weights)
    expected = naive(value, shapes, starts.tolist(), locations, weights)
    assert ours.shape == (2, 3, heads * 3) and ours.dtype == torch.float64
    torch.testing.assert_close(ours, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ms_deform_attn(value, spatial, starts, locations, weights), ours)


def test_border_pixel_centres_and_outside_points() -> None:
    height, width = 5, 7
    value, spatial, starts, _, _ = random_inputs([(height, width)], 1, 2, 1, batch=1)
    special = [
        (0.0, 0.0),  # corners and edges: half the pixel lies outside, so a quarter/half weight
        (1.0, 1.0),
        (0.0, 0.5),
        (1.0, 0.3),
        (0.5 / width, 0.5 / height),  # centre of pixel (0, 0): exactly its value
        (6.5 / width, 2.5 / height),  # centre of pixel (row 2, col 6)
        (-0.5 / width, 0.5),  # a pixel outside the left edge: nothing left
        (-0.25 / width, 0.5),  # a quarter-pixel outside: partial weight
        (1.0 + 0.5 / width, 0.5),
        (-0.3, 1.3),
        (0.5, 1.0 + 1.0 / height),
    ]
    locations = torch.tensor(special, dtype=torch.float64).view(1, len(special), 1, 1, 1, 2)
    weights = torch.ones(1, len(special), 1, 1, 1, dtype=torch.float64)
    ours = ms_deform_attn_reference(value, spatial, starts, locations, weights)
    torch.testing.assert_close(ours, naive(value, [(height, width)], [0], locations, weights), atol=1e-12, rtol=0)
    torch.testing.assert_close(ours[0, 4], value[0, 0, 0])
    torch.testing.assert_close(ours[0, 5], value[0, 2 * width + 6, 0])
    torch.testing.assert_close(ours[0, 0], 0.25 * value[0, 0, 0])
    for outside in (6, 8, 9, 10):  # zero up to the rounding of the location arithmetic
        assert ours[0, outside].abs().max() < 1e-12, outside
    assert ours[0, 7].abs().max() > 0


def test_gradcheck() -> None:
    value, spatial, starts, locations, weights = random_inputs([(3, 4), (2, 2)], 2, 2, 2, queries=2, batch=1)
    locations = locations.clamp(0.05, 0.95)  # inside the maps: finite differences do not cross the edge
    inputs = (value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn_reference(v, spatial, starts, loc, w), inputs, eps=1e-6, atol=1e-5
    )


def test_bfloat16_close_to_float32() -> None:
    value, spatial, starts, locations, weights = random_inputs([(8, 8), (4, 4)], 2, 8, 4, dtype=torch.float32)
    full = ms_deform_attn_reference(value, spatial, starts, locations, weights)
    half = ms_deform_attn_reference(value.bfloat16(), spatial, starts, locations.bfloat16(), weights.bfloat16())
    assert half.dtype == torch.bfloat16
    # bf16 carries ~3 significant digits, and bf16 locations shift samples by up to ~1/256 of the map
    torch.testing.assert_close(half.float(), full, atol=0.05, rtol=0.05)
    mixed = ms_deform_attn_reference(value.bfloat16(), spatial, starts, locations, weights)
    assert mixed.dtype == torch.bfloat16


def test_shape_errors() -> None:
    value, spatial, starts, locations, weights = random_inputs([(4, 4), (2, 3)], 2, 3, 2)
    with pytest.raises(ValueError, match="cover"):
        ms_deform_attn(value[:, :-1], spatial, starts, locations, weights)
    with pytest.raises(ValueError, match="levels"):
        ms_deform_attn(value, spatial[:1], starts[:1], locations, weights)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, spatial, starts, locations, weights[..., :1])


def test_module_initialisation_and_shapes() -> None:
    module = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=3)
    names = {name for name, _ in module.named_children()}
    assert names == {"sampling_offsets", "attention_weights", "value_proj", "output_proj"}
    assert module.sampling_offsets.out_features == 4 * 2 * 3 * 2 and module.attention_weights.out_features == 4 * 2 * 3
    assert module.sampling_offsets.weight.abs().max() == 0 and module.attention_weights.weight.abs().max() == 0
    bias = module.sampling_offsets.bias.view(4, 2, 3, 2)
    torch.testing.assert_close(bias[:, 0, 2], 3 * bias[:, 0, 0])  # point k at distance k + 1
    torch.testing.assert_close(bias[:, 1], bias[:, 0])  # the same on every level
    torch.testing.assert_close(bias[:, 0, 0], torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    shapes = torch.tensor([[4, 4], [2, 2]])
    starts = torch.tensor([0, 16])
    query = torch.randn(2, 5, 32)
    out = module(query, torch.rand(2, 5, 2, 2), torch.randn(2, 20, 32), shapes, starts)
    assert out.shape == (2, 5, 32) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="reference_points"):
        module(query, torch.rand(2, 5, 3, 2), torch.randn(2, 20, 32), shapes, starts)


def identity_module(offset_xy: tuple[float, float]) -> MSDeformAttn:
    """One head, level and point; identity projections; every query samples reference + offset_xy pixels."""
    module = MSDeformAttn(d_model=4, n_levels=1, n_heads=1, n_points=1)
    with torch.no_grad():
        for linear in (module.value_proj, module.output_proj):
            linear.weight.copy_(torch.eye(4))
            linear.bias.zero_()
        module.sampling_offsets.bias.copy_(torch.tensor(offset_xy))
    return module


def test_module_offsets_are_in_pixels_of_each_level() -> None:
    height, width = 3, 5
    shapes, starts = torch.tensor([[height, width]]), torch.tensor([0])
    flat = torch.randn(1, height * width, 4)
    row, col = 1, 2
    reference = torch.tensor([(col + 0.5) / width, (row + 0.5) / height]).view(1, 1, 1, 2)
    query = torch.randn(1, 1, 4)
    for (dx, dy), target in (((0.0, 0.0), (row, col)), ((2.0, 0.0), (row, col + 2)), ((0.0, -1.0), (row - 1, col))):
        out = identity_module((dx, dy))(query, reference, flat, shapes, starts)
        torch.testing.assert_close(out[0, 0], flat[0, target[0] * width + target[1]])


def test_module_padding_mask_hides_values() -> None:
    module = MSDeformAttn(d_model=16, n_levels=1, n_heads=2, n_points=4)
    shapes, starts = torch.tensor([[4, 4]]), torch.tensor([0])
    flat = torch.randn(1, 16, 16)
    padding = torch.zeros(1, 16, dtype=torch.bool)
    padding[0, 12:] = True  # the last row is padding
    query, reference = torch.randn(1, 6, 16), torch.rand(1, 6, 1, 2)
    changed = flat.clone()
    changed[0, 12:] += 100.0
    first = module(query, reference, flat, shapes, starts, padding)
    second = module(query, reference, changed, shapes, starts, padding)
    torch.testing.assert_close(first, second)


def test_module_backward_reaches_every_projection() -> None:
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    shapes, starts = torch.tensor([[4, 4], [2, 2]]), torch.tensor([0, 16])
    out = module(torch.randn(2, 5, 16), torch.rand(2, 5, 2, 2) * 0.8 + 0.1, torch.randn(2, 20, 16), shapes, starts)
    (out**2).sum().backward()
    for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
        assert getattr(module, name).weight.grad.abs().sum() > 0, name
