#!/usr/bin/env python
"""Neighborhood attention: the flex_attention path against the pure PyTorch reference, at DiNAT-L's shapes.

    python benchmarks/neighborhood_attention.py                       # GPU: every DiNAT-L level at 512 px
    python benchmarks/neighborhood_attention.py --size 640 --batch 4
    python benchmarks/neighborhood_attention.py --device cpu --small  # smoke run: reference only, tiny

Shapes: a `--size` input gives DiNAT-L (Mask2Former setting) levels of size/4 .. size/32 with 6, 12, 24,
48 heads of 32 channels, kernel 11, each distinct dilation of the level (after fitting it to the map).
Forward and forward+backward (query, key, value and position-bias gradients), fp32 and bf16. On CUDA:
CUDA events around each run, read after one synchronisation at the end, median of `--runs` after
`--warmup` runs; peak memory per case. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mask2former.modeling.backbone.dinat import DINAT_L_M2F_DILATIONS
from mask2former.modeling.ops.neighborhood_attention import fit_window, neighborhood_attention

HEADS = (6, 12, 24, 48)
HEAD_DIM = 32
KERNEL = 11


def cases(size: int, small: bool) -> list[tuple[int, int, int]]:
    """(map side, heads, dilation) for every level and distinct fitted dilation."""
    if small:
        return [(16, 2, 1), (16, 2, 3)]
    out = []
    for level, dilations in enumerate(DINAT_L_M2F_DILATIONS):
        side = size // 4 // 2**level
        fitted = sorted({fit_window(side, KERNEL, d)[1] for d in dilations})
        out += [(side, HEADS[level], d) for d in fitted]
    return out


def time_runs(fn, runs: int, warmup: int, device: str) -> float:
    """Median milliseconds."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(start.elapsed_time(end) for start, end in events)
    times = []
    for _ in range(runs):
        begin = time.perf_counter()
        fn()
        times.append((time.perf_counter() - begin) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="input image side (px)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny shapes (smoke run)")
    parser.add_argument("--check", action="store_true", help="compare outputs of both paths before timing")
    args = parser.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark (use --device cpu --small for a smoke run)")
        return
    implementations = ["reference", "flex"] if device == "cuda" else ["reference"]
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    batch = 1 if args.small else args.batch
    print(f"neighborhood attention, kernel {KERNEL}, batch {batch}, {HEAD_DIM} channels per head, {name}\n")
    print(
        "| map | heads | dilation | dtype | pass | " + " | ".join(f"{i} ms" for i in implementations) + " | speedup |"
    )
    print("|---|---|---|---|---|" + "---|" * len(implementations) + "---|")
    for side, heads, dilation in cases(args.size, args.small):
        for dtype in (torch.float32, torch.bfloat16):
            generator = torch.Generator(device=device).manual_seed(0)
            shape = (batch, heads, side, side, HEAD_DIM)
            q, k, v = (torch.randn(shape, device=device, dtype=dtype, generator=generator) for _ in range(3))
            rpb = torch.randn(heads, 2 * KERNEL - 1, 2 * KERNEL - 1, device=device, dtype=dtype) * 0.02
            if args.check and device == "cuda":
                with torch.no_grad():
                    ref = neighborhood_attention(q, k, v, KERNEL, dilation, rpb, implementation="reference")
                    fast = neighborhood_attention(q, k, v, KERNEL, dilation, rpb, implementation="flex")
                print(f"<!-- {side} {dilation} {dtype}: max |flex - reference| = {(fast - ref).abs().max():.2e} -->")
            for mode in ("forward", "forward+backward"):
                timings = []
                for implementation in implementations:
                    inputs = [t.clone().requires_grad_(mode != "forward") for t in (q, k, v, rpb)]
                    grad = torch.randn_like(q)

                    def run(inputs=inputs, implementation=implementation, mode=mode, grad=grad, dilation=dilation):
                        with torch.set_grad_enabled(mode != "forward"):
                            out = neighborhood_attention(
                                *inputs[:3], KERNEL, dilation, inputs[3], implementation=implementation
                            )
                            if mode != "forward":
                                out.backward(grad)

                    timings.append(time_runs(run, args.runs, args.warmup, device))
                speedup = f"{timings[0] / timings[-1]:.1f}x" if len(timings) > 1 else "-"
                cells = " | ".join(f"{t:.2f}" for t in timings)
                dtype_name = str(dtype).removeprefix("torch.")
                print(f"| {side}x{side} | {heads} | {dilation} | {dtype_name} | {mode} | {cells} | {speedup} |")
    if device == "cuda":
        print(f"\npeak memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
