"""The one representation that crosses tool boundaries: per-image class probabilities. This module is the only
reader and writer of probability files; every tool (predict, ensemble_crf, tune_crf, pseudo_label, the viewer)
goes through it, so every one of them refuses the same broken files with the same message.

A prediction folder holds `probs/<file_name>.npz` per image (the image's file_name with its
extension replaced) and `meta.json`. Each npz has:
  probs        float16 K x H x W class probabilities (sum to 1 over K; H x W is 256x256 by default)
  file_name    the image's file_name as in the json (the submission's image_id)
  image_id     the json's image id
  height, width  the original image size
  class_names  the K class names, background first
  source_sha1  the sha1 of the image file's bytes it was predicted from ("" when not recorded): a rerun tells a
               changed image under the same name from the one it predicted
How the probabilities are made (views, TTA, checkpoint ensembles): mask2former/inference/tta.py. meta.json
(written by tools/predict.py and tools/ensemble_crf.py) holds class_names, the settings, the run's counts,
`complete` (true once every image is done), `file_names` (the images the run was asked for, in order) and
`predictions_id` (a digest of the job and of the image files predicted: it changes whenever the predictions
could). `read_prediction_folder` is how a tool takes a folder as input: it refuses one whose run did not finish
and lists only the images its run was for (an npz left from an earlier job is not one of them).

Reading checks what the numbers mean, not only the layout: a map with NaN or Inf, a negative value or classes
that do not sum to 1 (within SUM_TOLERANCE: float16 rounding) is refused with a `ProbabilityFileError` naming
the file, and `save_probabilities` refuses to write such a map. `check_probabilities` tells a complete, valid
file from a truncated, foreign or broken one without raising.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .files import atomic_write_bytes, output_path

logger = logging.getLogger(__name__)

PROBS_FOLDER = "probs"
# |sum over classes - 1| allowed per pixel; float16 storage alone moves a sum by less than 1e-3
SUM_TOLERANCE = 0.02
# what reading a missing, truncated or foreign npz raises
UNREADABLE = (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error)
_METADATA_FIELDS = ("file_name", "image_id", "height", "width", "class_names", "source_sha1")
_REDO = "predict it again (tools/predict.py on that folder predicts such files again) or leave the folder out"


class ProbabilityFileError(UserError, ValueError):
    """A probability file that cannot be used (unreadable, foreign, or numbers that are not probabilities);
    the message names the file and says what to do."""


def probability_path(folder: str | Path, file_name: str) -> Path:
    """folder/probs/<file_name with .npz>; a file_name that would leave the folder is refused (UnsafePathError)."""
    return output_path(Path(folder) / PROBS_FOLDER, file_name, ".npz")


def probability_key(file_name: str) -> str:
    """The path of an image's file relative to probs/ (POSIX), as `prediction_files` lists it."""
    return probability_path("", file_name).relative_to(PROBS_FOLDER).as_posix()


def prediction_files(folder: str | Path) -> dict[str, Path]:
    """`probability_key` -> path for every probability file in folder/probs (sorted); ProbabilityFileError when
    the folder has no probs/."""
    root = Path(folder) / PROBS_FOLDER
    if not root.is_dir():
        raise ProbabilityFileError(f"{folder}: not a prediction folder (no {PROBS_FOLDER}/ inside)")
    return {path.relative_to(root).as_posix(): path for path in sorted(root.rglob("*.npz"))}


@dataclass
class PredictionFolder:
    """A prediction folder as an input: its meta.json (empty for a folder without one), the images it holds
    predictions for (meta.json's `file_names`; without them, every npz) and their files."""

    path: Path
    meta: dict
    file_names: list[str]
    files: dict[str, Path]  # probability_key -> path

    def identity(self) -> str:
        """What changes when its predictions may have: meta.json's predictions_id, else a digest of meta.json and
        of the file listing."""
        if self.meta.get("predictions_id"):
            return str(self.meta["predictions_id"])
        text = json.dumps([self.meta, sorted(self.files)], sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()


def read_prediction_folder(folder: str | Path) -> PredictionFolder:
    """A prediction folder checked as an input: ProbabilityFileError when it has no probs/, when its meta.json is
    unreadable or says the run did not finish (`complete: false`), or when an image its meta.json lists has no
    npz. npz files of images the run was not for are left out (and counted in the log)."""
    folder = Path(folder)
    files = prediction_files(folder)
    meta_path = folder / "meta.json"
    meta: dict = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as error:
            raise ProbabilityFileError(f"{meta_path}: unreadable ({error}); predict that folder again") from None
        if not isinstance(meta, dict):
            raise ProbabilityFileError(f"{meta_path} is not a prediction folder's meta.json")
        if meta.get("complete") is False:
            raise ProbabilityFileError(
                f"{meta_path} says its run did not finish (complete: false): run the same predict.py command again "
                "to finish it, then use the folder"
            )
    names = meta.get("file_names")
    if not isinstance(names, list):
        return PredictionFolder(folder, meta, [], files)
    names = [str(name) for name in names]
    for name in names:
        if probability_key(name) not in files:
            raise ProbabilityFileError(
                f"{folder}: {meta_path.name} lists image {name!r} but {probability_path(folder, name)} is missing: "
                "run the same predict.py command again to remake it"
            )
    listed = {probability_key(name) for name in names}
    stale = [key for key in files if key not in listed]
    if stale:
        logger.warning("%s: %d npz file(s) not of this folder's run left out (e.g. %s)", folder, len(stale), stale[0])
    return PredictionFolder(folder, meta, names, {key: path for key, path in files.items() if key in listed})


def shape_problem(probs: np.ndarray, num_classes: int) -> str | None:
    """What makes `probs` not a non-empty K x H x W array with K = num_classes, or None."""
    if probs.ndim != 3 or probs.shape[0] != num_classes or probs.size == 0:
        return f"probabilities of shape {probs.shape} do not match {num_classes} classes"
    return None


def value_problem(probs: np.ndarray) -> str | None:
    """What makes the numbers of a K x H x W map not probabilities over its K classes, or None."""
    num_classes = probs.shape[0]
    if not np.isfinite(probs).all():
        return "probabilities hold NaN or infinite values"
    low = float(probs.min())
    if low < 0:
        return f"probabilities hold negative values (down to {low:.3g})"
    sums = probs.sum(axis=0, dtype=np.float32)
    low, high = float(sums.min()), float(sums.max())
    if low < 1 - SUM_TOLERANCE or high > 1 + SUM_TOLERANCE:
        return f"probabilities sum to {low:.3g}..{high:.3g} over the {num_classes} classes, not 1"
    return None


def save_probabilities(
    folder: str | Path,
    file_name: str,
    image_id: int,
    probs: np.ndarray,
    height: int,
    width: int,
    class_names: list[str],
    source_sha1: str = "",
) -> Path:
    """Write one image's probabilities atomically (with the sha1 of the image file they were predicted from);
    returns the path. Refuses (ProbabilityFileError, nothing
    written) a map that `load_probabilities` would refuse: NaN/Inf (a diverging model), negative, sums not 1."""
    path = probability_path(folder, file_name)
    stored = np.asarray(probs).astype(np.float16)
    problem = shape_problem(stored, len(class_names))
    if problem is not None:  # a caller's bug, not a user's file
        raise ValueError(f"image {file_name}: {problem}")
    problem = value_problem(stored)
    if problem is not None:
        raise ProbabilityFileError(
            f"image {file_name}: {problem} (a diverging model or a broken checkpoint?); {path} was not written"
        )
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        probs=stored,
        file_name=np.array(file_name),
        image_id=np.array(image_id),
        height=np.array(height),
        width=np.array(width),
        class_names=np.array(class_names),
        source_sha1=np.array(source_sha1),
    )
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_probabilities(path: str | Path) -> dict:
    """One npz as {probs (float32), file_name, image_id, height, width, class_names}, checked: errors
    (ProbabilityFileError) name the file, for an unreadable or foreign file and for numbers that are not
    probabilities (NaN, Inf, negative, not summing to 1)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            record = {
                "probs": data["probs"].astype(np.float32),
                "file_name": str(data["file_name"]),
                "image_id": int(data["image_id"]),
                "height": int(data["height"]),
                "width": int(data["width"]),
                "class_names": [str(n) for n in data["class_names"]],
                "source_sha1": str(data["source_sha1"]) if "source_sha1" in data.files else "",
            }
    except UNREADABLE as error:
        raise ProbabilityFileError(f"{path}: not a prediction file of this project ({error})") from None
    problem = shape_problem(record["probs"], len(record["class_names"])) or value_problem(record["probs"])
    if problem is not None:
        raise ProbabilityFileError(f"{path} (image {record['file_name']}): {problem}; {_REDO}")
    return record


def read_probability_field(path: str | Path, key: str) -> np.ndarray:
    """One metadata field (file_name, image_id, height, width, class_names, source_sha1: "" in files written
    before it was recorded) of a prediction file, read alone: np.load reads npz members lazily, so the
    probabilities are not decoded (nor checked: `load_probabilities` does that). Errors as `load_probabilities`."""
    if key not in _METADATA_FIELDS:
        raise KeyError(f"{key!r} is not a metadata field of a prediction file; read probs with load_probabilities")
    try:
        with np.load(path, allow_pickle=False) as data:
            if key == "source_sha1" and key not in data.files:
                return np.array("")
            return data[key]
    except UNREADABLE as error:
        raise ProbabilityFileError(f"{path}: not a prediction file of this project ({error})") from None


def load_label_map(path: str | Path) -> np.ndarray:
    """The uint8 label map of one prediction file: the argmax of its probabilities over the classes."""
    return load_probabilities(path)["probs"].argmax(axis=0).astype(np.uint8)


def check_probabilities(
    path: str | Path,
    file_name: str | None = None,
    class_names: Sequence[str] | None = None,
    size: int = 0,
    source_sha1: str | None = None,
) -> str | None:
    """None if `path` is a complete, readable prediction file (of `file_name`, with these classes, `size` x `size`
    maps when size > 0, else maps at the image size, valid probabilities, predicted from the image file whose sha1
    is `source_sha1` when given); else what is wrong with it (e.g. truncated, NaN, a changed image)."""
    try:
        data = load_probabilities(path)
    except ProbabilityFileError as error:
        return str(error)
    probs = data["probs"]
    if file_name is not None and data["file_name"] != file_name:
        return f"{path}: holds {data['file_name']!r}, expected {file_name!r}"
    if class_names is not None and data["class_names"] != list(class_names):
        return f"{path}: classes {data['class_names']} differ from {list(class_names)}"
    if source_sha1 is not None and data["source_sha1"] != source_sha1:
        return f"{path}: predicted from another version of {data['file_name']} (the image file changed since)"
    expected = (size, size) if size > 0 else (data["height"], data["width"])
    if probs.shape[1:] != expected:
        return f"{path}: probabilities of shape {probs.shape}, expected {len(data['class_names'])} x {expected}"
    return None
