"""The one representation that crosses tool boundaries: per-image class probabilities.

A prediction folder holds `probs/<file_name>.npz` per image (the image's file_name with its
extension replaced) and `meta.json`. Each npz has:
  probs        float16 K x H x W class probabilities (sum to 1 over K; H x W is 256x256 by default)
  file_name    the image's file_name as in the json (the submission's image_id)
  image_id     the json's image id
  height, width  the original image size
  class_names  the K class names, background first
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .utils.io import atomic_write_bytes


def probability_path(folder: str | Path, file_name: str) -> Path:
    return Path(folder) / "probs" / Path(file_name).with_suffix(".npz")


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
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"{path}: not a prediction file of this project ({error})") from None
