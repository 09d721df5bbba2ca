#!/usr/bin/env python
"""Multi-scale deformable attention: the Triton kernels against the PyTorch reference, time and peak memory.

    python benchmarks/ms_deform_attn.py                  # the 512x512-input encoder shape and the S=5440 one
    python benchmarks/ms_deform_attn.py --check          # first the max abs differences to the reference
    python benchmarks/ms_deform_attn.py --levels 128x128,64x64,32x32 --batch 2 --dtypes bf16
    python benchmarks/ms_deform_attn.py --device cpu --small   # reference only, tiny shapes: a smoke run

Presets: "m2f512" = Mask2Former's pixel decoder on a 512x512 input (levels 64x64, 32x32, 16x16, S = 5376, batch 8);
"s5440" = four levels 64x64 ... 8x8 (S = 5440, batch 4), for comparison with timings quoted at that size.
Queries = S (encoder self-attention) unless --queries; 8 heads, 4 points, 32 channels per head unless overridden.
Passes: "fwd" (no autograd) and "fwd+bwd" (gradients for value, locations and weights). On the GPU: CUDA events
around each call after a warm-up, no synchronisation inside the timed loop, the median over --iters runs; peak
memory is the most allocated during the pass beyond its inputs. On the CPU: wall time, no memory figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from mask2former.modeling.ops.ms_deform_attn import ms_deform_attn_reference

PRESETS = {"m2f512": ("64x64,32x32,16x16", 8), "s5440": ("64x64,32x32,16x16,8x8", 4)}
SMALL = ("16x16,8x8,4x4", 1)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_levels(text: str) -> list[tuple[int, int]]:
    try:
        levels = [tuple(int(n) for n in item.lower().split("x")) for item in text.split(",")]
    except ValueError:
        levels = []
    if not levels or any(len(level) != 2 or min(level) < 1 for level in levels):
        raise argparse.ArgumentTypeError(f"levels must look like 64x64,32x32 (H x W each), got {text!r}")
    return levels


def make_inputs(levels, batch, queries, heads, points, dim, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.long)
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    total = int(shapes.prod(1).sum())
    value = torch.randn(batch, total, heads, dim, generator=generator)
    # reference points anywhere on the map plus offsets of a few pixels, as the trained model's
    reference = torch.rand(batch, queries, 1, 1, 1, 2, generator=generator)
    offsets = torch.randn(batch, queries, heads, len(levels), points, 2, generator=generator) * 2.0
    locations = reference + offsets / shapes.flip(-1).to(torch.float32)[None, None, None, :, None, :]
    weights = torch.randn(batch, queries, heads, len(levels) * points, generator=generator).softmax(-1)
    weights = weights.view(batch, queries, heads, len(levels), points)
    return (
        value.to(device, dtype),
        shapes.to(device),
        starts.to(device),
        locations.to(device, dtype),
        weights.to(device, dtype),
    )


def make_step(fn, inputs, backward: bool):
    value, shapes, starts, locations, weights = inputs
    if not backward:

        def forward() -> None:
            with torch.no_grad():
                fn(value, shapes, starts, locations, weights)

        return forward
    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    grad_out = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3], device=value.device)
    grad_out = grad_out.to(value.dtype)

    def forward_backward() -> None:
        out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
        torch.autograd.grad(out, leaves, grad_out)

    return forward_backward


def time_ms(step, warmup: int, iters: int, device: str) -> tuple[float, float | None]:
    """(median ms, peak MiB beyond what was allocated before, None on the CPU)."""
    for _ in range(warmup):
        step()
    if device != "cuda":
        times = []
        for _ in range(iters):
            begin = time.perf_counter()
            step()
            times.append((time.perf_counter() - begin) * 1000)
        return statistics.median(times), None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return statistics.median(start.elapsed_time(end) for start, end in events), peak


def reference_errors(triton_fn, inputs, dtype: torch.dtype) -> dict[str, tuple[float, float]]:
    """{name: (max abs difference, max abs reference)} of the output and the gradients of value, locations and
    weights, against the fp32 reference on the same (rounded) inputs."""
    value, shapes, starts, locations, weights = inputs
    grad_out = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3], device=value.device)
    grad_out = grad_out.to(dtype)
    results = []
    for fn, cast in ((triton_fn, lambda t: t), (ms_deform_attn_reference, lambda t: t.float())):
        leaves = [cast(t).detach().clone().requires_grad_() for t in (value, locations, weights)]
        out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
        grads = torch.autograd.grad(out, leaves, cast(grad_out))
        results.append([t.detach().float() for t in (out, *grads)])
        del out, grads, leaves
    names = ("out", "grad_value", "grad_loc", "grad_weight")
    return {
        name: ((ours - ref).abs().max().item(), ref.abs().max().item())
        for name, ours, ref in zip(names, *results, strict=True)
    }


# a kernel's error relative to the largest reference magnitude: within this it agrees with the reference
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def check(triton_fn, inputs, dtype: torch.dtype) -> tuple[bool, str, dict[str, tuple[float, float]]]:
    """(all within tolerance, the printed report, reference_errors' dict)."""
    errors = reference_errors(triton_fn, inputs, dtype)
    tolerance = TOLERANCE.get(dtype, TOLERANCE[torch.bfloat16])
    ok, parts = True, []
    for name, (diff, scale) in errors.items():
        scale = max(scale, 1e-12)
        ok &= diff <= tolerance * scale
        parts.append(f"{name} {diff:.2e} (max {scale:.2e})")
    return ok, ", ".join(parts), errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=[*PRESETS, "all"], default="all", help="shapes when --levels is not given")
    parser.add_argument("--levels", type=parse_levels, help="HxW per level, finest first, e.g. 64x64,32x32,16x16")
    parser.add_argument("--batch", type=int, help="batch size (default: the preset's)")
    parser.add_argument("--queries", type=int, help="queries per image (default: S, encoder self-attention)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--dim", type=int, default=32, help="channels per head")
    parser.add_argument("--dtypes", default="fp32,bf16", help=f"comma-separated, of {','.join(DTYPES)}")
    parser.add_argument("--passes", default="fwd,fwd+bwd", help="comma-separated: fwd, fwd+bwd")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--block-q", type=int, help="queries per Triton program (a power of 2; default: automatic)")
    parser.add_argument("--check", action="store_true", help="first compare with the reference; exit 1 on mismatch")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--small", action="store_true", help=f"tiny shapes ({SMALL[0]}, batch {SMALL[1]})")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("No CUDA device: nothing to benchmark (the Triton kernels need a GPU).")
        print("For a smoke run of the reference on the CPU: python benchmarks/ms_deform_attn.py --device cpu --small")
        return 0
    dtypes = [DTYPES[name] for name in args.dtypes.split(",")]
    passes = args.passes.split(",")
    if set(passes) - {"fwd", "fwd+bwd"}:
        parser.error(f"--passes takes fwd and/or fwd+bwd, got {args.passes!r}")

    if args.levels is not None or args.small:
        levels = args.levels or parse_levels(SMALL[0])
        default_batch = SMALL[1] if args.small else PRESETS["m2f512"][1]
        configs = [(levels, args.batch or default_batch)]
    else:
        names = list(PRESETS) if args.preset == "all" else [args.preset]
        configs = [(parse_levels(PRESETS[name][0]), args.batch or PRESETS[name][1]) for name in names]

    triton_fn = None
    if args.device == "cuda":
        from mask2former.modeling.ops import ms_deform_attn_triton as triton_ops

        if triton_ops.TRITON_AVAILABLE:

            def triton_fn(*inputs):
                return triton_ops.ms_deform_attn_triton(*inputs, block_q=args.block_q)

        else:
            print("triton is not importable: timing the reference only")
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    else:
        print("CPU: timing the reference only (the Triton kernels need a GPU)")

    failed = False
    rows = []
    for levels, batch in configs:
        total = sum(h * w for h, w in levels)
        queries = args.queries or total
        shape = (
            f"N{batch} L{len(levels)}({','.join(f'{h}x{w}' for h, w in levels)}) S{total} Q{queries} "
            f"H{args.heads} P{args.points} D{args.dim}"
        )
        for dtype in dtypes:
            dtype_name = str(dtype).removeprefix("torch.")
            inputs = make_inputs(levels, batch, queries, args.heads, args.points, args.dim, dtype, args.device)
            if args.check and triton_fn is not None:
                ok, report, _ = check(triton_fn, inputs, dtype)
                failed |= not ok
                print(f"check {shape} {dtype_name}: {'ok' if ok else 'MISMATCH'}: {report}")
            for name in passes:
                backward = name == "fwd+bwd"
                ref_ms, ref_mem = time_ms(
                    make_step(ms_deform_attn_reference, inputs, backward), args.warmup, args.iters, args.device
                )
                tri_ms = tri_mem = None
                if triton_fn is not None:
                    tri_ms, tri_mem = time_ms(make_step(triton_fn, inputs, backward), args.warmup, args.iters, "cuda")
                rows.append((shape, dtype_name, name, ref_ms, tri_ms, ref_mem, tri_mem))
            del inputs
            if args.device == "cuda":
                torch.cuda.empty_cache()

    def fmt(number: float | None, spec: str) -> str:
        return "n/a" if number is None else format(number, spec)

    print()
    print("| shape | dtype | pass | reference ms | triton ms | speedup | reference peak MiB | triton peak MiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for shape, dtype_name, name, ref_ms, tri_ms, ref_mem, tri_mem in rows:
        speedup = None if tri_ms is None else ref_ms / tri_ms
        print(
            f"| {shape} | {dtype_name} | {name} | {ref_ms:.3f} | {fmt(tri_ms, '.3f')} | "
            f"{fmt(speedup, '.2f')}{'' if speedup is None else 'x'} | {fmt(ref_mem, '.0f')} | {fmt(tri_mem, '.0f')} |"
        )
    if failed:
        print("\nsome checks failed: the Triton results differ from the reference beyond tolerance")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
