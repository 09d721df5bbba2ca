#!/usr/bin/env python
"""EoMT beside Mask2Former on the CPU, side by side in one run: parameters, seconds per training step, inference
images/s, and each figure as a ratio to the first config's.

    python benchmarks/eomt_cpu.py --threads 2      # m2f_swin_l, eomt_dinov2_l_512, eomt_dinov2_s, eomt_dinov3_l_512
    python benchmarks/eomt_cpu.py --configs configs/m2f_swin_l.yaml configs/eomt_dinov2_l_512.yaml --rounds 2

Each config runs in a child process of its own (its peak memory is its own, and one model is freed before the next
is built), one after another, --rounds times in turn (A B A B: a load that changes during the run falls on every
config alike); the table gives each config's fastest round, the one least slowed by other jobs on a shared
machine (every round is printed as it ends). Training: benchmarks/train_step.py's iteration (random
weights, random --size images with random label maps, batch --batch, fp32, AdamW), one warm-up, then --steps timed.
Inference: benchmarks/predict.py's timing of the prediction tool's inference, one view (no TTA, short side
--size), one image per forward pass, --images random images after one warm-up image. Peak RSS is the child's after
training (imports included). The machine's load average is printed beside every child.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = (
    "configs/m2f_swin_l.yaml",
    "configs/eomt_dinov2_l_512.yaml",
    "configs/eomt_dinov2_s.yaml",
    "configs/eomt_dinov3_l_512.yaml",
)
RESULT = "RESULT "  # the child's line with its figures as JSON


def measure(config: str, args: argparse.Namespace) -> dict:
    """One config's figures, in this process."""
    import numpy as np
    import torch
    from predict import time_setting
    from train_step import make_step, peak_memory_gib, random_batch, time_steps

    import mask2former.modeling.register_all  # noqa: F401  (every model family's config keys and classes)
    from mask2former.config import load_config
    from mask2former.modeling.build import build_model

    torch.set_num_threads(args.threads)
    opts = ["INPUT.MIN_SIZE_TEST", str(args.size), "TEST.AUG.ENABLED", "False", *args.opts]
    cfg = load_config(str(REPO / config), opts)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    parameters = sum(p.numel() for p in model.parameters())
    data = random_batch(args.batch, args.size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, "cpu")
    step_seconds = statistics.median(time_steps(make_step(model, data, "cpu", amp=False), args.steps, "cpu"))
    memory = peak_memory_gib("cpu")
    model.eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.images)]
    with torch.no_grad():
        seconds, views = time_setting([model], images, cfg, 1, "cpu", amp=False)
    return {
        "config": config,
        "parameters": parameters,
        "train_s_per_step": step_seconds,
        "peak_rss_gib": memory,
        "inference_images_per_s": len(images) / seconds,
        "views": views,
    }


def run_child(config: str, args: argparse.Namespace) -> dict:
    argv = [sys.executable, __file__, "--child", config, "--batch", str(args.batch), "--size", str(args.size)]
    argv += ["--steps", str(args.steps), "--images", str(args.images), "--threads", str(args.threads), *args.opts]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    load = os.getloadavg()[0]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"eomt_cpu.py: {config} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith(RESULT))
    result = json.loads(line[len(RESULT) :])
    result["load"] = (load, os.getloadavg()[0])
    return result


def table(results: dict[str, list[dict]]) -> list[str]:
    """Markdown rows: each config's fastest round (training and inference apart) and its ratio to the first
    config's."""
    best = {
        config: {
            "train_s_per_step": min(r["train_s_per_step"] for r in runs),
            "peak_rss_gib": max(r["peak_rss_gib"] for r in runs),
            "rate": max(r["inference_images_per_s"] for r in runs),
            "parameters": runs[0]["parameters"],
        }
        for config, runs in results.items()
    }
    first = best[next(iter(best))]
    rows = [
        "| config | parameters | train s/step | train speed vs first | peak RSS (GiB) | inference images/s | "
        "inference speed vs first |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for config, m in best.items():
        rows.append(
            f"| {Path(config).stem} | {m['parameters'] / 1e6:.1f}M | {m['train_s_per_step']:.2f} | "
            f"{first['train_s_per_step'] / m['train_s_per_step']:.2f}x | {m['peak_rss_gib']:.2f} | {m['rate']:.3f} | "
            f"{m['rate'] / first['rate']:.2f}x |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="the first is the reference")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=1, help="timed training steps after one warm-up")
    parser.add_argument("--images", type=int, default=4, help="timed inference images after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads of each child")
    parser.add_argument("--rounds", type=int, default=1, help="times every config runs, in turn")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every config")
    args = parser.parse_args(argv)
    if args.child:
        print(RESULT + json.dumps(measure(args.child, args)), flush=True)
        return
    setting = f"batch {args.batch}, {args.size}x{args.size}, fp32, {args.threads} threads per child"
    print(f"{setting}, {args.rounds} round(s)")
    results: dict[str, list[dict]] = {config: [] for config in args.configs}
    for round_index in range(args.rounds):
        for config in args.configs:
            result = run_child(config, args)
            results[config].append(result)
            print(
                f"round {round_index + 1} {Path(config).stem}: {result['train_s_per_step']:.2f} s/step, "
                f"{result['inference_images_per_s']:.3f} images/s, load average {result['load'][0]:.1f} -> "
                f"{result['load'][1]:.1f}",
                flush=True,
            )
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
