"""Inference: class probabilities for images, with test-time augmentation, batching and checkpoint ensembles.

How the probabilities of one image are made (the same rule for one view or many, one checkpoint or many):
  1. views: TEST.AUG off: one view, short side INPUT.MIN_SIZE_TEST capped by INPUT.MAX_SIZE_TEST. TEST.AUG on:
     every short side in TEST.AUG.MIN_SIZES (capped by TEST.AUG.MAX_SIZE), each also flipped when TEST.AUG.FLIP.
  2. each view goes through the model, whose K class scores (sum over queries of softmax class probability x
     mask sigmoid, computed at the padded view size and cropped to the view) are resized bilinearly
     (align_corners=False) to the output size: the image size, or a fixed size such as 256x256;
  3. a flipped view's scores are flipped back, then divided by their sum over the K classes (probabilities);
  4. the views' probabilities are averaged with equal weights: the checkpoint's prediction;
  5. several checkpoints of the same architecture: their predictions are averaged with weights w_i / sum(w).
Batching groups views of the same scale whose padded sizes (to the model's size divisibility) agree, so each
view is padded exactly as it would be alone: batched results equal one-image results within float tolerance.

`run_job` predicts a list of images into a prediction folder (mask2former/prediction_io.py); tools/predict.py
(mask2former/pipeline/predict.py) runs it in-process or as one worker process per device (`run_worker`) on a
shard of the images. A probability map that is not finite is an error naming the image, never a file.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from fvcore.common.config import CfgNode
from torch import nn

from ..data import transforms as T
from ..data.io import read_image
from ..errors import UserError
from ..modeling.meta_arch import padded_size
from ..prediction_io import save_probabilities
from .checkpoint import check_same_classes, load_model_weights, read_checkpoint_with_metadata

logger = logging.getLogger(__name__)

View = tuple[int, bool]  # (short side, flip)


def inference_views(cfg: CfgNode) -> list[View]:
    """(short side, flip) for every view: TEST.AUG when enabled, else INPUT.MIN_SIZE_TEST unflipped."""
    if not cfg.TEST.AUG.ENABLED:
        return [(cfg.INPUT.MIN_SIZE_TEST, False)]
    flips = (False, True) if cfg.TEST.AUG.FLIP else (False,)
    return [(size, flip) for size in cfg.TEST.AUG.MIN_SIZES for flip in flips]


def inference_max_size(cfg: CfgNode) -> int:
    """The long-side cap of the views: TEST.AUG.MAX_SIZE with TTA, else INPUT.MAX_SIZE_TEST (as evaluation)."""
    return cfg.TEST.AUG.MAX_SIZE if cfg.TEST.AUG.ENABLED else cfg.INPUT.MAX_SIZE_TEST


def to_model_input(
    image_bgr: np.ndarray,
    short_side: int,
    max_size: int,
    flip: bool,
    image_format: str,
    output_size: tuple[int, int] | None = None,
) -> dict:
    """A mapper-style input dict for one view of a BGR uint8 image (`transforms.view_for_test`, the validation
    mapper's preprocessing); the model resizes its scores to `output_size` (default: the image size)."""
    height, width = image_bgr.shape[:2]
    view = T.view_for_test(image_bgr, short_side, max_size, flip, image_format)
    tensor = torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1)))
    out_h, out_w = output_size if output_size else (height, width)
    return {"image": tensor, "height": int(out_h), "width": int(out_w)}


@torch.inference_mode()
def predict_batch(
    models: nn.Module | Sequence[nn.Module],
    images_bgr: Sequence[np.ndarray],
    views: Sequence[View],
    max_size: int,
    image_format: str = "RGB",
    output_sizes: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 1,
    weights: Sequence[float] | None = None,
    amp: bool = False,
) -> list[torch.Tensor]:
    """Per image, K x H x W class probabilities (float32, on the models' device) at its output size
    (default: the image size), made as the module docstring says. `batch_size` is the most views in one
    forward pass; `weights` are the checkpoints' ensemble weights (default: equal); `amp`: bf16 autocast."""
    models = [models] if isinstance(models, nn.Module) else list(models)
    if not models:
        raise ValueError("no model to predict with")
    if weights is not None and (len(weights) != len(models) or min(weights) < 0 or sum(weights) <= 0):
        raise ValueError(f"ensemble weights {list(weights)}: one non-negative weight per model, with a positive sum")
    ensemble_weights = [1.0 / len(models)] * len(models) if weights is None else [w / sum(weights) for w in weights]
    if output_sizes is None:
        output_sizes = [image.shape[:2] for image in images_bgr]
    batch_size = max(1, int(batch_size))
    scales = list(dict.fromkeys(short_side for short_side, _ in views))
    flips = {short_side: [flip for size, flip in views if size == short_side] for short_side in scales}
    totals: list[torch.Tensor | None] = [None] * len(images_bgr)
    for model, ensemble_weight in zip(models, ensemble_weights, strict=True):
        if ensemble_weight == 0:
            continue
        device = next(model.parameters()).device
        divisibility = int(getattr(model, "size_divisibility", 1) or 1)
        sums: list[torch.Tensor | None] = [None] * len(images_bgr)
        for short_side in scales:
            # every (image, flip) view of this scale, grouped by padded size so each is padded as if alone
            groups: dict[tuple[int, int], list[tuple[int, bool, dict]]] = defaultdict(list)
            for index, image in enumerate(images_bgr):
                for flip in flips[short_side]:
                    item = to_model_input(image, short_side, max_size, flip, image_format, output_sizes[index])
                    groups[padded_size(*item["image"].shape[-2:], divisibility)].append((index, flip, item))
            for members in groups.values():
                for start in range(0, len(members), batch_size):
                    chunk = members[start : start + batch_size]
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        results = model([item for _, _, item in chunk])
                    for (index, flip, _), result in zip(chunk, results, strict=True):
                        scores = result["sem_seg"].float()
                        if flip:
                            scores = scores.flip(-1)
                        probs = scores / scores.sum(dim=0, keepdim=True).clamp_min(1e-6)
                        sums[index] = probs if sums[index] is None else sums[index] + probs
        for index, total in enumerate(sums):
            mean = total * (ensemble_weight / len(views))
            totals[index] = mean if totals[index] is None else totals[index] + mean
    return totals


def predict_probabilities(
    model: nn.Module,
    image_bgr: np.ndarray,
    views: list[View],
    max_size: int,
    image_format: str = "RGB",
) -> torch.Tensor:
    """K x H x W class probabilities of one image (float32, on the model's device) averaged over the views."""
    return predict_batch(model, [image_bgr], views, max_size, image_format)[0]


# ---- checkpoints --------------------------------------------------------------------------------------------------


def load_prediction_model(cfg: CfgNode, path: str, device: str | torch.device, allow_pickle: bool = False) -> nn.Module:
    """The config's model with a checkpoint's weights, in eval mode on `device`. Refuses (naming the file) a
    checkpoint of another architecture, size or class count: at prediction time nothing may be re-initialised."""
    from ..modeling.build import build_model

    checkpoint = read_checkpoint_with_metadata(path, allow_pickle)
    state = checkpoint.tensors
    model = build_model(cfg)
    report = load_model_weights(
        model, state, strict=True, source=str(path), matching_heuristics=checkpoint.matching_heuristics
    )
    check_same_classes(report, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, str(path))
    return model.to(device).eval()


# ---- a prediction job: a list of images into a prediction folder --------------------------------------------------


class ImageReadError(UserError, OSError):
    """An image listed in the json cannot be read; the message names the file and the image id."""


class NonFiniteProbabilitiesError(UserError):
    """The model gave NaN or Inf probabilities for an image; the message names the image and the checkpoints."""


def check_finite(probs: torch.Tensor, image: dict, weights: Sequence[str]) -> None:
    """Refuse (naming the image) a probability map with NaN or Inf values: such numbers are never written."""
    if not bool(torch.isfinite(probs).all()):
        bad = int((~torch.isfinite(probs)).sum())
        raise NonFiniteProbabilitiesError(
            f"image id {image['id']} ({image['file_name']}): the model gave {bad} non-finite (NaN/Inf) "
            f"probabilities with {', '.join(map(str, weights))}: a diverged checkpoint, or try without --amp; "
            "nothing was written for it"
        )


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
    if job.num_threads > 0:
        torch.set_num_threads(job.num_threads)
    device = torch.device(job.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # "cuda" alone: the current device
    stats = {"predicted": 0, "bad_images": [], "seconds": 0.0, "device": str(device)}
    if not job.images:
        return stats
    models = [load_prediction_model(job.cfg, path, device, job.allow_pickle) for path in job.weights]
    views, max_size = inference_views(job.cfg), inference_max_size(job.cfg)
    step = max(1, job.batch_size)
    batches = [job.images[start : start + step] for start in range(0, len(job.images), step)]
    lock = threading.Lock()

    def saved(future) -> None:
        if future.exception() is None:
            with lock:
                report("image", 1)

    def read_batch(batch: list[dict]) -> list[tuple[dict, np.ndarray | None, str | None]]:
        return [_read(image) for image in batch]

    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="predict-io") as pool:
        next_read = pool.submit(read_batch, batches[0])
        saving: list = []
        for number in range(len(batches)):
            loaded = next_read.result()
            if number + 1 < len(batches):
                next_read = pool.submit(read_batch, batches[number + 1])
            good, arrays = [], []
            for image, bgr, error in loaded:
                if error is None:
                    good.append((image, bgr))
                elif not job.skip_bad:
                    raise ImageReadError(error + " (--skip-bad skips such images)")
                else:
                    logger.warning("skipped: %s", error)
                    stats["bad_images"].append({"id": image["id"], "file_name": image["file_name"], "error": error})
                    with lock:
                        report("bad", stats["bad_images"][-1])
            if good:
                sizes = [(job.prob_size, job.prob_size) if job.prob_size > 0 else bgr.shape[:2] for _, bgr in good]
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
                arrays = [p.to(torch.float16).cpu().numpy() for p in probs]
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
