#!/usr/bin/env python
"""Training-mapper throughput on 512x512 JPEGs: images/s on one worker (one core).

    python benchmarks/data_loader.py [--images 200] [--repeats 3] [--data DIR] [--workers 0 2]

Generates the sample dataset if --data is not given, renders its label maps, then times the full
training mapper (JPEG + PNG decode, short-side jitter 256..1024, 512 crop with the category-area
rule, flip, colour jitter, tensors) over the images, in the main process (one worker) and, for each
--workers N, through a torch DataLoader with N worker processes. Prints the median of the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import mask2former.modeling.register_all  # noqa: F401  (every model family's config keys and classes)
import semask  # noqa: F401  (the SeMask plug-in: its config keys, backbone and meta architecture)
from mask2former.config import load_config
from mask2former.data.coco_semantic import load_sem_seg_dataset
from mask2former.data.dataset import MapDataset
from mask2former.data.mapper import SemanticSegMapper
from mask2former.data.sample_dataset import make_sample_dataset


def time_single_worker(dataset: MapDataset, repeats: int) -> float:
    rates = []
    for repeat in range(repeats):
        dataset.set_epoch(repeat)
        start = time.perf_counter()
        for index in range(len(dataset)):
            dataset[index]
        rates.append(len(dataset) / (time.perf_counter() - start))
    return statistics.median(rates)


def time_loader(dataset: MapDataset, workers: int, repeats: int) -> float:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=8, num_workers=workers, collate_fn=list, persistent_workers=workers > 0
    )
    for _ in loader:  # warm-up: start the workers
        break
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = sum(len(batch) for batch in loader)
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a data root with train.json (default: generate the sample dataset)")
    parser.add_argument("--images", type=int, default=200, help="images to generate when --data is not given")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="*", default=[2], help="DataLoader worker counts to time")
    parser.add_argument("--single-category-max-area", type=float, default=1.0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else Path(tmp) / "sample"
        if not args.data:
            make_sample_dataset(root, num_train=args.images, num_test=0, seed=0)
        dicts = load_sem_seg_dataset(root / "train.json", root, cache_dir=Path(tmp) / "cache", progress=False)
        cfg = load_config(None, ["INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", str(args.single_category_max_area)])
        dataset = MapDataset(dicts, SemanticSegMapper.from_config(cfg, is_train=True), seed=0)
        rate = time_single_worker(dataset, args.repeats)
        print(
            f"training mapper, 1 worker in-process: {rate:.1f} images/s ({len(dicts)} images, median of {args.repeats})"
        )
        for workers in args.workers:
            loader_rate = time_loader(dataset, workers, args.repeats)
            print(f"DataLoader, {workers} workers: {loader_rate:.1f} images/s ({loader_rate / workers:.1f} per worker)")


if __name__ == "__main__":
    main()
