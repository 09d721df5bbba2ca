#!/usr/bin/env python
"""Training throughput of train_net.py in one process vs several (gloo DDP on the CPU): images/s.

    python benchmarks/distributed_train.py [--config-file configs/quickstart.yaml] [--data DIR]
        [--layouts 1x1 1x2 2x1] [--iters 40] [KEY VALUE ...]

Each layout PxT runs the real entry point, `train_net.py --num-gpus P` with OMP_NUM_THREADS=T (T torch threads
per process), for --iters iterations of the config's own model, batch (SOLVER.IMS_PER_BATCH, split over the
processes) and data loading, on the generated sample data unless --data is given. The rate is read from rank 0's
progress lines (one every 10 iterations) after the first window (start-up, warm-up); images/s = it/s x global
batch. The speed-ups are against one process with one thread. Trailing KEY VALUE pairs (after the
options; --layouts not last) go to train_net.py.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RATE = re.compile(r"iter (\d+)/\d+ .* ([0-9.]+) it/s")


def batch_size(config_file: Path, opts: list[str]) -> int:
    import mask2former.modeling.register_all  # noqa: F401  (every model family's config keys)
    import semask  # noqa: F401  (the SeMask plug-in's keys: the tiny sizes name them)
    from mask2former.config import load_config

    return load_config(str(config_file), opts).SOLVER.IMS_PER_BATCH


def images_per_second(
    config_file: Path,
    data: Path,
    work: Path,
    processes: int,
    threads: int,
    iters: int,
    opts: list[str],
    name: str = "",
) -> float:
    out = work / f"run_{processes}x{threads}{name}"
    command = [sys.executable, str(REPO / "train_net.py"), "--config-file", str(config_file)]
    command += ["--num-gpus", str(processes), "DATASETS.ROOT", str(data), "OUTPUT_DIR", str(out)]
    command += ["SOLVER.MAX_ITER", str(iters), "SOLVER.LOG_PERIOD", "10", "SOLVER.CHECKPOINT_PERIOD", str(iters)]
    command += ["TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SOLVER.WARMUP_ITERS", "0", *opts]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    if result.returncode:
        sys.exit(f"{processes}x{threads} failed:\n{result.stderr[-3000:]}")
    rates = [float(rate) for iteration, rate in RATE.findall(result.stderr) if int(iteration) > 10]
    if not rates:
        sys.exit(f"{processes}x{threads}: no progress lines after iteration 10 (give --iters >= 20)")
    return statistics.median(rates) * batch_size(config_file, opts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--data", help="a dataset root in the competition layout (default: generated)")
    parser.add_argument("--layouts", nargs="+", default=["1x1", "1x2", "2x1"], help="PROCESSESxTHREADS")
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also run two independent 1 x 1 trainings at once: the sum of their images/s is what 2 single-thread "
        "processes can reach on this machine without any communication",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for train_net.py")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        data = Path(args.data) if args.data else Path(work) / "data"
        if not args.data:
            from mask2former.data.sample_dataset import make_sample_dataset

            make_sample_dataset(data, num_train=60, num_test=4, seed=0)
        results = {}
        for layout in args.layouts:
            processes, threads = (int(part) for part in layout.split("x"))
            results[layout] = images_per_second(
                Path(args.config_file), data, Path(work), processes, threads, args.iters, args.opts
            )
            print(f"{processes} process(es) x {threads} thread(s): {results[layout]:.2f} images/s", flush=True)
        if args.ceiling:
            single = (Path(args.config_file), data, Path(work), 1, 1, args.iters, args.opts)
            with ThreadPoolExecutor(2) as pool:
                runs = [pool.submit(images_per_second, *single, f"_{i}") for i in range(2)]
                results["2 independent 1x1 runs at once (sum)"] = sum(run.result() for run in runs)
            print(f"2 independent 1 x 1 runs at once: {results['2 independent 1x1 runs at once (sum)']:.2f} images/s")
    base = results.get("1x1")
    print("\n| processes x threads | images/s | vs 1 x 1 |\n|---|---|---|")
    for layout, rate in results.items():
        speedup = f"{rate / base:.2f}x" if base else ""
        print(f"| {layout.replace('x', ' x ')} | {rate:.2f} | {speedup} |")


if __name__ == "__main__":
    main()
