"""Predict class probabilities and a submission CSV for a set of images (tools/predict.py).

    python tools/predict.py --config-file configs/m2f_swin_l.yaml --weights output/m2f_swin_l/model_final.pth \\
        --json DATA/test.json --out output/predict [--tta] [--batch-size 8] [--overlays 16] [KEY VALUE ...]
    # checkpoint ensemble (same architecture), weighted, TTA, on 4 GPUs:
    python tools/predict.py --config-file CFG --weights a.pth b.pth c.pth --weights-scale 2 1 1 --tta \\
        --num-gpus 4 --batch-size 8 --json DATA/test.json --out output/predict_ens

Writes OUT/probs/<file_name>.npz (float16 class probabilities, see mask2former/io/probabilities.py), OUT/meta.json
(settings and counts), OUT/submission.csv (256x256 label maps, one row per image in the json's order, rebuilt from
all npz files at the end and written atomically), OUT/overlays/<file_name>.png and OUT/log.txt. Nothing is written
outside OUT: a file_name that is absolute or climbs out with '..' is refused (naming the json and the image), and
so is an OUT where an output would replace an input (an image, the json, the config or a checkpoint).

Photos without a json (--input PATH instead of --json; mask2former/pipeline/image_inputs.py, docs/deployment.md): an
image, a folder (recursive, sorted, image extensions only; other files ignored and counted in the log), a quoted
glob pattern, a .txt list of paths (relative to its folder) or a video (every --every N-th frame, stored as
OUT/frames/<video stem>/frame_000123.png). Outputs are named by the path relative to the input; besides probs/,
overlays/ and meta.json the run writes OUT/labels/<name>.png (the label map at the image's size, an indexed PNG
with the class palette) and for a video OUT/overlay.mp4, but no submission.csv (the competition's CSV needs its test
json). The class names are those the checkpoint records, else the config's training dataset's. The job is the
input's path and a fingerprint of its listing; an --out inside the input folder is not read as input.

Probabilities (mask2former/inference/tta.py): every view (the validation mapper's preprocessing,
mask2former/data/transforms.py: view_for_test) goes through the model; its class scores are resized bilinearly to
the stored size (--prob-size, 256 by default; 0: the image size), flipped back, divided by their sum over the
classes, and averaged over the views (--tta: TEST.AUG.MIN_SIZES x flip) and then over the checkpoints (weights
--weights-scale). A non-finite probability map is an error naming the image; no file is written for it.

Exported models: --weights model.onnx (tools/export.py), or a model package folder (its model.onnx), runs the file
on the CPU with --runtime onnxruntime (the default) or openvino, through the same views and outputs
(mask2former/inference/onnx_model.py); the file carries its config and class names, so --config-file may be left
out (it is required for PyTorch checkpoints). A fixed-size export takes only views of its size: images of another
shape are refused before OUT is claimed (counted, the first named); TTA needs a dynamic-size export
(docs/deployment.md).

OUT is predict's own (docs/output_folders.md): a new or empty folder, or one predict made for the same job (the
json by path and content, the image folder, the classes, the checkpoints by path and content, the views,
--prob-size); any other folder is refused, and one predict made for another job too, unless --overwrite (which
deletes what predict recorded there and predicts every image again). Resuming: images whose npz exists, is valid
and was made from the image file as it is now (its sha1) are skipped; a truncated, unreadable or stale one is
predicted again, so rerunning an interrupted command finishes it.

Devices: --device (default MODEL.DEVICE: "auto" = the GPU if there is one) runs in this process. --num-gpus N
means what it means to train_net.py: N processes, one per GPU cuda:0..N-1, or N on the CPU when there is no GPU or
the device is cpu (--device cpu, MODEL.DEVICE cpu); fewer GPUs than N is an error, and --num-gpus 0 is the CPU in
this process. --devices D1 D2 ... starts one process per device listed, --num-workers N starts N on --device.
Each worker predicts whole batches (batches r, r+N, ... of the one-process run) of what is left to do; the parent
shows one progress bar (a log line every 30 s with rate and ETA when stderr is not a terminal) and writes meta.json,
the CSV and the overlays. --threads N sets torch's CPU threads per process (default: torch's default in one
process, the cores shared out between workers; on a busy machine 1 can be several times faster). Put KEY VALUE
config overrides last.

Reproducibility: every batch holds the same images whatever the number of processes, so N workers make the files
one process makes, byte for byte (npz files, CSV, overlays; meta.json but for "devices", "seconds" and
"images_per_second"; log.txt has times), given the same torch thread count per process: --threads T (meta.json's
"threads"). Without it one process takes torch's default (all cores) and N workers the cores / N each, and CPU
float math depends on the thread count (convolutions and matrix products add up in an order that depends on it):
probabilities may then differ in their last bits and a few argmax pixels flip (measured: 3 CSV pixels in 10^6, at
most 1.2e-4 in a probability). Another --batch-size may change the last bits too (a forward pass's numbers depend
on the batch it is in). On GPUs each batch runs on one GPU alike (not measured here).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import queue as queue_module
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from fvcore.common.config import CfgNode

from ..config import load_config
from ..data.classes import palette_for
from ..data.coco_semantic import check_class_lists, class_names_from_categories
from ..errors import UserError
from ..inference.batch import PredictionJob, run_job, run_worker
from ..inference.onnx_model import RUNTIMES, ExportedFile, onnx_config
from ..inference.predictor import PACKAGE_MODEL, RUN_CONFIG, RUN_WEIGHTS
from ..inference.tta import inference_max_size, inference_views
from ..io.checkpoints import recorded_class_names
from ..io.coco_json import read_coco_json
from ..io.files import atomic_write_bytes, output_path, remove_stale_temporaries, safe_relative_name
from ..io.images import read_image
from ..io.probabilities import PROBS_FOLDER, check_probabilities, load_label_map, probability_path
from ..io.submission import SUBMISSION_SIZE, downsample_label_map, write_submission
from ..io.video import read_frames
from ..modeling import register_all  # noqa: F401  (every model family's config keys and classes)
from ..utils.output_folder import file_sha1
from ..utils.processes import cores_per_process, usable_cpus
from ..utils.progress import Progress
from ..utils.visualize import overlay, shrink_for_overlay
from .image_inputs import (
    INPUT_OUTPUTS,
    InputListing,
    input_class_names,
    list_inputs,
    planned_input_outputs,
    ready_listing,
    write_input_outputs,
)
from .output_job import JobRecord, announce, output_job, rate
from .voting import EnsembleError, normalize_weights

logger = logging.getLogger("predict")

# the files OUT holds besides probs/ and overlays/
FIXED_OUTPUTS = ("meta.json", "submission.csv", "log.txt")
OVERLAYS_FOLDER = "overlays"
LABEL_KEYS = ("label map", "label_maps", "labels")  # --input: what a run counts, meta.json's count, the result's key
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


class PredictError(UserError):
    """A problem with the command's inputs or a worker's failure; the message says which."""


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_model_arguments(parser)
    _add_image_arguments(parser)
    _add_run_arguments(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (last)")
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """What predicts: the config, the checkpoints or exported files, their weights, the runtime."""
    parser.add_argument(
        "--config-file", help="the model's config (required for PyTorch checkpoints; an .onnx file carries its own)"
    )
    parser.add_argument(
        "--weights",
        required=True,
        nargs="+",
        metavar="CKPT",
        help="checkpoint(s) (.pth, .ckpt, .safetensors) or exported model(s) (.onnx, tools/export.py, or a model "
        "package folder); several: an ensemble of the config's architecture",
    )
    parser.add_argument(
        "--weights-scale", nargs="+", metavar="W", help="ensemble weight of each checkpoint (default: equal)"
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="onnxruntime",
        help="what runs .onnx weights, on the CPU (default %(default)s)",
    )


def _add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """What is predicted and where the results go."""
    listing = parser.add_mutually_exclusive_group(required=True)
    listing.add_argument("--json", help="COCO json listing the images (e.g. test.json)")
    listing.add_argument(
        "--input",
        metavar="PATH",
        help="instead of --json: an image, a folder, a glob pattern (quoted), a .txt list of paths or a video; "
        "writes label maps, no CSV (docs/deployment.md)",
    )
    parser.add_argument("--every", type=int, default=1, metavar="N", help="--input video: every N-th frame")
    parser.add_argument("--image-root", help="folder that file_name is relative to (default: the json's folder)")
    parser.add_argument("--out", required=True, help="output folder (nothing is written outside it)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """How: TTA, stored sizes, batches, devices, processes, threads, bad images, overlays."""
    parser.add_argument("--tta", action="store_true", help="enable TEST.AUG (flip and TEST.AUG.MIN_SIZES scales)")
    parser.add_argument(
        "--prob-size",
        type=int,
        default=SUBMISSION_SIZE,
        help="side of the stored probability maps (default %(default)s); 0 keeps the image size",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="views per forward pass (images read together)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: MODEL.DEVICE; 'auto': the GPU if any)")
    parser.add_argument(
        "--num-gpus",
        type=int,
        metavar="N",
        help="N processes as in train_net.py: on GPUs cuda:0..N-1, on the CPU without a GPU or with device cpu "
        "(0: the CPU, in this process)",
    )
    parser.add_argument("--devices", nargs="+", metavar="DEV", help="one worker process per device listed")
    parser.add_argument(
        "--num-workers", type=int, default=0, help="worker processes on --device (0 or 1: in this process)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads per process (0: torch's default in one process, the cores shared out between workers); "
        "the same --threads gives the same bytes whatever the worker count",
    )
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (fast on GPUs; results differ slightly)")
    parser.add_argument("--skip-bad", action="store_true", help="log and count unreadable images (no CSV row)")
    parser.add_argument("--overwrite", action="store_true", help="predict every image again, replacing OUT's files")
    parser.add_argument("--overlays", type=int, default=16, help="overlay PNGs to write (0: none)")
    parser.add_argument("--allow-pickle", action="store_true", help="allow pickled checkpoints (runs code)")


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """The command line as a namespace; --weights-scale values that are not numbers raise PredictError."""
    args = build_parser(description).parse_args(argv)
    # nargs="+" lists swallow trailing KEY VALUE overrides: give them back
    args.opts = list(args.opts or [])
    for name in ("weights_scale", "weights"):
        values = getattr(args, name)
        if values:
            cut = next((i for i, value in enumerate(values) if _CONFIG_KEY.match(value)), len(values))
            args.opts = values[cut:] + args.opts
            setattr(args, name, values[:cut])
    if not args.weights:
        raise PredictError("--weights needs at least one checkpoint (before any KEY VALUE override)")
    if args.weights_scale is not None:
        try:
            args.weights_scale = [float(value) for value in args.weights_scale]
        except ValueError:
            raise PredictError(
                f"--weights-scale takes numbers, got {' '.join(args.weights_scale)}: one number per checkpoint"
            ) from None
    return args


def resolve_devices(args: argparse.Namespace, model_device: str) -> list[str]:
    """One device per process: a single entry runs in this process."""
    chosen = [args.devices is not None, args.num_gpus is not None, args.num_workers > 1]
    if sum(chosen) > 1:
        raise PredictError("use one of --devices, --num-gpus and --num-workers")
    if args.devices:
        devices = [device for entry in args.devices for device in entry.split(",") if device]
    elif args.num_gpus is not None:
        devices = devices_for_num_gpus(args.num_gpus, args.device or model_device)
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


def devices_for_num_gpus(count: int, device: str) -> list[str]:
    """--num-gpus N as train_net.py reads it: N processes, on the GPUs cuda:0..N-1 when `device` (--device, else
    MODEL.DEVICE) is auto or cuda and there is a GPU, else on the CPU; 0: the CPU, in this process. Refused: fewer
    GPUs than asked, cuda on a machine without one, a cuda:K device (name such devices with --devices)."""
    if count < 0:
        raise PredictError(f"--num-gpus {count}: give a process count >= 0 (0: the CPU, in this process)")
    if count == 0:
        return ["cpu"]
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        parsed = torch.device("cuda" if device == "auto" else device)
    except RuntimeError:
        raise PredictError(f"unknown device {device!r} (cpu, cuda or cuda:N)") from None
    if parsed.type == "cpu" or (device == "auto" and not available):
        return ["cpu"] * count
    if parsed.type != "cuda":
        raise PredictError(f"device {device!r}: only cpu and cuda are supported")
    if parsed.index is not None:
        raise PredictError(
            f"--num-gpus {count} with device {device!r}: --num-gpus runs on cuda:0..{count - 1}; "
            "name other GPUs with --devices"
        )
    if count > available:
        hint = "" if available else " (--device cpu: that many processes on the CPU)"
        raise PredictError(f"--num-gpus {count}: {available} GPU(s) available{hint}")
    return [f"cuda:{index}" for index in range(count)]


def read_image_list(json_path: Path, image_root: Path, num_classes: int) -> tuple[list[dict], list[str]]:
    """The json's images as [{"id", "file_name", "path"}] and its class names. Refused, naming the json and the
    image: no images, another class count than the model's, an entry without file_name or id, a file_name that is
    absolute or climbs out with '..' (its outputs would leave OUT), two file_names with the same output name."""
    data = read_coco_json(json_path)
    if not data["images"]:
        raise PredictError(f"{json_path} lists no images")
    class_names = class_names_from_categories(data["categories"])
    if len(class_names) != num_classes:
        raise PredictError(
            f"{json_path} has {len(class_names)} classes ({len(class_names) - 1} categories and background), "
            f"the model {num_classes}: a json or a config for another class list?"
        )
    images, seen = [], {}
    for image in data["images"]:
        if "file_name" not in image or "id" not in image:
            raise PredictError(f"{json_path}: an image entry without file_name or id: {image}")
        name = str(image["file_name"])
        key = safe_relative_name(name, f"{json_path}: image id {image['id']} file_name").with_suffix("")
        if key in seen:
            raise PredictError(
                f"{json_path}: {seen[key]!r} and {name!r} map to the same output files ({key}.npz, {key}.png)"
            )
        seen[key] = name
        images.append({"id": image["id"], "file_name": name, "path": str(image_root / name)})
    return images, class_names


def overlay_path(out: Path, file_name: str) -> Path:
    """OUT/overlays/<file_name with .png>, refused if it would leave OUT."""
    return output_path(out / OVERLAYS_FOLDER, file_name, ".png")


def planned_outputs(out: Path, images: list[dict], overlays: int) -> Iterable[tuple[Path, str]]:
    """(path, what it is) for every file a run may write under OUT."""
    for name in FIXED_OUTPUTS:
        yield out / name, name
    for image in images:
        yield probability_path(out, image["file_name"]), f"the probabilities of image id {image['id']}"
        if overlays > 0:
            yield overlay_path(out, image["file_name"]), f"the overlay of image id {image['id']}"


def check_outputs_spare_inputs(
    out: Path,
    images: list[dict],
    overlays: int,
    json_path: Path | None,
    others: dict[str, str],
    more_outputs: Iterable[tuple[Path, str]] = (),
) -> None:
    """Refuse an OUT where an output file (`planned_outputs` and `more_outputs`) would replace an input: an image
    of the json (or of --input: json_path None), the json itself, or one of `others` ({path: what}, e.g. the config
    and the checkpoints). Paths are compared resolved (symlinks)."""
    inputs = {Path(path).resolve(): what for path, what in others.items()}
    if json_path is not None:
        inputs[json_path.resolve()] = "the --json file"
    for image in images:
        what = f"image id {image['id']} ({image['file_name']}) of {json_path or 'the --input listing'}"
        inputs.setdefault(Path(image["path"]).resolve(), what)
    for path, what in itertools.chain(planned_outputs(out, images, overlays), more_outputs):
        source = inputs.get(path.resolve())
        if source is not None:
            raise PredictError(
                f"--out {out}: {what} would be written to {path}, which is {source}; "
                "predict never replaces an input: choose another --out"
            )


def job_of(plan: Plan) -> dict:
    """What identifies a prediction folder's job: the image list (the json, by path and content, and the image
    folder; or --input's path and a fingerprint of its listing) and every setting its numbers depend on. A folder
    made for another job is refused (or started over with --overwrite)."""
    views = inference_views(plan.cfg)
    if plan.listing is not None:
        source = plan.listing.identity()
    else:
        source = {"json": str(plan.json_path.resolve()), "json_sha1": file_sha1(plan.json_path)}
        source["image_root"] = str(plan.image_root.resolve())
    return {
        **source,
        "class_names": plan.class_names,
        "weights": plan.weights,
        "weights_sha1": [file_sha1(path) for path in plan.weights],
        "weights_scale": plan.weights_scale,
        "views": [list(view) for view in views],
        "max_size": inference_max_size(plan.cfg),
        "prob_size": plan.args.prob_size,
        **runtime_of(plan),
    }


def runtime_of(plan: Plan) -> dict:
    """{"runtime": --runtime} when exported files are predicted with (their numbers depend on it), else {}."""
    return {"runtime": plan.args.runtime} if any(is_exported(path) for path in plan.weights) else {}


def _fingerprint(image: dict) -> None:
    try:
        image["sha1"] = file_sha1(image["path"])
    except OSError:
        image["sha1"] = ""  # unreadable: predicting it names the problem (or skips it with --skip-bad)


def fingerprint_images(images: list[dict]) -> None:
    """Record each image's sha1 in its entry ("sha1"), in threads: what its npz records it was made from."""
    with ThreadPoolExecutor(max_workers=min(8, usable_cpus() + 2)) as pool:
        list(pool.map(_fingerprint, images))


def find_pending(images: list[dict], out: Path, class_names: list[str], prob_size: int) -> tuple[list, int, int]:
    """(images to predict, how many are done, how many had a broken or stale npz). Done means a valid npz made
    from the image file as it is now: each image's sha1 is recorded in its entry ("sha1") and compared with the
    one its npz was made from, so a changed image under the same name is predicted again. Checked in threads."""

    def check(image: dict) -> str | None:
        _fingerprint(image)
        path = probability_path(out, image["file_name"])
        if not path.is_file():
            return "missing"
        return check_probabilities(path, image["file_name"], class_names, prob_size, image["sha1"])

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


def batches_of(images: list[dict], batch_size: int) -> list[list[dict]]:
    """The images in consecutive groups of `batch_size` (the last one shorter): what `run_job` predicts together."""
    step = max(1, batch_size)
    return [images[start : start + step] for start in range(0, len(images), step)]


def shard_images(images: list[dict], world: int, batch_size: int) -> list[list[dict]]:
    """Worker r's images: batches r, r + world, ... of the one-process run. Every batch but the last is full, so a
    worker re-batching its shard forms exactly those batches: each forward pass holds the same images as in one
    process, and the outputs do not depend on the worker count (a batch's numbers depend on what it holds)."""
    batches = batches_of(images, batch_size)
    return [[image for batch in batches[rank::world] for image in batch] for rank in range(world)]


def threads_per_process(requested: int, processes: int) -> int:
    """torch's CPU threads in each process: --threads, else torch's default in one process and the cores shared out
    between workers (no oversubscription)."""
    if requested > 0:
        return requested
    return torch.get_num_threads() if processes == 1 else cores_per_process(processes)


def run_in_workers(job: PredictionJob, devices: list[str], meter: Progress) -> list[dict]:
    """One spawned process per device, each running `job` (with `job.num_threads` threads, 0: the cores shared out)
    on its `shard_images` share; returns their stats. The first failure stops the others and is raised (naming the
    worker, its device and the error). The workers die with this process, however it ends, and hold its lock on
    OUT until they are gone (`start_child`)."""
    from ..utils.processes import start_child

    world = len(devices)
    threads = threads_per_process(job.num_threads, world)
    context = mp.get_context("spawn")
    events = context.Queue()
    processes = []
    shards = shard_images(job.images, world, job.batch_size)
    for rank, (device, images) in enumerate(zip(devices, shards, strict=True)):
        shard = replace(job, images=images, device=device, num_threads=threads)
        processes.append(start_child(context, run_worker, (rank, shard, events), f"predict-worker-{rank}"))
    finished: dict[int, dict] = {}
    success = False

    def handle(event: str, rank: int, value) -> None:
        if event in ("image", "bad"):
            meter.update(1)
        elif event == "done":
            finished[rank] = value
        elif event == "error":
            message, trace, user_error = value
            if not user_error:  # a bug: its traceback, then a failure that keeps the parent's traceback too
                logger.error("worker %d (%s) failed:\n%s", rank, devices[rank], trace)
                raise RuntimeError(f"worker {rank} ({devices[rank]}): {message}")
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
                    bgr = shrink_for_overlay(read_image(image["path"]))  # a huge photo: a bounded picture
                    full = cv2.resize(label, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_NEAREST)
                    ok, encoded = cv2.imencode(".png", np.hstack([bgr, overlay(bgr, full, palette)]))
                    atomic_write_bytes(overlay_path(out, image["file_name"]), encoded.tobytes())
                    written += 1
                yield image["file_name"], downsample_label_map(label)

    csv = out / "submission.csv"
    count = write_submission(csv, rows())
    return csv, count, missing


@dataclass
class Plan:
    """A checked command: what `run` needs, found before anything is written."""

    args: argparse.Namespace
    cfg: CfgNode
    weights: list[str]  # resolved paths
    weights_scale: list[float]  # normalised to sum 1
    devices: list[str]
    json_path: Path | None  # None: --input
    image_root: Path | None
    images: list[dict]  # {"id", "file_name", "path"}
    class_names: list[str]
    out: Path
    listing: InputListing | None = None  # --input's


def prepare(args: argparse.Namespace) -> Plan:
    """Check the command `args` describes, writing nothing: every problem with the inputs raises a UserError
    (config, checkpoints, --weights-scale, devices, the json and its images, an --out that would replace an
    input)."""
    args.weights = [model_file(path) for path in args.weights]
    cfg = prediction_config(args)
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
    for option, value, meaning in (
        ("--overlays", args.overlays, "overlay PNGs to write (0: none)"),
        ("--threads", args.threads, "torch CPU threads per process (0: the default)"),
        ("--num-workers", args.num_workers, "worker processes (0 or 1: in this process)"),
    ):
        if value < 0:
            raise PredictError(f"{option} {value}: give a number >= 0 of {meaning}")
    devices = resolve_devices(args, cfg.MODEL.DEVICE)
    listing, json_path, image_root = None, None, None
    if args.input is not None:
        listing, class_names = input_images(args, cfg, weights)
        images = listing.images
    else:
        json_path, image_root, images, class_names = json_images(args, cfg, weights)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise PredictError(f"--out {out} is a file: give a folder (it is created if missing)")
    config = {args.config_file: "the --config-file"} if args.config_file else {}
    others = {**config, **{path: "a --weights checkpoint" for path in weights}}
    more_outputs = planned_input_outputs(out, listing) if listing is not None else ()
    if listing is not None and Path(args.input).expanduser().is_file():
        others[args.input] = f"the --input {listing.kind}"
    check_outputs_spare_inputs(out, images, args.overlays, json_path, others, more_outputs)
    check_view_sizes(cfg, weights, images, listing)
    return Plan(args, cfg, weights, scale, devices, json_path, image_root, images, class_names, out, listing)


def json_images(args: argparse.Namespace, cfg: CfgNode, weights: list[str]) -> tuple[Path, Path, list, list[str]]:
    """(json, image folder, images, class names) of a --json run, the classes checked against those the weights
    record."""
    if args.every != 1:
        raise PredictError(f"--every {args.every} takes frames of an --input video, not of --json images")
    json_path = Path(args.json)
    image_root = Path(args.image_root) if args.image_root else json_path.parent
    images, class_names = read_image_list(json_path, image_root, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    for path in weights:  # a model records the classes it was trained on: the json's must be those, by name
        recorded = recorded_classes(path, cfg, args)
        if recorded is not None:
            check_class_lists(
                class_names,
                str(json_path),
                recorded,
                f"{path} (the classes it was trained on)",
                "predict with a json of the model's class list, or with the model trained on this one",
            )
    return json_path, image_root, images, class_names


def recorded_classes(path: str, cfg: CfgNode, args: argparse.Namespace) -> list[str] | None:
    """The class names a --weights file records (an exported file always; a checkpoint trained here), else None."""
    if is_exported(path):
        return exported_class_names(path, cfg)
    return recorded_class_names(path, args.allow_pickle or cfg.MODEL.ALLOW_PICKLE)


def input_images(args: argparse.Namespace, cfg: CfgNode, weights: list[str]) -> tuple[InputListing, list[str]]:
    """--input's listing (pipeline/image_inputs.py) and the class names to label with (their source goes to the log)."""
    if args.image_root:
        raise PredictError("--image-root goes with --json; --input paths are taken as they are")
    listing = list_inputs(args.input, Path(args.out), args.every)
    class_names, listing.class_source = input_class_names(cfg, weights, lambda path: recorded_classes(path, cfg, args))
    return listing, class_names


WEIGHTS_TAKEN = (
    "--weights takes PyTorch checkpoints (.pth, .ckpt, .safetensors, .pkl; with --config-file), exported models "
    "(.onnx, tools/export.py) or a model package folder (tools/export.py --package)"
)
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".pkl", ".bin")
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive, a pickle


def model_file(path: str) -> str:
    """A --weights entry as the file predict reads: a model package folder's model.onnx (as `Predictor` takes the
    folder), else the path itself. Refused in one line, saying what --weights takes: a run folder or another folder,
    and a file that is neither an .onnx file nor a checkpoint (by its suffix, or a torch.save zip / pickle)."""
    given = Path(path).expanduser()
    if given.is_dir():
        if (given / PACKAGE_MODEL).is_file():
            return str(given / PACKAGE_MODEL)
        if (given / RUN_CONFIG).is_file() and (given / RUN_WEIGHTS).is_file():
            raise PredictError(
                f"--weights {path} is a training run's folder: give --config-file {given / RUN_CONFIG} "
                f"--weights {given / RUN_WEIGHTS}"
            )
        raise PredictError(f"--weights {path} is a folder without {PACKAGE_MODEL}: {WEIGHTS_TAKEN}")
    if not given.is_file() or is_exported(path) or given.suffix.lower() in CHECKPOINT_SUFFIXES:
        return path  # a missing file is named by `prepare`, a damaged checkpoint by its reader
    try:
        with given.open("rb") as handle:
            head = handle.read(4)
    except OSError:
        return path  # unreadable: its reader names the problem
    if not head.startswith(_CHECKPOINT_MAGIC):
        raise PredictError(f"--weights {path} is not a checkpoint or an exported model: {WEIGHTS_TAKEN}")
    return path


def check_view_sizes(cfg: CfgNode, weights: list[str], images: list[dict], listing: InputListing | None) -> None:
    """Refuse, before OUT is claimed, images whose test-time views a fixed-size exported --weights file cannot
    take (`ExportedFile.check_view_sizes`: every such image counted, the first named): each image's size is read
    from its header, a video's from its first frame. An unreadable image is left to the run (or --skip-bad)."""
    fixed = [file for file in (ExportedFile(path) for path in weights if is_exported(path)) if file.input_size]
    if not fixed:
        return
    if listing is not None and listing.kind == "video":
        with contextlib.closing(read_frames(Path(listing.spec).expanduser(), 1)) as frames:
            first = next(frames, None)
        sizes = [] if first is None else [(f"the frames of {listing.spec}", first[1].shape[:2])]
    else:
        with ThreadPoolExecutor(max_workers=min(8, usable_cpus() + 2)) as pool:
            stored = list(pool.map(stored_size, [image["path"] for image in images]))
        sizes = [(image["file_name"], size) for image, size in zip(images, stored, strict=True) if size]
    for exported in fixed:
        exported.check_view_sizes(sizes, inference_views(cfg), inference_max_size(cfg))


def stored_size(path: str) -> tuple[int, int] | None:
    """(height, width) of an image file's stored pixels, from its header; None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 (PIL raises several kinds for a file it cannot read: left to the run)
        return None
    return int(height), int(width)


def is_exported(path: str) -> bool:
    """An exported model (.onnx, run by --runtime) rather than a PyTorch checkpoint."""
    return path.lower().endswith(".onnx")


def prediction_config(args: argparse.Namespace) -> CfgNode:
    """The config to predict with (the overrides and --tta applied): --config-file's, or without it, when every
    --weights is an exported .onnx file, the first file's recorded config (inference/onnx_model.py onnx_config)."""
    opts = [*args.opts, *(["TEST.AUG.ENABLED", "True"] if args.tta else [])]
    if args.config_file:
        return load_config(args.config_file, opts)
    if not all(is_exported(path) for path in args.weights):
        raise PredictError(
            "--config-file is required with PyTorch checkpoints (an exported .onnx file or a model package folder "
            "carries its own config): give the config the checkpoint was trained with (its run's config.yaml)"
        )
    return onnx_config(ExportedFile(args.weights[0]), opts)


def exported_class_names(path: str, cfg: CfgNode) -> list[str]:
    """The classes an exported file records; refused when it takes another channel order than the config's."""
    exported = ExportedFile(path)
    if exported.input_format != cfg.INPUT.FORMAT:
        raise PredictError(
            f"{path} takes {exported.input_format} images, the config INPUT.FORMAT {cfg.INPUT.FORMAT}: "
            "predict with the config the file was exported from (or without --config-file)"
        )
    return exported.class_names


def predict(args: argparse.Namespace) -> Path:
    """The whole command (see the module docstring): `prepare`, then `run` with OUT/log.txt; returns
    OUT/submission.csv (OUT/labels with --input)."""
    start = time.perf_counter()
    checked = prepare(args)
    writes = [*FIXED_OUTPUTS, PROBS_FOLDER, OVERLAYS_FOLDER, *(INPUT_OUTPUTS if args.input else ())]
    # one run per OUT (a second one stops here); OUT is predict's own, for this job, or new
    with output_job(checked.out, "predict.py", job_of(checked), writes, overwrite=args.overwrite):
        return run(checked, start)


def run(plan: Plan, start: float | None = None) -> Path:
    """Predict what `plan` lists into its OUT (resuming what is there) and write the CSV (--input: the label maps)
    and the overlays."""
    start = time.perf_counter() if start is None else start
    if plan.listing is not None:  # --input: a video's frames are taken now, under OUT's lock
        plan = replace(plan, images=ready_listing(plan.listing, plan.out))
    args, out, images = plan.args, plan.out, plan.images
    settings = prediction_settings(plan)
    record = JobRecord(out, meta_of(plan, settings))
    pending, done, broken = images_to_predict(plan)
    record.begin()
    devices = plan.devices[: max(1, len(batches_of(pending, args.batch_size)))]  # no idle workers
    logger.info(
        "%d images: %d already predicted, %d to predict (%d with a broken or stale npz) on %s; "
        "%d view(s) x %d checkpoint(s)",
        len(images),
        done,
        len(pending),
        broken,
        ", ".join(devices),
        len(settings["views"]),
        len(plan.weights),
    )
    job = prediction_job(plan, pending, devices)
    began = time.perf_counter()
    results = predict_pending(job, devices)
    seconds = time.perf_counter() - began
    predicted = sum(result["predicted"] for result in results)
    csv, rows, missing = write_results(plan, pending)
    row, count_key, result_key = ("CSV row", "csv_rows", "submission") if plan.listing is None else LABEL_KEYS
    sources = [[image["file_name"], image.get("sha1", "")] for image in images]
    record.finish(
        predictions_id=hashlib.sha1(json.dumps([settings, sources], default=str).encode()).hexdigest(),
        images=len(images),
        predicted=predicted,
        skipped=done,
        redone=broken,
        bad_images=bad_images_in_json_order(results, images),
        **{count_key: rows},
        devices=devices,
        threads=job.num_threads,
        batch_size=args.batch_size,
        seconds=round(seconds, 3),
        images_per_second=round(rate(predicted, seconds), 4),
    )
    summary = (
        f"predict.py: {len(images)} images: {predicted} predicted in {seconds:.1f} s "
        f"({rate(predicted, seconds):.2f} images/s on {where_run(devices)}, batch {args.batch_size}, "
        f"{len(settings['views'])} view(s) x {len(plan.weights)} checkpoint(s)), {done} already done, "
        f"{len(record.content['bad_images'])} unreadable; {rows} {row}s; {time.perf_counter() - start:.1f} s in all"
    )
    notes = (
        [f"predict.py: no {row} for {len(missing)} unreadable image(s): {', '.join(missing[:5])}"] if missing else []
    )
    result = {result_key: str(csv), "probabilities": str(out / "probs"), "images": rows}
    announce(logger, summary, result, notes if missing else [])
    return csv


def images_to_predict(plan: Plan) -> tuple[list[dict], int, int]:
    """(images to predict, how many are done, how many had a broken or stale npz); --overwrite: all of them (only
    their sha1 is needed). Interrupted writes of an earlier run are removed first."""
    remove_stale_temporaries(plan.out / PROBS_FOLDER, "*.npz")
    if plan.args.overwrite:
        fingerprint_images(plan.images)
        return list(plan.images), 0, 0
    return find_pending(plan.images, plan.out, plan.class_names, plan.args.prob_size)


def where_run(devices: list[str]) -> str:
    """'4 x cpu' for several workers on one device kind, else the devices listed."""
    return f"{len(devices)} x {devices[0]}" if len(set(devices)) == 1 and len(devices) > 1 else ", ".join(devices)


def write_results(plan: Plan, pending: list[dict]) -> tuple[Path, int, list[str]]:
    """(file, count, file names without a prediction): a --json run's CSV and overlays (`write_outputs`); an
    --input run's label maps (made again for the images predicted now) and overlays (`write_input_outputs`)."""
    args = plan.args
    if plan.listing is None:
        return write_outputs(plan.out, plan.images, plan.class_names, args.overlays, args.skip_bad)
    refreshed = {image["file_name"] for image in pending}
    return write_input_outputs(plan.out, plan.listing, plan.class_names, refreshed, args.overlays, args.skip_bad)


def prediction_settings(plan: Plan) -> dict:
    """What the numbers in the npz files depend on (with the images, the folder's `predictions_id`)."""
    return {
        "class_names": plan.class_names,
        "weights": plan.weights,
        "weights_scale": plan.weights_scale,
        "views": [list(view) for view in inference_views(plan.cfg)],
        "max_size": inference_max_size(plan.cfg),
        "prob_size": plan.args.prob_size,
    }


def meta_of(plan: Plan, settings: dict) -> dict:
    """meta.json's first version: the settings and the command that made them."""
    args = plan.args
    return {
        **settings,
        "config_file": args.config_file,
        "opts": args.opts,
        **input_of(plan),
        "tta": bool(plan.cfg.TEST.AUG.ENABLED),
        "amp": args.amp,
        **runtime_of(plan),
        "file_names": [image["file_name"] for image in plan.images],
    }


def input_of(plan: Plan) -> dict:
    """meta.json's account of the images: the json and the image folder, or --input's path, kind and counts."""
    if plan.listing is None:
        return {"json": str(plan.json_path), "image_root": str(plan.image_root)}
    listing = plan.listing
    return {"input": listing.spec, "input_kind": listing.kind, "every": listing.every, "ignored_files": listing.ignored}


def prediction_job(plan: Plan, pending: list[dict], devices: list[str]) -> PredictionJob:
    args, cfg = plan.args, plan.cfg
    return PredictionJob(
        cfg=cfg,
        weights=plan.weights,
        weights_scale=plan.weights_scale,
        images=pending,
        out=str(plan.out),
        class_names=plan.class_names,
        prob_size=args.prob_size,
        batch_size=args.batch_size,
        device=devices[0],
        skip_bad=args.skip_bad,
        allow_pickle=args.allow_pickle or cfg.MODEL.ALLOW_PICKLE,
        amp=args.amp,
        num_threads=threads_per_process(args.threads, len(devices)),
        runtime=args.runtime,
    )


def predict_pending(job: PredictionJob, devices: list[str]) -> list[dict]:
    """Run `job` in this process (one device) or in one worker per device, with a progress bar; their stats."""
    with Progress(total=len(job.images), desc="predict", unit="img", logger=logger) as meter:
        if not job.images:
            return []
        if len(devices) == 1:
            return [run_job(job, lambda event, value: meter.update(1))]
        return run_in_workers(job, devices, meter)


def bad_images_in_json_order(results: list[dict], images: list[dict]) -> list[dict]:
    """The unreadable images the workers met, in the json's order whichever worker met them."""
    order = {image["file_name"]: position for position, image in enumerate(images)}
    return sorted((entry for result in results for entry in result["bad_images"]), key=lambda e: order[e["file_name"]])
