#!/usr/bin/env python
"""Is bf16 autocast safe for a config? One training step in fp32 and in bf16 autocast, compared.

    python benchmarks/precision_check.py --config-file configs/m2f_dinat_l.yaml --batch 1 --size 512
    python benchmarks/precision_check.py --config-file configs/quickstart_dinat.yaml --batch 4 --size 256

The same weights, the same random batch (benchmarks/train_step.py's images and label maps) and the same random
state (the criterion samples points) go through forward + losses + backward twice: in float32, then under
torch.autocast(bfloat16) as SOLVER.AMP.ENABLED trains (the deformable encoder and the matcher stay in float32,
as in training). Printed: each loss in both precisions and their relative difference; per part of the model
(backbone, pixel decoder, transformer decoder) the cosine similarity of the two gradients and the ratio of their
norms; whether anything was non-finite. On the CPU, bf16 autocast runs where the CPU supports it (AVX512-BF16 /
AMX make it fast; elsewhere it is emulated and slow).
"""

from __future__ import annotations

import argparse
import datetime
import platform

import torch
from train_step import random_batch

import mask2former.modeling.register_all  # noqa: F401  (every model family's config keys and classes)
import semask  # noqa: F401  (the SeMask plug-in: its config keys, backbone and meta architecture)
from mask2former.config import load_config
from mask2former.modeling.build import build_model

PARTS = ("backbone", "sem_seg_head.pixel_decoder", "sem_seg_head.predictor")


def one_step(model: torch.nn.Module, batch: list[dict], device: str, bf16: bool, seed: int) -> tuple[dict, dict]:
    """(losses as floats, gradients by parameter name, float32 on the CPU) of one forward + backward."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        losses = model(batch)
        total = model.criterion.weighted_total(losses)
    total.backward()
    values = {key: float(value.detach()) for key, value in losses.items()}
    values["total (weighted)"] = float(total.detach())
    grads = {name: p.grad.detach().float().cpu() for name, p in model.named_parameters() if p.grad is not None}
    return values, grads


def compare_gradients(reference: dict, other: dict) -> list[tuple[str, float, float, int]]:
    """(part, cosine similarity, norm ratio other / reference, parameters) per model part and for all."""
    rows = []
    for part in (*PARTS, ""):
        names = [name for name in reference if name.startswith(part)]
        if not names:
            continue
        # float64: a float32 dot product over 200M entries drifts past a cosine of 1
        ref = torch.cat([reference[name].flatten() for name in names]).double()
        oth = torch.cat([other[name].flatten() for name in names]).double()
        cosine = float(torch.nn.functional.cosine_similarity(ref, oth, dim=0))
        ratio = float(oth.norm() / ref.norm().clamp_min(1e-30))
        rows.append((part or "whole model", cosine, ratio, int(ref.numel())))
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, [*args.opts, "MODEL.DEVICE", args.device])
    torch.manual_seed(args.seed)
    model = build_model(cfg).to(args.device).train()
    batch = random_batch(args.batch, args.size, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, args.device)

    fp32_losses, fp32_grads = one_step(model, batch, args.device, bf16=False, seed=args.seed)
    bf16_losses, bf16_grads = one_step(model, batch, args.device, bf16=True, seed=args.seed)
    finite = all(torch.isfinite(torch.tensor(list(bf16_losses.values()))).tolist()) and all(
        bool(torch.isfinite(g).all()) for g in bf16_grads.values()
    )

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({platform.processor() or 'cpu'})"
    print(f"{datetime.date.today()} {where}, torch {torch.__version__}, {args.config_file}, batch {args.batch} x "
          f"{args.size}px, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")  # fmt: skip
    print("| loss | fp32 | bf16 autocast | relative difference |")
    print("| --- | --- | --- | --- |")
    for key in fp32_losses:
        ref, oth = fp32_losses[key], bf16_losses[key]
        print(f"| {key} | {ref:.5f} | {oth:.5f} | {abs(oth - ref) / max(abs(ref), 1e-12):.2e} |")
    print()
    print("| gradients of | cosine similarity | norm ratio bf16/fp32 | parameters |")
    print("| --- | --- | --- | --- |")
    rows = compare_gradients(fp32_grads, bf16_grads)
    for part, cosine, ratio, count in rows:
        print(f"| {part} | {cosine:.5f} | {ratio:.4f} | {count / 1e6:.2f}M |")
    print(f"\nall bf16 losses and gradients finite: {finite}")
    return {"fp32": fp32_losses, "bf16": bf16_losses, "gradients": rows, "finite": finite}


if __name__ == "__main__":
    main()
