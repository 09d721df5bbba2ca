"""A prediction job: a list of images into a prediction folder (mask2former/io/probabilities.py).

tools/predict.py (mask2former/pipeline/predict.py) runs `run_job` in-process, or as one worker process per device
(`run_worker`) on a shard of the images. Images are read by a thread ahead of the model; the probabilities are
made by `mask2former.inference.tta`. A probability map that is not finite is an error naming the image, never a
file.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from fvcore.common.config import CfgNode
from torch import nn

from ..errors import UserError
from ..io.images import read_image
from ..io.probabilities import save_probabilities
from .predictor import check_finite, load_prediction_model
from .tta import inference_max_size, inference_views, predict_batch

logger = logging.getLogger(__name__)


# ---- a prediction job: a list of images into a prediction folder --------------------------------------------------


class ImageReadError(UserError, OSError):
    """An image listed in the json cannot be read; the message names the file and the image id."""


@dataclass
class PredictionJob:
    """Everything one process needs to predict a list of images (picklable: sent to worker processes)."""

    cfg: CfgNode
    weights: list[str]
    weights_scale: list[float]
    images: list[dict]  # {"id", "file_name", "path", "sha1" (of the file's bytes)}
    out: str
    class_names: list[str]
    prob_size: int = 256  # side of the stored maps; 0: the image size
    batch_size: int = 1
    device: str = "cpu"
    skip_bad: bool = False
    allow_pickle: bool = False
    amp: bool = False
    num_threads: int = 0  # torch CPU threads (0: torch's default)
    runtime: str = "onnxruntime"  # what runs .onnx weights (onnxruntime or openvino)


Report = Callable[[str, object], None]  # (event, value): ("image", 1) per image done, ("bad", {...})


def _read(image: dict) -> tuple[dict, np.ndarray | None, str | None]:
    try:
        return image, read_image(image["path"]), None
    except OSError as error:
        return image, None, f"image id {image['id']} ({image['file_name']}): {error}"


def run_job(job: PredictionJob, report: Report | None = None) -> dict:
    """Predict `job.images` into `job.out` (one npz per image, written atomically); returns
    {"predicted", "bad_images", "seconds", "device"}. Reading the next batch and writing npz files overlap
    with the forward passes (threads)."""
    report = report or (lambda event, value: None)
    begin = time.perf_counter()
    device = _use_device(job)
    stats = {"predicted": 0, "bad_images": [], "seconds": 0.0, "device": str(device)}
    if not job.images:
        return stats
    models = [_load_model(job, path, device) for path in job.weights]
    step = max(1, job.batch_size)
    batches = [job.images[start : start + step] for start in range(0, len(job.images), step)]
    lock = threading.Lock()

    def saved(future) -> None:
        if future.exception() is None:
            with lock:
                report("image", 1)

    def bad(entry: dict) -> None:
        stats["bad_images"].append(entry)
        with lock:
            report("bad", entry)

    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="predict-io") as pool:
        next_read = pool.submit(_read_batch, batches[0])
        saving: list = []
        for number in range(len(batches)):
            loaded = next_read.result()
            if number + 1 < len(batches):
                next_read = pool.submit(_read_batch, batches[number + 1])
            good = _readable(loaded, job.skip_bad, bad)
            arrays = _probabilities(job, models, good) if good else []
            for future in saving:  # the previous batch's files (at most two batches in memory); raises their errors
                future.result()
            saving = []
            for (image, bgr), array in zip(good, arrays, strict=True):
                args = (job.out, image["file_name"], image["id"], array, *bgr.shape[:2], job.class_names)
                args += (image.get("sha1", ""),)
                saving.append(pool.submit(save_probabilities, *args))
                saving[-1].add_done_callback(saved)  # progress as soon as a file is written
            stats["predicted"] += len(good)
        for future in saving:
            future.result()
    stats["seconds"] = time.perf_counter() - begin
    return stats


def _load_model(job: PredictionJob, path: str, device: torch.device) -> nn.Module:
    """A checkpoint's model on `device`, or an exported .onnx file run by `job.runtime` on the CPU."""
    if path.lower().endswith(".onnx"):
        from .onnx_model import OnnxModel

        return OnnxModel(path, job.runtime, job.num_threads).as_module()
    return load_prediction_model(job.cfg, path, device, job.allow_pickle)


def _use_device(job: PredictionJob) -> torch.device:
    """The job's device, made current, with the job's CPU thread count."""
    if job.num_threads > 0:
        torch.set_num_threads(job.num_threads)
    device = torch.device(job.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # "cuda" alone: the current device
    return device


def _read_batch(batch: list[dict]) -> list[tuple[dict, np.ndarray | None, str | None]]:
    return [_read(image) for image in batch]


def _readable(
    loaded: list[tuple[dict, np.ndarray | None, str | None]], skip_bad: bool, bad: Callable[[dict], None]
) -> list[tuple[dict, np.ndarray]]:
    """The (image, pixels) that were read; an unreadable image is an error, or with --skip-bad a logged skip
    passed to `bad`."""
    good = []
    for image, bgr, error in loaded:
        if error is None:
            good.append((image, bgr))
        elif not skip_bad:
            raise ImageReadError(error + " (--skip-bad skips such images)")
        else:
            logger.warning("skipped: %s", error)
            bad({"id": image["id"], "file_name": image["file_name"], "error": error})
    return good


def _probabilities(job: PredictionJob, models: list[nn.Module], good: list[tuple[dict, np.ndarray]]) -> list:
    """float16 K x h x w probabilities of each image (h x w: job.prob_size, or the image's size), checked finite."""
    sizes = [(job.prob_size, job.prob_size) if job.prob_size > 0 else bgr.shape[:2] for _, bgr in good]
    views, max_size = inference_views(job.cfg), inference_max_size(job.cfg)
    for model in models:  # a fixed-size export: images of another shape refused by name before the batch runs
        exported = getattr(model, "onnx_model", None)
        if exported is not None:
            named = [(f"image id {image['id']} ({image['file_name']})", bgr.shape[:2]) for image, bgr in good]
            exported.check_view_sizes(named, views, max_size)
    probs = predict_batch(
        models,
        [bgr for _, bgr in good],
        views,
        max_size,
        job.cfg.INPUT.FORMAT,
        sizes,
        job.batch_size,
        job.weights_scale,
        job.amp,
    )
    for (image, _), p in zip(good, probs, strict=True):
        check_finite(p, image, job.weights)
    return [p.to(torch.float16).cpu().numpy() for p in probs]


def run_worker(rank: int, job: PredictionJob, queue) -> None:
    """A worker process's entry point: run the job, send ("image"/"bad", rank, value) events as it goes and
    ("done", rank, stats) or ("error", rank, (message, traceback, is a UserError)) at the end."""
    from ..utils.logger import setup_logging

    setup_logging()
    try:
        stats = run_job(job, lambda event, value: queue.put((event, rank, value)))
        queue.put(("done", rank, stats))
    except BaseException as error:  # noqa: BLE001 (reported to the parent, which fails the run)
        user_error = isinstance(error, UserError)
        queue.put(("error", rank, (f"{type(error).__name__}: {error}", traceback.format_exc(), user_error)))
        raise SystemExit(1) from None
