"""Triton deformable attention against the PyTorch reference: values and gradients, dtypes, border points, dispatch.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before they are
imported), so the shapes are kept small.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mask2former.modeling.ops import ms_deform_attn_triton as triton_ops
from mask2former.modeling.ops.ms_deform_attn import ms_deform_attn, ms_deform_attn_reference

pytestmark = pytest.mark.skipif(not triton_ops.TRITON_AVAILABLE, reason="triton is not importable")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REPO = Path(__file__).resolve().parents[1]


def make_inputs(shapes, batch, queries, heads, dim, points, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    spatial = torch.tensor(shapes, dtype=torch.long)
    starts = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    total = int(spatial.prod(1).sum())
    value = torch.randn(batch, total, heads, dim, generator=generator)
    # a margin beyond [0, 1]: some points lie partly or wholly outside their maps
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=generator)
    cast = [t.to(DEVICE, dtype) for t in (value, locations, weights)]
    return cast[0], spatial.to(DEVICE), starts.to(DEVICE), cast[1], cast[2]


def values_and_grads(fn, value, spatial, starts, locations, weights, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    out = fn(leaves[0], spatial, starts, leaves[1], leaves[2])
    grads = torch.autograd.grad(out, leaves, grad_out)
    return out, grads


def assert_matches_reference(value, spatial, starts, locations, weights, atol, rtol, block_q=None):
    """Kernel on the given inputs vs the fp32 reference on the same (rounded) values."""
    grad_out = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3], device=DEVICE)
    out, grads = values_and_grads(
        lambda *a: triton_ops.ms_deform_attn_triton(*a, block_q=block_q),
        value,
        spatial,
        starts,
        locations,
        weights,
        grad_out.to(value.dtype),
    )
    fp32 = [t.float() for t in (value, locations, weights)]
    expected, expected_grads = values_and_grads(
        ms_deform_attn_reference, fp32[0], spatial, starts, fp32[1], fp32[2], grad_out.to(value.dtype).float()
    )
    assert out.dtype == value.dtype and out.shape == expected.shape
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=rtol)
    for name, grad, want, like in zip(
        ("value", "sampling_locations", "attention_weights"),
        grads,
        expected_grads,
        (value, locations, weights),
        strict=True,
    ):
        assert grad.dtype == like.dtype and grad.shape == like.shape, name
        torch.testing.assert_close(grad.float(), want, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")
    return out, grads


# shapes, batch, queries, heads, dim, points, block_q (None = the launcher's choice)
CASES = [
    ([(5, 7)], 1, 5, 1, 3, 1, None),
    pytest.param([(5, 7), (3, 2), (1, 1)], 2, 13, 2, 8, 3, 4, marks=pytest.mark.slow),  # 13 queries in blocks of 4
    pytest.param([(4, 6), (5, 7), (3, 2), (1, 1)], 1, 7, 8, 32, 4, None, marks=pytest.mark.slow),
    pytest.param([(3, 2), (1, 1), (6, 5)], 2, 6, 1, 5, 4, 2, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("shapes,batch,queries,heads,dim,points,block_q", CASES)
def test_float32_matches_reference(shapes, batch, queries, heads, dim, points, block_q) -> None:
    inputs = make_inputs(shapes, batch, queries, heads, dim, points)
    out, _ = assert_matches_reference(*inputs, atol=1e-5, rtol=1e-5, block_q=block_q)
    assert out.abs().max() > 0


@pytest.mark.parametrize("dtype,tolerance", [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
@pytest.mark.slow
def test_half_precision_matches_reference_on_rounded_inputs(dtype, tolerance) -> None:
    value, spatial, starts, locations, weights = make_inputs([(5, 7), (3, 2), (1, 1)], 2, 9, 2, 8, 3, dtype=dtype)
    assert_matches_reference(value, spatial, starts, locations, weights, atol=tolerance, rtol=tolerance)
    # fp32 locations and weights with half values: sampled in fp32, gradients in each input's dtype
    assert_matches_reference(value, spatial, starts, locations.float(), weights.float(), atol=tolerance, rtol=tolerance)


def border_locations(height: int, width: int) -> list[tuple[float, float]]:
    return [
        (0.0, 0.0),  # map corners and edges: exactly on the border
        (1.0, 1.0),
        (0.0, 0.5),
        (1.0, 0.3),
        (0.5, 0.0),
        (0.5 / width, 0.5 / height),  # centre of pixel (0, 0)
        (-0.5 / width, 0.5),  # a whole pixel outside the left edge: its inside corners weigh zero
        (-0.25 / width, 0.5),  # within one pixel outside: the inside corners count
        (0.5, -0.7 / height),
        (1.0 + 0.3 / width, 1.0 + 0.9 / height),
        (1.0 + 0.5 / width, 0.5),
        (-1.2, 2.5),  # far outside (also on the 1x1 level)
        (3.0, 0.5),
        (1e6, -1e9),
        (float("inf"), 0.5),
        (-float("inf"), -float("inf")),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_border_and_outside_points(dtype) -> None:
    # power-of-2 sizes keep the location arithmetic exact, so both sides see the same corners at the edges
    shapes = [(4, 8), (1, 1)]
    special = border_locations(4, 8)
    value, spatial, starts, _, _ = make_inputs(shapes, 1, 1, 1, 3, 1, dtype=dtype)
    locations = torch.tensor(special, device=DEVICE).view(1, -1, 1, 1, 1, 2).expand(-1, -1, -1, 2, 2, -1)
    locations = locations.clone()
    locations[..., 1, :] += torch.tensor([0.1, -0.05], device=DEVICE)  # the second point moves a little
    weights = torch.rand(1, len(special), 1, 2, 2, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    finite = torch.isfinite(locations).all(-1).all(-1).all(-1).all(-1)[0]
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    # the reference is not defined for infinite locations (grid_sample gives nan): compare where finite
    out, (grad_value, grad_loc, grad_weights) = assert_matches_reference(
        value,
        spatial,
        starts,
        locations[:, finite].to(dtype),
        weights[:, finite].to(dtype),
        atol=tolerance,
        rtol=tolerance,
    )
    out_all, grads_all = values_and_grads(
        triton_ops.ms_deform_attn_triton,
        value,
        spatial,
        starts,
        locations.to(dtype),
        weights.to(dtype),
        torch.ones(1, len(special), 3, device=DEVICE, dtype=dtype),
    )
    # wholly outside, also at infinity: zero output, zero gradients for the point
    for index in (11, 12, 13, 14, 15):
        assert out_all[0, index].abs().max() == 0, index
        assert grads_all[1][0, index].abs().max() == 0 and grads_all[2][0, index].abs().max() == 0, index
    assert out_all[0, 7].abs().max() > 0  # a quarter-pixel outside still sees the edge pixel
    assert grads_all[1][0, 7, 0, 0, 0].abs().max() > 0
    torch.testing.assert_close(out_all[:, finite], out)


def test_dim_one_and_single_query() -> None:
    assert_matches_reference(*make_inputs([(3, 2), (2, 2)], 1, 1, 2, 1, 2), atol=1e-5, rtol=1e-5)


def test_non_contiguous_inputs() -> None:
    value, spatial, starts, locations, weights = make_inputs([(5, 7), (2, 3)], 1, 6, 2, 4, 2)
    # same numbers, other memory layouts
    value_t = value.transpose(2, 3).contiguous().transpose(2, 3)
    locations_t = locations.flip(1).contiguous().flip(1)
    expected = ms_deform_attn_reference(value, spatial, starts, locations, weights)
    out = triton_ops.ms_deform_attn_triton(value_t, spatial.cpu(), starts.cpu(), locations_t, weights)
    assert not value_t.is_contiguous()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_input_errors() -> None:
    value, spatial, starts, locations, weights = make_inputs([(4, 4), (2, 3)], 1, 3, 2, 4, 2)
    with pytest.raises(ValueError, match="cover"):
        triton_ops.ms_deform_attn_triton(value[:, :-1], spatial.cpu(), starts.cpu(), locations, weights)
    with pytest.raises(ValueError, match="attention_weights"):
        triton_ops.ms_deform_attn_triton(value, spatial, starts, locations, weights[..., :1])
    with pytest.raises(TypeError, match="float32"):
        triton_ops.ms_deform_attn_triton(value.double(), spatial, starts, locations, weights)
    with pytest.raises(ValueError, match="block_q"):
        triton_ops.ms_deform_attn_triton(value, spatial, starts, locations, weights, block_q=3)


@pytest.mark.skipif(DEVICE == "cuda", reason="CPU-only checks")
def test_cpu_tensors_need_interpreted_kernels(monkeypatch) -> None:
    value, spatial, starts, locations, weights = make_inputs([(4, 4)], 1, 3, 1, 4, 1)
    monkeypatch.setattr(triton_ops, "_INTERPRETED", False)  # as if imported without TRITON_INTERPRET
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        triton_ops.ms_deform_attn_triton(value, spatial, starts, locations, weights)


@pytest.mark.skipif(DEVICE == "cuda", reason="CPU-only checks")
def test_dispatch_on_cpu(monkeypatch) -> None:
    inputs = make_inputs([(4, 4), (2, 3)], 1, 3, 2, 4, 2)
    expected = ms_deform_attn_reference(*inputs)
    calls = []

    def spy(*args):
        calls.append(args)
        return triton_ops.MSDeformAttnTritonFunction.apply(*args)

    monkeypatch.setattr(triton_ops, "ms_deform_attn_triton", spy)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    # auto and reference on CPU tensors never reach the kernels, even when they could be interpreted
    torch.testing.assert_close(ms_deform_attn(*inputs), expected, atol=0, rtol=0)
    torch.testing.assert_close(ms_deform_attn(*inputs, implementation="reference"), expected, atol=0, rtol=0)
    assert not calls
    torch.testing.assert_close(ms_deform_attn(*inputs, implementation="triton"), expected, atol=1e-5, rtol=1e-5)
    assert len(calls) == 1
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ms_deform_attn(*inputs, implementation="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_ops, "TRITON_AVAILABLE", False)
    with pytest.raises(RuntimeError, match="triton package"):
        ms_deform_attn(*inputs, implementation="triton")
    with pytest.raises(ValueError, match="implementation"):
        ms_deform_attn(*inputs, implementation="cuda")
    assert len(calls) == 1


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")
@pytest.mark.gpu
def test_auto_uses_triton_on_cuda(monkeypatch) -> None:
    inputs = make_inputs([(8, 8), (4, 4)], 2, 50, 2, 16, 4)
    calls = []
    original = triton_ops.ms_deform_attn_triton
    monkeypatch.setattr(triton_ops, "ms_deform_attn_triton", lambda *a: calls.append(1) or original(*a))
    out = ms_deform_attn(*inputs)
    assert calls == [1]
    torch.testing.assert_close(out, ms_deform_attn_reference(*inputs), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_module_imports_without_triton() -> None:
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from mask2former.modeling.ops import ms_deform_attn_triton as m\n"
        "from mask2former.modeling.ops.ms_deform_attn import ms_deform_attn\n"
        "assert not m.TRITON_AVAILABLE\n"
        "v = torch.randn(1, 4, 1, 2)\n"
        "locations, weights = torch.rand(1, 3, 1, 1, 1, 2), torch.ones(1, 3, 1, 1, 1)\n"
        "args = (v, torch.tensor([[2, 2]]), torch.tensor([0]), locations, weights)\n"
        "assert ms_deform_attn(*args, implementation='auto').shape == (1, 3, 2)\n"
        "try:\n"
        "    m.ms_deform_attn_triton(*args)\n"
        "except RuntimeError as e:\n"
        "    assert 'triton' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
