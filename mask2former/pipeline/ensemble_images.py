"""The per-image step of tools/ensemble_crf.py (mask2former/pipeline/ensemble_crf.py) and tools/tune_crf.py:
read every input of one image, vote, refine with the CRF, write the label map.

Spawned worker processes import this module by name, so it imports no torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..io.files import output_path
from ..io.images import ReadError, read_image, write_label_png
from ..io.probabilities import load_probabilities, probability_path, save_probabilities
from .crf import dense_crf
from .voting import (
    EnsembleError,
    consensus_mask,
    consensus_write_back,
    hard_vote,
    hard_vote_probabilities,
    resize_probabilities,
    soft_vote,
)

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
    """The image for the CRF's bilateral kernel (BGR uint8), through the one image reader (mask2former/io/images.py:
    its pixels as stored, the frame predictions are made in); an error naming the image and the file."""

    path = Path(image_root) / file_name
    try:
        return read_image(path)
    except ReadError as error:
        raise EnsembleError(f"{file_name}: {error}; the CRF reads the images under --image-root") from None


def load_inputs(job: EnsembleJob, file_name: str, resize: bool = True) -> tuple[list[np.ndarray], dict]:
    """Every folder's probabilities of one image and the first file's record, checked: present, readable, valid
    probabilities (mask2former/io/probabilities.py), this image, the job's classes, and one map size unless job.size
    (then resized
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
