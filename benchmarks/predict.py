#!/usr/bin/env python
"""Prediction throughput (images/s) with and without TTA, on the CPU and, when there is one, the GPU.

    python benchmarks/predict.py                                   # quickstart model, 512x512 images
    python benchmarks/predict.py --config-file configs/m2f_swin_l.yaml --images 16 --batch-sizes 1 8 --amp

Times tools/predict.py's inference (mask2former.inference.tta.predict_batch, as mask2former/pipeline/predict.py
runs it: views, batching, resizing the probabilities to 256x256, normalising, averaging) on random 512x512 images
with a freshly initialised model (or --weights); file reading and npz writing, which the tool overlaps with the
forward passes, are not timed.
Without TTA: one view (short side INPUT.MIN_SIZE_TEST = --size). With TTA: the config's TEST.AUG views
(MIN_SIZES x flip). Each setting runs one warm-up batch, then all --images; on a GPU with synchronisation
around the timed part. CPU figures depend on the threads (--threads) and on whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch

import mask2former.modeling.register_all  # noqa: F401  (every model family's config keys and classes)
import semask  # noqa: F401  (the SeMask plug-in: its config keys, backbone and meta architecture)
from mask2former.config import load_config
from mask2former.inference.predictor import load_prediction_model
from mask2former.inference.tta import inference_max_size, inference_views, predict_batch
from mask2former.modeling.build import build_model


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads"


def time_setting(models, images, cfg, batch_size: int, device: str, amp: bool) -> tuple[float, int]:
    """Seconds for all `images` in chunks of `batch_size` (after one warm-up chunk) and the views per image."""
    views, max_size = inference_views(cfg), inference_max_size(cfg)

    def run(chunk: list[np.ndarray]) -> None:
        sizes = [(256, 256)] * len(chunk)
        probs = predict_batch(models, chunk, views, max_size, cfg.INPUT.FORMAT, sizes, batch_size, amp=amp)
        for p in probs:  # what the tool does next: to float16 on the host
            p.to(torch.float16).cpu()

    run(images[:batch_size])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    begin = time.perf_counter()
    for start in range(0, len(images), batch_size):
        run(images[start : start + batch_size])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - begin, len(views)


def benchmark(args: argparse.Namespace, device: str) -> list[str]:
    rows = []
    for tta in (False, True):
        sizes = ["INPUT.MIN_SIZE_TEST", str(args.size), "TEST.AUG.ENABLED", str(tta)]
        cfg = load_config(args.config_file, [*sizes, *args.opts])
        if args.weights:
            models = [load_prediction_model(cfg, args.weights, device)]
        else:
            torch.manual_seed(0)
            models = [build_model(cfg).to(device).eval()]
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.images)]
        for amp in (False, True) if args.amp else (False,):
            for batch_size in args.batch_sizes:
                seconds, views = time_setting(models, images, cfg, batch_size, device, amp)
                rate = len(images) / seconds
                rows.append(
                    f"| {device} | {'yes' if tta else 'no'} | {views} | {batch_size} | {'bf16' if amp else 'fp32'} "
                    f"| {rate:.3f} | {seconds / len(images):.3f} |"
                )
                print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="configs/quickstart.yaml")
    parser.add_argument("--weights", help="a checkpoint (default: a freshly initialised model)")
    parser.add_argument("--size", type=int, default=512, help="image side and the no-TTA short side (px)")
    parser.add_argument("--images", type=int, default=4, help="timed images per setting")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4], help="views per forward pass")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CPU, then the GPU")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--amp", action="store_true", help="also time bf16 autocast")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    devices = {"cpu": ["cpu"], "cuda": ["cuda"], "auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])}
    devices = devices[args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        sys.exit("--device cuda: no GPU available")
    print(f"config {args.config_file}, {args.images} random {args.size}x{args.size} images, probabilities at 256x256")
    for device in devices:
        print(f"device: {device_name(device)}")
    if not torch.cuda.is_available():
        print("no GPU available: CPU figures only")
    print("| device | TTA | views/image | batch | precision | images/s | s/image |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for device in devices:
        rows += benchmark(args, device)
    return rows


if __name__ == "__main__":
    main()
