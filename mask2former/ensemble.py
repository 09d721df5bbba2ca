"""Pixel-level ensembles of segmentation predictions, DenseCRF refinement and consensus write-back.

Array functions (no files): `soft_vote` (weighted mean of K x H x W probability maps), `hard_vote` (weighted vote
of H x W label maps, ties to the first-listed model), `vote_shares`, `consensus_mask` / `consensus_write_back`
(pixels on which every input agrees keep that class after the CRF, which alone erases small objects),
`resize_probabilities` and `dense_crf` (a Gaussian and an image-based bilateral kernel, pydensecrf2).

Shapes: all inputs of one image must share H x W; nothing is resized implicitly. `resize_probabilities` does it
when asked (ensemble_crf --size: bilinear, renormalised). The RGB image for the bilateral kernel is
resized (area) to the probability maps' size, so sxy and srgb are in pixels and colour levels of that size.

`EnsembleJob`, `load_inputs` / `check_inputs` and `process_image` are the per-image step of tools/ensemble_crf.py
(mask2former/pipeline/ensemble_crf.py) and tools/tune_crf.py; they live here so that spawned worker processes
import them by name quickly (this module does not import torch).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import UserError
from .prediction_io import load_probabilities, probability_path, save_probabilities
from .utils.io import atomic_write_bytes, output_path

# Chosen with tools/tune_crf.py on the mixed ensemble (tiny Mask2Former, UPerNet, FPN) on the sample val set and
# the real trashbag photos (see tools/ensemble_crf.py --help, benchmarks/RESULTS.md).
CRF_DEFAULTS = {"sxy": 20.0, "srgb": 5.0, "compat": 10.0, "iters": 5, "gaussian_sxy": 3.0, "gaussian_compat": 3.0}
# A label-map vote carries no confidence: the CRF's unary is the vote shares mixed with a uniform distribution.
HARD_VOTE_CONFIDENCE = 0.8
# Floor of the probabilities before -log (float16 files hold exact zeros).
PROB_FLOOR = 1e-6


class EnsembleError(UserError, ValueError):
    """Inputs that cannot be combined; the message names the input and the image."""


def normalize_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    """One non-negative weight per input (None: equal), scaled to sum to 1."""
    if weights is None:
        return np.full(count, 1.0 / count)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (count,):
        raise EnsembleError(f"{len(w)} weight(s) for {count} input(s): give one weight per input")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise EnsembleError(f"weights {list(weights)}: non-negative numbers with a positive sum")
    return w / w.sum()


def _same_shapes(arrays: Sequence[np.ndarray], what: str) -> None:
    if not arrays:
        raise EnsembleError(f"no {what} to combine")
    for index, array in enumerate(arrays[1:], start=1):
        if array.shape != arrays[0].shape:
            raise EnsembleError(f"{what} {index} has shape {array.shape}, {what} 0 {arrays[0].shape}")


def soft_vote(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean (weights normalised to sum 1) of K x H x W probability maps, float32."""
    _same_shapes(probs, "probability map")
    w = normalize_weights(weights, len(probs))
    out = np.zeros(probs[0].shape, dtype=np.float32)
    for weight, p in zip(w, probs, strict=True):
        if weight > 0:
            out += np.float32(weight) * np.asarray(p, dtype=np.float32)
    return out


def vote_shares(labels: Sequence[np.ndarray], weights: Sequence[float] | None, num_classes: int) -> np.ndarray:
    """K x H x W float32: the (normalised) weight of the inputs voting for each class at each pixel."""
    _same_shapes(labels, "label map")
    w = normalize_weights(weights, len(labels))
    shape = labels[0].shape
    pixels = np.arange(labels[0].size)
    index, values = [], []
    for weight, label in zip(w, labels, strict=True):
        flat = np.asarray(label).ravel().astype(np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
            raise EnsembleError(f"label values must lie in [0, {num_classes}), got {flat.min()}..{flat.max()}")
        index.append(flat * flat.size + pixels)
        values.append(np.full(flat.size, weight))
    counts = np.bincount(np.concatenate(index), np.concatenate(values), minlength=num_classes * pixels.size)
    return counts.reshape(num_classes, *shape).astype(np.float32)


def hard_vote(
    labels: Sequence[np.ndarray], weights: Sequence[float] | None = None, num_classes: int | None = None
) -> np.ndarray:
    """Per pixel, the class with the largest total weight (uint8 H x W).

    Ties go to the model listed first: among the tied classes, the one voted for by the earliest input with a
    positive weight that voted for a tied class.
    """
    _same_shapes(labels, "label map")
    if num_classes is None:
        num_classes = int(max(np.max(label) for label in labels)) + 1
    w = normalize_weights(weights, len(labels))
    shares = vote_shares(labels, w, num_classes)
    # weights like 0.1 + 0.2 vs 0.3 differ in the last bits: equal within float32 rounding is a tie
    tied = shares >= shares.max(axis=0, keepdims=True) - 1e-5
    result = np.full(labels[0].shape, -1, dtype=np.int64)
    for weight, label in zip(w, labels, strict=True):
        if weight <= 0:
            continue
        label = np.asarray(label).astype(np.int64)
        take = (result < 0) & np.take_along_axis(tied, label[None], axis=0)[0]
        result[take] = label[take]
    return result.astype(np.uint8 if num_classes <= 256 else np.int64)


def hard_vote_probabilities(
    labels: Sequence[np.ndarray],
    weights: Sequence[float] | None,
    num_classes: int,
    confidence: float = HARD_VOTE_CONFIDENCE,
) -> np.ndarray:
    """Probabilities for a CRF from label maps: vote shares x confidence + (1 - confidence) / K."""
    shares = vote_shares(labels, weights, num_classes)
    return shares * np.float32(confidence) + np.float32((1.0 - confidence) / num_classes)


def consensus_mask(labels: Sequence[np.ndarray]) -> np.ndarray:
    """H x W bool: pixels where every label map holds the same class."""
    _same_shapes(labels, "label map")
    mask = np.ones(labels[0].shape, dtype=bool)
    for label in labels[1:]:
        mask &= np.asarray(label) == np.asarray(labels[0])
    return mask


def consensus_write_back(
    refined: np.ndarray, labels: Sequence[np.ndarray], agreed: np.ndarray | None = None
) -> np.ndarray:
    """`refined` (e.g. the CRF's labels) with every pixel on which all `labels` agree set to their class;
    `agreed` is their `consensus_mask` when the caller has it already."""
    mask = consensus_mask(labels) if agreed is None else agreed
    if refined.shape != mask.shape:
        raise EnsembleError(f"refined labels of shape {refined.shape}, inputs {mask.shape}")
    return np.where(mask, np.asarray(labels[0]), refined).astype(refined.dtype)


def resize_probabilities(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """K x H x W probabilities resized bilinearly to K x height x width and renormalised over K (float32)."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape[1:] == (height, width):
        return probs
    # cv2 resizes at most 4 channels at once on some builds: one class at a time
    out = np.stack([cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in probs])
    total = out.sum(axis=0, keepdims=True)
    return out / np.maximum(total, 1e-12)


# how each `dense_crf` parameter is spelled on the command line of tools/ensemble_crf.py and tools/tune_crf.py
CRF_FLAGS = {
    "sxy": "--sxy",
    "srgb": "--srgb",
    "compat": "--compat",
    "iters": "--iters",
    "gaussian_sxy": "--gauss-sxy",
    "gaussian_compat": "--gauss-compat",
}
_POSITIVE = ("sxy", "srgb", "gaussian_sxy")


def check_crf_parameters(**parameters: float) -> None:
    """EnsembleError naming the flag when a `dense_crf` parameter is out of range: sxy, srgb and gaussian_sxy must
    be > 0 (they divide), compat, gaussian_compat and iters >= 0 (0 leaves the kernel, or the inference, out)."""
    for key, value in parameters.items():
        positive = key in _POSITIVE
        if not np.isfinite(value) or (value <= 0 if positive else value < 0):
            raise EnsembleError(f"CRF {key} ({CRF_FLAGS[key]}) {value:g}: must be {'> 0' if positive else '>= 0'}")


def dense_crf(
    probs: np.ndarray,
    image: np.ndarray,
    sxy: float = CRF_DEFAULTS["sxy"],
    srgb: float = CRF_DEFAULTS["srgb"],
    compat: float = CRF_DEFAULTS["compat"],
    iters: int = CRF_DEFAULTS["iters"],
    gaussian_sxy: float = CRF_DEFAULTS["gaussian_sxy"],
    gaussian_compat: float = CRF_DEFAULTS["gaussian_compat"],
    return_labels: bool = False,
) -> np.ndarray:
    """Fully connected CRF over K x H x W probabilities; refined probabilities (float32) or, with
    `return_labels`, their argmax (uint8).

    Unary: -log(probs). Pairwise (Potts): a Gaussian kernel (gaussian_sxy, gaussian_compat; smoothness) and a
    bilateral kernel on position and colour (sxy, srgb, compat; labels follow image edges). `image` is H' x W' x 3
    uint8, resized to H x W when it differs. Its channel order does not matter (the colour distance is isotropic).
    A compat of 0 leaves that kernel out; iters=0 returns the input probabilities renormalised.
    """
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as error:  # pragma: no cover - the dependency is pinned in requirements.txt
        raise ImportError(f"DenseCRF needs pydensecrf2 (pip install -r requirements.txt): {error}") from None
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3:
        raise EnsembleError(f"probabilities must be K x H x W, got shape {probs.shape}")
    num_classes, height, width = probs.shape
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise EnsembleError(f"the CRF's image must be H x W x 3 uint8, got {image.shape} {image.dtype}")
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    check_crf_parameters(
        sxy=sxy, srgb=srgb, compat=compat, iters=iters, gaussian_sxy=gaussian_sxy, gaussian_compat=gaussian_compat
    )
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    unary = -np.log(np.clip(probs, PROB_FLOOR, 1.0)).reshape(num_classes, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    if gaussian_compat > 0:
        crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    if compat > 0:
        crf.addPairwiseBilateral(sxy=sxy, srgb=srgb, rgbim=np.ascontiguousarray(image), compat=compat)
    refined = np.asarray(crf.inference(int(iters)), dtype=np.float32).reshape(num_classes, height, width)
    return refined.argmax(axis=0).astype(np.uint8) if return_labels else refined


# ---- the per-image step of ensemble_crf and tune_crf ----------------------------------------------------------


@dataclass(frozen=True)
class EnsembleJob:
    """Everything a worker needs; picklable.

    kind: "probs" (inputs are prediction folders; soft vote) or "labels" (submission CSVs; hard vote, the label
    maps travel with each item). size > 0: resize every input's maps to size x size; 0: they must agree.
    crf: keyword arguments of `dense_crf`, or None for no CRF. keep_stages: return every stage's label map.
    """

    kind: str
    inputs: tuple[str, ...]
    weights: tuple[float, ...]
    class_names: tuple[str, ...]
    out: str
    image_root: str | None = None
    size: int = 0
    crf: dict | None = None
    consensus: bool = True
    keep_stages: bool = False


def label_path(out: str | Path, file_name: str) -> Path:
    """OUT/labels/<file_name with .png>; a file_name that would leave OUT is refused (UnsafePathError)."""
    return output_path(Path(out) / "labels", file_name, ".png")


def read_rgb(image_root: str | Path, file_name: str) -> np.ndarray:
    """The image for the CRF's bilateral kernel (BGR uint8), through the one image reader (mask2former/data/io.py:
    its pixels as stored, the frame predictions are made in); an error naming the image and the file."""
    # imported here: mask2former.data imports torch, which a worker that never runs the CRF need not load
    from .data.io import ReadError, read_image

    path = Path(image_root) / file_name
    try:
        return read_image(path)
    except ReadError as error:
        raise EnsembleError(f"{file_name}: {error}; the CRF reads the images under --image-root") from None


def load_inputs(job: EnsembleJob, file_name: str, resize: bool = True) -> tuple[list[np.ndarray], dict]:
    """Every folder's probabilities of one image and the first file's record, checked: present, readable, valid
    probabilities (prediction_io), this image, the job's classes, and one map size unless job.size (then resized
    to it, if `resize`). Errors (EnsembleError, ProbabilityFileError) name the file."""
    maps, first = [], None
    for folder in job.inputs:
        path = probability_path(folder, file_name)
        if not path.is_file():
            raise EnsembleError(f"{folder}: no prediction for image {file_name!r} ({path} is missing)")
        data = load_probabilities(path)
        if data["file_name"] != file_name:
            raise EnsembleError(f"{path}: holds image {data['file_name']!r}, expected {file_name!r}")
        if data["class_names"] != list(job.class_names):
            raise EnsembleError(f"{folder}: classes {data['class_names']} differ from {list(job.class_names)} ({path})")
        probs = data["probs"]
        if job.size:
            if resize:
                probs = resize_probabilities(probs, job.size, job.size)
        elif maps and probs.shape != maps[0].shape:
            raise EnsembleError(
                f"{file_name}: {folder} has {probs.shape[2]}x{probs.shape[1]} probability maps, {job.inputs[0]} "
                f"{maps[0].shape[2]}x{maps[0].shape[1]}; pass --size S to resize every input to S x S"
            )
        maps.append(probs)
        if first is None:
            first = data
    assert first is not None
    return maps, first


def check_inputs(job: EnsembleJob, file_name: str) -> None:
    """The checks of `load_inputs` alone (nothing resized, nothing kept): run over every image before anything
    is written, so that a bad input stops the run with no output."""
    load_inputs(job, file_name, resize=False)


def write_label_png(path: str | Path, label: np.ndarray) -> None:
    """Write a uint8 label map as a PNG, atomically."""
    ok, encoded = cv2.imencode(".png", np.asarray(label, dtype=np.uint8))
    if not ok:
        raise OSError(f"could not encode the label map {path}")
    atomic_write_bytes(path, encoded.tobytes())


def process_image(job: EnsembleJob, item: dict) -> dict:
    """Vote, CRF, consensus and write one image's outputs (probabilities first, the label PNG last: its presence
    marks the image done). item: {file_name, labels (kind "labels": one map per input)}. Returns
    {file_name, stages (name -> label map, with keep_stages), seconds}."""
    start = time.perf_counter()
    file_name = item["file_name"]
    num_classes = len(job.class_names)
    if job.kind == "probs":
        maps, record = load_inputs(job, file_name)
        inputs = [p.argmax(axis=0).astype(np.uint8) for p in maps]
        vote_probs = soft_vote(maps, job.weights)
        vote = vote_probs.argmax(axis=0).astype(np.uint8)
    else:
        inputs = [np.asarray(label, dtype=np.uint8) for label in item["labels"]]
        vote = hard_vote(inputs, job.weights, num_classes)
        vote_probs = hard_vote_probabilities(inputs, job.weights, num_classes) if job.crf is not None else None
        record = None
    stages = {f"input {i}": label for i, label in enumerate(inputs)}
    stages["vote"] = vote
    final, final_probs = vote, vote_probs
    if job.crf is not None:
        assert vote_probs is not None and job.image_root is not None
        crf_probs = dense_crf(vote_probs, read_rgb(job.image_root, file_name), **job.crf)
        crf_labels = crf_probs.argmax(axis=0).astype(np.uint8)
        stages["crf"] = crf_labels
        final, final_probs = crf_labels, crf_probs
        if job.consensus:
            agreed = consensus_mask(inputs)
            final = consensus_write_back(crf_labels, inputs, agreed)
            final_probs = np.where(agreed[None], vote_probs, crf_probs)
    stages["final"] = final
    if job.kind == "probs":
        assert record is not None and final_probs is not None
        stored = final_probs.astype(np.float16)
        # the npz's argmax must give the label map: where float16 rounding (or a tie) says otherwise, one-hot
        differ = stored.argmax(axis=0) != final
        if differ.any():
            stored[:, differ] = 0
            rows, cols = np.nonzero(differ)
            stored[final[rows, cols], rows, cols] = 1
        save_probabilities(
            job.out, file_name, record["image_id"], stored, record["height"], record["width"], list(job.class_names)
        )
    write_label_png(label_path(job.out, file_name), final)
    return {
        "file_name": file_name,
        "stages": stages if job.keep_stages else None,
        "seconds": time.perf_counter() - start,
    }


_WORKER_JOB: EnsembleJob | None = None


def init_worker(job: EnsembleJob) -> None:
    """Pool initializer: one OpenCV thread per process (the pool is the parallelism), the job kept once."""
    global _WORKER_JOB
    cv2.setNumThreads(1)
    _WORKER_JOB = job


def process_in_worker(item: dict) -> dict:
    assert _WORKER_JOB is not None, "init_worker was not called"
    return process_image(_WORKER_JOB, item)
