"""The label-map cache of a COCO json: `<cache>/<json stem>-<hash of json bytes and options>/`, one PNG per image,
written atomically, and a manifest written last that marks the folder complete and records each label map's
SHA-1 (a given label map, named by the json, is recorded by its absolute path). A later load neither re-validates
nor re-renders: it compares the bytes, and the maps that changed are made again (`coco_semantic`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np

from ..errors import FileSystemError
from ..io.coco_json import DataError
from ..io.files import UnsafePathError, atomic_write_bytes, safe_relative_name

MANIFEST_NAME = "manifest.json"
CACHE_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """$TRASH_CACHE if set, else ~/.cache/trashseg."""
    return Path(os.environ.get("TRASH_CACHE", "~/.cache/trashseg")).expanduser()


class LabelCacheError(FileSystemError):
    """The label cache cannot be written (a read-only file system, no permission); the message names its folder
    and how to move it."""


def write_cache_file(folder: Path, path: Path, data: bytes) -> None:
    """`path` (a label map or the manifest of the cache `folder`) written atomically; a cache that cannot be
    written is a LabelCacheError (other refusals of the file system are the writer's one line)."""
    try:
        atomic_write_bytes(path, data)
    except FileSystemError as error:
        if error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        why = "read-only file system" if error.errno == errno.EROFS else "no permission to write there"
        raise LabelCacheError(
            f"cannot write the label cache {folder} ({why}): set DATASETS.LABEL_CACHE_DIR (or $TRASH_CACHE) to a "
            "writable folder",
            error.errno,
        ) from error


def write_label_map(folder: Path, path: Path, label_map: np.ndarray, what: str) -> None:
    """`label_map` as a PNG at `path` in the cache `folder`; `what` names the image if it cannot be encoded."""
    ok, encoded = cv2.imencode(".png", label_map)
    if not ok:
        raise OSError(f"could not encode the label map of {what}")
    write_cache_file(folder, path, encoded.tobytes())


def write_manifest(folder: Path, manifest: dict) -> None:
    """The manifest, written last: it marks the cache `folder` complete."""
    write_cache_file(folder, folder / MANIFEST_NAME, json.dumps(manifest).encode("utf-8"))


def cache_folder(json_file: Path, json_bytes: bytes, cache_dir: Path, crowd_as_ignore: bool, skip_bad: bool) -> Path:
    """The cache folder of a json's bytes and the options that change its label maps."""
    key = hashlib.sha1(json_bytes)
    key.update(f"v{CACHE_FORMAT_VERSION} crowd_as_ignore={crowd_as_ignore} skip_bad={skip_bad}".encode())
    return cache_dir / f"{json_file.stem}-{key.hexdigest()[:16]}"


def complete_manifest(path: Path) -> dict | None:
    """The cache's manifest if it is there and has every field this version writes, a content hash for every
    label map included (older ones are rebuilt: their label maps are rendered again and compared)."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    fields = ("image_root", "has_gt", "given_label_maps", "num_annotations", "oriented", "images", "class_names")
    if not isinstance(manifest, dict) or not all(key in manifest for key in fields):
        return None
    entries = manifest["images"]
    hashed = isinstance(entries, list) and all(
        isinstance(entry, dict) and ("label" not in entry or "sha1" in entry) for entry in entries
    )
    return manifest if hashed else None


def file_sha1(path: Path) -> str | None:
    """The file's SHA-1 (hex), None if it cannot be read."""
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:
        return None


def changed_label_maps(manifest: dict, folder: Path) -> list[str]:
    """The label maps of a cached manifest whose bytes are no longer those it recorded (edited, replaced or gone);
    a cached PNG is relative to the cache folder, a given one absolute."""
    changed = []
    for entry in manifest["images"]:
        if "label" in entry:
            path = folder / entry["label"]
            if file_sha1(path) != entry["sha1"]:
                changed.append(str(path))
    return changed


def manifest_entry(image: dict) -> dict:
    """A checked image's entry in the manifest (its label map is added by the caller)."""
    return {
        "image_id": image["id"],
        "file_name": image["file_name"],
        "height": image["height"],
        "width": image["width"],
    }


def dicts_from_manifest(manifest: dict, image_root: Path, folder: Path, json_file: Path) -> list[dict]:
    """The dataset dicts {file_name, image_id, height, width[, sem_seg_file_name]} a manifest describes."""
    dicts = []
    for entry in manifest["images"]:
        try:  # checked when the manifest was written; checked again for a cache written by an older version
            safe_relative_name(entry["file_name"], "file_name")
        except UnsafePathError as error:
            raise DataError(f"{json_file}: image {entry['file_name']!r} (id {entry['image_id']}): {error}") from None
        record = {
            "file_name": str(image_root / entry["file_name"]),
            "image_id": entry["image_id"],
            "height": entry["height"],
            "width": entry["width"],
        }
        if "label" in entry:
            record["sem_seg_file_name"] = str(folder / entry["label"])  # absolute for given label maps
        dicts.append(record)
    return dicts
