"""The one representation that crosses tool boundaries: per-image class probabilities.

A prediction folder holds `probs/<file_name>.npz` per image (the image's file_name with its
extension replaced) and `meta.json`. Each npz has:
  probs        float16 K x H x W class probabilities (sum to 1 over K; H x W is 256x256 by default)
  file_name    the image's file_name as in the json (the submission's image_id)
  image_id     the json's image id
  height, width  the original image size
  class_names  the K class names, background first
How the probabilities are made (views, TTA, checkpoint ensembles): mask2former/engine/inference.py. meta.json
(written by tools/predict.py) holds class_names, the settings (weights, weights_scale, views, max_size, prob_size)
and the run's counts. `check_probabilities` tells a complete file from a truncated or foreign one.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .utils.io import atomic_write_bytes, output_path

# what reading a missing, truncated or foreign npz raises
UNREADABLE = (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error)


def probability_path(folder: str | Path, file_name: str) -> Path:
    """folder/probs/<file_name with .npz>; a file_name that would leave the folder is refused (UnsafePathError)."""
    return output_path(Path(folder) / "probs", file_name, ".npz")


def save_probabilities(
    folder: str | Path,
    file_name: str,
    image_id: int,
    probs: np.ndarray,
    height: int,
    width: int,
    class_names: list[str],
) -> Path:
    """Write one image's probabilities atomically; returns the path."""
    if probs.ndim != 3 or probs.shape[0] != len(class_names):
        raise ValueError(f"{file_name}: probabilities of shape {probs.shape} do not match {len(class_names)} classes")
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        probs=probs.astype(np.float16),
        file_name=np.array(file_name),
        image_id=np.array(image_id),
        height=np.array(height),
        width=np.array(width),
        class_names=np.array(class_names),
    )
    path = probability_path(folder, file_name)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_probabilities(path: str | Path) -> dict:
    """One npz as {probs (float32), file_name, image_id, height, width, class_names}; errors name the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {
                "probs": data["probs"].astype(np.float32),
                "file_name": str(data["file_name"]),
                "image_id": int(data["image_id"]),
                "height": int(data["height"]),
                "width": int(data["width"]),
                "class_names": [str(n) for n in data["class_names"]],
            }
    except UNREADABLE as error:
        raise ValueError(f"{path}: not a prediction file of this project ({error})") from None


def read_probability_field(path: str | Path, key: str) -> np.ndarray:
    """One stored field of a prediction file, read alone (np.load reads npz members lazily: class_names or
    file_name without decoding the probabilities); errors as `load_probabilities`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return data[key]
    except UNREADABLE as error:
        raise ValueError(f"{path}: not a prediction file of this project ({error})") from None


def load_label_map(path: str | Path) -> np.ndarray:
    """The uint8 label map of one prediction file: the argmax of its probabilities over the classes."""
    return load_probabilities(path)["probs"].argmax(axis=0).astype(np.uint8)


def check_probabilities(
    path: str | Path,
    file_name: str | None = None,
    class_names: Sequence[str] | None = None,
    size: int = 0,
) -> str | None:
    """None if `path` is a complete, readable prediction file (of `file_name`, with these classes, `size` x `size`
    maps when size > 0, finite non-negative probabilities); else what is wrong with it (e.g. truncated)."""
    try:
        data = load_probabilities(path)
    except ValueError as error:
        return str(error)
    probs = data["probs"]
    if file_name is not None and data["file_name"] != file_name:
        return f"{path}: holds {data['file_name']!r}, expected {file_name!r}"
    if class_names is not None and data["class_names"] != list(class_names):
        return f"{path}: classes {data['class_names']} differ from {list(class_names)}"
    expected = (size, size) if size > 0 else (data["height"], data["width"])
    if probs.ndim != 3 or probs.shape[0] != len(data["class_names"]) or probs.shape[1:] != expected:
        return f"{path}: probabilities of shape {probs.shape}, expected {len(data['class_names'])} x {expected}"
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.sum(axis=0).max() > 1.02:
        return f"{path}: not probabilities (non-finite, negative, or summing to more than 1 over the classes)"
    return None
