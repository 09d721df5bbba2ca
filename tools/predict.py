#!/usr/bin/env python
"""Predict class probabilities and a submission CSV for a set of images.

    python tools/predict.py --config-file configs/m2f_swin_l.yaml --weights output/m2f_swin_l/model_final.pth \\
        --json DATA/test.json --out output/predict [--tta] [--batch-size 8] [--overlays 16] [KEY VALUE ...]
    # checkpoint ensemble (same architecture), weighted, TTA, on 4 GPUs:
    python tools/predict.py --config-file CFG --weights a.pth b.pth c.pth --weights-scale 2 1 1 --tta \\
        --num-gpus 4 --batch-size 8 --json DATA/test.json --out output/predict_ens

Writes OUT/probs/<file_name>.npz (float16 class probabilities, see mask2former/prediction_io.py), OUT/meta.json
(settings and counts), OUT/submission.csv (256x256 label maps, one row per image in the json's order, rebuilt from
all npz files at the end and written atomically), OUT/overlays/*.png and OUT/log.txt.

Probabilities (mask2former/engine/inference.py): every view's class scores are resized bilinearly to the stored
size (--prob-size, 256 by default; 0: the image size), flipped back, divided by their sum over the classes, and
averaged over the views (--tta: TEST.AUG.MIN_SIZES x flip) and then over the checkpoints (weights --weights-scale).

Resuming: images whose npz exists and is valid are skipped (a truncated or unreadable one is predicted again), so
rerunning an interrupted command finishes it. OUT/meta.json records the settings; a rerun with other settings
(checkpoints, weights, views, --prob-size) is refused unless --overwrite (which predicts every image again).

Devices: --device (default MODEL.DEVICE: "auto" = the GPU if there is one) runs in this process. --num-gpus N or
--devices D1 D2 ... start one worker process per device, each predicting every N-th image of what is left to do;
the parent shows one progress bar and writes meta.json and the CSV. --num-workers N --device cpu runs N processes
on the CPU (the same code path). --threads N sets torch's CPU threads per process (on a busy machine 1 can be
several times faster than the default). Put KEY VALUE config overrides last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import queue as queue_module
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from mask2former.config import get_cfg
from mask2former.data.coco_semantic import DataError, class_names_from_categories, read_coco_json
from mask2former.data.mapper import read_image
from mask2former.data.trash import palette_for
from mask2former.engine.checkpoint import CheckpointMismatchError
from mask2former.engine.inference import (
    ImageReadError,
    PredictionJob,
    inference_max_size,
    inference_views,
    run_job,
    run_worker,
)
from mask2former.ensemble import EnsembleError, normalize_weights
from mask2former.prediction_io import check_probabilities, load_label_map, probability_path
from mask2former.submission import SUBMISSION_SIZE, downsample_label_map, write_submission
from mask2former.utils.io import (
    atomic_write_bytes,
    atomic_write_json,
    remove_stale_temporaries,
    usable_cpus,
)
from mask2former.utils.logger import logging_to
from mask2former.utils.resume import changed_settings
from mask2former.utils.visualize import overlay

logger = logging.getLogger("predict")

# meta.json keys that must agree for a run to resume into an existing folder
SETTINGS = ("class_names", "weights", "weights_scale", "views", "max_size", "prob_size")
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


class PredictError(RuntimeError):
    """A problem with the command's inputs or a worker's failure; the message says which."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the model's config")
    parser.add_argument(
        "--weights",
        required=True,
        nargs="+",
        metavar="CKPT",
        help="checkpoint(s) (.pth, .ckpt, .safetensors); several: an ensemble of the config's architecture",
    )
    parser.add_argument(
        "--weights-scale", nargs="+", metavar="W", help="ensemble weight of each checkpoint (default: equal)"
    )
    parser.add_argument("--json", required=True, help="COCO json listing the images (e.g. test.json)")
    parser.add_argument("--image-root", help="folder that file_name is relative to (default: the json's folder)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tta", action="store_true", help="enable TEST.AUG (flip and TEST.AUG.MIN_SIZES scales)")
    parser.add_argument(
        "--prob-size",
        type=int,
        default=SUBMISSION_SIZE,
        help="side of the stored probability maps (default %(default)s); 0 keeps the image size",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="views per forward pass (images read together)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: MODEL.DEVICE; 'auto': the GPU if any)")
    parser.add_argument("--num-gpus", type=int, help="one worker process per GPU cuda:0..N-1 (0: the CPU)")
    parser.add_argument("--devices", nargs="+", metavar="DEV", help="one worker process per device listed")
    parser.add_argument(
        "--num-workers", type=int, default=0, help="worker processes on --device (0 or 1: in this process)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default; workers share)"
    )
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (fast on GPUs; results differ slightly)")
    parser.add_argument("--skip-bad", action="store_true", help="log and count unreadable images (no CSV row)")
    parser.add_argument("--overwrite", action="store_true", help="predict every image again, replacing OUT's files")
    parser.add_argument("--overlays", type=int, default=16, help="overlay PNGs to write (0: none)")
    parser.add_argument("--allow-pickle", action="store_true", help="allow pickled checkpoints (runs code)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (last)")
    args = parser.parse_args(argv)
    # nargs="+" lists swallow trailing KEY VALUE overrides: give them back
    args.opts = list(args.opts or [])
    for name in ("weights_scale", "weights"):
        values = getattr(args, name)
        if values:
            cut = next((i for i, value in enumerate(values) if _CONFIG_KEY.match(value)), len(values))
            args.opts = values[cut:] + args.opts
            setattr(args, name, values[:cut])
    if not args.weights:
        parser.error("--weights needs at least one checkpoint")
    if args.weights_scale is not None:
        try:
            args.weights_scale = [float(value) for value in args.weights_scale]
        except ValueError:
            parser.error(f"--weights-scale takes numbers, got {args.weights_scale}")
    return args


def resolve_devices(args: argparse.Namespace, model_device: str) -> list[str]:
    """One device per process: a single entry runs in this process."""
    chosen = [args.devices is not None, args.num_gpus is not None, args.num_workers > 1]
    if sum(chosen) > 1:
        raise PredictError("use one of --devices, --num-gpus and --num-workers")
    if args.devices:
        devices = [device for entry in args.devices for device in entry.split(",") if device]
    elif args.num_gpus is not None:
        if args.num_gpus <= 0:
            return ["cpu"]
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if args.num_gpus > available:
            raise PredictError(f"--num-gpus {args.num_gpus}: {available} GPU(s) available")
        devices = [f"cuda:{index}" for index in range(args.num_gpus)]
    else:
        device = args.device or model_device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        devices = [device] * max(1, args.num_workers)
    for device in devices:
        try:
            kind = torch.device(device).type
        except RuntimeError:
            raise PredictError(f"unknown device {device!r} (cpu, cuda or cuda:N)") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise PredictError(f"device {device!r} asked for, but no GPU is available")
        if kind not in ("cpu", "cuda"):
            raise PredictError(f"device {device!r}: only cpu and cuda are supported")
    return devices


def _settings_of(meta: dict) -> dict:
    """The SETTINGS of a meta.json, older files (one 'weights' string) included."""
    settings = {key: meta[key] for key in SETTINGS if key in meta}
    if isinstance(settings.get("weights"), str):
        settings["weights"] = [settings["weights"]]
        settings.setdefault("weights_scale", [1.0])
    if "weights" in settings:
        settings["weights"] = [str(Path(path).expanduser().resolve()) for path in settings["weights"]]
    if "views" in settings:
        settings["views"] = [list(view) for view in settings["views"]]
    return settings


def check_resume(meta_path: Path, settings: dict) -> None:
    """Refuse to reuse predictions made with other settings (a folder with npz files and another meta.json)."""
    if not meta_path.is_file():
        return
    try:
        old = _settings_of(json.loads(meta_path.read_text()))
    except (OSError, ValueError):
        return  # unreadable meta.json (e.g. an old run killed while writing): the npz checks decide
    detail = changed_settings(old, _settings_of(settings), SETTINGS)
    if detail:
        raise PredictError(
            f"{meta_path.parent} holds predictions made with other settings ({detail}). "
            "Use another --out, or --overwrite to predict every image again."
        )


def find_pending(images: list[dict], out: Path, class_names: list[str], prob_size: int) -> tuple[list, int, int]:
    """(images to predict, how many are done, how many had a broken npz); the npz files are checked in threads."""

    def check(image: dict) -> str | None:
        path = probability_path(out, image["file_name"])
        if not path.is_file():
            return "missing"
        return check_probabilities(path, image["file_name"], class_names, prob_size)

    pending, done, broken = [], 0, 0
    with ThreadPoolExecutor(max_workers=min(8, usable_cpus() + 2)) as pool:
        for image, problem in zip(images, pool.map(check, images), strict=True):
            if problem is None:
                done += 1
                continue
            if problem != "missing":
                logger.warning("%s; predicting it again", problem)
                broken += 1
            pending.append(image)
    return pending, done, broken


def run_in_workers(job: PredictionJob, devices: list[str], bar: tqdm) -> list[dict]:
    """One spawned process per device, each running `job` on every len(devices)-th image; returns their stats.
    The first failure stops the others and is raised (naming the worker, its device and the error)."""
    world = len(devices)
    # torch threads per worker: --threads, else the cores shared out (no oversubscription)
    threads = job.num_threads or max(1, usable_cpus() // world)
    context = mp.get_context("spawn")
    events = context.Queue()
    processes = []
    for rank, device in enumerate(devices):
        shard = replace(job, images=job.images[rank::world], device=device, num_threads=threads)
        process = context.Process(target=run_worker, args=(rank, shard, events), name=f"predict-worker-{rank}")
        process.start()
        processes.append(process)
    finished: dict[int, dict] = {}
    success = False

    def handle(event: str, rank: int, value) -> None:
        if event in ("image", "bad"):
            bar.update(1)
        elif event == "done":
            finished[rank] = value
        elif event == "error":
            message, trace = value
            logger.error("worker %d (%s) failed:\n%s", rank, devices[rank], trace)
            raise PredictError(f"worker {rank} ({devices[rank]}): {message}")

    try:
        while len(finished) < world:
            with contextlib.suppress(queue_module.Empty):
                handle(*events.get(timeout=1.0))
            for rank, process in enumerate(processes):
                if rank not in finished and process.exitcode is not None:
                    while rank not in finished:  # its last messages were sent before it exited
                        try:
                            handle(*events.get(timeout=0.5))
                        except queue_module.Empty:
                            break
                    if rank not in finished:
                        raise PredictError(
                            f"worker {rank} ({devices[rank]}) exited with code {process.exitcode} before finishing"
                        )
        success = True
    finally:
        for process in processes:
            if not success and process.is_alive():
                process.terminate()
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()
    return [finished[rank] for rank in range(world)]


def write_outputs(
    out: Path, images: list[dict], class_names: list[str], overlays: int, skip_bad: bool
) -> tuple[Path, int, list[str]]:
    """OUT/submission.csv from every image's npz (json order, atomically) and the first `overlays` overlays;
    returns (csv, rows, file names without a prediction)."""
    palette = palette_for(class_names)
    missing: list[str] = []

    def label_of(image: dict) -> np.ndarray | None:
        path = probability_path(out, image["file_name"])
        if not path.is_file():
            return None
        return load_label_map(path)

    def rows():
        written = 0
        with ThreadPoolExecutor(max_workers=min(8, usable_cpus() + 2)) as pool:
            for image, label in zip(images, pool.map(label_of, images), strict=True):
                if label is None:
                    if not skip_bad:  # raised inside the writer: the old CSV stays as it was
                        path = probability_path(out, image["file_name"])
                        raise PredictError(f"no prediction for {image['file_name']} ({path} missing)")
                    missing.append(image["file_name"])
                    continue
                if written < overlays:
                    bgr = read_image(image["path"])
                    full = cv2.resize(label, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_NEAREST)
                    ok, encoded = cv2.imencode(".png", np.hstack([bgr, overlay(bgr, full, palette)]))
                    name = Path(image["file_name"]).with_suffix(".png")
                    atomic_write_bytes(out / "overlays" / name, encoded.tobytes())
                    written += 1
                yield image["file_name"], downsample_label_map(label)

    csv = out / "submission.csv"
    count = write_submission(csv, rows())
    return csv, count, missing


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    with logging_to(args.out):
        try:
            return predict(args)
        except (
            PredictError,
            CheckpointMismatchError,
            DataError,
            ImageReadError,
            FileNotFoundError,
            PermissionError,
        ) as e:
            logger.error("%s", e)
            sys.exit(f"predict.py: {e}")


def predict(args: argparse.Namespace) -> Path:
    start = time.perf_counter()
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.tta:
        cfg.TEST.AUG.ENABLED = True
    cfg.freeze()
    weights = [str(Path(path).expanduser().resolve()) for path in args.weights]
    for path in weights:
        if not Path(path).is_file():
            raise PredictError(f"checkpoint not found: {path}")
    try:
        scale = normalize_weights(args.weights_scale, len(weights)).tolist()
    except EnsembleError:
        raise PredictError(
            f"--weights-scale {args.weights_scale}: one non-negative number per checkpoint, with a positive sum"
        ) from None
    if args.batch_size < 1 or args.prob_size < 0:
        raise PredictError("--batch-size must be >= 1 and --prob-size >= 0")

    devices = resolve_devices(args, cfg.MODEL.DEVICE)

    json_path = Path(args.json)
    image_root = Path(args.image_root) if args.image_root else json_path.parent
    data = read_coco_json(json_path)
    if not data["images"]:
        raise PredictError(f"{json_path} lists no images")
    class_names = class_names_from_categories(data["categories"])
    if len(class_names) != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
        raise PredictError(
            f"{json_path} has {len(class_names)} classes, the model {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}"
        )
    images, seen = [], {}
    for image in data["images"]:
        if "file_name" not in image or "id" not in image:
            raise PredictError(f"{json_path}: an image entry without file_name or id: {image}")
        key = probability_path("", image["file_name"])
        if key in seen:
            raise PredictError(f"{json_path}: {seen[key]!r} and {image['file_name']!r} map to the same file {key}")
        seen[key] = image["file_name"]
        images.append(
            {"id": image["id"], "file_name": image["file_name"], "path": str(image_root / image["file_name"])}
        )

    out = Path(args.out)
    views = inference_views(cfg)
    settings = {
        "class_names": class_names,
        "weights": weights,
        "weights_scale": scale,
        "views": [list(view) for view in views],
        "max_size": inference_max_size(cfg),
        "prob_size": args.prob_size,
    }
    meta = {
        **settings,
        "config_file": args.config_file,
        "opts": args.opts,
        "json": str(json_path),
        "image_root": str(image_root),
        "tta": bool(cfg.TEST.AUG.ENABLED),
        "amp": args.amp,
        "complete": False,
    }
    remove_stale_temporaries(out / "probs", "*.npz")
    if args.overwrite:
        pending, done, broken = list(images), 0, 0
    else:
        pending, done, broken = find_pending(images, out, class_names, args.prob_size)
        if done + broken:  # files to reuse: only if they were made the same way
            check_resume(out / "meta.json", settings)
    atomic_write_json(out / "meta.json", meta, indent=2)
    devices = devices[: max(1, len(pending))]  # no idle workers
    logger.info(
        "%d images: %d already predicted, %d to predict (%d with a broken npz) on %s; %d view(s) x %d checkpoint(s)",
        len(images),
        done,
        len(pending),
        broken,
        ", ".join(devices),
        len(views),
        len(weights),
    )

    job = PredictionJob(
        cfg=cfg,
        weights=weights,
        weights_scale=scale,
        images=pending,
        out=str(out),
        class_names=class_names,
        prob_size=args.prob_size,
        batch_size=args.batch_size,
        device=devices[0],
        skip_bad=args.skip_bad,
        allow_pickle=args.allow_pickle or cfg.MODEL.ALLOW_PICKLE,
        amp=args.amp,
        num_threads=max(0, args.threads),
    )
    began = time.perf_counter()
    with tqdm(total=len(pending), desc="predict", unit="img", dynamic_ncols=True, smoothing=0.1) as bar:
        if not pending:
            results = []
        elif len(devices) == 1:
            results = [run_job(job, lambda event, value: bar.update(1))]
        else:
            results = run_in_workers(job, devices, bar)
    seconds = time.perf_counter() - began
    predicted = sum(result["predicted"] for result in results)
    bad = [entry for result in results for entry in result["bad_images"]]

    csv, rows, missing = write_outputs(out, images, class_names, args.overlays, args.skip_bad)
    rate = predicted / seconds if predicted and seconds > 0 else 0.0
    meta.update(
        complete=True,
        images=len(images),
        predicted=predicted,
        skipped=done,
        redone=broken,
        bad_images=bad,
        csv_rows=rows,
        devices=devices,
        batch_size=args.batch_size,
        seconds=round(seconds, 3),
        images_per_second=round(rate, 4),
    )
    atomic_write_json(out / "meta.json", meta, indent=2)
    where = f"{len(devices)} x {devices[0]}" if len(set(devices)) == 1 and len(devices) > 1 else ", ".join(devices)
    summary = (
        f"predict.py: {len(images)} images: {predicted} predicted in {seconds:.1f} s ({rate:.2f} images/s on "
        f"{where}, batch {args.batch_size}, {len(views)} view(s) x {len(weights)} checkpoint(s)), "
        f"{done} already done, {len(bad)} unreadable; {rows} CSV rows; {time.perf_counter() - start:.1f} s in all"
    )
    logger.info(summary)
    print(summary)
    if missing:
        print(f"predict.py: no CSV row for {len(missing)} unreadable image(s): {', '.join(missing[:5])}")
    print(json.dumps({"submission": str(csv), "probabilities": str(out / "probs"), "images": rows}))
    return csv


if __name__ == "__main__":
    main()
