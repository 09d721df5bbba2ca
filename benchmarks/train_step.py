#!/usr/bin/env python
"""Seconds per training iteration and peak memory, for a config, on CPU or GPU.

    python benchmarks/train_step.py --config-file configs/quickstart.yaml --batch 4 --size 256 --steps 10
    python benchmarks/train_step.py --config-file configs/m2f_swin_l.yaml --batch 2 --size 512 --steps 1 --compare
    python benchmarks/train_step.py --config-file configs/m2f_dinat_l.yaml --batch 8 --steps 20 --precision bf16

One iteration = forward, losses, backward, AdamW step, on random images with random label maps
(5 classes present per image). The first iteration is a warm-up and not timed; the median of the
others is reported. On a GPU: bf16 autocast (as training), CUDA-event timing, peak allocated memory;
on the CPU: wall time and peak resident memory of the process.
--compare also times transformers' Mask2FormerForUniversalSegmentation built to the same sizes
(install transformers for this only: `pip install transformers`).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable

import torch

import mask2former.modeling.register_all  # noqa: F401  (every model family's config keys and classes)
import semask  # noqa: F401  (the SeMask plug-in: its config keys, backbone and meta architecture)
from mask2former.config import load_config
from mask2former.modeling.build import build_model


def random_batch(batch: int, size: int, num_classes: int, device: str) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    items = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
        label = torch.zeros(size, size, dtype=torch.long)
        for index, cls in enumerate(torch.randperm(num_classes - 1, generator=generator)[:5].tolist()):
            y, x = (index * size) // 6, (index * size) // 7
            label[y : y + size // 3, x : x + size // 3] = cls + 1
        items.append({"image": image.to(device), "sem_seg": label.to(device), "height": size, "width": size})
    return items


def time_steps(step, steps: int, device: str) -> list[float]:
    """Seconds of each of `steps` iterations after one warm-up. On CUDA: events recorded around each
    iteration and read after one synchronisation at the end (no synchronisation inside the loop)."""
    step()  # warm-up (allocations, autotuning, compilation)
    if device == "cuda":
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) / 1000 for start, end in events]
    times = []
    for _ in range(steps):
        begin = time.perf_counter()
        step()
        times.append(time.perf_counter() - begin)
    return times


def peak_memory_gib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def make_step(
    model: torch.nn.Module, data: list[dict], device: str, amp: bool, losses: list[torch.Tensor] | None = None
) -> Callable[[], None]:
    """One training iteration of this project's model on `data` per call: forward and weighted total loss (bf16
    autocast when `amp`), backward, a step of its own AdamW (lr 1e-4). When `losses` is given, each call appends
    [total, *each loss] (fp32, detached) to it."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            parts = model(data)
            total = model.criterion.weighted_total(parts)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if losses is not None:
            losses.append(torch.stack([total.detach().float(), *(v.detach().float() for v in parts.values())]))

    return step


def ours(cfg, batch: int, size: int, steps: int, device: str, amp: bool) -> tuple[float, float]:
    model = build_model(cfg).to(device).train()
    print(f"  this project's model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    data = random_batch(batch, size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, device)
    step = make_step(model, data, device, amp)
    return statistics.median(time_steps(step, steps, device)), peak_memory_gib(device)


def transformers_reference(cfg, batch: int, size: int, steps: int, device: str, amp: bool) -> tuple[float, float]:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    swin = cfg.MODEL.SWIN
    mf = cfg.MODEL.MASK_FORMER
    backbone = SwinConfig(
        embed_dim=swin.EMBED_DIM,
        depths=list(swin.DEPTHS),
        num_heads=list(swin.NUM_HEADS),
        window_size=swin.WINDOW_SIZE,
        drop_path_rate=swin.DROP_PATH_RATE,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        num_labels=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        num_queries=mf.NUM_OBJECT_QUERIES,
        hidden_dim=mf.HIDDEN_DIM,
        feature_size=cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM,
        mask_feature_size=cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
        encoder_layers=cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS,
        decoder_layers=mf.DEC_LAYERS,
        num_attention_heads=mf.NHEADS,
        dim_feedforward=mf.DIM_FEEDFORWARD,
        train_num_points=mf.TRAIN_NUM_POINTS,
        use_pretrained_backbone=False,
    )
    model = Mask2FormerForUniversalSegmentation(config).to(device).train()
    print(f"  transformers model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = random_batch(batch, size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, device)
    pixels = torch.stack([d["image"].float() / 255 for d in data])
    mask_labels, class_labels = [], []
    for d in data:
        classes = d["sem_seg"].unique()
        class_labels.append(classes)
        mask_labels.append((d["sem_seg"][None] == classes[:, None, None]).float())

    def step() -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            loss = model(pixel_values=pixels, mask_labels=mask_labels, class_labels=class_labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return statistics.median(time_steps(step, steps, device)), peak_memory_gib(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="timed iterations after one warm-up")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compare", action="store_true", help="also time transformers' Mask2Former")
    parser.add_argument(
        "--only-transformers",
        action="store_true",
        help="time only transformers' Mask2Former (its own process peak memory on CPU)",
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument(
        "--precision",
        choices=("config", "bf16", "fp32"),
        default="config",
        help="bf16 autocast or fp32; config: SOLVER.AMP.ENABLED on GPU, fp32 on CPU",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, args.opts or [], freeze=False)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.config_file}, batch {args.batch}, {args.size}x{args.size}, {device_name}")
    amp = args.precision == "bf16" or (args.precision == "config" and args.device == "cuda" and cfg.SOLVER.AMP.ENABLED)
    print(f"  precision: {'bf16 autocast' if amp else 'fp32'}")
    if not args.only_transformers:
        seconds, memory = ours(cfg, args.batch, args.size, args.steps, args.device, amp)
        print(
            f"  this project: {seconds:.3f} s/iter ({args.batch / seconds:.2f} images/s), peak memory {memory:.2f} GiB"
        )
    if args.compare or args.only_transformers:
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds_ref, memory_ref = transformers_reference(cfg, args.batch, args.size, args.steps, args.device, amp)
        print(
            f"  transformers Mask2Former: {seconds_ref:.3f} s/iter ({args.batch / seconds_ref:.2f} images/s), "
            f"peak memory {memory_ref:.2f} GiB (process peak so far on CPU)"
        )


if __name__ == "__main__":
    main()
