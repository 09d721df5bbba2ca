#!/usr/bin/env python
"""Throughput of tools/ensemble_crf.py's per-image step (images/s per core) on synthetic inputs.

    python benchmarks/ensemble_crf.py                          # 3 models, 11 classes, 512x512 images, 5 iterations
    python benchmarks/ensemble_crf.py --images 24 --prob-sizes 256 512 --workers 1 2

Makes --images 512x512 JPEGs (coloured shapes on a textured background) and, for each of --models models, a
prediction folder of float16 probabilities (ground truth one-hot, blurred, noised) at each --prob-sizes side
(256 is tools/predict.py's default; 512 its --prob-size 0). Then times, after one warm-up image:
  crf:  mask2former.pipeline.crf.dense_crf on the soft vote (the CRF alone);
  step: mask2former.pipeline.ensemble_images.process_image, what a worker does per image (read the npz files, soft
  vote, read
        the image, CRF, consensus write-back, write the npz and the label PNG);
  pool: the tool's worker pool (--workers N > 1): images/s in all, and per worker.
The target is >= 2 images/s per core for the step. Timings depend on whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from mask2former.io.probabilities import load_probabilities, probability_path, save_probabilities
from mask2former.pipeline.crf import CRF_DEFAULTS, dense_crf
from mask2former.pipeline.ensemble_images import EnsembleJob, init_worker, process_image, process_in_worker, read_rgb
from mask2former.pipeline.voting import soft_vote
from mask2former.utils.processes import usable_cpus


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = usable_cpus()
    return f"{model}, {usable} CPU threads"


def make_inputs(root: Path, images: int, models: int, classes: int, size: int, prob_sizes: list[int]) -> list[str]:
    """JPEGs under root/images and one prediction folder per (model, prob size); returns the file names."""
    rng = np.random.default_rng(0)
    names, class_names = [], ["Background"] + [f"class {k}" for k in range(1, classes)]
    colours = rng.integers(0, 256, (classes, 3))
    for index in range(images):
        label = np.zeros((size, size), np.uint8)
        image = rng.integers(90, 140, (size, size, 3)).astype(np.uint8)
        for _ in range(12):  # objects of every size, the small ones last (on top)
            k = int(rng.integers(1, classes))
            radius = int(rng.integers(6, size // 5))
            centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            cv2.circle(label, centre, radius, k, -1)
            cv2.circle(image, centre, radius, [int(c) for c in colours[k]], -1)
        name = f"bench/{index:04d}.jpg"
        (root / "images" / "bench").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / name), image)
        onehot = np.eye(classes, dtype=np.float32)[label]
        for model in range(models):
            blurred = cv2.GaussianBlur(onehot, (0, 0), 2.0 + model)
            for side in prob_sizes:
                small = cv2.resize(blurred, (side, side), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
                noisy = small + rng.uniform(0, 0.5, small.shape).astype(np.float32)
                probs = noisy / noisy.sum(axis=0, keepdims=True)
                save_probabilities(root / f"m{model}_{side}", name, index, probs, size, size, class_names)
        names.append(name)
    return names


def job_for(root: Path, models: int, side: int, classes: int, iters: int, out: Path) -> EnsembleJob:
    crf = {**CRF_DEFAULTS, "iters": iters}
    return EnsembleJob(
        kind="probs",
        inputs=tuple(str(root / f"m{m}_{side}") for m in range(models)),
        weights=tuple([1.0 / models] * models),
        class_names=tuple(["Background"] + [f"class {k}" for k in range(1, classes)]),
        out=str(out),
        image_root=str(root / "images"),
        crf=crf,
        consensus=True,
    )


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12, help="timed images (plus one warm-up)")
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--size", type=int, default=512, help="image side")
    parser.add_argument("--prob-sizes", type=int, nargs="+", default=[256, 512], help="probability map sides")
    parser.add_argument("--iters", type=int, default=CRF_DEFAULTS["iters"], help="CRF iterations")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="also time the pool with N workers")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # one core, as in the tool's workers
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        names = make_inputs(root, args.images + 1, args.models, args.classes, args.size, args.prob_sizes)
        print(f"made {len(names)} images x {args.models} models in {time.perf_counter() - began:.1f} s")
        for side in args.prob_sizes:
            job = job_for(root, args.models, side, args.classes, args.iters, root / f"out{side}")
            warm, timed = names[0], names[1:]
            # the CRF alone, on the soft vote
            votes = []
            for name in names:
                maps = [load_probabilities(probability_path(folder, name))["probs"] for folder in job.inputs]
                image = read_rgb(root / "images", name)
                votes.append((soft_vote(maps), image))
            dense_crf(*votes[0], **job.crf)
            began = time.perf_counter()
            for vote, image in votes[1:]:
                dense_crf(vote, image, **job.crf)
            crf_rate = rate(len(timed), time.perf_counter() - began)
            # the whole per-image step of the tool
            process_image(job, {"file_name": warm})
            began = time.perf_counter()
            for name in timed:
                process_image(job, {"file_name": name})
            step_rate = rate(len(timed), time.perf_counter() - began)
            pool = []
            for workers in [w for w in args.workers if w > 1]:
                context = mp.get_context("spawn")
                with context.Pool(workers, initializer=init_worker, initargs=(job,)) as workers_pool:
                    workers_pool.map(process_in_worker, [{"file_name": warm}] * workers)  # start-up
                    began = time.perf_counter()
                    workers_pool.map(process_in_worker, [{"file_name": n} for n in timed], chunksize=1)
                    total = rate(len(timed), time.perf_counter() - began)
                pool.append(f"{workers} workers: {total:.2f} ({total / workers:.2f} per worker)")
            rows.append(
                f"| {datetime.date.today()} | {machine()} | {args.models} x {args.classes} classes, {args.size}px "
                f"images, {side}x{side} maps, {args.iters} iters | {crf_rate:.2f} | {step_rate:.2f} | "
                f"{'; '.join(pool) or '-'} |"
            )
    header = [
        "| date | machine | setting | CRF alone, img/s (1 core) | per-image step, img/s (1 core) | pool, img/s |",
        "| --- | --- | --- | ---: | ---: | --- |",
    ]
    print("\n".join(header + rows))
    return rows


if __name__ == "__main__":
    main()
